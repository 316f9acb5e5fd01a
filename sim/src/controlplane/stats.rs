//! Request accounting for the control plane: lookups in total, by outcome and per key, plus NATS
//! publishes. This is what "API calls" in a report is computed from.
//!
//! A lookup is counted when it **arrives**, not when it is answered, so a request that hangs past
//! the caller's timeout (an outage in `hang` mode, injected latency) is still a call. Each arrival
//! ends in exactly one `by_status` key: the status it was answered with, [`ABORTED`] when the
//! caller went away first, or [`PENDING`] while it is still unanswered when the snapshot is taken.
//! So `requests_total` always equals the sum of `by_status`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// `by_status` key of lookups whose caller closed the connection before the answer (its timeout
/// fired, or it was killed): axum drops the handler's future, and [`InFlight`]'s drop records it.
pub const ABORTED: &str = jitwg_reports::BY_STATUS_ABORTED;
/// `by_status` key of lookups still unanswered when the snapshot was taken (at the end of a run:
/// requests held by an outage in `hang` mode or by injected latency).
pub const PENDING: &str = jitwg_reports::BY_STATUS_PENDING;

/// What `GET /v1/stats` returns. Counts cover `GET /v1/peers/{key}` only (the gateway's calls), not
/// the driver's registrations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Lookups that arrived (counted on arrival).
    pub requests_total: u64,
    /// How each arrival ended: status code as a string (JSON keys are strings), [`ABORTED`] or
    /// [`PENDING`]. Sums to `requests_total`.
    pub by_status: BTreeMap<String, u64>,
    /// Key hex to number of lookups (well-formed keys only).
    pub per_key: BTreeMap<String, u64>,
    /// Peer documents published on NATS.
    pub published: u64,
}

impl StatsSnapshot {
    /// Lookups beyond the first for each key: the "duplicates per key" of the report.
    pub fn duplicate_lookups(&self) -> u64 {
        self.per_key.values().map(|n| n.saturating_sub(1)).sum()
    }
}

/// How one arrival ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ending {
    Answered(u16),
    Aborted,
}

#[derive(Debug, Default)]
struct Counts {
    requests_total: u64,
    /// Arrivals not yet answered or aborted.
    in_flight: u64,
    by_ending: HashMap<Ending, u64>,
    per_key: HashMap<String, u64>,
}

impl Counts {
    fn end(&mut self, ending: Ending) {
        self.in_flight = self.in_flight.saturating_sub(1);
        *self.by_ending.entry(ending).or_default() += 1;
    }
}

/// Shared counters, updated by the HTTP handlers.
#[derive(Debug, Default)]
pub struct Stats {
    counts: Mutex<Counts>,
    published: AtomicU64,
}

/// One lookup between arrival and answer. [`InFlight::answered`] records the status; dropping it
/// unanswered (the handler's future was dropped because the client disconnected) records
/// [`ABORTED`].
#[must_use = "dropping an InFlight records the request as aborted"]
pub struct InFlight<'a> {
    stats: &'a Stats,
    done: bool,
}

impl InFlight<'_> {
    /// The request is answered with `status`.
    pub fn answered(mut self, status: u16) {
        self.done = true;
        self.stats.counts().end(Ending::Answered(status));
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.counts().end(Ending::Aborted);
        }
    }
}

impl Stats {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // A poisoned lock only means another handler panicked mid-update; counts are still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one arriving lookup; `key_hex` is `None` for malformed keys. The returned guard
    /// records how it ends.
    pub fn arrived(&self, key_hex: Option<&str>) -> InFlight<'_> {
        let mut c = self.counts();
        c.requests_total += 1;
        c.in_flight += 1;
        if let Some(key) = key_hex {
            *c.per_key.entry(key.to_owned()).or_default() += 1;
        }
        InFlight {
            stats: self,
            done: false,
        }
    }

    pub fn record_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let c = self.counts();
        let mut by_status: BTreeMap<String, u64> = c
            .by_ending
            .iter()
            .map(|(ending, n)| {
                let key = match ending {
                    Ending::Answered(status) => status.to_string(),
                    Ending::Aborted => ABORTED.to_owned(),
                };
                (key, *n)
            })
            .collect();
        if c.in_flight > 0 {
            by_status.insert(PENDING.to_owned(), c.in_flight);
        }
        StatsSnapshot {
            requests_total: c.requests_total,
            by_status,
            per_key: c.per_key.iter().map(|(k, n)| (k.clone(), *n)).collect(),
            published: self.published.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_duplicates() {
        let s = Stats::default();
        s.arrived(Some("aa")).answered(200);
        s.arrived(Some("aa")).answered(200);
        s.arrived(Some("bb")).answered(404);
        s.arrived(None).answered(400);
        s.record_published(3);
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 4);
        assert_eq!(snap.by_status["200"], 2);
        assert_eq!(snap.by_status["400"], 1);
        assert_eq!(snap.per_key["aa"], 2);
        assert_eq!(snap.duplicate_lookups(), 1);
        assert_eq!(snap.published, 3);
        assert!(!snap.by_status.contains_key(PENDING));
    }

    #[test]
    fn counted_on_arrival_then_pending_until_it_ends() {
        let s = Stats::default();
        let first = s.arrived(Some("aa"));
        let second = s.arrived(Some("bb"));
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 2);
        assert_eq!(snap.by_status[PENDING], 2);
        assert_eq!(snap.per_key["aa"], 1);
        first.answered(503);
        drop(second);
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 2);
        assert_eq!(snap.by_status["503"], 1);
        assert_eq!(snap.by_status[ABORTED], 1);
        assert!(!snap.by_status.contains_key(PENDING));
    }

    #[test]
    fn by_status_always_sums_to_the_arrivals() {
        let s = Stats::default();
        let mut held = Vec::new();
        for i in 0..30u16 {
            let f = s.arrived(Some("aa"));
            match i % 3 {
                0 => f.answered(200 + i),
                1 => drop(f),
                _ => held.push(f),
            }
            let snap = s.snapshot();
            assert_eq!(snap.by_status.values().sum::<u64>(), snap.requests_total);
        }
        assert_eq!(s.snapshot().by_status[PENDING], 10);
    }
}
