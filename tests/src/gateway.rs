//! The `Gateway` fixture: one complete JIT gateway per test, built by the driver's own lab
//! builder (`jitwg::run::lab::Lab`: namespaces, wireguard-go data plane, control plane,
//! optional nats-server, the real `jitwgd`), with its config rendered by the driver's
//! `daemon_config::render_settings`. This file only adds what tests drive the lab with.
//! Logs and the config live in a tempdir; teardown runs through the lab's guards on drop.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net};
use jitwg::controlplane::tls::RunPki;
use jitwg::controlplane::{ControlPlaneHandle, PeerDoc};
use jitwg::lab::{
    spawn_in, AddressPlan, DataPlane, DataPlaneBackend, DataPlaneOptions, DataPlaneSpec, Namespace,
    PeerState, Topology,
};
use jitwg::run::daemon_config::{self, DaemonEndpoints};
use jitwg::run::lab::{ControlPlaneSecurity, Lab, LabSpec};
use jitwg::run::RunError;
use jitwg::scenario::file::{DaemonFile, ModeName};
use tokio_util::sync::CancellationToken;

use crate::knock::Knocker;
use crate::{wait_for, HarnessError, Scrape};

pub use jitwg::run::{
    CONTROL_PLANE_PORT as API_PORT, METRICS_PORT, NATS_PORT, NATS_SUBJECT, WG_PORT,
};

/// How to build a fixture.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Address slot (`AddressPlan::for_slot`); cosmetic, since every fixture has its own
    /// namespaces, but distinct slots make captures easier to read.
    pub slot: u8,
    /// Daemon config-file settings (TOML keys, string values) on top of the fixture's.
    pub daemon: DaemonFile,
    /// Legacy push mode: start nats-server, let the control plane publish, run the
    /// daemon with `mode = "push"`.
    pub push: bool,
    /// jitwgd config-file lines appended as written, for keys the scenario `[daemon]`
    /// table does not carry (e.g. `reinstall_active = "off"`).
    pub raw_daemon_toml: String,
    /// How the control plane secures its channel (TLS with the run's CA, token).
    pub control_plane: ControlPlaneSecurity,
    /// Gives the daemon credentials that do not match the control plane's.
    pub tamper: ChannelTamper,
}

/// Wrong credentials for the daemon, to test that they fail clearly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelTamper {
    /// The credentials the lab made.
    #[default]
    None,
    /// A token file holding another token.
    WrongToken,
    /// A CA file holding another CA than the one that signed the control plane's certificate.
    OtherCa,
}

impl GatewayOptions {
    pub fn new(slot: u8) -> GatewayOptions {
        GatewayOptions {
            slot,
            daemon: DaemonFile::default(),
            push: false,
            raw_daemon_toml: String::new(),
            control_plane: ControlPlaneSecurity::default(),
            tamper: ChannelTamper::None,
        }
    }

    /// The control plane serves HTTPS with a CA made for this test and requires `token`.
    pub fn tls_with_token(mut self, token: &str) -> GatewayOptions {
        self.control_plane = ControlPlaneSecurity {
            tls: true,
            token: Some(token.to_string()),
            client_cert: false,
        };
        self
    }

    pub fn tamper(mut self, tamper: ChannelTamper) -> GatewayOptions {
        self.tamper = tamper;
        self
    }

    /// Appends one jitwgd config-file line (TOML) to the rendered config.
    pub fn raw_daemon_key(mut self, line: &str) -> GatewayOptions {
        self.raw_daemon_toml.push_str(line);
        self.raw_daemon_toml.push('\n');
        self
    }

    /// Adjusts the daemon's settings, typed as a scenario's `[daemon]` table, e.g.
    /// `.daemon(|d| d.initiate = Some(Switch::Off))`.
    pub fn daemon(mut self, adjust: impl FnOnce(&mut DaemonFile)) -> GatewayOptions {
        adjust(&mut self.daemon);
        self
    }

    pub fn push(mut self) -> GatewayOptions {
        self.push = true;
        self
    }
}

