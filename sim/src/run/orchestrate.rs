//! The run itself: check the machine, build the lab ([`Lab::build`]), register the peers,
//! start the fleet, then tick the timeline (events and one sample a second) until the fleet is
//! done or time is up; teardown runs through the lab's guards, also on errors and panics.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use ipnet::{IpNet, Ipv4Net};
use jitwg_reports::Sample;
use jitwgd::peer::PeerConfig;
use jitwgd::store::PeerSource;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capture::Capture;
use crate::client::{run_fleet, FleetClient, FleetConfig, FleetProgress};
use crate::controlplane::{FaultConfig, LatencyModel, PeerDoc};
use crate::lab::dataplane::DataPlaneBackend;
use crate::lab::names::RunId;
use crate::lab::topology::AddressPlan;
use crate::lab::RuntimeFlavor;
use crate::scenario::file::{BackendName, ModeName};
use crate::scenario::{EventAction, Scenario};

use super::context::{FleetThread, RunContext};
use super::daemon_config;
use super::lab::{blocking, ControlPlaneSecurity, Lab, LabSpec, StoredPeers};
use super::reproduce::{capture_info, prepare_capture, rerun_info};
use super::results::{assemble, Finished};
use super::timeline::{Clock, Timeline};
use super::{prereq, RunError, RunOptions, RunOutcome};

/// Seed stream of the gateway's private key (the scenario uses streams 1..=3 for clients).
const GATEWAY_KEY_STREAM: u64 = 100;
/// Most clients set to give up after WireGuard's REKEY_ATTEMPT_TIME.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

