//! The lab builder: the one place that brings up a complete JIT gateway (namespaces, data
//! plane, optional NATS, control plane, `jitwgd`) for both `jitwg run` and the end-to-end
//! tests (`tests/src/gateway.rs` is a thin fixture over it). Every part sits behind a guard;
//! dropping the [`Lab`] stops them in reverse dependency order, also on errors and panics.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::controlplane::{ControlPlaneConfig, ControlPlaneHandle, FaultConfig};
use crate::lab::clean::RunLock;
use crate::lab::cpuset::CpuConfinement;
use crate::lab::dataplane::{DataPlane, DataPlaneBackend, DataPlaneOptions, DataPlaneSpec};
use crate::lab::names::{state_dir_prefix, state_lock_name, RunId};
use crate::lab::process::Child;
use crate::lab::topology::{AddressPlan, Topology};
use crate::lab::{LabError, Namespace};
use crate::scenario::{CpuSplit, PreinstalledPeer};

use super::channel::secure_channel;
pub use super::channel::ControlPlaneSecurity;
use super::daemon_config::DaemonEndpoints;
use super::probe::{Probe, ProbeClient};
use super::services::{self, ControlPlaneService, DaemonLaunch};
use super::{RunError, CONTROL_PLANE_PORT, METRICS_PORT, NATS_PORT, NATS_SUBJECT, READY_TIMEOUT};
use super::{DAEMON_LOG_FILTER, WG_PORT};

/// How often `/ready` is polled while waiting for the daemon.
pub const READY_POLL: Duration = Duration::from_millis(10);

/// What to build. Log files (`wireguard-go.log`, `nats.log`, `jitwgd.toml`, `jitwgd.log`) go
/// to `logs`; the SQLite databases to a fresh state directory the lab removes last.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub run_id: RunId,
    pub plan: AddressPlan,
    pub backend: DataPlaneBackend,
    pub gateway_private_key: [u8; 32],
    /// The wireguard-go binary (userspace backend).
    pub wireguard_go: PathBuf,
    /// Synthetic peers put into the data plane before the daemon starts.
    pub preinstalled: Vec<PreinstalledPeer>,
    /// Written into jitwgd's database before it first starts (`stored_peers`); `None`: nothing.
    pub stored: Option<StoredPeers>,
    /// `nats-server` to start (push mode); `None`: no NATS.
    pub nats_server: Option<PathBuf>,
    pub control_plane_faults: FaultConfig,
    pub seed: u64,
    /// The `jitwgd` binary.
    pub jitwgd: PathBuf,
    /// `JITWGD_LOG` of the daemon.
    pub daemon_log_filter: String,
    pub logs: PathBuf,
    /// Gateway and driver CPUs (`[lab] cpus`); `None`: shared, as before the split existed.
    pub cpu_split: Option<CpuSplit>,
    /// How the control plane is reached (`[control_plane] tls/token/client_cert`); the
    /// default is plain HTTP without credentials.
    pub control_plane_security: ControlPlaneSecurity,
    /// Build on the host's own interface instead of in namespaces (`jitwg gateway`); `None`:
    /// the three namespaces of `plan`.
    pub host: Option<HostSite>,
}

/// Where a lab built on a host's own interface (no namespaces) listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSite {
    /// The host address clients reach: WireGuard on [`WG_PORT`], the control plane on
    /// [`CONTROL_PLANE_PORT`] and jitwgd's metrics on [`METRICS_PORT`].
    pub listen: Ipv4Addr,
    /// The interface jitwgd sniffs initiations on; `None`: every interface.
    pub capture_interface: Option<String>,
}

impl LabSpec {
    /// A spec with the driver's defaults: userspace backend, no NATS, no faults.
    pub fn new(plan: AddressPlan, jitwgd: PathBuf, logs: PathBuf) -> LabSpec {
        LabSpec {
            run_id: RunId::random(),
            plan,
            backend: DataPlaneBackend::Userspace,
            gateway_private_key: rand::random(),
            wireguard_go: PathBuf::from("wireguard-go"),
            preinstalled: Vec::new(),
            stored: None,
            nats_server: None,
            control_plane_faults: FaultConfig::default(),
            seed: 1,
            jitwgd,
            daemon_log_filter: DAEMON_LOG_FILTER.to_string(),
            logs,
            cpu_split: None,
            control_plane_security: ControlPlaneSecurity::default(),
            host: None,
        }
    }
}

