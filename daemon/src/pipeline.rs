//! The JIT packet path, stage by stage: a captured datagram is parsed (capture),
//! identified (identify), checked against the replay guard (replay, in the store),
//! looked up (lookup) and installed (install). `capture_loop` reads the socket;
//! the identify workers (`identify_pool`, started by `start_identify_pool`) identify
//! them off the capture task; `Pipeline::handle` carries one identified initiation
//! through the rest.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::activity::ActivityLog;
use crate::addresses::claim;
use crate::capture::{self, CaptureSocket};
use crate::errors::Causes;
use crate::identify::{self, IdentifyError, Initiation, ResponderKeys};
use crate::identify_pool::{Captured, IdentifyPool, PoolSettings, PoolStartError};
use crate::install::{InstallError, InstallQueue};
use crate::lookup::{Lookup, LookupOutcome};
use crate::metrics::{self, Metrics};
use crate::peer::PublicKey;
use crate::replay::ReplayVerdict;
use crate::store::SharedStore;

/// Shared state of the JIT path.
pub struct Pipeline {
    keys: ResponderKeys,
    /// Holds the replay guard's newest timestamp per key.
    store: SharedStore,
    lookup: Arc<Lookup>,
    queue: InstallQueue,
    metrics: Arc<Metrics>,
    /// Keys with a lookup/install in progress: later initiations of the same key do
    /// not start a second one.
    pending: Mutex<HashSet<PublicKey>>,
    /// Where each install's endpoint is remembered for re-install at boot (`None`: off).
    activity: Option<Arc<ActivityLog>>,
}

/// Removes a key from `pending` however the handling ends.
struct PendingGuard<'a> {
    set: &'a Mutex<HashSet<PublicKey>>,
    key: PublicKey,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.key);
        }
    }
}

impl Pipeline {
    pub fn new(
        keys: ResponderKeys,
        store: SharedStore,
        lookup: Arc<Lookup>,
        queue: InstallQueue,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pipeline {
            keys,
            store,
            lookup,
            queue,
            metrics,
            pending: Mutex::new(HashSet::new()),
            activity: None,
        }
    }

    /// Record each install's endpoint in `activity` (boot re-installs active peers).
    pub fn with_activity(mut self, activity: Arc<ActivityLog>) -> Self {
        self.activity = activity.enabled().then_some(activity);
        self
    }

    /// Everything after identification for one initiation.
    async fn handle(
        self: Arc<Self>,
        initiation: Initiation,
        src: SocketAddr,
        captured_at: Instant,
    ) {
        let key = initiation.initiator;

        // Replay guard: only a strictly newer timestamp may cause work.
        let ts = initiation.timestamp;
        let verdict = self
            .store
            .call(move |store| store.check_and_record_timestamp(&key, ts))
            .await;
        match verdict {
            Ok(ReplayVerdict::Fresh) => {}
            Ok(ReplayVerdict::Replay) => {
                self.metrics.replays_ignored.inc();
                tracing::debug!(peer = %key, src = %src, "replayed or stale initiation ignored");
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %key, error = %Causes(&e), "replay guard failed; initiation dropped");
                return;
            }
        }

        if self.queue.is_installed(&key) {
            // The data plane answers installed peers itself.
            self.metrics.already_installed.inc();
            return;
        }
        let fresh = self
            .pending
            .lock()
            .map(|mut s| s.insert(key))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let _pending = PendingGuard {
            set: &self.pending,
            key,
        };

        let lookup_started = Instant::now();
        let outcome = self.lookup.lookup(key, SystemTime::now()).await;
        metrics::observe_stage(&self.metrics, "lookup", lookup_started.elapsed());
        metrics::count_lookup(&self.metrics, lookup_label(&outcome));
        let (config, source) = match outcome {
            LookupOutcome::CacheHit(config) => (config, "cache"),
            LookupOutcome::ApiFound { config, latency } => {
                self.metrics
                    .api_latency_seconds
                    .observe(latency.as_secs_f64());
                (config, "api")
            }
            LookupOutcome::ApiNotFound { latency } => {
                self.metrics
                    .api_latency_seconds
                    .observe(latency.as_secs_f64());
                tracing::info!(peer = %key, key = %key.to_base64(), src = %src, "unknown peer (control plane: 404)");
                return;
            }
            LookupOutcome::NegativeHit => {
                tracing::debug!(peer = %key, src = %src, "unknown peer (negative cache)");
                return;
            }
            LookupOutcome::ApiError { error, latency } => {
                if let Some(l) = latency {
                    self.metrics.api_latency_seconds.observe(l.as_secs_f64());
                }
                tracing::warn!(peer = %key, src = %src, error = %Causes(&error), "control plane unavailable; will retry on the next initiation");
                return;
            }
            LookupOutcome::Refused { reason } => {
                tracing::warn!(peer = %key, src = %src, reason = %reason, "control-plane answer refused");
                return;
            }
            LookupOutcome::RateLimited => {
                tracing::debug!(peer = %key, src = %src, "lookup rate-limited");
                return;
            }
        };

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
            Err(InstallError::WorkerGone) => {}
            Err(e) => {
                tracing::warn!(peer = %key, src = %src, error = %Causes(&e), "install failed")
            }
        }
    }
}

/// The identify workers for `pipeline`: each identified initiation is handled on its own
/// task on the current tokio runtime; failures are counted by stage.
pub fn start_identify_pool(
    pipeline: Arc<Pipeline>,
    settings: PoolSettings,
) -> Result<IdentifyPool, PoolStartError> {
    let runtime = tokio::runtime::Handle::current();
    let keys = pipeline.keys.clone();
    IdentifyPool::start(
        settings,
        {
            let metrics = pipeline.metrics.clone();
            move |payload| {
                let started = Instant::now();
                let identified = identify::identify(&keys, payload);
                metrics::observe_stage(&metrics, "identify", started.elapsed());
                identified
            }
        },
        move |captured, result| match result {
            Ok(initiation) => {
                let p = pipeline.clone();
                runtime.spawn(async move {
                    p.handle(initiation, captured.src, captured.captured_at)
                        .await
                });
            }
            Err(e) => {
                if e == IdentifyError::Mac1 {
                    pipeline.metrics.mac1_rejected.inc();
                }
                metrics::count_identify_failure(&pipeline.metrics, e.as_str());
                tracing::debug!(src = %captured.src, stage = e.as_str(), "initiation rejected");
            }
        },
    )
}

/// Read initiations off the capture socket until cancelled and queue each for the
/// identify workers; what does not fit the queue is dropped and counted.
pub async fn capture_loop(
    socket: CaptureSocket,
    pool: IdentifyPool,
    metrics: Arc<Metrics>,
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
                tracing::debug!(error = %e, "captured packet does not parse");
                continue;
            }
        };
        metrics.initiations_captured.inc();
        let captured = Captured {
            payload: frame.payload.to_vec(),
            src: frame.src,
            captured_at,
        };
        if let Err(reason) = pool.submit(captured) {
            metrics::count_capture_drop(&metrics, reason.as_str());
            tracing::debug!(src = %frame.src, reason = reason.as_str(), "initiation dropped before identification");
        }
    }
    // Joining the workers blocks until their queue is drained (microseconds each).
    let _ = tokio::task::spawn_blocking(move || drop(pool)).await;
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
    }
}
