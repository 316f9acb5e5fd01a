//! Daemon configuration in two stages (ripgrep style): `Args` holds what the user wrote
//! on the command line or in `JITWGD_*` variables, `ConfigFile` what the TOML file says;
//! `resolve` layers them (flag > env > file > default), validates across settings, and
//! returns the `Config` the daemon runs with.

mod args;
mod file;
mod limits;
pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use ipnet::IpNet;
use serde::Serialize;

pub use args::Args;
pub use file::{ConfigFile, CountOrOff, Switch};
pub use limits::{DbCorruption, LimitArgs, Limits};

/// How the daemon talks to the WireGuard data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// wireguard-go (or any UAPI implementation) via /var/run/wireguard/NAME.sock.
    Userspace,
    /// The in-kernel WireGuard module via netlink.
    Kernel,
}

/// Where peers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Install a peer when its first handshake initiation arrives.
    Jit,
    /// Legacy baseline: install every peer published on NATS.
    Push,
}

/// What the daemon does at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    /// Start with an empty interface; ready at once.
    Jit,
    /// Install every stored peer before reporting ready (legacy).
    Preload,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The resolved settings the daemon runs with. Serializable so the daemon can log its
/// effective configuration at start-up (durations print as `3m`, `30s`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// WireGuard interface to manage (validated: 1..=15 bytes, kernel naming rules).
    pub interface: String,
    pub backend: Backend,
    /// Uplink to sniff; `None` = all interfaces.
    pub capture_interface: Option<String>,
    /// `None` = read the listen port from the interface.
    pub listen_port: Option<u16>,
    pub db: PathBuf,
    /// Control-plane base URL without trailing `/`; always `Some` in jit mode.
    pub api_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub api_timeout: Duration,
    pub api_retries: u32,
    /// `None` = no metrics endpoint.
    pub metrics_addr: Option<SocketAddr>,
    pub mode: Mode,
    pub boot: Boot,
    #[serde(with = "humantime_serde")]
    pub evict_after: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_every: Duration,
    /// Max peers removed per data-plane call (>= 1).
    pub sweep_chunk: usize,
    /// Time one removal call should take at most; chunks shrink below `sweep_chunk` to fit.
    #[serde(with = "humantime_serde")]
    pub sweep_budget: Duration,
    pub evict_in_push_mode: bool,
    /// Install peers in the initiator role (handshake back at once).
    pub initiate: bool,
    /// At boot, re-install with their endpoint (and initiate to) the peers active within
    /// this long before the shutdown; zero = off.
    #[serde(with = "humantime_serde")]
    pub reinstall_active: Duration,
    /// Role-inversion initiations per second; 0 = unpaced.
    pub initiate_rate: u32,
    /// Adapt the role-inversion rate to the cookie replies the data plane sends.
    pub initiate_adapt: bool,
    /// Drop every initiation before the data plane while role inversions wait (`shield::storm`).
    pub storm_guard: bool,
    /// Identify worker threads (>= 1).
    pub identify_workers: usize,
    /// Captured initiations waiting for a worker at most, per lane (>= 1).
    pub identify_queue: usize,
    /// Of the unknown lane, initiations from one source network (/24, /64) at most (>= 1).
    pub identify_queue_per_source: usize,
    /// Nice value added to the identify workers (0..=19).
    pub identify_nice: i32,
    /// Always `Some` in push mode.
    pub nats_url: Option<String>,
    pub nats_subject: String,
    /// Tunnel prefix all allowed IPs must lie in (host bits cleared).
    pub allowed_prefix: IpNet,
    #[serde(with = "humantime_serde")]
    pub positive_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Per-key control-plane rate limit.
    #[serde(with = "humantime_serde")]
    pub api_min_interval: Duration,
    pub log_format: LogFormat,
    /// Shortest allowed-IP prefix lengths (32 / 128: host routes only).
    pub allowed_ip_min_len_v4: u8,
    pub allowed_ip_min_len_v6: u8,
    /// Securing the control-plane channel (all `None`: system roots, no credentials).
    pub api_ca_file: Option<PathBuf>,
    pub api_token_file: Option<PathBuf>,
    pub api_client_cert: Option<PathBuf>,
    pub api_client_key: Option<PathBuf>,
    /// Admission control, caps and state bounds (`config::limits`).
    pub limits: Limits,
}

