//! `jitwg merge`: the shards' results and the gateway's series made into one results file.
//! Clients are concatenated (ids are disjoint by construction), setup percentiles come from the
//! shards' merged HDR histograms (`run.merged_setup`), each shard's lag and saturation stay in
//! `run.shards`, and shards of a different scenario or seed are refused.
//!
//! Two figures the gateway cannot see come from the shards:
//! - **connected (and in-flight) clients** of each of the gateway's samples at `t`: the sum
//!   over shards of each shard's own count from its sample nearest in time to `t` (shards
//!   sample their clients' counters, the ones `jitwg run` samples, once per sample period on
//!   the common clock, and once more when their clients have stopped). So a merged count is
//!   off by at most about half a sample period, plus the clock offset's error
//!   (`run.shards[].clock_rtt_ms / 2`).
//! - **recovery after a reboot**: every shard's per-client values, measured with the
//!   single-machine definition against the gateway's reboot marks, combined into one
//!   `tracker::Recovery` (time = the last client's, p50/p99 exact over every client).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jitwg_reports::shards::{ClientCount, ShardRecovery};
use jitwg_reports::{
    merge_setup, Event, EventKind, Expectation, Figures, LoadSummary, ProcessUsage, Results,
    ShardInfo,
};

use crate::run::tracker::Recovery;

/// Why shard results could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("reading {}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: jitwg_reports::LoadError,
    },
    #[error("{} is neither a shard's nor a gateway's results (no run.shards entry, but clients)", path.display())]
    NotAShard { path: PathBuf },
    #[error("{} holds {found} shard entries; a shard's results hold exactly one", path.display())]
    ShardEntries { path: PathBuf, found: usize },
    #[error("nothing to merge: no shard results among the inputs")]
    NoShards,
    #[error("more than one gateway series: {} and {}", first.display(), second.display())]
    TwoGateways { first: PathBuf, second: PathBuf },
    #[error("refusing to merge different runs: {} has {what} {theirs}, {} has {ours}", other.display(), first.display())]
    DifferentRuns {
        what: &'static str,
        first: PathBuf,
        ours: String,
        other: PathBuf,
        theirs: String,
    },
    #[error("shard {index}/{count} appears twice ({} and {})", first.display(), second.display())]
    DuplicateShard {
        index: u32,
        count: u32,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("shards missing: {missing:?} of {count}; merge all of them")]
    MissingShards { missing: Vec<u32>, count: u32 },
    #[error("merging the shards' setup histograms")]
    Histogram(#[source] jitwg_reports::shards::HistogramCodecError),
}

/// One input: its path and what it holds.
pub struct Input {
    pub path: PathBuf,
    pub results: Results,
}

/// Reads `DIR/results.json` (or the file itself) of every input.
pub fn load_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, MergeError> {
    paths
        .iter()
        .map(|p| {
            let file = if p.is_dir() {
                p.join("results.json")
            } else {
                p.clone()
            };
            jitwg_reports::load(&file)
                .map(|results| Input {
                    path: file.clone(),
                    results,
                })
                .map_err(|source| MergeError::Load { path: file, source })
        })
        .collect()
}

/// Scenario, seed and resolved scenario must be the same in every input.
fn check_same_run(inputs: &[Input]) -> Result<(), MergeError> {
    let Some(first) = inputs.first() else {
        return Ok(());
    };
    for other in &inputs[1..] {
        let (a, b) = (&first.results.run, &other.results.run);
        let differs = |what, ours: String, theirs: String| MergeError::DifferentRuns {
            what,
            first: first.path.clone(),
            ours,
            other: other.path.clone(),
            theirs,
        };
        if a.scenario_name != b.scenario_name {
            return Err(differs(
                "scenario",
                a.scenario_name.clone(),
                b.scenario_name.clone(),
            ));
        }
        if a.seed != b.seed {
            return Err(differs("seed", a.seed.to_string(), b.seed.to_string()));
        }
        if a.resolved_scenario != b.resolved_scenario {
            return Err(differs(
                "resolved scenario",
                "one".into(),
                "another (different --set overrides or file)".into(),
            ));
        }
    }
    Ok(())
}

