//! The database schema as an ordered list of migrations, and the loop that brings a
//! database up to date. `PRAGMA user_version` counts the migrations applied; each one runs
//! in its own transaction together with the version bump, so a crash leaves the database
//! at one version or the next, never in between.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` takes the schema from version `i` to version `i + 1`. Append only: never
/// edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: the positive cache (also the set of stored peers for preload boot and push mode),
    // the negative cache, and the replay guard's newest timestamp per key.
    // Times are unix milliseconds. Keys are raw 32-byte blobs.
    "CREATE TABLE peers (
        public_key    BLOB PRIMARY KEY NOT NULL CHECK (length(public_key) = 32),
        allowed_ips   TEXT NOT NULL,
        preshared_key BLOB CHECK (preshared_key IS NULL OR length(preshared_key) = 32),
        source        TEXT NOT NULL CHECK (source IN ('api', 'push')),
        fetched_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX peers_by_expiry ON peers (expires_at);
    CREATE TABLE negative (
        public_key BLOB PRIMARY KEY NOT NULL CHECK (length(public_key) = 32),
        until      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX negative_by_until ON negative (until);
    CREATE TABLE replay (
        public_key BLOB PRIMARY KEY NOT NULL CHECK (length(public_key) = 32),
        newest     BLOB NOT NULL CHECK (length(newest) = 12)
    ) WITHOUT ROWID;",
    // 2: when each peer was last seen active (a handshake, or its install) and from which
    // endpoint, so boot can re-install recently active peers and initiate to them. Kept
    // apart from `peers` (a cache refresh must not forget activity); read joined with it,
    // so a revoked or forgotten peer is never re-installed. Rows older than the
    // re-install window are pruned by the sweep that writes them.
    "CREATE TABLE activity (
        public_key BLOB PRIMARY KEY NOT NULL CHECK (length(public_key) = 32),
        endpoint   TEXT NOT NULL,
        seen_at    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX activity_by_seen ON activity (seen_at);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Apply every migration the database has not seen yet.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = index as u32 + 1;
        let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()
        };
        apply(conn).map_err(|source| StoreError::Migration { version, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_reaches_current_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
    }

    #[test]
    fn version_1_database_gains_the_activity_table_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO peers VALUES (zeroblob(32), '100.64.0.2/32', NULL, 'api', 0, 10)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
        let peers: u32 = conn
            .query_row("SELECT count(*) FROM peers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(peers, 1);
        conn.execute(
            "INSERT INTO activity VALUES (zeroblob(32), '198.18.0.2:51820', 5)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }
}