/// `at` with the credentials `tamper` spoils, written into `dir`.
fn tampered(
    at: &DaemonEndpoints,
    tamper: ChannelTamper,
    dir: &Path,
) -> Result<DaemonEndpoints, RunError> {
    let mut at = at.clone();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| RunError::Output {
            path: path.clone(),
            source,
        })?;
        Ok::<_, RunError>(path)
    };
    match tamper {
        ChannelTamper::None => {}
        ChannelTamper::WrongToken => {
            at.channel.token_file = Some(write("wrong-token", "not-the-token\n")?);
        }
        ChannelTamper::OtherCa => {
            let other = RunPki::generate(&["198.18.0.1".parse().expect("an address")])
                .map_err(|e| RunError::ControlPlaneStart(e.to_string()))?;
            at.channel.ca_file = Some(write("other-ca.pem", other.ca_pem())?);
        }
    }
    Ok(at)
}

/// One complete gateway under test. Fields drop in declaration order: the lab (daemon
/// first, namespaces last), then the runtime and the log directory.
pub struct Gateway {
    lab: Lab,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    /// Never cancelled: tests have no Ctrl-C to honour while waiting for `/ready`.
    never: CancellationToken,
}

impl Gateway {
    /// Builds everything and waits until the daemon reports ready.
    pub fn start(opts: GatewayOptions) -> Result<Gateway, HarnessError> {
        // Fail before building anything when the binary is missing.
        let jitwgd = crate::daemon_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("jwg-e2e-")
            .tempdir()
            .map_err(HarnessError::io("creating tempdir"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HarnessError::io("building tokio runtime"))?;
        let mut spec = LabSpec::new(
            AddressPlan::for_slot(opts.slot)?,
            jitwgd,
            dir.path().to_path_buf(),
        );
        spec.daemon_log_filter = "debug".into();
        spec.control_plane_security = opts.control_plane.clone();
        let mut settings = opts.daemon.clone();
        if opts.push {
            spec.nats_server = Some(PathBuf::from("nats-server"));
            settings.mode.get_or_insert(ModeName::Push);
        }
        let tamper_dir = dir.path().to_path_buf();
        let render = |at: &DaemonEndpoints| {
            let at = tampered(at, opts.tamper, &tamper_dir)?;
            daemon_config::render_settings(&at, "userspace", &settings)
                .map(|text| text + &opts.raw_daemon_toml)
                .map_err(RunError::DaemonConfig)
        };
        let never = CancellationToken::new();
        let lab = rt.block_on(Lab::build(spec, render, &never))?;
        Ok(Gateway {
            lab,
            rt,
            dir,
            never,
        })
    }

    /// Starts jitwgd (again) on the same config and database and waits for `/ready`.
    pub fn start_daemon(&mut self) -> Result<(), HarnessError> {
        self.lab.start_daemon()?;
        Ok(self.rt.block_on(self.lab.wait_daemon_ready(&self.never))?)
    }

    /// SIGKILL the daemon (no cleanup, as in a crash).
    pub fn kill9_daemon(&mut self) -> Result<(), HarnessError> {
        Ok(self.lab.kill9_daemon()?)
    }

    /// SIGKILL the daemon and restart the data plane (same key and port, no peers), as a
    /// reboot does; `start_daemon` brings jitwgd back on the same database.
    pub fn reboot_dataplane(&mut self) -> Result<(), HarnessError> {
        Ok(self.lab.reboot_dataplane()?)
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.lab.daemon().map(|c| c.pid())
    }

    /// Whether the daemon process is still alive.
    pub fn daemon_running(&mut self) -> Result<bool, HarnessError> {
        Ok(self.lab.daemon_running()?)
    }

    pub fn plan(&self) -> &AddressPlan {
        self.lab.plan()
    }

    pub fn topology(&self) -> &Topology {
        self.lab.topology()
    }

    pub fn interface(&self) -> &str {
        self.data_plane().interface()
    }

    pub fn data_plane(&self) -> &DataPlane {
        self.lab.dataplane()
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.lab.gateway_public_key()
    }

    /// Where clients send their initiations.
    pub fn endpoint(&self) -> SocketAddr {
        self.lab.gateway_endpoint()
    }

    pub fn db_path(&self) -> PathBuf {
        self.lab.endpoints().db.clone()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn control(&self) -> &ControlPlaneHandle {
        self.lab.control()
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
        self.rt.block_on(self.lab.control().register_many(&[doc]))?;
        Ok(())
    }

    /// Revokes a peer in the control plane; returns whether it existed.
    pub fn revoke(&self, public_key: &[u8; 32]) -> Result<bool, HarnessError> {
        Ok(self
            .rt
            .block_on(self.lab.control().revoke(&hex::encode(public_key)))?)
    }

    /// `GET /v1/peers/{key}` requests the control plane served for this key.
    pub fn api_calls(&self, public_key: &[u8; 32]) -> u64 {
        self.lab
            .control()
            .stats()
            .per_key
            .get(&hex::encode(public_key))
            .copied()
            .unwrap_or(0)
    }

    /// All peer lookups the control plane served.
    pub fn api_calls_total(&self) -> u64 {
        self.lab.control().stats().requests_total
    }

    /// One scrape of the daemon's `/metrics`.
    pub fn scrape(&self) -> Result<Scrape, HarnessError> {
        let (status, body) = self
            .rt
            .block_on(self.lab.probe().get("/metrics"))
            .map_err(|e| HarnessError::Metrics(e.to_string()))?;
        if status != 200 {
            return Err(HarnessError::Metrics(format!(
                "GET /metrics: {status}: {body}"
            )));
        }
        Ok(Scrape::parse(body))
    }

    /// Peers configured on the gateway's data plane.
    pub fn peers(&self) -> Result<Vec<PeerState>, HarnessError> {
        Ok(self.data_plane().peers()?)
    }

    pub fn peer(&self, public_key: &[u8; 32]) -> Result<Option<PeerState>, HarnessError> {
        Ok(self
            .peers()?
            .into_iter()
            .find(|p| &p.public_key == public_key))
    }

    /// Removes a peer from the data plane by hand, behind the daemon's back.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> Result<(), HarnessError> {
        Ok(self.data_plane().remove_peer(*public_key)?)
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
            &self.topology().client,
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
            &self.topology().client,
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
            ns: self.topology().client.clone(),
            plane,
            tunnel,
            log_dir: self.dir.path().to_path_buf(),
        })
    }

    /// The last `max` bytes of the daemon's log.
    pub fn daemon_log_tail(&self, max: usize) -> String {
        let bytes = std::fs::read(self.lab.daemon_log()).unwrap_or_default();
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- jitwgd log ({}) ----\n{}\n---- end of jitwgd log ----",
                self.lab.daemon_log().display(),
                self.daemon_log_tail(12_000)
            );
        }
        if let Err(e) = self.lab.terminate_daemon(Duration::from_secs(3)) {
            eprintln!("stopping jitwgd: {e}");
        }
    }
}

