//! The sweep: every `sweep-every`, evict peers whose last handshake is older than
//! `evict-after` (or that never completed one within `evict-after` of being installed),
//! so the interface never fills with stale peers. Selection is pure; the install worker
//! performs the removals in bounded chunks. The data plane is read off the install
//! worker (a full read of 50,000 kernel peers takes seconds, and installs must not wait
//! for it), so the worker reconciles that read with what it wrote meanwhile. The read
//! goes through `reads`, the data plane's one reader, which the kernel shield shares.
//! Everything here but `task` (the timer that starts each sweep) and `reads` is pure.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::dataplane::InstalledPeer;
use crate::peer::PublicKey;

pub mod reads;
mod task;

pub use reads::{PeerRead, PeerReadError, PeerReads};
pub use task::sweep_loop;

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

/// A data-plane write the install worker made while a sweep's read was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Installed(PublicKey),
    Removed(PublicKey),
}

/// The data plane's peers as of a read plus the writes made after it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// What the data plane holds now.
    pub present: HashSet<PublicKey>,
    /// Keys written after the read: the read says nothing current about them, so they are
    /// not judged idle by it.
    pub touched: HashSet<PublicKey>,
}

/// Applies `since` (in order) to `read`. Pure.
pub fn reconcile(read: &[InstalledPeer], since: &[Change]) -> Reconciled {
    let mut out = Reconciled {
        present: read.iter().map(|p| p.public_key).collect(),
        touched: HashSet::new(),
    };
    for change in since {
        match *change {
            Change::Installed(k) => {
                out.present.insert(k);
                out.touched.insert(k);
            }
            Change::Removed(k) => {
                out.present.remove(&k);
                out.touched.insert(k);
            }
        }
    }
    out
}

/// Sizes removal chunks by time, not by count: each data-plane removal call should take
/// about `sweep_budget`, so an install waiting behind it is delayed by at most that much. The
/// cost of a removal differs by orders of magnitude between backends (wireguard-go: tens
/// of microseconds per peer; a kernel paying an RCU grace period per peer: up to tens of
/// milliseconds), so the chunk size is learnt from what the last calls cost. Pure: the
/// caller measures and reports elapsed time.
#[derive(Debug, Clone)]
pub struct RemovalPacer {
    /// The `sweep_budget` setting: time one removal call should take at most.
    sweep_budget: Duration,
    /// The `sweep_chunk` setting: most peers in one removal call.
    sweep_chunk: usize,
    /// Smoothed cost of removing one peer; `None` until the first observation.
    per_peer: Option<Duration>,
}

impl RemovalPacer {
    /// Chunks of at most `sweep_chunk` peers, each call aiming at `sweep_budget`.
    pub fn new(sweep_budget: Duration, sweep_chunk: usize) -> Self {
        RemovalPacer {
            sweep_budget,
            sweep_chunk: sweep_chunk.max(1),
            per_peer: None,
        }
    }

    /// How many peers the next removal call should carry. The first call is small (16)
    /// until the cost is known.
    pub fn next_chunk(&self) -> usize {
        let Some(per_peer) = self.per_peer else {
            return self.sweep_chunk.min(16);
        };
        let fit = if per_peer.is_zero() {
            self.sweep_chunk
        } else {
            (self.sweep_budget.as_nanos() / per_peer.as_nanos()).min(self.sweep_chunk as u128)
                as usize
        };
        fit.clamp(1, self.sweep_chunk)
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

    fn keys(ks: &[u8]) -> HashSet<PublicKey> {
        ks.iter().map(|k| PublicKey([*k; 32])).collect()
    }

    #[test]
    fn reconcile_applies_writes_made_after_the_read_in_order() {
        let read = [peer(1, None), peer(2, None), peer(3, None)];
        let k = |n: u8| PublicKey([n; 32]);
        let r = reconcile(
            &read,
            &[
                Change::Installed(k(4)),
                Change::Removed(k(2)),
                Change::Removed(k(3)),
                Change::Installed(k(3)),
                Change::Installed(k(5)),
                Change::Removed(k(5)),
            ],
        );
        assert_eq!(r.present, keys(&[1, 3, 4]));
        assert_eq!(r.touched, keys(&[2, 3, 4, 5]));
        let r = reconcile(&read, &[]);
        assert_eq!(r.present, keys(&[1, 2, 3]));
        assert!(r.touched.is_empty());
    }

    proptest::proptest! {
        /// Whatever the read and the writes, the result is the last word on each key: a
        /// key written after the read is present iff its last write installed it, any
        /// other key iff the read had it.
        #[test]
        fn reconcile_is_the_last_word_per_key(
            read in proptest::collection::btree_set(0u8..16, 0..16),
            writes in proptest::collection::vec((0u8..16, proptest::bool::ANY), 0..32),
        ) {
            let peers: Vec<InstalledPeer> = read.iter().map(|k| peer(*k, None)).collect();
            let since: Vec<Change> = writes
                .iter()
                .map(|(k, add)| {
                    let key = PublicKey([*k; 32]);
                    if *add { Change::Installed(key) } else { Change::Removed(key) }
                })
                .collect();
            let r = reconcile(&peers, &since);
            for k in 0u8..16 {
                let key = PublicKey([k; 32]);
                let last = writes.iter().rev().find(|(w, _)| *w == k).map(|(_, add)| *add);
                proptest::prop_assert_eq!(r.present.contains(&key), last.unwrap_or(read.contains(&k)));
                proptest::prop_assert_eq!(r.touched.contains(&key), last.is_some());
            }
        }
    }
}
