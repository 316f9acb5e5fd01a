//! Replay guard: a sniffer cannot see the data plane's per-peer timestamp state, and a
//! replayed initiation decrypts just as well as a fresh one, so jitwgd keeps the newest
//! TAI64N timestamp per key itself and ignores anything older or equal. This module is
//! the pure decision; `Store::check_and_record_timestamp` applies it atomically.

use crate::peer::Timestamp;

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