/// `ping -D -i INTERVAL` running in the client namespace into a log file; dropping it
/// stops it. Continuous traffic, the way a client that notices a gateway reboot sees it.
pub struct Pinger {
    _child: jitwg::lab::Child,
    log: PathBuf,
}

impl Pinger {
    /// When each reply arrived (ping's `-D` unix timestamps), in order.
    pub fn replies(&self) -> Vec<SystemTime> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| {
                let stamp = l.strip_prefix('[')?.split(']').next()?;
                let secs: f64 = stamp.parse().ok()?;
                Some(UNIX_EPOCH + Duration::from_secs_f64(secs))
            })
            .collect()
    }

    /// The first reply that arrived after `t`.
    pub fn first_reply_after(&self, t: SystemTime) -> Option<SystemTime> {
        self.replies().into_iter().find(|r| *r > t)
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

    /// Pings `dst` every `interval` until dropped (`-W1`: a lost reply is given up after 1 s).
    pub fn ping_continuously(
        &self,
        dst: Ipv4Addr,
        interval: Duration,
    ) -> Result<Pinger, HarnessError> {
        let log_path = self.log_dir.join(format!("ping-continuous-{dst}.log"));
        let log = File::create(&log_path).map_err(HarnessError::io("creating ping log"))?;
        let log2 = log
            .try_clone()
            .map_err(HarnessError::io("duplicating ping log"))?;
        // stdbuf: ping's stdout is a file, which libc would block-buffer.
        let mut cmd = Command::new("stdbuf");
        cmd.args([
            "-oL",
            "ping",
            "-n",
            "-D",
            "-W1",
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            &dst.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
        Ok(Pinger {
            _child: spawn_in(&self.ns, cmd)?,
            log: log_path,
        })
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
