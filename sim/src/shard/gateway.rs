//! `jitwg gateway`: the gateway half of a sharded run, on a host's own interface. It builds the
//! lab with the one lab builder in host mode (wireguard-go, the control plane and jitwgd in this
//! process's namespace, listening on `--listen`), serves the shard API, gives the shards their
//! common start once all are ready, samples the gateway and fires the scenario's events exactly
//! as `jitwg run` does, and stops when every shard's results arrived (or time is up). It writes
//! its own series to `OUT/results.json`, the shards' results to `OUT/shards/<i>/`, and, when
//! every shard reported, their merge to `OUT/merged/`. A scenario with a TLS or token control
//! plane gets them here as in `jitwg run`; the shard API is secured the same way, and the run's
//! CA certificate and token are published in `OUT/credentials/` for the fleets.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::{CliError, ExitCode, ScenarioArgs};
use crate::client::FleetProgress;
use crate::controlplane::PeerDoc;
use crate::lab::names::RunId;
use crate::run::context::{FleetThread, RunContext};
use crate::run::lab::{HostSite, Lab};
use crate::run::results::{assemble, Finished};
use crate::run::timeline::{Clock, Timeline, TICK};
use crate::run::{daemon_config, RunError, RunOptions, FLEET_STOP_TIMEOUT};
use crate::scenario::Scenario;

use super::api::{unix_ms, RunDescription, ShardBoard, SHARD_API_PORT};
use super::spec::ShardSpec;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// The host address fleets reach: WireGuard on 51820, the control plane on 8080, the shard
    /// API on 8081 and jitwgd's metrics on 9187.
    #[arg(long, value_name = "ADDR")]
    pub listen: Ipv4Addr,
    /// How many fleet shards will join.
    #[arg(long, value_name = "N")]
    pub shards: u32,
    /// The interface jitwgd sniffs initiations on (default: every interface).
    #[arg(long, value_name = "IFACE")]
    pub capture_interface: Option<String>,
    /// The common start lies this long after the last shard is ready.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub start_lead: Duration,
    /// How long to wait for every shard to be ready before giving up (exit 3).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub wait_shards: Duration,
    /// Output directory: results.json (the gateway's series), shards/<i>/, merged/, logs, and,
    /// when the scenario's control plane uses TLS or a token, credentials/ with the run's CA
    /// certificate and token for the fleets (`jitwg fleet --control-plane-ca DIR/credentials/
    /// control-plane-ca.pem --token-file DIR/credentials/token`; printed at start).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `jitwg gateway` (see the module docs).
pub fn run(args: GatewayArgs) -> Result<ExitCode, CliError> {
    let (scenario, adjustments) = crate::cli::load_scenario(&args.scenario)?;
    super::refuse_client_cert(&scenario)?;
    ShardSpec::new(0, args.shards).map_err(|e| CliError::new(ExitCode::Usage, e))?;
    let runtime = super::runtime()?;
    let opts = super::run_options(&args.scenario, adjustments, &args.out);
    runtime.block_on(serve(&args, &scenario, &opts))
}