/// Peers put into jitwgd's database before it starts, as jitwgd itself stores them.
#[derive(Debug, Clone)]
pub struct StoredPeers {
    pub peers: Vec<jitwgd::peer::PeerConfig>,
    /// `Api` (a positive cache entry, valid for `ttl`) or `Push` (kept for good).
    pub source: jitwgd::store::PeerSource,
    pub ttl: Duration,
}

/// Writes `stored` through jitwgd's own store (its schema and migrations), in one transaction.
fn seed_store(db: &Path, stored: &StoredPeers) -> Result<(), RunError> {
    let seed = || {
        let mut store = jitwgd::store::Store::open(db)?;
        store.put_peers(&stored.peers, stored.source, SystemTime::now(), stored.ttl)
    };
    seed().map_err(|source| RunError::SeedStore {
        db: db.to_path_buf(),
        source,
    })
}

/// The guarded parts; fields are stopped in this order by [`Parts::drop`].
#[derive(Default)]
struct Parts {
    daemon: Option<Child>,
    probe: Option<Probe>,
    control_plane: Option<ControlPlaneService>,
    nats: Option<Child>,
    dataplane: Option<DataPlane>,
    topology: Option<Topology>,
    /// The run's SQLite databases (control plane, daemon). Not in the log directory: SQLite's
    /// WAL needs shared memory the output directory's filesystem may not offer (a 9p share in
    /// `ci/vm.sh`'s VM), and databases are not results. One directory per lab, so the daemon
    /// finds its own database again after a reboot; removed after everything using it stopped.
    state: Option<StateDir>,
    /// The CPU split: undone once every process it confined is gone.
    cpus: Option<CpuConfinement>,
}

impl Drop for Parts {
    fn drop(&mut self) {
        let teardown = || {
            drop(self.daemon.take());
            drop(self.probe.take());
            drop(self.control_plane.take());
            drop(self.nats.take());
            drop(self.dataplane.take());
            // Every confined process is gone; undone before the namespaces (and their run
            // locks) go, so `jitwg clean` never sees this run's cgroup without a held lock.
            drop(self.cpus.take());
            if let Some(t) = self.topology.take() {
                tracing::info!(run = %t.run_id(), "tearing down the lab");
                drop(t);
            }
            if let Some(StateDir { dir, _lock }) = self.state.take() {
                let path = dir.path().to_path_buf();
                if let Err(e) = dir.close() {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove the lab's state directory");
                }
            }
        };
        blocking(teardown);
    }
}

