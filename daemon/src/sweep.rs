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

#[cfg(test)]
mod tests {
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
