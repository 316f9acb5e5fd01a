//! The API accounting check: the control plane's count of lookups that arrived against jitwgd's
//! count of requests it sent (`api.sent_by_daemon`). The two count the same requests from either
//! end, so a gap beyond what the measurement itself can lose means one side miscounts; the report
//! flags it. Pure: results in, verdict out.
//!
//! **The rule.** `difference = |calls_total - sent_by_daemon|` is a mismatch when it exceeds
//! `tolerance = max(ceil(1 % of calls_total), pending + Σ lost_k)`, where
//! - `pending` is `by_status["pending"]`: requests still unanswered when the run ended, which the
//!   daemon has not counted yet (it counts a request when it ends);
//! - `lost_k`, for each daemon stop `k` (a `reboot_start` or `daemon_restart` event at `t_k`), is
//!   the arrivals the control plane counted from the last sample at or before
//!   `t_k - KILL_LOOKBACK_MS` to the first sample after `t_k` (the samples' `api_calls_total`).
//!   A stopped daemon takes with it what it sent since its last scrape and the requests it had in
//!   flight, which started at most one request timeout earlier; the look-back covers one scrape
//!   interval plus jitwgd's default 2 s timeout, so this is the observed call rate around the kill
//!   times the window the count can be lost in, an upper bound of what that stop can lose.

use crate::schema::{EventKind, Results, BY_STATUS_PENDING};

/// Share of the control plane's count that a mismatch must exceed in any case.
pub const RELATIVE_TOLERANCE: f64 = 0.01;
/// How far before a daemon stop its unscraped or in-flight requests can have started: one
/// 1 s scrape interval plus jitwgd's default `api_timeout` of 2 s.
pub const KILL_LOOKBACK_MS: f64 = 3_000.0;

/// Both counts and the verdict on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccounting {
    /// Lookups that arrived at the control plane (`api.calls_total`).
    pub arrivals: u64,
    /// Requests jitwgd counted (`api.sent_by_daemon`).
    pub sent_by_daemon: u64,
    /// `|arrivals - sent_by_daemon|`.
    pub difference: u64,
    /// The largest difference the rule accepts (see the module docs).
    pub tolerance: u64,
    /// Daemon stops (reboots and restarts) that the tolerance allows for.
    pub daemon_stops: usize,
}

impl ApiAccounting {
    /// Whether the counts disagree by more than the measurement can explain.
    pub fn mismatch(&self) -> bool {
        self.difference > self.tolerance
    }

    /// One sentence for the report.
    pub fn describe(&self) -> String {
        let head = if self.mismatch() {
            "API COUNT MISMATCH"
        } else {
            "API counts agree"
        };
        format!(
            "{head}: the control plane counted {} lookups arriving, jitwgd {} requests sent \
             (difference {}, tolerance {}: 1 % or what {} daemon stop(s) and requests still \
             pending at the end can lose).",
            self.arrivals, self.sent_by_daemon, self.difference, self.tolerance, self.daemon_stops
        )
    }
}

/// The check for `results`; `None` when jitwgd's count was not recorded (older files).
pub fn api_accounting(results: &Results) -> Option<ApiAccounting> {
    let sent_by_daemon = results.api.sent_by_daemon?;
    let arrivals = results.api.calls_total;
    let pending = results
        .api
        .by_status
        .get(BY_STATUS_PENDING)
        .copied()
        .unwrap_or(0);
    let stops: Vec<f64> = results
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::RebootStart | EventKind::DaemonRestart))
        .map(|e| e.t_ms)
        .collect();
    let lost: u64 = stops
        .iter()
        .map(|&t| arrivals_around(results, t, arrivals))
        .sum();
    let relative = (arrivals as f64 * RELATIVE_TOLERANCE).ceil() as u64;
    Some(ApiAccounting {
        arrivals,
        sent_by_daemon,
        difference: arrivals.abs_diff(sent_by_daemon),
        tolerance: relative.max(pending.saturating_add(lost)),
        daemon_stops: stops.len(),
    })
}

