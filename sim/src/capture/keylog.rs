//! Wireshark's WireGuard key log (`wg.keylog_file`): one `LOCAL_STATIC_PRIVATE_KEY = <base64>`
//! line per key. Given the responder's static private key, Wireshark decrypts an initiation's
//! static key and timestamp; the gateway's key covers the clients' initiations, each client's
//! covers the gateway's role-inversion initiations to it. The file holds private keys: it is
//! created with mode 0600.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::CaptureError;

/// The keys of one run: the gateway's, then every simulated client's.
#[derive(Clone, Default)]
pub struct KeyLog {
    keys: Vec<[u8; 32]>,
}

impl std::fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys.
        write!(f, "KeyLog({} keys)", self.keys.len())
    }
}

impl KeyLog {
    pub fn new(gateway: [u8; 32], clients: impl IntoIterator<Item = [u8; 32]>) -> KeyLog {
        KeyLog {
            keys: std::iter::once(gateway).chain(clients).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.keys.len() * 72);
        for key in &self.keys {
            out.push_str("LOCAL_STATIC_PRIVATE_KEY = ");
            out.push_str(&BASE64.encode(key));
            out.push('\n');
        }
        out
    }

    /// Writes the file with mode 0600 (and makes an existing file 0600 too).
    pub fn write(&self, path: &Path) -> Result<(), CaptureError> {
        let create = |source| CaptureError::Create {
            path: path.to_path_buf(),
            source,
        };
        crate::private_file::write(path, self.render().as_bytes(), 0o600).map_err(create)
    }
}

/// The private keys in a key log's text (lines of other kinds are skipped).
pub fn parse(text: &str) -> Vec<[u8; 32]> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name.trim() == "LOCAL_STATIC_PRIVATE_KEY").then_some(())?;
            let bytes = BASE64.decode(value.trim()).ok()?;
            bytes.try_into().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn gateway_first_then_clients_one_line_each() {
        let log = KeyLog::new([1; 32], [[2; 32], [3; 32]]);
        let text = log.render();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(
            text.lines().next(),
            Some("LOCAL_STATIC_PRIVATE_KEY = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=")
        );
        assert_eq!(parse(&text), vec![[1; 32], [2; 32], [3; 32]]);
        assert_eq!(format!("{log:?}"), "KeyLog(3 keys)");
    }

    #[test]
    fn parse_skips_other_lines() {
        let text = "# comment\nLOCAL_EPHEMERAL_PRIVATE_KEY = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\nLOCAL_STATIC_PRIVATE_KEY = short\n";
        assert!(parse(text).is_empty());
    }

    #[test]
    fn file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.keylog");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        KeyLog::new([9; 32], []).write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            parse(&std::fs::read_to_string(&path).unwrap()),
            vec![[9; 32]]
        );
    }
}
