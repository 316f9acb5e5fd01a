//! Request accounting for the control plane: lookups in total, by status and per key, plus NATS
//! publishes. This is what "API calls" in a report is computed from.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What `GET /v1/stats` returns. Counts cover `GET /v1/peers/{key}` only (the gateway's calls), not
/// the driver's registrations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub requests_total: u64,
    /// Status code (as a string, JSON keys are strings) to count.
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

#[derive(Debug, Default)]
struct Counts {
    requests_total: u64,
    by_status: HashMap<u16, u64>,
    per_key: HashMap<String, u64>,
}

/// Shared counters, updated by the HTTP handlers.
#[derive(Debug, Default)]
pub struct Stats {
    counts: Mutex<Counts>,
    published: AtomicU64,
}

impl Stats {
    /// Records one finished lookup; `key_hex` is `None` for malformed keys.
    pub fn record_lookup(&self, key_hex: Option<&str>, status: u16) {
        // A poisoned lock only means another handler panicked mid-update; counts are still usable.
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.requests_total += 1;
        *c.by_status.entry(status).or_default() += 1;
        if let Some(key) = key_hex {
            *c.per_key.entry(key.to_owned()).or_default() += 1;
        }
    }

    pub fn record_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        StatsSnapshot {
            requests_total: c.requests_total,
            by_status: c
                .by_status
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
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
        s.record_lookup(Some("aa"), 200);
        s.record_lookup(Some("aa"), 200);
        s.record_lookup(Some("bb"), 404);
        s.record_lookup(None, 400);
        s.record_published(3);
        let snap = s.snapshot();
        assert_eq!(snap.requests_total, 4);
        assert_eq!(snap.by_status["200"], 2);
        assert_eq!(snap.by_status["400"], 1);
        assert_eq!(snap.per_key["aa"], 2);
        assert_eq!(snap.duplicate_lookups(), 1);
        assert_eq!(snap.published, 3);
    }
}
