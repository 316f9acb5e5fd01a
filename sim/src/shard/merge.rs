//! `jitwg merge`: the shards' results and the gateway's series made into one results file.
//! Clients are concatenated (ids are disjoint by construction), setup percentiles come from the
//! shards' merged HDR histograms (`run.merged_setup`), each shard's lag and saturation stay in
//! `run.shards`, and shards of a different scenario or seed are refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jitwg_reports::{
    merge_setup, Expectation, Figures, LoadSummary, ProcessUsage, Results, ShardInfo,
};

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
    merged.run.merged_setup = Some(merge_setup(&infos).map_err(MergeError::Histogram)?);
    merged.load = Some(merged_load(&merged, &infos));
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

/// The whole fleet's load: lag over every client, saturated when any shard was, with each
/// saturated shard's reasons named.
fn merged_load(merged: &Results, shards: &[ShardInfo]) -> LoadSummary {
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
    LoadSummary {
        lag_p50_ms: jitwg_reports::nearest_rank(&lags, 50.0),
        lag_p99_ms: jitwg_reports::nearest_rank(&lags, 99.0),
        driver_cpu_utilization: utilization,
        saturated: !reasons.is_empty(),
        reasons,
    }
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
mod tests {
    use super::*;
    use jitwg_reports::{ClientResult, Connection, RunInfo};

    fn run(name: &str, seed: u64) -> RunInfo {
        RunInfo {
            scenario_name: name.into(),
            seed,
            ..RunInfo::default()
        }
    }

    fn shard(index: u32, count: u32, ids: &[u32], seed: u64) -> Input {
        let mut r = Results::new(run("smoke", seed));
        let latencies: Vec<f64> = ids.iter().map(|&id| 1.0 + f64::from(id)).collect();
        r.clients = ids
            .iter()
            .zip(&latencies)
            .map(|(&id, &ms)| ClientResult {
                id,
                population: "p".into(),
                connections: vec![Connection {
                    setup_latency_ms: Some(ms),
                    ..Connection::default()
                }],
            })
            .collect();
        let hist = jitwg_reports::shards::setup_histogram(&latencies);
        r.run.shards = vec![ShardInfo {
            index,
            count,
            clients: ids.len() as u64,
            source_addresses: ids.len() as u64,
            setup_histogram_us: jitwg_reports::shards::encode_histogram(&hist).unwrap(),
            load: Some(LoadSummary {
                saturated: index == 1,
                reasons: vec!["lag p99 50 ms > 20 ms".into()],
                ..LoadSummary::default()
            }),
            ..ShardInfo::default()
        }];
        Input {
            path: PathBuf::from(format!("shard-{index}")),
            results: r,
        }
    }

    fn gateway(seed: u64) -> Input {
        Input {
            path: "gw".into(),
            results: Results::new(run("smoke", seed)),
        }
    }

    #[test]
    fn merges_clients_histograms_and_keeps_each_shards_load() {
        let merged = merge(vec![
            shard(1, 2, &[1, 3], 7),
            gateway(7),
            shard(0, 2, &[0, 2], 7),
        ])
        .unwrap();
        let ids: Vec<u32> = merged.clients.iter().map(|c| c.id).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(merged.run.shards.len(), 2);
        assert_eq!(merged.run.source_addresses, Some(4));
        assert_eq!(merged.run.shards[0].index, 0);
        let setup = merged.run.merged_setup.unwrap();
        assert_eq!(setup.count, 4);
        assert!((setup.max_ms.unwrap() - 4.0).abs() < 0.01);
        let load = merged.load.unwrap();
        assert!(load.saturated);
        assert_eq!(load.reasons, ["shard 1: lag p99 50 ms > 20 ms"]);
    }

    #[test]
    fn refuses_different_seeds_scenarios_duplicates_and_gaps() {
        let e = merge(vec![shard(0, 2, &[0], 7), shard(1, 2, &[1], 8)]).unwrap_err();
        assert!(e.to_string().contains("seed"), "{e}");
        let mut other = shard(1, 2, &[1], 7);
        other.results.run.scenario_name = "storm".into();
        let e = merge(vec![shard(0, 2, &[0], 7), other]).unwrap_err();
        assert!(e.to_string().contains("scenario"), "{e}");
        let e = merge(vec![shard(0, 2, &[0], 7), shard(0, 2, &[0], 7)]).unwrap_err();
        assert!(matches!(e, MergeError::DuplicateShard { .. }), "{e}");
        let e = merge(vec![shard(0, 3, &[0], 7), gateway(7)]).unwrap_err();
        assert!(matches!(e, MergeError::MissingShards { ref missing, .. } if missing == &[1, 2]));
        assert!(matches!(merge(vec![gateway(7)]), Err(MergeError::NoShards)));
    }
}
