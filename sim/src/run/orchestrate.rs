//! The run itself: setup in dependency order, the one-second sampling loop with timed events,
//! and teardown in reverse order through [`Lab`]'s drop, which also runs on errors and panics.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use ipnet::{IpNet, Ipv4Net};
use jitwg_reports::{
    ApiSummary, ClientResult, Event, EventKind, Figures, Reload, Results, RunInfo, Sample,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{run_fleet, ClientError, FleetClient, FleetConfig, FleetProgress};
use crate::controlplane::{ControlPlaneConfig, FaultConfig, LatencyModel, PeerDoc};
use crate::lab::dataplane::{DataPlane, DataPlaneBackend, DataPlaneOptions, DataPlaneSpec};
use crate::lab::names::RunId;
use crate::lab::netns::NsThread;
use crate::lab::process::Child;
use crate::lab::topology::{AddressPlan, Topology};
use crate::lab::{LabError, RuntimeFlavor};
use crate::scenario::file::{BackendName, ModeName};
use crate::scenario::{EventAction, PreinstalledPeer, Scenario};

use super::daemon_config::{self, DaemonEndpoints};
use super::probe::{Probe, ProbeClient};
use super::services::{self, ControlPlaneService, DaemonLaunch};
use super::tracker::{all_reconnected_after, UsageTracker};
use super::{api_count, prereq, prometheus, stale, usage};
use super::{
    RunError, RunOptions, RunOutcome, CONTROL_PLANE_PORT, FLEET_STOP_TIMEOUT, METRICS_PORT,
    NATS_PORT, NATS_SUBJECT, READY_TIMEOUT, WG_PORT,
};

/// How often the loop wakes up (events fire with this resolution); samples are taken every second.
const TICK: Duration = Duration::from_millis(100);
/// How often `/ready` is polled while waiting for the daemon.
const READY_POLL: Duration = Duration::from_millis(10);
/// Grace period for SIGTERM before SIGKILL when the daemon restarts.
const DAEMON_GRACE: Duration = Duration::from_secs(5);
/// Seed stream of the gateway's private key (the scenario uses streams 1..=3 for clients).
const GATEWAY_KEY_STREAM: u64 = 100;
/// Most clients set to give up after WireGuard's REKEY_ATTEMPT_TIME.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

type FleetOutput = Result<Result<Vec<ClientResult>, ClientError>, LabError>;

/// The fleet's runtime thread and the token that stops it.
struct FleetThread {
    cancel: CancellationToken,
    thread: Option<NsThread<FleetOutput>>,
}

impl FleetThread {
    /// Cancels the fleet and waits (up to [`FLEET_STOP_TIMEOUT`]) for its results.
    async fn finish(&mut self) -> Result<Vec<ClientResult>, RunError> {
        self.cancel.cancel();
        let deadline = Instant::now() + FLEET_STOP_TIMEOUT;
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if Instant::now() >= deadline {
                return Err(RunError::FleetStuck(FLEET_STOP_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match self.thread.take() {
            None => Ok(Vec::new()),
            Some(t) => t
                .join()
                .and_then(|r| r)
                .map_err(|e| RunError::FleetThread(Box::new(e)))?
                .map_err(RunError::Fleet),
        }
    }
}

impl Drop for FleetThread {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            // A fleet that ignores cancellation would block teardown forever: detach it then.
            let deadline = std::time::Instant::now() + FLEET_STOP_TIMEOUT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::error!("client fleet did not stop; leaving its thread behind");
            }
        }
    }
}

/// Everything the run started. Dropping it stops them in reverse dependency order: clients,
/// daemon, probe, control plane, NATS, data plane, the namespaces, and last the state directory.
#[derive(Default)]
struct Lab {
    /// The run's SQLite databases (control plane, daemon). Not in `--out`: SQLite's WAL needs
    /// shared memory the output directory's filesystem may not offer (a 9p share in `ci/vm.sh`'s
    /// VM), and databases are not results. One directory per run, so the daemon finds its own
    /// database again after a reboot event; removed after everything using it has stopped.
    state: Option<tempfile::TempDir>,
    fleet: Option<FleetThread>,
    daemon: Option<Child>,
    probe: Option<Probe>,
    control_plane: Option<ControlPlaneService>,
    nats: Option<Child>,
    dataplane: Option<DataPlane>,
    topology: Option<Topology>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut teardown = || {
            drop(self.fleet.take());
            drop(self.daemon.take());
            drop(self.probe.take());
            drop(self.control_plane.take());
            drop(self.nats.take());
            drop(self.dataplane.take());
            if let Some(t) = self.topology.take() {
                tracing::info!(run = %t.run_id(), "tearing down the lab");
                drop(t);
            }
            if let Some(dir) = self.state.take() {
                let path = dir.path().to_path_buf();
                if let Err(e) = dir.close() {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove the run's state directory");
                }
            }
        };
        // Inside the driver's multi-thread runtime the joins above must not stall a worker.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(teardown)
            }
            _ => teardown(),
        }
    }
}