impl Config {
    /// Which allowed IPs may be installed.
    pub fn address_policy(&self) -> crate::peer::AddressPolicy {
        crate::peer::AddressPolicy {
            tunnel_prefix: self.allowed_prefix,
            min_len_v4: self.allowed_ip_min_len_v4,
            min_len_v6: self.allowed_ip_min_len_v6,
        }
    }

    /// How the control-plane channel is secured.
    pub fn channel_security(&self) -> crate::channel::ChannelSecurity {
        crate::channel::ChannelSecurity {
            ca_file: self.api_ca_file.clone(),
            token_file: self.api_token_file.clone(),
            client_cert: self
                .api_client_cert
                .clone()
                .zip(self.api_client_key.clone()),
        }
    }
}

/// Defaults, in one place so `--help` texts, `resolve`, the stages' own `Default`s and
/// programs that write jitwgd's config file can be checked against them.
pub mod defaults {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use ipnet::{IpNet, Ipv4Net};

    use super::{Backend, Boot, LogFormat, Mode};

    pub const BACKEND: Backend = Backend::Userspace;
    pub const MODE: Mode = Mode::Jit;
    pub const BOOT: Boot = Boot::Jit;
    pub const LOG_FORMAT: LogFormat = LogFormat::Text;
    pub const DB: &str = "/var/lib/jitwgd/jitwgd.db";
    pub const API_TIMEOUT: Duration = Duration::from_secs(2);
    pub const API_RETRIES: u32 = 3;
    pub const EVICT_AFTER: Duration = Duration::from_secs(180);
    pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
    pub const SWEEP_CHUNK: usize = 256;
    /// On a kernel whose every removed peer costs an RCU grace period (measured in a VM:
    /// ~34 ms per peer on PREEMPT_RT, ~1 ms on Debian's generic kernel) a fixed chunk of
    /// hundreds would stall installs for seconds; sized by time, a knocking client waits
    /// at most about this long behind a sweep.
    pub const SWEEP_BUDGET: Duration = Duration::from_millis(50);
    pub const EVICT_IN_PUSH_MODE: bool = false;
    pub const INITIATE: bool = true;
    /// WireGuard re-keys an active session every 120 s (REKEY_AFTER_TIME), so a client
    /// with traffic shows a handshake at least that often; 3 min adds a sweep period and
    /// jitter on top, and matches the default `evict_after`.
    pub const REINSTALL_ACTIVE: Duration = Duration::from_secs(180);
    /// Measured best of 0 (unpaced), 800, 1,000, 1,500 and 2,500 on the `storm` scenario (BENCHMARKS.md,
    /// storm): about what one core of data plane completes handshakes at.
    pub const INITIATE_RATE: u32 = 1500;
    /// Off: in paired `storm` runs the adaptive rate lost to the fixed one (BENCHMARKS.md,
    /// storm): the clients' own initiations put the data plane under load, and backing off
    /// then only pushes the gateway's initiations past the clients' 5 s retry.
    pub const INITIATE_ADAPT: bool = false;
    pub const STORM_GUARD: bool = true;
    pub const IDENTIFY_WORKERS: usize = 2;
    pub const IDENTIFY_QUEUE: usize = 4096;
    /// A sixteenth of the unknown lane per source network: a flood from one /24 holds at
    /// most that, and 16 such networks still leave room (by longest-queue drop) for others.
    pub const IDENTIFY_QUEUE_PER_SOURCE: usize = 256;
    pub const IDENTIFY_NICE: i32 = 5;
    pub const NATS_SUBJECT: &str = "jitwg.peers";
    pub const ALLOWED_PREFIX: IpNet =
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10));
    pub const POSITIVE_TTL: Duration = Duration::from_secs(300);
    pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);
    pub const API_MIN_INTERVAL: Duration = Duration::from_secs(1);
    /// Host routes only: one answer cannot claim a range of tunnel addresses.
    pub const ALLOWED_IP_MIN_LEN_V4: u8 = 32;
    pub const ALLOWED_IP_MIN_LEN_V6: u8 = 128;
    /// Bounds the tasks (and their memory) a flood can create; far above what the
    /// install path completes per second.
    pub const MAX_PENDING: usize = 4096;
    pub const API_CONCURRENCY: usize = 32;
    /// First contacts that may come back 404 per second: what a fresh-key flood may cost
    /// the control plane.
    pub const UNKNOWN_LOOKUP_RATE: u32 = 50;
    pub const UNKNOWN_LOOKUP_FLOOR: u32 = 5;
    pub const UNKNOWN_LOOKUP_BURST: usize = 256;
    pub const SOURCE_PENALTY_BURST: usize = 8;
    pub const SOURCE_PENALTY_FORGIVE: Duration = Duration::from_secs(1);
    /// A fifth of WireGuard's 5 s REKEY_TIMEOUT: a client's own retries never come this
    /// close, a flooder's knocks (1,000/s from 48 addresses: ~48 ms apart) always do.
    pub const SOURCE_QUIET_GAP: Duration = Duration::from_secs(1);
    /// Sources the kernel shield blocks at most: all one classic BPF program holds
    /// (`shield::MAX_FILTERS`); a 256-address flood fits.
    pub const SHIELD_FILTERS: usize = crate::shield::MAX_FILTERS;
    /// Newcomer passes of a penalised network: the addresses of a flood that was under
    /// way when the penalty began each spend one on their first knock (48 in
    /// `flood-shared`), and neighbours must still find some; regained at 2/s (and given
    /// back by every key that resolves). Passes are granted only while the global
    /// budget is at least half full, so many networks' passes cannot drain it.
    pub const NEWCOMER_PASSES: u32 = 64;
    pub const NEWCOMER_PASS_EVERY: Duration = Duration::from_millis(500);
    /// Source addresses remembered (~100 bytes each: ~6.5 MB at most).
    pub const SOURCE_ADDRESSES: usize = 65_536;
    pub const UNKNOWN_LOG_RATE: u32 = 10;
    /// ~100 bytes a key: ~6.5 MB at most.
    pub const REPLAY_MEMORY: usize = 65_536;
    /// Ephemeral keys of identified initiations (`replay::ResentMemory`, ~80 bytes each:
    /// ~1.3 MB at most): an attacker resending more distinct captured initiations than
    /// this in turn costs a Diffie-Hellman each again, as without it.
    pub const RESENT_MEMORY: usize = 16_384;
    /// wireguard-go holds at most 65,536 peers.
    pub const KNOWN_KEY_CACHE: usize = 65_536;
    pub const NEGATIVE_CAP: usize = 100_000;
    pub const NEGATIVE_PURGE_EVERY: Duration = Duration::from_secs(30);
    pub const DB_CORRUPTION: super::DbCorruption = super::DbCorruption::MoveAside;
    /// Source networks the penalty table tracks at most (~50 bytes each).
    pub const MAX_PENALISED_SOURCES: usize = 65_536;
}

