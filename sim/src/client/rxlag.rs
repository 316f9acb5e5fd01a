//! Receive lag, aggregated across a fleet's client tasks: one HDR histogram over the whole run
//! (what `results.load` reports and shards merge) and a summary per window of the run, so a
//! driver that fell behind while a storm's clients were starting shows apart from one that was
//! always slow. Windows are 1 s for the first minute (where storms happen) and widen after it
//! (`window_of`), so a soak's results.json grows with the logarithm of its length, not with
//! every second of it. Recording is one uncontended lock and two counter updates per datagram:
//! the driver is the bottleneck in a storm already.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use jitwg_reports::load::{empty_lag_histogram, histogram_ms};
use jitwg_reports::{DriverMeasures, RxLagWindow};

/// What every client task adds its received datagrams' lags to.
#[derive(Debug)]
pub struct RxLagRecorder {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    all: Histogram<u64>,
    /// The window being filled, as (first second, length in seconds); datagrams are read in
    /// time order (up to the few µs two worker threads may interleave), so one histogram
    /// suffices: a later window closes the previous.
    current_window: (u32, u32),
    current: Histogram<u64>,
    closed: Vec<RxLagWindow>,
}

impl Default for RxLagRecorder {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                all: empty_lag_histogram(),
                current_window: window_of(0),
                current: empty_lag_histogram(),
                closed: Vec::new(),
            }),
        }
    }
}

/// The recorder's contents at the end of a run.
#[derive(Debug, Clone)]
pub struct RxLagTotals {
    /// µs, with `jitwg_reports::load::empty_lag_histogram`'s bounds.
    pub all: Histogram<u64>,
    /// Per window (`window_of`); windows without datagrams are left out.
    pub by_window: Vec<RxLagWindow>,
}

impl RxLagTotals {
    /// What `results.load` is assessed on: these lags and the driver's CPU share.
    pub fn measures(self, cpu_utilization: Option<f64>) -> DriverMeasures {
        DriverMeasures {
            cpu_utilization,
            rx_lag_us: Some(self.all),
            rx_lag_by_second: self.by_window,
        }
    }
}

impl RxLagRecorder {
    /// Adds one datagram that waited `lag` and was read `read_at` after the run's origin.
    pub fn record(&self, lag: Duration, read_at: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX).max(1);
        let second = u32::try_from(read_at.as_secs()).unwrap_or(u32::MAX);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.all.saturating_record(us);
        if second >= state.current_window.0 + state.current_window.1 {
            state.close_current();
            state.current_window = window_of(second);
        }
        state.current.saturating_record(us);
    }

    /// Everything recorded so far.
    pub fn totals(&self) -> RxLagTotals {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut by_window = state.closed.clone();
        by_window.extend(window(state.current_window, &state.current));
        RxLagTotals {
            all: state.all.clone(),
            by_window,
        }
    }
}

impl State {
    fn close_current(&mut self) {
        if let Some(w) = window(self.current_window, &self.current) {
            self.closed.push(w);
        }
        self.current.reset();
    }
}

/// The window `second` of the run falls in, as (first second, length): 1 s over the first
/// minute, 10 s to 10 min, 1 min to an hour, 10 min after that. A 24 h soak has about 300.
fn window_of(second: u32) -> (u32, u32) {
    let width = match second {
        0..60 => 1,
        60..600 => 10,
        600..3_600 => 60,
        _ => 600,
    };
    (second - second % width, width)
}

/// The summary of one window's histogram; `None` when it is empty.
fn window((second, seconds): (u32, u32), histogram: &Histogram<u64>) -> Option<RxLagWindow> {
    Some(RxLagWindow {
        second,
        seconds,
        datagrams: histogram.len(),
        p50_ms: histogram_ms(histogram, 50.0)?,
        p99_ms: histogram_ms(histogram, 99.0)?,
        max_ms: histogram_ms(histogram, 100.0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn lags_are_kept_whole_and_per_second() {
        let recorder = RxLagRecorder::default();
        // A storm's start: reads 2 s late in second 0, then prompt ones from second 3 on.
        for _ in 0..10 {
            recorder.record(ms(2_000), ms(500));
        }
        recorder.record(ms(1), ms(3_100));
        recorder.record(ms(3), ms(3_900));
        // A read that lands a hair after its second closed counts in the current one.
        recorder.record(ms(2), ms(2_999));
        recorder.record(ms(1), ms(5_000));
        let totals = recorder.totals();
        assert_eq!(totals.all.len(), 14);
        let seconds: Vec<(u32, u64)> = totals
            .by_window
            .iter()
            .map(|w| (w.second, w.datagrams))
            .collect();
        assert_eq!(seconds, vec![(0, 10), (3, 3), (5, 1)]);
        let early = totals.by_window[0];
        assert!((1_999.0..=2_002.0).contains(&early.p99_ms), "{early:?}");
        let prompt = totals.by_window[1];
        // 3 significant digits: 3 ms reads back as the top of its bucket, 3.001 ms.
        assert_eq!(prompt.p50_ms, 2.0);
        assert!((3.0..3.01).contains(&prompt.max_ms), "{prompt:?}");
    }

    #[test]
    fn windows_widen_after_the_first_minute_and_stay_few_over_a_day() {
        assert_eq!(window_of(0), (0, 1));
        assert_eq!(window_of(59), (59, 1));
        assert_eq!(window_of(60), (60, 10));
        assert_eq!(window_of(75), (70, 10));
        assert_eq!(window_of(600), (600, 60));
        assert_eq!(window_of(3_661), (3_600, 600));
        let recorder = RxLagRecorder::default();
        for second in 0..86_400u64 {
            recorder.record(ms(1), Duration::from_secs(second));
        }
        let totals = recorder.totals();
        assert_eq!(totals.all.len(), 86_400);
        let windows = &totals.by_window;
        assert_eq!(windows.len(), 60 + 54 + 50 + 138);
        assert_eq!(windows.iter().map(|w| w.datagrams).sum::<u64>(), 86_400);
        // Windows tile the run: each starts where the previous ended.
        for pair in windows.windows(2) {
            assert_eq!(pair[0].second + pair[0].seconds, pair[1].second, "{pair:?}");
        }
        assert_eq!(windows[70].seconds, 10);
    }

    #[test]
    fn nothing_recorded_is_no_window_and_an_empty_histogram() {
        let totals = RxLagRecorder::default().totals();
        assert!(totals.all.is_empty() && totals.by_window.is_empty());
    }

    #[test]
    fn a_zero_lag_is_recorded_as_the_smallest_value() {
        let recorder = RxLagRecorder::default();
        recorder.record(Duration::ZERO, Duration::ZERO);
        assert_eq!(recorder.totals().all.len(), 1);
    }
}
