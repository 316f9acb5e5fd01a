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
//! - the p99 **receive lag** exceeds the same lag limit: how long a datagram from the gateway
//!   waited in a client's socket (the kernel's receive timestamp, `SO_TIMESTAMPNS`, to the moment
//!   the client's code read it). A driver that reads answers late adds its own delay to every
//!   latency after the first packet, and its late answers meet a gateway that may have moved on
//!   (measured in the storm: responses 1.8 s late, refused by a full handshake queue). One limit
//!   for both: either lag is the same event loop being behind, or
//! - the driver's CPU time over the run's wall time, relative to the CPUs it was allotted, exceeds
//!   [`CPU_UTILIZATION_LIMIT`].
//!
//! `reasons` names each condition that held, with its measured value.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::schema::Results;
use crate::shards::{decode_histogram, encode_histogram, HistogramCodecError};

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
    /// Receive lag: kernel receive timestamp → the client's code reading the datagram, over
    /// every datagram the clients received from the gateway; `None` when none was stamped (or
    /// in files from before it was measured).
    #[serde(default)]
    pub rx_lag_p50_ms: Option<f64>,
    #[serde(default)]
    pub rx_lag_p99_ms: Option<f64>,
    /// How many datagrams the receive lag is over.
    #[serde(default)]
    pub rx_lag_datagrams: u64,
    /// The receive lags in µs as an HDR histogram (V2 serialization, hex, like
    /// `ShardInfo::setup_histogram_us`), so shards merge exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_lag_histogram_us: Option<String>,
    /// Receive lag per window of the run (by when the datagram was read; 1 s windows over the
    /// first minute, wider after it), to tell a driver that fell behind at the start of a
    /// storm from one that was always slow. Per shard only: a
    /// merged run leaves it empty (its shards' own are in `run.shards[].load`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rx_lag_by_second: Vec<RxLagWindow>,
    /// Driver CPU seconds / (wall seconds × allotted CPUs), over the fleet's run.
    pub driver_cpu_utilization: Option<f64>,
    pub saturated: bool,
    /// Which rule held, e.g. `lag p99 35.2 ms > 20 ms`.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// Receive lag over one window of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RxLagWindow {
    /// The window is `[second, second + seconds)` s after the run's start.
    pub second: u32,
    /// The window's length: 1 s over a run's first minute, wider after it (files from before
    /// windows widened hold only 1 s windows).
    #[serde(default = "one_second")]
    pub seconds: u32,
    pub datagrams: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn one_second() -> u32 {
    1
}

/// What the driver measured about itself, for [`assess`].
#[derive(Debug, Clone, Default)]
pub struct DriverMeasures {
    /// Driver CPU seconds / (wall seconds × allotted CPUs).
    pub cpu_utilization: Option<f64>,
    /// Every received datagram's receive lag, µs ([`empty_lag_histogram`]'s bounds).
    pub rx_lag_us: Option<Histogram<u64>>,
    /// The same per second of the run ([`RxLagWindow`]).
    pub rx_lag_by_second: Vec<RxLagWindow>,
}

/// An empty histogram for receive lags in µs, with the bounds every report uses (so shards'
/// histograms add up).
pub fn empty_lag_histogram() -> Histogram<u64> {
    crate::figures::histogram_us(&[])
}

/// `histogram`'s value at `percentile` in ms; `None` when it is empty.
pub fn histogram_ms(histogram: &Histogram<u64>, percentile: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_percentile(percentile) as f64 / 1000.0)
}

/// The sum of the receive-lag histograms the summaries carry (`None`: none carried one).
pub fn merge_rx_lag<'a>(
    loads: impl IntoIterator<Item = &'a LoadSummary>,
) -> Result<Option<Histogram<u64>>, HistogramCodecError> {
    let mut merged: Option<Histogram<u64>> = None;
    for encoded in loads
        .into_iter()
        .filter_map(|l| l.rx_lag_histogram_us.as_deref())
    {
        let h = decode_histogram(encoded)?;
        merged
            .get_or_insert_with(empty_lag_histogram)
            .add(&h)
            .map_err(HistogramCodecError::Add)?;
    }
    Ok(merged)
}

