//! `jitwg rerun OUT_DIR|BUNDLE`: runs again exactly what a recorded run ran — the resolved
//! scenario from its results.json (seed and `--set` overrides already applied), on the same
//! CPU split, with the same event-log and capture options — then says how the two runs differ:
//! which clients connected or failed differently, and each figure's run-to-run spread. It
//! warns first when the tool versions or jitwgd's resolved settings are not the recorded ones.

/// `println!` that ignores a reader that went away (`jitwg rerun ... | head`).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::cli::say_raw(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod compare;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::cli::{CliError, ExitCode};
use crate::run::{daemon_config, RunOptions};
use crate::scenario::cpus::CpusFile;
use crate::scenario::{Adjustments, Scenario, ScenarioFile};

/// The resolved scenario's file name in a rerun's (and a bundle's) directory.
pub const SCENARIO_FILE: &str = "scenario.toml";
/// Runs with at most this many clients are "smoke-sized": the same clients must connect or
/// fail as before, and a difference makes `rerun` exit 1.
pub const SMOKE_CLIENTS: usize = 500;

#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The recorded run: its output directory, its results.json, or a `jitwg bundle` archive.
    #[arg(value_name = "OUT_DIR|BUNDLE")]
    pub source: PathBuf,
    /// Output directory of the new run [default: target/jitwg/<scenario name>-<run id>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run it this many times, to measure the run-to-run spread of every figure.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What a recorded run says about itself.
pub struct Recorded {
    pub results: jitwg_reports::Results,
    /// Where it was read from (for messages).
    pub origin: PathBuf,
}

/// Reads the recorded run from a directory, a results file or a bundle.
pub fn read_recorded(source: &Path) -> anyhow::Result<Recorded> {
    let results_path = if source.is_dir() {
        source.join("results.json")
    } else if crate::bundle::is_bundle(source) {
        let results = crate::bundle::read_results(source)?;
        return Ok(Recorded {
            results,
            origin: source.to_path_buf(),
        });
    } else {
        source.to_path_buf()
    };
    let results = jitwg_reports::load(&results_path)
        .with_context(|| format!("reading {}", results_path.display()))?;
    Ok(Recorded {
        results,
        origin: results_path,
    })
}

/// The scenario file exactly as the recorded run resolved it, pinned to its CPU split.
pub fn recorded_scenario(results: &jitwg_reports::Results) -> anyhow::Result<ScenarioFile> {
    let mut file: ScenarioFile = serde_json::from_value(results.run.resolved_scenario.clone())
        .context("results.json's run.resolved_scenario is not a scenario this jitwg can read")?;
    if let Some(split) = &results.run.cpu_split {
        // "auto" halves depend on the CPUs offered; pin the lists the recorded run used.
        file.lab.cpus = CpusFile::Split {
            gateway: split.gateway.clone(),
            driver: split.driver.clone(),
        };
    }
    Ok(file)
}

/// The scenario file as TOML (what `scenario.toml` in a rerun or a bundle holds).
pub fn render_scenario(file: &ScenarioFile) -> anyhow::Result<String> {
    toml::to_string(file).context("writing the resolved scenario as TOML")
}

fn usage(e: anyhow::Error) -> CliError {
    CliError {
        code: ExitCode::Usage,
        error: e,
    }
}

fn internal(e: anyhow::Error) -> CliError {
    CliError {
        code: ExitCode::Internal,
        error: e,
    }
}

