//! The numbers operators read off a run, computed from [`Results`] by the brief's measurement
//! definitions, and the registry that names them for expectations, tables and comparisons.
//!
//! Setup-latency percentiles are taken over **connected** attempts only (nearest-rank method on the exact
//! values); failed attempts are not latency samples but are counted in `failed` and lower
//! `connected_ratio`, so a run cannot look fast by failing its slow clients.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;

use crate::schema::Results;

/// Highest latency the histogram resolves exactly (1 hour in µs); larger values are clamped to it.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Resource use of one process, copied from the results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessFigures {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Everything a report or a gate needs from one run.
#[derive(Debug, Clone)]
pub struct Figures {
    pub clients: u64,
    /// Connection attempts over all clients.
    pub connections: u64,
    pub connected: u64,
    pub failed: u64,
    /// `connected / connections`; `None` when there was no attempt at all.
    pub connected_ratio: Option<f64>,
    /// Percentiles over connected attempts (ms); `None` when nothing connected.
    pub setup_p50_ms: Option<f64>,
    pub setup_p90_ms: Option<f64>,
    pub setup_p99_ms: Option<f64>,
    pub setup_max_ms: Option<f64>,
    /// Setup latencies of connected attempts in µs (3 significant digits).
    pub setup_histogram_us: Histogram<u64>,
    pub api_calls_total: u64,
    /// Most requests for any one key; 0 when no key was requested.
    pub api_calls_per_key_max: u64,
    /// Keys requested more than once.
    pub api_duplicate_keys: u64,
    /// `None` when the run has no samples.
    pub installed_peers_max: Option<u64>,
    pub stale_peers_max: Option<u64>,
    /// Peak of installed peers that never completed a handshake (`None` before schema 2).
    pub never_handshaked_max: Option<u64>,
    /// Stale peers at the last sample.
    pub stale_peers_final: Option<u64>,
    /// Daemon start to ready after a reboot (`Reload::ready_after_ms`).
    pub reload_time_ms: Option<f64>,
    /// Reboot until every client with a working tunnel before it passed traffic again.
    pub recovery_time_ms: Option<f64>,
    /// Per-client recovery, p50 and p99.
    pub recovery_p50_ms: Option<f64>,
    pub recovery_p99_ms: Option<f64>,
    /// Peers in the daemon's database when it started again after the reboot.
    pub stored_peers: Option<u64>,
    /// By process name (`daemon`, `dataplane`, `driver`, `nats`).
    pub processes: BTreeMap<String, ProcessFigures>,
    /// Intended start → first initiation, p99 (ms); `None` when no connection recorded one.
    pub driver_lag_p99_ms: Option<f64>,
    /// Receive lag p99 (`load.rx_lag_p99_ms`): a gateway datagram's kernel arrival to the
    /// client's code reading it; `None` when nothing was stamped.
    pub driver_rx_lag_p99_ms: Option<f64>,
    /// Intended start → usable session, p99 over connected attempts (ms).
    pub setup_from_intent_p99_ms: Option<f64>,
    /// The load generator saturated (`results.load`): timing figures do not count.
    pub saturated: bool,
    /// Floods and replays; all `None` without attackers.
    pub attack: crate::attack::AttackFigures,
    /// jitwgd's time per JIT stage (`identify`, `lookup`, `install`), from `results.stage_time`.
    pub stage_time: BTreeMap<String, crate::schema::StageTime>,
    /// The gateway namespace's UDP counters (`results.gateway_udp`).
    pub gateway_udp: Option<crate::schema::GatewayUdp>,
}

