//! Stage one of configuration: exactly what the user wrote on the command line or in
//! `JITWGD_*` environment variables, already syntax-checked. Every field is an `Option`
//! so `resolve` can tell "not given" from "given the default" and let the config file
//! fill the gap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;

use super::values;
use super::{Backend, Boot, LogFormat, Mode};

/// jitwgd: a just-in-time WireGuard gateway.
///
/// Keeps a WireGuard interface nearly empty and installs a peer only when it knocks:
/// it sniffs handshake initiations, decrypts who is knocking, fetches that peer's
/// config (local SQLite cache, then the control-plane HTTP API), installs it and
/// handshakes back at once. A periodic eviction sweep evicts idle peers.
///
/// Every setting can come from a flag, a JITWGD_* environment variable or the TOML
/// file given with --config (key = long flag with dashes turned into underscores,
/// e.g. evict_after = "180s"). Precedence: flag > environment > file > default.
/// Durations are human strings: 250ms, 30s, 5m, 1h.
#[derive(Parser, Debug, Clone, Default)]
#[command(name = "jitwgd", version, about, long_about, max_term_width = 100)]
pub struct Args {
    /// TOML config file; its keys are the long flags below with `-` turned into `_`.
    ///
    /// Unknown keys are an error (a typo should not silently fall back to a default).
    /// Flags and environment variables override values from this file.
    #[arg(long, env = "JITWGD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// WireGuard interface to manage (required; at most 15 characters).
    ///
    /// The interface must already exist: jitwgd never creates it (with the userspace
    /// backend, creating it would start a stray wireguard-go process).
    #[arg(long, env = "JITWGD_INTERFACE", value_name = "NAME", value_parser = values::interface_name)]
    pub interface: Option<String>,

    /// How to talk to the WireGuard data plane [default: userspace].
    ///
    /// `userspace` uses the UAPI socket /var/run/wireguard/NAME.sock (wireguard-go);
    /// `kernel` uses netlink to the in-kernel module.
    #[arg(long, env = "JITWGD_BACKEND", value_enum)]
    pub backend: Option<Backend>,

    /// Network interface to sniff handshake initiations on [default: all interfaces].
    ///
    /// Set it to the uplink that carries the WireGuard UDP traffic to avoid looking at
    /// unrelated traffic.
    #[arg(long, env = "JITWGD_CAPTURE_INTERFACE", value_name = "NAME", value_parser = values::interface_name)]
    pub capture_interface: Option<String>,

    /// UDP port WireGuard listens on, used in the capture filter [default: read from the interface].
    #[arg(long, env = "JITWGD_LISTEN_PORT", value_name = "PORT")]
    pub listen_port: Option<u16>,

    /// SQLite database holding the peer cache (and, in push mode, every pushed peer)
    /// [default: /var/lib/jitwgd/jitwgd.db].
    #[arg(long, env = "JITWGD_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// Control-plane base URL, e.g. https://cp.example:8443 (required in jit mode).
    ///
    /// Unknown peers are fetched with GET {api_url}/v1/peers/{64 hex chars}. The answers
    /// carry peer configs, preshared keys included: use https:// (TLS via rustls, the
    /// system's root certificates unless --api-ca-file is given). Plain http:// is meant
    /// for loopback and private lab underlays (127.0.0.0/8, ::1, 100.64.0.0/10,
    /// 198.18.0.0/15, 2001:2::/48); jitwgd warns at start when it is used elsewhere.
    #[arg(long, env = "JITWGD_API_URL", value_name = "URL", value_parser = values::api_url)]
    pub api_url: Option<String>,

    /// PEM file of the CA certificate(s) that sign the control plane's TLS certificate
    /// [default: the system's root certificates].
    ///
    /// When given, only these CAs are trusted for the control plane (a private CA need
    /// not be installed system-wide, and a public CA cannot vouch for it).
    #[arg(long, env = "JITWGD_API_CA_FILE", value_name = "PATH")]
    pub api_ca_file: Option<PathBuf>,

    /// File holding the bearer token sent as `Authorization: Bearer ...` on every
    /// control-plane request [default: no token].
    ///
    /// Read once at start; surrounding whitespace is ignored; an empty file is an error.
    /// The token itself is never logged. Keep the file readable by jitwgd only.
    #[arg(long, env = "JITWGD_API_TOKEN_FILE", value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// PEM client certificate (chain) presented to the control plane over TLS
    /// [default: none]. Needs --api-client-key.
    #[arg(long, env = "JITWGD_API_CLIENT_CERT", value_name = "PATH")]
    pub api_client_cert: Option<PathBuf>,

