//! The daemon's memory on disk: one SQLite database (WAL mode) holding the positive peer
//! cache (also the stored peers that preload boot and push mode install), the negative
//! cache, the replay guard's newest timestamp per key, and each peer's last activity and
//! endpoint (`activity`, for re-installing active peers at boot). Synchronous on purpose: async
//! callers use it through `SharedStore`, which runs each call on the blocking pool.
//! Time is always a parameter; nothing here reads the clock.

mod activity;
mod recover;
mod schema;
mod shared;

#[cfg(test)]
mod crash_test;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::peer::{PeerConfig, PublicKey, Timestamp};
use crate::replay::{self, ReplayVerdict};

pub use activity::{ActivePeer, Activity};
pub use recover::{open_checked, Recovered};
pub use schema::SCHEMA_VERSION;
pub use shared::{SharedStore, StoreCallError};

/// How long a writer waits for another connection's lock before giving up. Only one
/// daemon should use a database, but `sqlite3` or a backup tool may briefly hold it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with the peer database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open peer database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot restrict permissions of peer database {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("peer database schema version {found} is newer than this jitwgd knows ({known})")]
    SchemaTooNew { found: u32, known: u32 },
    #[error("migrating peer database to schema version {version} failed")]
    Migration {
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("peer database integrity check failed: {0}")]
    Corrupt(String),
    #[error("peer database {path} is corrupt; it was left in place (--db-corruption refuse)")]
    CorruptRefused {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot move corrupt peer database {path} aside")]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored row is malformed: {0}")]
    BadRow(String),
    #[error("peer database query failed")]
    Sqlite(#[from] rusqlite::Error),
}

/// Where a stored peer came from; push-mode peers are kept apart from API-cached ones so
/// the legacy baseline and the JIT path can be told apart in the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerSource {
    /// Pulled from the control-plane API on a cache miss.
    Api,
    /// Received from the control plane over NATS (legacy push mode).
    Push,
}

impl PeerSource {
    fn as_sql(self) -> &'static str {
        match self {
            PeerSource::Api => "api",
            PeerSource::Push => "push",
        }
    }

    fn from_sql(s: &str) -> Result<Self, StoreError> {
        match s {
            "api" => Ok(PeerSource::Api),
            "push" => Ok(PeerSource::Push),
            other => Err(StoreError::BadRow(format!("unknown peer source {other:?}"))),
        }
    }
}

/// A positive cache entry: a peer config plus when it was fetched and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedPeer {
    pub config: PeerConfig,
    pub source: PeerSource,
    pub fetched_at: SystemTime,
    pub expires_at: SystemTime,
}

