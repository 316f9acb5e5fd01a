//! What a scenario TOML file says, exactly as written (stage one of two): serde
//! types that reject unknown keys, so a typo fails validation instead of silently
//! running a different experiment. Defaults live here, meaning lives in `resolve`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole file. Every table is optional except `name` and at least one
/// `[[population]]` (checked in `resolve`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Short name: used in the output directory and the report title.
    pub name: String,
    /// Seeds client keys, arrival times and link randomness; `--seed` overrides it.
    #[serde(default)]
    pub seed: u64,
    /// Which WireGuard data plane the gateway drives.
    #[serde(default)]
    pub backend: BackendName,
    /// How long the run lasts from the moment the first client may start.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// An installed peer without a handshake for this long counts as stale.
    #[serde(with = "humantime_serde", default = "default_stale_threshold")]
    pub stale_threshold: Duration,
    /// How often the driver samples the data plane (installed and stale peers), the
    /// daemon's metrics and process usage. Each sample dumps every installed peer, so
    /// with tens of thousands installed a longer interval keeps the driver's own load
    /// off what it measures.
    #[serde(with = "humantime_serde", default = "default_sample_every")]
    pub sample_every: Duration,
    /// Synthetic peers put into the data plane before jitwgd starts: random keys, one
    /// `/32` each after the clients' tunnel addresses, never registered and never
    /// connecting. jitwgd adopts them as installed (as after a restart with the data
    /// plane kept) and evicts them `evict_after` later, so first contacts are measured
    /// with this many peers already installed.
    #[serde(default)]
    pub preinstalled_peers: u32,
    #[serde(default)]
    pub daemon: DaemonFile,
    #[serde(default)]
    pub control_plane: ControlPlaneFile,
    #[serde(default, rename = "population")]
    pub populations: Vec<PopulationFile>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventFile>,
    /// figure = "op threshold", e.g. `setup_p99_ms = "< 500"`.
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
}

fn default_stale_threshold() -> Duration {
    Duration::from_secs(180)
}

fn default_sample_every() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    #[default]
    Userspace,
    Kernel,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    /// Pull each peer on its first initiation (the design under test).
    #[default]
    Jit,
    /// Legacy baseline: the control plane pushes every new peer over NATS.
    Push,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootName {
    /// Start with an empty interface; ready at once.
    #[default]
    Jit,
    /// Install every stored peer before reporting ready (legacy).
    Preload,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    #[default]
    On,
    Off,
}

/// `[daemon]`: passed to jitwgd through its config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    #[serde(default)]
    pub mode: ModeName,
    #[serde(default)]
    pub boot: BootName,
    #[serde(with = "humantime_serde", default = "default_evict_after")]
    pub evict_after: Duration,
    #[serde(with = "humantime_serde", default = "default_sweep_every")]
    pub sweep_every: Duration,
    /// Whether the gateway initiates back at install (off shows the 5 s REKEY_TIMEOUT cost).
    #[serde(default)]
    pub initiate: Switch,
    #[serde(with = "humantime_serde", default = "default_positive_ttl")]
    pub positive_ttl: Duration,
    #[serde(with = "humantime_serde", default = "default_negative_ttl")]
    pub negative_ttl: Duration,
    /// Most peers per removal call (the daemon's `sweep_chunk`); unset = the daemon's default.
    #[serde(default)]
    pub sweep_chunk: Option<usize>,
    /// Time budget per removal call (the daemon's `sweep_budget`); unset = the daemon's default.
    #[serde(with = "humantime_serde", default)]
    pub sweep_budget: Option<Duration>,
}

impl Default for DaemonFile {
    fn default() -> Self {
        Self {
            mode: ModeName::default(),
            boot: BootName::default(),
            evict_after: default_evict_after(),
            sweep_every: default_sweep_every(),
            initiate: Switch::default(),
            positive_ttl: default_positive_ttl(),
            negative_ttl: default_negative_ttl(),
            sweep_chunk: None,
            sweep_budget: None,
        }
    }
}

fn default_evict_after() -> Duration {
    Duration::from_secs(180)
}
fn default_sweep_every() -> Duration {
    Duration::from_secs(10)
}
fn default_positive_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}

/// `[control_plane]`: who is registered and how badly the API behaves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneFile {
    /// Peers registered (and stored on the gateway for preload) that never connect.
    #[serde(default)]
    pub extra_registered: u32,
    /// Register the clients' own keys (off: every lookup is a 404).
    #[serde(default)]
    pub register_clients: Switch,
    #[serde(default)]
    pub faults: FaultsFile,
}

/// Faults active from the start of the run; outages are `[[event]]`s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsFile {
    /// Added to every API response.
    #[serde(with = "humantime_serde", default)]
    pub latency: Duration,
    /// Fraction of requests answered with 503, 0.0..=1.0.
    #[serde(default)]
    pub error_rate: f64,
}

/// One `[[population]]`: `count` clients sharing arrival, behaviour and link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopulationFile {
    pub name: String,
    pub count: u32,
    pub arrival: ArrivalFile,
    #[serde(default)]
    pub behaviour: BehaviourFile,
    #[serde(default)]
    pub link: LinkFile,
}

/// When clients of a population start, relative to the run start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArrivalFile {
    /// Evenly spaced, `rate` per second.
    Constant { rate: f64 },
    /// Exponential gaps with mean 1/`rate` seconds.
    Poisson { rate: f64 },
    /// All at once at `at`.
    Burst {
        #[serde(with = "humantime_serde")]
        at: Duration,
    },
    /// Rate rising linearly from `from` to `to` per second over `over`, then `to`.
    Ramp {
        from: f64,
        to: f64,
        #[serde(with = "humantime_serde")]
        over: Duration,
    },
}

/// What a client does once it is up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BehaviourFile {
    /// Connect, prove the tunnel with one echo, go away forever (CI jobs).
    #[default]
    ConnectOnce,
    /// Stay connected for `duration`, sending a packet every `traffic_every`.
    Stay {
        #[serde(with = "humantime_serde")]
        duration: Duration,
        #[serde(with = "humantime_serde")]
        traffic_every: Duration,
    },
    /// Connect, go silent for `gap`, come back; `times` connections in all.
    Return {
        #[serde(with = "humantime_serde")]
        gap: Duration,
        times: u32,
    },
}

/// The simulated path between a client and the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    #[serde(with = "humantime_serde", default)]
    pub jitter: Duration,
    /// Fraction of packets dropped in each direction, 0.0..=1.0.
    #[serde(default)]
    pub loss: f64,
}

/// One `[[event]]`, applied at `at` after the run start. A flat struct rather than
/// a tagged enum so that unknown keys are still rejected; `resolve` checks that
/// `until` is given exactly for `api_outage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    pub kind: EventKindName,
    /// End of an `api_outage`, relative to the run start like `at`.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKindName {
    /// kill -9 the data plane and the daemon, restart both with the same database.
    Reboot,
    /// The control plane fails every request from `at` until `until`.
    ApiOutage,
    /// SIGTERM the daemon and start it again (the data plane keeps its peers).
    DaemonRestart,
}
