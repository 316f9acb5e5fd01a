//! `jitwg sweep`: a *parameter sweep*, the grid of full runs of one scenario with some keys
//! varied (not jitwgd's *eviction sweep*). Each point and repeat is a normal `jitwg run` (the same
//! `run::run_scenario` on a fresh lab, with `--set`-style overrides) written to
//! `DIR/points/<i>/r<k>/`; `DIR/sweep.json` indexes the grid and every point's figures, and
//! `DIR/report.html` charts each figure against the varied key (see ARCHITECTURE.md,
//! "Parameter sweeps"). Everything is checked before the first run: an unknown key or a value
//! that does not parse exits 2.

pub mod grid;
pub mod keys;
mod runner;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Args;

use crate::cli::{CliError, ExitCode};
use crate::run::daemon_config;
use crate::scenario::{Adjustments, Override, Scenario, ScenarioFile};
use grid::{GridPoint, SweepTable, Vary};
use keys::ValidKeys;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The scenario TOML file; its `[sweep]` table gives the grid when no --vary is given.
    pub scenario: PathBuf,
    /// A key to vary and its values, e.g. --vary population.0.count=250,500,1000 or
    /// --vary daemon.evict_after=30s,2m. Repeatable: the grid is every combination, the first
    /// --vary varying slowest. Keys are spelled as for --set; values too (commas inside quotes,
    /// [..] or {..} do not split).
    #[arg(long = "vary", value_name = "KEY=V1,V2,...")]
    pub vary: Vec<String>,
    /// Override a scenario value at every point, as in `jitwg run --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Seed of repeat 0 (repeat k uses SEED + k) [default: the scenario's seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Runs per point, for error bars [default: the [sweep] table's `repeat`, else 1].
    #[arg(long)]
    pub repeat: Option<usize>,
    /// The sweep directory: points/<i>/r<k>/ (each a run's output), sweep.json, report.html,
    /// summary.md. Running again with the same grid resumes: finished runs are skipped.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Check every point and print the grid; run nothing (needs no root).
    #[arg(long)]
    pub dry_run: bool,
}

/// A checked sweep, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario_file: PathBuf,
    pub scenario_name: String,
    pub base_seed: u64,
    pub repeat: usize,
    pub fixed: Vec<String>,
    pub vary: Vec<Vary>,
    pub points: Vec<GridPoint>,
}

impl Plan {
    /// The scenario of `point`'s repeat `k` (checked already in [`plan`], so an error here means
    /// the file changed meanwhile).
    pub fn scenario(
        &self,
        point: &GridPoint,
        k: usize,
    ) -> Result<(Scenario, Adjustments), CliError> {
        let adjust = adjustments(
            &self.fixed,
            &point.overrides,
            Some(self.base_seed + k as u64),
        )
        .map_err(usage)?;
        let scenario = crate::scenario::load(&self.scenario_file, &adjust).map_err(usage)?;
        Ok((scenario, adjust))
    }
}

fn usage(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: ExitCode::Usage,
        error: e.into(),
    }
}

fn adjustments(
    fixed: &[String],
    point: &[String],
    seed: Option<u64>,
) -> anyhow::Result<Adjustments> {
    let overrides = fixed
        .iter()
        .map(|s| Override::parse(s).with_context(|| format!("--set {s}")))
        .chain(
            point
                .iter()
                .map(|s| Override::parse(s).with_context(|| format!("--vary {s}"))),
        )
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Adjustments { overrides, seed })
}

/// Loads and checks a scenario as `jitwg run` would (jitwgd's resolver included).
fn check_scenario(file: &Path, adjust: &Adjustments) -> anyhow::Result<Scenario> {
    let scenario = crate::scenario::load(file, adjust)?;
    daemon_config::resolve(&scenario, &daemon_config::DaemonEndpoints::stand_in())
        .context("[daemon]")?;
    Ok(scenario)
}

/// Reads the scenario and the grid, and checks every key and value before anything runs.
pub fn plan(args: &SweepArgs) -> Result<Plan, CliError> {
    let path = &args.scenario;
    let base = adjustments(&args.set, &[], args.seed).map_err(usage)?;
    let scenario = check_scenario(path, &base)
        .with_context(|| format!("{}", path.display()))
        .map_err(usage)?;
    // The file parsed above, so reading and parsing it again succeeds barring a race.
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(usage)?;
    let file: ScenarioFile = toml::from_str(&text)
        .with_context(|| format!("{}", path.display()))
        .map_err(usage)?;
    let table = match &file.sweep {
        Some(t) => SweepTable::from_table(t).map_err(usage)?,
        None => SweepTable::default(),
    };
    let vary = if args.vary.is_empty() {
        table.vary()
    } else {
        args.vary
            .iter()
            .map(|v| grid::parse_vary(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(usage)?
    };
    grid::check(&vary).map_err(usage)?;
    let repeat = args.repeat.or(table.repeat).unwrap_or(1);
    if repeat == 0 {
        return Err(usage(grid::GridError::NoRepeats));
    }
    let valid = ValidKeys::of(&file);
    for v in &vary {
        if !valid.contains(&v.key) {
            let list: Vec<&str> = valid.leaves.iter().map(String::as_str).collect();
            return Err(usage(anyhow!(
                "--vary {}: not a key of scenario {}; valid keys:\n  {}",
                v.key,
                path.display(),
                list.join("\n  ")
            )));
        }
        for value in &v.values {
            let set = format!("{}={value}", v.key);
            adjustments(&args.set, std::slice::from_ref(&set), args.seed)
                .and_then(|a| check_scenario(path, &a))
                .map_err(|e| {
                    usage(anyhow!(
                        "--vary {}: the value {value:?} does not parse: {e:#}",
                        v.key
                    ))
                })?;
        }
    }
    let points = grid::cartesian(&vary);
    if vary.len() > 1 {
        for p in &points {
            adjustments(&args.set, &p.overrides, args.seed)
                .and_then(|a| check_scenario(path, &a))
                .map_err(|e| {
                    usage(anyhow!(
                        "point {} ({}): {e:#}",
                        p.index,
                        p.overrides.join(" ")
                    ))
                })?;
        }
    }
    Ok(Plan {
        scenario_file: path.clone(),
        scenario_name: scenario.name.clone(),
        base_seed: scenario.seed,
        repeat,
        fixed: args.set.clone(),
        vary,
        points,
    })
}

/// `jitwg sweep`.
pub fn run(args: SweepArgs) -> Result<ExitCode, CliError> {
    let plan = plan(&args)?;
    if args.dry_run {
        println!(
            "{}: {} points x {} repeat(s) = {} runs, seeds {}..{}",
            plan.scenario_name,
            plan.points.len(),
            plan.repeat,
            plan.points.len() * plan.repeat,
            plan.base_seed,
            plan.base_seed + plan.repeat as u64 - 1
        );
        for p in &plan.points {
            println!("  point {}: --set {}", p.index, p.overrides.join(" --set "));
        }
        return Ok(ExitCode::Ok);
    }
    crate::run::prereq::require_root().map_err(|e| CliError {
        code: ExitCode::Setup,
        error: e.into(),
    })?;
    runner::execute(&plan, &args.out, args.quiet)
}

#[cfg(test)]
mod tests;
