//! Installed, stale and never-handshaked peer counts from successive data-plane listings.
//! Pure: the caller passes each listing and "now", so the stale rule is testable exactly.
//!
//! The rule (the brief's): a peer is stale at `now` when it is installed and either its last
//! handshake is older than the threshold, or it never completed one and was installed more than
//! the threshold ago. A peer that is merely new is not stale. Its install time is when it first
//! appeared on the data plane: the first listing that showed it. Peers already there at the
//! first listing (preinstalled, adopted) count from that listing. A peer that vanishes and comes
//! back was installed again, so its age starts over.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// A peer's public key, as the data plane reports it.
pub type PeerKey = [u8; 32];

/// What one listing showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounts {
    pub installed: u64,
    pub stale: u64,
    /// Installed peers that never completed a handshake, however new.
    pub never_handshaked: u64,
}

/// Remembers when each installed peer was first seen, across listings.
#[derive(Debug, Clone)]
pub struct StaleTracker {
    threshold: Duration,
    first_seen: HashMap<PeerKey, SystemTime>,
}

impl StaleTracker {
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            first_seen: HashMap::new(),
        }
    }

    /// Counts one listing taken at `now`: every installed peer with its last handshake.
    /// Peers missing from it are forgotten (removed; if they come back, they were installed again).
    pub fn observe(
        &mut self,
        listing: impl IntoIterator<Item = (PeerKey, Option<SystemTime>)>,
        now: SystemTime,
    ) -> PeerCounts {
        let mut seen = HashMap::with_capacity(self.first_seen.len());
        let mut counts = PeerCounts::default();
        for (key, last_handshake) in listing {
            let installed_at = *self.first_seen.get(&key).unwrap_or(&now);
            // A key listed twice counts once.
            if seen.insert(key, installed_at).is_some() {
                continue;
            }
            counts.installed += 1;
            counts.never_handshaked += u64::from(last_handshake.is_none());
            counts.stale += u64::from(self.is_stale(last_handshake, installed_at, now));
        }
        self.first_seen = seen;
        counts
    }

    /// The data plane was restarted (a reboot): everything on it from now on is a new install.
    pub fn forget_all(&mut self) {
        self.first_seen.clear();
    }

    /// Older than the threshold (strictly); a time in the future (clock skew) is fresh.
    fn is_stale(
        &self,
        last_handshake: Option<SystemTime>,
        installed_at: SystemTime,
        now: SystemTime,
    ) -> bool {
        let since = last_handshake.unwrap_or(installed_at);
        now.duration_since(since)
            .is_ok_and(|age| age > self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(180);

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn key(n: u8) -> PeerKey {
        [n; 32]
    }

    fn counts(installed: u64, stale: u64, never_handshaked: u64) -> PeerCounts {
        PeerCounts {
            installed,
            stale,
            never_handshaked,
        }
    }

    #[test]
    fn handshake_age_decides_when_there_was_one() {
        let mut t = StaleTracker::new(T);
        let now = at(1000);
        let listing = [
            (key(1), Some(now - Duration::from_secs(181))), // older than T: stale
            (key(2), Some(now - T)),                        // exactly T: not yet
            (key(3), Some(now - Duration::from_secs(1))),   // fresh
            (key(4), Some(now + Duration::from_secs(5))),   // future (skew): fresh
        ];
        assert_eq!(t.observe(listing, now), counts(4, 1, 0));
    }

    /// The bug this rule fixes: every peer without a handshake counted as stale from the instant
    /// it was installed (storm: 2,622 "stale" peers of 5,000 connected clients).
    #[test]
    fn a_new_peer_without_handshake_is_not_stale() {
        let mut t = StaleTracker::new(T);
        assert_eq!(t.observe([(key(1), None)], at(0)), counts(1, 0, 1));
        assert_eq!(t.observe([(key(1), None)], at(180)), counts(1, 0, 1));
        assert_eq!(t.observe([(key(1), None)], at(181)), counts(1, 1, 1));
    }

    #[test]
    fn age_without_handshake_counts_from_the_first_listing_that_showed_it() {
        let mut t = StaleTracker::new(T);
        // Peer 1 preinstalled (there at the first listing), peer 2 installed 100 s later.
        t.observe([(key(1), None)], at(0));
        t.observe([(key(1), None), (key(2), None)], at(100));
        assert_eq!(
            t.observe([(key(1), None), (key(2), None)], at(200)),
            counts(2, 1, 2)
        );
        assert_eq!(
            t.observe([(key(1), None), (key(2), None)], at(281)),
            counts(2, 2, 2)
        );
    }

    #[test]
    fn a_handshake_after_install_takes_over_from_the_install_time() {
        let mut t = StaleTracker::new(T);
        t.observe([(key(1), None)], at(0));
        // Installed 300 s ago, but handshook 10 s ago: fresh, and no longer never-handshaked.
        assert_eq!(
            t.observe([(key(1), Some(at(290)))], at(300)),
            counts(1, 0, 0)
        );
        // The handshake itself ages out.
        assert_eq!(
            t.observe([(key(1), Some(at(290)))], at(471)),
            counts(1, 1, 0)
        );
    }

    #[test]
    fn a_peer_that_vanishes_and_returns_was_installed_again() {
        let mut t = StaleTracker::new(T);
        t.observe([(key(1), None)], at(0));
        // Evicted: not in the listing at 150 s.
        assert_eq!(t.observe([], at(150)), counts(0, 0, 0));
        // Back at 200 s: a new install, so not stale at 300 s (100 s old) ...
        t.observe([(key(1), None)], at(200));
        assert_eq!(t.observe([(key(1), None)], at(300)), counts(1, 0, 1));
        // ... but stale once 180 s have passed since it came back.
        assert_eq!(t.observe([(key(1), None)], at(381)), counts(1, 1, 1));
    }

    #[test]
    fn a_peer_seen_in_every_listing_keeps_its_first_seen_time() {
        let mut t = StaleTracker::new(T);
        for s in (0..=180).step_by(30) {
            assert_eq!(t.observe([(key(7), None)], at(s)).stale, 0, "at {s}");
        }
        assert_eq!(t.observe([(key(7), None)], at(210)).stale, 1);
    }

    #[test]
    fn a_reboot_forgets_every_install_time() {
        let mut t = StaleTracker::new(T);
        t.observe([(key(1), None)], at(0));
        t.forget_all();
        // Same key on the restarted data plane, 200 s after it was first seen: new, not stale.
        assert_eq!(t.observe([(key(1), None)], at(200)), counts(1, 0, 1));
    }

    #[test]
    fn duplicate_keys_count_once_and_empty_listings_count_nothing() {
        let mut t = StaleTracker::new(T);
        assert_eq!(t.observe([], at(0)), counts(0, 0, 0));
        assert_eq!(
            t.observe([(key(1), None), (key(1), None)], at(0)),
            counts(1, 0, 1)
        );
    }

    #[test]
    fn a_zero_threshold_makes_every_older_peer_stale() {
        let mut t = StaleTracker::new(Duration::ZERO);
        assert_eq!(t.observe([(key(1), None)], at(0)), counts(1, 0, 1));
        assert_eq!(
            t.observe([(key(1), None), (key(2), Some(at(1)))], at(1)),
            counts(2, 1, 1)
        );
    }
}