/// `jitwg rerun`.
pub fn command(args: RerunArgs) -> Result<ExitCode, CliError> {
    let recorded = read_recorded(&args.source).map_err(usage)?;
    let before = &recorded.results;
    let file = recorded_scenario(before).map_err(usage)?;
    let text = render_scenario(&file).map_err(internal)?;
    let staging = tempfile::tempdir()
        .context("creating a directory for the resolved scenario")
        .map_err(internal)?;
    let scenario_path = staging.path().join(SCENARIO_FILE);
    std::fs::write(&scenario_path, &text)
        .with_context(|| format!("writing {}", scenario_path.display()))
        .map_err(internal)?;
    let scenario = crate::scenario::parse(&scenario_path, &text, &Adjustments::default())
        .map_err(|e| usage(e.into()))?;
    say!(
        "rerunning {} (run {}, seed {}, {} clients)",
        recorded.origin.display(),
        before.run.id,
        scenario.seed,
        scenario.clients.len()
    );
    for warning in warnings(before, &scenario) {
        say!("warning: {warning}");
    }
    let rerun = before.rerun.clone().unwrap_or_default();
    let capture = match &rerun.capture_limit {
        Some(limit) => Some(crate::capture::CaptureOptions {
            limit: limit
                .parse()
                .with_context(|| "results.json's rerun.capture_limit")
                .map_err(usage)?,
        }),
        None => None,
    };
    let mut runs = vec![jitwg_reports::Figures::from_results(before)];
    let mut verdict = ExitCode::Ok;
    for i in 0..args.repeat {
        let out = match (&args.out, args.repeat) {
            (Some(out), 1) => Some(out.clone()),
            (Some(out), _) => Some(out.join(format!("run-{}", i + 1))),
            (None, _) => None,
        };
        let opts = RunOptions {
            // The recorded run's file name, so results.json names the same scenario file.
            scenario_file: PathBuf::from(&before.run.scenario_file),
            adjustments: Adjustments::default(),
            out,
            quiet: args.quiet,
            event_log: rerun.event_log,
            capture,
            overrides_text: rerun.overrides.clone(),
        };
        let outcome = crate::run::run_scenario(scenario.clone(), &opts)?;
        // The resolved scenario beside the results, so this run can be rerun from its file too.
        let kept = outcome.out_dir.join(SCENARIO_FILE);
        std::fs::write(&kept, &text)
            .with_context(|| format!("writing {}", kept.display()))
            .map_err(internal)?;
        let report = jitwg_reports::write_report(&outcome.results, &outcome.out_dir)
            .context("writing the report")
            .map_err(internal)?;
        say!("results: {}", outcome.results_path.display());
        say!("report: {}", report.html.display());
        if !outcome.passed() {
            verdict = ExitCode::Breach;
        }
        let changes = compare::outcome_changes(&before.clients, &outcome.results.clients);
        print_outcomes(&changes, before.clients.len());
        if !changes.is_empty() && scenario.clients.len() <= SMOKE_CLIENTS {
            verdict = ExitCode::Breach;
        }
        runs.push(jitwg_reports::Figures::from_results(&outcome.results));
    }
    print_spreads(&compare::spreads(&runs));
    Ok(verdict)
}

/// What differs from the recorded run before anything runs: tool versions, jitwgd's settings.
fn warnings(before: &jitwg_reports::Results, scenario: &Scenario) -> Vec<String> {
    let program = (before.run.backend == "userspace").then(|| {
        crate::run::prereq::require_binary("wireguard-go", "")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "wireguard-go".into())
    });
    let now = crate::run::info::tool_info(program.as_deref());
    let mut out = compare::tool_changes(&before.run.tool, &now);
    match &before.rerun {
        Some(rerun) => {
            let settings = daemon_config::describe(scenario)
                .map(|s| {
                    s.into_iter()
                        .map(|s| (s.key.to_string(), s.value))
                        .collect()
                })
                .unwrap_or_default();
            out.extend(compare::setting_changes(&rerun.daemon_settings, &settings));
        }
        None => out.push(
            "results.json predates rerun records: jitwgd's resolved settings cannot be checked"
                .into(),
        ),
    }
    out
}

fn print_outcomes(changes: &[compare::OutcomeChange], clients: usize) {
    if changes.is_empty() {
        say!("outcomes: identical (all {clients} clients connected or failed as before)");
        return;
    }
    say!(
        "outcomes: {} of {clients} clients ended differently:",
        changes.len()
    );
    for c in changes.iter().take(20) {
        say!(
            "  client {}: before {}, now {}",
            c.client,
            compare::describe_outcome(c.before.as_ref()),
            compare::describe_outcome(c.after.as_ref())
        );
    }
    if changes.len() > 20 {
        say!("  ... and {} more", changes.len() - 20);
    }
}

