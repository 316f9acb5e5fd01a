//! The install worker: the one thread that writes to the data plane. Installs are
//! batched (a storm of initiations becomes a few UAPI/netlink calls) and always served
//! before removals, which run in bounded chunks, so a large eviction never starves a
//! connecting client (on the kernel backend each removed peer costs an RCU grace period).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use wireguard_control::DeviceUpdate;

use crate::dataplane::{self, DataPlane, DataPlaneError, InstalledPeer, PeerWrite};
use crate::metrics::Metrics;
use crate::peer::{PeerConfig, PublicKey};
use crate::sweep::{self, RemovalPacer};

/// Keepalive interval (seconds) set at install time to make the data plane send its
/// own initiation at once; cleared again right after (see `clear_keepalive`).
const ROLE_INVERSION_KEEPALIVE: u16 = 1;

/// Most peers written in one data-plane call.
const MAX_INSTALL_BATCH: usize = 512;

/// Why a peer is being removed (counted separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    Idle,
    Revoked,
}

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct InstallSettings {
    /// Role inversion: make the data plane initiate to the captured endpoint at once.
    pub initiate: bool,
    /// Most peers removed in one data-plane call.
    pub sweep_chunk: usize,
    /// Time one removal call should take at most, so installs queued behind it wait no
    /// longer than this (chunk sizes adapt to it: see `sweep::RemovalPacer`).
    pub sweep_budget: Duration,
}

/// Outcome of one JIT install, for the log line and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Installed {
    /// From capture of the initiation to the data plane acknowledging the install.
    pub latency: Duration,
    /// Whether the data plane was told to initiate at once.
    pub initiated: bool,
}

enum Command {
    Install {
        write: PeerWrite,
        captured_at: Instant,
        reply: oneshot::Sender<Result<Installed, String>>,
    },
    InstallMany {
        writes: Vec<PeerWrite>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    Remove {
        keys: Vec<PublicKey>,
        reason: RemovalReason,
        reply: Option<oneshot::Sender<usize>>,
    },
    /// A sweep is about to read the data plane: journal writes from now on.
    SweepBegin {
        reply: oneshot::Sender<()>,
    },
    /// The read is done (or failed): reconcile, select, queue the removals.
    Sweep {
        read: Result<Vec<InstalledPeer>, String>,
        now: SystemTime,
        evict_after: Duration,
        reply: oneshot::Sender<Result<SweepStarted, String>>,
    },
    Stop,
}

/// What a sweep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepStarted {
    pub installed: usize,
    pub selected: usize,
    /// How long reading every peer from the data plane took (off the install worker).
    pub read: Duration,
}

/// The worker went away (the daemon is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the install worker has stopped")]
pub struct WorkerGone;

/// Cheap, cloneable handle to the install worker.
#[derive(Clone)]
pub struct InstallQueue {
    tx: Sender<Command>,
    installed: Arc<Mutex<HashSet<PublicKey>>>,
    /// For the sweep's full read, which runs beside the worker, not on it.
    reader: DataPlane,
}

impl InstallQueue {
    /// Whether the data plane currently holds this peer (as of the worker's last write
    /// or sweep).
    pub fn is_installed(&self, key: &PublicKey) -> bool {
        self.installed
            .lock()
            .map(|s| s.contains(key))
            .unwrap_or(false)
    }