/// Arrivals from the last sample at or before `t_ms - KILL_LOOKBACK_MS` (0 if none) to the first
/// sample after `t_ms` (`arrivals`, the run's total, if none).
fn arrivals_around(results: &Results, t_ms: f64, arrivals: u64) -> u64 {
    let samples = &results.samples;
    let before = samples
        .iter()
        .filter(|s| s.t_ms <= t_ms - KILL_LOOKBACK_MS)
        .max_by(|a, b| a.t_ms.total_cmp(&b.t_ms))
        .map_or(0, |s| s.api_calls_total);
    let after = samples
        .iter()
        .filter(|s| s.t_ms > t_ms)
        .min_by(|a, b| a.t_ms.total_cmp(&b.t_ms))
        .map_or(arrivals, |s| s.api_calls_total);
    after.saturating_sub(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Event, RunInfo, Sample};

    /// A run with `calls_total` arrivals, jitwgd's count, samples of cumulative arrivals
    /// `(t_ms, api_calls_total)` and daemon stops at the given times.
    fn run(calls_total: u64, sent: Option<u64>, samples: &[(f64, u64)], stops: &[f64]) -> Results {
        let mut r = Results::new(RunInfo::default());
        r.api.calls_total = calls_total;
        r.api.sent_by_daemon = sent;
        r.samples = samples
            .iter()
            .map(|&(t_ms, api_calls_total)| Sample {
                t_ms,
                api_calls_total,
                ..Sample::default()
            })
            .collect();
        r.events = stops
            .iter()
            .map(|&t_ms| Event {
                t_ms,
                kind: EventKind::RebootStart,
                detail: String::new(),
            })
            .collect();
        r
    }

    fn check(r: &Results) -> (u64, u64, bool) {
        let a = api_accounting(r).expect("sent_by_daemon is set");
        (a.difference, a.tolerance, a.mismatch())
    }

    #[test]
    fn older_files_without_the_daemon_count_are_not_checked() {
        assert_eq!(api_accounting(&run(100, None, &[], &[])), None);
    }

    #[test]
    fn without_stops_one_percent_is_allowed_and_rounded_up() {
        assert_eq!(check(&run(1_000, Some(990), &[], &[])), (10, 10, false));
        assert_eq!(check(&run(1_000, Some(989), &[], &[])), (11, 10, true));
        // The daemon counting more than arrived is a mismatch too.
        assert_eq!(check(&run(1_000, Some(1_011), &[], &[])), (11, 10, true));
        // 1 % of 50 rounds up to one call.
        assert_eq!(check(&run(50, Some(49), &[], &[])), (1, 1, false));
        assert_eq!(check(&run(0, Some(0), &[], &[])), (0, 0, false));
    }

    #[test]
    fn a_stop_allows_the_arrivals_in_its_window() {
        // Samples every second; arrivals 100/s until the kill at 10.5 s.
        let samples: Vec<(f64, u64)> = (0..=20).map(|s| (s as f64 * 1000.0, s * 100)).collect();
        // Window: last sample at or before 7.5 s (t=7 s, 700) to first after 10.5 s (t=11 s,
        // 1,100): 400 calls.
        let r = run(2_000, Some(1_650), &samples, &[10_500.0]);
        assert_eq!(check(&r), (350, 400, false));
        let r = run(2_000, Some(1_599), &samples, &[10_500.0]);
        assert_eq!(check(&r), (401, 400, true));
        // Two stops each get their window.
        let r = run(2_000, Some(1_250), &samples, &[5_500.0, 15_500.0]);
        assert_eq!(check(&r), (750, 800, false));
    }

    #[test]
    fn a_stop_before_the_first_or_after_the_last_sample_uses_the_run_edges() {
        let r = run(300, Some(0), &[(1_000.0, 100)], &[2_000.0]);
        assert_eq!(check(&r), (300, 300, false));
        let r = run(300, Some(0), &[(5_000.0, 100)], &[500.0]);
        assert_eq!(check(&r), (300, 100, true));
    }

    #[test]
    fn requests_pending_at_the_end_are_allowed() {
        let mut r = run(1_000, Some(950), &[], &[]);
        assert!(check(&r).2);
        r.api.by_status.insert(BY_STATUS_PENDING.into(), 50);
        assert_eq!(check(&r), (50, 50, false));
    }

    #[test]
    fn the_sentence_names_both_counts_and_flags_a_mismatch() {
        let a = api_accounting(&run(1_000, Some(900), &[], &[])).unwrap();
        let text = a.describe();
        assert!(text.starts_with("API COUNT MISMATCH"), "{text}");
        assert!(text.contains("1000") && text.contains("900"), "{text}");
        let ok = api_accounting(&run(1_000, Some(1_000), &[], &[])).unwrap();
        assert!(ok.describe().starts_with("API counts agree"));
    }
}
