//! The control plane's own peer registry: a SQLite database (WAL) mapping a peer's public key to the
//! document that `GET /v1/peers/{key}` returns. Synchronous on purpose; the HTTP layer calls it from
//! `spawn_blocking`.

use std::path::Path;

use base64::Engine;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// One peer as the API contract spells it. Strings on purpose: the JSON must round-trip exactly, and
/// allowed IPs are deliberately not validated (tests register bad ones to exercise the daemon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDoc {
    /// Standard base64 of the 32-byte public key.
    pub public_key: String,
    /// CIDR strings, passed through untouched.
    pub allowed_ips: Vec<String>,
    /// Standard base64 of a 32-byte preshared key, or null.
    pub preshared_key: Option<String>,
}

impl PeerDoc {
    /// Builds a document from raw key bytes (what the driver derives from its seed).
    pub fn new(
        public_key: &[u8; 32],
        allowed_ips: Vec<String>,
        preshared: Option<&[u8; 32]>,
    ) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        PeerDoc {
            public_key: b64.encode(public_key),
            allowed_ips,
            preshared_key: preshared.map(|k| b64.encode(k)),
        }
    }

    /// The lookup key: 64 lowercase hex characters of the public key.
    pub fn key_hex(&self) -> Result<String, StoreError> {
        Ok(hex::encode(decode_key(&self.public_key)?))
    }

    /// Checks the parts the API must be able to serve back (keys), not the allowed IPs.
    pub fn validate(&self) -> Result<(), StoreError> {
        decode_key(&self.public_key)?;
        if let Some(psk) = &self.preshared_key {
            decode_key(psk)?;
        }
        Ok(())
    }
}

fn decode_key(b64: &str) -> Result<[u8; 32], StoreError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| StoreError::BadKey(b64.to_owned()))?;
    bytes
        .try_into()
        .map_err(|_| StoreError::BadKey(b64.to_owned()))
}

/// True when `s` is exactly 64 lowercase hex characters (the contract's path format).
pub fn is_key_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored allowed_ips is not a JSON array")]
    Corrupt(#[from] serde_json::Error),
    #[error("key {0:?} is not standard base64 of 32 bytes")]
    BadKey(String),
}

/// The SQLite database behind the control plane.
pub struct PeerStore {
    conn: Connection,
}

impl PeerStore {
    /// Opens (creating if needed) the database at `path` in WAL mode.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS peers (
                key_hex TEXT PRIMARY KEY NOT NULL,
                public_key TEXT NOT NULL,
                allowed_ips TEXT NOT NULL,
                preshared_key TEXT
            );",
        )?;
        Ok(PeerStore { conn })
    }

    /// Registers or replaces every document in one transaction. Returns the documents that are new or
    /// changed (those are the ones push mode publishes). Fails as a whole if any key is malformed.
    pub fn upsert_many(&mut self, docs: &[PeerDoc]) -> Result<Vec<PeerDoc>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut changed = Vec::new();
        {
            let mut select = tx.prepare_cached(
                "SELECT public_key, allowed_ips, preshared_key FROM peers WHERE key_hex = ?1",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT OR REPLACE INTO peers (key_hex, public_key, allowed_ips, preshared_key)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for doc in docs {
                doc.validate()?;
                let key_hex = doc.key_hex()?;
                let old = select
                    .query_row(params![key_hex], row_to_raw)
                    .optional()?
                    .map(raw_to_doc)
                    .transpose()?;
                if old.as_ref() == Some(doc) {
                    continue;
                }
                let ips = serde_json::to_string(&doc.allowed_ips)?;
                upsert.execute(params![key_hex, doc.public_key, ips, doc.preshared_key])?;
                changed.push(doc.clone());
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The document for a key given as 64 lowercase hex characters.
    pub fn get(&self, key_hex: &str) -> Result<Option<PeerDoc>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT public_key, allowed_ips, preshared_key FROM peers WHERE key_hex = ?1",
        )?;
        stmt.query_row(params![key_hex], row_to_raw)
            .optional()?
            .map(raw_to_doc)
            .transpose()
    }

    /// Revokes a peer. Returns whether it existed.
    pub fn delete(&self, key_hex: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM peers WHERE key_hex = ?1", params![key_hex])?;
        Ok(n > 0)
    }

    /// Number of registered peers.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM peers", [], |r| r.get::<_, i64>(0))?
            .max(0) as u64)
    }
}

type RawRow = (String, String, Option<String>);

fn row_to_raw(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn raw_to_doc((public_key, ips, preshared_key): RawRow) -> Result<PeerDoc, StoreError> {
    Ok(PeerDoc {
        public_key,
        allowed_ips: serde_json::from_str(&ips)?,
        preshared_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(byte: u8) -> PeerDoc {
        PeerDoc::new(&[byte; 32], vec![format!("100.64.0.{byte}/32")], None)
    }

    #[test]
    fn upsert_get_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PeerStore::open(&dir.path().join("cp.db")).unwrap();
        let d = doc(7);
        assert_eq!(
            store.upsert_many(std::slice::from_ref(&d)).unwrap(),
            vec![d.clone()]
        );
        // Unchanged re-registration is not "new" (push mode would not republish it).
        assert!(store
            .upsert_many(std::slice::from_ref(&d))
            .unwrap()
            .is_empty());
        let key = d.key_hex().unwrap();
        assert_eq!(store.get(&key).unwrap(), Some(d));
        assert!(store.delete(&key).unwrap());
        assert_eq!(store.get(&key).unwrap(), None);
        assert!(!store.delete(&key).unwrap());
    }

    #[test]
    fn malformed_key_rejects_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PeerStore::open(&dir.path().join("cp.db")).unwrap();
        let bad = PeerDoc {
            public_key: "not base64!".into(),
            allowed_ips: vec![],
            preshared_key: None,
        };
        assert!(store.upsert_many(&[doc(1), bad]).is_err());
        assert_eq!(store.count().unwrap(), 0);
    }

    #[test]
    fn key_hex_format() {
        assert!(is_key_hex(&"ab".repeat(32)));
        assert!(!is_key_hex(&"AB".repeat(32)));
        assert!(!is_key_hex(&"ab".repeat(31)));
        assert!(!is_key_hex(&"zz".repeat(32)));
    }
}
