//! `jitwg plan`: capacity planning from calibration runs. Reads every finished run under the
//! calibration directories (a parameter sweep's points, or runs written with `jitwg run --out
//! DIR/points/<i>`), fits the cost model (`jitwg_reports::model`), and either shows the fits,
//! predicts one scenario's figures (`--predict KEY=VALUE ...`), checks predictions against
//! held-out runs (`--validate DIR`), or sizes a fleet (`--peers ...`).

mod args;
mod overrides;
mod render;

pub use args::PlanArgs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jitwg_reports::model::{self, Calibration, DaemonDefaults};

use crate::cli::{CliError, ExitCode};

/// jitwgd's own defaults for the settings a scenario may leave unset.
pub fn daemon_defaults() -> DaemonDefaults {
    DaemonDefaults {
        evict_after: jitwgd::config::defaults::EVICT_AFTER,
        sweep_every: jitwgd::config::defaults::SWEEP_EVERY,
    }
}

fn usage(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: ExitCode::Usage,
        error: error.into(),
    }
}

/// Reads and fits the calibration directories.
pub fn calibrate(dirs: &[PathBuf]) -> Result<Calibration, CliError> {
    calibrate_from(dirs, &BTreeSet::new())
}

/// A path with symbolic links resolved (calibration and held-out trees may be links into one
/// sweep), or as given when it cannot be resolved.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reads and fits the calibration directories, leaving out the runs in `held_out` (resolved
/// paths of results files).
fn calibrate_from(dirs: &[PathBuf], held_out: &BTreeSet<PathBuf>) -> Result<Calibration, CliError> {
    let mut points = Vec::new();
    for dir in dirs {
        let read = model::read_dir(dir, daemon_defaults())
            .with_context(|| format!("reading calibration directory {}", dir.display()))
            .map_err(usage)?;
        points.extend(
            read.into_iter()
                .filter(|p| !held_out.contains(&canonical(&p.source))),
        );
    }
    Calibration::fit(&points)
        .with_context(|| {
            let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!("calibrating from {}", names.join(", "))
        })
        .map_err(usage)
}

/// Runs `jitwg plan`.
pub fn run(args: PlanArgs) -> Result<ExitCode, CliError> {
    let fleet = args.fleet_inputs().map_err(usage)?;
    let questions = [
        fleet.is_some(),
        !args.predict.is_empty(),
        !args.validate.is_empty(),
    ];
    if questions.iter().filter(|q| **q).count() > 1 {
        return Err(usage(anyhow::anyhow!(
            "--predict, --validate and a fleet plan (--peers ...) are separate questions: ask one at a time"
        )));
    }
    // Parse the overrides before reading anything, so a typo fails fast.
    let overrides = overrides::parse(&args.predict).map_err(usage)?;
    let held_out = read_held_out(&args.validate)?;
    let mut left_out: BTreeSet<PathBuf> = held_out.iter().map(|h| canonical(&h.source)).collect();
    for dir in &args.exclude {
        let read = model::read_dir(dir, daemon_defaults())
            .with_context(|| format!("reading --exclude directory {}", dir.display()))
            .map_err(usage)?;
        left_out.extend(read.iter().map(|p| canonical(&p.source)));
    }
    let calibration = calibrate_from(&args.calibration, &left_out)?;
    let text = if !args.validate.is_empty() {
        let validation = model::validate(&calibration, &held_out);
        if args.json {
            json(&validation)?
        } else {
            render::validation(&calibration, &validation)
        }
    } else if let Some(inputs) = fleet {
        let plan = model::plan_fleet(&calibration, &inputs);
        if args.json {
            json(&serde_json::json!({"inputs": inputs, "plan": plan}))?
        } else {
            render::fleet(&calibration, &inputs, &plan)
        }
    } else if !overrides.is_empty() || args.scenario.is_some() {
        let base = match &args.scenario {
            Some(path) => overrides::read_scenario(path).map_err(usage)?,
            None => calibration.base_scenario.clone(),
        };
        let planned = overrides::apply(&base, &overrides).map_err(usage)?;
        let prediction = model::predict(&calibration, &planned.planned);
        if args.json {
            let mut value = serde_json::to_value(&prediction).map_err(internal)?;
            value["unused_keys"] = serde_json::json!(planned.unused);
            json(&value)?
        } else {
            render::prediction(&calibration, &prediction, &planned.unused)
        }
    } else if args.json {
        json(&calibration)?
    } else {
        render::calibration(&calibration)
    };
    print!("{text}");
    Ok(ExitCode::Ok)
}

