//! The JIT packet path, stage by stage: a captured datagram is parsed (capture),
//! queued in its lane (`identify_pool`: sources of known keys first), identified
//! (identify, with the static-static DH cached for known keys, and none at all for a
//! packet identified before and sent again: `replay::ResentMemory`), checked against the
//! replay guard (in memory for every key, on disk for keys that resolved), looked up
//! (lookup, with admission control for first contacts) and installed (install).
//! `capture_loop` reads the socket; the identify workers (`start_identify_pool`) hand
//! each identified initiation to `Pipeline::handle`, at most `max_pending` at once.
//! An installed peer's initiation is the data plane's business, except while the storm
//! guard keeps every initiation from it (`shield::storm`): then the data plane is told
//! to initiate to that peer instead (`Pipeline::detour`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::activity::ActivityLog;
use crate::addresses::claim;
use crate::admission::LogBudget;
use crate::capture::{self, CaptureSocket};
use crate::config::{defaults, Limits};
use crate::errors::Causes;
use crate::identify::{self, Identified, IdentifyError, ResponderKeys, StaticStaticCache};
use crate::identify_pool::{
    Captured, DropReason, IdentifyPool, KnownSources, Lane, PoolSettings, PoolStartError, Queued,
};
use crate::install::{InstallError, InstallQueue};
use crate::lookup::{Lookup, LookupOutcome};
use crate::metrics::{self, Metrics};
use crate::peer::{PeerConfig, PublicKey, Timestamp};
use crate::replay::{ReplayMemory, ReplayVerdict, ResentMemory};
use crate::shield::storm::StormMeter;
use crate::shield::GuardFlag;
use crate::store::SharedStore;

/// The bounds of the JIT path's own state (a subset of `config::Limits`).
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    /// Identified initiations handled at once at most.
    pub max_pending: usize,
    /// Keys the in-memory replay guard remembers.
    pub replay_memory: usize,
    /// Known keys whose static-static DH is cached (0: off).
    pub known_key_cache: usize,
    /// Per-key log lines about unknown keys per second.
    pub unknown_log_rate: u32,
}

impl Default for PipelineLimits {
    fn default() -> Self {
        PipelineLimits::from(&Limits::default())
    }
}

impl From<&Limits> for PipelineLimits {
    fn from(l: &Limits) -> Self {
        PipelineLimits {
            max_pending: l.max_pending,
            replay_memory: l.replay_memory,
            known_key_cache: l.known_key_cache,
            unknown_log_rate: l.unknown_log_rate,
        }
    }
}

/// Shared state of the JIT path.
pub struct Pipeline {
    keys: ResponderKeys,
    /// Holds the durable replay guard (newest timestamp of keys that resolved).
    store: SharedStore,
    lookup: Arc<Lookup>,
    queue: InstallQueue,
    metrics: Arc<Metrics>,
    /// Keys with a lookup/install in progress: later initiations of the same key do
    /// not start a second one.
    pending: Mutex<HashSet<PublicKey>>,
    /// Where each install's endpoint is remembered for re-install at boot (`None`: off).
    activity: Option<Arc<ActivityLog>>,
    /// The replay guard every initiation passes first; bounded, so a flood of fresh
    /// keys costs memory up to its capacity and no disk at all.
    replay_memory: Mutex<ReplayMemory>,
    /// Ephemeral keys of initiations identified: the same packet sent again is dropped
    /// before its Diffie-Hellman (the identify workers ask it).
    resent: Arc<Mutex<ResentMemory>>,
    /// Static-static DH of keys that resolved: their next initiation costs one X25519.
    known_keys: Arc<StaticStaticCache>,
    /// Sources of keys that resolved: their next initiation waits in the known lane.
    known_sources: Arc<KnownSources>,
    /// Permits for handling identified initiations: bounds the tasks a flood can start.
    handlers: Arc<Semaphore>,
    /// Rate limit of per-initiation log lines about unknown keys and junk.
    log_budget: Mutex<LogBudget>,
    /// Set while the storm guard keeps every initiation from the data plane.
    storm_guard: GuardFlag,
}