impl CachedPeer {
    /// Still inside its TTL at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

/// The peer database. One connection; see the module docs for threading.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Open (creating if needed) the database at `path`, restrict it to its owner (it holds
    /// preshared keys), switch to WAL and bring the schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref();
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        restrict_permissions(path)?;
        // journal_mode answers with the mode in force; WAL lets readers (sqlite3, backups)
        // work while the daemon writes, and with synchronous=NORMAL a commit costs no
        // fsync yet survives a process crash (only an OS crash may lose the last commits).
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let store = Self::finish_open(conn)?;
        // A structural check at every open (milliseconds at 100,000 rows): a torn or
        // damaged file is found now, not as odd answers later. `open_checked` decides
        // what to do about it.
        store.quick_check()?;
        Ok(store)
    }

    /// A private in-memory database, for tests and for running without persistence.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::finish_open(conn)
    }

    fn finish_open(mut conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&mut conn)?;
        Ok(Store { conn })
    }

    /// `PRAGMA integrity_check` must answer exactly "ok".
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        self.check("integrity_check")
    }

    /// `PRAGMA quick_check` (integrity_check without the index-content cross-check,
    /// O(N)) must answer exactly "ok".
    pub fn quick_check(&self) -> Result<(), StoreError> {
        self.check("quick_check")
    }

    fn check(&self, pragma: &str) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(&format!("PRAGMA {pragma}"))?;
        let lines: Vec<String> = stmt
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        if lines.len() == 1 && lines[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(lines.join("; ")))
        }
    }

    /// The positive entry for `key`, fresh or expired.
    pub fn get_peer(&self, key: &PublicKey) -> Result<Option<CachedPeer>, StoreError> {
        // Cached statements: this runs once per lookup, and parsing the SQL each time
        // showed up in storm profiles.
        let row = self
            .conn
            .prepare_cached(
                "SELECT public_key, allowed_ips, preshared_key, source, fetched_at, expires_at
                 FROM peers WHERE public_key = ?1",
            )?
            .query_row([&key.0[..]], RawPeer::from_row)
            .optional()?;
        row.map(RawPeer::decode).transpose()
    }

    /// Store (or replace) a positive entry valid for `ttl` from `now`, and drop any negative
    /// entry for the same key: the control plane has just said the key exists.
    /// `Duration::MAX` means "never expires" (push-mode peers).
    pub fn put_peer(
        &mut self,
        config: &PeerConfig,
        source: PeerSource,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.put_peers(std::slice::from_ref(config), source, now, ttl)
    }

    /// A peer received in push mode: stored for good (until removed), source 'push'.
    pub fn put_pushed_peer(
        &mut self,
        config: &PeerConfig,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.put_peer(config, PeerSource::Push, now, Duration::MAX)
    }

    /// `put_peer` for many peers in one transaction (push batches, imports).
    pub fn put_peers(
        &mut self,
        configs: &[PeerConfig],
        source: PeerSource,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let fetched_at = unix_ms(now);
        let expires_at = unix_ms_after(now, ttl);
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO peers
                     (public_key, allowed_ips, preshared_key, source, fetched_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (public_key) DO UPDATE SET
                     allowed_ips = excluded.allowed_ips,
                     preshared_key = excluded.preshared_key,
                     source = excluded.source,
                     fetched_at = excluded.fetched_at,
                     expires_at = excluded.expires_at",
            )?;
            let mut unnegate = tx.prepare_cached("DELETE FROM negative WHERE public_key = ?1")?;
            for config in configs {
                upsert.execute(params![
                    &config.public_key.0[..],
                    encode_allowed_ips(&config.allowed_ips),
                    config.preshared_key.as_ref().map(|k| &k[..]),
                    source.as_sql(),
                    fetched_at,
                    expires_at,
                ])?;
                unnegate.execute([&config.public_key.0[..]])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forget the positive entry for `key`. Returns whether there was one.
    pub fn remove_peer(&mut self, key: &PublicKey) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM peers WHERE public_key = ?1", [&key.0[..]])?;
        Ok(n > 0)
    }

    /// Every stored peer config, ordered by key (preload boot installs these).
    pub fn all_peers(&self) -> Result<Vec<PeerConfig>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT public_key, allowed_ips, preshared_key, source, fetched_at, expires_at
             FROM peers ORDER BY public_key",
        )?;
        let rows = stmt.query_map([], RawPeer::from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.decode()?.config);
        }
        Ok(out)
    }

    /// How many positive entries are stored.
    pub fn peer_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM peers", [], |row| row.get(0))?)
    }

    /// Keys whose positive entry has expired at `now`: candidates for revalidation.
    pub fn expired_peers(&self, now: SystemTime) -> Result<Vec<PublicKey>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT public_key FROM peers WHERE expires_at <= ?1 ORDER BY expires_at")?;
        let rows = stmt.query_map([unix_ms(now)], |row| row.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(decode_key(&row?)?);
        }
        Ok(out)
    }

    /// Remember that `key` is unknown to the control plane until `now + ttl`, and drop its
    /// positive entry, both in one transaction.
    pub fn put_negative(
        &mut self,
        key: &PublicKey,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO negative (public_key, until) VALUES (?1, ?2)
             ON CONFLICT (public_key) DO UPDATE SET until = excluded.until",
        )?
        .execute(params![&key.0[..], unix_ms_after(now, ttl)])?;
        tx.prepare_cached("DELETE FROM peers WHERE public_key = ?1")?
            .execute([&key.0[..]])?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a negative entry for `key` is still alive at `now`.
    pub fn get_negative(&self, key: &PublicKey, now: SystemTime) -> Result<bool, StoreError> {
        let until: Option<i64> = self
            .conn
            .prepare_cached("SELECT until FROM negative WHERE public_key = ?1")?
            .query_row([&key.0[..]], |row| row.get(0))
            .optional()?;
        Ok(until.is_some_and(|until| until > unix_ms(now)))
    }

    /// Forget the negative entry for `key`. Returns whether there was one.
    pub fn remove_negative(&mut self, key: &PublicKey) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM negative WHERE public_key = ?1", [&key.0[..]])?;
        Ok(n > 0)
    }

    /// Delete negative entries that have expired at `now`. Returns how many.
    pub fn purge_expired_negative(&mut self, now: SystemTime) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM negative WHERE until <= ?1", [unix_ms(now)])?)
    }

    /// Delete the negative entries expired at `now`, then, beyond `cap` rows, the ones
    /// expiring soonest. Returns how many were deleted.
    pub fn purge_negative(&mut self, now: SystemTime, cap: usize) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let expired = tx.execute("DELETE FROM negative WHERE until <= ?1", [unix_ms(now)])?;
        let over = tx.execute(
            "DELETE FROM negative WHERE public_key IN (
                 SELECT public_key FROM negative ORDER BY until
                 LIMIT max(0, (SELECT count(*) FROM negative) - ?1))",
            [i64::try_from(cap).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(expired + over)
    }

    /// How many negative entries are stored (expired or not).
    pub fn negative_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM negative", [], |row| row.get(0))?)
    }

    /// Delete up to `limit` replay rows of keys without a positive entry: written for
    /// every initiation by older jitwgd versions, or left by keys since revoked. Returns how many.
    pub fn purge_orphan_replay(&mut self, limit: usize) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM replay WHERE public_key IN (
                 SELECT r.public_key FROM replay r
                 WHERE NOT EXISTS (SELECT 1 FROM peers p WHERE p.public_key = r.public_key)
                 LIMIT ?1)",
            [i64::try_from(limit).unwrap_or(i64::MAX)],
        )?)
    }

    /// How many replay rows are stored.
    pub fn replay_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM replay", [], |row| row.get(0))?)
    }

    /// The replay guard, atomically: if `timestamp` is strictly newer than the newest one
    /// stored for `key`, store it and answer `Fresh`; otherwise change nothing and answer
    /// `Replay`. An IMMEDIATE transaction takes the write lock before reading, so two
    /// connections cannot both accept the same timestamp.
    pub fn check_and_record_timestamp(
        &mut self,
        key: &PublicKey,
        timestamp: Timestamp,
    ) -> Result<ReplayVerdict, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stored: Option<Vec<u8>> = tx
            .prepare_cached("SELECT newest FROM replay WHERE public_key = ?1")?
            .query_row([&key.0[..]], |row| row.get(0))
            .optional()?;
        let stored = stored
            .map(|bytes| {
                <[u8; 12]>::try_from(bytes.as_slice())
                    .map(Timestamp)
                    .map_err(|_| StoreError::BadRow("replay timestamp is not 12 bytes".into()))
            })
            .transpose()?;
        let verdict = replay::judge(stored, timestamp);
        if verdict == ReplayVerdict::Fresh {
            tx.prepare_cached(
                "INSERT INTO replay (public_key, newest) VALUES (?1, ?2)
                 ON CONFLICT (public_key) DO UPDATE SET newest = excluded.newest",
            )?
            .execute(params![&key.0[..], &timestamp.0[..]])?;
            tx.commit()?;
        }
        Ok(verdict)
    }
}