    /// PEM private key of --api-client-cert [default: none].
    #[arg(long, env = "JITWGD_API_CLIENT_KEY", value_name = "PATH")]
    pub api_client_key: Option<PathBuf>,

    /// Give up on one control-plane request after this long [default: 2s].
    ///
    /// A timeout means "unknown for now", never "revoked": the key is retried later.
    #[arg(long, env = "JITWGD_API_TIMEOUT", value_name = "DURATION", value_parser = values::positive_duration)]
    pub api_timeout: Option<Duration>,

    /// Extra attempts after a failed control-plane request (errors, timeouts; never a 404)
    /// [default: 3].
    #[arg(long, env = "JITWGD_API_RETRIES", value_name = "COUNT")]
    pub api_retries: Option<u32>,

    /// Serve Prometheus metrics on GET /metrics and readiness on GET /ready at this
    /// address, e.g. 127.0.0.1:9100 [default: no metrics endpoint].
    #[arg(long, env = "JITWGD_METRICS_ADDR", value_name = "ADDR", value_parser = values::socket_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Where peers come from [default: jit].
    ///
    /// `jit` installs a peer when its first handshake initiation arrives (pull);
    /// `push` is the legacy baseline: install every peer published on NATS at once.
    #[arg(long, env = "JITWGD_MODE", value_enum)]
    pub mode: Option<Mode>,

    /// What to do at start-up [default: jit].
    ///
    /// `jit` starts with an empty interface and is ready at once; `preload` installs
    /// every stored peer first (the legacy behaviour, kept to measure reload time).
    #[arg(long, env = "JITWGD_BOOT", value_enum)]
    pub boot: Option<Boot>,

    /// Evict a peer whose last handshake is older than this, or that never completed
    /// one since install [default: 180s, WireGuard's REJECT_AFTER_TIME].
    #[arg(long, env = "JITWGD_EVICT_AFTER", value_name = "DURATION", value_parser = values::positive_duration)]
    pub evict_after: Option<Duration>,

    /// How often the eviction sweep runs [default: 30s].
    #[arg(long, env = "JITWGD_SWEEP_EVERY", value_name = "DURATION", value_parser = values::positive_duration)]
    pub sweep_every: Option<Duration>,

    /// At most this many peers are removed per data-plane call during an eviction sweep
    /// [default: 256].
    ///
    /// Removal is slow on the kernel backend (one RCU grace period per peer); bounded
    /// chunks keep installs from starving behind a long eviction sweep.
    #[arg(long, env = "JITWGD_SWEEP_CHUNK", value_name = "COUNT", value_parser = values::positive_count)]
    pub sweep_chunk: Option<usize>,

    /// How long one removal call may hold the data plane [default: 50ms].
    ///
    /// Chunks are sized by measured cost to fit this budget (never above --sweep-chunk),
    /// so an install queued behind an eviction sweep waits at most about this long. On a kernel that
    /// pays an RCU grace period per removed peer this means a few peers per call; on
    /// wireguard-go the full --sweep-chunk. A huge value (e.g. 1h) gives fixed chunks.
    /// On PREEMPT_RT kernels (~35 ms per removed peer) with heavy churn, 250ms evicts ~15 %
    /// slower than one big call instead of ~31 % (BENCHMARKS.md, kernel).
    #[arg(long, env = "JITWGD_SWEEP_BUDGET", value_name = "DURATION", value_parser = values::positive_duration)]
    pub sweep_budget: Option<Duration>,

    /// Also run the eviction sweep in push mode: on|off [default: off].
    ///
    /// Off reproduces the legacy gateway, which never forgets a pushed peer.
    #[arg(long, env = "JITWGD_EVICT_IN_PUSH_MODE", value_name = "on|off", value_parser = values::switch)]
    pub evict_in_push_mode: Option<bool>,

    /// Install peers in the initiator role so the gateway handshakes back at once:
    /// on|off [default: on].
    ///
    /// Off leaves the client to retry after WireGuard's 5 s REKEY_TIMEOUT, which is
    /// what setup latency looks like without it.
    #[arg(long, env = "JITWGD_INITIATE", value_name = "on|off", value_parser = values::switch)]
    pub initiate: Option<bool>,

