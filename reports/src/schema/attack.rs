//! What an attacking population (a flood or a replay) did in a run, kept apart from the
//! clients: attackers are never clients, so a flood can never count as failed clients.

use serde::{Deserialize, Serialize};

/// One attacking population's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttackResult {
    /// Population name.
    pub population: String,
    /// `flood-fresh`, `flood-registered`, `flood-unregistered`, `flood-junk` or `replay`.
    pub kind: String,
    /// Distinct source addresses, and the /24s (IPv4) or /64s (IPv6) they lie in.
    pub sources: u32,
    pub subnets: u32,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// What the scenario asked for.
    pub packets_planned: u64,
    pub target_rate: f64,
    /// What the driver sent, and `send_to` calls that failed.
    pub packets_sent: u64,
    pub send_errors: u64,
    /// Packets per second between the first and last packet; `None` for fewer than two.
    pub achieved_rate: Option<f64>,
    pub first_sent_ms: Option<f64>,
    pub last_sent_ms: Option<f64>,
    /// Most packets due but not yet sent at once: the sender's own lag, in packets.
    pub max_behind: u64,
    /// Control-plane lookups of this attack's keys (`None`: its keys are not its own, as for
    /// junk and replays of clients' keys).
    pub api_calls: Option<u64>,
    /// Distinct keys of this attack the control plane was asked about.
    pub api_keys: Option<u64>,
    /// Initiations captured from clients (replay only).
    pub captured: Option<u64>,
    /// Time to build the packets before the run (ms).
    pub build_ms: Option<f64>,
}