/// A running gateway and everything it depends on.
pub struct Lab {
    parts: Parts,
    plan: AddressPlan,
    endpoints: DaemonEndpoints,
    launch: DaemonLaunch,
    probe: ProbeClient,
    control: ControlPlaneHandle,
    gateway_public_key: [u8; 32],
    gateway_endpoint: SocketAddr,
    /// The control plane's TLS configuration, for other APIs served beside it (`jitwg gateway`).
    control_plane_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Runs blocking lab work: inside a multi-thread runtime without stalling a worker, elsewhere
/// (a current-thread runtime, or none) directly.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Lab {
    /// Builds the lab in dependency order and waits until `jitwgd` answers `/ready`.
    /// `render` writes the daemon's config file from where its collaborators are.
    pub async fn build(
        spec: LabSpec,
        render: impl FnOnce(&DaemonEndpoints) -> Result<String, RunError>,
        interrupt: &CancellationToken,
    ) -> Result<Lab, RunError> {
        let mut parts = Parts::default();
        let state = StateDir::create(&spec.run_id)?;
        let state_path = state.dir.path().to_path_buf();
        parts.state = Some(state);
        let topo = blocking(|| match &spec.host {
            None => Topology::build(&spec.plan, &spec.run_id),
            Some(_) => Topology::host(&spec.plan, &spec.run_id),
        })
        .map_err(RunError::lab("building the network namespaces"))?;
        let names = topo.names.clone();
        let gateway_ns = Arc::clone(&topo.gateway);
        let control_ns = Arc::clone(&topo.control);
        parts.topology = Some(topo);
        // After the namespaces: their run locks tell `jitwg clean` this run's cgroup is live.
        if let Some(split) = &spec.cpu_split {
            let cpus = blocking(|| CpuConfinement::establish(&spec.run_id, split)).map_err(
                RunError::lab("splitting the CPUs between gateway and driver"),
            )?;
            gateway_ns.place_processes(cpus.gateway_placement());
            parts.cpus = Some(cpus);
        }

        let dataplane = start_dataplane(&gateway_ns, names.wg_interface(), &spec)?;
        let gateway_public_key = dataplane.public_key();
        if !spec.preinstalled.is_empty() {
            blocking(|| preinstall(&dataplane, &spec.preinstalled))
                .map_err(RunError::lab("preinstalling peers into the data plane"))?;
        }
        parts.dataplane = Some(dataplane);

        // NATS (push mode), then the control plane.
        let cp_ip = spec
            .host
            .as_ref()
            .map_or(spec.plan.control_plane(), |h| h.listen);
        let nats_addr = SocketAddr::new(IpAddr::V4(cp_ip), NATS_PORT);
        if let Some(program) = &spec.nats_server {
            let log = spec.logs.join("nats.log");
            parts.nats = Some(blocking(|| {
                services::start_nats(&control_ns, program, nats_addr, &log)
            })?);
        }
        let nats_url = spec
            .nats_server
            .as_ref()
            .map(|_| format!("nats://{nats_addr}"));
        let cp_listen = SocketAddr::new(IpAddr::V4(cp_ip), CONTROL_PLANE_PORT);
        let (access, channel) =
            secure_channel(&spec.control_plane_security, IpAddr::V4(cp_ip), &state_path)?;
        let control_plane_tls = access.tls.clone();
        let scheme = if access.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let cp = ControlPlaneService::start(
            &control_ns,
            cp_listen,
            ControlPlaneConfig {
                db: state_path.join("controlplane.db"),
                nats: nats_url.clone().map(|u| (u, NATS_SUBJECT.to_string())),
                faults: spec.control_plane_faults.clone(),
                seed: spec.seed,
                access,
            },
            spec.nats_server.as_ref().map(|_| nats_addr),
        )
        .await?;
        let control = cp.handle().clone();
        parts.control_plane = Some(cp);

        // The daemon.
        // On a host the metrics are for the operator's scraper too; in the lab only the driver's.
        let (metrics_ip, capture_interface, gateway_ip) = match &spec.host {
            Some(h) => (
                h.listen,
                h.capture_interface.clone().unwrap_or_default(),
                h.listen,
            ),
            None => (
                Ipv4Addr::LOCALHOST,
                names.veth_gw_to_client(),
                spec.plan.gateway_underlay(),
            ),
        };
        let metrics_addr = SocketAddr::new(IpAddr::V4(metrics_ip), METRICS_PORT);
        let endpoints = DaemonEndpoints {
            interface: names.wg_interface(),
            capture_interface,
            db: state_path.join("jitwgd.db"),
            api_url: format!("{scheme}://{cp_listen}"),
            metrics_addr,
            nats_url,
            nats_subject: NATS_SUBJECT.to_string(),
            channel,
        };
        let launch = DaemonLaunch {
            program: spec.jitwgd.clone(),
            config: spec.logs.join("jitwgd.toml"),
            log: spec.logs.join("jitwgd.log"),
            log_filter: spec.daemon_log_filter.clone(),
        };
        let config_text = render(&endpoints)?;
        std::fs::write(&launch.config, config_text).map_err(|source| RunError::Output {
            path: launch.config.clone(),
            source,
        })?;
        let probe = Probe::start(&gateway_ns, metrics_addr)
            .map_err(RunError::lab("starting the gateway probe thread"))?;
        let probe_client = probe.client();
        parts.probe = Some(probe);
        let Some(probe) = probe_client else {
            return Err(RunError::ControlPlaneStart(
                "gateway probe has no client".into(),
            ));
        };
        let mut lab = Lab {
            parts,
            plan: spec.plan,
            endpoints,
            launch,
            probe,
            control,
            gateway_public_key,
            gateway_endpoint: SocketAddr::new(IpAddr::V4(gateway_ip), WG_PORT),
            control_plane_tls,
        };
        if let Some(stored) = &spec.stored {
            let db = lab.endpoints.db.clone();
            blocking(|| seed_store(&db, stored))?;
        }
        lab.start_daemon()?;
        lab.wait_daemon_ready(interrupt).await?;
        Ok(lab)
    }

    /// Starts `jitwgd` (again: after a kill, on the same config and database). Does not wait.
    pub fn start_daemon(&mut self) -> Result<(), RunError> {
        let gateway = Arc::clone(&self.topology().gateway);
        let child = blocking(|| services::start_daemon(&gateway, &self.launch))?;
        self.parts.daemon = Some(child);
        Ok(())
    }

