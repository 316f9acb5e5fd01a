//! What the daemon counts, in one Prometheus registry: every stage of the JIT pipeline
//! (capture -> identify -> replay -> lookup -> install -> sweep), the legacy push path
//! and readiness. `server` serves it over HTTP (`GET /metrics`, `GET /ready`).

mod server;
mod shield;
mod stage;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use server::{serve, MetricsError, MetricsServer, OPENMETRICS_CONTENT_TYPE};
pub use shield::ShieldMetrics;
pub use stage::{observe_stage, StageCpuMetrics, StageTimer, CPU_TIMED_STAGES};

/// Values of the `stage` label of `jitwgd_identify_failed_total`.
pub const IDENTIFY_STAGES: &[&str] = &[
    "header",
    "length",
    "mac1",
    "decrypt_static",
    "decrypt_timestamp",
];

/// Values of the `reason` label of `jitwgd_capture_dropped_total`: why a captured
/// initiation was never identified (`identify_pool::DropReason`, `source_penalised`:
/// shed before identification because its source network is penalised and no newcomer
/// pass was left, `address_penalised`: its address in a penalised network offended).
pub const CAPTURE_DROP_REASONS: &[&str] = &[
    "identify_queue_full",
    "identify_displaced",
    "identify_expired",
    "identify_stopped",
    "source_penalised",
    "address_penalised",
];

/// Values of the `reason` label of `jitwgd_initiations_dropped_total`: every place an
/// initiation is dropped without being answered by the control plane's verdict.
/// `identify_queue_full` (lane full, or the source network's share of the unknown lane
/// waiting), `identify_displaced` (made room for a network with fewer waiting),
/// `identify_expired` (waited longer than 5 s), `identify_stopped`: before identification
/// (also in `jitwgd_capture_dropped_total`); `handlers_full`: identified, but
/// `--max-pending` initiations are already being handled; `replay`: timestamp not newer
/// than the last seen; `source_penalised`: from a source network penalised for 404s, shed
/// before identification unless its source address recently brought a resolved key (the
/// pre-identification share is also in `jitwgd_capture_dropped_total`), or a first
/// contact refused at lookup; `address_penalised`: from an address inside a penalised
/// network that caused a 404 or a negative-cache hit, or knocked faster than
/// `--source-quiet-gap` (shed before identification, or refused at lookup);
/// `unknown_budget`: a first contact refused by the global
/// budget; `rate_limited`: the key was looked up less than `--api-min-interval` ago.
pub const INITIATION_DROP_REASONS: &[&str] = &[
    "identify_queue_full",
    "identify_displaced",
    "identify_expired",
    "identify_stopped",
    "handlers_full",
    "replay",
    "source_penalised",
    "address_penalised",
    "unknown_budget",
    "rate_limited",
];

/// Values of the `operation` label of `jitwgd_store_errors_total`: which use of the
/// peer database failed (the daemon carried on without it: a cache read falls through
/// to the API, the replay guard to memory).
pub const STORE_OPERATIONS: &[&str] = &["cache_read", "cache_write", "replay", "purge"];

/// Values of the `outcome` label of `jitwgd_lookups_total`.
pub const LOOKUP_OUTCOMES: &[&str] = &[
    "cache_hit",
    "negative_hit",
    "api_found",
    "api_not_found",
    "api_error",
    "refused",
    "rate_limited",
    "throttled",
];

/// Values of the `outcome` label of `jitwgd_api_requests_total`: how each request sent to the
/// control plane ended (retries are requests too). `ok`: 200 with a peer document; `not_found`:
/// 404; `timeout`: no answer within `api_timeout`; `error`: anything else (other status, refused
/// connection, bad body).
pub const API_REQUEST_OUTCOMES: &[&str] = &["ok", "not_found", "error", "timeout"];

/// Values of the `stage` label of `jitwgd_stage_seconds`: where the JIT path spends its time,
/// so a capacity model can tell the stages' costs apart. `identify`: mac1 + the Noise first leg
/// (one initiation, on an identify worker); `lookup`: cache and, on a miss, the control-plane
/// request (wall time, so it includes waiting for the API); `install`: one data-plane write of a
/// batch of JIT installs (on the install worker).
pub const TIMED_STAGES: &[&str] = &["identify", "lookup", "install"];