/// Merges the inputs (pure). See the module docs.
pub fn merge(inputs: Vec<Input>) -> Result<Results, MergeError> {
    check_same_run(&inputs)?;
    let mut gateway: Option<Input> = None;
    let mut shards: BTreeMap<u32, Input> = BTreeMap::new();
    let mut count = 0;
    for input in inputs {
        match input.results.run.shards.len() {
            0 if input.results.clients.is_empty() => {
                if let Some(g) = &gateway {
                    return Err(MergeError::TwoGateways {
                        first: g.path.clone(),
                        second: input.path,
                    });
                }
                gateway = Some(input);
            }
            0 => return Err(MergeError::NotAShard { path: input.path }),
            1 => {
                let info = &input.results.run.shards[0];
                count = count.max(info.count);
                if let Some(prev) = shards.get(&info.index) {
                    return Err(MergeError::DuplicateShard {
                        index: info.index,
                        count: info.count,
                        first: prev.path.clone(),
                        second: input.path,
                    });
                }
                shards.insert(info.index, input);
            }
            found => {
                return Err(MergeError::ShardEntries {
                    path: input.path,
                    found,
                })
            }
        }
    }
    if shards.is_empty() {
        return Err(MergeError::NoShards);
    }
    let missing: Vec<u32> = (0..count).filter(|i| !shards.contains_key(i)).collect();
    if !missing.is_empty() {
        return Err(MergeError::MissingShards { missing, count });
    }
    let shards: Vec<Input> = shards.into_values().collect();
    let mut merged = match &gateway {
        Some(g) => g.results.clone(),
        None => {
            let mut r = shards[0].results.clone();
            r.clients.clear();
            r.run.warnings.push(
                "no gateway series merged: installed and stale peers, API calls and events are missing"
                    .into(),
            );
            r
        }
    };
    let infos: Vec<ShardInfo> = shards
        .iter()
        .flat_map(|s| s.results.run.shards.iter().cloned())
        .collect();
    for s in &shards {
        let index = s.results.run.shards[0].index;
        merged.clients.extend(s.results.clients.iter().cloned());
        merged.run.duration_ms = merged.run.duration_ms.max(s.results.run.duration_ms);
        for w in &s.results.run.warnings {
            merged.run.warnings.push(format!("shard {index}: {w}"));
        }
        for p in &s.results.processes {
            merged.processes.push(ProcessUsage {
                name: format!("{}-shard{index}", p.name),
                ..p.clone()
            });
        }
    }
    merged.clients.sort_by_key(|c| c.id);
    merge_client_counts(&mut merged, &infos);
    merge_recovery(&mut merged, &infos);
    merged.run.merged_setup = Some(merge_setup(&infos).map_err(MergeError::Histogram)?);
    merged.load = Some(merged_load(&merged, &infos)?);
    merged.run.source_addresses = Some(infos.iter().map(|s| s.source_addresses).sum());
    merged.run.shards = infos;
    // The gateway evaluated its expectations without clients: evaluate them again on it all.
    let expectations: Vec<Expectation> = merged
        .expectations
        .iter()
        .filter_map(|e| {
            Some(Expectation {
                figure: jitwg_reports::figure(&e.figure)?,
                op: e.op,
                threshold: e.threshold,
                expr: e.expr.clone(),
            })
        })
        .collect();
    merged.expectations = jitwg_reports::evaluate(&expectations, &Figures::from_results(&merged));
    Ok(merged)
}

/// A shard's count at `t_ms`: its sample nearest in time (the earlier one on a tie).
fn count_at(series: &[ClientCount], t_ms: f64) -> Option<ClientCount> {
    series
        .iter()
        .min_by(|a, b| (a.t_ms - t_ms).abs().total_cmp(&(b.t_ms - t_ms).abs()))
        .copied()
}

