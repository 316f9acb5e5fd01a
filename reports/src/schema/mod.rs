//! The versioned results file: what a run measured, written by the driver and read by every report.
//!
//! All times are milliseconds (`f64`) relative to the run start unless a field's name says otherwise
//! (`started_at_unix_ms`). The file is JSON; [`load`] reads every supported version and migrates older
//! shapes to the current one, and refuses newer versions it does not know.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod attack;
pub use attack::AttackResult;
mod repro;
pub use repro::{CaptureInfo, RerunInfo};

/// The schema version this crate writes. Bump it when a field changes meaning or shape, and add a
/// migration step in [`migrate`].
pub const SCHEMA_VERSION: u32 = 2;

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Always [`SCHEMA_VERSION`] after [`load`]; older files are migrated.
    pub schema_version: u32,
    pub run: RunInfo,
    pub clients: Vec<ClientResult>,
    /// One per second (at least): the gateway's state over time.
    pub samples: Vec<Sample>,
    /// Marks on the timeline (reboots, outages) that charts draw as lines or bands.
    pub events: Vec<Event>,
    pub api: ApiSummary,
    pub processes: Vec<ProcessUsage>,
    /// Present only for runs whose scenario reboots the gateway.
    pub reload: Option<Reload>,
    /// Filled after the run by evaluating the scenario's `[expect]` table; empty before.
    #[serde(default)]
    pub expectations: Vec<ExpectationResult>,
    /// How the load generator kept up (`load::assess`); `None` in files from before it existed.
    #[serde(default)]
    pub load: Option<crate::load::LoadSummary>,
    /// `jitwg run --capture`: the packet capture and key log beside this file.
    #[serde(default)]
    pub capture: Option<CaptureInfo>,
    /// What `jitwg rerun` needs beyond `run.resolved_scenario`; `None` in older files.
    #[serde(default)]
    pub rerun: Option<RerunInfo>,
    /// Attacking populations (floods, replays): never among `clients`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attacks: Vec<AttackResult>,
    /// jitwgd's `jitwgd_initiations_dropped_total` by `reason`, summed over restarts; empty
    /// when the daemon does not export it (or dropped nothing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub initiations_dropped: BTreeMap<String, u64>,
    /// SQLite's `quick_check` of jitwgd's database at the end of a run that killed or rebooted
    /// the gateway: `"ok"`, or what it found. `None`: not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_db_integrity: Option<String>,
    /// Time jitwgd spent in each JIT stage (`identify`, `lookup`, `install`; its
    /// `jitwgd_stage_seconds` histogram), summed over daemon restarts. Empty: not measured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_time: BTreeMap<String, StageTime>,
    /// The gateway's UDP counters at the end of the run; `None`: not measured (older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_udp: Option<GatewayUdp>,
}

/// The UDP counters of the gateway's network namespace (its `/proc/net/snmp`; in a sharded
/// run's host mode, the host's), cumulative from the namespace's creation to the run's end.
/// Datagrams the gateway's own kernel dropped are invisible to jitwgd and to the data plane:
/// a handshake response dropped here waits for a 5 s retransmit, whatever the daemon does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayUdp {
    /// Datagrams delivered to a socket (the data plane's, jitwgd's).
    pub in_datagrams: u64,
    /// Datagrams dropped because the receiving socket's buffer was full: its reader (in a
    /// storm, the data plane) fell behind.
    pub rcvbuf_errors: u64,
    /// Every datagram dropped on receive (`rcvbuf_errors` included).
    pub in_errors: u64,
}

/// Time spent in one daemon stage over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// Seconds spent in the stage (wall time, summed over every observation).
    pub seconds: f64,
    /// Observations: initiations identified, lookups done, install batches written.
    pub count: u64,
    /// CPU seconds of the thread that ran it (`identify`, `install`; a lookup spans async
    /// tasks); `None` from a daemon without `jitwgd_stage_cpu_seconds_total`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