/// Why the configuration could not be resolved. Every message names the setting (and
/// the file, when the bad value came from one).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config file {}: `{key} = {value:?}`: {reason}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("missing required setting `{key}`{why}: {}", where_to_set(key))]
    Missing {
        key: &'static str,
        why: &'static str,
    },
}

/// How to provide a setting, spelled the three ways the user can.
fn where_to_set(key: &str) -> String {
    format!(
        "pass --{}, set {}, or add `{key} = ...` to the --config file",
        key.replace('_', "-"),
        format!("JITWGD_{key}").to_ascii_uppercase()
    )
}

/// Read the config file named by `args.config` (if any) and layer everything:
/// flag > environment (both already in `args`, clap resolved that) > file > default.
pub fn resolve(args: Args) -> Result<Config, ConfigError> {
    match args.config.clone() {
        None => merge(args, ConfigFile::default(), Path::new("(none)")),
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
                path: path.clone(),
                source,
            })?;
            resolve_text(args, &text, &path)
        }
    }
}

/// Layer `args` over the config file text `text` (named `path` in errors) and the
/// defaults, exactly as `resolve` does once it has read the file. Pure, so a program that
/// writes jitwgd's config can check what jitwgd will make of it.
pub fn resolve_text(args: Args, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file = ConfigFile::parse(text).map_err(|source| ConfigError::ParseFile {
        path: path.to_path_buf(),
        source,
    })?;
    merge(args, file, path)
}

/// Checks file values with the shared parsers, turning failures into errors that name
/// the key and the file.
struct FileValues<'a> {
    path: &'a Path,
}

