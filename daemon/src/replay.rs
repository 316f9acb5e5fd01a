//! Replay guard: a sniffer cannot see the data plane's per-peer timestamp state, and a
//! replayed initiation decrypts just as well as a fresh one, so jitwgd keeps the newest
//! TAI64N timestamp per key itself and ignores anything older or equal. This module is
//! the pure decision and `ReplayMemory`, the in-memory guard every initiation passes
//! (bounded: least recently seen keys are forgotten first); `Store::check_and_record_timestamp`
//! applies the same decision durably, and the pipeline asks it only for keys that
//! resolved, so a flood of unknown keys writes nothing to disk.
//!
//! `ResentMemory` comes before all of that: the ephemeral keys of initiations already
//! identified. A packet sent again carries the same ephemeral (a client makes a new one
//! for every initiation, retries included), so the identify workers drop it after mac1,
//! before the X25519 that would find the same key and timestamp again (measured with
//! `replay-storm`: 60,000 replays cost jitwgd 9-10 s of CPU without it).

use hashlink::LruCache;

use crate::peer::{PublicKey, Timestamp};

/// What the replay guard thinks of an initiation's timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Strictly newer than anything seen from this key: act on it (and remember it).
    Fresh,
    /// Older than or equal to a timestamp already seen: a replay or a duplicate; drop it.
    Replay,
}

/// Judge `incoming` against the newest timestamp stored for the same key (`None` when
/// the key was never seen). Equal counts as a replay: WireGuard itself requires strictly
/// increasing timestamps, and an exact repeat is what a captured-and-resent packet carries.
pub fn judge(stored_newest: Option<Timestamp>, incoming: Timestamp) -> ReplayVerdict {
    match stored_newest {
        Some(newest) if incoming <= newest => ReplayVerdict::Replay,
        _ => ReplayVerdict::Fresh,
    }
}

/// The newest timestamp of up to `capacity` keys, least recently seen evicted first.
/// A key it forgot is judged `Fresh` again: for a known key the durable guard still
/// holds its timestamp; for an unknown key a replay only costs a negative-cache read.
pub struct ReplayMemory {
    newest: LruCache<PublicKey, Timestamp>,
}

impl ReplayMemory {
    pub fn new(capacity: usize) -> Self {
        ReplayMemory {
            newest: LruCache::new(capacity.max(1)),
        }
    }

    /// Judge `timestamp` for `key` and remember it when it is fresh.
    pub fn check_and_record(&mut self, key: PublicKey, timestamp: Timestamp) -> ReplayVerdict {
        let verdict = judge(self.newest.get(&key).copied(), timestamp);
        if verdict == ReplayVerdict::Fresh {
            self.newest.insert(key, timestamp);
        }
        verdict
    }

    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

/// The ephemeral keys of up to `capacity` identified initiations, least recently seen
/// forgotten first. A copy it knows is dropped as the replay guard would drop it (same
/// key, same timestamp); a forgotten one is identified and judged by the guards as before.
/// One case differs: a copy of an initiation that was identified and then dropped for
/// want of a handler (`--max-pending`) used to be handled; it is dropped now. A client
/// never resends an initiation, so such a copy is an attacker's or the network's.
pub struct ResentMemory {
    seen: LruCache<[u8; 32], ()>,
}

impl ResentMemory {
    pub fn new(capacity: usize) -> Self {
        ResentMemory {
            seen: LruCache::new(capacity.max(1)),
        }
    }

    /// Whether an initiation with `ephemeral` was identified before (it counts as seen
    /// again, so a replayed one stays remembered while it is replayed).
    pub fn resent(&mut self, ephemeral: &[u8; 32]) -> bool {
        self.seen.get(ephemeral).is_some()
    }

    /// An initiation with `ephemeral` was identified.
    pub fn identified(&mut self, ephemeral: [u8; 32]) {
        self.seen.insert(ephemeral, ());
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resent_memory_knows_what_was_identified_and_stays_bounded() {
        let mut m = ResentMemory::new(2);
        assert!(!m.resent(&[1; 32]));
        m.identified([1; 32]);
        assert!(m.resent(&[1; 32]));
        m.identified([2; 32]);
        // Seen again just now: 2 is the least recently seen and goes first.
        assert!(m.resent(&[1; 32]));
        m.identified([3; 32]);
        assert_eq!(m.len(), 2);
        assert!(m.resent(&[1; 32]) && m.resent(&[3; 32]));
        assert!(!m.resent(&[2; 32]), "forgotten: identified again");
    }

    #[test]
    fn memory_guard_rejects_repeats_and_stays_bounded() {
        let mut m = ReplayMemory::new(3);
        let k = |n: u8| PublicKey([n; 32]);
        assert_eq!(m.check_and_record(k(1), ts(10, 0)), ReplayVerdict::Fresh);
        assert_eq!(m.check_and_record(k(1), ts(10, 0)), ReplayVerdict::Replay);
        assert_eq!(m.check_and_record(k(1), ts(9, 0)), ReplayVerdict::Replay);
        assert_eq!(m.check_and_record(k(1), ts(11, 0)), ReplayVerdict::Fresh);
        for n in 2..100 {
            assert_eq!(m.check_and_record(k(n), ts(1, 0)), ReplayVerdict::Fresh);
        }
        assert_eq!(m.len(), 3);
        // Key 1 was forgotten: judged fresh again (the durable guard covers known keys).
        assert_eq!(m.check_and_record(k(1), ts(10, 0)), ReplayVerdict::Fresh);
    }

    /// A TAI64N timestamp from seconds and nanoseconds (the wire layout).
    fn ts(secs: u64, nanos: u32) -> Timestamp {
        let mut bytes = [0u8; 12];
        bytes[..8].copy_from_slice(&secs.to_be_bytes());
        bytes[8..].copy_from_slice(&nanos.to_be_bytes());
        Timestamp(bytes)
    }

    #[test]
    fn first_timestamp_of_a_key_is_fresh() {
        assert_eq!(judge(None, ts(100, 0)), ReplayVerdict::Fresh);
    }

    #[test]
    fn newer_timestamp_is_fresh() {
        assert_eq!(judge(Some(ts(100, 0)), ts(100, 1)), ReplayVerdict::Fresh);
        assert_eq!(judge(Some(ts(100, 999)), ts(101, 0)), ReplayVerdict::Fresh);
    }

    #[test]
    fn equal_timestamp_is_replay() {
        assert_eq!(judge(Some(ts(100, 5)), ts(100, 5)), ReplayVerdict::Replay);
    }

    #[test]
    fn older_timestamp_is_replay() {
        assert_eq!(judge(Some(ts(100, 5)), ts(100, 4)), ReplayVerdict::Replay);
        assert_eq!(
            judge(Some(ts(101, 0)), ts(100, 999_999_999)),
            ReplayVerdict::Replay
        );
    }

    proptest! {
        #[test]
        fn verdict_follows_chronological_order(
            a_secs in any::<u64>(), a_nanos in 0u32..1_000_000_000,
            b_secs in any::<u64>(), b_nanos in 0u32..1_000_000_000,
        ) {
            let expected = if (b_secs, b_nanos) > (a_secs, a_nanos) {
                ReplayVerdict::Fresh
            } else {
                ReplayVerdict::Replay
            };
            prop_assert_eq!(judge(Some(ts(a_secs, a_nanos)), ts(b_secs, b_nanos)), expected);
        }
    }
}
