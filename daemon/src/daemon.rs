//! The running daemon: starts each stage in packet order (data plane, store, metrics,
//! install worker, capture or push, sweep, boot), runs their tasks until shutdown or
//! until one dies, and stops them all cleanly. `run` is the whole entry point; the
//! stages' work lives in their own modules (`pipeline`, `lookup`, `sweep`, `push`).
//! A task that ends before shutdown (or the install worker's thread) is a failure:
//! `run` returns `DaemonError::TaskDied` naming it and its cause, and `main` exits 1.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::activity::ActivityLog;
use crate::addresses::claim;
use crate::admission::{
    AddressSettings, AdmissionSettings, BudgetSettings, PenaltySettings, SHARE_WINDOW,
};
use crate::api::ApiClient;
use crate::boot::{self, BootChecks};
use crate::capture::CaptureSocket;
use crate::config::{defaults, Backend, Config, Limits, Mode};
use crate::dataplane::{DataPlane, DataPlaneError};
use crate::errors::{Causes, TaskCause};
use crate::identify::ResponderKeys;
use crate::identify_pool::PoolSettings;
use crate::install::{feedback, InstallSettings, InstallWorker};
use crate::lookup::{purge_loop, revalidate_loop, Lookup, LookupConfig};
use crate::metrics::{self, Metrics};
use crate::pipeline::{capture_loop, start_identify_pool, Pipeline, PipelineLimits, StormStamps};
use crate::push::{push_loop, PushContext, PushSubscriber};
use crate::shield::storm::StormMeter;
use crate::shield::{self, GuardFlag, ShieldSettings, StormGuardInput, TcShield};
use crate::store::{Recovered, SharedStore};
use crate::sweep::{sweep_loop, PeerReads};

pub use crate::errors::DaemonError;

fn wg_backend(b: Backend) -> wireguard_control::Backend {
    match b {
        Backend::Userspace => wireguard_control::Backend::Userspace,
        Backend::Kernel => wireguard_control::Backend::Kernel,
    }
}