impl Results {
    /// An empty result set for `run`, at the current schema version: the driver fills the rest.
    pub fn new(run: RunInfo) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            run,
            clients: Vec::new(),
            samples: Vec::new(),
            events: Vec::new(),
            api: ApiSummary::default(),
            processes: Vec::new(),
            reload: None,
            expectations: Vec::new(),
            load: None,
            attacks: Vec::new(),
            initiations_dropped: BTreeMap::new(),
            daemon_db_integrity: None,
            stage_time: BTreeMap::new(),
            gateway_udp: None,
            capture: None,
            rerun: None,
        }
    }

    /// Pretty JSON, the on-disk form.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Parses any supported version from JSON text (pure; [`load`] adds the file read).
    pub fn from_json(text: &str) -> Result<Self, LoadError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| LoadError::Parse { source })?;
        let value = migrate(value)?;
        serde_json::from_value(value).map_err(|source| LoadError::Parse { source })
    }
}

/// What ran, where, and with which settings: enough to reproduce it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Unique per run (e.g. scenario name plus start time).
    pub id: String,
    pub scenario_name: String,
    /// Path of the scenario TOML as given to the driver.
    pub scenario_file: String,
    /// The seed that reproduces client keys, addresses and arrival times.
    pub seed: u64,
    /// Wall-clock start, the origin of every `*_ms` time in the file.
    pub started_at_unix_ms: u64,
    pub duration_ms: f64,
    /// The scenario after defaults and expansion, as the driver used it.
    pub resolved_scenario: serde_json::Value,
    pub tool: ToolInfo,
    /// `"jit"` or `"push"`.
    pub mode: String,
    /// `"jit"` or `"preload"`.
    pub boot: String,
    /// Data-plane backend, e.g. `"userspace"` or `"kernel"`.
    pub backend: String,
    /// Whether the gateway initiates back to a knocking peer at install time.
    pub initiate: bool,
    /// A peer is stale when installed with no handshake within this many ms (or never).
    pub stale_threshold_ms: f64,
    /// The CPUs gateway and driver were confined to (`[lab] cpus`); `None`: they shared every
    /// CPU (split `off`, one CPU, or a file from before the split existed).
    #[serde(default)]
    pub cpu_split: Option<CpuSplitInfo>,
    /// What a reader must know about how the run was measured (e.g. the split was off on one CPU).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The shards of a sharded run (`jitwg merge`), in index order; empty for a run on one
    /// machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<crate::shards::ShardInfo>,
    /// Setup latency of a sharded run from the shards' merged HDR histograms; `None` unless
    /// merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_setup: Option<crate::shards::MergedSetup>,
    /// Distinct source addresses the clients sent from (a sharded run: the sum over its
    /// shards). wireguard-go under load answers 20 handshakes/s per source address, so few
    /// addresses can throttle a storm; `warnings` says when that could bind. `None`: not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addresses: Option<u64>,
}

/// Where gateway and driver ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSplitInfo {
    /// CPU list (kernel syntax, `0-1,3`) of jitwgd and wireguard-go.
    pub gateway: String,
    /// CPU list of the driver: fleet, control plane, NATS, sampling.
    pub driver: String,
    /// `cgroup2`, `cgroup1` (cpuset cgroups) or `affinity` (sched_setaffinity).
    pub mechanism: String,
}

/// Versions of the software and the machine a run measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub jitwg_version: String,
    pub wireguard_go_version: Option<String>,
    pub kernel: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// One simulated client and every connection it attempted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientResult {
    pub id: u32,
    /// The scenario population this client belongs to.
    pub population: String,
    pub connections: Vec<Connection>,
}

/// One connection attempt: from the first initiation sent to a proven session (or giving up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// When the arrival process meant the connection to start (the client's planned start, or
    /// the end of its planned gap for a return); `None` in files from before it was recorded.
    #[serde(default)]
    pub scheduled_ms: Option<f64>,
    /// When the first initiation was sent.
    pub started_ms: f64,
    /// Time to a usable session (one echo through the tunnel); `None` means the attempt failed.
    pub setup_latency_ms: Option<f64>,
    pub handshake_attempts: u32,
    pub cookies_received: u32,
    /// Why the attempt failed, when it did.
    pub failure: Option<String>,
}

