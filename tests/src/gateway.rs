//! The `Gateway` fixture: one complete JIT gateway per test. Namespaces gw/cl/cp from
//! `Topology::build`, a wireguard-go data plane in gw (port 51820, 100.64.0.1/10), the
//! testbed control plane served in cp, optionally nats-server, and the real `jitwgd`
//! binary in gw with its config TOML, SQLite db and logs in a tempdir. Teardown order on
//! drop: daemon, control plane, nats-server, data plane, namespaces, tempdir.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use jitwg::controlplane::{
    ControlPlane, ControlPlaneConfig, ControlPlaneError, ControlPlaneHandle, FaultConfig, PeerDoc,
};
use jitwg::lab::{
    spawn_in, AddressPlan, Child, DataPlane, DataPlaneBackend, DataPlaneOptions, DataPlaneSpec,
    LabError, Namespace, NsThread, PeerState, RunId, RuntimeFlavor, Topology,
};

use crate::knock::Knocker;
use crate::metrics::{http_get, Scrape};
use crate::{wait_for, HarnessError};

/// WireGuard port of the gateway.
pub const WG_PORT: u16 = 51820;
/// Control-plane HTTP port (in the cp namespace).
pub const API_PORT: u16 = 8080;
/// Metrics port of the daemon (127.0.0.1 in the gw namespace).
pub const METRICS_PORT: u16 = 9100;
/// nats-server port (on the gateway's control-link address).
pub const NATS_PORT: u16 = 4222;
/// Subject the control plane publishes on and the daemon subscribes to (its default).
pub const NATS_SUBJECT: &str = "jitwg.peers";

/// How to build a fixture.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Address slot (`AddressPlan::for_slot`); cosmetic, since every fixture has its own
    /// namespaces, but distinct slots make captures easier to read.
    pub slot: u8,
    /// Daemon config-file settings (TOML keys, string values) on top of the fixture's.
    pub daemon: BTreeMap<&'static str, String>,
    /// Legacy push mode: start nats-server, let the control plane publish, run the
    /// daemon with `mode = "push"`.
    pub push: bool,
}

impl GatewayOptions {
    pub fn new(slot: u8) -> GatewayOptions {
        GatewayOptions {
            slot,
            daemon: BTreeMap::new(),
            push: false,
        }
    }

    /// Sets one daemon setting, e.g. `.set("initiate", "off")`.
    pub fn set(mut self, key: &'static str, value: &str) -> GatewayOptions {
        self.daemon.insert(key, value.to_string());
        self
    }

    pub fn push(mut self) -> GatewayOptions {
        self.push = true;
        self
    }
}

/// The control plane running on its own runtime thread in the cp namespace.
struct ControlThread {
    handle: ControlPlaneHandle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<NsThread<Result<Result<(), ControlPlaneError>, LabError>>>,
}

impl ControlThread {
    fn start(
        ns: &Namespace,
        addr: SocketAddr,
        cfg: ControlPlaneConfig,
    ) -> Result<Self, HarnessError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = ns.spawn_runtime_thread(
            "jwg-control",
            RuntimeFlavor::CurrentThread,
            move || async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("binding {addr}: {e}")));
                        return Ok(());
                    }
                };
                let cp = match ControlPlane::open(cfg).await {
                    Ok(cp) => cp,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{:#}", anyhow::Error::from(e))));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(Ok(cp.handle()));
                cp.serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await
            },
        )?;
        let handle = ready_rx
            .recv_timeout(Duration::from_secs(15))
            .map_err(|e| HarnessError::ControlPlaneStart(e.to_string()))?
            .map_err(HarnessError::ControlPlaneStart)?;
        Ok(ControlThread {
            handle,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("control plane: {:#}", anyhow::Error::from(e)),
                Ok(Err(e)) | Err(e) => {
                    eprintln!("control plane thread: {:#}", anyhow::Error::from(e))
                }
            }
        }
    }
}

/// A running jitwgd and the log it writes to.
struct DaemonProc {
    child: Child,
}

/// One complete gateway under test. Fields drop in declaration order.
pub struct Gateway {
    daemon: Option<DaemonProc>,
    control: ControlThread,
    /// Held only so nats-server stops when the fixture drops.
    _nats: Option<Child>,
    data_plane: DataPlane,
    topology: Topology,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    daemon_log: PathBuf,
    metrics_addr: SocketAddr,
}

