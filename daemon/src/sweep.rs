//! The sweep: every `sweep-every`, evict peers whose last handshake is older than
//! `evict-after` (or that never completed one within `evict-after` of being installed),
//! so the interface never fills with stale peers. Selection is pure; the install worker
//! performs the removals in bounded chunks.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::dataplane::InstalledPeer;
use crate::peer::PublicKey;

/// Peers to evict at `now`. A peer's age is measured from the later of its last
/// handshake and its install (a re-installed peer may still report an old handshake on
/// some backends); a peer with neither is considered first seen now and is kept.
pub fn select_idle(
    peers: &[InstalledPeer],
    installed_at: &HashMap<PublicKey, SystemTime>,
    now: SystemTime,
    evict_after: Duration,
) -> Vec<PublicKey> {
    peers
        .iter()
        .filter(|p| {
            let reference = match (p.last_handshake, installed_at.get(&p.public_key)) {
                (Some(h), Some(i)) => h.max(*i),
                (Some(h), None) => h,
                (None, Some(i)) => *i,
                (None, None) => return false,
            };
            // A reference in the future (clock step) is "just seen".
            now.duration_since(reference)
                .map(|age| age > evict_after)
                .unwrap_or(false)
        })
        .map(|p| p.public_key)
        .collect()
}

/// Sizes removal chunks by time, not by count: each data-plane removal call should take
/// about `budget`, so an install waiting behind it is delayed by at most that much. The
/// cost of a removal differs by orders of magnitude between backends (wireguard-go: tens
/// of microseconds per peer; a kernel paying an RCU grace period per peer: up to tens of
/// milliseconds), so the chunk size is learnt from what the last calls cost. Pure: the
/// caller measures and reports elapsed time.
#[derive(Debug, Clone)]
pub struct RemovalPacer {
    budget: Duration,
    max_chunk: usize,
    /// Smoothed cost of removing one peer; `None` until the first observation.
    per_peer: Option<Duration>,
}

impl RemovalPacer {
    /// Chunks of at most `max_chunk` peers, each call aiming at `budget`.
    pub fn new(budget: Duration, max_chunk: usize) -> Self {
        RemovalPacer {
            budget,
            max_chunk: max_chunk.max(1),
            per_peer: None,
        }
    }

    /// How many peers the next removal call should carry. The first call is small (16)
    /// until the cost is known.
    pub fn next_chunk(&self) -> usize {
        let Some(per_peer) = self.per_peer else {
            return self.max_chunk.min(16);
        };
        let fit = if per_peer.is_zero() {
            self.max_chunk
        } else {
            (self.budget.as_nanos() / per_peer.as_nanos()).min(self.max_chunk as u128) as usize
        };
        fit.clamp(1, self.max_chunk)
    }

    /// Record that removing `peers` peers took `elapsed`.
    pub fn observe(&mut self, peers: usize, elapsed: Duration) {
        if peers == 0 {
            return;
        }
        let sample = elapsed / peers as u32;
        // Exponential smoothing (new sample weighs 1/2): adapts within a few calls
        // without letting one slow call collapse the chunk size for good.
        self.per_peer = Some(match self.per_peer {
            None => sample,
            Some(old) => (old + sample) / 2,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::RemovalPacer;

    #[test]
    fn pacer_starts_small_then_fits_the_budget() {
        let mut p = RemovalPacer::new(Duration::from_millis(50), 256);
        assert_eq!(p.next_chunk(), 16);
        // Userspace-like cost: 20 µs per peer -> the max chunk fits easily.
        p.observe(16, Duration::from_micros(320));
        assert_eq!(p.next_chunk(), 256);
    }

    #[test]
    fn pacer_shrinks_chunks_when_removals_are_slow() {
        let mut p = RemovalPacer::new(Duration::from_millis(50), 256);
        // Kernel with an RCU grace period per peer: ~30 ms each.
        for _ in 0..8 {
            let n = p.next_chunk();
            p.observe(n, Duration::from_millis(30) * n as u32);
        }
        assert_eq!(p.next_chunk(), 1);
        // ~1 ms per peer (generic kernel): about 50 per call.
        for _ in 0..8 {
            let n = p.next_chunk();
            p.observe(n, Duration::from_millis(1) * n as u32);
        }
        let n = p.next_chunk();
        assert!((40..=60).contains(&n), "{n}");
    }

    #[test]
    fn pacer_never_returns_zero_or_more_than_max() {
        let mut p = RemovalPacer::new(Duration::ZERO, 8);
        p.observe(4, Duration::from_secs(1));
        assert_eq!(p.next_chunk(), 1);
        let mut p = RemovalPacer::new(Duration::from_secs(10), 8);
        p.observe(4, Duration::ZERO);
        assert_eq!(p.next_chunk(), 8);
        p.observe(0, Duration::from_secs(1));
        assert_eq!(p.next_chunk(), 8);
    }

    use super::*;

    const T: Duration = Duration::from_secs(180);

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn peer(k: u8, handshake: Option<SystemTime>) -> InstalledPeer {
        InstalledPeer {
            public_key: PublicKey([k; 32]),
            last_handshake: handshake,
            endpoint: None,
        }
    }

    fn check(peers: &[InstalledPeer], installed: &[(u8, u64)], now: u64, expected: &[u8]) {
        let map = installed
            .iter()
            .map(|(k, t)| (PublicKey([*k; 32]), at(*t)))
            .collect();
        let got = select_idle(peers, &map, at(now), T);
        let want: Vec<PublicKey> = expected.iter().map(|k| PublicKey([*k; 32])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn evicts_peer_whose_handshake_is_older_than_threshold() {
        check(&[peer(1, Some(at(0)))], &[(1, 0)], 181, &[1]);
    }

    #[test]
    fn keeps_peer_with_recent_handshake() {
        check(&[peer(1, Some(at(100)))], &[(1, 0)], 181, &[]);
    }

    #[test]
    fn threshold_is_exclusive() {
        check(&[peer(1, Some(at(0)))], &[(1, 0)], 180, &[]);
    }

    #[test]
    fn evicts_peer_that_never_completed_a_handshake_after_threshold() {
        check(&[peer(1, None)], &[(1, 10)], 191, &[1]);
        check(&[peer(1, None)], &[(1, 10)], 189, &[]);
    }

    #[test]
    fn reinstalled_peer_is_not_evicted_for_an_old_handshake() {
        check(&[peer(1, Some(at(0)))], &[(1, 500)], 600, &[]);
    }

    #[test]
    fn unknown_peer_without_handshake_is_kept() {
        check(&[peer(1, None)], &[], 10_000, &[]);
    }

    #[test]
    fn handshake_in_the_future_is_kept() {
        check(&[peer(1, Some(at(1000)))], &[], 10, &[]);
    }
}