impl Figures {
    /// Computes every figure of `results` (pure).
    pub fn from_results(results: &Results) -> Self {
        let attempts = results.clients.iter().flat_map(|c| c.connections.iter());
        let connections = attempts.clone().count() as u64;
        let mut latencies: Vec<f64> = attempts
            .filter_map(|c| c.setup_latency_ms)
            .filter(|ms| ms.is_finite())
            .collect();
        latencies.sort_by(f64::total_cmp);
        let connected = latencies.len() as u64;

        let per_key = results.api.per_key.values();
        let samples = &results.samples;
        Figures {
            clients: results.clients.len() as u64,
            connections,
            connected,
            failed: connections - connected,
            connected_ratio: (connections > 0).then(|| connected as f64 / connections as f64),
            setup_p50_ms: nearest_rank(&latencies, 50.0),
            setup_p90_ms: nearest_rank(&latencies, 90.0),
            setup_p99_ms: nearest_rank(&latencies, 99.0),
            setup_max_ms: latencies.last().copied(),
            setup_histogram_us: histogram_us(&latencies),
            api_calls_total: results.api.calls_total,
            api_calls_per_key_max: per_key.clone().copied().max().unwrap_or(0),
            api_duplicate_keys: per_key.filter(|&&n| n > 1).count() as u64,
            installed_peers_max: samples.iter().map(|s| s.installed_peers).max(),
            stale_peers_max: samples.iter().map(|s| s.stale_peers).max(),
            stale_peers_final: samples.last().map(|s| s.stale_peers),
            never_handshaked_max: samples
                .iter()
                .filter_map(|s| s.never_handshaked_peers)
                .max(),
            reload_time_ms: results.reload.as_ref().and_then(|r| r.ready_after_ms),
            recovery_time_ms: results.reload.as_ref().and_then(|r| r.recovery_after_ms),
            recovery_p50_ms: results.reload.as_ref().and_then(|r| r.recovery_p50_ms),
            recovery_p99_ms: results.reload.as_ref().and_then(|r| r.recovery_p99_ms),
            stored_peers: results.reload.as_ref().and_then(|r| r.stored_peers),
            processes: results
                .processes
                .iter()
                .map(|p| {
                    let figures = ProcessFigures {
                        cpu_seconds: p.cpu_seconds,
                        peak_rss_bytes: p.peak_rss_bytes,
                    };
                    (p.name.clone(), figures)
                })
                .collect(),
            driver_lag_p99_ms: nearest_rank(&crate::load::lags_ms(results), 99.0),
            driver_rx_lag_p99_ms: results.load.as_ref().and_then(|l| l.rx_lag_p99_ms),
            setup_from_intent_p99_ms: nearest_rank(
                &crate::load::setup_from_intent_ms(results),
                99.0,
            ),
            saturated: results.load.as_ref().is_some_and(|l| l.saturated),
            attack: crate::attack::AttackFigures::from_results(results),
            stage_time: results.stage_time.clone(),
            gateway_udp: results.gateway_udp,
        }
    }

    fn process(&self, name: &str) -> Option<&ProcessFigures> {
        self.processes.get(name)
    }
}

/// Nearest-rank percentile of already sorted values: the smallest value with at least `p`% of values
/// at or below it.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Setup latencies (ms) in an HDR histogram of µs, 3 significant digits: the one recording
/// every report and every shard uses, so shards' histograms add up.
pub fn histogram_us(latencies_ms: &[f64]) -> Histogram<u64> {
    let mut histogram = empty_histogram();
    for ms in latencies_ms {
        let us = (ms * 1000.0).round().clamp(1.0, HISTOGRAM_MAX_US as f64) as u64;
        histogram.saturating_record(us);
    }
    histogram
}

fn empty_histogram() -> Histogram<u64> {
    // Bounds and precision are constants within hdrhistogram's limits, so this cannot fail.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// The unit of a figure: how thresholds are parsed and values printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    Ratio,
    Count,
    Bytes,
    Seconds,
}

impl Unit {
    /// A short human rendering of `value` in this unit.
    pub fn format(self, value: f64) -> String {
        match self {
            Unit::Ms if value >= 10_000.0 => format!("{:.2} s", value / 1000.0),
            Unit::Ms if value >= 100.0 => format!("{value:.0} ms"),
            Unit::Ms if value >= 10.0 => format!("{value:.1} ms"),
            Unit::Ms => format!("{value:.2} ms"),
            Unit::Ratio => format!("{:.2} %", value * 100.0),
            Unit::Count => format!("{value:.0}"),
            Unit::Bytes => format_bytes(value),
            Unit::Seconds => format!("{value:.2} s"),
        }
    }

    /// The unit's name as shown next to axis labels.
    pub fn label(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::Ratio => "ratio",
            Unit::Count => "count",
            Unit::Bytes => "bytes",
            Unit::Seconds => "s",
        }
    }
}

fn format_bytes(value: f64) -> String {
    const KIB: f64 = 1024.0;
    match value {
        v if v >= KIB * KIB * KIB => format!("{:.2} GiB", v / (KIB * KIB * KIB)),
        v if v >= KIB * KIB => format!("{:.1} MiB", v / (KIB * KIB)),
        v if v >= KIB => format!("{:.1} KiB", v / KIB),
        v => format!("{v:.0} B"),
    }
}