fn print_spreads(spreads: &[compare::Spread]) {
    say!("run-to-run spread (recorded run first; spread = (max - min) / median):");
    for s in spreads {
        if s.values.iter().all(Option::is_none) {
            continue;
        }
        let values: Vec<String> = s
            .values
            .iter()
            .map(|v| v.map_or_else(|| "-".into(), |v| s.unit.format(v)))
            .collect();
        let spread = s
            .relative
            .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0));
        say!("  {:<28} {:>8}  {}", s.figure, spread, values.join("  "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Override;

    const SCENARIO: &str = r#"
name = "t"
seed = 3
duration = "10s"
[lab]
cpus = "auto"
[daemon]
evict_after = "2m"
[[population]]
name = "a"
count = 5
arrival = { kind = "poisson", rate = 20.0 }
behaviour = { kind = "stay", duration = "3s", traffic_every = "1s" }
link = { delay = "2ms", jitter = "1ms", loss = 0.01 }
"#;

    fn results_of(scenario: &Scenario) -> jitwg_reports::Results {
        jitwg_reports::Results::new(jitwg_reports::RunInfo {
            id: "t-abc".into(),
            scenario_name: scenario.name.clone(),
            scenario_file: "t.toml".into(),
            seed: scenario.seed,
            started_at_unix_ms: 0,
            duration_ms: 0.0,
            resolved_scenario: serde_json::to_value(&scenario.file).unwrap(),
            tool: jitwg_reports::ToolInfo::default(),
            mode: "jit".into(),
            boot: "jit".into(),
            backend: "userspace".into(),
            initiate: true,
            stale_threshold_ms: 0.0,
            cpu_split: Some(jitwg_reports::CpuSplitInfo {
                gateway: "0".into(),
                driver: "1".into(),
                mechanism: "cgroup2".into(),
            }),
            warnings: vec![],
            merged_setup: Default::default(),
            shards: Default::default(),
            source_addresses: Default::default(),
        })
    }

    #[test]
    fn the_recorded_scenario_resolves_to_the_same_clients_on_the_recorded_cpus() {
        let adjust = Adjustments {
            overrides: vec![Override::parse("population.0.count=7").unwrap()],
            seed: Some(11),
        };
        let original = crate::scenario::parse(Path::new("t.toml"), SCENARIO, &adjust).unwrap();
        let results = results_of(&original);
        let file = recorded_scenario(&results).unwrap();
        assert_eq!(
            file.lab.cpus,
            CpusFile::Split {
                gateway: "0".into(),
                driver: "1".into()
            }
        );
        let text = render_scenario(&file).unwrap();
        let again =
            crate::scenario::parse(Path::new(SCENARIO_FILE), &text, &Adjustments::default())
                .unwrap();
        assert_eq!((again.seed, again.clients.len()), (11, 7));
        for (a, b) in original.clients.iter().zip(&again.clients) {
            assert_eq!(a.identity.public_key, b.identity.public_key);
            assert_eq!(a.identity.private_key, b.identity.private_key);
            assert_eq!(
                (a.start, a.source_ip, a.link_seed),
                (b.start, b.source_ip, b.link_seed)
            );
        }
        assert_eq!(
            daemon_config::describe(&original)
                .unwrap()
                .iter()
                .map(|s| (s.key, s.value.clone()))
                .collect::<Vec<_>>(),
            daemon_config::describe(&again)
                .unwrap()
                .iter()
                .map(|s| (s.key, s.value.clone()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_results_file_that_is_not_a_scenario_is_refused() {
        let original =
            crate::scenario::parse(Path::new("t.toml"), SCENARIO, &Adjustments::default()).unwrap();
        let mut results = results_of(&original);
        results.run.resolved_scenario = serde_json::json!({"name": 3});
        assert!(recorded_scenario(&results).is_err());
    }
}
