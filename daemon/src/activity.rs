//! Where the daemon learns that a peer is active, and what it remembers of it across a
//! restart: the endpoint and time of each JIT install, and the last handshake and
//! endpoint of every installed peer from each sweep's full read (one store transaction a
//! sweep). Boot uses the record to re-install recently active peers and initiate to them
//! (`boot::reinstall_active`). The record is also where boot's follow-up is counted: how
//! many re-installed peers completed a handshake afterwards. The selection and counting
//! rules are pure functions; `ActivityLog` is their IO shell.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::dataplane::InstalledPeer;
use crate::metrics::Metrics;
use crate::peer::PublicKey;
use crate::store::{Activity, SharedStore, StoreCallError};

/// The observations in a sweep's read: peers with a completed handshake and a known
/// endpoint (a peer without either tells nothing boot could use).
pub fn observations(read: &[InstalledPeer]) -> Vec<Activity> {
    read.iter()
        .filter_map(|p| {
            Some(Activity {
                public_key: p.public_key,
                endpoint: p.endpoint?,
                seen_at: p.last_handshake?,
            })
        })
        .collect()
}

/// Handshake times from wireguard-control's userspace backend come in whole seconds
/// (it ignores `last_handshake_time_nsec`), so one may read up to this much before the
/// install that caused it.
const HANDSHAKE_RESOLUTION: Duration = Duration::from_secs(1);

/// Settles boot's follow-up against one read: peers re-installed at boot (key -> when)
/// that show a handshake at or after their re-install (within the data plane's
/// resolution: the peer was absent from it before, so any handshake is a new one) are
/// counted and forgotten; those
/// waiting longer than `give_up_after` are forgotten uncounted (they were evicted, or
/// will be: the client has gone). Returns how many completed a handshake. Pure.
pub fn settle(
    awaiting: &mut HashMap<PublicKey, SystemTime>,
    read: &[InstalledPeer],
    now: SystemTime,
    give_up_after: Duration,
) -> usize {
    let mut completed = 0;
    for p in read {
        if let (Some(since), Some(h)) = (awaiting.get(&p.public_key), p.last_handshake) {
            if h + HANDSHAKE_RESOLUTION >= *since {
                awaiting.remove(&p.public_key);
                completed += 1;
            }
        }
    }
    awaiting.retain(|_, since| {
        now.duration_since(*since)
            .map(|waited| waited <= give_up_after)
            .unwrap_or(true)
    });
    completed
}

/// The activity record's IO shell, shared by the packet path, the sweep and boot.
pub struct ActivityLog {
    store: SharedStore,
    /// The `reinstall_active` window: what boot looks back over, and how long a row is
    /// kept. Zero: nothing is recorded (the feature is off and costs nothing).
    window: Duration,
    metrics: Arc<Metrics>,
    /// Peers re-installed at boot that have not shown a handshake yet, with when.
    awaiting: Mutex<HashMap<PublicKey, SystemTime>>,
}

impl ActivityLog {
    pub fn new(store: SharedStore, window: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(ActivityLog {
            store,
            window,
            metrics,
            awaiting: Mutex::new(HashMap::new()),
        })
    }

    /// Whether activity is recorded (and re-installed at boot) at all.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// The `reinstall_active` window.
    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// A JIT install of `key` with the initiation's source `endpoint` at `now`: the
    /// record for a peer installed since the last sweep.
    pub async fn installed(
        &self,
        key: PublicKey,
        endpoint: SocketAddr,
        now: SystemTime,
    ) -> Result<(), StoreCallError> {
        self.record(vec![Activity {
            public_key: key,
            endpoint,
            seen_at: now,
        }])
        .await
        .map(|_| ())
    }

    /// A sweep's read (peers with a handshake): one transaction for all of them, then
    /// boot's follow-up. `evict_after` bounds how long a re-installed peer is followed.
    pub async fn swept(
        &self,
        read: &[InstalledPeer],
        now: SystemTime,
        evict_after: Duration,
    ) -> Result<usize, StoreCallError> {
        let completed = self
            .awaiting
            .lock()
            .map(|mut a| {
                if a.is_empty() {
                    0
                } else {
                    settle(&mut a, read, now, evict_after)
                }
            })
            .unwrap_or(0);
        tracing::debug!(handshakes = read.len(), completed, "activity: sweep read");
        self.metrics
            .boot_reinstalled_handshakes
            .inc_by(completed as u64);
        self.record(observations(read)).await
    }

    /// Boot re-installed `keys` at `at`: follow them until they handshake or give up.
    pub fn reinstalled(&self, keys: impl IntoIterator<Item = PublicKey>, at: SystemTime) {
        if let Ok(mut a) = self.awaiting.lock() {
            let before = a.len();
            a.extend(keys.into_iter().map(|k| (k, at)));
            self.metrics
                .boot_reinstalled
                .inc_by((a.len() - before) as u64);
        }
    }

    /// Writes `seen` and prunes rows older than the window; returns how many were written.
    async fn record(&self, seen: Vec<Activity>) -> Result<usize, StoreCallError> {
        if !self.enabled() {
            return Ok(0);
        }
        let newest = seen.iter().map(|a| a.seen_at).max();
        let Some(newest) = newest else {
            return Ok(0);
        };
        let forget_before = newest.checked_sub(self.window).unwrap_or(newest);
        let n = seen.len();
        self.store
            .call(move |s| s.record_activity(&seen, forget_before))
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn read(byte: u8, handshake: Option<u64>, endpoint: bool) -> InstalledPeer {
        InstalledPeer {
            public_key: PublicKey([byte; 32]),
            last_handshake: handshake.map(at),
            endpoint: endpoint.then(|| SocketAddr::from(([198, 18, 0, byte], 51820))),
        }
    }

    #[test]
    fn only_peers_with_handshake_and_endpoint_are_observations() {
        let got = observations(&[
            read(1, Some(5), true),
            read(2, None, true),
            read(3, Some(5), false),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].public_key, PublicKey([1; 32]));
        assert_eq!(got[0].seen_at, at(5));
    }

    #[test]
    fn settle_counts_handshakes_after_reinstall_and_gives_up_on_the_rest() {
        let mut awaiting: HashMap<PublicKey, SystemTime> = [1u8, 2, 3, 4]
            .iter()
            .map(|&b| (PublicKey([b; 32]), at(100) - Duration::from_millis(500)))
            .collect();
        let give_up = Duration::from_secs(180);
        // 1: handshake after the re-install, read in whole seconds (may round below it);
        // 2: an older handshake; 3: none yet; 4: not in the read (evicted).
        let first = [
            read(1, Some(99), true),
            read(2, Some(90), true),
            read(3, None, true),
        ];
        assert_eq!(settle(&mut awaiting, &first, at(130), give_up), 1);
        assert_eq!(awaiting.len(), 3);
        // Counted once only.
        assert_eq!(settle(&mut awaiting, &first, at(160), give_up), 0);
        let later = [read(3, Some(200), true)];
        assert_eq!(settle(&mut awaiting, &later, at(250), give_up), 1);
        // Past give_up: 2 and 4 are forgotten uncounted.
        assert_eq!(settle(&mut awaiting, &[], at(281), give_up), 0);
        assert!(awaiting.is_empty());
    }
}
