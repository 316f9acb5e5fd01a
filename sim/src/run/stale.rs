//! Installed and stale peer counts from a data-plane peer listing. Pure: the
//! caller passes the listing and "now", so the stale rule is testable exactly.

use std::time::{Duration, SystemTime};

/// Counts installed peers and those that are stale: no handshake within
/// `threshold` before `now`, or never. A handshake in the future (clock skew)
/// counts as fresh.
pub fn count(
    last_handshakes: impl IntoIterator<Item = Option<SystemTime>>,
    now: SystemTime,
    threshold: Duration,
) -> (u64, u64) {
    let mut installed = 0;
    let mut stale = 0;
    for last in last_handshakes {
        installed += 1;
        let is_stale = match last {
            None => true,
            Some(t) => now.duration_since(t).is_ok_and(|age| age > threshold),
        };
        stale += u64::from(is_stale);
    }
    (installed, stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_and_old_handshakes_are_stale() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let t = Duration::from_secs(180);
        let peers = [
            None,
            Some(now - Duration::from_secs(181)),
            Some(now - Duration::from_secs(180)),
            Some(now - Duration::from_secs(1)),
            Some(now + Duration::from_secs(5)),
        ];
        assert_eq!(count(peers, now, t), (5, 2));
        assert_eq!(count([], now, t), (0, 0));
    }
}
