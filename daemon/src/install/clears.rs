//! Role-inversion keepalives waiting to be turned off. The keepalive that makes the data
//! plane initiate at install only has to be cleared before its interval (1 s) runs out, not
//! in a call of its own: each clear rides the next data-plane call (the next install batch
//! or initiation round), so a re-install of 1,000 peers in batches of 32 makes ~32 calls
//! instead of ~64. When no call comes for `CLEAR_WITHIN`, the clears go out alone. Pure:
//! the time comes in as arguments.

use std::time::{Duration, Instant};

use crate::peer::PublicKey;

use super::scheduler::PeerChange;

/// Longest a keepalive waits for its clear. Well under `ROLE_INVERSION_KEEPALIVE` (1 s):
/// the data plane arms that timer only once the handshake has completed, and a clear in
/// time means it never sends a keepalive of its own.
pub const CLEAR_WITHIN: Duration = Duration::from_millis(200);

/// Keys whose role-inversion keepalive is still on, oldest first.
#[derive(Debug, Default)]
pub struct PendingClears {
    keys: Vec<PublicKey>,
    /// When the oldest of `keys` was queued.
    since: Option<Instant>,
}

impl PendingClears {
    /// `keys` had the keepalive turned on at `mono`.
    pub fn add(&mut self, keys: impl IntoIterator<Item = PublicKey>, mono: Instant) {
        let before = self.keys.len();
        self.keys.extend(keys);
        if self.keys.len() > before && self.since.is_none() {
            self.since = Some(mono);
        }
    }

    /// Every pending clear as plan changes, for the call about to be made; keys `keep`
    /// rejects (peers removed meanwhile: a clear would re-create them, empty) are dropped.
    pub fn take(&mut self, keep: impl Fn(&PublicKey) -> bool) -> Vec<PeerChange> {
        self.since = None;
        self.keys
            .drain(..)
            .filter(|k| keep(k))
            .map(PeerChange::ClearKeepalive)
            .collect()
    }

    /// Clears of a call that failed, queued again as of `mono` (a clear is idempotent).
    pub fn restore(&mut self, changes: &[PeerChange], mono: Instant) {
        self.add(
            changes.iter().filter_map(|c| match c {
                PeerChange::ClearKeepalive(k) => Some(*k),
                _ => None,
            }),
            mono,
        );
    }

    /// How long from `mono` until the clears must go out alone; `None` when none wait.
    pub fn wait(&self, mono: Instant) -> Option<Duration> {
        self.since
            .map(|since| (since + CLEAR_WITHIN).saturating_duration_since(mono))
    }

    /// Whether the oldest clear has waited `CLEAR_WITHIN` at `mono`.
    pub fn due(&self, mono: Instant) -> bool {
        self.wait(mono).is_some_and(|w| w.is_zero())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    #[test]
    fn the_oldest_clear_sets_the_deadline_and_taking_resets_it() {
        let t = Instant::now();
        let mut p = PendingClears::default();
        assert_eq!(p.wait(t), None);
        assert!(!p.due(t));
        p.add([key(1)], t);
        p.add([key(2)], t + Duration::from_millis(150));
        assert_eq!(
            p.wait(t + Duration::from_millis(150)),
            Some(Duration::from_millis(50))
        );
        assert!(!p.due(t + Duration::from_millis(199)));
        assert!(p.due(t + CLEAR_WITHIN));
        let taken = p.take(|_| true);
        assert_eq!(
            taken,
            vec![
                PeerChange::ClearKeepalive(key(1)),
                PeerChange::ClearKeepalive(key(2))
            ]
        );
        assert!(p.is_empty());
        assert_eq!(p.wait(t), None);
    }

    #[test]
    fn adding_nothing_starts_no_deadline() {
        let t = Instant::now();
        let mut p = PendingClears::default();
        p.add([], t);
        assert_eq!(p.wait(t), None);
    }

    #[test]
    fn removed_peers_are_not_cleared_and_a_failed_call_queues_its_clears_again() {
        let t = Instant::now();
        let mut p = PendingClears::default();
        p.add([key(1), key(2), key(3)], t);
        let taken = p.take(|k| *k != key(2));
        assert_eq!(taken.len(), 2);
        let failed = [
            taken[0].clone(),
            PeerChange::Remove(key(9)),
            taken[1].clone(),
        ];
        let later = t + Duration::from_millis(10);
        p.restore(&failed, later);
        assert_eq!(
            p.take(|_| true),
            vec![
                PeerChange::ClearKeepalive(key(1)),
                PeerChange::ClearKeepalive(key(3))
            ]
        );
        p.restore(&[], later);
        assert_eq!(p.wait(later), None);
    }
}
