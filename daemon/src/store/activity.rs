//! Which peers were active lately, and from where: the memory that lets boot re-install
//! them with their endpoint and initiate at once after a restart, instead of leaving
//! clients with unanswered traffic to WireGuard's own ~15 s timers. Written once per
//! sweep (one transaction for the whole read) and at each JIT install.

use std::net::SocketAddr;
use std::time::SystemTime;

use rusqlite::params;

use super::{decode_key, from_unix_ms, unix_ms, RawPeer, Store, StoreError};
use crate::peer::{PeerConfig, PublicKey};

/// A peer seen active at `seen_at` (its last handshake, or its install) from `endpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub public_key: PublicKey,
    pub endpoint: SocketAddr,
    pub seen_at: SystemTime,
}

/// A stored peer config with its last recorded activity: what boot may re-install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivePeer {
    pub config: PeerConfig,
    pub endpoint: SocketAddr,
    pub seen_at: SystemTime,
}

impl Store {
    /// Record `seen` in one transaction (a row only moves forward in time: an older
    /// observation never overwrites a newer one), then forget rows last seen before
    /// `forget_before`, so the table holds no more than the re-install window needs.
    pub fn record_activity(
        &mut self,
        seen: &[Activity],
        forget_before: SystemTime,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO activity (public_key, endpoint, seen_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (public_key) DO UPDATE SET
                     endpoint = excluded.endpoint,
                     seen_at = excluded.seen_at
                 WHERE excluded.seen_at >= activity.seen_at",
            )?;
            for a in seen {
                upsert.execute(params![
                    &a.public_key.0[..],
                    a.endpoint.to_string(),
                    unix_ms(a.seen_at),
                ])?;
            }
            tx.prepare_cached("DELETE FROM activity WHERE seen_at < ?1")?
                .execute([unix_ms(forget_before)])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every peer with recorded activity that is still a stored peer (a revoked or
    /// forgotten key has no `peers` row and is left out), newest first.
    pub fn active_peers(&self) -> Result<Vec<ActivePeer>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT p.public_key, p.allowed_ips, p.preshared_key, p.source, p.fetched_at,
                    p.expires_at, a.endpoint, a.seen_at
             FROM activity a JOIN peers p ON p.public_key = a.public_key
             ORDER BY a.seen_at DESC, a.public_key",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((
                RawPeer::from_row(row)?,
                row.get::<_, String>(6)?,
                row.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (raw, endpoint, seen_at) = row?;
            let endpoint = endpoint
                .parse()
                .map_err(|_| StoreError::BadRow(format!("endpoint {endpoint:?} does not parse")))?;
            out.push(ActivePeer {
                config: raw.decode()?.config,
                endpoint,
                seen_at: from_unix_ms(seen_at),
            });
        }
        Ok(out)
    }

    /// How many activity rows are stored (tests, diagnostics).
    pub fn activity_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM activity", [], |row| row.get(0))?)
    }

    /// The key of every activity row (tests, diagnostics).
    pub fn activity_keys(&self) -> Result<Vec<PublicKey>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT public_key FROM activity ORDER BY public_key")?;
        let rows = stmt.query_map([], |row| row.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_key(&row?)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::PeerSource;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn peer(byte: u8) -> PeerConfig {
        PeerConfig {
            public_key: PublicKey([byte; 32]),
            allowed_ips: vec![format!("100.64.0.{byte}/32").parse().unwrap()],
            preshared_key: None,
        }
    }

    fn seen(byte: u8, port: u16, secs: u64) -> Activity {
        Activity {
            public_key: PublicKey([byte; 32]),
            endpoint: SocketAddr::from(([198, 18, 0, byte], port)),
            seen_at: at(secs),
        }
    }

    #[test]
    fn newest_observation_wins_and_old_rows_are_pruned() {
        let mut store = Store::open_in_memory().unwrap();
        for b in 1..=3 {
            store
                .put_peer(&peer(b), PeerSource::Api, at(0), Duration::from_secs(600))
                .unwrap();
        }
        store
            .record_activity(&[seen(1, 1000, 10), seen(2, 2000, 5)], at(0))
            .unwrap();
        // An older observation of peer 1 (a sweep read taken before the install) must not
        // roll its endpoint back; a newer one of peer 2 moves it.
        store
            .record_activity(&[seen(1, 1111, 8), seen(2, 2222, 20)], at(0))
            .unwrap();
        let got = store.active_peers().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].config, peer(2));
        assert_eq!(got[0].endpoint.port(), 2222);
        assert_eq!(got[0].seen_at, at(20));
        assert_eq!(got[1].endpoint.port(), 1000);
        // Pruning: peer 1 (seen at 10) goes, peer 3 arrives.
        store.record_activity(&[seen(3, 3000, 30)], at(15)).unwrap();
        assert_eq!(store.activity_count().unwrap(), 2);
        assert_eq!(
            store.activity_keys().unwrap(),
            vec![PublicKey([2; 32]), PublicKey([3; 32])]
        );
    }

    #[test]
    fn revoked_or_unknown_peers_are_not_offered_for_reinstall() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .put_peer(&peer(1), PeerSource::Api, at(0), Duration::from_secs(600))
            .unwrap();
        store
            .put_peer(&peer(2), PeerSource::Api, at(0), Duration::from_secs(600))
            .unwrap();
        store
            .record_activity(&[seen(1, 1, 10), seen(2, 2, 10), seen(9, 9, 10)], at(0))
            .unwrap();
        store
            .put_negative(&PublicKey([2; 32]), at(11), Duration::from_secs(60))
            .unwrap();
        let got: Vec<PeerConfig> = store
            .active_peers()
            .unwrap()
            .into_iter()
            .map(|a| a.config)
            .collect();
        assert_eq!(got, vec![peer(1)]);
    }

    #[test]
    fn ipv6_endpoints_round_trip() {
        let mut store = Store::open_in_memory().unwrap();
        store
            .put_peer(&peer(1), PeerSource::Api, at(0), Duration::from_secs(600))
            .unwrap();
        let endpoint: SocketAddr = "[2001:2::5]:51820".parse().unwrap();
        store
            .record_activity(
                &[Activity {
                    public_key: PublicKey([1; 32]),
                    endpoint,
                    seen_at: at(1),
                }],
                at(0),
            )
            .unwrap();
        assert_eq!(store.active_peers().unwrap()[0].endpoint, endpoint);
    }
}
