//! Runs a checked sweep plan: every point and repeat not yet finished, one full run each on a
//! fresh lab, in `points/<i>/r<k>.partial/` renamed to `r<k>/` only when the run ended on its
//! own; `sweep.json` and the report are rewritten after each run, so Ctrl-C (or a crash)
//! leaves every finished run usable and a rerun resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use jitwg_reports::sweep::{
    aggregate, fallback_annotations, figure_values, partial_dir, point_dir, repeat_dir,
    write_sweep_report_with, Point, Repeat, SweepFile, SweepFileError, VariedKey, SWEEP_VERSION,
};

use super::Plan;
use crate::cli::{CliError, ExitCode};
use crate::run::{FailureKind, RunOptions};

fn internal(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: ExitCode::Internal,
        error: e.into(),
    }
}

/// The index of `plan` with no repeat finished yet.
fn index(plan: &Plan) -> SweepFile {
    SweepFile {
        version: SWEEP_VERSION,
        scenario_file: plan.scenario_file.display().to_string(),
        scenario_name: plan.scenario_name.clone(),
        base_seed: plan.base_seed,
        repeat: plan.repeat,
        fixed: plan.fixed.clone(),
        vary: plan
            .vary
            .iter()
            .map(|v| VariedKey {
                key: v.key.clone(),
                values: v.values.clone(),
            })
            .collect(),
        points: plan
            .points
            .iter()
            .map(|p| Point {
                index: p.index,
                dir: point_dir(p.index).display().to_string(),
                overrides: p.overrides.clone(),
                values: p.values.clone(),
                x: p.x.clone(),
                complete: false,
                repeats: Vec::new(),
                figures: Default::default(),
            })
            .collect(),
    }
}

/// An existing index must describe the same grid (the repeat count may grow).
fn same_grid(old: &SweepFile, new: &SweepFile) -> bool {
    old.scenario_file == new.scenario_file
        && old.base_seed == new.base_seed
        && old.fixed == new.fixed
        && old.vary == new.vary
}

/// The record of a finished repeat read from its `results.json`.
fn repeat_record(dir: &Path, point: usize, k: usize, seed: u64) -> anyhow::Result<Repeat> {
    let rel = repeat_dir(point, k);
    let results_rel = rel.join("results.json");
    let results = jitwg_reports::load(dir.join(&results_rel))
        .with_context(|| format!("reading {}", results_rel.display()))?;
    Ok(Repeat {
        index: k,
        dir: rel.display().to_string(),
        results: results_rel.display().to_string(),
        seed,
        run_id: results.run.id.clone(),
        passed: jitwg_reports::all_passed(&results.expectations),
        figures: figure_values(&results),
    })
}

/// Records `repeat` in its point, keeping repeats in order, and refreshes the aggregates.
fn record(sweep: &mut SweepFile, point: usize, repeat: Repeat) {
    let want = sweep.repeat;
    if let Some(p) = sweep.points.get_mut(point) {
        p.repeats.retain(|r| r.index != repeat.index);
        p.repeats.push(repeat);
        p.repeats.sort_by_key(|r| r.index);
        p.figures = aggregate(&p.repeats);
        p.complete = (0..want).all(|k| p.repeats.iter().any(|r| r.index == k));
    }
}

/// Writes `sweep.json`, `report.html` and `summary.md`.
fn publish(sweep: &SweepFile, dir: &Path) -> Result<(), CliError> {
    sweep.save(dir).map_err(internal)?;
    let model = cost_model_section(dir);
    write_sweep_report_with(sweep, &fallback_annotations(sweep), model.as_deref(), dir)
        .context("writing the sweep report")
        .map_err(internal)?;
    Ok(())
}