/// Creates the run's state directory, `jitwg-<run id>-XXXXXX` under the system temporary
/// directory (`$TMPDIR`, else `/tmp`): a local filesystem, unlike the output directory may be.
fn state_dir(run_id: &RunId) -> Result<tempfile::TempDir, RunError> {
    let parent = std::env::temp_dir();
    tempfile::Builder::new()
        .prefix(&format!("jitwg-{run_id}-"))
        .tempdir_in(&parent)
        .map_err(|source| RunError::StateDir { parent, source })
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
        took_ms = ms(start.elapsed()),
        "preinstalled synthetic peers"
    );
    Ok(())
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Ends the run early on SIGINT or SIGTERM.
fn watch_signals() -> Result<CancellationToken, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Runtime)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Runtime)?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("interrupted: stopping the run and tearing down");
        t.cancel();
    });
    Ok(token)
}

/// Raises the soft open-files limit to the hard limit: thousands of client sockets need it.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
    }
}

fn gateway_private_key(seed: u64) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(GATEWAY_KEY_STREAM);
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    // X25519 clamping, as `wg genkey` does.
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

fn absolute(path: &Path) -> Result<PathBuf, RunError> {
    std::path::absolute(path).map_err(|source| RunError::Output {
        path: path.to_path_buf(),
        source,
    })
}

/// A scheduled action, in run time.
#[derive(Debug, Clone, Copy)]
enum Action {
    Reboot,
    DaemonRestart,
    OutageStart { len: Duration },
    OutageEnd,
}

fn schedule(scenario: &Scenario) -> Vec<(Duration, Action)> {
    let mut out = Vec::new();
    for ev in &scenario.events {
        match ev.action {
            EventAction::Reboot => out.push((ev.at, Action::Reboot)),
            EventAction::DaemonRestart => out.push((ev.at, Action::DaemonRestart)),
            EventAction::ApiOutage { until } => {
                out.push((
                    ev.at,
                    Action::OutageStart {
                        len: until.saturating_sub(ev.at),
                    },
                ));
                out.push((until, Action::OutageEnd));
            }
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// The reload after the first reboot or daemon restart.
struct ReloadWatch {
    reboot_start_ms: f64,
    daemon_start_ms: f64,
    /// Resolves to "ready after" once `/ready` answers 200 (or `None` on timeout).
    waiter: Option<JoinHandle<Option<Duration>>>,
    ready_after_ms: Option<f64>,
    peers_at_boot: u64,
}

fn wait_ready(probe: ProbeClient, started: Instant) -> JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        while started.elapsed() < READY_TIMEOUT {
            if probe.is_ready().await {
                return Some(started.elapsed());
            }
            tokio::time::sleep(READY_POLL).await;
        }
        None
    })
}