impl Connection {
    /// Whether the attempt ended with a usable session.
    pub fn connected(&self) -> bool {
        self.setup_latency_ms.is_some()
    }
}

/// The gateway's state at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub t_ms: f64,
    /// Peers configured on the data plane.
    pub installed_peers: u64,
    /// Stale installed peers: the last handshake is older than the stale threshold, or there
    /// was none and the peer was installed longer ago than the threshold. Its install time is
    /// when it first appeared on the data plane: the first sample that showed it (preinstalled
    /// and adopted peers count from the first sample). A peer that is merely new is not stale.
    /// (Version 1 files counted every peer without a handshake, however new.)
    pub stale_peers: u64,
    /// Installed peers that have never completed a handshake, however new. `None`: not
    /// measured (files before version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_handshaked_peers: Option<u64>,
    /// Clients holding a usable session.
    pub connected_clients: u64,
    /// Clients that sent an initiation and have no session yet.
    pub in_flight: u64,
    /// Control-plane requests so far (cumulative).
    pub api_calls_total: u64,
    /// Daemon lookups so far, by outcome (e.g. `cache_hit`, `api_found`, `api_not_found`, `api_error`); cumulative.
    #[serde(default)]
    pub lookups: BTreeMap<String, u64>,
    /// Resource use so far of each process (daemon, data plane, driver, nats): CPU seconds
    /// used up to this instant (summed across restarts) and peak RSS up to this instant.
    /// Absent in files written before it was recorded.
    #[serde(default)]
    pub processes: Vec<ProcessUsage>,
}

/// A mark on the run's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub t_ms: f64,
    pub kind: EventKind,
    pub detail: String,
}

/// What happened at an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RebootStart,
    DaemonReady,
    /// Version 1 files only: every client that attempted again after a reboot was up.
    AllReconnected,
    /// Every client that had a working tunnel before the reboot passed traffic again.
    Recovered,
    ApiOutageStart,
    ApiOutageEnd,
    DaemonRestart,
    RunEnd,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::RebootStart => "reboot",
            EventKind::DaemonReady => "daemon ready",
            EventKind::AllReconnected => "all reconnected",
            EventKind::Recovered => "all recovered",
            EventKind::ApiOutageStart => "API outage start",
            EventKind::ApiOutageEnd => "API outage end",
            EventKind::DaemonRestart => "daemon restart",
            EventKind::RunEnd => "run end",
        })
    }
}

/// What the control plane served, and what jitwgd says it sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiSummary {
    /// Lookups that arrived at the control plane, counted on arrival (files written before
    /// arrival counting counted only answered ones, so they miss requests that hung past the
    /// daemon's timeout).
    pub calls_total: u64,
    /// Requests per peer key (64 lowercase hex characters).
    pub per_key: BTreeMap<String, u64>,
    /// How each arrival ended; sums to `calls_total`. Keys: an HTTP status (`"200"`, `"404"`,
    /// `"503"`, ...) for answered requests; [`BY_STATUS_ABORTED`] for requests whose client went
    /// away before the answer (its timeout fired, or it was killed); [`BY_STATUS_PENDING`] for
    /// requests still unanswered when the run ended (held by an outage in `hang` mode or by
    /// injected latency).
    pub by_status: BTreeMap<String, u64>,
    /// Requests jitwgd counted as sent (`jitwgd_api_requests_total`, all outcomes, retries
    /// included), summed over daemon restarts: each incarnation counts from its last scrape
    /// before it stopped. `None`: not measured (files written before it was recorded, or no scrape
    /// of jitwgd's `/metrics` succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_by_daemon: Option<u64>,
    /// `sent_by_daemon` by outcome: `ok`, `not_found`, `error`, `timeout`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sent_by_daemon_by_outcome: BTreeMap<String, u64>,
}

