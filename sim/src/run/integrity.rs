//! After a run that killed or rebooted the gateway: SQLite's own `PRAGMA quick_check` of
//! jitwgd's database, read-only beside the running daemon (WAL readers see a consistent
//! snapshot), so a scenario can expect its state to have survived every `kill -9`.

use std::path::Path;

/// `"ok"`, or what `quick_check` (or opening the file) reported.
pub fn quick_check(db: &Path) -> String {
    let check = || -> rusqlite::Result<String> {
        let conn =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let lines: Vec<String> = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<_, _>>()?;
        Ok(lines.join("; "))
    };
    check().unwrap_or_else(|e| format!("error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_database_is_ok_and_garbage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.db");
        let conn = rusqlite::Connection::open(&good).unwrap();
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(conn);
        assert_eq!(quick_check(&good), "ok");
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, vec![0x5a; 8192]).unwrap();
        assert_ne!(quick_check(&bad), "ok");
    }
}
