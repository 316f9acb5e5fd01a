//! The load generator, measured: did clients start when the arrival process said they should
//! (coordinated omission, as load tools call it), and did the driver have CPU to spare? A run
//! whose driver saturated measured the driver as much as the gateway, so its timing figures do
//! not count (see [`crate::expect::evaluate`]). Pure: the driver passes in what it measured.
//!
//! The rule: a run is **saturated** when
//! - the p99 lag from a connection's intended start (`scheduled_ms`) to its first initiation
//!   (`started_ms`) exceeds the lag limit ([`LAG_P99_LIMIT_MS`] unless the scenario's
//!   `[lab] lag_limit` says otherwise: an emulated VM, where every system call is slow, needs
//!   a looser one), or
//! - the driver's CPU time over the run's wall time, relative to the CPUs it was allotted, exceeds
//!   [`CPU_UTILIZATION_LIMIT`].
//!
//! `reasons` names each condition that held, with its measured value.

use serde::{Deserialize, Serialize};

use crate::schema::Results;

/// Lag p99 above this (ms) means clients started late. A JIT setup takes ~1.5 ms; a driver whose
/// event loop is 20 ms behind at p99 is also late reading answers, so latencies include it.
pub const LAG_P99_LIMIT_MS: f64 = 20.0;
/// The driver used more than this share of its allotted CPUs: it had no headroom left.
pub const CPU_UTILIZATION_LIMIT: f64 = 0.90;

/// `results.load`: how the load generator kept up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Intended start → first initiation, over connections that recorded an intended start.
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
    /// Driver CPU seconds / (wall seconds × allotted CPUs), over the fleet's run.
    pub driver_cpu_utilization: Option<f64>,
    pub saturated: bool,
    /// Which rule held, e.g. `lag p99 35.2 ms > 20 ms`.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// Every connection's lag (ms), sorted; connections without `scheduled_ms` have none.
pub fn lags_ms(results: &Results) -> Vec<f64> {
    let mut lags: Vec<f64> = results
        .clients
        .iter()
        .flat_map(|c| c.connections.iter())
        .filter_map(|c| Some(c.started_ms - c.scheduled_ms?))
        .filter(|l| l.is_finite())
        // A client's clock reading can land a hair before its timer's deadline.
        .map(|l| l.max(0.0))
        .collect();
    lags.sort_by(f64::total_cmp);
    lags
}

/// Latency from the intended start to a usable session, per connected connection, sorted.
pub fn setup_from_intent_ms(results: &Results) -> Vec<f64> {
    let mut values: Vec<f64> = results
        .clients
        .iter()
        .flat_map(|c| c.connections.iter())
        .filter_map(|c| Some(c.started_ms + c.setup_latency_ms? - c.scheduled_ms?))
        .filter(|v| v.is_finite())
        .map(|v| v.max(0.0))
        .collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Applies the rule (module docs) to what the driver measured, with `lag_limit_ms` as the
/// lag p99 limit (the scenario's, or [`LAG_P99_LIMIT_MS`]).
pub fn assess(
    results: &Results,
    driver_cpu_utilization: Option<f64>,
    lag_limit_ms: f64,
) -> LoadSummary {
    let lags = lags_ms(results);
    let lag_p50_ms = crate::figures::nearest_rank(&lags, 50.0);
    let lag_p99_ms = crate::figures::nearest_rank(&lags, 99.0);
    let mut reasons = Vec::new();
    if let Some(p99) = lag_p99_ms.filter(|&p| p > lag_limit_ms) {
        reasons.push(format!(
            "lag p99 {p99:.1} ms > {lag_limit_ms} ms: clients started later than scheduled"
        ));
    }
    if let Some(u) = driver_cpu_utilization.filter(|&u| u > CPU_UTILIZATION_LIMIT) {
        reasons.push(format!(
            "driver CPU {:.0} % of its CPUs > {:.0} %",
            u * 100.0,
            CPU_UTILIZATION_LIMIT * 100.0
        ));
    }
    LoadSummary {
        lag_p50_ms,
        lag_p99_ms,
        driver_cpu_utilization,
        saturated: !reasons.is_empty(),
        reasons,
    }
}

/// The banner a report shows on a saturated run; `None` when the run kept up.
pub fn banner(results: &Results) -> Option<String> {
    let load = results.load.as_ref().filter(|l| l.saturated)?;
    Some(format!(
        "LOAD GENERATOR SATURATED ({}): latencies include the driver's own delays; timing expectations do not count on this run.",
        load.reasons.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ClientResult, Connection, RunInfo};

    fn run_with(lags: &[f64]) -> Results {
        let mut r = Results::new(RunInfo::default());
        r.clients.push(ClientResult {
            id: 1,
            population: "p".into(),
            connections: lags
                .iter()
                .enumerate()
                .map(|(i, lag)| Connection {
                    scheduled_ms: Some(i as f64 * 100.0),
                    started_ms: i as f64 * 100.0 + lag,
                    setup_latency_ms: Some(2.0),
                    ..Connection::default()
                })
                .collect(),
        });
        r
    }

    #[test]
    fn a_run_that_kept_up_is_not_saturated() {
        let load = assess(&run_with(&[0.5, 1.0, 2.0]), Some(0.4), LAG_P99_LIMIT_MS);
        assert!(!load.saturated && load.reasons.is_empty());
        assert_eq!((load.lag_p50_ms, load.lag_p99_ms), (Some(1.0), Some(2.0)));
    }

    #[test]
    fn late_starts_saturate_and_say_so() {
        let load = assess(&run_with(&[1.0, 1.0, 50.0]), Some(0.4), LAG_P99_LIMIT_MS);
        assert!(load.saturated);
        assert_eq!(load.reasons.len(), 1);
        assert!(
            load.reasons[0].contains("lag p99 50.0 ms"),
            "{:?}",
            load.reasons
        );
    }

    #[test]
    fn a_busy_driver_saturates_and_both_reasons_are_listed() {
        let load = assess(&run_with(&[1.0]), Some(0.95), LAG_P99_LIMIT_MS);
        assert!(load.saturated && load.reasons[0].contains("driver CPU 95 %"));
        let both = assess(&run_with(&[100.0]), Some(0.95), LAG_P99_LIMIT_MS);
        assert_eq!(both.reasons.len(), 2);
        // At the limits exactly, the run still counts.
        let edge = assess(
            &run_with(&[LAG_P99_LIMIT_MS]),
            Some(CPU_UTILIZATION_LIMIT),
            LAG_P99_LIMIT_MS,
        );
        assert!(!edge.saturated);
    }

    #[test]
    fn connections_without_an_intended_start_have_no_lag() {
        let mut r = run_with(&[5.0]);
        r.clients[0].connections[0].scheduled_ms = None;
        assert_eq!(assess(&r, None, LAG_P99_LIMIT_MS), LoadSummary::default());
        assert!(setup_from_intent_ms(&r).is_empty());
        assert_eq!(setup_from_intent_ms(&run_with(&[5.0])), vec![7.0]);
    }

    #[test]
    fn a_scenario_can_loosen_the_lag_limit() {
        let slow = run_with(&[1.0, 1.0, 120.0]);
        assert!(assess(&slow, Some(0.2), LAG_P99_LIMIT_MS).saturated);
        let loosened = assess(&slow, Some(0.2), 500.0);
        assert!(!loosened.saturated, "{loosened:?}");
        assert!(assess(&run_with(&[600.0]), None, 500.0).reasons[0].contains("> 500 ms"));
    }
}