/// The daemon's tasks, each remembered by name so its death can be reported.
struct Tasks {
    set: JoinSet<Result<(), TaskCause>>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    fn new() -> Self {
        Tasks {
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// Run `task` until it ends; an `Err` is its cause of death.
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<(), TaskCause>> + Send + 'static,
    ) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// A task that returns nothing ends only when cancelled (or by dying).
    fn spawn_loop(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn(name, async move {
            task.await;
            Ok(())
        });
    }

    /// What a task's end means when it was not asked to stop.
    fn death(&self, ended: Result<(Id, Result<(), TaskCause>), JoinError>) -> DaemonError {
        let (id, cause) = match ended {
            Ok((id, result)) => (id, result.err()),
            Err(e) => (e.id(), Some(Box::new(e) as TaskCause)),
        };
        DaemonError::TaskDied {
            task: self.names.get(&id).copied().unwrap_or("daemon task"),
            cause,
        }
    }
}

fn admission_settings(l: &Limits) -> AdmissionSettings {
    AdmissionSettings {
        penalties: PenaltySettings {
            burst: u32::try_from(l.source_penalty_burst).unwrap_or(u32::MAX),
            forgive_every: l.source_penalty_forgive,
            max_sources: defaults::MAX_PENALISED_SOURCES,
        },
        budget: BudgetSettings {
            rate: f64::from(l.unknown_lookup_rate),
            floor_rate: f64::from(l.unknown_lookup_floor),
            burst: u32::try_from(l.unknown_lookup_burst).unwrap_or(u32::MAX),
            share_window: SHARE_WINDOW,
        },
        addresses: AddressSettings {
            quiet_gap: l.source_quiet_gap,
            // As long as a network's full burst takes to be forgiven.
            hold: l
                .source_penalty_forgive
                .saturating_mul(u32::try_from(l.source_penalty_burst).unwrap_or(u32::MAX)),
            capacity: defaults::SOURCE_ADDRESSES,
            newcomer_burst: defaults::NEWCOMER_PASSES,
            newcomer_rate: 1.0 / defaults::NEWCOMER_PASS_EVERY.as_secs_f64(),
        },
    }
}

/// What the kernel shield follows: the sources admission control judges, the installed
/// endpoints, and the capture loop's storm stamps when the storm guard is on.
struct ShieldInputs {
    lookup: Arc<Lookup>,
    reads: Arc<PeerReads>,
    storm_guard: Option<StormGuardInput>,
}

/// The interface the kernel shield filters on: `--capture-interface`, when the shield is
/// on (`--shield-filters` not 0). `start_shield` and the storm guard's wiring both ask.
fn shield_interface(config: &Config) -> Option<&str> {
    (config.limits.shield_filters > 0)
        .then_some(())
        .and(config.capture_interface.as_deref())
}

/// Start the kernel shield (`shield`) when it is on and there is an interface to put
/// it on.
async fn start_shield(
    config: &Config,
    listen_port: u16,
    inputs: ShieldInputs,
    metrics: Arc<Metrics>,
    tasks: &mut Tasks,
    cancel: &CancellationToken,
) -> Result<(), DaemonError> {
    let ShieldInputs {
        lookup,
        reads,
        storm_guard,
    } = inputs;
    let max_filters = config.limits.shield_filters;
    if max_filters == 0 {
        return Ok(());
    }
    let Some(name) = shield_interface(config) else {
        tracing::warn!("the kernel shield needs --capture-interface (capturing on every interface, there is no one ingress to filter); it stays off");
        return Ok(());
    };
    let tc = TcShield::open(name, listen_port)
        .await
        .map_err(DaemonError::Shield)?;
    tracing::info!(
        interface = name,
        max_filters,
        storm_guard = storm_guard.is_some(),
        "kernel shield on"
    );
    tasks.spawn_loop(
        "kernel shield",
        shield::run(
            tc,
            lookup,
            reads,
            metrics,
            ShieldSettings {
                max_filters,
                block_networks: config.initiate,
                storm_guard,
            },
            cancel.clone(),
        ),
    );
    Ok(())
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

    // 2. Storage, checked at open (`--db-corruption` says what a damaged file means).
    let (store, recovered) =
        SharedStore::open_checked(config.db.clone(), config.limits.db_corruption)
            .await
            .map_err(DaemonError::Store)?;
    if let Recovered::MovedAside { to, cause } = &recovered {
        tracing::error!(
            db = %config.db.display(),
            moved_to = %to.display(),
            error = %Causes(cause),
            "peer database failed its integrity check; moved aside, starting with an empty one"
        );
    }

    // 3. Metrics endpoint: bound now so a busy port fails the start, not later.
    let mut tasks = Tasks::new();
    if let Some(addr) = config.metrics_addr {
        let server = metrics::MetricsServer::bind(metrics.clone(), addr)
            .await
            .map_err(DaemonError::Metrics)?;
        let c = cancel.clone();
        tasks.spawn("metrics endpoint", async move {
            server
                .run(async move { c.cancelled().await })
                .await
                .map_err(|e| Box::new(e) as TaskCause)
        });
    }

    // 4. The install worker owns all data-plane writes. With role inversion it watches the
    // cookie replies the data plane sends (under load): a client whose response to our
    // initiation was refused gets a second initiation at once, and adaptive pacing counts them.
    let cookie_watch = if config.initiate && config.mode == Mode::Jit {
        Some(
            feedback::open_cookie_watch(config.capture_interface.as_deref(), listen_port)
                .map_err(DaemonError::Capture)?,
        )
    } else {
        None
    };
    let initiate_feedback =
        (cookie_watch.is_some() && config.initiate_adapt).then(|| Arc::new(AtomicU64::new(0)));
    let (worker, queue) = InstallWorker::start(
        Arc::new(dataplane),
        installed,
        InstallSettings {
            initiate: config.initiate,
            initiate_rate: config.initiate_rate,
            initiate_feedback: initiate_feedback.clone(),
            sweep_chunk: config.sweep_chunk.max(1),
            sweep_budget: config.sweep_budget,
        },
        metrics.clone(),
    )
    .map_err(DaemonError::Install)?;
    if let Some(socket) = cookie_watch {
        tasks.spawn_loop(
            "cookie watch",
            feedback::watch_cookie_replies(
                socket,
                initiate_feedback,
                queue.clone(),
                cancel.clone(),
            ),
        );
    }

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

    // Addresses the data plane's peers held before this start, so newcomers cannot take them.
    let adopted = claim::adopt_installed(&store, &queue)
        .await
        .map_err(DaemonError::Install)?;
    if adopted > 0 {
        tracing::info!(
            peers = adopted,
            "indexed the addresses of peers found on the data plane"
        );
    }

    // The control plane: asked in jit mode, and in both modes about a peer whose address a
    // newcomer overlaps (`addresses::claim`).
    let api = match &config.api_url {
        Some(url) => Some(
            ApiClient::secured(url, config.api_timeout, &config.channel_security())
                .map_err(DaemonError::Api)?
                .counting_requests_in(metrics.api_requests.clone()),
        ),
        None => None,
    };
    let lookup = Arc::new(
        Lookup::new(
            store.clone(),
            api,
            LookupConfig {
                positive_ttl: config.positive_ttl,
                negative_ttl: config.negative_ttl,
                api_min_interval: config.api_min_interval,
                api_retries: config.api_retries,
                addresses: config.address_policy(),
                ..LookupConfig::default()
            },
        )
        .with_admission(admission_settings(&config.limits))
        .with_api_concurrency(config.limits.api_concurrency)
        .counting_in(metrics.clone()),
    );

    // 5. Listening: capture (JIT) or the NATS subscription (push).
    match config.mode {
        Mode::Jit => {
            let socket = CaptureSocket::open(config.capture_interface.as_deref(), listen_port)
                .map_err(DaemonError::Capture)?;
            let storm_guard = GuardFlag::default();
            // The storm guard needs the gateway initiating and the kernel shield.
            let guarded =
                config.initiate && config.storm_guard && shield_interface(&config).is_some();
            let (stamps, storm) = tokio::sync::watch::channel(None);
            let pipeline = Arc::new(
                Pipeline::new(
                    keys,
                    store.clone(),
                    lookup.clone(),
                    queue.clone(),
                    metrics.clone(),
                )
                .with_activity(activity.clone())
                .with_limits(PipelineLimits::from(&config.limits))
                .with_storm_guard(storm_guard.clone()),
            );
            let known_sources = pipeline.known_sources();
            let pool = start_identify_pool(
                pipeline,
                PoolSettings {
                    workers: config.identify_workers,
                    queue: config.identify_queue,
                    per_source: config.identify_queue_per_source,
                    nice: config.identify_nice,
                },
            )
            .map_err(DaemonError::IdentifyPool)?;
            tasks.spawn_loop(
                "capture task",
                capture_loop(
                    socket,
                    pool,
                    known_sources,
                    lookup.clone(),
                    metrics.clone(),
                    guarded.then(|| StormStamps {
                        meter: StormMeter::new(config.initiate_rate),
                        stamps,
                    }),
                    cancel.clone(),
                ),
            );
            start_shield(
                &config,
                listen_port,
                ShieldInputs {
                    lookup: lookup.clone(),
                    reads: queue.peer_reads(),
                    storm_guard: guarded.then(|| StormGuardInput {
                        storm,
                        flag: storm_guard,
                    }),
                },
                metrics.clone(),
                &mut tasks,
                &cancel,
            )
            .await?;
            if config.api_url.is_some() {
                let every = (config.positive_ttl / 4)
                    .clamp(Duration::from_secs(1), Duration::from_secs(60));
                tasks.spawn_loop(
                    "revalidation task",
                    revalidate_loop(lookup.clone(), queue.clone(), every, cancel.clone()),
                );
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
                addresses: config.address_policy(),
                lookup: config.api_url.is_some().then(|| lookup.clone()),
            };
            // push_loop returns before shutdown only when the subscription ended.
            tasks.spawn_loop(
                "NATS subscription (push mode)",
                push_loop(subscriber, ctx, cancel.clone()),
            );
        }
    }

    // 6. Sweep.
    if config.mode == Mode::Jit || config.evict_in_push_mode {
        let (every, after) = (config.sweep_every, config.evict_after);
        tasks.spawn_loop(
            "sweep task",
            sweep_loop(
                queue.clone(),
                activity.clone(),
                every,
                after,
                cancel.clone(),
            ),
        );
    }

    // The negative cache (and replay rows of unknown keys) stay bounded.
    tasks.spawn_loop(
        "negative-cache purge task",
        purge_loop(
            store.clone(),
            config.limits.negative_purge_every,
            config.limits.negative_cap,
            metrics.clone(),
            cancel.clone(),
        ),
    );

    // 7. Boot, then ready. Peers active before the shutdown are re-installed with their
    // endpoints and initiated to: in jit boot beside readiness (ready does not wait), in
    // preload boot first, so their clients need not wait for the whole preload.
    let checks = Arc::new(BootChecks {
        addresses: config.address_policy(),
        lookup: config.api_url.is_some().then(|| lookup.clone()),
        metrics: metrics.clone(),
    });
    let booted = boot::run(config.boot, &store, &queue, &activity, checks).await?;
    let ready_after = started.elapsed();
    metrics.time_to_ready_seconds.set(ready_after.as_secs_f64());
    metrics.ready.set(1);
    tracing::info!(
        boot = ?config.boot,
        peers_installed = booted,
        ready_ms = ready_after.as_secs_f64() * 1000.0,
        "ready"
    );

    // 8. Run until asked to stop, or until a task (or the install worker) dies.
    tokio::pin!(shutdown);
    let mut watch = tokio::time::interval(WORKER_WATCH);
    let died = loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                break None;
            }
            Some(ended) = tasks.set.join_next_with_id() => break Some(tasks.death(ended)),
            _ = watch.tick() => {
                if worker.is_finished() {
                    break Some(DaemonError::TaskDied { task: "install worker", cause: None });
                }
            }
        }
    };
    if let Some(e) = &died {
        tracing::error!(error = %Causes(e), "stopping: a task the daemon needs has died");
    }
    cancel.cancel();
    while tasks.set.join_next().await.is_some() {}
    tokio::task::spawn_blocking(move || worker.stop())
        .await
        .ok();
    tracing::info!("stopped");
    died.map_or(Ok(()), Err)
}

