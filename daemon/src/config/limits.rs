//! The settings that keep jitwgd's work and state bounded under hostile traffic:
//! admission control for keys the control plane does not know, caps on concurrent work,
//! the sizes of in-memory and on-disk state, and what to do with a corrupt database.
//! Kept apart from the other settings (flattened into `Args`, one `limits` field in
//! `Config`) so they read as one policy; the TOML keys sit in `ConfigFile` like every
//! other key (serde cannot flatten into a struct that refuses unknown keys).

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use super::{defaults, values, ConfigFile, CountOrOff, FileValues};
use super::{word, ConfigError};

/// What to do when the database fails `PRAGMA quick_check` at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DbCorruption {
    /// Rename the database (and its -wal/-shm files) to `NAME.corrupt-UNIXTIME` and start
    /// with an empty one: in jit mode it is a cache the control plane refills.
    MoveAside,
    /// Refuse to start (exit 3) and leave the files for the operator.
    Refuse,
}

/// Flags and `JITWGD_*` variables of the limits (see `Args`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Identified initiations being handled (replay guard, lookup, install) at once at
    /// most [default: 4096].
    ///
    /// Beyond it they are dropped and counted in
    /// jitwgd_initiations_dropped_total{reason="handlers_full"}; the client retries.
    #[arg(long, env = "JITWGD_MAX_PENDING", value_name = "COUNT", value_parser = values::positive_count)]
    pub max_pending: Option<usize>,

    /// Control-plane requests in flight at most [default: 32].
    ///
    /// Lookups beyond it wait for a free slot (bounded by --max-pending).
    #[arg(long, env = "JITWGD_API_CONCURRENCY", value_name = "COUNT", value_parser = values::positive_count)]
    pub api_concurrency: Option<usize>,

    /// Budget for first contacts (keys with no cache entry), in lookups per second that
    /// may come back 404 [default: 50].
    ///
    /// Every first contact takes a token; a key that resolves (or an API failure) gives
    /// it back, so only 404s spend the budget and a storm of legitimate new clients is
    /// never throttled by it. First contacts without a token are dropped and counted in
    /// jitwgd_initiations_dropped_total{reason="unknown_budget"}. A fresh-key flood
    /// therefore costs the control plane at most about this many requests per second.
    #[arg(long, env = "JITWGD_UNKNOWN_LOOKUP_RATE", value_name = "PER_SECOND")]
    pub unknown_lookup_rate: Option<u32>,

    /// The first-contact budget's rate when every recent answer was a 404 [default: 5].
    ///
    /// Above a 404 share of one half (jitwgd_unknown_not_found_share, averaged over
    /// ~10 s) the rate slides linearly from --unknown-lookup-rate down to this.
    #[arg(long, env = "JITWGD_UNKNOWN_LOOKUP_FLOOR", value_name = "PER_SECOND")]
    pub unknown_lookup_floor: Option<u32>,

    /// First contacts that may be waiting for the control plane at once, and the
    /// budget's burst [default: 256].
    #[arg(long, env = "JITWGD_UNKNOWN_LOOKUP_BURST", value_name = "COUNT", value_parser = values::positive_count)]
    pub unknown_lookup_burst: Option<usize>,

    /// 404s one source network (/24 for IPv4, /64 for IPv6) may cause in a burst before
    /// its first contacts are refused [default: 8].
    ///
    /// Refusals are counted in jitwgd_initiations_dropped_total{reason="source_penalised"}.
    /// Keys that resolve never count, and known keys are never refused. An IPv6 /64's 404s
    /// also count for its /48: past this many there, each /64 of the /48 that caused a 404
    /// is refused with it while it keeps knocking (one renewal lookup per
    /// --source-penalty-forgive for the whole /48), and a /64 with none is judged alone.
    #[arg(long, env = "JITWGD_SOURCE_PENALTY_BURST", value_name = "COUNT", value_parser = values::positive_count)]
    pub source_penalty_burst: Option<usize>,

    /// One 404 of a source network is forgiven per this interval: its sustained 404
    /// rate [default: 1s].
    #[arg(long, env = "JITWGD_SOURCE_PENALTY_FORGIVE", value_name = "DURATION", value_parser = values::positive_duration)]
    pub source_penalty_forgive: Option<Duration>,

    /// Inside a source network penalised for 404s, two initiations from one address
    /// closer than this mark the address as a flooder's [default: 1s].
    ///
    /// A WireGuard client retries an initiation no sooner than every 5 s, so only a
    /// flooder (or several clients starting at once behind one NAT) knocks faster.
    /// Inside a penalised network (--source-penalty-burst), an address that knocks
    /// faster, or whose key came back 404 or hit the negative cache, is shed before
    /// identification for --source-penalty-burst × --source-penalty-forgive (8 s) after
    /// its last such knock (reason="address_penalised"); any other address may still
    /// bring a first contact, on one of the network's newcomer passes (64, one regained
    /// every 500 ms, one given back by each key that resolves, none granted while 404s
    /// have drained the --unknown-lookup-burst budget below half; with none left:
    /// reason="source_penalised"). So a flooder sharing a /24 with legitimate clients no
    /// longer locks them all out, while one with many addresses (a /64) gets at most the
    /// passes. 0 or off: no address level, every first contact from a penalised network
    /// is refused.
    #[arg(long, env = "JITWGD_SOURCE_QUIET_GAP", value_name = "DURATION", value_parser = values::duration_or_off)]
    pub source_quiet_gap: Option<Duration>,

    /// Sources the kernel shield may block at once on --capture-interface's tc ingress
    /// [default: 453, the most one classic BPF program holds; 0 or off disables].
    ///
    /// Handshake initiations from the sources admission control judges (each penalised
    /// address, see --source-quiet-gap; with --initiate on, each penalised /24 or /64
    /// whole, since the gateway's own initiation sets up a newcomer there) are
    /// dropped by the kernel (a cls_bpf filter) before the data plane spends its own
    /// Diffie-Hellman on them, which under a fresh-key flood otherwise costs it a third of
    /// a core and can push it into its cookie "under load" mode. jitwgd's capture still
    /// sees them, so penalties stay current; a block goes when its penalty ends, and all
    /// go at exit. Installed peers' endpoints are never blocked (inside a blocked network
    /// a pass rule, counted here too, lets each through). Needs CAP_NET_ADMIN and
    /// --capture-interface (without one it stays off).
    #[arg(long, env = "JITWGD_SHIELD_FILTERS", value_name = "COUNT", value_parser = values::count_or_off)]
    pub shield_filters: Option<usize>,

    /// Per-key log lines about unknown keys (404s, negative-cache hits, refusals) per
    /// second at most [default: 10].
    ///
    /// The rest are counted in jitwgd_log_lines_suppressed_total and summed up on the
    /// next line written, so a flood cannot fill the disk.
    #[arg(long, env = "JITWGD_UNKNOWN_LOG_RATE", value_name = "PER_SECOND")]
    pub unknown_log_rate: Option<u32>,

    /// Keys whose newest handshake timestamp the in-memory replay guard keeps
    /// [default: 65536].
    ///
    /// Least recently seen first out. Keys that resolved also keep it on disk, so the
    /// database gains nothing from unknown keys.
    #[arg(long, env = "JITWGD_REPLAY_MEMORY", value_name = "COUNT", value_parser = values::positive_count)]
    pub replay_memory: Option<usize>,

    /// Known keys whose static-static Diffie-Hellman is cached, so their next
    /// initiation costs one X25519 instead of two [default: 65536, wireguard-go's
    /// peer limit; 0 disables].
    ///
    /// Filled only for keys the control plane (or the cache) vouched for.
    #[arg(long, env = "JITWGD_KNOWN_KEY_CACHE", value_name = "COUNT")]
    pub known_key_cache: Option<usize>,

    /// Negative-cache rows kept at most [default: 100000].
    ///
    /// The purge timer deletes expired rows, then the soonest-expiring ones beyond it.
    #[arg(long, env = "JITWGD_NEGATIVE_CAP", value_name = "COUNT", value_parser = values::positive_count)]
    pub negative_cap: Option<usize>,

    /// How often expired negative-cache rows are purged [default: 30s].
    #[arg(long, env = "JITWGD_NEGATIVE_PURGE_EVERY", value_name = "DURATION", value_parser = values::positive_duration)]
    pub negative_purge_every: Option<Duration>,

    /// What to do when the database fails its integrity check (PRAGMA quick_check) at
    /// start-up [default: move-aside].
    ///
    /// `move-aside` renames it to NAME.corrupt-UNIXTIME (with its -wal/-shm files), logs
    /// an error and starts with an empty database: in jit mode it is a cache the control
    /// plane refills. `refuse` exits with code 3 and leaves it for the operator (choose it
    /// in push mode, where the database is the only copy of pushed peers).
    #[arg(long, env = "JITWGD_DB_CORRUPTION", value_enum)]
    pub db_corruption: Option<DbCorruption>,
}