/// `ApiSummary::by_status` key of requests whose client went away before the answer.
pub const BY_STATUS_ABORTED: &str = "aborted";
/// `ApiSummary::by_status` key of requests still unanswered at the end of the run.
pub const BY_STATUS_PENDING: &str = "pending";

/// Resource use of one process over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// `"daemon"`, `"dataplane"`, `"driver"` or `"nats"`.
    pub name: String,
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// The reload after a gateway reboot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// When the daemon was started again.
    pub reboot_at_ms: f64,
    /// From daemon start to ready (listening and all boot-time peers installed); `None` if never ready.
    pub ready_after_ms: Option<f64>,
    /// Peers installed when the daemon reported ready (its `jitwgd_installed_peers` gauge read
    /// right after `/ready` first answered); 0 for a JIT boot onto an emptied data plane.
    pub peers_at_boot: u64,
    /// Peers the daemon's database held just before the daemon started again (rows counted in
    /// its SQLite store). `None`: not measured (files before version 2, or the database could
    /// not be read).
    #[serde(default)]
    pub stored_peers: Option<u64>,
    /// When the reboot (or restart) began, ms into the run; the origin of `recovery_*`.
    #[serde(default)]
    pub reboot_start_ms: f64,
    /// Recovery time: from the reboot until every client that had a working tunnel just before
    /// it (an echo reply within [`RECOVERY_WINDOW_MS`] before the reboot) got an echo reply
    /// again. Seen by clients with continuous traffic. `None`: not measured (no such client,
    /// one of them never passed traffic again, or a file before version 2).
    #[serde(default)]
    pub recovery_after_ms: Option<f64>,
    /// Per-client recovery (reboot to that client's first echo reply after it), p50 and p99
    /// (nearest rank) over the clients that recovered.
    #[serde(default)]
    pub recovery_p50_ms: Option<f64>,
    #[serde(default)]
    pub recovery_p99_ms: Option<f64>,
    /// Clients that had a working tunnel just before the reboot, and how many of them passed
    /// traffic again before the run ended.
    #[serde(default)]
    pub recovery_clients: u64,
    #[serde(default)]
    pub recovered_clients: u64,
}

/// A client "had a working tunnel just before the reboot" when it received an echo reply
/// within this many ms before the reboot began.
pub const RECOVERY_WINDOW_MS: f64 = 1000.0;

/// A comparison operator of an expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
}

impl CompareOp {
    /// The operator as written in a scenario.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Eq => "==",
        }
    }

    /// Whether `measured OP threshold` holds. `==` allows a relative error of 1e-9 so values that went
    /// through unit conversions still compare equal.
    pub fn holds(self, measured: f64, threshold: f64) -> bool {
        match self {
            CompareOp::Lt => measured < threshold,
            CompareOp::Le => measured <= threshold,
            CompareOp::Gt => measured > threshold,
            CompareOp::Ge => measured >= threshold,
            CompareOp::Eq => {
                (measured - threshold).abs() <= 1e-9 * measured.abs().max(threshold.abs()).max(1.0)
            }
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// One evaluated expectation: the CI gate's verdict on one figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectationResult {
    /// As written in the scenario, e.g. `setup_p99 <= 50ms`.
    pub expr: String,
    /// Figure name from the registry (`figures::figure`).
    pub figure: String,
    pub op: CompareOp,
    /// In the figure's base unit (ms, ratio, count, bytes, seconds).
    pub threshold: f64,
    /// `None` when the run could not measure the figure: that is a breach.
    pub measured: Option<f64>,
    pub passed: bool,
    /// A timing figure on a run whose load generator saturated: whatever was measured, the
    /// expectation did not count and `passed` is false (`expect::evaluate`).
    #[serde(default)]
    pub inconclusive: bool,
}

/// Why a results file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read results file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("results file is not valid JSON of the expected shape")]
    Parse {
        #[source]
        source: serde_json::Error,
    },
    #[error("results file has schema_version {found}, but this jitwg supports versions 0 to {supported}: use a newer jitwg to read it")]
    UnsupportedVersion { found: u64, supported: u32 },
    #[error("results file has an invalid schema_version field: {found}")]
    InvalidVersion { found: String },
    #[error("cannot migrate results file from schema_version {from}: {reason}")]
    Migrate { from: u32, reason: String },
}