    /// SIGKILLs the daemon (no cleanup, as in a crash).
    pub fn kill9_daemon(&mut self) -> Result<(), LabError> {
        match self.parts.daemon.take() {
            Some(mut d) => blocking(|| d.kill9()),
            None => Ok(()),
        }
    }

    /// SIGTERMs the daemon, SIGKILLs it after `grace`.
    pub fn terminate_daemon(&mut self, grace: Duration) -> Result<(), LabError> {
        match self.parts.daemon.take() {
            Some(mut d) => blocking(|| d.terminate(grace)).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Whether the daemon process is still alive.
    pub fn daemon_running(&mut self) -> Result<bool, LabError> {
        match self.parts.daemon.as_mut() {
            Some(d) => Ok(d.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// Kills the daemon and restarts the data plane (its peers are gone), as a reboot does.
    /// Both are signalled before either is waited for (a crash takes them down together), and
    /// the daemon is reaped only after the new data plane is up: its exit takes the kernel
    /// ~30 ms (sockets torn down), and waiting for it before touching the data plane added
    /// that to every reboot's measured recovery although no rebooted gateway waits for it.
    pub fn reboot_dataplane(&mut self) -> Result<(), LabError> {
        if let Some(daemon) = self.parts.daemon.as_mut() {
            if let Err(e) = daemon.signal_kill() {
                tracing::warn!(error = %e, "signalling jitwgd");
            }
        }
        let restarted = match self.parts.dataplane.as_mut() {
            Some(dp) => blocking(|| {
                if let Err(e) = dp.signal_kill() {
                    tracing::warn!(error = %e, "signalling the data plane");
                }
                dp.restart()
            }),
            None => Ok(()),
        };
        // Reaped before the caller starts the next daemon (same port, same database).
        if let Err(e) = self.kill9_daemon() {
            tracing::warn!(error = %e, "killing jitwgd");
        }
        restarted
    }

    /// Waits for `/ready`, failing early if the daemon exits or `interrupt` fires.
    pub async fn wait_daemon_ready(
        &mut self,
        interrupt: &CancellationToken,
    ) -> Result<(), RunError> {
        let started = Instant::now();
        let log = self.launch.log.clone();
        let not_ready = |reason: String| RunError::DaemonNotReady {
            waited: started.elapsed(),
            reason,
            tail: services::log_tail(&log, 2048),
            log: log.clone(),
        };
        loop {
            if self.probe.is_ready().await {
                return Ok(());
            }
            if let Some(daemon) = self.parts.daemon.as_mut() {
                match daemon.try_wait() {
                    Ok(Some(status)) => return Err(not_ready(format!("it exited with {status}"))),
                    Ok(None) => {}
                    Err(e) => return Err(not_ready(format!("cannot check on it: {e}"))),
                }
            }
            if interrupt.is_cancelled() {
                return Err(RunError::InterruptedDuringSetup);
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(not_ready("timed out".into()));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    pub fn topology(&self) -> &Topology {
        // Set by `build` and only taken on drop.
        self.parts
            .topology
            .as_ref()
            .unwrap_or_else(|| unreachable!("a built lab has its topology"))
    }

    pub fn plan(&self) -> &AddressPlan {
        &self.plan
    }

    /// The CPU split in force, if any.
    pub fn cpus(&self) -> Option<&CpuConfinement> {
        self.parts.cpus.as_ref()
    }

    pub fn gateway_ns(&self) -> &Arc<Namespace> {
        &self.topology().gateway
    }

    /// The gateway's data plane.
    pub fn dataplane(&self) -> &DataPlane {
        // Set by `build` and only taken on drop.
        self.parts
            .dataplane
            .as_ref()
            .unwrap_or_else(|| unreachable!("a built lab has its data plane"))
    }

    pub fn daemon(&self) -> Option<&Child> {
        self.parts.daemon.as_ref()
    }

    pub fn nats(&self) -> Option<&Child> {
        self.parts.nats.as_ref()
    }

    pub fn control(&self) -> &ControlPlaneHandle {
        &self.control
    }

    /// The control plane's TLS configuration (`None`: plain HTTP).
    pub fn control_plane_tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.control_plane_tls.as_ref()
    }

    pub fn probe(&self) -> &ProbeClient {
        &self.probe
    }

    pub fn endpoints(&self) -> &DaemonEndpoints {
        &self.endpoints
    }

    pub fn daemon_log(&self) -> &Path {
        &self.launch.log
    }

    pub fn gateway_public_key(&self) -> [u8; 32] {
        self.gateway_public_key
    }

    /// Where clients send their initiations.
    pub fn gateway_endpoint(&self) -> SocketAddr {
        self.gateway_endpoint
    }

    /// The gateway's WireGuard endpoint on the IPv6 underlay (`None`: the lab has none).
    pub fn gateway_endpoint_v6(&self) -> Option<SocketAddr> {
        let v6 = self.plan.ipv6.as_ref()?;
        Some(SocketAddr::new(IpAddr::V6(v6.gateway()), WG_PORT))
    }
}

fn start_dataplane(
    gateway_ns: &Arc<Namespace>,
    interface: String,
    spec: &LabSpec,
) -> Result<DataPlane, RunError> {
    let dp_spec = DataPlaneSpec {
        interface,
        backend: spec.backend,
        private_key: spec.gateway_private_key,
        listen_port: WG_PORT,
        address: spec.plan.tunnel_gateway_net(),
    };
    let options = DataPlaneOptions {
        program: spec.wireguard_go.clone(),
        log: Some(spec.logs.join("wireguard-go.log")),
        go_max_procs: dataplane_go_max_procs(
            spec.cpu_split.as_ref().map(|s| s.gateway.len()),
            std::env::var_os("GOMAXPROCS").is_some(),
        ),
        ..DataPlaneOptions::default()
    };
    blocking(|| DataPlane::start_with(gateway_ns, dp_spec, options))
        .map_err(RunError::lab("starting the data plane"))
}

/// `GOMAXPROCS` for wireguard-go when the CPU split gives the gateway `gateway_cpus`.
///
/// Confined to one CPU, the Go runtime runs one goroutine at a time (GOMAXPROCS 1), and a
/// goroutine blocked in a system call (wireguard-go reads its sockets with blocking calls)
/// keeps that one slot until the runtime's monitor takes it back, up to 10 ms later. Measured
/// through `reboot-active`'s re-install: the gateway core sat 40-50 % idle while jitwgd waited
/// for UAPI replies, and recovery p99 was 1.57-1.79 s in 3 of 4 runs; with 2 slots on the
/// same one CPU the core was busy throughout and p99 was 0.86-0.91 s in 4 of 4 (median over
/// 9 runs 930 ms, against 1,353 ms over 12 with one slot). Two slots
/// share the CPU the split gives: the gateway gets no more CPU time. An operator's
/// `GOMAXPROCS` in the environment is passed on untouched.
fn dataplane_go_max_procs(gateway_cpus: Option<usize>, set_by_user: bool) -> Option<u32> {
    match gateway_cpus {
        Some(1) if !set_by_user => Some(2),
        _ => None,
    }
}

/// The lab's state directory, `jitwg-<run id>-XXXXXX` under the system temporary directory
/// (`$TMPDIR`, else `/tmp`): a local filesystem, unlike the output directory may be.
struct StateDir {
    dir: tempfile::TempDir,
    /// Taken before the directory exists and released after it is gone, so `jitwg clean`
    /// removes only the directories of runs that died without removing their own.
    _lock: RunLock,
}

impl StateDir {
    fn create(run_id: &RunId) -> Result<StateDir, RunError> {
        let lock = RunLock::acquire(&state_lock_name(run_id))
            .map_err(RunError::lab("locking the lab's state directory"))?;
        let parent = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix(&state_dir_prefix(run_id))
            .tempdir_in(&parent)
            .map_err(|source| RunError::StateDir { parent, source })?;
        Ok(StateDir { dir, _lock: lock })
    }
}

/// Puts the scenario's synthetic peers into the data plane (one bulk request), so the
/// daemon starts with them installed.
fn preinstall(dp: &DataPlane, peers: &[PreinstalledPeer]) -> Result<(), LabError> {
    let start = Instant::now();
    let nets: Vec<[IpNet; 1]> = peers
        .iter()
        .map(|p| [IpNet::V4(Ipv4Net::from(p.tunnel_ip))])
        .collect();
    dp.add_peers(
        peers
            .iter()
            .zip(&nets)
            .map(|(p, net)| (p.public_key, net.as_slice())),
    )?;
    tracing::info!(
        peers = peers.len(),
        took_ms = start.elapsed().as_secs_f64() * 1000.0,
        "preinstalled synthetic peers"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