/// A `peers` row as SQLite returns it, before validation.
struct RawPeer {
    public_key: Vec<u8>,
    allowed_ips: String,
    preshared_key: Option<Vec<u8>>,
    source: String,
    fetched_at: i64,
    expires_at: i64,
}

impl RawPeer {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawPeer> {
        Ok(RawPeer {
            public_key: row.get(0)?,
            allowed_ips: row.get(1)?,
            preshared_key: row.get(2)?,
            source: row.get(3)?,
            fetched_at: row.get(4)?,
            expires_at: row.get(5)?,
        })
    }

    fn decode(self) -> Result<CachedPeer, StoreError> {
        let preshared_key = match self.preshared_key {
            None => None,
            Some(bytes) => Some(
                <[u8; 32]>::try_from(bytes.as_slice())
                    .map_err(|_| StoreError::BadRow("preshared key is not 32 bytes".into()))?,
            ),
        };
        Ok(CachedPeer {
            config: PeerConfig {
                public_key: decode_key(&self.public_key)?,
                allowed_ips: decode_allowed_ips(&self.allowed_ips)?,
                preshared_key,
            },
            source: PeerSource::from_sql(&self.source)?,
            fetched_at: from_unix_ms(self.fetched_at),
            expires_at: from_unix_ms(self.expires_at),
        })
    }
}

fn decode_key(bytes: &[u8]) -> Result<PublicKey, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(PublicKey)
        .map_err(|_| StoreError::BadRow("public key is not 32 bytes".into()))
}

/// Allowed IPs are stored as one comma-separated text column: readable with `sqlite3`,
/// and always read and written together.
fn encode_allowed_ips(ips: &[IpNet]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_allowed_ips(text: &str) -> Result<Vec<IpNet>, StoreError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|part| {
            part.parse()
                .map_err(|_| StoreError::BadRow(format!("allowed IP {part:?} does not parse")))
        })
        .collect()
}

/// Unix milliseconds; times before 1970 clamp to 0 and times past year 292 million to
/// `i64::MAX`, so no input makes the conversion fail.
fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `now + ttl` in unix milliseconds, saturating (so `Duration::MAX` means "never").
fn unix_ms_after(now: SystemTime, ttl: Duration) -> i64 {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    unix_ms(now).saturating_add(ttl_ms)
}

fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Permissions {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(test)]
mod tests;