/// Why a results file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("cannot serialize results")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot write results file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a results file of any supported version, migrating it to the current shape.
pub fn load(path: impl AsRef<Path>) -> Result<Results, LoadError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Results::from_json(&text)
}

/// Writes `results` as pretty JSON.
pub fn save(results: &Results, path: impl AsRef<Path>) -> Result<(), SaveError> {
    let path = path.as_ref();
    let text = results.to_json()?;
    std::fs::write(path, text).map_err(|source| SaveError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Brings a parsed results document of any supported version to [`SCHEMA_VERSION`].
///
/// Version 0 (files written before the field existed, so `schema_version` is absent or 0) stored
/// setup latency as integer microseconds in `setup_latency_us` and had no `expectations`.
fn migrate(mut value: serde_json::Value) -> Result<serde_json::Value, LoadError> {
    let version = match value.get("schema_version") {
        None | Some(serde_json::Value::Null) => 0,
        Some(v) => v.as_u64().ok_or_else(|| LoadError::InvalidVersion {
            found: v.to_string(),
        })?,
    };
    if version > u64::from(SCHEMA_VERSION) {
        return Err(LoadError::UnsupportedVersion {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 {
        migrate_v0_to_v1(&mut value)?;
    }
    if version <= 1 {
        migrate_v1_to_v2(&mut value)?;
    }
    Ok(value)
}

/// Version 1 had `reload.all_reconnected_after_ms`: from daemon start until every client that
/// *attempted again* after the reboot was up, so it measured the clients' own return schedule.
/// It is dropped, not renamed: a version-1 file has no recovery time ("not measured").
/// Version 1's `stale_peers` counted every peer without a handshake (however new); it is kept
/// as written, and `never_handshaked_peers` stays absent.
fn migrate_v1_to_v2(value: &mut serde_json::Value) -> Result<(), LoadError> {
    let root = value.as_object_mut().ok_or_else(|| LoadError::Migrate {
        from: 1,
        reason: "top level is not an object".into(),
    })?;
    if let Some(reload) = root.get_mut("reload").and_then(|r| r.as_object_mut()) {
        reload.remove("all_reconnected_after_ms");
        if let Some(at) = reload.get("reboot_at_ms").cloned() {
            reload.entry("reboot_start_ms").or_insert(at);
        }
    }
    root.insert("schema_version".into(), serde_json::json!(SCHEMA_VERSION));
    Ok(())
}

fn migrate_v0_to_v1(value: &mut serde_json::Value) -> Result<(), LoadError> {
    let bad = |reason: &str| LoadError::Migrate {
        from: 0,
        reason: reason.to_string(),
    };
    let root = value
        .as_object_mut()
        .ok_or_else(|| bad("top level is not an object"))?;
    if let Some(clients) = root.get_mut("clients") {
        let clients = clients
            .as_array_mut()
            .ok_or_else(|| bad("`clients` is not an array"))?;
        for client in clients {
            let Some(connections) = client.get_mut("connections") else {
                continue;
            };
            let connections = connections
                .as_array_mut()
                .ok_or_else(|| bad("`connections` is not an array"))?;
            for connection in connections {
                let connection = connection
                    .as_object_mut()
                    .ok_or_else(|| bad("a connection is not an object"))?;
                let ms = match connection.remove("setup_latency_us") {
                    None | Some(serde_json::Value::Null) => serde_json::Value::Null,
                    Some(us) => {
                        let us = us
                            .as_f64()
                            .ok_or_else(|| bad("`setup_latency_us` is not a number"))?;
                        serde_json::json!(us / 1000.0)
                    }
                };
                connection.entry("setup_latency_ms").or_insert(ms);
            }
        }
    }
    root.entry("expectations")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    root.insert("schema_version".into(), serde_json::json!(SCHEMA_VERSION));
    Ok(())
}

#[cfg(test)]
mod tests;