/// Values of the `outcome` label of `jitwgd_push_messages_total`.
pub const PUSH_OUTCOMES: &[&str] = &["installed", "refused", "bad_json"];

/// Values of the `outcome` label of `jitwgd_address_conflicts_total`: a newcomer whose
/// allowed IPs overlapped an installed peer's was installed after the holder was found to
/// have given the address up (`reassigned`), or refused (`refused`).
pub const ADDRESS_CONFLICT_OUTCOMES: &[&str] = &["reassigned", "refused"];

/// Values of the `source` label of `jitwgd_stored_configs_refused_total`: where a stored
/// config validated earlier failed the current settings when boot was about to install it.
/// (A cache entry that fails them is not counted here: the lookup asks the control plane
/// again, and a refused answer counts as `jitwgd_lookups_total{outcome="refused"}`.)
pub const STORED_CONFIG_SOURCES: &[&str] = &["preload", "reinstall"];

/// Label set `{source="..."}`: where a config came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// Label set `{stage="..."}`: where identification of a captured packet gave up.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

/// Label set `{reason="..."}`: why a captured initiation was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Label set `{operation="..."}`: which store operation failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

/// Label set `{outcome="..."}`: how a lookup or a push message ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// All daemon metrics. Fields are cheap handles (atomics behind `Arc`s) that the
/// pipeline updates directly; `registry` holds clones of them for encoding. Counter
/// names get a `_total` suffix on the wire, e.g. `jitwgd_installs_total`.
#[derive(Debug)]
pub struct Metrics {
    /// Packets that passed the BPF filter and parsed as handshake initiations.
    pub initiations_captured: Counter,
    /// Captured initiations dropped before identification, by `reason` (see
    /// `CAPTURE_DROP_REASONS`).
    pub capture_dropped: Family<ReasonLabel, Counter>,
    /// Initiations dropped, by `reason` (see `INITIATION_DROP_REASONS`).
    pub initiations_dropped: Family<ReasonLabel, Counter>,
    /// Peer-database operations that failed, by `operation` (see `STORE_OPERATIONS`).
    pub store_errors: Family<OperationLabel, Counter>,
    /// Identified initiations whose static-static DH came from the cache (known keys).
    pub identify_cached: Counter,
    /// Per-key log lines about unknown keys suppressed by `--unknown-log-rate`.
    pub log_lines_suppressed: Counter,
    /// Expired or over-cap negative-cache rows deleted by the purge timer.
    pub negative_purged: Counter,
    /// Share of 404s among recent first-contact answers (drives the unknown-key budget).
    pub unknown_not_found_share: Gauge<f64, AtomicU64>,
    /// Control-plane requests in flight (capped by `--api-concurrency`).
    pub api_in_flight: Gauge,
    /// Initiations whose mac1 did not match our public key (no DH was spent on them).
    pub mac1_rejected: Counter,
    /// Identification failures by `stage` (see `IDENTIFY_STAGES`).
    pub identify_failed: Family<StageLabel, Counter>,
    /// Initiations ignored as replays: sent again (`replay::ResentMemory`), or with a
    /// timestamp not newer than the last one seen for the key.
    pub replays_ignored: Counter,
    /// Initiations from peers already on the interface (the data plane handles those).
    pub already_installed: Counter,
    /// Lookups by `outcome` (see `LOOKUP_OUTCOMES`).
    pub lookups: Family<OutcomeLabel, Counter>,
    /// Control-plane requests sent, by `outcome` (see `API_REQUEST_OUTCOMES`), retries included;
    /// counted when the request ends. The testbed compares it with the control plane's count.
    pub api_requests: Family<OutcomeLabel, Counter>,
    /// Control-plane request latency.
    pub api_latency_seconds: Histogram,
    /// Peers installed on the data plane.
    pub installs: Counter,
    /// Failed data-plane install calls.
    pub install_errors: Counter,
    /// From capture of the initiation to install done.
    pub install_latency_seconds: Histogram,
    /// Role-inversion initiations sent (at install, or deferred by the initiation pacer).
    pub role_inversions: Counter,
    /// Deferred role inversions dropped: waited past the client's own retry, or the peer
    /// was removed meanwhile.
    pub deferred_initiations_dropped: Counter,
    /// Role inversions sent again because the data plane refused the client's response.
    pub role_inversion_retries: Counter,
    /// Peers removed by the sweep for being idle.
    pub evictions: Counter,
    /// The kernel shield's own work (`shield`).
    pub shield: ShieldMetrics,
    /// Peers removed because the control plane no longer knows them.
    pub revocations: Counter,
    /// Peers currently configured on the interface.
    pub installed_peers: Gauge,
    /// Push-mode messages by `outcome` (see `PUSH_OUTCOMES`).
    pub push_messages: Family<OutcomeLabel, Counter>,
    /// Peers re-installed at boot because they were active before the shutdown
    /// (`--reinstall-active`), with their last endpoint and an initiation.
    pub boot_reinstalled: Counter,
    /// Of those, how many completed a handshake after boot (seen by a sweep): the rest
    /// were initiations sent to clients that had gone.
    pub boot_reinstalled_handshakes: Counter,
    /// Seconds from daemon start to ready (boot finished).
    pub time_to_ready_seconds: Gauge<f64, AtomicU64>,
    /// 0 until boot finished, then 1; `GET /ready` answers from it.
    pub ready: Gauge,
    /// Installs whose allowed IPs overlapped an installed peer's, by `outcome` (see
    /// `ADDRESS_CONFLICT_OUTCOMES`).
    pub address_conflicts: Family<OutcomeLabel, Counter>,
    /// Stored configs that no longer pass the current address settings at boot, by
    /// `source` (see `STORED_CONFIG_SOURCES`); they were not installed.
    pub stored_configs_refused: Family<SourceLabel, Counter>,
    /// Seconds spent per pipeline stage, by `stage` (see `TIMED_STAGES`).
    pub stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// CPU seconds per stage that runs on one thread (see `CPU_TIMED_STAGES`).
    pub stage_cpu: StageCpuMetrics,
    /// Holds clones of the handles above for encoding.
    registry: Registry,
}