/// Every finished run under the `--validate` directories; at least one when any was given.
fn read_held_out(dirs: &[PathBuf]) -> Result<Vec<model::CalPoint>, CliError> {
    let mut held_out = Vec::new();
    for dir in dirs {
        let read = model::read_dir(dir, daemon_defaults())
            .with_context(|| format!("reading held-out directory {}", dir.display()))
            .map_err(usage)?;
        held_out.extend(read);
    }
    if !dirs.is_empty() && held_out.is_empty() {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(usage(anyhow::anyhow!(
            "--validate: no finished run under {}",
            names.join(", ")
        )));
    }
    Ok(held_out)
}

fn internal(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: ExitCode::Internal,
        error: e.into(),
    }
}

fn json(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitwg_reports::schema::{ClientResult, Connection, ProcessUsage, Results, RunInfo};

    /// A finished run of `n` connect-once clients, daemon CPU 1 ms per client.
    fn write_run(dir: &Path, n: u32) {
        let scenario = serde_json::json!({
            "name": "t", "duration": "20s",
            "population": [{"name": "c", "count": n,
                "arrival": {"kind": "constant", "rate": 10.0},
                "behaviour": {"kind": "connect_once"}}]
        });
        let mut results = Results::new(RunInfo {
            resolved_scenario: scenario,
            duration_ms: 20_000.0,
            ..RunInfo::default()
        });
        results.clients = (0..n)
            .map(|id| ClientResult {
                id,
                population: "c".into(),
                connections: vec![Connection {
                    setup_latency_ms: Some(5.0),
                    handshake_attempts: 1,
                    ..Connection::default()
                }],
            })
            .collect();
        results.processes = vec![ProcessUsage {
            name: "daemon".into(),
            cpu_seconds: 0.001 * f64::from(n),
            peak_rss_bytes: 1 << 20,
        }];
        std::fs::create_dir_all(dir).unwrap();
        jitwg_reports::schema::save(&results, dir.join("results.json")).unwrap();
    }

    #[test]
    fn held_out_runs_are_left_out_of_the_calibration_that_predicts_them() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = tmp.path().join("sweep");
        for (i, n) in [10, 20, 30, 40, 50].into_iter().enumerate() {
            write_run(&sweep.join(format!("points/{i}/r0")), n);
        }
        let held = vec![sweep.join("points/2")];
        let held_out = read_held_out(&held).unwrap();
        assert_eq!(held_out.len(), 1);
        let sources = held_out.iter().map(|h| canonical(&h.source)).collect();
        let c = calibrate_from(std::slice::from_ref(&sweep), &sources).unwrap();
        assert_eq!(c.points, 4);
        let v = model::validate(&c, &held_out);
        let cpu = v.checks.iter().find(|k| k.figure == "daemon_cpu").unwrap();
        assert!(cpu.error.unwrap().abs() < 1e-6, "{cpu:?}");
        // A held-out directory with nothing finished in it is a usage error, not an empty table.
        let e = read_held_out(&[tmp.path().join("empty")]).unwrap_err();
        assert_eq!(e.code, ExitCode::Usage);
        std::fs::create_dir_all(tmp.path().join("none")).unwrap();
        let e = read_held_out(&[tmp.path().join("none")]).unwrap_err();
        assert!(format!("{:#}", e.error).contains("no finished run"));
    }
}
