//! The install worker: the one thread that writes to the data plane. Installs are
//! batched (a storm of initiations becomes a few UAPI/netlink calls) and always served
//! before removals, which run in bounded chunks, so a large eviction never starves a
//! connecting client (on the kernel backend each removed peer costs an RCU grace period).
//! The rules live in `scheduler` (pure); this file is the thread, its channel and the
//! async handle the rest of the daemon uses.

mod addresses;
pub mod feedback;
mod pacer;
mod refusals;
mod scheduler;
mod shell;

use shell::Shell;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use wireguard_control::DeviceUpdate;

use crate::addresses::AddressIndex;
use crate::dataplane::{self, DataPlane, DataPlaneError, InstalledPeer, PeerWrite};
use crate::errors::Causes;
use crate::metrics::Metrics;
use crate::peer::{PeerConfig, PublicKey};
use crate::sweep::{PeerReadError, PeerReads};

pub use addresses::ManyInstalled;
pub use pacer::InitiationPacer;
pub use scheduler::{
    Backend, InitiationRound, InstallSettings, PeerChange, Plan, RemovalReason, Scheduler,
    SweepStarted, DEFERRED_INITIATION_MAX_AGE, DETOUR_MIN_AGE, MAX_INSTALL_BATCH, REINSTALL_BATCH,
    ROLE_INVERSION_KEEPALIVE,
};