/// The cost model fitted from the sweep's finished runs (the same fit `jitwg plan DIR` makes),
/// as the report's fit-quality section; `None` (logged) while there are too few runs to fit or
/// the fit fails, so a partial sweep still gets its charts.
fn cost_model_section(dir: &Path) -> Option<String> {
    let points = match jitwg_reports::model::read_dir(dir, crate::plan::daemon_defaults()) {
        Ok(points) => points,
        Err(e) => {
            tracing::info!(error = %e, "no cost model in the sweep report: reading the runs failed");
            return None;
        }
    };
    if points.len() < jitwg_reports::model::MIN_POINTS {
        return None;
    }
    let section = jitwg_reports::model::Calibration::fit(&points)
        .map_err(anyhow::Error::from)
        .and_then(|c| jitwg_reports::model::html::section(&c).map_err(anyhow::Error::from));
    match section {
        Ok(html) => Some(html),
        Err(e) => {
            tracing::info!(error = %e, "no cost model in the sweep report");
            None
        }
    }
}

/// Sets the returned flag on SIGINT or SIGTERM, beside the run's own handler (tokio delivers a
/// signal to every listener), so the sweep stops after the interrupted run and between runs.
fn watch_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let started = std::thread::Builder::new()
        .name("sweep-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                set.store(true, Ordering::SeqCst);
            });
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C between sweep runs");
    }
    // Let the thread register its handlers before the first run starts.
    std::thread::sleep(Duration::from_millis(50));
    flag
}