impl FileValues<'_> {
    fn check<T>(
        &self,
        key: &'static str,
        raw: Option<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        raw.map(|value| {
            parse(&value).map_err(|reason| ConfigError::InvalidValue {
                path: self.path.to_path_buf(),
                key,
                value,
                reason,
            })
        })
        .transpose()
    }

    fn switch(&self, key: &'static str, raw: Option<Switch>) -> Result<Option<bool>, ConfigError> {
        match raw {
            None => Ok(None),
            Some(Switch::Bool(b)) => Ok(Some(b)),
            Some(Switch::Word(w)) => self.check(key, Some(w), values::switch),
        }
    }

    fn count(&self, key: &'static str, raw: Option<usize>) -> Result<Option<usize>, ConfigError> {
        self.check(key, raw.map(|n| n.to_string()), values::positive_count)
    }
}

/// Parse one of a `ValueEnum`'s words exactly as the flag would accept it.
fn word<E: ValueEnum>(s: &str) -> Result<E, String> {
    E::from_str(s.trim(), false).map_err(|_| {
        let names: Vec<String> = E::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!("expected one of: {}", names.join(", "))
    })
}

fn merge(mut args: Args, file: ConfigFile, path: &Path) -> Result<Config, ConfigError> {
    let f = FileValues { path };
    let limits = limits::merge(std::mem::take(&mut args.limits), &file, &f)?;

    let interface = args
        .interface
        .or(f.check("interface", file.interface, values::interface_name)?)
        .ok_or(ConfigError::Missing {
            key: "interface",
            why: "",
        })?;
    let mode = args
        .mode
        .or(f.check("mode", file.mode, word::<Mode>)?)
        .unwrap_or(defaults::MODE);
    let api_url = args
        .api_url
        .or(f.check("api_url", file.api_url, values::api_url)?);
    let nats_url = args
        .nats_url
        .or(f.check("nats_url", file.nats_url, values::nats_url)?);
    let api_client_cert = args.api_client_cert.or(file.api_client_cert);
    let api_client_key = args.api_client_key.or(file.api_client_key);
    if api_client_cert.is_some() != api_client_key.is_some() {
        return Err(ConfigError::Missing {
            key: if api_client_cert.is_some() {
                "api_client_key"
            } else {
                "api_client_cert"
            },
            why: " (a client certificate needs its key, and a key its certificate)",
        });
    }
    match mode {
        Mode::Jit if api_url.is_none() => {
            return Err(ConfigError::Missing {
                key: "api_url",
                why: " (needed in jit mode)",
            })
        }
        Mode::Push if nats_url.is_none() => {
            return Err(ConfigError::Missing {
                key: "nats_url",
                why: " (needed in push mode)",
            })
        }
        _ => {}
    }

    Ok(Config {
        interface,
        backend: args
            .backend
            .or(f.check("backend", file.backend, word::<Backend>)?)
            .unwrap_or(defaults::BACKEND),
        capture_interface: args.capture_interface.or(f.check(
            "capture_interface",
            file.capture_interface,
            values::interface_name,
        )?),
        listen_port: args.listen_port.or(file.listen_port),
        db: args
            .db
            .or(file.db)
            .unwrap_or_else(|| PathBuf::from(defaults::DB)),
        api_url,
        api_timeout: args
            .api_timeout
            .or(f.check("api_timeout", file.api_timeout, values::positive_duration)?)
            .unwrap_or(defaults::API_TIMEOUT),
        api_retries: args
            .api_retries
            .or(file.api_retries)
            .unwrap_or(defaults::API_RETRIES),
        metrics_addr: args.metrics_addr.or(f.check(
            "metrics_addr",
            file.metrics_addr,
            values::socket_addr,
        )?),
        mode,
        boot: args
            .boot
            .or(f.check("boot", file.boot, word::<Boot>)?)
            .unwrap_or(defaults::BOOT),
        evict_after: args
            .evict_after
            .or(f.check("evict_after", file.evict_after, values::positive_duration)?)
            .unwrap_or(defaults::EVICT_AFTER),
        sweep_every: args
            .sweep_every
            .or(f.check("sweep_every", file.sweep_every, values::positive_duration)?)
            .unwrap_or(defaults::SWEEP_EVERY),
        sweep_chunk: args
            .sweep_chunk
            .or(f.count("sweep_chunk", file.sweep_chunk)?)
            .unwrap_or(defaults::SWEEP_CHUNK),
        sweep_budget: args
            .sweep_budget
            .or(f.check("sweep_budget", file.sweep_budget, values::positive_duration)?)
            .unwrap_or(defaults::SWEEP_BUDGET),
        evict_in_push_mode: args
            .evict_in_push_mode
            .or(f.switch("evict_in_push_mode", file.evict_in_push_mode)?)
            .unwrap_or(defaults::EVICT_IN_PUSH_MODE),
        initiate: args
            .initiate
            .or(f.switch("initiate", file.initiate)?)
            .unwrap_or(defaults::INITIATE),
        reinstall_active: args
            .reinstall_active
            .or(f.check(
                "reinstall_active",
                file.reinstall_active,
                values::duration_or_off,
            )?)
            .unwrap_or(defaults::REINSTALL_ACTIVE),
        initiate_rate: args
            .initiate_rate
            .or(file.initiate_rate)
            .unwrap_or(defaults::INITIATE_RATE),
        initiate_adapt: args
            .initiate_adapt
            .or(f.switch("initiate_adapt", file.initiate_adapt)?)
            .unwrap_or(defaults::INITIATE_ADAPT),
        storm_guard: args
            .storm_guard
            .or(f.switch("storm_guard", file.storm_guard)?)
            .unwrap_or(defaults::STORM_GUARD),
        identify_workers: args
            .identify_workers
            .or(f.count("identify_workers", file.identify_workers)?)
            .unwrap_or(defaults::IDENTIFY_WORKERS),
        identify_queue: args
            .identify_queue
            .or(f.count("identify_queue", file.identify_queue)?)
            .unwrap_or(defaults::IDENTIFY_QUEUE),
        identify_queue_per_source: args
            .identify_queue_per_source
            .or(f.count("identify_queue_per_source", file.identify_queue_per_source)?)
            .unwrap_or(defaults::IDENTIFY_QUEUE_PER_SOURCE),
        identify_nice: args
            .identify_nice
            .or(f.check(
                "identify_nice",
                file.identify_nice.map(|n| n.to_string()),
                values::nice,
            )?)
            .unwrap_or(defaults::IDENTIFY_NICE),
        nats_url,
        nats_subject: args
            .nats_subject
            .or(f.check("nats_subject", file.nats_subject, values::nats_subject)?)
            .unwrap_or_else(|| defaults::NATS_SUBJECT.to_string()),
        allowed_prefix: args
            .allowed_prefix
            .map(|p| p.trunc())
            .or(f.check("allowed_prefix", file.allowed_prefix, values::prefix)?)
            .unwrap_or(defaults::ALLOWED_PREFIX),
        positive_ttl: args
            .positive_ttl
            .or(f.check("positive_ttl", file.positive_ttl, values::duration)?)
            .unwrap_or(defaults::POSITIVE_TTL),
        negative_ttl: args
            .negative_ttl
            .or(f.check("negative_ttl", file.negative_ttl, values::duration)?)
            .unwrap_or(defaults::NEGATIVE_TTL),
        api_min_interval: args
            .api_min_interval
            .or(f.check("api_min_interval", file.api_min_interval, values::duration)?)
            .unwrap_or(defaults::API_MIN_INTERVAL),
        log_format: args
            .log_format
            .or(f.check("log_format", file.log_format, word::<LogFormat>)?)
            .unwrap_or(defaults::LOG_FORMAT),
        allowed_ip_min_len_v4: args
            .allowed_ip_min_len_v4
            .or(f.check(
                "allowed_ip_min_len_v4",
                file.allowed_ip_min_len_v4.map(|n| n.to_string()),
                values::prefix_len_v4,
            )?)
            .unwrap_or(defaults::ALLOWED_IP_MIN_LEN_V4),
        allowed_ip_min_len_v6: args
            .allowed_ip_min_len_v6
            .or(f.check(
                "allowed_ip_min_len_v6",
                file.allowed_ip_min_len_v6.map(|n| n.to_string()),
                values::prefix_len_v6,
            )?)
            .unwrap_or(defaults::ALLOWED_IP_MIN_LEN_V6),
        api_ca_file: args.api_ca_file.or(file.api_ca_file),
        api_token_file: args.api_token_file.or(file.api_token_file),
        api_client_cert,
        api_client_key,
        limits,
    })
}

#[cfg(test)]
mod tests;
