//! Pure comparisons `jitwg rerun` prints: which clients ended differently, how far each
//! figure moved between the runs (the run-to-run spread), and which tool versions or daemon
//! settings differ from the recorded ones.

use std::collections::BTreeMap;

use jitwg_reports::{ClientResult, Figures, ToolInfo, FIGURES};

/// How one client's connections ended: `true` for each that got a usable session.
pub type Outcome = Vec<bool>;

/// A client whose outcome differs between the recorded run and the rerun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeChange {
    pub client: u32,
    /// `None`: the client is missing from that run.
    pub before: Option<Outcome>,
    pub after: Option<Outcome>,
}

fn outcomes(clients: &[ClientResult]) -> BTreeMap<u32, Outcome> {
    clients
        .iter()
        .map(|c| (c.id, c.connections.iter().map(|k| k.connected()).collect()))
        .collect()
}

/// Every client that connected or failed differently (or exists in one run only).
pub fn outcome_changes(before: &[ClientResult], after: &[ClientResult]) -> Vec<OutcomeChange> {
    let (b, a) = (outcomes(before), outcomes(after));
    let ids: std::collections::BTreeSet<u32> = b.keys().chain(a.keys()).copied().collect();
    ids.into_iter()
        .filter_map(|id| {
            let (before, after) = (b.get(&id).cloned(), a.get(&id).cloned());
            (before != after).then_some(OutcomeChange {
                client: id,
                before,
                after,
            })
        })
        .collect()
}

/// Says an outcome in words: `connected`, `failed`, or per connection `connected, failed`.
pub fn describe_outcome(outcome: Option<&Outcome>) -> String {
    match outcome {
        None => "absent".into(),
        Some(o) if o.is_empty() => "never started".into(),
        Some(o) => o
            .iter()
            .map(|ok| if *ok { "connected" } else { "failed" })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// One figure across the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub figure: &'static str,
    pub unit: jitwg_reports::Unit,
    /// One value per run, the recorded run first; `None` where a run did not measure it.
    pub values: Vec<Option<f64>>,
    /// (max - min) / |median| of the measured values; `None` if fewer than two, or 0 median.
    pub relative: Option<f64>,
}

/// Every registered figure across `runs`, in registry order.
pub fn spreads(runs: &[Figures]) -> Vec<Spread> {
    FIGURES
        .iter()
        .map(|def| {
            let values: Vec<Option<f64>> = runs.iter().map(|f| (def.get)(f)).collect();
            let mut measured: Vec<f64> = values.iter().flatten().copied().collect();
            measured.sort_by(f64::total_cmp);
            let relative = match (measured.first(), measured.last()) {
                (Some(min), Some(max)) if measured.len() >= 2 => {
                    let mid = measured.len() / 2;
                    let median = if mid * 2 == measured.len() {
                        (measured[mid - 1] + measured[mid]) / 2.0
                    } else {
                        measured[mid]
                    };
                    if max == min {
                        Some(0.0)
                    } else {
                        (median != 0.0).then(|| (max - min) / median.abs())
                    }
                }
                _ => None,
            };
            Spread {
                figure: def.name,
                unit: def.unit,
                values,
                relative,
            }
        })
        .collect()
}

/// Differences between the tool versions recorded and the ones now, one line each.
pub fn tool_changes(recorded: &ToolInfo, now: &ToolInfo) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what}: recorded {a}, now {b}"));
        }
    };
    check(
        "jitwg",
        recorded.jitwg_version.clone(),
        now.jitwg_version.clone(),
    );
    check(
        "wireguard-go",
        recorded.wireguard_go_version.clone().unwrap_or("-".into()),
        now.wireguard_go_version.clone().unwrap_or("-".into()),
    );
    check("kernel", recorded.kernel.clone(), now.kernel.clone());
    check("CPUs", recorded.cpus.to_string(), now.cpus.to_string());
    check(
        "memory",
        recorded.memory_bytes.to_string(),
        now.memory_bytes.to_string(),
    );
    out
}