/// Which direction of a figure is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// Whether a goal on `figure` is a timing goal: a duration the driver's own delays could
/// distort (every `Ms` figure except the driver's lags, which measure exactly that). Timing goals
/// do not count on a saturated run; survival and resource goals (counts, ratios, bytes, CPU
/// seconds) still do.
pub fn is_timing(figure: &FigureDef) -> bool {
    figure.unit == Unit::Ms && !matches!(figure.name, "driver_lag_p99" | "driver_rx_lag_p99")
}

/// A named figure: the vocabulary of `[expect]` tables, report tables and comparisons.
#[derive(Clone, Copy)]
pub struct FigureDef {
    pub name: &'static str,
    /// Human label for tables.
    pub label: &'static str,
    pub unit: Unit,
    pub better: Better,
    /// `None` when the run did not measure it (e.g. no reboot, no samples, nothing connected).
    pub get: fn(&Figures) -> Option<f64>,
}

impl fmt::Debug for FigureDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FigureDef")
            .field("name", &self.name)
            .field("unit", &self.unit)
            .field("better", &self.better)
            .finish_non_exhaustive()
    }
}

impl PartialEq for FigureDef {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

pub(crate) const fn def(
    name: &'static str,
    label: &'static str,
    unit: Unit,
    better: Better,
    get: fn(&Figures) -> Option<f64>,
) -> FigureDef {
    FigureDef {
        name,
        label,
        unit,
        better,
        get,
    }
}

fn rss(f: &Figures, name: &str) -> Option<f64> {
    f.process(name).map(|p| p.peak_rss_bytes as f64)
}

fn cpu(f: &Figures, name: &str) -> Option<f64> {
    f.process(name).map(|p| p.cpu_seconds)
}

/// Every figure, in the order reports list them.
pub static FIGURES: &[FigureDef] = &[
    def("clients", "clients", Unit::Count, Better::Higher, |f| {
        Some(f.clients as f64)
    }),
    def("connected", "connected", Unit::Count, Better::Higher, |f| {
        Some(f.connected as f64)
    }),
    def(
        "connected_ratio",
        "connected ratio",
        Unit::Ratio,
        Better::Higher,
        |f| f.connected_ratio,
    ),
    def("failed", "failed", Unit::Count, Better::Lower, |f| {
        Some(f.failed as f64)
    }),
    def("setup_p50", "setup p50", Unit::Ms, Better::Lower, |f| {
        f.setup_p50_ms
    }),
    def("setup_p90", "setup p90", Unit::Ms, Better::Lower, |f| {
        f.setup_p90_ms
    }),
    def("setup_p99", "setup p99", Unit::Ms, Better::Lower, |f| {
        f.setup_p99_ms
    }),
    def("setup_max", "setup max", Unit::Ms, Better::Lower, |f| {
        f.setup_max_ms
    }),
    def(
        "setup_from_intent_p99",
        "setup p99 from intended start",
        Unit::Ms,
        Better::Lower,
        |f| f.setup_from_intent_p99_ms,
    ),
    def(
        "driver_lag_p99",
        "load generator lag p99",
        Unit::Ms,
        Better::Lower,
        |f| f.driver_lag_p99_ms,
    ),
    def(
        "driver_rx_lag_p99",
        "load generator receive lag p99",
        Unit::Ms,
        Better::Lower,
        |f| f.driver_rx_lag_p99_ms,
    ),
    def(
        "api_calls_total",
        "API calls",
        Unit::Count,
        Better::Lower,
        |f| Some(f.api_calls_total as f64),
    ),
    def(
        "api_calls_per_key_max",
        "API calls per key (max)",
        Unit::Count,
        Better::Lower,
        |f| Some(f.api_calls_per_key_max as f64),
    ),
    def(
        "api_duplicate_keys",
        "keys requested more than once",
        Unit::Count,
        Better::Lower,
        |f| Some(f.api_duplicate_keys as f64),
    ),
    def(
        "installed_peers_max",
        "installed peers (peak)",
        Unit::Count,
        Better::Lower,
        |f| f.installed_peers_max.map(|n| n as f64),
    ),
    def(
        "stale_peers_max",
        "stale peers (peak)",
        Unit::Count,
        Better::Lower,
        |f| f.stale_peers_max.map(|n| n as f64),
    ),
    def(
        "never_handshaked_max",
        "never-handshaked peers (peak)",
        Unit::Count,
        Better::Lower,
        |f| f.never_handshaked_max.map(|n| n as f64),
    ),
    def(
        "stale_peers_final",
        "stale peers (final)",
        Unit::Count,
        Better::Lower,
        |f| f.stale_peers_final.map(|n| n as f64),
    ),
    def("reload_time", "reload time", Unit::Ms, Better::Lower, |f| {
        f.reload_time_ms
    }),
    def(
        "recovery_time",
        "recovery time (all clients)",
        Unit::Ms,
        Better::Lower,
        |f| f.recovery_time_ms,
    ),
    def(
        "recovery_p50",
        "recovery p50",
        Unit::Ms,
        Better::Lower,
        |f| f.recovery_p50_ms,
    ),
    def(
        "recovery_p99",
        "recovery p99",
        Unit::Ms,
        Better::Lower,
        |f| f.recovery_p99_ms,
    ),
    def(
        "stored_peers",
        "peers stored at reboot",
        Unit::Count,
        Better::Lower,
        |f| f.stored_peers.map(|n| n as f64),
    ),
    def(
        "daemon_rss_peak",
        "daemon peak RSS",
        Unit::Bytes,
        Better::Lower,
        |f| rss(f, "daemon"),
    ),
    def(
        "dataplane_rss_peak",
        "data plane peak RSS",
        Unit::Bytes,
        Better::Lower,
        |f| rss(f, "dataplane"),
    ),
    def(
        "driver_rss_peak",
        "driver peak RSS",
        Unit::Bytes,
        Better::Lower,
        |f| rss(f, "driver"),
    ),
    def(
        "daemon_cpu",
        "daemon CPU",
        Unit::Seconds,
        Better::Lower,
        |f| cpu(f, "daemon"),
    ),
    def(
        "dataplane_cpu",
        "data plane CPU",
        Unit::Seconds,
        Better::Lower,
        |f| cpu(f, "dataplane"),
    ),
    def(
        "driver_cpu",
        "driver CPU",
        Unit::Seconds,
        Better::Lower,
        |f| cpu(f, "driver"),
    ),
    def(
        "driver_cpu_per_client_ms",
        "driver CPU per client",
        Unit::Ms,
        Better::Lower,
        driver_cpu_per_client_ms,
    ),
    crate::attack::PACKETS_SENT,
    crate::attack::RATE,
    crate::attack::API_CALLS,
    crate::attack::API_CALLS_LEGIT,
    crate::attack::DROPPED,
    crate::attack::CONNECTED_AT_END,
    crate::attack::DB_OK,
    def(
        "identify_seconds",
        "daemon time identifying",
        Unit::Seconds,
        Better::Lower,
        |f| stage(f, "identify").map(|t| t.seconds),
    ),
    def(
        "identify_count",
        "initiations identified",
        Unit::Count,
        Better::Lower,
        |f| stage(f, "identify").map(|t| t.count as f64),
    ),
    def(
        "lookup_seconds",
        "daemon time in lookups",
        Unit::Seconds,
        Better::Lower,
        |f| stage(f, "lookup").map(|t| t.seconds),
    ),
    def("lookup_count", "lookups", Unit::Count, Better::Lower, |f| {
        stage(f, "lookup").map(|t| t.count as f64)
    }),
    def(
        "install_seconds",
        "daemon time writing installs",
        Unit::Seconds,
        Better::Lower,
        |f| stage(f, "install").map(|t| t.seconds),
    ),
    def(
        "install_count",
        "install batches written",
        Unit::Count,
        Better::Lower,
        |f| stage(f, "install").map(|t| t.count as f64),
    ),
    def(
        "gateway_udp_drops",
        "gateway UDP drops",
        Unit::Count,
        Better::Lower,
        |f| f.gateway_udp.map(|u| u.rcvbuf_errors as f64),
    ),
];

/// One daemon stage's time, when the run measured it.
fn stage(f: &Figures, name: &str) -> Option<crate::schema::StageTime> {
    f.stage_time.get(name).copied()
}

/// The driver's own cost per simulated client, so a run's capacity can be planned: how many
/// clients one core of driver can simulate. `None` without a driver measurement or clients.
fn driver_cpu_per_client_ms(f: &Figures) -> Option<f64> {
    let seconds = cpu(f, "driver")?;
    (f.clients > 0).then(|| seconds * 1000.0 / f.clients as f64)
}

/// Looks a figure up by its registry name.
pub fn figure(name: &str) -> Option<FigureDef> {
    FIGURES.iter().find(|d| d.name == name).copied()
}

/// Every registered figure name, for error messages.
pub fn figure_names() -> impl Iterator<Item = &'static str> {
    FIGURES.iter().map(|d| d.name)
}

#[cfg(test)]
mod tests;