/// Removes a key from `pending` however the handling ends.
struct PendingGuard<'a> {
    set: &'a Mutex<HashSet<PublicKey>>,
    key: PublicKey,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.key);
    }
}

/// The locks here guard plain data that is consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pipeline {
    pub fn new(
        keys: ResponderKeys,
        store: SharedStore,
        lookup: Arc<Lookup>,
        queue: InstallQueue,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limits = PipelineLimits::default();
        Pipeline {
            known_keys: Arc::new(StaticStaticCache::new(&keys, limits.known_key_cache)),
            keys,
            store,
            lookup,
            queue,
            metrics,
            pending: Mutex::new(HashSet::new()),
            activity: None,
            replay_memory: Mutex::new(ReplayMemory::new(limits.replay_memory)),
            resent: Arc::new(Mutex::new(ResentMemory::new(defaults::RESENT_MEMORY))),
            known_sources: Arc::new(KnownSources::new(defaults::KNOWN_KEY_CACHE)),
            handlers: Arc::new(Semaphore::new(limits.max_pending)),
            log_budget: Mutex::new(LogBudget::new(limits.unknown_log_rate, Instant::now())),
            storm_guard: GuardFlag::default(),
        }
    }

    /// Follow the kernel shield's storm guard: while it is up, installed peers'
    /// initiations are detoured (`detour`).
    pub fn with_storm_guard(mut self, flag: GuardFlag) -> Self {
        self.storm_guard = flag;
        self
    }

    /// Record each install's endpoint in `activity` (boot re-installs active peers).
    pub fn with_activity(mut self, activity: Arc<ActivityLog>) -> Self {
        self.activity = activity.enabled().then_some(activity);
        self
    }

    /// Bound the path's state and work by `limits`.
    pub fn with_limits(mut self, limits: PipelineLimits) -> Self {
        self.known_keys = Arc::new(StaticStaticCache::new(&self.keys, limits.known_key_cache));
        self.known_sources = Arc::new(KnownSources::new(limits.known_key_cache.max(1)));
        self.replay_memory = Mutex::new(ReplayMemory::new(limits.replay_memory));
        self.handlers = Arc::new(Semaphore::new(limits.max_pending.max(1)));
        self.log_budget = Mutex::new(LogBudget::new(limits.unknown_log_rate, Instant::now()));
        self
    }

    /// Sources whose initiations go to the identify pool's known lane.
    pub fn known_sources(&self) -> Arc<KnownSources> {
        self.known_sources.clone()
    }

    /// Whether a per-initiation line about an unknown key or junk may be logged now;
    /// `Some(n)`: yes, `n` lines were suppressed since the last one.
    fn may_log(&self) -> Option<u64> {
        let allowed = lock(&self.log_budget).allow(Instant::now());
        if allowed.is_none() {
            self.metrics.log_lines_suppressed.inc();
        }
        allowed
    }

    fn drop_initiation(&self, reason: &'static str) {
        metrics::count_drop(&self.metrics, reason);
    }

    /// Everything after identification for one initiation. `_permit` is one of the
    /// `max_pending` handler slots, released when handling ends.
    async fn handle(
        self: Arc<Self>,
        identified: Identified,
        src: SocketAddr,
        captured_at: Instant,
        _permit: OwnedSemaphorePermit,
    ) {
        let key = identified.initiation.initiator;
        let ts = identified.initiation.timestamp;

        // Replay guard, in memory: only a strictly newer timestamp may cause work.
        if lock(&self.replay_memory).check_and_record(key, ts) == ReplayVerdict::Replay {
            self.replayed(key, src);
            return;
        }

        if self.queue.is_installed(&key) {
            // The data plane answers installed peers itself. An installed key is known:
            // one DH now (once) makes each of its later initiations cost one, not two.
            self.metrics.already_installed.inc();
            self.known_keys.remember_identified(&self.keys, &identified);
            self.known_sources.resolved(src);
            if self.storm_guard.in_force() {
                self.detour(key, ts, src).await;
            }
            return;
        }
        if !lock(&self.pending).insert(key) {
            return;
        }
        let _pending = PendingGuard {
            set: &self.pending,
            key,
        };

        let lookup_started = Instant::now();
        let outcome = self
            .lookup
            .lookup_from(key, src.ip(), SystemTime::now())
            .await;
        metrics::observe_stage(&self.metrics, "lookup", lookup_started.elapsed());
        metrics::count_lookup(&self.metrics, lookup_label(&outcome));
        let Some((config, source)) = self.resolved(key, src, outcome) else {
            return;
        };

        if !self.durably_fresh(key, ts, src).await {
            return;
        }

        // Known from now on: its next initiation costs one DH and waits in the known lane.
        // The static-static secret identify computed is kept, so this costs no X25519.
        self.known_keys.remember_identified(&self.keys, &identified);
        self.known_sources.resolved(src);

        // Cookie replies carrying this initiation's index answer it, not the gateway's
        // own initiation that the install is about to trigger.
        self.queue
            .client_initiation(src, identified.initiation.sender_index);

        // The overlap rule: an address held by another installed peer is revalidated first.
        let installing = claim::install(
            &self.lookup,
            &self.queue,
            &self.metrics,
            config,
            src,
            captured_at,
        );
        match installing.await {
            Ok(done) => {
                tracing::info!(
                    peer = %key,
                    key = %key.to_base64(),
                    src = %src,
                    lookup = source,
                    install_us = done.latency.as_micros() as u64,
                    initiated = done.initiated,
                    "peer installed"
                );
                if let Some(activity) = &self.activity {
                    if let Err(e) = activity.installed(key, src, SystemTime::now()).await {
                        tracing::warn!(peer = %key, error = %Causes(&e), "recording peer activity failed");
                    }
                }
            }
            // The daemon notices the dead worker and exits; nothing to add per packet.
            Err(InstallError::WorkerGone) => {}
            Err(e) => {
                tracing::warn!(peer = %key, src = %src, error = %Causes(&e), "install failed")
            }
        }
    }

    fn replayed(&self, key: PublicKey, src: SocketAddr) {
        if let Some(suppressed) = self.count_replay() {
            tracing::debug!(peer = %key, src = %src, suppressed, "replayed or stale initiation ignored");
        }
    }

    /// An initiation identified before, sent again (`ResentMemory`): a replay found before
    /// its Diffie-Hellman, so without its key.
    fn resent(&self, src: SocketAddr) {
        if let Some(suppressed) = self.count_replay() {
            tracing::debug!(src = %src, suppressed, "initiation sent again ignored before identification");
        }
    }

    /// Count one replay dropped; `Some` when a line about it may be logged (`may_log`).
    fn count_replay(&self) -> Option<u64> {
        self.metrics.replays_ignored.inc();
        self.drop_initiation("replay");
        self.may_log()
    }

    /// The durable replay guard, for keys that resolved only: it survives restarts (a
    /// replay of a known key's old initiation must not move its endpoint), and a flood of
    /// unknown keys writes nothing. If the store fails, the memory guard has judged it.
    async fn durably_fresh(&self, key: PublicKey, ts: Timestamp, src: SocketAddr) -> bool {
        let durable = self
            .store
            .call(move |store| store.check_and_record_timestamp(&key, ts))
            .await;
        match durable {
            Ok(ReplayVerdict::Fresh) => true,
            Ok(ReplayVerdict::Replay) => {
                self.replayed(key, src);
                false
            }
            Err(e) => {
                metrics::count_store_error(&self.metrics, "replay");
                tracing::warn!(peer = %key, error = %Causes(&e), "durable replay guard failed; judged in memory");
                true
            }
        }
    }

    /// An installed peer's initiation that the storm guard kept from the data plane (its
    /// client restarted, or retries a handshake the data plane has not completed): the
    /// data plane initiates to it instead, at the captured endpoint, once the initiation
    /// has passed the durable replay guard (it moves the endpoint, like an install).
    async fn detour(&self, key: PublicKey, ts: Timestamp, src: SocketAddr) {
        if !lock(&self.pending).insert(key) {
            return;
        }
        let _pending = PendingGuard {
            set: &self.pending,
            key,
        };
        let outcome = self
            .lookup
            .lookup_from(key, src.ip(), SystemTime::now())
            .await;
        let Some((config, _)) = self.resolved(key, src, outcome) else {
            return;
        };
        if !self.durably_fresh(key, ts, src).await {
            return;
        }
        // Counted by the install worker, which declines a peer installed moments ago.
        self.queue.initiate_again(config, src);
    }

    /// The config to install when `outcome` resolved the key; logs and counts the rest.
    fn resolved(
        &self,
        key: PublicKey,
        src: SocketAddr,
        outcome: LookupOutcome,
    ) -> Option<(PeerConfig, &'static str)> {
        match outcome {
            LookupOutcome::CacheHit(config) => Some((config, "cache")),
            LookupOutcome::ApiFound { config, latency } => {
                self.metrics
                    .api_latency_seconds
                    .observe(latency.as_secs_f64());
                Some((config, "api"))
            }
            LookupOutcome::ApiNotFound { latency } => {
                self.metrics
                    .api_latency_seconds
                    .observe(latency.as_secs_f64());
                self.known_keys.forget(&key);
                if let Some(suppressed) = self.may_log() {
                    tracing::info!(peer = %key, key = %key.to_base64(), src = %src, suppressed, "unknown peer (control plane: 404)");
                }
                None
            }
            LookupOutcome::NegativeHit => {
                self.known_keys.forget(&key);
                if let Some(suppressed) = self.may_log() {
                    tracing::debug!(peer = %key, src = %src, suppressed, "unknown peer (negative cache)");
                }
                None
            }
            LookupOutcome::ApiError { error, latency } => {
                if let Some(l) = latency {
                    self.metrics.api_latency_seconds.observe(l.as_secs_f64());
                }
                if let Some(suppressed) = self.may_log() {
                    tracing::warn!(peer = %key, src = %src, suppressed, error = %Causes(&error), "control plane unavailable; will retry on the next initiation");
                }
                None
            }
            LookupOutcome::Refused { reason } => {
                tracing::warn!(peer = %key, src = %src, reason = %reason, "control-plane answer refused");
                None
            }
            LookupOutcome::RateLimited => {
                self.drop_initiation("rate_limited");
                if let Some(suppressed) = self.may_log() {
                    tracing::debug!(peer = %key, src = %src, suppressed, "lookup rate-limited");
                }
                None
            }
            LookupOutcome::Throttled { refusal } => {
                self.drop_initiation(refusal.as_str());
                if let Some(suppressed) = self.may_log() {
                    tracing::debug!(peer = %key, src = %src, suppressed, reason = refusal.as_str(), "first contact refused by admission control");
                }
                None
            }
        }
    }
}