/// jitwgd settings that resolve differently now than in the recorded run (a default changed).
pub fn setting_changes(
    recorded: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = recorded.keys().chain(now.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (recorded.get(k), now.get(k));
            (a != b).then(|| {
                format!(
                    "jitwgd {k}: recorded {}, now {}",
                    a.map_or("-", String::as_str),
                    b.map_or("-", String::as_str)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitwg_reports::Connection;

    fn client(id: u32, connected: &[bool]) -> ClientResult {
        ClientResult {
            id,
            population: "p".into(),
            connections: connected
                .iter()
                .map(|ok| Connection {
                    setup_latency_ms: ok.then_some(1.0),
                    failure: (!ok).then(|| "timeout".into()),
                    ..Connection::default()
                })
                .collect(),
        }
    }

    #[test]
    fn same_outcomes_no_changes_even_with_other_latencies() {
        let a = vec![client(0, &[true]), client(1, &[false])];
        let mut b = a.clone();
        b[0].connections[0].setup_latency_ms = Some(9.0);
        assert!(outcome_changes(&a, &b).is_empty());
    }

    #[test]
    fn changed_and_missing_clients_are_listed() {
        let a = vec![client(0, &[true]), client(1, &[true, true])];
        let b = vec![client(1, &[true, false]), client(2, &[true])];
        let changes = outcome_changes(&a, &b);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].client, 0);
        assert_eq!(describe_outcome(changes[0].after.as_ref()), "absent");
        assert_eq!(
            describe_outcome(changes[1].after.as_ref()),
            "connected, failed"
        );
    }

    #[test]
    fn spread_is_range_over_median() {
        let runs: Vec<Figures> = [1.0, 2.0, 4.0]
            .iter()
            .map(|ms| {
                let mut r = jitwg_reports::Results::new(jitwg_reports::RunInfo {
                    id: String::new(),
                    scenario_name: String::new(),
                    scenario_file: String::new(),
                    seed: 0,
                    started_at_unix_ms: 0,
                    duration_ms: 0.0,
                    resolved_scenario: serde_json::Value::Null,
                    tool: ToolInfo::default(),
                    mode: String::new(),
                    boot: String::new(),
                    backend: String::new(),
                    initiate: true,
                    stale_threshold_ms: 0.0,
                    cpu_split: None,
                    warnings: vec![],
                    merged_setup: Default::default(),
                    shards: Default::default(),
                    source_addresses: Default::default(),
                });
                let mut c = client(0, &[true]);
                c.connections[0].setup_latency_ms = Some(*ms);
                r.clients = vec![c];
                Figures::from_results(&r)
            })
            .collect();
        let all = spreads(&runs);
        let p50 = all.iter().find(|s| s.figure == "setup_p50").unwrap();
        assert_eq!(p50.values, vec![Some(1.0), Some(2.0), Some(4.0)]);
        assert_eq!(p50.relative, Some(1.5));
        let clients = all.iter().find(|s| s.figure == "clients").unwrap();
        assert_eq!(clients.relative, Some(0.0));
        // Two runs: the median is their mean.
        let two = spreads(&runs[1..]);
        let p50 = two.iter().find(|s| s.figure == "setup_p50").unwrap();
        assert_eq!(p50.relative, Some(2.0 / 3.0));
    }

    #[test]
    fn version_and_setting_changes_are_named() {
        let a = ToolInfo {
            kernel: "6.1".into(),
            ..ToolInfo::default()
        };
        let b = ToolInfo {
            kernel: "6.8".into(),
            ..ToolInfo::default()
        };
        assert_eq!(tool_changes(&a, &b), vec!["kernel: recorded 6.1, now 6.8"]);
        assert!(tool_changes(&a, &a).is_empty());
        let rec: BTreeMap<String, String> = [("evict_after".to_string(), "3m".to_string())].into();
        let now: BTreeMap<String, String> = [("evict_after".to_string(), "2m".to_string())].into();
        assert_eq!(
            setting_changes(&rec, &now),
            vec!["jitwgd evict_after: recorded 3m, now 2m"]
        );
    }
}
