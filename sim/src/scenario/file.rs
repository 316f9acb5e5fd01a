//! What a scenario TOML file says, exactly as written (stage one of two): serde
//! types that reject unknown keys, so a typo fails validation instead of silently
//! running a different experiment. Defaults live here, meaning lives in `resolve`.

use std::collections::BTreeMap;
use std::time::Duration;

use jitwgd::config::{defaults, Backend, Boot, Mode};
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
    /// Which WireGuard data plane the gateway drives (jitwgd's `backend`); unset means
    /// jitwgd's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendName>,
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
    /// Peers in jitwgd's database before it first starts: registered in the control plane
    /// and stored as valid positive cache entries (push-mode entries in push mode), never
    /// connecting. They are what a `preload` boot installs after a reboot, so a JIT and a
    /// preload scenario with the same `stored_peers` start from the same database.
    #[serde(default)]
    pub stored_peers: u32,
    #[serde(default)]
    pub daemon: DaemonFile,
    #[serde(default)]
    pub control_plane: ControlPlaneFile,
    /// `[lab]`: how the testbed itself is laid out on the machine.
    #[serde(default)]
    pub lab: LabFile,
    #[serde(default, rename = "population")]
    pub populations: Vec<PopulationFile>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventFile>,
    /// figure = "op threshold", e.g. `setup_p99_ms = "< 500"`.
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
    /// `[sweep]`: the grid `jitwg sweep` runs when no `--vary` is given (read and checked by
    /// `sweep::grid`); `jitwg run` ignores it and runs the file's own values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<toml::Table>,
}

fn default_stale_threshold() -> Duration {
    Duration::from_secs(180)
}

fn default_sample_every() -> Duration {
    Duration::from_secs(1)
}

/// jitwgd's `backend` as a scenario spells it; unset means jitwgd's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    Userspace,
    Kernel,
}

/// jitwgd's `mode` as a scenario spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    /// Pull each peer on its first initiation (the design under test).
    Jit,
    /// Legacy baseline: the control plane pushes every new peer over NATS.
    Push,
}

/// jitwgd's `boot` as a scenario spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootName {
    /// Start with an empty interface; ready at once.
    Jit,
    /// Install every stored peer before reporting ready (legacy).
    Preload,
}

/// One of jitwgd's enums as a scenario spells it: the same variants converted both ways, and
/// jitwgd's default as the scenario's, so the scenario has no opinion of its own. The matches
/// are exhaustive, so a variant jitwgd adds fails to compile here until the scenario has it.
macro_rules! jitwgd_words {
    ($ours:ident mirrors $theirs:ident, default $default:expr, [$($variant:ident),+ $(,)?]) => {
        impl Default for $ours {
            fn default() -> Self {
                $default.into()
            }
        }

        impl From<$theirs> for $ours {
            fn from(v: $theirs) -> Self {
                match v {
                    $($theirs::$variant => $ours::$variant,)+
                }
            }
        }

        impl From<$ours> for $theirs {
            fn from(v: $ours) -> Self {
                match v {
                    $($ours::$variant => $theirs::$variant,)+
                }
            }
        }
    };
}

jitwgd_words!(BackendName mirrors Backend, default defaults::BACKEND, [Userspace, Kernel]);
jitwgd_words!(ModeName mirrors Mode, default defaults::MODE, [Jit, Push]);
jitwgd_words!(BootName mirrors Boot, default defaults::BOOT, [Jit, Preload]);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    #[default]
    On,
    Off,
}

/// `[lab]`: the testbed's own layout on the machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// `"auto"` (default: two halves), `"off"`, or `{ gateway = "0", driver = "1" }`.
    #[serde(default)]
    pub cpus: super::cpus::CpusFile,
    /// Lag p99 (intended start to first initiation, and receive lag: a gateway datagram's
    /// kernel arrival to the client reading it) above which the run counts as saturated
    /// and its timing goals as inconclusive; default 20 ms. Loosen it only where the whole
    /// machine is slow by construction (an emulated VM), and say why in the scenario.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub lag_limit: Option<std::time::Duration>,
}