    /// At boot, re-install the peers active within this long before the shutdown, with
    /// their last endpoint, and initiate to them at once [default: 3m, off or 0 disables].
    ///
    /// Without it, a client whose traffic goes unanswered after a gateway restart only
    /// re-handshakes after WireGuard's own ~15 s (keepalive + rekey timeouts). Activity
    /// (last handshake, endpoint) is stored at each install and each eviction sweep; 3m covers
    /// WireGuard's 120 s re-key of an active session. Both boot policies do it; in `jit`
    /// boot `/ready` does not wait for it, in `preload` boot these peers go first. A
    /// client that has gone gets the gateway's initiations for up to 90 s (WireGuard's
    /// retry limit) and is then evicted as usual.
    #[arg(long, env = "JITWGD_REINSTALL_ACTIVE", value_name = "DURATION", value_parser = values::duration_or_off)]
    pub reinstall_active: Option<Duration>,

    /// Role-inversion initiations per second at most; 0 = unpaced [default: 1500, about
    /// what one core of wireguard-go completes; the best of 0, 800, 1000, 1500, 2500 in BENCHMARKS.md,
    /// storm].
    ///
    /// Each gateway initiation comes back as a handshake response the data plane must
    /// process; a storm of them fills its handshake queue (wireguard-go: 128), which then
    /// answers responses with cookie replies, and those clients wait for the 5 s retry.
    /// Installs beyond the rate are written at once and initiate as the rate allows.
    #[arg(long, env = "JITWGD_INITIATE_RATE", value_name = "PER_SECOND")]
    pub initiate_rate: Option<u32>,

    /// Adapt the role-inversion rate to the data plane's load: on|off [default: off; it
    /// lost to the fixed rate in every paired storm run, BENCHMARKS.md, storm].
    ///
    /// Counts the cookie replies the data plane sends (it sends them only while under
    /// load) on a second filtered AF_PACKET socket; every 50 ms with any, the rate halves
    /// (down to an eighth of --initiate-rate), every 50 ms without any while initiations
    /// wait, it rises by a quarter (up to four times --initiate-rate). Off: the fixed rate.
    #[arg(long, env = "JITWGD_INITIATE_ADAPT", value_name = "on|off", value_parser = values::switch)]
    pub initiate_adapt: Option<bool>,

    /// The storm guard: on|off [default: on; better in 9 of 12 paired storm runs, median
    /// 99.3 % within 5 s against 86.9 %, BENCHMARKS.md, storm, sixth round; needs
    /// --initiate and the kernel shield].
    ///
    /// While newcomers' initiations arrive at --initiate-rate or faster (a storm: faster
    /// than the data plane is initiated to; counted in 20 ms windows), and for 1 s after,
    /// every handshake initiation is dropped at tc ingress of --capture-interface: a newcomer's own
    /// initiation is of no use to the data plane, which would spend an X25519 on it and
    /// fill its handshake queue. jitwgd still captures them all; an installed peer's is
    /// answered by the data plane initiating to it (a fresh peer at the captured endpoint).
    #[arg(long, env = "JITWGD_STORM_GUARD", value_name = "on|off", value_parser = values::switch)]
    pub storm_guard: Option<bool>,

    /// Threads that identify captured initiations (2 X25519 each, 1 for a known key) off
    /// the capture task
    /// [default: 2].
    #[arg(long, env = "JITWGD_IDENTIFY_WORKERS", value_name = "COUNT", value_parser = values::positive_count)]
    pub identify_workers: Option<usize>,

    /// Captured initiations that may wait for an identify worker, in each of its two
    /// lanes [default: 4096].
    ///
    /// Initiations from the source of a key that resolved recently wait in the known
    /// lane, served first; the rest in the unknown lane, which is fair across source
    /// networks (/24, /64): served round robin, and when it is full a network with fewer
    /// waiting displaces the oldest initiation of the longest queue
    /// (reason="identify_displaced"). Beyond it they are dropped and counted in
    /// jitwgd_initiations_dropped_total{reason="identify_queue_full"} (and
    /// jitwgd_capture_dropped_total); one that waited over 5 s (the client's own retry)
    /// is dropped as reason="identify_expired". Before the unknown lane, initiations from
    /// a network penalised for 404s (--source-penalty-burst) are shed without any
    /// Diffie-Hellman (reason="source_penalised"). The client retries.
    #[arg(long, env = "JITWGD_IDENTIFY_QUEUE", value_name = "COUNT", value_parser = values::positive_count)]
    pub identify_queue: Option<usize>,