/// Fills the gateway's samples' connected and in-flight counts from the shards' own samples.
fn merge_client_counts(merged: &mut Results, shards: &[ShardInfo]) {
    let without: Vec<u32> = shards
        .iter()
        .filter(|s| s.client_counts.is_empty())
        .map(|s| s.index)
        .collect();
    for sample in &mut merged.samples {
        let counts = shards
            .iter()
            .filter_map(|s| count_at(&s.client_counts, sample.t_ms));
        (sample.connected_clients, sample.in_flight) =
            counts.fold((0, 0), |(c, f), n| (c + n.connected, f + n.in_flight));
    }
    merged
        .run
        .warnings
        .retain(|w| w != super::GATEWAY_SERIES_WARNING);
    if !without.is_empty() {
        merged.run.warnings.push(format!(
            "shards {without:?} recorded no client counts: the samples' connected and in-flight clients leave them out"
        ));
    }
}

/// Combines the shards' per-client recovery into the merged reload's figures.
fn merge_recovery(merged: &mut Results, shards: &[ShardInfo]) {
    let Some(reload) = merged.reload.as_mut() else {
        return;
    };
    let parts: Vec<&ShardRecovery> = shards.iter().filter_map(|s| s.recovery.as_ref()).collect();
    if parts.len() != shards.len() {
        merged.run.warnings.push(format!(
            "recovery not measured: {} of {} shards reported their clients' recovery",
            parts.len(),
            shards.len()
        ));
        return;
    }
    let recovery = Recovery::from_per_client(
        parts.iter().map(|p| p.clients).sum(),
        parts
            .iter()
            .flat_map(|p| p.recovered_ms.iter().copied())
            .collect(),
    );
    reload.recovery_after_ms = recovery.all_after_ms;
    reload.recovery_p50_ms = recovery.p50_ms;
    reload.recovery_p99_ms = recovery.p99_ms;
    reload.recovery_clients = recovery.clients;
    reload.recovered_clients = recovery.recovered;
    if let Some(after) = recovery.all_after_ms {
        merged.events.push(Event {
            t_ms: reload.reboot_start_ms + after,
            kind: EventKind::Recovered,
            detail: format!("{} clients", recovery.clients),
        });
        merged.events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    }
}

/// The whole fleet's load: start lag over every client, receive lag from the sum of the shards'
/// histograms, saturated when any shard was, with each saturated shard's reasons named.
fn merged_load(merged: &Results, shards: &[ShardInfo]) -> Result<LoadSummary, MergeError> {
    let lags = jitwg_reports::load::lags_ms(merged);
    let mut reasons = Vec::new();
    let mut utilization: Option<f64> = None;
    for s in shards {
        if let Some(load) = &s.load {
            if let Some(u) = load.driver_cpu_utilization {
                utilization = Some(utilization.map_or(u, |m: f64| m.max(u)));
            }
            for r in load.reasons.iter().filter(|_| load.saturated) {
                reasons.push(format!("shard {}: {r}", s.index));
            }
        }
    }
    let mut load = LoadSummary {
        lag_p50_ms: jitwg_reports::nearest_rank(&lags, 50.0),
        lag_p99_ms: jitwg_reports::nearest_rank(&lags, 99.0),
        driver_cpu_utilization: utilization,
        saturated: !reasons.is_empty(),
        reasons,
        ..LoadSummary::default()
    };
    let rx_lag = jitwg_reports::load::merge_rx_lag(shards.iter().filter_map(|s| s.load.as_ref()))
        .map_err(MergeError::Histogram)?;
    if let Some(histogram) = rx_lag {
        jitwg_reports::load::set_rx_lag(&mut load, &histogram);
    }
    Ok(load)
}

/// Reads, merges and writes `OUT/results.json`; returns the merged results and their path.
pub fn merge_dirs(paths: &[PathBuf], out: &Path) -> anyhow::Result<(Results, PathBuf)> {
    use anyhow::Context;
    let merged = merge(load_inputs(paths)?)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("results.json");
    jitwg_reports::save(&merged, &path)?;
    Ok((merged, path))
}

#[cfg(test)]
mod tests;