/// The resolved limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    pub max_pending: usize,
    pub api_concurrency: usize,
    pub unknown_lookup_rate: u32,
    pub unknown_lookup_floor: u32,
    pub unknown_lookup_burst: usize,
    pub source_penalty_burst: usize,
    #[serde(with = "humantime_serde")]
    pub source_penalty_forgive: Duration,
    #[serde(with = "humantime_serde")]
    pub source_quiet_gap: Duration,
    pub shield_filters: usize,
    pub unknown_log_rate: u32,
    pub replay_memory: usize,
    pub known_key_cache: usize,
    pub negative_cap: usize,
    #[serde(with = "humantime_serde")]
    pub negative_purge_every: Duration,
    pub db_corruption: DbCorruption,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: defaults::MAX_PENDING,
            api_concurrency: defaults::API_CONCURRENCY,
            unknown_lookup_rate: defaults::UNKNOWN_LOOKUP_RATE,
            unknown_lookup_floor: defaults::UNKNOWN_LOOKUP_FLOOR,
            unknown_lookup_burst: defaults::UNKNOWN_LOOKUP_BURST,
            source_penalty_burst: defaults::SOURCE_PENALTY_BURST,
            source_penalty_forgive: defaults::SOURCE_PENALTY_FORGIVE,
            source_quiet_gap: defaults::SOURCE_QUIET_GAP,
            shield_filters: defaults::SHIELD_FILTERS,
            unknown_log_rate: defaults::UNKNOWN_LOG_RATE,
            replay_memory: defaults::REPLAY_MEMORY,
            known_key_cache: defaults::KNOWN_KEY_CACHE,
            negative_cap: defaults::NEGATIVE_CAP,
            negative_purge_every: defaults::NEGATIVE_PURGE_EVERY,
            db_corruption: defaults::DB_CORRUPTION,
        }
    }
}