    /// Initiations from one source network (/24 for IPv4, /64 for IPv6) that may wait in
    /// the unknown identify lane [default: 256, a sixteenth of --identify-queue's default].
    ///
    /// A flood from one network holds at most this many places; more are dropped as
    /// reason="identify_queue_full".
    #[arg(long, env = "JITWGD_IDENTIFY_QUEUE_PER_SOURCE", value_name = "COUNT", value_parser = values::positive_count)]
    pub identify_queue_per_source: Option<usize>,

    /// Nice value added to the identify workers, 0..=19 [default: 5].
    ///
    /// Below the data plane's priority, so on a busy gateway its handshake queue drains
    /// first: a client connects when the data plane answers it, not when jitwgd has
    /// identified the next knock.
    #[arg(long, env = "JITWGD_IDENTIFY_NICE", value_name = "NICE", value_parser = clap::value_parser!(i32).range(0..=19))]
    pub identify_nice: Option<i32>,

    /// NATS server URL for push mode, e.g. nats://198.18.0.1:4222 (required in push mode).
    #[arg(long, env = "JITWGD_NATS_URL", value_name = "URL", value_parser = values::nats_url)]
    pub nats_url: Option<String>,

    /// NATS subject peers are published on [default: jitwg.peers].
    #[arg(long, env = "JITWGD_NATS_SUBJECT", value_name = "SUBJECT", value_parser = values::nats_subject)]
    pub nats_subject: Option<String>,

    /// Refuse any peer whose allowed IPs fall outside this prefix [default: 100.64.0.0/10].
    ///
    /// A guard against a control plane (or a NATS publisher) routing traffic it
    /// should not, e.g. 0.0.0.0/0. Also refused: allowed IPs wider than
    /// --allowed-ip-min-len-v4/-v6, and allowed IPs overlapping another installed peer's
    /// (unless the control plane no longer gives them to that peer).
    #[arg(long, env = "JITWGD_ALLOWED_PREFIX", value_name = "PREFIX", value_parser = values::prefix)]
    pub allowed_prefix: Option<IpNet>,

    /// Shortest IPv4 prefix length an allowed IP may have [default: 32].
    ///
    /// 32 means host routes only: one control-plane answer cannot route a range of
    /// tunnel addresses to one peer. Lower it (e.g. 24) only if clients route subnets
    /// behind them. Applies to cached and stored configs too, at the moment they are used.
    #[arg(long, env = "JITWGD_ALLOWED_IP_MIN_LEN_V4", value_name = "BITS", value_parser = values::prefix_len_v4)]
    pub allowed_ip_min_len_v4: Option<u8>,

    /// Shortest IPv6 prefix length an allowed IP may have [default: 128].
    ///
    /// 128 means host routes only; see --allowed-ip-min-len-v4.
    #[arg(long, env = "JITWGD_ALLOWED_IP_MIN_LEN_V6", value_name = "BITS", value_parser = values::prefix_len_v6)]
    pub allowed_ip_min_len_v6: Option<u8>,

    /// Trust a cached peer config for this long before asking the control plane again
    /// [default: 5m].
    #[arg(long, env = "JITWGD_POSITIVE_TTL", value_name = "DURATION", value_parser = values::duration)]
    pub positive_ttl: Option<Duration>,

    /// Remember that the control plane does not know a key (HTTP 404) for this long
    /// [default: 60s].
    ///
    /// Shields the control plane from clients with deleted keys and from a scanner that
    /// repeats a key. It cannot stop a flood of fresh keys (each is new): that is what
    /// --unknown-lookup-rate and --source-penalty-burst are for.
    #[arg(long, env = "JITWGD_NEGATIVE_TTL", value_name = "DURATION", value_parser = values::duration)]
    pub negative_ttl: Option<Duration>,

    /// Ask the control plane about one key at most once per this interval [default: 1s].
    #[arg(long, env = "JITWGD_API_MIN_INTERVAL", value_name = "DURATION", value_parser = values::duration)]
    pub api_min_interval: Option<Duration>,

    /// Log line format [default: text].
    #[arg(long, env = "JITWGD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Admission control, caps and state bounds (`config::limits`).
    #[command(flatten)]
    pub limits: super::LimitArgs,
}
