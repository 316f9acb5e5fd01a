//! The running daemon: wires capture -> identify -> replay guard -> lookup -> install,
//! plus the sweep, revalidation, boot and (legacy) push tasks, and stops them all
//! cleanly on shutdown. `run` is the whole entry point.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::ApiClient;
use crate::boot;
use crate::capture::{self, CaptureSocket};
use crate::config::{Backend, Boot, Config, Mode};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::identify::{self, IdentifyError, Initiation, ResponderKeys};
use crate::install::{InstallQueue, InstallSettings, InstallWorker, RemovalReason};
use crate::lookup::{Lookup, LookupConfig, LookupOutcome, Revalidation};
use crate::metrics::{self, Metrics};
use crate::peer::{PeerConfig, PublicKey};
use crate::push::{PushMessage, PushSubscriber};
use crate::replay::ReplayVerdict;
use crate::store::{PeerSource, Store};

/// What stopped the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("opening the database {path} failed: {message}")]
    Store { path: String, message: String },
    #[error("opening the capture socket failed: {0}")]
    Capture(String),
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error("control-plane client: {0}")]
    Api(String),
    #[error("NATS (push mode): {0}")]
    Push(String),
    #[error("boot failed: {0}")]
    Boot(#[from] boot::BootError),
    #[error("configuration: {0}")]
    Config(String),
}

impl DaemonError {
    /// Errors that mean "the environment is not set up" (exit code 3) rather than a
    /// failure while running.
    pub fn is_setup_error(&self) -> bool {
        matches!(
            self,
            DaemonError::DataPlane(_)
                | DaemonError::Capture(_)
                | DaemonError::Metrics(_)
                | DaemonError::Store { .. }
        )
    }
}

fn wg_backend(b: Backend) -> wireguard_control::Backend {
    match b {
        Backend::Userspace => wireguard_control::Backend::Userspace,
        Backend::Kernel => wireguard_control::Backend::Kernel,
    }
}

/// Run the daemon until `shutdown` resolves. `started` is process start, for the
/// time-to-ready figure.
pub async fn run(
    config: Config,
    started: Instant,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let metrics = Metrics::new();
    let cancel = CancellationToken::new();

    // 1. The data plane must already exist: attach, read our identity.
    let dataplane = DataPlane::attach(&config.interface, wg_backend(config.backend))?;
    let (identity, installed) = dataplane.identity_and_peers()?;
    let listen_port = match config.listen_port.or(identity.listen_port) {
        Some(p) => p,
        None => {
            return Err(DataPlaneError::NoListenPort {
                name: config.interface.clone(),
            }
            .into())
        }
    };
    let keys = ResponderKeys::new(identity.private_key);

    // 2. Storage.
    let db_path = config.db.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
        .await
        .map_err(|e| DaemonError::Store {
            path: config.db.display().to_string(),
            message: e.to_string(),
        })?
        .map_err(|e| DaemonError::Store {
            path: config.db.display().to_string(),
            message: e.to_string(),
        })?;
    let store = Arc::new(Mutex::new(store));

    // 3. Metrics endpoint: bound now so a busy port fails the start, not later.
    let mut tasks = JoinSet::new();
    if let Some(addr) = config.metrics_addr {
        let server = metrics::MetricsServer::bind(metrics.clone(), addr)
            .await
            .map_err(|e| DaemonError::Metrics(e.to_string()))?;
        let c = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = server.run(async move { c.cancelled().await }).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }

    // 4. The install worker owns all data-plane writes.
    let (worker, queue) = InstallWorker::start(
        dataplane,
        installed,
        InstallSettings {
            initiate: config.initiate,
            sweep_chunk: config.sweep_chunk.max(1),
            sweep_budget: config.sweep_budget,
        },
        metrics.clone(),
    )?;

    tracing::info!(
        interface = %config.interface,
        backend = ?config.backend,
        port = listen_port,
        mode = ?config.mode,
        boot = ?config.boot,
        initiate = config.initiate,
        installed = queue.installed_count(),
        "attached to data plane"
    );

    // 5. Listening: capture (JIT) or the NATS subscription (push).
    match config.mode {
        Mode::Jit => {
            let api = match &config.api_url {
                Some(url) => Some(
                    ApiClient::new(url, config.api_timeout)
                        .map_err(|e| DaemonError::Api(e.to_string()))?
                        .counting_requests_in(metrics.api_requests.clone()),
                ),
                None => None,
            };
            let lookup = Lookup::new(
                store.clone(),
                api,
                LookupConfig {
                    positive_ttl: config.positive_ttl,
                    negative_ttl: config.negative_ttl,
                    api_min_interval: config.api_min_interval,
                    api_retries: config.api_retries,
                    tunnel_prefix: config.allowed_prefix,
                    ..LookupConfig::default()
                },
            );
            let socket = CaptureSocket::open(config.capture_interface.as_deref(), listen_port)
                .map_err(|e| DaemonError::Capture(e.to_string()))?;
            let pipeline = Arc::new(Pipeline {
                keys,
                store: store.clone(),
                lookup: Arc::new(lookup),
                queue: queue.clone(),
                metrics: metrics.clone(),
                pending: Mutex::new(HashSet::new()),
            });
            let c = cancel.clone();
            let p = pipeline.clone();
            tasks.spawn(async move { capture_loop(socket, p, c).await });
            if config.api_url.is_some() {
                let c = cancel.clone();
                let every = (config.positive_ttl / 4)
                    .clamp(Duration::from_secs(1), Duration::from_secs(60));
                tasks.spawn(async move { revalidate_loop(pipeline, every, c).await });
            }
        }
        Mode::Push => {
            let url = config
                .nats_url
                .clone()
                .ok_or_else(|| DaemonError::Config("push mode needs --nats-url".into()))?;
            let subscriber = PushSubscriber::connect(&url, &config.nats_subject)
                .await
                .map_err(|e| DaemonError::Push(e.to_string()))?;
            let c = cancel.clone();
            let ctx = PushContext {
                store: store.clone(),
                queue: queue.clone(),
                metrics: metrics.clone(),
                allowed_prefix: config.allowed_prefix,
            };
            tasks.spawn(async move { push_loop(subscriber, ctx, c).await });
        }
    }

    // 6. Sweep.
    if config.mode == Mode::Jit || config.evict_in_push_mode {
        let c = cancel.clone();
        let q = queue.clone();
        let (every, after) = (config.sweep_every, config.evict_after);
        tasks.spawn(async move { sweep_loop(q, every, after, c).await });
    }

    // 7. Boot, then ready.
    let booted = match config.boot {
        Boot::Jit => 0,
        Boot::Preload => boot::preload(store.clone(), &queue).await?.peers_installed,
    };
    let ready_after = started.elapsed();
    metrics.time_to_ready_seconds.set(ready_after.as_secs_f64());
    metrics.ready.set(1);
    tracing::info!(
        boot = ?config.boot,
        peers_installed = booted,
        ready_ms = ready_after.as_secs_f64() * 1000.0,
        "ready"
    );

    // 8. Run until asked to stop, or until a task dies.
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Some(res) = tasks.join_next() => {
            if let Err(e) = res {
                tracing::error!(error = %e, "a daemon task failed");
            }
        }
    }
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    tokio::task::spawn_blocking(move || worker.stop())
        .await
        .ok();
    tracing::info!("stopped");
    Ok(())
}

