//! What a run records for reproducing it: the packet capture beside results.json
//! (`jitwg run --capture`) and how the run was asked for (`jitwg rerun`).

use serde::{Deserialize, Serialize};

/// A run's packet capture (`jitwg run --capture`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// The pcapng, relative to the results file's directory.
    pub file: String,
    /// The WireGuard key log (private keys!), relative to the results file's directory.
    pub keylog: String,
    /// Private keys in the key log: the gateway's and every simulated client's.
    pub keys: u64,
    /// `--capture-limit` as given, e.g. `100000000 bytes`.
    pub limit: String,
    pub packets: u64,
    pub bytes: u64,
    /// The limit was reached: later packets are missing from the file.
    pub limit_reached: bool,
    /// Packets the kernel dropped before the capture read them.
    pub kernel_drops: u64,
}

impl CaptureInfo {
    /// The report's notice: both files exist, and the key log holds private keys.
    pub fn describe(&self) -> String {
        let cut = if self.limit_reached {
            format!(
                " The capture limit ({}) was reached: later packets are missing.",
                self.limit
            )
        } else {
            String::new()
        };
        let drops = if self.kernel_drops > 0 {
            format!(
                " The kernel dropped {} packets before the capture read them.",
                self.kernel_drops
            )
        } else {
            String::new()
        };
        format!(
            "Packet capture: {} ({} packets, {} bytes) and key log {}, which holds {} WireGuard \
             PRIVATE keys (the gateway's and every simulated client's; keep it private). Decrypt \
             the handshakes with `tshark -r {} -o wg.keylog_file:{}`.{cut}{drops}",
            self.file, self.packets, self.bytes, self.keylog, self.keys, self.file, self.keylog
        )
    }
}

/// How the run was asked for, so `jitwg rerun` can ask again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunInfo {
    /// The `--set` overrides as given (already applied in `run.resolved_scenario`).
    #[serde(default)]
    pub overrides: Vec<String>,
    /// jitwgd's settings as it resolved them for this run (`key` -> value).
    #[serde(default)]
    pub daemon_settings: std::collections::BTreeMap<String, String>,
    /// `--event-log` (or implied by `--capture`).
    #[serde(default)]
    pub event_log: bool,
    /// `--capture-limit` when the run captured, e.g. `50MB` or `20000`.
    #[serde(default)]
    pub capture_limit: Option<String>,
}