/// 1 µs .. ~4 s: an identify takes tens of µs, a lookup up to an API timeout.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_001, 4.0, 12))
}

impl Metrics {
    /// A fresh set of metrics, all zero, registered under the `jitwgd_` prefix. Every
    /// known label value starts at zero so dashboards and `rate()` see it from the start.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Arc<Metrics> {
        let m = Metrics {
            initiations_captured: Counter::default(),
            capture_dropped: Family::default(),
            initiations_dropped: Family::default(),
            store_errors: Family::default(),
            identify_cached: Counter::default(),
            log_lines_suppressed: Counter::default(),
            negative_purged: Counter::default(),
            unknown_not_found_share: Gauge::default(),
            api_in_flight: Gauge::default(),
            mac1_rejected: Counter::default(),
            identify_failed: Family::default(),
            replays_ignored: Counter::default(),
            already_installed: Counter::default(),
            lookups: Family::default(),
            api_requests: Family::default(),
            // 0.5 ms .. ~16 s
            api_latency_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            installs: Counter::default(),
            install_errors: Counter::default(),
            // 50 µs .. ~6.5 s
            install_latency_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            role_inversions: Counter::default(),
            deferred_initiations_dropped: Counter::default(),
            role_inversion_retries: Counter::default(),
            evictions: Counter::default(),
            shield: ShieldMetrics::default(),
            revocations: Counter::default(),
            installed_peers: Gauge::default(),
            push_messages: Family::default(),
            boot_reinstalled: Counter::default(),
            boot_reinstalled_handshakes: Counter::default(),
            time_to_ready_seconds: Gauge::default(),
            ready: Gauge::default(),
            address_conflicts: Family::default(),
            stored_configs_refused: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram as fn() -> Histogram),
            stage_cpu: StageCpuMetrics::new(),
            registry: Registry::with_prefix("jitwgd"),
        };
        for &stage in TIMED_STAGES {
            let _ = m.stage_seconds.get_or_create(&StageLabel { stage });
        }
        for &reason in CAPTURE_DROP_REASONS {
            let _ = m.capture_dropped.get_or_create(&ReasonLabel { reason });
        }
        for &reason in INITIATION_DROP_REASONS {
            let _ = m.initiations_dropped.get_or_create(&ReasonLabel { reason });
        }
        for &operation in STORE_OPERATIONS {
            let _ = m.store_errors.get_or_create(&OperationLabel { operation });
        }
        for &stage in IDENTIFY_STAGES {
            let _ = m.identify_failed.get_or_create(&StageLabel { stage });
        }
        for &outcome in LOOKUP_OUTCOMES {
            let _ = m.lookups.get_or_create(&OutcomeLabel { outcome });
        }
        for &outcome in API_REQUEST_OUTCOMES {
            let _ = m.api_requests.get_or_create(&OutcomeLabel { outcome });
        }
        for &outcome in PUSH_OUTCOMES {
            let _ = m.push_messages.get_or_create(&OutcomeLabel { outcome });
        }
        for &outcome in ADDRESS_CONFLICT_OUTCOMES {
            let _ = m.address_conflicts.get_or_create(&OutcomeLabel { outcome });
        }
        for &source in STORED_CONFIG_SOURCES {
            let _ = m
                .stored_configs_refused
                .get_or_create(&SourceLabel { source });
        }
        Arc::new(m.registered())
    }

    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "address_conflicts",
            "Installs whose allowed IPs overlapped an installed peer's, by outcome",
            self.address_conflicts.clone(),
        );
        r.register(
            "stored_configs_refused",
            "Stored peer configs refused at boot by the current address settings, by source",
            self.stored_configs_refused.clone(),
        );
        r.register(
            "initiations_captured",
            "Handshake initiations that passed the capture filter and parsed",
            self.initiations_captured.clone(),
        );
        r.register(
            "capture_dropped",
            "Captured initiations dropped before identification, by reason",
            self.capture_dropped.clone(),
        );
        r.register(
            "initiations_dropped",
            "Initiations dropped without a control-plane verdict, by reason",
            self.initiations_dropped.clone(),
        );
        r.register(
            "store_errors",
            "Peer-database operations that failed (the daemon carried on without them), by operation",
            self.store_errors.clone(),
        );
        r.register(
            "identify_cached",
            "Initiations identified with the cached static-static DH (one X25519 instead of two)",
            self.identify_cached.clone(),
        );
        r.register(
            "log_lines_suppressed",
            "Per-key log lines about unknown keys suppressed by the log rate limit",
            self.log_lines_suppressed.clone(),
        );
        r.register(
            "negative_purged",
            "Negative-cache rows deleted by the purge timer (expired or over the cap)",
            self.negative_purged.clone(),
        );
        r.register(
            "unknown_not_found_share",
            "Share of 404s among recent first-contact lookups (tightens the unknown-key budget above 0.5)",
            self.unknown_not_found_share.clone(),
        );
        r.register(
            "api_in_flight",
            "Control-plane requests in flight",
            self.api_in_flight.clone(),
        );
        r.register(
            "mac1_rejected",
            "Initiations whose mac1 does not match this gateway's public key",
            self.mac1_rejected.clone(),
        );
        r.register(
            "identify_failed",
            "Initiations that could not be identified, by the stage that failed",
            self.identify_failed.clone(),
        );
        r.register(
            "replays_ignored",
            "Initiations ignored as replays: the same initiation identified before (same ephemeral key, dropped before its Diffie-Hellman), or a timestamp not newer than the last seen for the key",
            self.replays_ignored.clone(),
        );
        r.register(
            "already_installed",
            "Initiations from peers already configured on the interface",
            self.already_installed.clone(),
        );
        r.register(
            "lookups",
            "Peer config lookups by outcome",
            self.lookups.clone(),
        );
        r.register(
            "api_requests",
            "Requests sent to the control plane (retries included), by outcome",
            self.api_requests.clone(),
        );
        r.register(
            "api_latency_seconds",
            "Control-plane request latency in seconds",
            self.api_latency_seconds.clone(),
        );
        r.register(
            "installs",
            "Peers installed on the data plane",
            self.installs.clone(),
        );
        r.register(
            "install_errors",
            "Data-plane install calls that failed",
            self.install_errors.clone(),
        );
        r.register(
            "install_latency_seconds",
            "Seconds from capture of an initiation to its peer being installed",
            self.install_latency_seconds.clone(),
        );
        r.register(
            "role_inversions",
            "Role-inversion initiations the data plane was told to send (at install or paced)",
            self.role_inversions.clone(),
        );
        r.register(
            "deferred_initiations_dropped",
            "Paced role inversions dropped: the client's own retry was due, or the peer left",
            self.deferred_initiations_dropped.clone(),
        );
        r.register(
            "role_inversion_retries",
            "Role inversions sent again at once because the data plane answered the client's response with a cookie reply (the client holds a cookie now), or because the storm guard kept an installed peer's own initiation from the data plane (jitwgd_storm_guard_detours_total)",
            self.role_inversion_retries.clone(),
        );
        r.register(
            "evictions",
            "Peers removed by the sweep for being idle",
            self.evictions.clone(),
        );
        r.register(
            "revocations",
            "Peers removed because the control plane no longer knows them",
            self.revocations.clone(),
        );
        r.register(
            "installed_peers",
            "Peers currently configured on the interface",
            self.installed_peers.clone(),
        );
        r.register(
            "push_messages",
            "Push-mode NATS messages by outcome",
            self.push_messages.clone(),
        );
        r.register(
            "boot_reinstalled",
            "Peers re-installed at boot with their last endpoint because they were active before the shutdown",
            self.boot_reinstalled.clone(),
        );
        r.register(
            "boot_reinstalled_handshakes",
            "Peers re-installed at boot that then completed a handshake (seen by a sweep)",
            self.boot_reinstalled_handshakes.clone(),
        );
        r.register(
            "time_to_ready_seconds",
            "Seconds from daemon start until boot finished",
            self.time_to_ready_seconds.clone(),
        );
        r.register(
            "ready",
            "1 once boot has finished, 0 before",
            self.ready.clone(),
        );
        self.shield.register(r);
        r.register(
            "stage_seconds",
            "Seconds spent in each JIT pipeline stage (identify, lookup, install)",
            self.stage_seconds.clone(),
        );
        self.stage_cpu.register(r);
        self
    }

    /// Everything in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be an encoder bug,
        // and a partial scrape is better than none.
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::warn!("metrics encoding failed; serving partial output");
        }
        out
    }

    /// Whether boot has finished (`ready` gauge is 1).
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }
}