    pub fn installed_count(&self) -> usize {
        self.installed.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Install one peer found through the JIT path, with the captured endpoint.
    pub async fn install(
        &self,
        config: PeerConfig,
        endpoint: SocketAddr,
        captured_at: Instant,
    ) -> Result<Result<Installed, String>, WorkerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Install {
                write: PeerWrite {
                    config,
                    endpoint: Some(endpoint),
                },
                captured_at,
                reply,
            })
            .map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }

    /// Install many peers without endpoints (preload at boot, push mode).
    pub async fn install_many(
        &self,
        configs: Vec<PeerConfig>,
    ) -> Result<Result<usize, String>, WorkerGone> {
        let (reply, rx) = oneshot::channel();
        let writes = configs
            .into_iter()
            .map(|config| PeerWrite {
                config,
                endpoint: None,
            })
            .collect();
        self.tx
            .send(Command::InstallMany { writes, reply })
            .map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }

    /// Remove peers; resolves once all are removed (in chunks).
    pub async fn remove(
        &self,
        keys: Vec<PublicKey>,
        reason: RemovalReason,
    ) -> Result<usize, WorkerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Remove {
                keys,
                reason,
                reply: Some(reply),
            })
            .map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }

    /// Read the data plane, select idle peers and queue their removal. Returns as soon
    /// as the removal is queued: chunks then run between installs. The read runs on a
    /// blocking thread while the worker keeps installing; the worker journals its writes
    /// meanwhile and reconciles the read with them (`sweep::reconcile`).
    pub async fn sweep(
        &self,
        now: SystemTime,
        evict_after: Duration,
    ) -> Result<Result<SweepStarted, String>, WorkerGone> {
        let (begun, rx) = oneshot::channel();
        self.tx
            .send(Command::SweepBegin { reply: begun })
            .map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)?;
        let reader = self.reader.clone();
        let started = Instant::now();
        let read = tokio::task::spawn_blocking(move || reader.peers())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let read_took = started.elapsed();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Sweep {
                read,
                now,
                evict_after,
                reply,
            })
            .map_err(|_| WorkerGone)?;
        let result = rx.await.map_err(|_| WorkerGone)?;
        Ok(result.map(|s| SweepStarted {
            read: read_took,
            ..s
        }))
    }
}

