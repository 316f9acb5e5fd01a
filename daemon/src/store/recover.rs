//! What jitwgd does when its database is damaged: `open_checked` opens it (the open
//! runs `PRAGMA quick_check`), and when the file is corrupt either refuses to start or
//! moves the damaged files aside (`NAME.corrupt-UNIXTIME`, with its -wal and -shm) and
//! starts with an empty database. In jit mode the database is a cache: positive entries
//! are fetched again on the next knock, negative ones on the next 404, and the durable
//! replay guard restarts from the in-memory one. What is lost is the re-install list of
//! active peers (they reconnect on WireGuard's own timers) and, in push mode, the pushed
//! peers themselves, which is why `refuse` exists.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::ErrorCode;

use super::{Store, StoreError};
use crate::config::DbCorruption;

/// How the database was opened.
#[derive(Debug)]
pub enum Recovered {
    /// It passed its check.
    Healthy,
    /// It was corrupt and moved aside to `to`; the store is a new, empty one.
    MovedAside { to: PathBuf, cause: StoreError },
}

/// Open `path`, answering corruption with `policy` (see the module docs).
pub fn open_checked(path: &Path, policy: DbCorruption) -> Result<(Store, Recovered), StoreError> {
    let cause = match Store::open(path) {
        Ok(store) => return Ok((store, Recovered::Healthy)),
        Err(e) if is_corruption(&e) => e,
        Err(e) => return Err(e),
    };
    if policy == DbCorruption::Refuse {
        return Err(StoreError::CorruptRefused {
            path: path.to_owned(),
            source: Box::new(cause),
        });
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let to = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if !from.exists() {
            continue;
        }
        let dest = PathBuf::from(format!("{}{suffix}", to.display()));
        std::fs::rename(&from, &dest).map_err(|source| StoreError::MoveAside {
            path: from.clone(),
            source,
        })?;
    }
    let store = Store::open(path)?;
    Ok((store, Recovered::MovedAside { to, cause }))
}

/// Whether `e` says the file is damaged (as opposed to unreadable, locked, too new).
pub fn is_corruption(e: &StoreError) -> bool {
    let sqlite = match e {
        StoreError::Corrupt(_) => return true,
        StoreError::Sqlite(e) => e,
        StoreError::Open { source, .. } | StoreError::Migration { source, .. } => source,
        _ => return false,
    };
    matches!(
        sqlite.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PublicKey;
    use std::time::Duration;

    fn damaged(dir: &Path) -> PathBuf {
        let path = dir.join("peers.db");
        {
            let mut store = Store::open(&path).unwrap();
            store
                .put_negative(&PublicKey([3; 32]), UNIX_EPOCH, Duration::from_secs(60))
                .unwrap();
        }
        // Overwrite the header and the first pages: "file is not a database".
        let mut bytes = std::fs::read(&path).unwrap();
        for b in bytes.iter_mut().take(4096) {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_healthy_database_opens_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.db");
        drop(Store::open(&path).unwrap());
        let (_, how) = open_checked(&path, DbCorruption::Refuse).unwrap();
        assert!(matches!(how, Recovered::Healthy));
    }

    #[test]
    fn a_corrupt_database_is_refused_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = damaged(dir.path());
        let before = std::fs::read(&path).unwrap();
        let Err(err) = open_checked(&path, DbCorruption::Refuse) else {
            panic!("a corrupt database opened");
        };
        assert!(matches!(err, StoreError::CorruptRefused { .. }), "{err:?}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_corrupt_database_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = damaged(dir.path());
        let (store, how) = open_checked(&path, DbCorruption::MoveAside).unwrap();
        let Recovered::MovedAside { to, .. } = how else {
            panic!("not moved aside: {how:?}");
        };
        assert!(to.exists());
        assert_eq!(store.negative_count().unwrap(), 0);
        store.integrity_check().unwrap();
    }
}