/// Count one captured initiation dropped for `reason` (one of `CAPTURE_DROP_REASONS`).
pub fn count_capture_drop(metrics: &Metrics, reason: &'static str) {
    debug_assert!(
        CAPTURE_DROP_REASONS.contains(&reason),
        "unknown reason {reason}"
    );
    metrics
        .capture_dropped
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// Count one initiation dropped for `reason` (one of `INITIATION_DROP_REASONS`).
pub fn count_drop(metrics: &Metrics, reason: &'static str) {
    debug_assert!(
        INITIATION_DROP_REASONS.contains(&reason),
        "unknown reason {reason}"
    );
    metrics
        .initiations_dropped
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// Count one failed store `operation` (one of `STORE_OPERATIONS`).
pub fn count_store_error(metrics: &Metrics, operation: &'static str) {
    debug_assert!(
        STORE_OPERATIONS.contains(&operation),
        "unknown operation {operation}"
    );
    metrics
        .store_errors
        .get_or_create(&OperationLabel { operation })
        .inc();
}

/// Count one identification failure at `stage` (one of `IDENTIFY_STAGES`).
pub fn count_identify_failure(metrics: &Metrics, stage: &'static str) {
    debug_assert!(IDENTIFY_STAGES.contains(&stage), "unknown stage {stage}");
    metrics
        .identify_failed
        .get_or_create(&StageLabel { stage })
        .inc();
}

/// Count one lookup ending in `outcome` (one of `LOOKUP_OUTCOMES`).
pub fn count_lookup(metrics: &Metrics, outcome: &'static str) {
    debug_assert!(
        LOOKUP_OUTCOMES.contains(&outcome),
        "unknown outcome {outcome}"
    );
    metrics
        .lookups
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

/// Count one push message ending in `outcome` (one of `PUSH_OUTCOMES`).
pub fn count_address_conflict(metrics: &Metrics, outcome: &'static str) {
    debug_assert!(ADDRESS_CONFLICT_OUTCOMES.contains(&outcome));
    metrics
        .address_conflicts
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

pub fn count_stored_config_refused(metrics: &Metrics, source: &'static str) {
    debug_assert!(STORED_CONFIG_SOURCES.contains(&source));
    metrics
        .stored_configs_refused
        .get_or_create(&SourceLabel { source })
        .inc();
}

pub fn count_push(metrics: &Metrics, outcome: &'static str) {
    debug_assert!(
        PUSH_OUTCOMES.contains(&outcome),
        "unknown outcome {outcome}"
    );
    metrics
        .push_messages
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
}

#[cfg(test)]
mod tests;