/// The identify workers for `pipeline`: each identified initiation is handled on its own
/// task on the current tokio runtime, at most `max_pending` at once (the rest are
/// dropped and counted); failures are counted by stage.
pub fn start_identify_pool(
    pipeline: Arc<Pipeline>,
    settings: PoolSettings,
) -> Result<IdentifyPool, PoolStartError> {
    let runtime = tokio::runtime::Handle::current();
    let keys = pipeline.keys.clone();
    let known_keys = pipeline.known_keys.clone();
    let resent = pipeline.resent.clone();
    let expired_metrics = pipeline.metrics.clone();
    IdentifyPool::start(
        settings,
        {
            let metrics = pipeline.metrics.clone();
            move |payload| {
                let timer = metrics::StageTimer::start("identify");
                let identified =
                    identify::identify_unless_resent(&keys, &known_keys, payload, |ephemeral| {
                        lock(&resent).resent(ephemeral)
                    });
                if identified.is_ok() {
                    if let Some(ephemeral) = identify::ephemeral_of(payload) {
                        lock(&resent).identified(ephemeral);
                    }
                }
                timer.finish(&metrics);
                identified
            }
        },
        move |captured, result| match result {
            Ok(identified) => {
                if pipeline.known_keys.contains(&identified.initiator()) {
                    pipeline.metrics.identify_cached.inc();
                }
                let Ok(permit) = pipeline.handlers.clone().try_acquire_owned() else {
                    pipeline.drop_initiation("handlers_full");
                    return;
                };
                let p = pipeline.clone();
                runtime.spawn(async move {
                    p.handle(identified, captured.src, captured.captured_at, permit)
                        .await
                });
            }
            Err(IdentifyError::Resent) => pipeline.resent(captured.src),
            Err(e) => {
                if e == IdentifyError::Mac1 {
                    pipeline.metrics.mac1_rejected.inc();
                }
                metrics::count_identify_failure(&pipeline.metrics, e.as_str());
                if let Some(suppressed) = pipeline.may_log() {
                    tracing::debug!(src = %captured.src, stage = e.as_str(), suppressed, "initiation rejected");
                }
            }
        },
        move |_expired| count_never_identified(&expired_metrics, DropReason::Expired.as_str()),
    )
}