/// `[daemon]`: jitwgd's own settings, under jitwgd's own key names, passed to it through
/// its config file. Every key is optional: unset means jitwgd's default (its
/// `config::defaults`), never a default of the driver's. `jitwg validate` shows which is which.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootName>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub evict_after: Option<Duration>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sweep_every: Option<Duration>,
    /// Most peers per removal call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_chunk: Option<usize>,
    /// Time budget per removal call.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sweep_budget: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evict_in_push_mode: Option<Switch>,
    /// Whether the gateway initiates back at install (off shows the 5 s REKEY_TIMEOUT cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiate: Option<Switch>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub positive_ttl: Option<Duration>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub negative_ttl: Option<Duration>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_retries: Option<u32>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_min_interval: Option<Duration>,
    /// Peers active within this long before a restart are re-installed, and initiated to, at
    /// boot; `0s` turns it off.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reinstall_active: Option<Duration>,
    /// Role-inversion initiations per second at most; 0 = unpaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiate_rate: Option<u32>,
    // Admission control and the identify queue (jitwgd's `--help` explains each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_concurrency: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_lookup_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_lookup_floor: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_lookup_burst: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_penalty_burst: Option<usize>,
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_penalty_forgive: Option<Duration>,
    /// Inside a penalised network, an address knocking again sooner than this is shed; `0s`
    /// turns the per-address level off.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub source_quiet_gap: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identify_workers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identify_queue: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identify_queue_per_source: Option<usize>,
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
    /// Serve HTTPS with a CA generated for the run (the daemon is given the CA file).
    #[serde(default)]
    pub tls: bool,
    /// Require a bearer token generated for the run (the daemon is given the token file).
    #[serde(default)]
    pub token: bool,
    /// Require a client certificate from the run's CA (needs `tls`).
    #[serde(default)]
    pub client_cert: bool,
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
    /// An attacker, not clients: `count` handshake initiations sent at `packets_per_second`
    /// (for the whole population) from `sources` addresses, starting at the population's
    /// `arrival = { kind = "burst", at = ... }`. Never counted as clients.
    Flood(FloodFile),
    /// An attacker replaying initiations captured on the wire from legitimate clients, from
    /// its own addresses: `count` packets at `packets_per_second`, from `sources` addresses.
    Replay(ReplayFile),
}

/// `behaviour = { kind = "flood", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloodFile {
    /// Which static keys the initiations carry.
    pub keys: FloodKeys,
    /// `valid`: real initiations that pass mac1 (and, with their private keys held by the
    /// flood, the whole first Noise leg); `invalid`: random bytes behind a valid header and
    /// length, rejected at mac1 (`keys` then only names the population's intent).
    #[serde(default)]
    pub mac1: Mac1,
    /// For the whole population.
    pub packets_per_second: f64,
    /// Distinct source addresses (one socket each), spread evenly over `subnets`.
    pub sources: u32,
    /// How many /24s (IPv4) or /64s (IPv6) the sources are spread over (default 1).
    #[serde(default = "one")]
    pub subnets: u32,
    /// `own` (default): subnets no legitimate client uses; `shared`: the legitimate clients'
    /// own /24s, at addresses no client holds (IPv4 only).
    #[serde(default)]
    pub subnets_of: SubnetsOf,
    /// `ipv4` (default) or `ipv6` (2001:2::/48; the run gets an IPv6 underlay).
    #[serde(default)]
    pub family: Family,
    /// Distinct keys cycled through for `registered` and `unregistered` (default 256, at most
    /// 65,000: each is derived before the run); fresh keys are never reused, so `count` of
    /// them are made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pool: Option<u32>,
}

/// `behaviour = { kind = "replay", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFile {
    /// For the whole population.
    pub packets_per_second: f64,
    /// Distinct source addresses (one socket each), spread evenly over `subnets`.
    pub sources: u32,
    /// How many /24s (IPv4) or /64s (IPv6) the sources are spread over (default 1).
    #[serde(default = "one")]
    pub subnets: u32,
    /// `own` (default): subnets no legitimate client uses; `shared`: the legitimate clients'
    /// own /24s, at addresses no client holds (IPv4 only).
    #[serde(default)]
    pub subnets_of: SubnetsOf,
    /// `ipv4` (default) or `ipv6` (2001:2::/48; the run gets an IPv6 underlay).
    #[serde(default)]
    pub family: Family,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FloodKeys {
    /// A new random key for every initiation (what a per-key rate limit cannot stop).
    Fresh,
    /// Keys registered in the control plane (a stolen or misbehaving client's keys).
    Registered,
    /// Random keys the control plane does not know, cycled (what a negative cache stops).
    Unregistered,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mac1 {
    #[default]
    Valid,
    Invalid,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubnetsOf {
    #[default]
    Own,
    Shared,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
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
    /// kill -9 the daemon alone (a crash) and start it again; the data plane keeps its peers.
    DaemonKill,
}