impl Gateway {
    /// Builds everything and waits until the daemon reports ready.
    pub fn start(opts: GatewayOptions) -> Result<Gateway, HarnessError> {
        // Fail before building anything when the binary is missing.
        crate::daemon_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("jwg-e2e-")
            .tempdir()
            .map_err(HarnessError::io("creating tempdir"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HarnessError::io("building tokio runtime"))?;
        let plan = AddressPlan::for_slot(opts.slot)?;
        let topology = Topology::build(&plan, &RunId::random())?;
        let iface = topology.names.wg_interface();
        let data_plane = DataPlane::start_with(
            &topology.gateway,
            DataPlaneSpec {
                interface: iface.clone(),
                backend: DataPlaneBackend::Userspace,
                private_key: crate::random_key(),
                listen_port: WG_PORT,
                address: plan.tunnel_gateway_net(),
            },
            DataPlaneOptions {
                log: Some(dir.path().join("wireguard-go-gateway.log")),
                ..DataPlaneOptions::default()
            },
        )?;

        let nats_url = format!("nats://{}:{NATS_PORT}", plan.gateway_control());
        let nats = if opts.push {
            Some(start_nats(&topology.gateway, &plan, dir.path())?)
        } else {
            None
        };
        let control = ControlThread::start(
            &topology.control,
            SocketAddr::new(IpAddr::V4(plan.control_plane()), API_PORT),
            ControlPlaneConfig {
                db: dir.path().join("control-plane.db"),
                nats: opts
                    .push
                    .then(|| (nats_url.clone(), NATS_SUBJECT.to_string())),
                faults: FaultConfig::default(),
                seed: 1,
            },
        )?;

        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
        let mut settings: BTreeMap<&'static str, String> = BTreeMap::new();
        settings.insert("interface", iface);
        settings.insert("backend", "userspace".into());
        settings.insert("capture_interface", topology.names.veth_gw_to_client());
        settings.insert("db", dir.path().join("jitwgd.db").display().to_string());
        settings.insert(
            "api_url",
            format!("http://{}:{API_PORT}", plan.control_plane()),
        );
        settings.insert("metrics_addr", metrics_addr.to_string());
        if opts.push {
            settings.insert("mode", "push".into());
            settings.insert("nats_url", nats_url);
            settings.insert("nats_subject", NATS_SUBJECT.into());
        }
        settings.extend(opts.daemon.clone());
        let mut toml = format!("listen_port = {WG_PORT}\n");
        for (k, v) in &settings {
            toml.push_str(&format!("{k} = {v:?}\n"));
        }
        let config_path = dir.path().join("jitwgd.toml");
        std::fs::write(&config_path, toml).map_err(HarnessError::io("writing jitwgd.toml"))?;
        let daemon_log = dir.path().join("jitwgd.log");

        let mut gw = Gateway {
            daemon: None,
            control,
            _nats: nats,
            data_plane,
            topology,
            rt,
            dir,
            config_path,
            daemon_log,
            metrics_addr,
        };
        gw.start_daemon()?;
        Ok(gw)
    }

    /// Starts jitwgd (again) on the same config and database and waits for `/ready`.
    pub fn start_daemon(&mut self) -> Result<(), HarnessError> {
        let binary = crate::daemon_binary()?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.daemon_log)
            .map_err(HarnessError::io("opening daemon log"))?;
        let log2 = log
            .try_clone()
            .map_err(HarnessError::io("duplicating daemon log"))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("JITWGD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = spawn_in(&self.topology.gateway, cmd)?;
        self.daemon = Some(DaemonProc { child });
        self.wait_ready(Duration::from_secs(20))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.daemon.as_mut() {
                if let Some(status) = d.child.try_wait()? {
                    return Err(HarnessError::ExitedEarly {
                        program: "jitwgd".into(),
                        status: status.to_string(),
                        log: self.daemon_log_tail(6000),
                    });
                }
            }
            if let Ok((200, _)) = http_get(&self.topology.gateway, self.metrics_addr, "/ready") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: "jitwgd /ready".into(),
                    secs: timeout.as_secs_f64(),
                    detail: format!("; log:\n{}", self.daemon_log_tail(6000)),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the daemon (no cleanup, as in a crash).
    pub fn kill9_daemon(&mut self) -> Result<(), HarnessError> {
        if let Some(mut d) = self.daemon.take() {
            d.child.kill9()?;
        }
        Ok(())
    }

    /// Whether the daemon process is still alive.
    pub fn daemon_running(&mut self) -> Result<bool, HarnessError> {
        match self.daemon.as_mut() {
            Some(d) => Ok(d.child.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    pub fn plan(&self) -> &AddressPlan {
        &self.topology.plan
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn interface(&self) -> &str {
        self.data_plane.interface()
    }

    pub fn data_plane(&self) -> &DataPlane {
        &self.data_plane
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.data_plane.public_key()
    }

    /// Where clients send their initiations.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.plan().gateway_underlay(), WG_PORT))
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("jitwgd.db")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn control(&self) -> &ControlPlaneHandle {
        &self.control.handle
    }

    /// Registers a peer in the control plane.
    pub fn register(
        &self,
        public_key: &[u8; 32],
        allowed_ips: &[&str],
    ) -> Result<(), HarnessError> {
        let doc = PeerDoc::new(
            public_key,
            allowed_ips.iter().map(|s| s.to_string()).collect(),
            None,
        );
        self.rt
            .block_on(self.control.handle.register_many(&[doc]))?;
        Ok(())
    }

    /// Revokes a peer in the control plane; returns whether it existed.
    pub fn revoke(&self, public_key: &[u8; 32]) -> Result<bool, HarnessError> {
        Ok(self
            .rt
            .block_on(self.control.handle.revoke(&hex::encode(public_key)))?)
    }

    /// `GET /v1/peers/{key}` requests the control plane served for this key.
    pub fn api_calls(&self, public_key: &[u8; 32]) -> u64 {
        self.control
            .handle
            .stats()
            .per_key
            .get(&hex::encode(public_key))
            .copied()
            .unwrap_or(0)
    }

    /// All peer lookups the control plane served.
    pub fn api_calls_total(&self) -> u64 {
        self.control.handle.stats().requests_total
    }

    /// One scrape of the daemon's `/metrics`.
    pub fn scrape(&self) -> Result<Scrape, HarnessError> {
        let (status, body) = http_get(&self.topology.gateway, self.metrics_addr, "/metrics")?;
        if status != 200 {
            return Err(HarnessError::Metrics(format!(
                "GET /metrics: {status}: {body}"
            )));
        }
        Ok(Scrape::parse(body))
    }

    /// Peers configured on the gateway's data plane.
    pub fn peers(&self) -> Result<Vec<PeerState>, HarnessError> {
        Ok(self.data_plane.peers()?)
    }

    pub fn peer(&self, public_key: &[u8; 32]) -> Result<Option<PeerState>, HarnessError> {
        Ok(self
            .peers()?
            .into_iter()
            .find(|p| &p.public_key == public_key))
    }

    /// Removes a peer from the data plane by hand, behind the daemon's back.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> Result<(), HarnessError> {
        Ok(self.data_plane.remove_peer(*public_key)?)
    }

    /// Waits until `public_key` is (or is not) installed.
    pub fn wait_installed(
        &self,
        public_key: &[u8; 32],
        installed: bool,
        timeout: Duration,
    ) -> bool {
        wait_for(timeout, || {
            let present = matches!(self.peer(public_key), Ok(Some(_)));
            (present == installed).then_some(())
        })
        .is_some()
    }

    /// A boringtun client on client source address number `source`.
    pub fn knocker(&self, source: u32, private_key: [u8; 32]) -> Result<Knocker, HarnessError> {
        Knocker::new(
            &self.topology.client,
            self.plan().client_source(source),
            self.endpoint(),
            self.public_key(),
            private_key,
            source + 1,
        )
    }

    /// An unmodified WireGuard client (wireguard-go) in the client namespace, tunnel
    /// address 100.64.0.(2+n)/10, peer = this gateway. Not registered anywhere.
    pub fn stock_client(&self, n: u8, private_key: [u8; 32]) -> Result<StockClient, HarnessError> {
        let tunnel = Ipv4Addr::new(100, 64, 0, 2 + n);
        let iface = format!("{}c{n}", self.interface());
        let plane = DataPlane::start_with(
            &self.topology.client,
            DataPlaneSpec {
                interface: iface.clone(),
                backend: DataPlaneBackend::Userspace,
                private_key,
                listen_port: 0,
                address: Ipv4Net::new(tunnel, 10)
                    .map_err(|e| HarnessError::Client(e.to_string()))?,
            },
            DataPlaneOptions {
                log: Some(self.dir.path().join(format!("wireguard-go-{iface}.log"))),
                ..DataPlaneOptions::default()
            },
        )?;
        let gw_tunnel = IpNet::from(Ipv4Net::from(self.plan().tunnel_gateway));
        plane.add_peer(self.public_key(), Some(self.endpoint()), &[gw_tunnel], None)?;
        Ok(StockClient {
            ns: self.topology.client.clone(),
            plane,
            tunnel,
            log_dir: self.dir.path().to_path_buf(),
        })
    }

    /// The last `max` bytes of the daemon's log.
    pub fn daemon_log_tail(&self, max: usize) -> String {
        let bytes = std::fs::read(&self.daemon_log).unwrap_or_default();
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- jitwgd log ({}) ----\n{}\n---- end of jitwgd log ----",
                self.daemon_log.display(),
                self.daemon_log_tail(12_000)
            );
        }
        if let Some(mut d) = self.daemon.take() {
            if let Err(e) = d.child.terminate(Duration::from_secs(3)) {
                eprintln!("stopping jitwgd: {e}");
            }
        }
    }
}

/// A stock wireguard-go client; dropping it stops it.
pub struct StockClient {
    ns: Arc<Namespace>,
    plane: DataPlane,
    tunnel: Ipv4Addr,
    log_dir: PathBuf,
}

impl StockClient {
    pub fn public_key(&self) -> [u8; 32] {
        self.plane.public_key()
    }

    pub fn tunnel_address(&self) -> Ipv4Addr {
        self.tunnel
    }

    pub fn data_plane(&self) -> &DataPlane {
        &self.plane
    }

    /// `ping -c1 -W<wait_secs> dst` from the client namespace; returns whether it got a
    /// reply and how long the command took.
    pub fn ping(&self, dst: Ipv4Addr, wait_secs: u32) -> Result<(bool, Duration), HarnessError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_dir.join("ping.log"))
            .map_err(HarnessError::io("opening ping log"))?;
        let log2 = log
            .try_clone()
            .map_err(HarnessError::io("duplicating ping log"))?;
        let mut cmd = Command::new("ping");
        cmd.args(["-n", "-c1", &format!("-W{wait_secs}"), &dst.to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let start = Instant::now();
        let mut child = spawn_in(&self.ns, cmd)?;
        let limit = Duration::from_secs(u64::from(wait_secs) + 10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status.success(), start.elapsed()));
            }
            if start.elapsed() > limit {
                child.kill9()?;
                return Ok((false, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn start_nats(ns: &Namespace, plan: &AddressPlan, dir: &Path) -> Result<Child, HarnessError> {
    let log = File::create(dir.join("nats-server.log")).map_err(HarnessError::io("nats log"))?;
    let log2 = log.try_clone().map_err(HarnessError::io("nats log"))?;
    let mut cmd = Command::new("nats-server");
    cmd.args([
        "-a",
        &plan.gateway_control().to_string(),
        "-p",
        &NATS_PORT.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(log)
    .stderr(log2);
    let mut child = spawn_in(ns, cmd)?;
    let addr = SocketAddr::from((plan.gateway_control(), NATS_PORT));
    let up = wait_for(Duration::from_secs(10), || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Some(false);
        }
        let ok = ns
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .unwrap_or(false);
        ok.then_some(true)
    });
    if up != Some(true) {
        let log = std::fs::read_to_string(dir.join("nats-server.log")).unwrap_or_default();
        return Err(HarnessError::Timeout {
            what: format!("nats-server on {addr}"),
            secs: 10.0,
            detail: format!("; log:\n{log}"),
        });
    }
    Ok(child)
}