/// What failed in the install stage.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The worker went away (the daemon is stopping).
    #[error("the install worker has stopped")]
    WorkerGone,
    #[error("cannot start the install worker thread")]
    Spawn(#[source] std::io::Error),
    #[error("writing peers to the data plane failed")]
    Write(#[source] DataPlaneError),
    #[error("reading the data plane for the sweep failed")]
    SweepRead(#[source] DataPlaneError),
    #[error("the sweep's data-plane read did not complete")]
    SweepTask(#[source] tokio::task::JoinError),
    /// The peer's allowed IPs overlap those of installed peers (`addresses`).
    #[error("allowed IPs overlap those of {} installed peer(s): {holders:?}", holders.len())]
    AddressConflict { holders: Vec<PublicKey> },
}

/// Outcome of one JIT install, for the log line and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Installed {
    /// From capture of the initiation to the data plane acknowledging the install.
    pub latency: Duration,
    /// Whether the data plane was told to initiate at once (else: deferred by the
    /// initiation pacer, or role inversion is off).
    pub initiated: bool,
}

enum Command {
    Install {
        write: PeerWrite,
        captured_at: Instant,
        reply: oneshot::Sender<Result<Installed, InstallError>>,
    },
    InstallMany {
        writes: Vec<PeerWrite>,
        reply: oneshot::Sender<Result<ManyInstalled, InstallError>>,
    },
    /// Peers found on the data plane at start, with their stored configs: their addresses
    /// go into the address index.
    AdoptAddresses {
        configs: Vec<PeerConfig>,
        reply: oneshot::Sender<()>,
    },
    /// An installed peer whose own initiation the storm guard kept from the data plane: the
    /// data plane initiates to it instead, at `write`'s endpoint (`Scheduler::initiate_again`).
    InitiateAgain {
        write: PeerWrite,
    },
    /// Peers active before a restart, with their last endpoint: installed like JIT ones
    /// (same batch path, role inversion included), at most `REINSTALL_BATCH` a command.
    Reinstall {
        writes: Vec<PeerWrite>,
        reply: oneshot::Sender<usize>,
    },
    Remove {
        keys: Vec<PublicKey>,
        reason: RemovalReason,
        reply: oneshot::Sender<usize>,
    },
    /// A sweep is about to read the data plane: journal writes from now on.
    SweepBegin {
        reply: oneshot::Sender<()>,
    },
    /// The read is done (or failed): reconcile, select, queue the removals.
    Sweep {
        read: Result<Vec<InstalledPeer>, InstallError>,
        now: SystemTime,
        evict_after: Duration,
        reply: oneshot::Sender<Result<SweepStarted, InstallError>>,
    },
    /// A captured initiation's sender index, from its endpoint (before its install).
    ClientInitiation {
        endpoint: SocketAddr,
        sender_index: u32,
        at: Instant,
    },
    /// The data plane sent a cookie reply (`feedback`).
    CookieReply {
        endpoint: SocketAddr,
        receiver_index: u32,
        at: Instant,
    },
    Stop,
}

/// The real data plane as the scheduler's backend: plans become `DeviceUpdate`s here.
impl Backend for DataPlane {
    fn apply(&self, plan: &Plan) -> Result<(), DataPlaneError> {
        DataPlane::apply(self, device_update(plan))
    }

    fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
        DataPlane::peers(self)
    }
}

/// One plan as one wireguard-control update.
fn device_update(plan: &Plan) -> DeviceUpdate {
    plan.0.iter().fold(DeviceUpdate::new(), |u, change| {
        u.add_peer(match change {
            PeerChange::Install { write, keepalive } => dataplane::peer_builder(write, *keepalive),
            PeerChange::Initiate(key) => {
                dataplane::start_keepalive(key, scheduler::ROLE_INVERSION_KEEPALIVE)
            }
            PeerChange::ClearKeepalive(key) => dataplane::clear_keepalive(key),
            PeerChange::Remove(key) => dataplane::removal(key),
        })
    })
}

/// Cheap, cloneable handle to the install worker.
#[derive(Clone)]
pub struct InstallQueue {
    tx: Sender<Command>,
    installed: Arc<Mutex<HashSet<PublicKey>>>,
    /// For the sweep's full read, which runs beside the worker, not on it (shared with
    /// the kernel shield: `sweep::PeerReads`).
    reads: Arc<PeerReads>,
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

    /// The data plane's one reader, for other users of its peers (the kernel shield).
    pub fn peer_reads(&self) -> Arc<PeerReads> {
        self.reads.clone()
    }

    /// Have the data plane initiate to the installed peer `config` at `endpoint` (a fresh
    /// peer, so it initiates at once), paced like any role inversion: its own initiation
    /// did not reach the data plane (the storm guard). Fire and forget.
    pub fn initiate_again(&self, config: PeerConfig, endpoint: SocketAddr) {
        let _ = self.tx.send(Command::InitiateAgain {
            write: PeerWrite {
                config,
                endpoint: Some(endpoint),
            },
        });
    }

    /// Sends `command` built around a fresh reply channel and waits for the reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, InstallError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(command(reply))
            .map_err(|_| InstallError::WorkerGone)?;
        rx.await.map_err(|_| InstallError::WorkerGone)
    }

    /// The client at `endpoint` sent the initiation with `sender_index` that is about to
    /// be installed: a cookie reply answering it is not a refusal of the gateway's own
    /// initiation (`refusals`). Fire and forget.
    pub fn client_initiation(&self, endpoint: SocketAddr, sender_index: u32) {
        let _ = self.tx.send(Command::ClientInitiation {
            endpoint,
            sender_index,
            at: Instant::now(),
        });
    }

    /// The data plane sent a cookie reply with `receiver_index` to `endpoint` (seen by
    /// `feedback`). Fire and forget; false once the worker has stopped.
    pub fn cookie_reply(&self, endpoint: SocketAddr, receiver_index: u32) -> bool {
        self.tx
            .send(Command::CookieReply {
                endpoint,
                receiver_index,
                at: Instant::now(),
            })
            .is_ok()
    }

    /// Install one peer found through the JIT path, with the captured endpoint.
    pub async fn install(
        &self,
        config: PeerConfig,
        endpoint: SocketAddr,
        captured_at: Instant,
    ) -> Result<Installed, InstallError> {
        let write = PeerWrite {
            config,
            endpoint: Some(endpoint),
        };
        self.ask(|reply| Command::Install {
            write,
            captured_at,
            reply,
        })
        .await?
    }

    /// Re-install peers that were active before a restart with their last endpoint, in the
    /// initiator role like a JIT install (when `initiate` is on), one small batch at a time
    /// (`REINSTALL_BATCH`) so JIT installs queued meanwhile and the paced initiations of the
    /// batches before go between batches. Returns how many were installed.
    pub async fn reinstall(
        &self,
        peers: Vec<(PeerConfig, SocketAddr)>,
    ) -> Result<usize, InstallError> {
        let mut writes: Vec<PeerWrite> = peers
            .into_iter()
            .map(|(config, endpoint)| PeerWrite {
                config,
                endpoint: Some(endpoint),
            })
            .collect();
        let mut done = 0;
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(REINSTALL_BATCH));
            let batch = std::mem::replace(&mut writes, rest);
            done += self
                .ask(|reply| Command::Reinstall {
                    writes: batch,
                    reply,
                })
                .await?;
        }
        Ok(done)
    }

    /// Remove peers; resolves once all are removed (in chunks).
    pub async fn remove(
        &self,
        keys: Vec<PublicKey>,
        reason: RemovalReason,
    ) -> Result<usize, InstallError> {
        self.ask(|reply| Command::Remove {
            keys,
            reason,
            reply,
        })
        .await
    }

    /// Read the data plane, select idle peers and queue their removal. Returns as soon
    /// as the removal is queued: chunks then run between installs. The read runs on a
    /// blocking thread while the worker keeps installing; the worker journals its writes
    /// meanwhile and reconciles the read with them (`sweep::reconcile`). Also returns the
    /// read's peers that have completed a handshake, for the activity record.
    pub async fn sweep(
        &self,
        now: SystemTime,
        evict_after: Duration,
    ) -> Result<(SweepStarted, Vec<InstalledPeer>), InstallError> {
        self.ask(|reply| Command::SweepBegin { reply }).await?;
        // Only a read started after the worker began journalling can be reconciled: one
        // started after this instant (the shield's, or a new one), which follows the ack.
        let started = Instant::now();
        let read = match self.reads.read_started_after(Some(started)).await {
            Ok(reading) => Ok(reading.read.peers.clone()),
            Err(PeerReadError::Read(e)) => Err(InstallError::SweepRead(e)),
            Err(PeerReadError::Task(e)) => Err(InstallError::SweepTask(e)),
        };
        let read_took = started.elapsed();
        let active: Vec<InstalledPeer> = read
            .as_ref()
            .map(|peers| {
                peers
                    .iter()
                    .filter(|p| p.last_handshake.is_some())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let found = self
            .ask(|reply| Command::Sweep {
                read,
                now,
                evict_after,
                reply,
            })
            .await??;
        Ok((
            SweepStarted {
                read: read_took,
                ..found
            },
            active,
        ))
    }
}

/// The worker thread; stopping it (or dropping it) ends the thread.
pub struct InstallWorker {
    tx: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl InstallWorker {
    /// Start the worker. `peers`: what the data plane holds now (read by the caller at
    /// attach time); they are adopted as installed.
    pub fn start(
        backend: Arc<dyn Backend>,
        peers: Vec<InstalledPeer>,
        settings: InstallSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, InstallQueue), InstallError> {
        let cookies = settings.initiate_feedback.clone();
        let scheduler = Scheduler::new(settings, metrics.clone(), &peers, SystemTime::now());
        let installed = scheduler.installed();
        let (tx, rx) = mpsc::channel();
        let mut shell = Shell {
            scheduler,
            backend: backend.clone(),
            metrics,
            addresses: AddressIndex::new(),
            cookies,
        };
        let thread = std::thread::Builder::new()
            .name("jitwgd-install".into())
            .spawn(move || shell.run(rx))
            .map_err(InstallError::Spawn)?;
        let queue = InstallQueue {
            tx: tx.clone(),
            installed,
            reads: Arc::new(PeerReads::new(backend)),
        };
        Ok((
            Self {
                tx,
                thread: Some(thread),
            },
            queue,
        ))
    }

    /// Whether the worker thread has ended (it only ends when stopped, or by a panic):
    /// the daemon watches this so a dead worker stops it instead of being ignored.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
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