pub(super) async fn execute(scenario: Scenario, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let interrupt = watch_signals()?;

    // Prerequisites first: nothing is created on a machine that cannot run the scenario.
    prereq::require_root()?;
    let dataplane_program = match scenario.backend {
        BackendName::Userspace => Some(prereq::require_binary(
            "wireguard-go",
            "install it with `apt-get install wireguard-go` (or ci/install-deps.sh)",
        )?),
        BackendName::Kernel => {
            prereq::require_kernel_wireguard()?;
            None
        }
    };
    let nats_program = match scenario.daemon.mode {
        ModeName::Push => Some(prereq::require_binary(
            "nats-server",
            "push mode needs it: `apt-get install nats-server` (or ci/install-deps.sh)",
        )?),
        ModeName::Jit => None,
    };
    let jitwgd = prereq::locate_jitwgd()?;

    let run_id = RunId::random();
    let out = absolute(
        &opts
            .out
            .clone()
            .unwrap_or_else(|| super::default_out_dir(&scenario.name, &run_id)),
    )?;
    std::fs::create_dir_all(&out).map_err(|source| RunError::Output {
        path: out.clone(),
        source,
    })?;
    raise_nofile_limit();

    let mut lab = Lab::default();
    let state = state_dir(&run_id)?;
    let state_path = state.path().to_path_buf();
    lab.state = Some(state);
    let plan = AddressPlan::default();
    let topo = blocking(|| Topology::build(&plan, &run_id))
        .map_err(RunError::lab("building the network namespaces"))?;
    let names = topo.names.clone();
    let gateway_ns = Arc::clone(&topo.gateway);
    let client_ns = Arc::clone(&topo.client);
    let control_ns = Arc::clone(&topo.control);
    lab.topology = Some(topo);

    // Data plane.
    let spec = DataPlaneSpec {
        interface: names.wg_interface(),
        backend: match scenario.backend {
            BackendName::Userspace => DataPlaneBackend::Userspace,
            BackendName::Kernel => DataPlaneBackend::Kernel,
        },
        private_key: gateway_private_key(scenario.seed),
        listen_port: WG_PORT,
        address: plan.tunnel_gateway_net(),
    };
    let dp_options = DataPlaneOptions {
        program: dataplane_program
            .clone()
            .unwrap_or_else(|| PathBuf::from("wireguard-go")),
        log: Some(out.join("wireguard-go.log")),
        ..DataPlaneOptions::default()
    };
    let dataplane = blocking(|| DataPlane::start_with(&gateway_ns, spec, dp_options))
        .map_err(RunError::lab("starting the data plane"))?;
    let gateway_public_key = dataplane.public_key();
    lab.dataplane = Some(dataplane);
    if !scenario.preinstalled.is_empty() {
        let dp = lab
            .dataplane
            .as_ref()
            .ok_or(RunError::InterruptedDuringSetup)?;
        blocking(|| preinstall(dp, &scenario.preinstalled))
            .map_err(RunError::lab("preinstalling peers into the data plane"))?;
    }

    // NATS (push mode), then the control plane.
    let cp_ip = plan.control_plane();
    let nats_addr = SocketAddr::new(IpAddr::V4(cp_ip), NATS_PORT);
    if let Some(program) = &nats_program {
        lab.nats = Some(blocking(|| {
            services::start_nats(&control_ns, program, nats_addr, &out.join("nats.log"))
        })?);
    }
    let nats_url = nats_program.as_ref().map(|_| format!("nats://{nats_addr}"));
    let cp_cfg = ControlPlaneConfig {
        db: state_path.join("controlplane.db"),
        nats: nats_url.clone().map(|u| (u, NATS_SUBJECT.to_string())),
        faults: FaultConfig {
            latency: (!scenario.control_plane.latency.is_zero()).then_some(LatencyModel::Fixed {
                delay: scenario.control_plane.latency,
            }),
            error_rate: scenario.control_plane.error_rate,
            ..FaultConfig::default()
        },
        seed: scenario.seed,
    };
    let cp_listen = SocketAddr::new(IpAddr::V4(cp_ip), CONTROL_PLANE_PORT);
    let cp = ControlPlaneService::start(
        &control_ns,
        cp_listen,
        cp_cfg,
        nats_program.as_ref().map(|_| nats_addr),
    )
    .await?;
    let cp_handle = cp.handle().clone();
    lab.control_plane = Some(cp);

    // The daemon.
    let metrics_addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), METRICS_PORT);
    let endpoints = DaemonEndpoints {
        interface: names.wg_interface(),
        capture_interface: names.veth_gw_to_client(),
        db: state_path.join("jitwgd.db"),
        api_url: format!("http://{cp_listen}"),
        metrics_addr,
        nats_url,
        nats_subject: NATS_SUBJECT.to_string(),
    };
    let config_text =
        daemon_config::render(&scenario, &endpoints).map_err(RunError::DaemonConfig)?;
    let launch = DaemonLaunch {
        program: jitwgd,
        config: out.join("jitwgd.toml"),
        log: out.join("jitwgd.log"),
    };
    std::fs::write(&launch.config, config_text).map_err(|source| RunError::Output {
        path: launch.config.clone(),
        source,
    })?;
    let probe = Probe::start(&gateway_ns, metrics_addr)
        .map_err(RunError::lab("starting the gateway probe thread"))?;
    let probe_client = probe.client();
    lab.probe = Some(probe);
    let Some(probe_client) = probe_client else {
        return Err(RunError::ControlPlaneStart(
            "gateway probe has no client".into(),
        ));
    };
    lab.daemon = Some(blocking(|| services::start_daemon(&gateway_ns, &launch))?);
    wait_daemon_ready(&mut lab, &probe_client, &launch.log, &interrupt).await?;

    // Register after the daemon is up, so in push mode it receives every published peer.
    let docs: Vec<PeerDoc> = scenario
        .registered_peers()
        .map(|p| PeerDoc::new(&p.public_key, vec![format!("{}/32", p.tunnel_ip)], None))
        .collect();
    cp_handle
        .register_many(&docs)
        .await
        .map_err(RunError::Register)?;
    if interrupt.is_cancelled() {
        return Err(RunError::InterruptedDuringSetup);
    }

    // The fleet.
    let fleet_config = FleetConfig {
        gateway: SocketAddr::new(IpAddr::V4(plan.gateway_underlay()), WG_PORT),
        gateway_public_key,
        gateway_tunnel_ip: plan.tunnel_gateway,
        give_up_after: GIVE_UP_AFTER,
        event_log: opts.event_log.then(|| out.join("client-events.jsonl")),
    };
    let clients: Vec<FleetClient> = scenario
        .clients
        .iter()
        .filter_map(|plan| {
            let pop = scenario.populations.get(plan.population)?;
            Some(FleetClient {
                plan: plan.clone(),
                population: pop.name.clone(),
                behaviour: pop.behaviour.clone(),
                link: pop.link,
            })
        })
        .collect();
    let progress = Arc::new(FleetProgress::default());
    let cancel = CancellationToken::new();
    let started_at = SystemTime::now();
    let origin = Instant::now();
    let thread = {
        let (progress, cancel) = (Arc::clone(&progress), cancel.clone());
        client_ns
            .spawn_runtime_thread(
                "fleet",
                RuntimeFlavor::MultiThread { workers: 2 },
                move || run_fleet(fleet_config, clients, origin, progress, cancel),
            )
            .map_err(RunError::lab("starting the client fleet"))?
    };
    lab.fleet = Some(FleetThread {
        cancel,
        thread: Some(thread),
    });

    let bar = progress_bar(opts.quiet, scenario.clients.len() as u64);
    let mut state = LoopState {
        samples: Vec::new(),
        events: Vec::new(),
        usage: UsageTracker::default(),
        lookups: BTreeMap::new(),
        api_sent: api_count::CountAcrossRestarts::default(),
        reload: None,
        pending_ready: Vec::new(),
        dataplane_down: false,
    };
    let mut pending = schedule(&scenario).into_iter().peekable();
    let mut next_sample = Duration::ZERO;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = interrupt.cancelled() => { interrupted = true; break; }
        }
        let elapsed = origin.elapsed();
        while let Some(&(at, action)) = pending.peek() {
            if at > elapsed {
                break;
            }
            pending.next();
            let t_ms = ms(origin.elapsed());
            state
                .act(
                    action,
                    t_ms,
                    &mut lab,
                    &gateway_ns,
                    &launch,
                    &probe_client,
                    &cp_handle,
                    origin,
                )
                .await?;
        }
        state.check_ready(&lab).await;
        if elapsed >= next_sample {
            state
                .sample(
                    ms(elapsed),
                    &lab,
                    &progress,
                    &probe_client,
                    &cp_handle,
                    &scenario,
                )
                .await;
            next_sample += scenario.sample_every;
            update_bar(&bar, &progress, state.samples.last());
        }
        let fleet_done = lab
            .fleet
            .as_ref()
            .and_then(|f| f.thread.as_ref())
            .is_none_or(NsThread::is_finished);
        if fleet_done || elapsed >= scenario.duration {
            break;
        }
    }
    bar.finish_and_clear();

    let mut clients = match lab.fleet.as_mut() {
        Some(f) => f.finish().await?,
        None => Vec::new(),
    };
    clients.sort_by_key(|c| c.id);
    let end = origin.elapsed();
    state.check_ready(&lab).await;
    state
        .sample(
            ms(end),
            &lab,
            &progress,
            &probe_client,
            &cp_handle,
            &scenario,
        )
        .await;
    state.events.push(Event {
        t_ms: ms(end),
        kind: EventKind::RunEnd,
        detail: if interrupted {
            "interrupted".into()
        } else {
            String::new()
        },
    });
    let stats = cp_handle.stats();
    drop(lab);

    let reload = state.reload.take().map(|r| {
        let after = all_reconnected_after(&clients, r.reboot_start_ms, r.daemon_start_ms);
        if let Some(after) = after {
            state.events.push(Event {
                t_ms: r.daemon_start_ms + after,
                kind: EventKind::AllReconnected,
                detail: String::new(),
            });
        }
        Reload {
            reboot_at_ms: r.daemon_start_ms,
            ready_after_ms: r.ready_after_ms,
            peers_at_boot: r.peers_at_boot,
            all_reconnected_after_ms: after,
        }
    });
    state.events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));

    let mut results = Results::new(RunInfo {
        id: format!("{}-{}", scenario.name, run_id),
        scenario_name: scenario.name.clone(),
        scenario_file: opts.scenario_file.display().to_string(),
        seed: scenario.seed,
        started_at_unix_ms: started_at
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        duration_ms: ms(end),
        resolved_scenario: serde_json::to_value(&scenario.file).unwrap_or_default(),
        tool: super::info::tool_info(dataplane_program.as_deref().and_then(Path::to_str)),
        mode: scenario.mode_name().into(),
        boot: scenario.boot_name().into(),
        backend: scenario.backend_name().into(),
        initiate: scenario.daemon.initiate,
        stale_threshold_ms: ms(scenario.stale_threshold),
    });
    results.clients = clients;
    results.samples = state.samples;
    results.events = state.events;
    results.api = ApiSummary {
        calls_total: stats.requests_total,
        per_key: stats.per_key,
        by_status: stats.by_status,
        sent_by_daemon: state.api_sent.total(),
        sent_by_daemon_by_outcome: state.api_sent.by_outcome(),
    };
    results.processes = state.usage.usage();
    results.reload = reload;
    results.expectations =
        jitwg_reports::evaluate(&scenario.expectations, &Figures::from_results(&results));

    let results_path = out.join("results.json");
    jitwg_reports::save(&results, &results_path).map_err(RunError::Save)?;
    Ok(RunOutcome {
        results,
        out_dir: out,
        results_path,
        interrupted,
    })
}