/// Shared state of the JIT path.
struct Pipeline {
    keys: ResponderKeys,
    store: Arc<Mutex<Store>>,
    lookup: Arc<Lookup>,
    queue: InstallQueue,
    metrics: Arc<Metrics>,
    /// Keys with a lookup/install in progress: later initiations of the same key do
    /// not start a second one.
    pending: Mutex<HashSet<PublicKey>>,
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

async fn capture_loop(socket: CaptureSocket, pipeline: Arc<Pipeline>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "capture socket failed");
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
        pipeline.metrics.initiations_captured.inc();
        match identify::identify(&pipeline.keys, frame.payload) {
            Ok(initiation) => {
                let p = pipeline.clone();
                let src = frame.src;
                tokio::spawn(async move { p.handle(initiation, src, captured_at).await });
            }
            Err(e) => {
                if e == IdentifyError::Mac1 {
                    pipeline.metrics.mac1_rejected.inc();
                }
                metrics::count_identify_failure(&pipeline.metrics, e.as_str());
                tracing::debug!(src = %frame.src, stage = e.as_str(), "initiation rejected");
            }
        }
    }
}

impl Pipeline {
    /// Everything after identification for one initiation.
    async fn handle(
        self: Arc<Self>,
        initiation: Initiation,
        src: SocketAddr,
        captured_at: Instant,
    ) {
        let key = initiation.initiator;

        // Replay guard: only a strictly newer timestamp may cause work.
        let store = self.store.clone();
        let ts = initiation.timestamp;
        let verdict = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .map_err(|_| "store lock poisoned".to_string())?
                .check_and_record_timestamp(&key, ts)
                .map_err(|e| e.to_string())
        })
        .await;
        match verdict {
            Ok(Ok(ReplayVerdict::Fresh)) => {}
            Ok(Ok(ReplayVerdict::Replay)) => {
                self.metrics.replays_ignored.inc();
                tracing::debug!(peer = %key, src = %src, "replayed or stale initiation ignored");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %key, error = %e, "replay guard failed; initiation dropped");
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %key, error = %e, "replay guard task failed");
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

        let outcome = self.lookup.lookup(key, SystemTime::now()).await;
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
                tracing::info!(peer = %key, src = %src, "unknown peer (control plane: 404)");
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
                tracing::warn!(peer = %key, src = %src, error = %error, "control plane unavailable; will retry on the next initiation");
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

        match self.queue.install(config, src, captured_at).await {
            Ok(Ok(done)) => tracing::info!(
                peer = %key,
                src = %src,
                lookup = source,
                install_us = done.latency.as_micros() as u64,
                initiated = done.initiated,
                "peer installed"
            ),
            Ok(Err(e)) => tracing::warn!(peer = %key, src = %src, error = %e, "install failed"),
            Err(_) => {}
        }
    }
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