/// Ends the run early on SIGINT or SIGTERM.
pub(crate) fn watch_signals() -> Result<CancellationToken, RunError> {
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

/// The gateway's static private key of a run with this seed (the same on every rerun).
pub fn gateway_private_key(seed: u64) -> [u8; 32] {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(GATEWAY_KEY_STREAM);
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    // X25519 clamping, as `wg genkey` does.
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

pub(crate) fn absolute(path: &Path) -> Result<PathBuf, RunError> {
    std::path::absolute(path).map_err(|source| RunError::Output {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks the prerequisites and says what to build: nothing is created on a machine that
/// cannot run the scenario.
pub(crate) fn lab_spec(
    scenario: &Scenario,
    run_id: &RunId,
    out: &Path,
) -> Result<LabSpec, RunError> {
    let plan = if scenario.needs_ipv6() {
        AddressPlan::default().with_ipv6(None)
    } else {
        AddressPlan::default()
    };
    let mut spec = LabSpec::new(plan, PathBuf::new(), out.to_path_buf());
    prereq::require_root()?;
    match scenario.backend {
        BackendName::Userspace => {
            spec.wireguard_go = prereq::require_binary(
                "wireguard-go",
                "install it with `apt-get install wireguard-go` (or ci/install-deps.sh)",
            )?;
        }
        BackendName::Kernel => {
            prereq::require_kernel_wireguard()?;
            spec.backend = DataPlaneBackend::Kernel;
        }
    }
    if scenario.daemon.mode == ModeName::Push {
        spec.nats_server = Some(prereq::require_binary(
            "nats-server",
            "push mode needs it: `apt-get install nats-server` (or ci/install-deps.sh)",
        )?);
    }
    spec.jitwgd = prereq::locate_jitwgd()?;
    spec.run_id = run_id.clone();
    spec.gateway_private_key = gateway_private_key(scenario.seed);
    spec.preinstalled = scenario.preinstalled.clone();
    spec.stored = stored_peers(scenario);
    spec.seed = scenario.seed;
    spec.control_plane_faults = FaultConfig {
        latency: (!scenario.control_plane.latency.is_zero()).then_some(LatencyModel::Fixed {
            delay: scenario.control_plane.latency,
        }),
        error_rate: scenario.control_plane.error_rate,
        ..FaultConfig::default()
    };
    let cp = &scenario.control_plane;
    spec.control_plane_security = ControlPlaneSecurity {
        tls: cp.tls,
        token: cp.token.then(super::channel::random_token),
        client_cert: cp.client_cert,
    };
    Ok(spec)
}

/// The scenario's `stored_peers` as jitwgd stores them: push-mode entries (kept for good) in
/// push mode, else positive cache entries valid for jitwgd's `positive_ttl`.
fn stored_peers(scenario: &Scenario) -> Option<StoredPeers> {
    if scenario.stored_peers.is_empty() {
        return None;
    }
    let peers = scenario
        .stored_peers
        .iter()
        .map(|p| PeerConfig {
            public_key: jitwgd::peer::PublicKey(p.public_key),
            allowed_ips: vec![IpNet::V4(Ipv4Net::from(p.tunnel_ip))],
            preshared_key: None,
        })
        .collect();
    let (source, ttl) = match scenario.daemon.mode {
        ModeName::Push => (PeerSource::Push, Duration::MAX),
        ModeName::Jit => (
            PeerSource::Api,
            scenario
                .file
                .daemon
                .positive_ttl
                .unwrap_or(jitwgd::config::defaults::POSITIVE_TTL),
        ),
    };
    Some(StoredPeers { peers, source, ttl })
}

/// Clients that send traffic all along (`stay`): the ones that can see recovery time.
pub(crate) fn continuous_traffic(scenario: &Scenario) -> HashSet<u32> {
    scenario
        .clients
        .iter()
        .filter(|c| {
            scenario.populations.get(c.population).is_some_and(|p| {
                matches!(
                    p.behaviour,
                    crate::scenario::file::BehaviourFile::Stay { .. }
                )
            })
        })
        .map(|c| c.id)
        .collect()
}

/// The fleet's event log: written when asked for, and for every scenario that restarts the
/// daemon, whose recovery time is read from the clients' echo replies in it.
pub(crate) fn event_log_path(
    scenario: &Scenario,
    opts: &RunOptions,
    out: &Path,
) -> Option<PathBuf> {
    (opts.keep_event_log()
        || !scenario
            .events
            .iter()
            .all(|e| matches!(e.action, EventAction::ApiOutage { .. })))
    .then(|| out.join("client-events.jsonl"))
}

/// The fleet's view of one planned client (`None`: its population is gone, which `resolve`
/// never produces).
pub(crate) fn fleet_client(
    scenario: &Scenario,
    plan: &crate::scenario::resolve::ClientPlan,
) -> Option<FleetClient> {
    let pop = scenario.populations.get(plan.population)?;
    Some(FleetClient {
        plan: plan.clone(),
        population: pop.name.clone(),
        behaviour: pop.behaviour.clone(),
        link: pop.link,
    })
}

/// Starts the client fleet on its own runtime in the client namespace.
fn start_fleet(
    lab: &Lab,
    scenario: &Scenario,
    opts: &RunOptions,
    out: &Path,
    progress: &Arc<FleetProgress>,
    origin: Instant,
) -> Result<FleetThread, RunError> {
    let fleet_config = FleetConfig {
        gateway: lab.gateway_endpoint(),
        gateway_public_key: lab.gateway_public_key(),
        gateway_tunnel_ip: lab.plan().tunnel_gateway,
        give_up_after: GIVE_UP_AFTER,
        event_log: event_log_path(scenario, opts, out),
    };
    let clients: Vec<FleetClient> = scenario
        .clients
        .iter()
        .filter_map(|plan| fleet_client(scenario, plan))
        .collect();
    let cancel = CancellationToken::new();
    let (progress, stop) = (Arc::clone(progress), cancel.clone());
    let thread = lab
        .topology()
        .client
        .spawn_runtime_thread(
            "fleet",
            RuntimeFlavor::MultiThread { workers: 2 },
            move || run_fleet(fleet_config, clients, origin, progress, stop),
        )
        .map_err(RunError::lab("starting the client fleet"))?;
    Ok(FleetThread {
        cancel,
        thread: Some(thread),
    })
}

pub(super) async fn execute(scenario: Scenario, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    let interrupt = watch_signals()?;
    let run_id = RunId::random();
    let out = absolute(
        &opts
            .out
            .clone()
            .unwrap_or_else(|| super::default_out_dir(&scenario.name, &run_id)),
    )?;
    let mut spec = lab_spec(&scenario, &run_id, &out)?;
    let available = crate::lab::cpuset::available_cpus()
        .map_err(RunError::lab("reading the CPUs this process may use"))?;
    let cpu_plan = crate::scenario::plan_cpus(&opts.scenario_file, &scenario, &available)?;
    let mut warnings: Vec<String> = cpu_plan.warning.iter().cloned().collect();
    let starts: Vec<_> = scenario
        .clients
        .iter()
        .map(|c| (c.source_ip, c.start))
        .collect();
    let (source_addresses, per_source) = crate::shard::spec::source_summary(&starts);
    warnings.extend(per_source);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    spec.cpu_split = cpu_plan.split;
    let dataplane_program =
        (spec.backend == DataPlaneBackend::Userspace).then(|| spec.wireguard_go.clone());
    std::fs::create_dir_all(&out).map_err(|source| RunError::Output {
        path: out.clone(),
        source,
    })?;

    // Before anything starts: a capture that cannot work fails the run here.
    let recorder = match opts.capture {
        Some(options) => Some(prepare_capture(&scenario, &spec, &out, options)?),
        None => None,
    };

    let render = |at: &_| daemon_config::render(&scenario, at).map_err(RunError::DaemonConfig);
    let lab = Lab::build(spec, render, &interrupt).await?;
    let capture = match recorder {
        Some(recorder) => Some(
            Capture::start(
                lab.gateway_ns(),
                &lab.endpoints().capture_interface,
                recorder,
            )
            .map_err(RunError::CaptureSetup)?,
        ),
        None => None,
    };

    // Register after the daemon is up, so in push mode it receives every published peer.
    let docs: Vec<PeerDoc> = scenario
        .registered_peers()
        .map(|p| PeerDoc::new(&p.public_key, vec![format!("{}/32", p.tunnel_ip)], None))
        .collect();
    lab.control()
        .register_many(&docs)
        .await
        .map_err(RunError::Register)?;
    if interrupt.is_cancelled() {
        return Err(RunError::InterruptedDuringSetup);
    }

    let prepared = super::attacks::prepare(
        &scenario,
        &super::attacks::AttackTargets {
            gateway_public_key: lab.gateway_public_key(),
            gateway_v4: lab.gateway_endpoint(),
            gateway_v6: lab.gateway_endpoint_v6(),
            client_interface: lab.topology().names.veth_client_to_gw(),
        },
    )?;
    let progress = Arc::new(FleetProgress::default());
    let driver_cpus = lab
        .cpus()
        .map_or(available.len(), |c| c.split().driver.len());
    let driver_cpu_at_start = crate::lab::process::own_usage().map(|u| u.cpu_seconds);
    // The fleet readies the first arrivals' sockets and Tunns before the origin, so a storm's
    // driver does not pay for them while its clients are arriving (`client::prepare`).
    let lead = crate::client::prepare_lead(scenario.clients.iter().map(|c| c.start));
    let started_at = SystemTime::now() + lead;
    let origin = Instant::now() + lead;
    let fleet = start_fleet(&lab, &scenario, opts, &out, &progress, origin)?;
    tokio::time::sleep_until(origin).await;
    let mut ctx = RunContext {
        fleet,
        lab,
        scenario: &scenario,
        progress,
        origin,
    };
    // After `ctx`, so the attacks stop before the lab goes, also on errors.
    let attacks = super::attacks::start(&ctx.lab, &prepared, ctx.origin.into_std())?;
    let mut timeline = Timeline::default();
    let interrupted = run_loop(&mut ctx, &mut timeline, opts.quiet, &interrupt, &|| {
        attacks.is_done()
    })
    .await?;

    let mut clients = ctx.fleet.finish().await?;
    let attack_outcomes = attacks.finish()?;
    clients.sort_by_key(|c| c.id);
    let end = timeline.end(&ctx, interrupted).await;
    let capture = match (capture, opts.capture) {
        (Some(c), Some(options)) => {
            let summary = super::lab::blocking(|| c.stop()).map_err(RunError::Capture)?;
            Some(capture_info(&scenario, options, summary))
        }
        _ => None,
    };
    let api = ctx.lab.control().stats();
    let attacks = super::attacks::results(&prepared, &attack_outcomes, &api);
    let db_integrity = scenario
        .has_reboot()
        .then(|| blocking(|| super::integrity::quick_check(&ctx.lab.endpoints().db)));
    let driver_cpu_utilization = driver_utilization(
        driver_cpu_at_start,
        crate::lab::process::own_usage().map(|u| u.cpu_seconds),
        ctx.origin.elapsed(),
        driver_cpus,
    );
    let driver = ctx.progress.rx_lag().measures(driver_cpu_utilization);
    let cpu_split = ctx.lab.cpus().map(|c| jitwg_reports::CpuSplitInfo {
        gateway: c.split().gateway.to_string(),
        driver: c.split().driver.to_string(),
        mechanism: c.mechanism().name().to_string(),
    });
    if cpu_split
        .as_ref()
        .is_some_and(|c| c.mechanism == "affinity")
    {
        warnings.push(
            "CPU split by sched_setaffinity (no usable cpuset cgroup): a process may widen its own mask"
                .into(),
        );
    }
    drop(ctx);

    let event_log = event_log_path(&scenario, opts, &out);
    let reload = timeline.finish(event_log.as_deref(), &continuous_traffic(&scenario));
    if let Some(path) = event_log.filter(|_| !opts.keep_event_log()) {
        // Written only to measure recovery: not asked for, so not left behind.
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(log = %path.display(), error = %e, "removing the fleet's event log");
        }
    }
    let mut results = assemble(Finished {
        scenario: &scenario,
        opts,
        run_id: &run_id,
        started_at,
        duration_ms: end,
        dataplane_program: dataplane_program.as_deref(),
        clients,
        timeline,
        reload,
        api,
        cpu_split,
        warnings,
        driver,
        attacks,
        db_integrity,
        capture,
        rerun: rerun_info(&scenario, opts),
    });
    results.run.source_addresses = Some(source_addresses);
    let results_path = out.join("results.json");
    jitwg_reports::save(&results, &results_path).map_err(RunError::Save)?;
    Ok(RunOutcome {
        results,
        out_dir: out,
        results_path,
        interrupted,
    })
}

/// The driver's CPU time over the fleet's run relative to the CPUs it was allotted: 1.0 means
/// every allotted CPU was busy with the driver the whole time.
pub(crate) fn driver_utilization(
    cpu_start: Option<f64>,
    cpu_end: Option<f64>,
    wall: Duration,
    cpus: usize,
) -> Option<f64> {
    let busy = cpu_end? - cpu_start?;
    let capacity = wall.as_secs_f64() * cpus as f64;
    (capacity > 0.0 && busy >= 0.0).then(|| busy / capacity)
}

/// Fires the scheduled events and samples every `sample_every` until the fleet is done, the
/// scenario's duration is up or the user interrupts (then returns `true`).
async fn run_loop(
    ctx: &mut RunContext<'_>,
    timeline: &mut Timeline,
    quiet: bool,
    interrupt: &CancellationToken,
    attacks_done: &dyn Fn() -> bool,
) -> Result<bool, RunError> {
    let scenario = ctx.scenario;
    let bar = progress_bar(quiet, scenario.clients.len() as u64);
    let mut clock = Clock::new(scenario);
    let mut interrupted = false;
    loop {
        if !clock.wait(interrupt).await {
            interrupted = true;
            break;
        }
        let elapsed = ctx.origin.elapsed();
        if clock.step(elapsed, timeline, ctx, |_| {}).await? {
            update_bar(&bar, &ctx.progress, timeline.samples.last());
        }
        if (ctx.fleet_done() && attacks_done()) || elapsed >= scenario.duration {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(interrupted)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_utilization_is_cpu_time_over_allotted_capacity() {
        let u = driver_utilization(Some(1.0), Some(4.0), Duration::from_secs(2), 2);
        assert_eq!(u, Some(0.75));
        assert_eq!(
            driver_utilization(None, Some(4.0), Duration::from_secs(2), 2),
            None
        );
        assert_eq!(
            driver_utilization(Some(0.0), Some(1.0), Duration::ZERO, 2),
            None
        );
    }
}
