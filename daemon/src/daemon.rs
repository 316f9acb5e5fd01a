//! The running daemon: starts each stage in packet order (data plane, store, metrics,
//! install worker, capture or push, sweep, boot), runs their tasks until shutdown or
//! until one dies, and stops them all cleanly. `run` is the whole entry point; the
//! stages' work lives in their own modules (`pipeline`, `lookup`, `sweep`, `push`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::activity::ActivityLog;
use crate::api::{ApiClient, ApiError};
use crate::boot::{self, BootError};
use crate::capture::{CaptureError, CaptureSocket};
use crate::config::{Backend, Boot, Config, Mode};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::errors::Causes;
use crate::identify::ResponderKeys;
use crate::identify_pool::{PoolSettings, PoolStartError};
use crate::install::{InstallError, InstallSettings, InstallWorker};
use crate::lookup::{revalidate_loop, Lookup, LookupConfig};
use crate::metrics::{self, Metrics, MetricsError};
use crate::pipeline::{capture_loop, start_identify_pool, Pipeline};
use crate::push::{push_loop, PushContext, PushError, PushSubscriber};
use crate::store::{SharedStore, StoreCallError};
use crate::sweep::sweep_loop;

/// What stopped the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Its messages already say which interface and what to do.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error("setting up the peer database failed")]
    Store(#[source] StoreCallError),
    #[error("opening the capture socket failed")]
    Capture(#[source] CaptureError),
    #[error("starting the metrics endpoint failed")]
    Metrics(#[source] MetricsError),
    #[error("setting up the control-plane client failed")]
    Api(#[source] ApiError),
    #[error("subscribing to pushed peers (NATS) failed")]
    Push(#[source] PushError),
    #[error("starting the install worker failed")]
    Install(#[source] InstallError),
    #[error("starting the identify workers failed")]
    IdentifyPool(#[source] PoolStartError),
    #[error("boot failed")]
    Boot(#[from] BootError),
    #[error("configuration: {0}")]
    Config(&'static str),
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
                | DaemonError::Store(_)
                | DaemonError::Install(_)
                | DaemonError::IdentifyPool(_)
        )
    }
}

fn wg_backend(b: Backend) -> wireguard_control::Backend {
    match b {
        Backend::Userspace => wireguard_control::Backend::Userspace,
        Backend::Kernel => wireguard_control::Backend::Kernel,
    }
}

/// Logs how boot's re-install of active peers went; returns how many it installed. A
/// failure is not fatal: those clients fall back to WireGuard's own timers.
fn log_reinstall(result: Result<boot::BootReport, BootError>) -> usize {
    match result {
        Ok(r) => {
            if r.peers_installed > 0 {
                tracing::info!(
                    peers = r.peers_installed,
                    took_ms = r.took.as_secs_f64() * 1000.0,
                    "re-installed peers active before the shutdown, initiating to them"
                );
            }
            r.peers_installed
        }
        Err(e) => {
            tracing::warn!(error = %Causes(&e), "re-installing active peers failed");
            0
        }
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
    let Some(listen_port) = config.listen_port.or(identity.listen_port) else {
        return Err(DataPlaneError::NoListenPort {
            name: config.interface.clone(),
        }
        .into());
    };
    let keys = ResponderKeys::new(identity.private_key);

    // 2. Storage.
    let store = SharedStore::open(config.db.clone())
        .await
        .map_err(DaemonError::Store)?;

    // 3. Metrics endpoint: bound now so a busy port fails the start, not later.
    let mut tasks = JoinSet::new();
    if let Some(addr) = config.metrics_addr {
        let server = metrics::MetricsServer::bind(metrics.clone(), addr)
            .await
            .map_err(DaemonError::Metrics)?;
        let c = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = server.run(async move { c.cancelled().await }).await {
                tracing::error!(error = %Causes(&e), "metrics endpoint stopped");
            }
        });
    }

    // 4. The install worker owns all data-plane writes.
    let (worker, queue) = InstallWorker::start(
        Arc::new(dataplane),
        installed,
        InstallSettings {
            initiate: config.initiate,
            initiate_rate: config.initiate_rate,
            sweep_chunk: config.sweep_chunk.max(1),
            sweep_budget: config.sweep_budget,
        },
        metrics.clone(),
    )
    .map_err(DaemonError::Install)?;

    tracing::info!(
        interface = %config.interface,
        backend = ?config.backend,
        port = listen_port,
        mode = ?config.mode,
        boot = ?config.boot,
        initiate = config.initiate,
        initiate_rate = config.initiate_rate,
        installed = queue.installed_count(),
        "attached to data plane"
    );

    // What the daemon remembers of active peers, for re-installing them at the next boot.
    // Re-installing without initiating would not help their clients, so it needs initiate.
    let reinstall_window = if config.initiate {
        config.reinstall_active
    } else {
        Duration::ZERO
    };
    let activity = ActivityLog::new(store.clone(), reinstall_window, metrics.clone());

    // 5. Listening: capture (JIT) or the NATS subscription (push).
    match config.mode {
        Mode::Jit => {
            let api = match &config.api_url {
                Some(url) => Some(
                    ApiClient::new(url, config.api_timeout)
                        .map_err(DaemonError::Api)?
                        .counting_requests_in(metrics.api_requests.clone()),
                ),
                None => None,
            };
            let lookup = Arc::new(Lookup::new(
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
            ));
            let socket = CaptureSocket::open(config.capture_interface.as_deref(), listen_port)
                .map_err(DaemonError::Capture)?;
            let pipeline = Arc::new(
                Pipeline::new(
                    keys,
                    store.clone(),
                    lookup.clone(),
                    queue.clone(),
                    metrics.clone(),
                )
                .with_activity(activity.clone()),
            );
            let pool = start_identify_pool(
                pipeline,
                PoolSettings {
                    workers: config.identify_workers,
                    queue: config.identify_queue,
                    nice: config.identify_nice,
                },
            )
            .map_err(DaemonError::IdentifyPool)?;
            tasks.spawn(capture_loop(socket, pool, metrics.clone(), cancel.clone()));
            if config.api_url.is_some() {
                let every = (config.positive_ttl / 4)
                    .clamp(Duration::from_secs(1), Duration::from_secs(60));
                tasks.spawn(revalidate_loop(
                    lookup,
                    queue.clone(),
                    every,
                    cancel.clone(),
                ));
            }
        }
        Mode::Push => {
            let url = config
                .nats_url
                .clone()
                .ok_or(DaemonError::Config("push mode needs --nats-url"))?;
            let subscriber = PushSubscriber::connect(&url, &config.nats_subject)
                .await
                .map_err(DaemonError::Push)?;
            let ctx = PushContext {
                store: store.clone(),
                queue: queue.clone(),
                metrics: metrics.clone(),
                allowed_prefix: config.allowed_prefix,
            };
            tasks.spawn(push_loop(subscriber, ctx, cancel.clone()));
        }
    }

    // 6. Sweep.
    if config.mode == Mode::Jit || config.evict_in_push_mode {
        let (every, after) = (config.sweep_every, config.evict_after);
        tasks.spawn(sweep_loop(
            queue.clone(),
            activity.clone(),
            every,
            after,
            cancel.clone(),
        ));
    }

    // 7. Boot, then ready. Peers active before the shutdown are re-installed with their
    // endpoints and initiated to: in jit boot beside readiness (ready does not wait), in
    // preload boot first, so their clients need not wait for the whole preload.
    let booted = match config.boot {
        Boot::Jit => {
            let (activity, queue) = (activity.clone(), queue.clone());
            // Not in `tasks`: its end is not the daemon's.
            tokio::spawn(async move {
                log_reinstall(boot::reinstall_active(&activity, &queue, SystemTime::now()).await)
            });
            0
        }
        Boot::Preload => {
            let reinstalled =
                log_reinstall(boot::reinstall_active(&activity, &queue, SystemTime::now()).await);
            let skip: HashSet<_> = if reinstalled > 0 {
                store
                    .call(|s| s.activity_keys())
                    .await
                    .map_err(|e| DaemonError::Boot(BootError::Store(e)))?
                    .into_iter()
                    .filter(|k| queue.is_installed(k))
                    .collect()
            } else {
                HashSet::new()
            };
            reinstalled + boot::preload(&store, &queue, &skip).await?.peers_installed
        }
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
                tracing::error!(error = %Causes(&e), "a daemon task failed");
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