async fn serve(
    args: &GatewayArgs,
    scenario: &Scenario,
    opts: &RunOptions,
) -> Result<ExitCode, CliError> {
    let interrupt = crate::run::orchestrate::watch_signals()?;
    let run_id = RunId::random();
    let out = crate::run::orchestrate::absolute(&args.out)?;
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating {}", out.display()))
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    let mut spec = crate::run::orchestrate::lab_spec(scenario, &run_id, &out)?;
    spec.host = Some(HostSite {
        listen: args.listen,
        capture_interface: args.capture_interface.clone(),
    });
    let render = |at: &_| daemon_config::render(scenario, at).map_err(RunError::DaemonConfig);
    let token = spec.control_plane_security.token.clone();
    let lab = Lab::build(spec, render, &interrupt).await?;
    let published = super::secure::publish(&lab.endpoints().channel, &out.join("credentials"))
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    if published != Default::default() {
        println!(
            "fleets need the run's credentials: jitwg fleet ... {}",
            published.fleet_flags().join(" ")
        );
    }
    // The shards register their own clients; the gateway registers everyone else's keys.
    let others: Vec<PeerDoc> = scenario
        .extra_peers
        .iter()
        .chain(scenario.stored_peers.iter())
        .map(|p| PeerDoc::new(&p.public_key, vec![format!("{}/32", p.tunnel_ip)], None))
        .collect();
    lab.control()
        .register_many(&others)
        .await
        .map_err(RunError::Register)?;

    let board = ShardBoard::new(
        RunDescription {
            scenario_name: scenario.name.clone(),
            seed: scenario.seed,
            resolved_scenario: scenario.to_json(),
            shards: args.shards,
            gateway_public_key: hex::encode(lab.gateway_public_key()),
            gateway_tunnel_ip: lab.plan().tunnel_gateway,
            start_at_unix_ms: None,
            reboot: None,
        },
        out.clone(),
        args.start_lead,
        token,
    );
    let listen = SocketAddr::new(IpAddr::V4(args.listen), SHARD_API_PORT);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the shard API on {listen}"))
        .map_err(|e| CliError::new(ExitCode::Setup, e))?;
    let stop_api = CancellationToken::new();
    let app = super::api::router(Arc::clone(&board));
    let api = tokio::spawn(super::api::serve(
        listener,
        app,
        lab.control_plane_tls().cloned(),
        stop_api.clone(),
    ));
    tracing::info!(%listen, shards = args.shards, "gateway ready: waiting for the shards");

    let start_ms = wait_for_shards(&board, args.wait_shards, &interrupt).await?;
    let lead = Duration::from_secs_f64(((start_ms - unix_ms(SystemTime::now())) / 1000.0).max(0.0));
    let origin = Instant::now() + lead;
    let started_at = SystemTime::now() + lead;
    tokio::time::sleep_until(origin).await;

    let mut ctx = RunContext {
        fleet: FleetThread {
            cancel: CancellationToken::new(),
            thread: None,
        },
        lab,
        scenario,
        progress: Arc::new(FleetProgress::default()),
        origin,
    };
    let mut timeline = Timeline::default();
    let interrupted =
        sample_until_reported(&mut ctx, &mut timeline, &board, args.shards, &interrupt).await?;
    let end = timeline.end(&ctx, interrupted).await;
    let api_stats = ctx.lab.control().stats();
    drop(ctx);
    stop_api.cancel();
    if let Ok(Err(e)) = api.await {
        tracing::warn!(error = %e, "shard API stopped with an error");
    }
    // Recovery needs the clients' echo replies, which stay with the shards.
    let reload = timeline.finish(None, &HashSet::new());
    let results = assemble(Finished {
        scenario,
        opts,
        run_id: &run_id,
        started_at,
        duration_ms: end,
        dataplane_program: None,
        clients: Vec::new(),
        timeline,
        reload,
        api: api_stats,
        cpu_split: None,
        warnings: vec![super::GATEWAY_SERIES_WARNING.into()],
        driver: Default::default(),
        // Attacks and the database check belong to a whole run, not to a shard.
        attacks: Vec::new(),
        db_integrity: None,
        capture: None,
        rerun: jitwg_reports::RerunInfo::default(),
    });
    let path = out.join("results.json");
    jitwg_reports::save(&results, &path).map_err(|e| CliError::new(ExitCode::Internal, e))?;
    println!("gateway series: {}", path.display());

    let received = board.received();
    if received.len() as u32 != args.shards {
        let missing: Vec<u32> = (0..args.shards).filter(|i| !received.contains(i)).collect();
        return Err(CliError::new(
            ExitCode::Breach,
            anyhow::anyhow!("results of shards {missing:?} never arrived; nothing merged"),
        ));
    }
    let mut inputs = vec![out.clone()];
    inputs.extend((0..args.shards).map(|i| board.shard_dir(i)));
    let (merged, merged_path) = super::merge::merge_dirs(&inputs, &out.join("merged"))
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    println!("merged: {}", merged_path.display());
    Ok(
        if interrupted || !jitwg_reports::all_passed(&merged.expectations) {
            ExitCode::Breach
        } else {
            ExitCode::Ok
        },
    )
}

/// Waits until every shard is ready and the common start is set; returns it (Unix ms).
async fn wait_for_shards(
    board: &ShardBoard,
    within: Duration,
    interrupt: &CancellationToken,
) -> Result<f64, CliError> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(start) = board.start_at_unix_ms() {
            return Ok(start);
        }
        if interrupt.is_cancelled() {
            return Err(RunError::InterruptedDuringSetup.into());
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(
                ExitCode::Setup,
                anyhow::anyhow!("not every shard was ready within {within:?}"),
            ));
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Fires the scenario's events and samples until every shard reported, the scenario's duration
/// plus the shards' stop time is up, or the user interrupts (then returns `true`).
async fn sample_until_reported(
    ctx: &mut RunContext<'_>,
    timeline: &mut Timeline,
    board: &ShardBoard,
    shards: u32,
    interrupt: &CancellationToken,
) -> Result<bool, CliError> {
    let scenario = ctx.scenario;
    // Shards stop at `duration`, then save and post their results.
    let give_up = scenario.duration + FLEET_STOP_TIMEOUT * 2;
    let mut clock = Clock::new(scenario);
    loop {
        if !clock.wait(interrupt).await {
            return Ok(true);
        }
        let elapsed = ctx.origin.elapsed();
        clock
            .step(elapsed, timeline, ctx, |timeline| {
                if let Some((reboot_start_ms, back_ms)) = timeline.first_reboot() {
                    board.set_reboot(super::api::RebootMark {
                        reboot_start_ms,
                        back_ms,
                    });
                }
            })
            .await?;
        if board.received().len() as u32 == shards || elapsed >= give_up {
            return Ok(false);
        }
    }
}