fn progress(quiet: bool, total: usize, done: usize) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:24}] {pos}/{len} runs (eta {eta}) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(done as u64);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Runs every unfinished repeat of `plan` into `dir`. Exit 0 when the grid is complete, 1 when
/// interrupted (finished runs stay), or the failing run's own code (2, 3, 4).
pub fn execute(plan: &Plan, dir: &Path, quiet: bool) -> Result<ExitCode, CliError> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {}", dir.display()))
        .map_err(internal)?;
    let mut sweep = index(plan);
    match SweepFile::load(dir) {
        Ok(old) if !same_grid(&old, &sweep) => {
            return Err(CliError {
                code: ExitCode::Usage,
                error: anyhow!(
                    "{} holds a sweep of another grid (scenario, seed, --set or --vary differ); \
                     choose another --out",
                    dir.display()
                ),
            });
        }
        Ok(_) => {}
        Err(SweepFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        // Never overwrite an index this jitwg cannot read: it may be another version's.
        Err(e) => {
            return Err(CliError {
                code: ExitCode::Usage,
                error: anyhow::Error::new(e).context("choose another --out"),
            })
        }
    }
    // Resume: every repeat whose results.json is in place is finished.
    let mut pending: Vec<(usize, usize)> = Vec::new();
    for p in &plan.points {
        for k in 0..plan.repeat {
            let seed = plan.base_seed + k as u64;
            if dir
                .join(repeat_dir(p.index, k))
                .join("results.json")
                .is_file()
            {
                let r = repeat_record(dir, p.index, k, seed).map_err(internal)?;
                record(&mut sweep, p.index, r);
            } else {
                pending.push((p.index, k));
            }
        }
    }
    publish(&sweep, dir)?;
    let total = plan.points.len() * plan.repeat;
    let bar = progress(quiet, total, total - pending.len());
    let interrupted = watch_signals();
    let mut outcome = Ok(ExitCode::Ok);
    for (point, k) in pending {
        if interrupted.load(Ordering::SeqCst) {
            outcome = Ok(ExitCode::Breach);
            break;
        }
        let grid_point = &plan.points[point];
        bar.set_message(format!(
            "point {point} r{k}: {}",
            grid_point.overrides.join(" ")
        ));
        match run_one(plan, dir, point, k) {
            Ok(Some(r)) => {
                record(&mut sweep, point, r);
                publish(&sweep, dir)?;
                bar.inc(1);
            }
            Ok(None) => {
                outcome = Ok(ExitCode::Breach);
                break;
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    bar.finish_and_clear();
    publish(&sweep, dir)?;
    let complete = sweep.points.iter().filter(|p| p.complete).count();
    println!(
        "{complete} of {} points complete; sweep: {}",
        sweep.points.len(),
        dir.join(jitwg_reports::sweep::SWEEP_FILE).display()
    );
    println!("report: {}", dir.join(jitwg_reports::HTML_FILE).display());
    if matches!(outcome, Ok(ExitCode::Breach)) {
        println!("interrupted: finished runs are kept; run the same command again to resume");
    }
    outcome
}

/// One run of `point`'s repeat `k`; `None` when it was interrupted (its partial output stays
/// in `r<k>.partial/` and is replaced on resume).
fn run_one(plan: &Plan, dir: &Path, point: usize, k: usize) -> Result<Option<Repeat>, CliError> {
    let partial: PathBuf = dir.join(partial_dir(point, k));
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing the interrupted run {}", partial.display()))
            .map_err(internal)?;
    }
    let (scenario, adjustments) = plan.scenario(&plan.points[point], k)?;
    let opts = RunOptions {
        scenario_file: plan.scenario_file.clone(),
        adjustments,
        out: Some(partial.clone()),
        quiet: true,
        event_log: false,
        capture: None,
        overrides_text: plan
            .fixed
            .iter()
            .chain(plan.points[point].overrides.iter())
            .cloned()
            .collect(),
    };
    let run = match crate::run::run_scenario(scenario, &opts) {
        Ok(run) => run,
        Err(e) if e.kind() == FailureKind::Interrupted => return Ok(None),
        Err(e) => {
            return Err(CliError::from(e));
        }
    };
    if let Err(e) = jitwg_reports::write_report(&run.results, &run.out_dir) {
        tracing::warn!(error = %e, "writing the report of {}", run.out_dir.display());
    }
    if run.interrupted {
        return Ok(None);
    }
    let done = dir.join(repeat_dir(point, k));
    std::fs::rename(&partial, &done)
        .with_context(|| format!("renaming {} to {}", partial.display(), done.display()))
        .map_err(internal)?;
    repeat_record(dir, point, k, plan.base_seed + k as u64)
        .map(Some)
        .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::grid::{cartesian, parse_vary};

    fn plan() -> Plan {
        let vary = vec![parse_vary("population.0.count=10,20").unwrap()];
        Plan {
            scenario_file: "s.toml".into(),
            scenario_name: "s".into(),
            base_seed: 7,
            repeat: 2,
            fixed: vec![],
            points: cartesian(&vary),
            vary,
        }
    }

    fn write_results(dir: &Path, point: usize, k: usize) {
        let results = jitwg_reports::Results::new(jitwg_reports::RunInfo {
            id: format!("run-{point}-{k}"),
            ..Default::default()
        });
        let path = dir.join(repeat_dir(point, k)).join("results.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        jitwg_reports::save(&results, &path).unwrap();
    }

    #[test]
    fn records_complete_points_and_keeps_repeat_order() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan();
        let mut sweep = index(&plan);
        write_results(dir.path(), 0, 1);
        write_results(dir.path(), 0, 0);
        record(&mut sweep, 0, repeat_record(dir.path(), 0, 1, 8).unwrap());
        assert!(!sweep.points[0].complete);
        record(&mut sweep, 0, repeat_record(dir.path(), 0, 0, 7).unwrap());
        let p = &sweep.points[0];
        assert!(p.complete);
        assert_eq!(
            p.repeats.iter().map(|r| r.index).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(p.repeats[1].run_id, "run-0-1");
        assert_eq!(p.repeats[1].dir, "points/0/r1");
        assert_eq!(p.figures["clients"].n, 2);
        assert!(!sweep.points[1].complete);
    }

    #[test]
    fn a_resumed_grid_must_be_the_same_but_may_add_repeats() {
        let a = index(&plan());
        let mut more = plan();
        more.repeat = 3;
        assert!(same_grid(&a, &index(&more)));
        let mut other = plan();
        other.fixed = vec!["duration=5s".into()];
        assert!(!same_grid(&a, &index(&other)));
    }

    #[test]
    fn publishing_writes_index_report_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan();
        let mut sweep = index(&plan);
        write_results(dir.path(), 1, 0);
        record(&mut sweep, 1, repeat_record(dir.path(), 1, 0, 7).unwrap());
        publish(&sweep, dir.path()).unwrap();
        let back = SweepFile::load(dir.path()).unwrap();
        assert_eq!(back, sweep);
        assert!(dir.path().join("report.html").is_file());
        assert!(dir.path().join("summary.md").is_file());
    }
}
