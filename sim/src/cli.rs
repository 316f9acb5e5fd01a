//! The `jitwg` command line: argument definitions (clap derive, with help that teaches) and the
//! dispatch to the library. Every subcommand returns an [`ExitCode`] or a [`CliError`] that carries
//! its exit code; `main.rs` only prints and exits.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::controlplane::{run_cli, ControlPlaneArgs};
use crate::run::{daemon_config, FailureKind, RunError, RunOptions};
use crate::scenario::{Adjustments, Override, Scenario};

/// `println!` to stdout that ignores a reader that went away (`jitwg validate f | head`):
/// the rest of the output is dropped instead of panicking with "Broken pipe".
macro_rules! say {
    ($($arg:tt)*) => {
        say_raw(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to stdout, ignoring write errors (see [`say!`]).
pub(crate) fn say_raw(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_fmt(args);
}

/// Process exit codes of `jitwg` (documented in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything went as expected.
    Ok = 0,
    /// A run finished but breached an expectation (or was interrupted).
    Breach = 1,
    /// Bad usage, or the scenario is invalid.
    Usage = 2,
    /// The machine cannot run it: not root, missing wireguard-go / nats-server / jitwgd, no
    /// kernel WireGuard, or the lab could not be built.
    Setup = 3,
    /// Anything else: a bug or an unexpected runtime failure.
    Internal = 4,
    /// `compare` found a regression beyond the tolerance.
    Regression = 5,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: ExitCode,
    pub error: anyhow::Error,
}

impl CliError {
    pub(crate) fn new(code: ExitCode, error: impl Into<anyhow::Error>) -> Self {
        CliError {
            code,
            error: error.into(),
        }
    }
}

impl From<RunError> for CliError {
    fn from(e: RunError) -> Self {
        let code = match e.kind() {
            FailureKind::Invalid => ExitCode::Usage,
            FailureKind::Setup => ExitCode::Setup,
            FailureKind::Internal => ExitCode::Internal,
            FailureKind::Interrupted => ExitCode::Breach,
        };
        CliError::new(code, e)
    }
}

const AFTER_HELP: &str = "\
Exit codes:
  0  ok
  1  a run breached an expectation of its scenario (or was interrupted with Ctrl-C)
  2  usage error, or the scenario file is invalid (the message names the key and the file)
  3  setup failure: not root, wireguard-go / nats-server / jitwgd missing, kernel lacks WireGuard,
     or the network namespaces could not be built
  4  internal error
  5  `compare` found a regression beyond the tolerance

Examples:
  jitwg validate scenarios/smoke.toml
  sudo jitwg run scenarios/smoke.toml --out /tmp/smoke
  sudo jitwg run scenarios/storm.toml --set population.0.count=2000 --seed 9
  jitwg compare /tmp/base/results.json /tmp/new/results.json --tolerance 10%
  sudo jitwg clean --dry-run

Environment:
  JITWGD_BIN   the jitwgd binary to run (default: next to the jitwg executable)
  JITWG_LOG    log filter for the driver's own logs (default: warn,boringtun=error), e.g. info,jitwg=debug";

/// jitwg: a testbed for just-in-time WireGuard gateways.
///
/// `jitwg run` builds network namespaces, starts a real WireGuard data plane (wireguard-go), the
/// real jitwgd daemon and a control-plane API, then runs simulated clients doing real WireGuard
/// handshakes against it. It samples installed and stale peers every second, fires the scenario's
/// timed events (reboots, API outages), and writes results.json plus an HTML/Markdown report.
/// A scenario's [expect] table turns a run into a CI gate.
#[derive(Debug, Parser)]
#[command(name = "jitwg", version, about, long_about, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario and write results and a report (needs root).
    ///
    /// Validates the scenario first, then checks root, wireguard-go (nats-server in push mode)
    /// and jitwgd (next to this jitwg binary, or $JITWGD_BIN). It builds the namespaces
    /// jwg-<run id>-{gw,cl,cp}, starts wireguard-go and jitwgd in gw, the control-plane API (and
    /// NATS) in cp, and the simulated clients in cl. Every second it samples installed and stale
    /// peers, connected clients, API calls and daemon lookups; it fires the scenario's timed
    /// events (reboot, api_outage, daemon_restart) and stops when every client is done or
    /// `duration` has passed.
    ///
    /// OUT then holds results.json, report.html, summary.md, and for debugging jitwgd.toml,
    /// jitwgd.log, wireguard-go.log, nats.log (push mode) and both SQLite databases. The summary,
    /// every breached expectation and, last, the report path are printed. Ctrl-C stops the run,
    /// tears everything down and still writes the partial results (exit 1).
    #[command(after_help = AFTER_HELP)]
    Run(RunArgs),
    /// Validate a scenario without running it and print what it resolves to.
    ///
    /// The daemon's settings are shown as jitwgd itself resolves them; `*` marks jitwgd's own
    /// defaults (the scenario's [daemon] table left the key unset).
    Validate(ValidateArgs),
    /// Render a report from results files: one file → a run report, several → a comparison.
    Report(ReportArgs),
    /// Compare a candidate run against a baseline; exit 5 on a regression.
    ///
    /// Every registered figure is compared in its own better direction (lower latency, higher
    /// connected ratio, ...); a figure that got worse by more than the tolerance, or that the
    /// candidate no longer measures, is a regression.
    #[command(after_help = AFTER_HELP)]
    Compare(CompareArgs),
    /// Parameter sweep: run a scenario over a grid of values and chart each figure against them.
    ///
    /// Each point of the grid (every combination of the --vary values, or the scenario's [sweep]
    /// table) is a full `jitwg run` on a fresh lab, repeated --repeat times (repeat k with seed
    /// SEED+k), into DIR/points/<i>/r<k>/. DIR/sweep.json indexes the grid and every point's
    /// figures; DIR/report.html charts each figure against the first varied key with error bars
    /// from the repeats, a fitted line and its knee; DIR/summary.md is the table. Running the same
    /// command again resumes: finished runs are skipped. Ctrl-C stops after tearing down the
    /// current run (exit 1) and leaves every finished run usable. A run that breaches its
    /// scenario's [expect] does not fail the sweep (sweeps probe past the limits); sweep.json
    /// records `passed` per run. (Not to be confused with jitwgd's eviction sweep, which removes
    /// idle peers.)
    #[command(after_help = AFTER_HELP)]
    Sweep(crate::sweep::SweepArgs),
    /// Remove leftovers of crashed runs: jwg-* namespaces, links, UAPI sockets, processes.
    Clean(CleanArgs),
    /// Run the testbed's control-plane API on its own.
    ControlPlane(ControlPlaneArgs),
    /// The gateway of a sharded run on this host's interface (needs root); see README
    /// "Running across machines".
    Gateway(crate::shard::gateway::GatewayArgs),
    /// Shard I/N of a scenario's clients against a `jitwg gateway` elsewhere.
    Fleet(crate::shard::fleet::FleetArgs),
    /// Merge the results of a sharded run's shards and gateway into one results.json.
    Merge(crate::shard::cli::MergeArgs),
    /// Run a recorded run again (its OUT_DIR or bundle) and say how the outcomes differ.
    Rerun(crate::rerun::RerunArgs),
    /// One client's story: its events, jitwgd's log lines and its packets, in run time.
    Timeline(crate::timeline::TimelineArgs),
    /// Pack a run's files into one .tar.gz for a bug report.
    Bundle(crate::bundle::BundleArgs),
    /// Capacity planning: fit the cost model from calibration runs (a parameter sweep), then
    /// show the fits, predict a scenario (--predict KEY=VALUE) or size a fleet (--peers N
    /// --arrivals R/s --dwell D --evict-after E). Needs at least 3 finished runs.
    #[command(after_help = AFTER_HELP)]
    Plan(crate::plan::PlanArgs),
}

/// Scenario adjustments shared by `run` and `validate`.
#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    /// The scenario TOML file (see scenarios/ for examples).
    pub scenario: PathBuf,
    /// Override a scenario value by its dotted key, e.g. --set daemon.mode=push or
    /// --set population.0.count=500. Repeatable; applied before validation.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Override the scenario's seed (client keys, arrival times, link randomness).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl ScenarioArgs {
    fn adjustments(&self) -> Result<Adjustments, CliError> {
        let overrides = self
            .set
            .iter()
            .map(|s| Override::parse(s).with_context(|| format!("--set {s}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CliError::new(ExitCode::Usage, e))?;
        Ok(Adjustments {
            overrides,
            seed: self.seed,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Output directory for results.json, logs and the report
    /// [default: target/jitwg/<scenario name>-<run id>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Keep every client's protocol events in OUT/client-events.jsonl (large). Scenarios with
    /// a reboot or daemon restart always write it, to measure recovery time, and remove it after
    /// the run unless this is given.
    #[arg(long)]
    pub event_log: bool,
    /// Split the clients over N fleet processes, each in its own namespace and address range,
    /// against one gateway namespace, then merge (as `jitwg gateway`/`fleet`/`merge` do across
    /// machines).
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    #[command(flatten)]
    pub capture: crate::capture::CaptureArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// results.json files; the first one is the baseline of a comparison.
    #[arg(required = true, value_name = "RESULTS.json")]
    pub results: Vec<PathBuf>,
    /// Where report.html and summary.md go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// results.json of the baseline run.
    pub baseline: PathBuf,
    /// results.json of the candidate run.
    pub candidate: PathBuf,
    /// How much worse a figure may get before it counts as a regression: "10%" or "0.1".
    #[arg(long, default_value = "10%", value_parser = parse_tolerance)]
    pub tolerance: f64,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Parses "10%" as 0.10 and "0.1" as 0.1.
pub fn parse_tolerance(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let value = match text.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    }
    .map_err(|_| format!("`{text}` is not a tolerance like 10% or 0.1"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("tolerance must be zero or positive, got `{text}`"))
    }
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run(RunArgs {
            shards: Some(n),
            scenario,
            out,
            ..
        }) => crate::shard::local::run(&scenario, n, out),
        Command::Run(args) => run(args),
        Command::Validate(args) => validate(args),
        Command::Report(args) => report(args),
        Command::Compare(args) => compare(args),
        Command::Sweep(args) => crate::sweep::run(args),
        Command::Clean(args) => clean(args),
        Command::ControlPlane(args) => control_plane(args),
        Command::Gateway(args) => crate::shard::gateway::run(args),
        Command::Fleet(args) => crate::shard::fleet::run(args),
        Command::Merge(args) => crate::shard::cli::merge(args),
        Command::Rerun(args) => crate::rerun::command(args),
        Command::Timeline(args) => crate::timeline::command(args),
        Command::Bundle(args) => crate::bundle::command(args),
        Command::Plan(args) => crate::plan::run(args),
    }
}

pub(crate) fn load_scenario(args: &ScenarioArgs) -> Result<(Scenario, Adjustments), CliError> {
    let adjust = args.adjustments()?;
    let scenario = crate::scenario::load(&args.scenario, &adjust)
        .map_err(|e| CliError::new(ExitCode::Usage, e))?;
    // jitwgd's own resolver has the last word on `[daemon]`: refuse now, not at daemon start.
    daemon_config::resolve(&scenario, &daemon_config::DaemonEndpoints::stand_in())
        .with_context(|| format!("{}: [daemon]", args.scenario.display()))
        .map_err(|e| CliError::new(ExitCode::Usage, e))?;
    Ok((scenario, adjust))
}

fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let (scenario, adjustments) = load_scenario(&args.scenario)?;
    let opts = RunOptions {
        scenario_file: args.scenario.scenario.clone(),
        adjustments,
        out: args.out,
        quiet: args.quiet,
        event_log: args.event_log,
        capture: args.capture.options(),
        overrides_text: args.scenario.set.clone(),
    };
    let outcome = crate::run::run_scenario(scenario, &opts)?;
    let report = jitwg_reports::write_report(&outcome.results, &outcome.out_dir)
        .context("writing the report")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    say_raw(format_args!(
        "{}",
        jitwg_reports::text_summary(&outcome.results)
    ));
    for e in outcome.results.expectations.iter().filter(|e| !e.passed) {
        let unit = jitwg_reports::figure(&e.figure).map(|def| def.unit);
        let measured = match (e.measured, unit) {
            (None, _) => "not measured".to_string(),
            (Some(m), Some(unit)) => format!("measured {}", unit.format(m)),
            (Some(m), None) => format!("measured {m}"),
        };
        say!("breach: {} ({measured})", e.expr);
    }
    if outcome.interrupted {
        say!("interrupted: results are partial");
    }
    say!("results: {}", outcome.results_path.display());
    say!("report: {}", report.html.display());
    Ok(if outcome.passed() {
        ExitCode::Ok
    } else {
        ExitCode::Breach
    })
}

fn validate(args: ValidateArgs) -> Result<ExitCode, CliError> {
    let (s, _) = load_scenario(&args.scenario)?;
    let daemon = daemon_config::describe(&s).map_err(|e| CliError::new(ExitCode::Usage, e))?;
    let available =
        crate::lab::cpuset::available_cpus().map_err(|e| CliError::new(ExitCode::Internal, e))?;
    let cpus = crate::scenario::plan_cpus(&args.scenario.scenario, &s, &available)
        .map_err(|e| CliError::new(ExitCode::Usage, e))?;
    say!("cpus: {}", describe_cpus(&cpus));
    say!("{}", describe(&s, &daemon, &args.scenario.scenario));
    Ok(ExitCode::Ok)
}

/// `[lab] cpus` as it will be on this machine.
fn describe_cpus(plan: &crate::scenario::CpuPlan) -> String {
    let split = match &plan.split {
        Some(s) => format!("gateway {}, driver {}", s.gateway, s.driver),
        None => "not split (gateway and driver share every CPU)".into(),
    };
    match &plan.warning {
        Some(w) => format!("{split}; warning: {w}"),
        None => split,
    }
}

/// jitwgd's settings as it will resolve them; `*` marks jitwgd's own defaults.
fn describe_daemon(settings: &[daemon_config::Setting]) -> String {
    let words: Vec<String> = settings
        .iter()
        .map(|s| {
            let mark = if s.jitwgd_default { "*" } else { "" };
            format!("{} {}{mark}", s.key, s.value)
        })
        .collect();
    let mut out = String::from("  jitwgd (* = jitwgd default):");
    for line in words.chunks(5) {
        out.push_str(&format!("\n    {}", line.join(", ")));
    }
    out.push('\n');
    out
}

/// A few lines saying what a resolved scenario will do.
pub fn describe(s: &Scenario, daemon: &[daemon_config::Setting], file: &Path) -> String {
    let mut out = format!(
        "{}: scenario \"{}\" is valid\n  seed {}, duration {}, stale threshold {}\n{}",
        file.display(),
        s.name,
        s.seed,
        humantime::format_duration(s.duration),
        humantime::format_duration(s.stale_threshold),
        describe_daemon(daemon),
    );
    for p in &s.populations {
        // Attackers are not clients (`scenario::attack`): their count is packets.
        let unit = match p.behaviour {
            crate::scenario::file::BehaviourFile::Flood(_)
            | crate::scenario::file::BehaviourFile::Replay(_) => "attack packets",
            _ => "clients",
        };
        out.push_str(&format!(
            "  population {}: {} {unit}, {:?}, {:?}\n",
            p.name, p.count, p.arrival, p.behaviour
        ));
    }
    let last = s.clients.last().map_or_else(
        || "-".to_string(),
        |c| humantime::format_duration(c.start).to_string(),
    );
    out.push_str(&format!(
        "  {} clients (last starts at {last}), {} registered peers ({} extra), {} preinstalled \
         peers, sampled every {}\n",
        s.clients.len(),
        s.registered_peers().count(),
        s.extra_peers.len(),
        s.preinstalled.len(),
        humantime::format_duration(s.sample_every),
    ));
    for e in &s.events {
        out.push_str(&format!(
            "  event at {}: {:?}\n",
            humantime::format_duration(e.at),
            e.action
        ));
    }
    for e in &s.expectations {
        out.push_str(&format!("  expect {}\n", e.expr));
    }
    out
}

fn load_results(path: &Path) -> Result<jitwg_reports::Results, CliError> {
    jitwg_reports::load(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(|e| CliError::new(ExitCode::Usage, e))
}

fn label(path: &Path, results: &jitwg_reports::Results) -> String {
    if results.run.id.is_empty() {
        path.display().to_string()
    } else {
        results.run.id.clone()
    }
}

fn report(args: ReportArgs) -> Result<ExitCode, CliError> {
    let paths = if let [single] = args.results.as_slice() {
        let results = load_results(single)?;
        jitwg_reports::write_report(&results, &args.out)
    } else {
        let runs = args
            .results
            .iter()
            .map(|p| load_results(p).map(|r| (label(p, &r), r)))
            .collect::<Result<Vec<_>, _>>()?;
        jitwg_reports::write_comparison(&runs, &args.out)
    }
    .context("writing the report")
    .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    say!("markdown: {}", paths.markdown.display());
    say!("report: {}", paths.html.display());
    Ok(ExitCode::Ok)
}

fn compare(args: CompareArgs) -> Result<ExitCode, CliError> {
    let base = load_results(&args.baseline)?;
    let cand = load_results(&args.candidate)?;
    let cmp = jitwg_reports::compare(
        &jitwg_reports::Figures::from_results(&base),
        &jitwg_reports::Figures::from_results(&cand),
        args.tolerance,
    );
    say!(
        "baseline:  {}\ncandidate: {}\n",
        label(&args.baseline, &base),
        label(&args.candidate, &cand)
    );
    say!("{cmp}");
    // The table ends with the regression count; the exit code carries the verdict.
    Ok(if cmp.regressions().is_empty() {
        ExitCode::Ok
    } else {
        ExitCode::Regression
    })
}

fn clean(args: CleanArgs) -> Result<ExitCode, CliError> {
    crate::run::prereq::require_root().map_err(|e| CliError::new(ExitCode::Setup, e))?;
    let report = crate::lab::clean::clean(args.dry_run)
        .context("cleaning up leftovers")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let groups = [
        ("process", &report.processes_killed),
        ("namespace", &report.namespaces_removed),
        ("link", &report.links_removed),
        ("socket", &report.sockets_removed),
        ("cgroup", &report.cgroups_removed),
    ];
    let mut any = false;
    for (what, items) in groups {
        for item in items.iter() {
            say!("{verb} {what} {item}");
            any = true;
        }
    }
    if !any {
        say!("nothing to clean");
    }
    Ok(ExitCode::Ok)
}

fn control_plane(args: ControlPlaneArgs) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Runtime::new()
        .context("building the tokio runtime")
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    runtime
        .block_on(run_cli(args))
        .map_err(|e| CliError::new(ExitCode::Setup, e))?;
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests;
