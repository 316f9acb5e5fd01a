//! Assembles a finished run's `Results`: what the run was (info), the clients' outcomes, the
//! timeline, the control plane's counts, and the scenario's expectations checked against them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jitwg_reports::{ApiSummary, ClientResult, Figures, Reload, Results, RunInfo};

use crate::controlplane::StatsSnapshot;
use crate::lab::names::RunId;
use crate::scenario::Scenario;

use super::context::ms;
use super::timeline::Timeline;
use super::RunOptions;

/// Everything a finished run hands over to its results.
pub(crate) struct Finished<'a> {
    pub scenario: &'a Scenario,
    pub opts: &'a RunOptions,
    pub run_id: &'a RunId,
    pub started_at: SystemTime,
    pub duration_ms: f64,
    /// The wireguard-go binary, for the tool versions (`None`: kernel backend).
    pub dataplane_program: Option<&'a Path>,
    pub clients: Vec<ClientResult>,
    pub timeline: Timeline,
    pub reload: Option<Reload>,
    pub api: StatsSnapshot,
    /// `run.cpu_split`: where gateway and driver ran.
    pub cpu_split: Option<jitwg_reports::CpuSplitInfo>,
    /// `run.warnings`.
    pub warnings: Vec<String>,
    /// For `results.load` (see `jitwg_reports::load`): the driver's CPU share and receive lag.
    pub driver: jitwg_reports::DriverMeasures,
    /// `results.attacks`.
    pub attacks: Vec<jitwg_reports::AttackResult>,
    /// `results.daemon_db_integrity` (runs that kill or reboot the gateway).
    pub db_integrity: Option<String>,
    /// `results.capture` (`--capture`).
    pub capture: Option<jitwg_reports::CaptureInfo>,
    /// `results.rerun`.
    pub rerun: jitwg_reports::RerunInfo,
}

pub(crate) fn assemble(run: Finished<'_>) -> Results {
    let scenario = run.scenario;
    let mut results = Results::new(RunInfo {
        id: format!("{}-{}", scenario.name, run.run_id),
        scenario_name: scenario.name.clone(),
        scenario_file: run.opts.scenario_file.display().to_string(),
        seed: scenario.seed,
        started_at_unix_ms: run
            .started_at
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        duration_ms: run.duration_ms,
        resolved_scenario: serde_json::to_value(&scenario.file).unwrap_or_default(),
        tool: super::info::tool_info(run.dataplane_program.and_then(Path::to_str)),
        mode: scenario.mode_name().into(),
        boot: scenario.boot_name().into(),
        backend: scenario.backend_name().into(),
        initiate: scenario.daemon.initiate,
        stale_threshold_ms: ms(scenario.stale_threshold),
        cpu_split: run.cpu_split,
        warnings: run.warnings,
        shards: Vec::new(),
        merged_setup: None,
        source_addresses: None,
    });
    results.clients = run.clients;
    results.processes = run.timeline.usage.usage();
    results.samples = run.timeline.samples;
    results.events = run.timeline.events;
    results.api = ApiSummary {
        calls_total: run.api.requests_total,
        per_key: run.api.per_key,
        by_status: run.api.by_status,
        sent_by_daemon: run.timeline.api_sent.total(),
        sent_by_daemon_by_outcome: run.timeline.api_sent.by_outcome(),
    };
    results.reload = run.reload;
    results.initiations_dropped = run.timeline.drops.by_outcome();
    results.attacks = run.attacks;
    results.daemon_db_integrity = run.db_integrity;
    results.stage_time = super::stage_time::stage_time(&run.timeline.stage_time.by_outcome());
    results.gateway_udp = run.timeline.gateway_udp;
    results.capture = run.capture;
    results.rerun = Some(run.rerun);
    // Before the expectations: on a saturated run timing goals do not count.
    let lag_limit_ms = scenario
        .file
        .lab
        .lag_limit
        .map_or(jitwg_reports::LAG_P99_LIMIT_MS, |d| {
            d.as_secs_f64() * 1000.0
        });
    results.load = Some(jitwg_reports::assess_load(
        &results,
        run.driver,
        lag_limit_ms,
    ));
    results.expectations =
        jitwg_reports::evaluate(&scenario.expectations, &Figures::from_results(&results));
    results
}