/// Sets the receive-lag figures of `load` from `histogram`.
pub fn set_rx_lag(load: &mut LoadSummary, histogram: &Histogram<u64>) {
    load.rx_lag_p50_ms = histogram_ms(histogram, 50.0);
    load.rx_lag_p99_ms = histogram_ms(histogram, 99.0);
    load.rx_lag_datagrams = histogram.len();
    // Encoding into a Vec cannot fail for a histogram this crate built; if it ever does, the
    // percentiles above still stand and only a later merge lacks this part.
    load.rx_lag_histogram_us = encode_histogram(histogram).ok();
}

/// The reason a receive-lag p99 above `limit_ms` gives, `None` within it.
pub fn rx_lag_reason(rx_lag_p99_ms: Option<f64>, limit_ms: f64) -> Option<String> {
    let p99 = rx_lag_p99_ms.filter(|&p| p > limit_ms)?;
    Some(format!(
        "receive lag p99 {p99:.1} ms > {limit_ms} ms: clients read the gateway's packets late"
    ))
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
/// start- and receive-lag p99 limit (the scenario's, or [`LAG_P99_LIMIT_MS`]).
pub fn assess(results: &Results, driver: DriverMeasures, lag_limit_ms: f64) -> LoadSummary {
    let driver_cpu_utilization = driver.cpu_utilization;
    let lags = lags_ms(results);
    let lag_p50_ms = crate::figures::nearest_rank(&lags, 50.0);
    let lag_p99_ms = crate::figures::nearest_rank(&lags, 99.0);
    let mut reasons = Vec::new();
    if let Some(p99) = lag_p99_ms.filter(|&p| p > lag_limit_ms) {
        reasons.push(format!(
            "lag p99 {p99:.1} ms > {lag_limit_ms} ms: clients started later than scheduled"
        ));
    }
    let mut load = LoadSummary::default();
    if let Some(h) = &driver.rx_lag_us {
        set_rx_lag(&mut load, h);
    }
    reasons.extend(rx_lag_reason(load.rx_lag_p99_ms, lag_limit_ms));
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
        rx_lag_by_second: driver.rx_lag_by_second,
        driver_cpu_utilization,
        saturated: !reasons.is_empty(),
        reasons,
        ..load
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

    fn cpu(utilization: Option<f64>) -> DriverMeasures {
        DriverMeasures {
            cpu_utilization: utilization,
            ..DriverMeasures::default()
        }
    }

    fn rx_lags_ms(lags_ms: &[f64]) -> DriverMeasures {
        DriverMeasures {
            rx_lag_us: Some(crate::figures::histogram_us(lags_ms)),
            ..DriverMeasures::default()
        }
    }

    #[test]
    fn late_reads_saturate_with_their_own_reason() {
        let run = run_with(&[1.0, 1.0]);
        let kept_up = assess(&run, rx_lags_ms(&[0.05, 0.1, 3.0]), LAG_P99_LIMIT_MS);
        assert!(!kept_up.saturated, "{kept_up:?}");
        assert_eq!(kept_up.rx_lag_datagrams, 3);
        assert_eq!(kept_up.rx_lag_p50_ms, Some(0.1));
        let mut lags = vec![0.1; 90];
        lags.extend([1_833.0; 10]);
        let late = assess(&run, rx_lags_ms(&lags), LAG_P99_LIMIT_MS);
        assert!(late.saturated);
        assert_eq!(late.reasons.len(), 1, "{:?}", late.reasons);
        assert!(
            late.reasons[0].starts_with("receive lag p99 183")
                && late.reasons[0].contains(" ms > 20 ms: clients read"),
            "{:?}",
            late.reasons
        );
        // The scenario's lag limit applies to both lags.
        assert!(!assess(&run, rx_lags_ms(&lags), 2_000.0).saturated);
        // Nothing stamped: no figure, no reason.
        let none = assess(&run, rx_lags_ms(&[]), LAG_P99_LIMIT_MS);
        assert_eq!((none.rx_lag_p99_ms, none.saturated), (None, false));
    }

    #[test]
    fn receive_lag_histograms_merge_exactly() {
        let mut a = LoadSummary::default();
        let mut b = LoadSummary::default();
        set_rx_lag(&mut a, &crate::figures::histogram_us(&[1.0; 99]));
        set_rx_lag(&mut b, &crate::figures::histogram_us(&[500.0]));
        let merged = merge_rx_lag([&a, &b, &LoadSummary::default()])
            .unwrap()
            .unwrap();
        assert_eq!(merged.len(), 100);
        // Each shard's own p99 is 1 ms and 500 ms; over all 100 datagrams the p99 is 1 ms and
        // the max 500 ms: the merge adds counts, it never averages percentiles.
        assert_eq!(histogram_ms(&merged, 99.0), Some(1.0));
        assert_eq!(histogram_ms(&merged, 100.0).map(f64::round), Some(500.0));
        assert!(merge_rx_lag([&LoadSummary::default()]).unwrap().is_none());
        let broken = LoadSummary {
            rx_lag_histogram_us: Some("zz".into()),
            ..LoadSummary::default()
        };
        assert!(merge_rx_lag([&broken]).is_err());
    }

    #[test]
    fn files_from_before_receive_lag_still_load() {
        let old =
            r#"{"lag_p50_ms":1.0,"lag_p99_ms":2.0,"driver_cpu_utilization":0.5,"saturated":false}"#;
        let load: LoadSummary = serde_json::from_str(old).unwrap();
        assert_eq!((load.rx_lag_p99_ms, load.rx_lag_datagrams), (None, 0));
        assert!(load.rx_lag_by_second.is_empty());
    }

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
        let load = assess(
            &run_with(&[0.5, 1.0, 2.0]),
            cpu(Some(0.4)),
            LAG_P99_LIMIT_MS,
        );
        assert!(!load.saturated && load.reasons.is_empty());
        assert_eq!((load.lag_p50_ms, load.lag_p99_ms), (Some(1.0), Some(2.0)));
    }

    #[test]
    fn late_starts_saturate_and_say_so() {
        let load = assess(
            &run_with(&[1.0, 1.0, 50.0]),
            cpu(Some(0.4)),
            LAG_P99_LIMIT_MS,
        );
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
        let load = assess(&run_with(&[1.0]), cpu(Some(0.95)), LAG_P99_LIMIT_MS);
        assert!(load.saturated && load.reasons[0].contains("driver CPU 95 %"));
        let both = assess(&run_with(&[100.0]), cpu(Some(0.95)), LAG_P99_LIMIT_MS);
        assert_eq!(both.reasons.len(), 2);
        // At the limits exactly, the run still counts.
        let edge = assess(
            &run_with(&[LAG_P99_LIMIT_MS]),
            cpu(Some(CPU_UTILIZATION_LIMIT)),
            LAG_P99_LIMIT_MS,
        );
        assert!(!edge.saturated);
    }

    #[test]
    fn connections_without_an_intended_start_have_no_lag() {
        let mut r = run_with(&[5.0]);
        r.clients[0].connections[0].scheduled_ms = None;
        assert_eq!(
            assess(&r, cpu(None), LAG_P99_LIMIT_MS),
            LoadSummary::default()
        );
        assert!(setup_from_intent_ms(&r).is_empty());
        assert_eq!(setup_from_intent_ms(&run_with(&[5.0])), vec![7.0]);
    }

    #[test]
    fn a_scenario_can_loosen_the_lag_limit() {
        let slow = run_with(&[1.0, 1.0, 120.0]);
        assert!(assess(&slow, cpu(Some(0.2)), LAG_P99_LIMIT_MS).saturated);
        let loosened = assess(&slow, cpu(Some(0.2)), 500.0);
        assert!(!loosened.saturated, "{loosened:?}");
        assert!(assess(&run_with(&[600.0]), cpu(None), 500.0).reasons[0].contains("> 500 ms"));
    }
}
