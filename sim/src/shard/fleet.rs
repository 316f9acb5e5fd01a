//! `jitwg fleet`: one shard of a scenario's clients against a gateway somewhere else. It joins
//! the run over the gateway's shard API (refusing a different scenario or seed), estimates its
//! clock offset, registers its clients' keys with the control plane, waits for the common start,
//! runs its clients with the driver's own fleet (`client::run_fleet`), and writes and posts its
//! results. It sends to the gateway's address and the control-plane URL, and nowhere else.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use ipnet::Ipv4Net;
use jitwg_reports::shards::{encode_histogram, setup_histogram};
use jitwg_reports::{Results, ShardInfo};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::{CliError, ExitCode, ScenarioArgs};
use crate::client::{run_fleet, FleetClient, FleetConfig, FleetProgress};
use crate::controlplane::PeerDoc;
use crate::lab::names::RunId;
use crate::run::results::{assemble, Finished};
use crate::run::RunOptions;
use crate::scenario::Scenario;

use super::api::{unix_ms, GatewayClient, RunDescription, SHARD_API_PORT};
use super::observe;
use super::secure::FleetCredentials;
use super::spec::{self, ClockSample, ShardSpec};
use crate::run::CONTROL_PLANE_PORT;

/// How many timed exchanges the clock offset is estimated from.
const CLOCK_SAMPLES: usize = 8;
/// How often a fleet asks whether the common start is set, and retries an unanswered gateway.
const POLL: Duration = Duration::from_millis(200);
/// One HTTP request to the gateway or the control plane.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most clients give up after WireGuard's REKEY_ATTEMPT_TIME, as in `jitwg run`.
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// The gateway's WireGuard endpoint, HOST:PORT. HOST is resolved once; every packet and
    /// API request of this fleet goes to that one address (and registrations to
    /// --control-plane), nowhere else.
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: String,
    /// The control plane's base URL, where this shard registers its clients' keys. Default:
    /// the gateway's address on port 8080, https when the scenario's control plane uses TLS.
    /// The run's certificate names the gateway's --listen address, so an HTTPS URL must use
    /// that address, not a host name.
    #[arg(long, value_name = "URL")]
    pub control_plane: Option<String>,
    /// The run's CA certificate (PEM), the only root this fleet trusts for the control plane
    /// and the shard API. Needed when the scenario sets [control_plane] tls: the gateway
    /// writes it to OUT/credentials/control-plane-ca.pem and prints the path.
    #[arg(long, value_name = "FILE")]
    pub control_plane_ca: Option<PathBuf>,
    /// A file holding the run's bearer token, sent to the control plane and the shard API.
    /// Needed when the scenario sets [control_plane] token: the gateway writes it to
    /// OUT/credentials/token (mode 0600) and prints the path.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// This shard: I/N runs the clients whose id ≡ I (mod N). I >= N exits 2.
    #[arg(long, value_name = "I/N")]
    pub shard: ShardSpec,
    /// Source addresses for the clients (a CIDR block routed to this host, e.g. a /24 with host
    /// networking); clients take them in turn. Default: the host's own address (one source).
    #[arg(long, value_name = "CIDR")]
    pub sources: Option<Ipv4Net>,
    /// Port of the gateway's shard API, on the gateway's address.
    #[arg(long, default_value_t = SHARD_API_PORT)]
    pub api_port: u16,
    /// How long to keep trying to reach the gateway before exiting 3.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to wait for every other shard to be ready (the common start).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub start_timeout: Duration,
    /// Where results.json goes.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

fn setup(e: impl Into<anyhow::Error>) -> CliError {
    CliError::new(ExitCode::Setup, e)
}

fn usage(e: impl Into<anyhow::Error>) -> CliError {
    CliError::new(ExitCode::Usage, e)
}

/// Runs `jitwg fleet` (see the module docs).
pub fn run(args: FleetArgs) -> Result<ExitCode, CliError> {
    let (scenario, adjustments) = crate::cli::load_scenario(&args.scenario)?;
    super::refuse_client_cert(&scenario)?;
    let credentials = FleetCredentials::load(
        &scenario,
        args.control_plane_ca.as_deref(),
        args.token_file.as_deref(),
    )
    .map_err(usage)?;
    let runtime = super::runtime()?;
    let opts = super::run_options(&args.scenario, adjustments, &args.out);
    runtime.block_on(shard_main(&args, &scenario, &opts, &credentials))
}