/// The worker thread; stopping it (or dropping it) ends the thread.
pub struct InstallWorker {
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl InstallWorker {
    /// Start the worker. `peers`: what the data plane holds now (read by the caller at attach time); they
    /// are adopted as installed.
    pub fn start(
        dataplane: DataPlane,
        peers: Vec<InstalledPeer>,
        settings: InstallSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, InstallQueue), DataPlaneError> {
        let now = SystemTime::now();
        let installed: HashSet<PublicKey> = peers.iter().map(|p| p.public_key).collect();
        metrics.installed_peers.set(installed.len() as i64);
        let installed = Arc::new(Mutex::new(installed));
        let (tx, rx) = mpsc::channel();
        let pacer = RemovalPacer::new(settings.sweep_budget, settings.sweep_chunk);
        let reader = dataplane.clone();
        let mut state = WorkerState {
            pacer,
            dataplane,
            journal: None,
            settings,
            metrics,
            installed: installed.clone(),
            // Peers already present when we start are "first seen" now: they get a full
            // evict-after period to show a handshake.
            installed_at: peers.iter().map(|p| (p.public_key, now)).collect(),
            removals: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name("jitwgd-install".into())
            .spawn(move || state.run(rx))
            .map_err(|source| DataPlaneError::Apply {
                name: "install worker".into(),
                source,
            })?;
        let queue = InstallQueue {
            tx: tx.clone(),
            installed,
            reader,
        };
        Ok((
            Self {
                tx,
                thread: Some(thread),
            },
            queue,
        ))
    }

    /// Stop after the current batch and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InstallWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct RemovalJob {
    keys: VecDeque<PublicKey>,
    reason: RemovalReason,
    removed: usize,
    reply: Option<oneshot::Sender<usize>>,
}

struct WorkerState {
    dataplane: DataPlane,
    settings: InstallSettings,
    metrics: Arc<Metrics>,
    installed: Arc<Mutex<HashSet<PublicKey>>>,
    /// When each peer was installed (or first seen): a peer that never completes a
    /// handshake is evicted `evict_after` after this.
    installed_at: HashMap<PublicKey, SystemTime>,
    removals: VecDeque<RemovalJob>,
    pacer: RemovalPacer,
    /// Writes made while a sweep's read is in flight (`None` when no sweep is reading).
    journal: Option<Vec<sweep::Change>>,
}

impl WorkerState {
    fn run(&mut self, rx: Receiver<Command>) {
        loop {
            // Idle: block for work. Removals pending: only peek, so queued installs are
            // served between removal chunks.
            let first = if self.removals.is_empty() {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(Duration::ZERO) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut installs = Vec::new();
            let mut next = first;
            while let Some(cmd) = next {
                match cmd {
                    Command::Stop => return,
                    Command::Install {
                        write,
                        captured_at,
                        reply,
                    } => installs.push((write, captured_at, reply)),
                    Command::InstallMany { writes, reply } => {
                        let _ = reply.send(self.install_many(writes));
                    }
                    Command::Remove {
                        keys,
                        reason,
                        reply,
                    } => {
                        let job = RemovalJob {
                            keys: keys.into(),
                            reason,
                            removed: 0,
                            reply,
                        };
                        // Revocations jump the queue: they are few and security-relevant.
                        match reason {
                            RemovalReason::Revoked => self.removals.push_front(job),
                            RemovalReason::Idle => self.removals.push_back(job),
                        }
                    }
                    Command::SweepBegin { reply } => {
                        self.journal = Some(Vec::new());
                        let _ = reply.send(());
                    }
                    Command::Sweep {
                        read,
                        now,
                        evict_after,
                        reply,
                    } => {
                        let journal = self.journal.take().unwrap_or_default();
                        let _ = reply.send(read.map(|r| self.sweep(r, &journal, now, evict_after)));
                    }
                }
                if installs.len() >= MAX_INSTALL_BATCH {
                    break;
                }
                next = rx.recv_timeout(Duration::ZERO).ok();
            }
            if !installs.is_empty() {
                self.install_batch(installs);
            } else {
                self.remove_one_chunk();
            }
        }
    }

    fn mark_installed(&mut self, keys: impl IntoIterator<Item = PublicKey>) {
        let now = SystemTime::now();
        if let Ok(mut set) = self.installed.lock() {
            for k in keys {
                set.insert(k);
                self.installed_at.insert(k, now);
                if let Some(j) = self.journal.as_mut() {
                    j.push(sweep::Change::Installed(k));
                }
            }
            self.metrics.installed_peers.set(set.len() as i64);
        }
    }

    fn mark_removed(&mut self, keys: &[PublicKey]) {
        if let Ok(mut set) = self.installed.lock() {
            for k in keys {
                set.remove(k);
                self.installed_at.remove(k);
                if let Some(j) = self.journal.as_mut() {
                    j.push(sweep::Change::Removed(*k));
                }
            }
            self.metrics.installed_peers.set(set.len() as i64);
        }
    }

    /// JIT installs: one call for the whole batch, then (role inversion) a second call
    /// that clears the keepalive that made the data plane initiate.
    #[allow(clippy::type_complexity)]
    fn install_batch(
        &mut self,
        batch: Vec<(
            PeerWrite,
            Instant,
            oneshot::Sender<Result<Installed, String>>,
        )>,
    ) {
        let initiate = self.settings.initiate;
        let keepalive = initiate.then_some(ROLE_INVERSION_KEEPALIVE);
        let update = batch.iter().fold(DeviceUpdate::new(), |u, (w, _, _)| {
            u.add_peer(dataplane::peer_builder(w, keepalive))
        });
        if let Err(e) = self.dataplane.apply(update) {
            if batch.len() > 1 {
                // Find the culprit: apply one by one so one bad peer fails alone.
                tracing::warn!(error = %e, batch = batch.len(), "batched install failed; retrying peer by peer");
                for item in batch {
                    self.install_batch(vec![item]);
                }
            } else {
                tracing::warn!(error = %e, "install failed");
                self.fail_installs(batch, &e.to_string());
            }
            return;
        }
        if initiate {
            let clear = batch.iter().fold(DeviceUpdate::new(), |u, (w, _, _)| {
                u.add_peer(dataplane::clear_keepalive(&w.config.public_key))
            });
            if let Err(e) = self.dataplane.apply(clear) {
                // The peers are installed; they just keep a keepalive until the next
                // install or eviction. Worth a warning, not a failure.
                tracing::warn!(error = %e, "clearing the role-inversion keepalive failed");
            }
        }
        self.mark_installed(batch.iter().map(|(w, _, _)| w.config.public_key));
        for (_, captured_at, reply) in batch {
            let latency = captured_at.elapsed();
            self.metrics.installs.inc();
            self.metrics
                .install_latency_seconds
                .observe(latency.as_secs_f64());
            if initiate {
                self.metrics.role_inversions.inc();
            }
            let _ = reply.send(Ok(Installed {
                latency,
                initiated: initiate,
            }));
        }
    }

    #[allow(clippy::type_complexity)]
    fn fail_installs(
        &mut self,
        batch: Vec<(
            PeerWrite,
            Instant,
            oneshot::Sender<Result<Installed, String>>,
        )>,
        error: &str,
    ) {
        for (_, _, reply) in batch {
            self.metrics.install_errors.inc();
            let _ = reply.send(Err(error.to_string()));
        }
    }

    fn install_many(&mut self, writes: Vec<PeerWrite>) -> Result<usize, String> {
        let mut done = 0;
        for chunk in writes.chunks(4096) {
            let update = chunk.iter().fold(DeviceUpdate::new(), |u, w| {
                u.add_peer(dataplane::peer_builder(w, None))
            });
            if let Err(e) = self.dataplane.apply(update) {
                self.metrics.install_errors.inc();
                return Err(e.to_string());
            }
            self.metrics.installs.inc_by(chunk.len() as u64);
            self.mark_installed(chunk.iter().map(|w| w.config.public_key));
            done += chunk.len();
        }
        Ok(done)
    }

    /// `read`: every peer, read off this thread after `SweepBegin`; `journal`: what this
    /// worker wrote since.
    fn sweep(
        &mut self,
        read: Vec<InstalledPeer>,
        journal: &[sweep::Change],
        now: SystemTime,
        evict_after: Duration,
    ) -> SweepStarted {
        // The data plane is the truth (someone may have removed peers behind our back):
        // resynchronise the installed set with the read, brought up to date.
        let sweep::Reconciled { present, touched } = sweep::reconcile(&read, journal);
        let peers: Vec<InstalledPeer> = read
            .into_iter()
            .filter(|p| present.contains(&p.public_key) && !touched.contains(&p.public_key))
            .collect();
        self.installed_at.retain(|k, _| present.contains(k));
        for p in &peers {
            self.installed_at.entry(p.public_key).or_insert(now);
        }
        // Do not select what is already queued for removal.
        let queued: HashSet<PublicKey> = self
            .removals
            .iter()
            .flat_map(|j| j.keys.iter().copied())
            .collect();
        let selected: Vec<PublicKey> =
            sweep::select_idle(&peers, &self.installed_at, now, evict_after)
                .into_iter()
                .filter(|k| !queued.contains(k))
                .collect();
        let started = SweepStarted {
            installed: present.len(),
            selected: selected.len(),
            read: Duration::ZERO,
        };
        if let Ok(mut set) = self.installed.lock() {
            *set = present;
            self.metrics.installed_peers.set(set.len() as i64);
        }
        if !selected.is_empty() {
            self.removals.push_back(RemovalJob {
                keys: selected.into(),
                reason: RemovalReason::Idle,
                removed: 0,
                reply: None,
            });
        }
        started
    }

    fn remove_one_chunk(&mut self) {
        let Some(job) = self.removals.front_mut() else {
            return;
        };
        let n = self.pacer.next_chunk().min(job.keys.len());
        let chunk: Vec<PublicKey> = job.keys.drain(..n).collect();
        let reason = job.reason;
        let update = chunk.iter().fold(DeviceUpdate::new(), |u, k| {
            u.add_peer(dataplane::removal(k))
        });
        let started = Instant::now();
        let applied = self.dataplane.apply(update);
        self.pacer.observe(chunk.len(), started.elapsed());
        match applied {
            Ok(()) => {
                if let Some(job) = self.removals.front_mut() {
                    job.removed += chunk.len();
                }
                match reason {
                    RemovalReason::Idle => self.metrics.evictions.inc_by(chunk.len() as u64),
                    RemovalReason::Revoked => self.metrics.revocations.inc_by(chunk.len() as u64),
                };
                // One info line per chunk: a line per peer on this thread cost 0.3-0.7 ms
                // each (measured in the VM) and held installs back longer than the removal.
                tracing::info!(peers = chunk.len(), reason = ?reason, "removed peers");
                for k in &chunk {
                    tracing::debug!(peer = %k, reason = ?reason, "removed peer");
                }
                self.mark_removed(&chunk);
            }
            Err(e) => {
                tracing::warn!(error = %e, peers = chunk.len(), "removing peers failed; the next sweep will retry");
            }
        }
        if self.removals.front().is_some_and(|j| j.keys.is_empty()) {
            if let Some(job) = self.removals.pop_front() {
                if let Some(reply) = job.reply {
                    let _ = reply.send(job.removed);
                }
            }
        }
    }
}