/// Layer the limit flags over the file's keys over the defaults.
pub(super) fn merge(
    args: LimitArgs,
    file: &ConfigFile,
    f: &FileValues<'_>,
) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    // How a file's key is checked, as the flag's own parser would check it.
    let count = |key, raw: &Option<usize>| f.count(key, *raw);
    let count_or_off = |key, raw: &Option<CountOrOff>| {
        f.check(
            key,
            raw.as_ref().map(CountOrOff::text),
            values::count_or_off,
        )
    };
    let duration = |key, raw: &Option<String>| f.check(key, raw.clone(), values::positive_duration);
    let duration_or_off =
        |key, raw: &Option<String>| f.check(key, raw.clone(), values::duration_or_off);
    let db_corruption = |key, raw: &Option<String>| f.check(key, raw.clone(), word::<DbCorruption>);
    // A limit keeps one name from flag to TOML key to field: the flag, else the file's key
    // (through `$check` where the flag has a parser of its own), else the default.
    macro_rules! layer {
        ($name:ident) => {
            args.$name.or(file.$name).unwrap_or(d.$name)
        };
        ($name:ident, $check:ident) => {
            args.$name
                .or($check(stringify!($name), &file.$name)?)
                .unwrap_or(d.$name)
        };
    }
    Ok(Limits {
        max_pending: layer!(max_pending, count),
        api_concurrency: layer!(api_concurrency, count),
        unknown_lookup_rate: layer!(unknown_lookup_rate),
        unknown_lookup_floor: layer!(unknown_lookup_floor),
        unknown_lookup_burst: layer!(unknown_lookup_burst, count),
        source_penalty_burst: layer!(source_penalty_burst, count),
        source_penalty_forgive: layer!(source_penalty_forgive, duration),
        source_quiet_gap: layer!(source_quiet_gap, duration_or_off),
        shield_filters: layer!(shield_filters, count_or_off),
        unknown_log_rate: layer!(unknown_log_rate),
        replay_memory: layer!(replay_memory, count),
        known_key_cache: layer!(known_key_cache),
        negative_cap: layer!(negative_cap, count),
        negative_purge_every: layer!(negative_purge_every, duration),
        db_corruption: layer!(db_corruption, db_corruption),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::documented_default;
    use super::super::{resolve_text, Args};
    use super::*;
    use clap::Parser;
    use std::path::Path;

    #[test]
    fn help_states_the_defaults_resolve_uses() {
        let n = |id: &str| documented_default(id).parse::<u64>().unwrap();
        let dur = |id: &str| values::duration(&documented_default(id)).unwrap();
        let d = Limits::default();
        assert_eq!(n("max_pending"), d.max_pending as u64);
        assert_eq!(n("api_concurrency"), d.api_concurrency as u64);
        assert_eq!(n("unknown_lookup_rate"), u64::from(d.unknown_lookup_rate));
        assert_eq!(n("unknown_lookup_floor"), u64::from(d.unknown_lookup_floor));
        assert_eq!(n("unknown_lookup_burst"), d.unknown_lookup_burst as u64);
        assert_eq!(n("source_penalty_burst"), d.source_penalty_burst as u64);
        assert_eq!(dur("source_penalty_forgive"), d.source_penalty_forgive);
        assert_eq!(dur("source_quiet_gap"), d.source_quiet_gap);
        assert_eq!(n("shield_filters"), d.shield_filters as u64);
        assert_eq!(n("unknown_log_rate"), u64::from(d.unknown_log_rate));
        assert_eq!(n("replay_memory"), d.replay_memory as u64);
        assert_eq!(n("known_key_cache"), d.known_key_cache as u64);
        assert_eq!(n("negative_cap"), d.negative_cap as u64);
        assert_eq!(dur("negative_purge_every"), d.negative_purge_every);
        assert_eq!(
            word::<DbCorruption>(&documented_default("db_corruption")),
            Ok(d.db_corruption)
        );
    }

    fn resolve(argv: &[&str], toml: &str) -> Result<Limits, ConfigError> {
        let _env = super::super::tests::ENV_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let base = [
            "jitwgd",
            "--interface",
            "wg0",
            "--api-url",
            "http://198.18.0.1:8080",
        ];
        let args = Args::try_parse_from(base.iter().chain(argv)).unwrap();
        resolve_text(args, toml, Path::new("t.toml")).map(|c| c.limits)
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let l = resolve(
            &["--api-concurrency", "4"],
            "api_concurrency = 9\nnegative_cap = 7\ndb_corruption = \"refuse\"\nsource_penalty_forgive = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(l.api_concurrency, 4);
        assert_eq!(l.negative_cap, 7);
        assert_eq!(l.db_corruption, DbCorruption::Refuse);
        assert_eq!(l.source_penalty_forgive, Duration::from_secs(3));
        assert_eq!(l.max_pending, defaults::MAX_PENDING);
    }

    #[test]
    fn the_shield_is_switched_off_by_zero_or_off_in_flag_or_file() {
        assert_eq!(
            resolve(&[], "").unwrap().shield_filters,
            defaults::SHIELD_FILTERS
        );
        assert_eq!(
            resolve(&[], "shield_filters = \"off\"\n")
                .unwrap()
                .shield_filters,
            0
        );
        assert_eq!(
            resolve(&[], "shield_filters = 64\n")
                .unwrap()
                .shield_filters,
            64
        );
        assert_eq!(
            resolve(&["--shield-filters", "off"], "shield_filters = 64\n")
                .unwrap()
                .shield_filters,
            0
        );
        let err = resolve(&[], "shield_filters = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("shield_filters"), "{err}");
    }

    #[test]
    fn bad_file_values_name_the_key() {
        let err = resolve(&[], "negative_cap = 0\n").unwrap_err().to_string();
        assert!(err.contains("negative_cap"), "{err}");
        let err = resolve(&[], "db_corruption = \"ignore\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("move-aside"), "{err}");
    }
}