/// Waits for the first `/ready`, failing early if the daemon exits or the user interrupts.
async fn wait_daemon_ready(
    lab: &mut Lab,
    probe: &ProbeClient,
    log: &Path,
    interrupt: &CancellationToken,
) -> Result<(), RunError> {
    let started = Instant::now();
    let not_ready = |reason: String| RunError::DaemonNotReady {
        waited: started.elapsed(),
        reason,
        log: log.to_path_buf(),
        tail: services::log_tail(log, 2048),
    };
    loop {
        if probe.is_ready().await {
            return Ok(());
        }
        if let Some(daemon) = lab.daemon.as_mut() {
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

struct LoopState {
    samples: Vec<Sample>,
    events: Vec<Event>,
    usage: UsageTracker,
    /// Last successful scrape, kept when a scrape fails (e.g. during a reboot).
    lookups: BTreeMap<String, u64>,
    /// jitwgd's count of the API requests it sent, over its restarts.
    api_sent: api_count::CountAcrossRestarts,
    reload: Option<ReloadWatch>,
    /// Readiness waits of restarts after the first, with their start (ms into the run).
    pending_ready: Vec<(JoinHandle<Option<Duration>>, f64)>,
    /// Set while the data plane does not answer, so the warning is logged once per outage.
    dataplane_down: bool,
}

impl LoopState {
    #[allow(clippy::too_many_arguments)]
    async fn act(
        &mut self,
        action: Action,
        t_ms: f64,
        lab: &mut Lab,
        gateway_ns: &Arc<crate::lab::Namespace>,
        launch: &DaemonLaunch,
        probe: &ProbeClient,
        cp: &crate::controlplane::ControlPlaneHandle,
        origin: Instant,
    ) -> Result<(), RunError> {
        match action {
            Action::OutageStart { len } => {
                cp.start_outage(len);
                self.push_event(t_ms, EventKind::ApiOutageStart, format!("for {len:?}"));
            }
            Action::OutageEnd => {
                cp.end_outage();
                self.push_event(t_ms, EventKind::ApiOutageEnd, String::new());
            }
            Action::Reboot | Action::DaemonRestart => {
                self.observe_usage(lab);
                // Its last count before it goes (what it sends after this is lost with it).
                if let Ok((200, body)) = probe.get("/metrics").await {
                    self.api_sent.observe(api_count::requests_by_outcome(&body));
                }
                let reboot = matches!(action, Action::Reboot);
                if reboot {
                    self.push_event(
                        t_ms,
                        EventKind::RebootStart,
                        "kill -9 daemon and data plane".into(),
                    );
                    if let Some(mut d) = lab.daemon.take() {
                        if let Err(e) = blocking(|| d.kill9()) {
                            tracing::warn!(error = %e, "killing jitwgd");
                        }
                    }
                    if let Some(dp) = lab.dataplane.as_mut() {
                        blocking(|| dp.restart())
                            .map_err(RunError::lab("restarting the data plane after a reboot"))?;
                    }
                    self.usage.restarted("dataplane");
                } else {
                    self.push_event(t_ms, EventKind::DaemonRestart, "SIGTERM daemon".into());
                    if let Some(mut d) = lab.daemon.take() {
                        if let Err(e) = blocking(|| d.terminate(DAEMON_GRACE)) {
                            tracing::warn!(error = %e, "stopping jitwgd");
                        }
                    }
                }
                self.usage.restarted("daemon");
                self.api_sent.restarted();
                let start = Instant::now();
                lab.daemon = Some(blocking(|| services::start_daemon(gateway_ns, launch))?);
                if self.reload.is_none() {
                    self.reload = Some(ReloadWatch {
                        reboot_start_ms: t_ms,
                        daemon_start_ms: ms(start.duration_since(origin)),
                        waiter: Some(wait_ready(probe.clone(), start)),
                        ready_after_ms: None,
                        peers_at_boot: 0,
                    });
                } else {
                    // Later restarts still get a "ready" mark on the timeline.
                    let probe = probe.clone();
                    let handle = wait_ready(probe, start);
                    self.later_ready(handle, start, origin);
                }
            }
        }
        Ok(())
    }

    /// Records a DaemonReady event for a restart after the first one, in the background.
    fn later_ready(
        &mut self,
        handle: JoinHandle<Option<Duration>>,
        start: Instant,
        origin: Instant,
    ) {
        let offset = ms(start.duration_since(origin));
        self.pending_ready.push((handle, offset));
    }

    fn push_event(&mut self, t_ms: f64, kind: EventKind, detail: String) {
        tracing::info!(t_ms, %kind, %detail, "event");
        self.events.push(Event { t_ms, kind, detail });
    }

    async fn check_ready(&mut self, lab: &Lab) {
        let mut done = None;
        if let Some(r) = self.reload.as_mut() {
            if r.waiter.as_ref().is_some_and(JoinHandle::is_finished) {
                if let Some(w) = r.waiter.take() {
                    done = Some((r.daemon_start_ms, w.await.ok().flatten()));
                }
            }
        }
        if let Some((start_ms, ready)) = done {
            let peers = lab
                .dataplane
                .as_ref()
                .and_then(|dp| blocking(|| dp.peers()).ok())
                .map_or(0, |p| p.len() as u64);
            if let Some(r) = self.reload.as_mut() {
                r.ready_after_ms = ready.map(ms);
                r.peers_at_boot = peers;
            }
            self.ready_event(start_ms, ready);
        }
        let mut still = Vec::new();
        for (h, start_ms) in std::mem::take(&mut self.pending_ready) {
            if h.is_finished() {
                let ready = h.await.ok().flatten();
                self.ready_event(start_ms, ready);
            } else {
                still.push((h, start_ms));
            }
        }
        self.pending_ready = still;
    }

    fn ready_event(&mut self, start_ms: f64, ready: Option<Duration>) {
        match ready {
            Some(after) => self.push_event(
                start_ms + ms(after),
                EventKind::DaemonReady,
                format!("ready {:.1} ms after start", ms(after)),
            ),
            None => tracing::warn!("jitwgd did not become ready after a restart"),
        }
    }

    fn observe_usage(&mut self, lab: &Lab) {
        let (cpu, peak) = usage::driver_usage();
        self.usage.observe("driver", cpu, peak);
        let procs = [
            ("daemon", lab.daemon.as_ref().and_then(Child::usage)),
            (
                "dataplane",
                lab.dataplane.as_ref().and_then(DataPlane::usage),
            ),
            ("nats", lab.nats.as_ref().and_then(Child::usage)),
        ];
        for (name, u) in procs {
            if let Some(u) = u {
                self.usage.observe(name, u.cpu_seconds, u.peak_rss_bytes);
            }
        }
    }

    async fn sample(
        &mut self,
        t_ms: f64,
        lab: &Lab,
        progress: &FleetProgress,
        probe: &ProbeClient,
        cp: &crate::controlplane::ControlPlaneHandle,
        scenario: &Scenario,
    ) {
        self.observe_usage(lab);
        let now = SystemTime::now();
        let listing = lab.dataplane.as_ref().map(|dp| blocking(|| dp.peers()));
        let (installed_peers, stale_peers) = match listing {
            Some(Ok(peers)) => {
                self.dataplane_down = false;
                stale::count(
                    peers.iter().map(|p| p.last_handshake),
                    now,
                    scenario.stale_threshold,
                )
            }
            // Reboots restart the data plane before the next sample, so this is a crash (or
            // someone else killed it): say so once, and count nothing installed.
            Some(Err(e)) => {
                if !self.dataplane_down {
                    tracing::warn!(error = %e, "the data plane stopped answering; sampling 0 installed peers");
                }
                self.dataplane_down = true;
                (0, 0)
            }
            None => (0, 0),
        };
        if let Ok((200, body)) = probe.get("/metrics").await {
            self.lookups = prometheus::lookups_by_outcome(&body);
            self.api_sent.observe(api_count::requests_by_outcome(&body));
        }
        let snap = progress.snapshot();
        self.samples.push(Sample {
            t_ms,
            installed_peers,
            stale_peers,
            connected_clients: snap.connected_now,
            in_flight: snap.in_flight,
            api_calls_total: cp.stats().requests_total,
            lookups: self.lookups.clone(),
            processes: self.usage.usage(),
        });
    }
}

fn progress_bar(quiet: bool, clients: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
        bar.set_style(style);
    }
    bar.set_length(clients);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn update_bar(bar: &ProgressBar, progress: &FleetProgress, sample: Option<&Sample>) {
    let snap = progress.snapshot();
    let (installed, stale) = sample.map_or((0, 0), |s| (s.installed_peers, s.stale_peers));
    let clients = bar.length().unwrap_or(0);
    bar.set_message(format!(
        "{clients} clients: {} attempts started, {} connected, {} failed, {} in flight | peers installed {installed}, stale {stale}",
        snap.started, snap.connected_now, snap.failed, snap.in_flight
    ));
}