/// How often the install worker's thread is checked for life.
const WORKER_WATCH: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that panics, returns an error, or just returns is reported by name with
    /// its cause; the exit line (anyhow's `{:#}`) names both.
    #[tokio::test]
    async fn a_dead_task_is_named_with_its_cause() {
        let mut tasks = Tasks::new();
        tasks.spawn("capture task", async { panic!("capture exploded") });
        let ended = tasks.set.join_next_with_id().await.unwrap();
        let line = format!("{:#}", anyhow::Error::from(tasks.death(ended)));
        assert!(
            line.starts_with("the capture task stopped unexpectedly: "),
            "{line}"
        );
        assert!(line.contains("capture exploded"), "{line}");

        tasks.spawn("metrics endpoint", async {
            Err(Box::new(std::io::Error::from_raw_os_error(libc::EADDRINUSE)) as TaskCause)
        });
        let ended = tasks.set.join_next_with_id().await.unwrap();
        let e = tasks.death(ended);
        assert!(!e.is_setup_error(), "a death while running exits 1, not 3");
        let line = format!("{:#}", anyhow::Error::from(e));
        assert!(
            line.contains("metrics endpoint") && line.contains("in use"),
            "{line}"
        );

        tasks.spawn_loop("NATS subscription (push mode)", async {});
        let ended = tasks.set.join_next_with_id().await.unwrap();
        let line = format!("{:#}", anyhow::Error::from(tasks.death(ended)));
        assert_eq!(
            line,
            "the NATS subscription (push mode) stopped unexpectedly"
        );
    }
}