/// Count an initiation dropped before identification, in both drop counters.
fn count_never_identified(metrics: &Metrics, reason: &'static str) {
    metrics::count_capture_drop(metrics, reason);
    metrics::count_drop(metrics, reason);
}

/// Read initiations off the capture socket until cancelled and queue each for the
/// identify workers in its lane; what does not fit is dropped and counted. An initiation
/// for the unknown lane from a source network `lookup` penalises for 404s is shed here,
/// before it costs a Diffie-Hellman, unless its address is quiet and gets one of the
/// network's newcomer passes (`Admission::screen`): otherwise it could only be a first
/// contact that lookup would refuse, or a known key from a new address in that network
/// (it retries, and gets in once the network's penalty has been forgiven).
pub async fn capture_loop(
    socket: CaptureSocket,
    pool: IdentifyPool,
    known: Arc<KnownSources>,
    lookup: Arc<Lookup>,
    metrics: Arc<Metrics>,
    mut storm: Option<StormStamps>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %Causes(&e), "capture socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let captured_at = Instant::now();
        let Some(packet) = buf.get(..n) else { continue };
        let frame = match capture::parse_datagram(packet) {
            Ok(f) => f,
            Err(e) => {
                tracing::trace!(error = %e, "captured packet does not parse");
                continue;
            }
        };
        metrics.initiations_captured.inc();
        let captured = Captured {
            payload: frame.payload.to_vec(),
            src: frame.src,
            captured_at,
        };
        let lane = known.lane(&frame.src);
        if lane == Lane::Unknown {
            if let Some(refusal) = lookup.sheds_source(frame.src.ip(), captured_at) {
                count_never_identified(&metrics, refusal.as_str());
                continue;
            }
            if let Some(s) = storm.as_mut() {
                if s.meter.newcomer(captured_at) {
                    s.stamps.send_replace(Some(captured_at));
                }
            }
        }
        match pool.submit(captured, lane) {
            Ok(Queued::Alone) => {}
            Ok(Queued::Displacing) => {
                count_never_identified(&metrics, DropReason::Displaced.as_str())
            }
            Err(reason) => count_never_identified(&metrics, reason.as_str()),
        }
    }
    // Joining the workers blocks until their queue is drained (microseconds each).
    let _ = tokio::task::spawn_blocking(move || drop(pool)).await;
}

/// The capture loop's side of the storm guard: it counts newcomers' initiations and stamps
/// each window at the storm rate for the kernel shield (`shield::storm`).
pub struct StormStamps {
    pub meter: StormMeter,
    pub stamps: watch::Sender<Option<Instant>>,
}

fn lookup_label(outcome: &LookupOutcome) -> &'static str {
    match outcome {
        LookupOutcome::CacheHit(_) => "cache_hit",
        LookupOutcome::NegativeHit => "negative_hit",
        LookupOutcome::ApiFound { .. } => "api_found",
        LookupOutcome::ApiNotFound { .. } => "api_not_found",
        LookupOutcome::ApiError { .. } => "api_error",
        LookupOutcome::Refused { .. } => "refused",
        LookupOutcome::RateLimited => "rate_limited",
        LookupOutcome::Throttled { .. } => "throttled",
    }
}

#[cfg(test)]
mod tests;
