//! The running daemon: starts each stage in packet order (data plane, store, metrics,
//! install worker, capture or push, sweep, boot), runs their tasks until shutdown or
//! until one dies, and stops them all cleanly. `run` is the whole entry point; the
//! stages' work lives in their own modules (`pipeline`, `lookup`, `sweep`, `push`).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::activity::ActivityLog;
use crate::api::ApiClient;
use crate::boot;
use crate::capture::CaptureSocket;
use crate::config::{Backend, Config, Mode};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::errors::Causes;
use crate::identify::ResponderKeys;
use crate::identify_pool::PoolSettings;
use crate::install::{feedback, InstallSettings, InstallWorker};
use crate::lookup::{revalidate_loop, Lookup, LookupConfig};
use crate::metrics::{self, Metrics};
use crate::pipeline::{capture_loop, start_identify_pool, Pipeline};
use crate::push::{push_loop, PushContext, PushSubscriber};
use crate::store::SharedStore;
use crate::sweep::sweep_loop;

pub use crate::errors::DaemonError;

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

    // 4. The install worker owns all data-plane writes. With adaptive pacing, it watches
    // the cookie replies the data plane sends (under load) to pace its own initiations.
    let initiate_feedback = if config.initiate && config.initiate_adapt && config.mode == Mode::Jit
    {
        let socket = feedback::open_cookie_watch(config.capture_interface.as_deref(), listen_port)
            .map_err(DaemonError::Capture)?;
        let count = Arc::new(AtomicU64::new(0));
        tasks.spawn(feedback::count_cookie_replies(
            socket,
            count.clone(),
            cancel.clone(),
        ));
        Some(count)
    } else {
        None
    };
    let (worker, queue) = InstallWorker::start(
        Arc::new(dataplane),
        installed,
        InstallSettings {
            initiate: config.initiate,
            initiate_rate: config.initiate_rate,
            initiate_feedback,
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
        initiate_adapt = config.initiate_adapt,
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
    let booted = boot::run(config.boot, &store, &queue, &activity).await?;
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