async fn sweep_loop(
    queue: InstallQueue,
    every: Duration,
    evict_after: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick fires at once; nothing is idle yet
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.sweep(SystemTime::now(), evict_after).await {
            Ok(Ok(s)) if s.selected > 0 => tracing::info!(
                installed = s.installed,
                evicting = s.selected,
                read_ms = s.read.as_secs_f64() * 1000.0,
                "sweep"
            ),
            Ok(Ok(s)) => tracing::debug!(
                installed = s.installed,
                read_ms = s.read.as_secs_f64() * 1000.0,
                "sweep: nothing idle"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "sweep could not read the data plane"),
            Err(_) => return,
        }
    }
}

/// Revocation: installed peers whose cached config has expired are asked about again;
/// a 404 removes them (and the negative entry keeps them out).
async fn revalidate_loop(pipeline: Arc<Pipeline>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = SystemTime::now();
        let store = pipeline.store.clone();
        let expired = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .map_err(|_| "store lock poisoned".to_string())?
                .expired_peers(now)
                .map_err(|e| e.to_string())
        })
        .await;
        let expired = match expired {
            Ok(Ok(keys)) => keys,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listing expired cache entries failed");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing expired cache entries failed");
                continue;
            }
        };
        for key in expired
            .into_iter()
            .filter(|k| pipeline.queue.is_installed(k))
        {
            if cancel.is_cancelled() {
                return;
            }
            match pipeline.lookup.revalidate(key, now).await {
                Revalidation::Revoked => {
                    tracing::info!(peer = %key, "peer revoked by the control plane; removing");
                    let _ = pipeline
                        .queue
                        .remove(vec![key], RemovalReason::Revoked)
                        .await;
                }
                Revalidation::StillValid(_) => {}
                Revalidation::Unknown => {
                    tracing::debug!(peer = %key, "revalidation inconclusive; keeping peer")
                }
            }
        }
    }
}

struct PushContext {
    store: Arc<Mutex<Store>>,
    queue: InstallQueue,
    metrics: Arc<Metrics>,
    allowed_prefix: ipnet::IpNet,
}

/// Peers taken from the subscription at most per store transaction and data-plane write.
const PUSH_BATCH: usize = 512;

/// Legacy push mode: install every peer published on NATS at once and store it (so
/// a preload boot reinstalls it). Messages published while we were down are lost.
/// Messages that arrived together are handled together: one transaction, one write.
async fn push_loop(mut sub: PushSubscriber, ctx: PushContext, cancel: CancellationToken) {
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next_batch(PUSH_BATCH) => match m {
                Some(batch) => batch,
                None => {
                    tracing::error!("NATS subscription ended");
                    return;
                }
            },
        };
        let configs: Vec<PeerConfig> = batch
            .into_iter()
            .filter_map(|msg| accept_pushed(msg, &ctx))
            .collect();
        if configs.is_empty() {
            continue;
        }
        let store = ctx.store.clone();
        let stored = configs.clone();
        let saved = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .map_err(|_| "store lock poisoned".to_string())?
                .put_peers(&stored, PeerSource::Push, SystemTime::now(), Duration::MAX)
                .map_err(|e| e.to_string())
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(peers = configs.len(), error = %e, "storing pushed peers failed");
        }
        let count = configs.len();
        let keys: Vec<PublicKey> = configs.iter().map(|c| c.public_key).collect();
        match ctx.queue.install_many(configs).await {
            Ok(Ok(_)) => {
                for key in &keys {
                    metrics::count_push(&ctx.metrics, "installed");
                    tracing::debug!(peer = %key, "pushed peer installed");
                }
                tracing::info!(peers = count, "pushed peers installed");
            }
            Ok(Err(e)) => {
                tracing::warn!(peers = count, error = %e, "installing pushed peers failed")
            }
            Err(_) => return,
        }
    }
}

/// A pushed message's peer, if it is one and lies inside our prefix (counted and logged
/// otherwise).
fn accept_pushed(msg: PushMessage, ctx: &PushContext) -> Option<PeerConfig> {
    let doc = match msg {
        PushMessage::Peer(doc) => doc,
        PushMessage::BadJson(why) => {
            metrics::count_push(&ctx.metrics, "bad_json");
            tracing::warn!(error = %why, "push message is not a peer document");
            return None;
        }
    };
    match doc.validate(None, ctx.allowed_prefix) {
        Ok(c) => Some(c),
        Err(e) => {
            metrics::count_push(&ctx.metrics, "refused");
            tracing::warn!(reason = %e, "pushed peer refused");
            None
        }
    }
}