/// Resolves HOST:PORT once, to the one address this fleet will talk to.
async fn resolve_gateway(text: &str, within: Duration) -> Result<SocketAddr, CliError> {
    let deadline = Instant::now() + within;
    loop {
        let outcome = tokio::net::lookup_host(text).await;
        match outcome.map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => return Ok(addr),
            Ok(None) => return Err(usage(anyhow::anyhow!("--gateway {text}: no address"))),
            Err(e) if Instant::now() >= deadline => {
                return Err(setup(anyhow::anyhow!(
                    "gateway {text} unreachable: its name did not resolve within {within:?}: {e}"
                )))
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The run as the gateway describes it, retried until `within` has passed (then exit 3).
async fn join(api: &GatewayClient, within: Duration) -> Result<RunDescription, CliError> {
    let deadline = Instant::now() + within;
    loop {
        match api.describe().await {
            Ok(run) => return Ok(run),
            // It answers, and refuses us: waiting will not change that.
            Err(e @ super::api::GatewayApiError::Status { status: 401, .. }) => {
                return Err(usage(anyhow::Error::new(e).context(
                    "the gateway refused this fleet's token: pass its OUT/credentials/token \
                     with --token-file",
                )))
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(setup(anyhow::Error::new(e).context(format!(
                    "gateway unreachable: its shard API at {} did not answer within {within:?}",
                    api.base()
                ))))
            }
            Err(e) => {
                tracing::debug!(error = %e, "gateway not answering yet");
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// Refuses to join a run of another scenario, seed, override set or shard count.
fn check_run(run: &RunDescription, scenario: &Scenario, shard: ShardSpec) -> anyhow::Result<()> {
    if run.scenario_name != scenario.name || run.seed != scenario.seed {
        anyhow::bail!(
            "the gateway runs scenario {} seed {}, this fleet was given {} seed {}",
            run.scenario_name,
            run.seed,
            scenario.name,
            scenario.seed
        );
    }
    if run.resolved_scenario != scenario.to_json() {
        anyhow::bail!("the gateway's scenario differs from this fleet's (another file version or other --set overrides)");
    }
    if run.shards != shard.count {
        anyhow::bail!(
            "the gateway expects {} shards, this fleet is shard {shard}",
            run.shards
        );
    }
    Ok(())
}

async fn clock_offset(api: &GatewayClient) -> Option<spec::ClockOffset> {
    let mut samples = Vec::with_capacity(CLOCK_SAMPLES);
    for _ in 0..CLOCK_SAMPLES {
        let sent_ms = unix_ms(SystemTime::now());
        if let Ok(reply) = api.time().await {
            samples.push(ClockSample {
                sent_ms,
                gateway_ms: reply.unix_ms,
                received_ms: unix_ms(SystemTime::now()),
            });
        }
    }
    spec::estimate_offset(&samples)
}

/// This shard's clients, each on its source address (`--sources`, else the unspecified one).
fn shard_clients(
    scenario: &Scenario,
    shard: ShardSpec,
    sources: Option<Ipv4Net>,
) -> Vec<FleetClient> {
    scenario
        .clients
        .iter()
        .filter(|plan| shard.runs(plan.id))
        .enumerate()
        .filter_map(|(n, plan)| {
            let mut client = crate::run::orchestrate::fleet_client(scenario, plan)?;
            client.plan.source_ip = match sources {
                Some(block) => spec::source_address(block, n as u32),
                None => std::net::Ipv4Addr::UNSPECIFIED,
            };
            Some(client)
        })
        .collect()
}

async fn wait_for_start(
    api: &GatewayClient,
    shard: ShardSpec,
    within: Duration,
) -> Result<f64, CliError> {
    let deadline = Instant::now() + within;
    let mut run = api.ready(shard.index).await.map_err(setup)?;
    loop {
        if let Some(start) = run.start_at_unix_ms {
            return Ok(start);
        }
        if Instant::now() >= deadline {
            return Err(setup(anyhow::anyhow!(
                "the other shards were not all ready within {within:?}: no common start"
            )));
        }
        tokio::time::sleep(POLL).await;
        run = api.describe().await.map_err(setup)?;
    }
}

async fn shard_main(
    args: &FleetArgs,
    scenario: &Scenario,
    opts: &RunOptions,
    credentials: &FleetCredentials,
) -> Result<ExitCode, CliError> {
    let shard = args.shard;
    let gateway = resolve_gateway(&args.gateway, args.connect_timeout).await?;
    let scheme = credentials.scheme();
    let host = match gateway.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let control_plane = args
        .control_plane
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{host}:{CONTROL_PLANE_PORT}"));
    if credentials.ca.is_some() && !control_plane.starts_with("https://") {
        return Err(usage(anyhow::anyhow!(
            "--control-plane {control_plane}: the scenario's control plane serves HTTPS"
        )));
    }
    let api = GatewayClient::new(
        format!("{scheme}://{host}:{}", args.api_port),
        REQUEST_TIMEOUT,
        credentials,
    )
    .map_err(setup)?;
    let run = join(&api, args.connect_timeout).await?;
    check_run(&run, scenario, shard).map_err(usage)?;
    let offset = clock_offset(&api).await;

    let clients = shard_clients(scenario, shard, args.sources);
    if scenario.control_plane.register_clients {
        let docs: Vec<PeerDoc> = clients
            .iter()
            .map(|c| {
                let id = &c.plan.identity;
                PeerDoc::new(&id.public_key, vec![format!("{}/32", id.tunnel_ip)], None)
            })
            .collect();
        api.register(&control_plane, &docs)
            .await
            .context("registering this shard's clients with the control plane")
            .map_err(setup)?;
    }
    let start_ms = wait_for_start(&api, shard, args.start_timeout).await?;
    let wait = spec::wait_for_start(
        start_ms,
        unix_ms(SystemTime::now()),
        offset.map_or(0.0, |o| o.offset_ms),
    );
    let origin = Instant::now() + wait;
    let started_at = SystemTime::now() + wait;

    // Written only for a scenario that restarts the daemon: recovery is read from it.
    let event_log = crate::run::orchestrate::event_log_path(scenario, opts, &args.out);
    if event_log.is_some() {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))
            .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    }
    let config = FleetConfig {
        gateway,
        gateway_public_key: run_key(&run)?,
        gateway_tunnel_ip: run.gateway_tunnel_ip,
        give_up_after: GIVE_UP_AFTER,
        event_log: event_log.clone(),
    };
    let ids: std::collections::HashSet<u32> = clients.iter().map(|c| c.plan.id).collect();
    let starts: Vec<_> = clients
        .iter()
        .map(|c| (c.plan.source_ip, c.plan.start))
        .collect();
    let cpu_at_start = crate::lab::process::own_usage().map(|u| u.cpu_seconds);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let duration = scenario.duration;
    tokio::spawn(async move {
        tokio::time::sleep_until(origin + duration).await;
        stop.cancel();
    });
    let progress = Arc::new(FleetProgress::default());
    let stop_sampling = CancellationToken::new();
    let sampler = observe::sample_clients(
        Arc::clone(&progress),
        origin,
        scenario.sample_every,
        stop_sampling.clone(),
    );
    let fleet = run_fleet(config, clients, origin, Arc::clone(&progress), cancel).await;
    stop_sampling.cancel();
    let client_counts = sampler.await.unwrap_or_default();
    let mut results_clients = fleet
        .context("the client fleet failed")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    results_clients.sort_by_key(|c| c.id);
    let wall = origin.elapsed();
    let usage = crate::lab::process::own_usage();
    let utilization = crate::run::orchestrate::driver_utilization(
        cpu_at_start,
        usage.map(|u| u.cpu_seconds),
        wall,
        crate::lab::cpuset::available_cpus().map_or(1, |c| c.len()),
    );

    let (sources, per_source) = spec::source_summary(&starts);
    let mut warnings: Vec<String> = per_source.into_iter().collect();
    let recovery = match &event_log {
        Some(log) => recovery(&api, scenario, &ids, log, &mut warnings).await,
        None => None,
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let run_id = RunId::random();
    let mut results = assemble(Finished {
        scenario,
        opts,
        run_id: &run_id,
        started_at,
        duration_ms: wall.as_secs_f64() * 1000.0,
        dataplane_program: None,
        clients: results_clients,
        timeline: Default::default(),
        reload: None,
        api: Default::default(),
        cpu_split: None,
        warnings: warnings.clone(),
        driver: progress.rx_lag().measures(utilization),
        // Attacks and the database check belong to a whole run, not to a shard.
        attacks: Vec::new(),
        db_integrity: None,
        capture: None,
        rerun: jitwg_reports::RerunInfo::default(),
    });
    if let Some(u) = usage {
        results.processes.push(jitwg_reports::ProcessUsage {
            name: "driver".into(),
            cpu_seconds: u.cpu_seconds,
            peak_rss_bytes: u.peak_rss_bytes,
        });
    }
    results.run.source_addresses = Some(sources);
    let mut info = shard_info(&results, shard, sources, offset, warnings)
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    info.client_counts = client_counts;
    info.recovery = recovery;
    results.run.shards = vec![info];
    let path = save(&results, &args.out)?;
    let text = results
        .to_json()
        .context("serializing results")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    api.post_results(shard.index, text)
        .await
        .with_context(|| {
            format!(
                "posting results to the gateway (they are in {})",
                path.display()
            )
        })
        .map_err(setup)?;
    let connected = results.run.shards[0].connected;
    println!(
        "shard {shard}: {} clients, {connected} connected; results: {}",
        results.clients.len(),
        path.display()
    );
    Ok(ExitCode::Ok)
}

/// This shard's clients' recovery after the gateway's first reboot, from the event log (then
/// removed, as `jitwg run` removes it); `None` with a warning when it cannot be measured.
async fn recovery(
    api: &GatewayClient,
    scenario: &Scenario,
    ids: &std::collections::HashSet<u32>,
    log: &std::path::Path,
    warnings: &mut Vec<String>,
) -> Option<jitwg_reports::shards::ShardRecovery> {
    let continuous: std::collections::HashSet<u32> =
        crate::run::orchestrate::continuous_traffic(scenario)
            .intersection(ids)
            .copied()
            .collect();
    let outcome = match api.describe().await {
        Ok(RunDescription {
            reboot: Some(mark), ..
        }) => observe::shard_recovery(log, &continuous, mark)
            .map_err(|e| format!("reading {}: {e}", log.display())),
        Ok(_) => Err("the gateway reported no reboot before this shard ended".into()),
        Err(e) => Err(format!("{:#}", anyhow::Error::new(e))),
    };
    if let Err(e) = std::fs::remove_file(log) {
        tracing::debug!(log = %log.display(), error = %e, "removing the event log");
    }
    outcome
        .map_err(|e| {
            tracing::warn!("recovery not measured: {e}");
            warnings.push(format!("recovery not measured: {e}"));
        })
        .ok()
}

fn run_key(run: &RunDescription) -> Result<[u8; 32], CliError> {
    let bytes = hex::decode(&run.gateway_public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| setup(anyhow::anyhow!("the gateway sent a malformed public key")))?;
    Ok(bytes)
}

/// `run.shards[0]` of a shard's results.
fn shard_info(
    results: &Results,
    shard: ShardSpec,
    source_addresses: u64,
    offset: Option<spec::ClockOffset>,
    warnings: Vec<String>,
) -> anyhow::Result<ShardInfo> {
    let attempts = results.clients.iter().flat_map(|c| c.connections.iter());
    let latencies: Vec<f64> = attempts
        .clone()
        .filter_map(|c| c.setup_latency_ms)
        .collect();
    Ok(ShardInfo {
        index: shard.index,
        count: shard.count,
        clients: results.clients.len() as u64,
        connections: attempts.count() as u64,
        connected: latencies.len() as u64,
        source_addresses,
        clock_offset_ms: offset.map(|o| o.offset_ms),
        clock_rtt_ms: offset.map(|o| o.rtt_ms),
        load: results.load.clone(),
        setup_histogram_us: encode_histogram(&setup_histogram(&latencies))?,
        warnings,
        // Filled in by the caller.
        client_counts: Vec::new(),
        recovery: None,
    })
}

fn save(results: &Results, out: &std::path::Path) -> Result<PathBuf, CliError> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating {}", out.display()))
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    let path = out.join("results.json");
    jitwg_reports::save(results, &path)
        .context("saving results")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_gateway_is_a_setup_failure_after_a_bounded_wait() {
        // Nothing listens on port 1 of loopback: connection refused, retried, then exit 3.
        let api = GatewayClient::new(
            "http://127.0.0.1:1".into(),
            Duration::from_millis(200),
            &FleetCredentials::default(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = join(&api, Duration::from_millis(600)).await.unwrap_err();
        assert_eq!(err.code, ExitCode::Setup);
        assert!(started.elapsed() < Duration::from_secs(5));
        let message = format!("{:#}", err.error);
        assert!(message.contains("gateway unreachable"), "{message}");
    }
}
