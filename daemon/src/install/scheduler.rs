//! The install worker's rules, apart from its thread and channels: which writes go to the
//! data plane in which order, as `Plan`s. Installs go out in batches (a failed batch is
//! split so one bad peer fails alone) and always before removals; removals run in chunks
//! sized by `RemovalPacer`, revocations ahead of idle evictions; writes made while a
//! sweep reads the data plane are journalled and reconciled with that read. No IO (bar two
//! `tracing` warnings about a batch that had to be split or a keepalive not cleared) and no
//! clock: plans are applied through `Backend`, and the time comes in as arguments.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::dataplane::{DataPlaneError, InstalledPeer, PeerWrite};
use crate::metrics::Metrics;
use crate::peer::PublicKey;
use crate::sweep::{self, RemovalPacer};

use super::pacer::InitiationPacer;
use super::refusals::{RefusalWatch, REFUSAL_RETRY_DELAY};

/// Keepalive interval (seconds) set at install time to make the data plane send its
/// own initiation at once; cleared again right after (see `PeerChange::ClearKeepalive`).
pub const ROLE_INVERSION_KEEPALIVE: u16 = 1;

/// A deferred role-inversion initiation older than this is dropped: by then the client
/// has retried itself (WireGuard's REKEY_TIMEOUT), and a second handshake would only add
/// to the data plane's queue.
pub const DEFERRED_INITIATION_MAX_AGE: Duration = Duration::from_secs(5);

/// A peer installed more recently than this is not initiated to again for an initiation
/// the storm guard dropped (`Scheduler::initiate_again`): the data plane's own initiation
/// to it is at most REKEY_TIMEOUT (5 s) old and retransmits by itself, and a fresh peer
/// would throw away the handshake it may be completing. Measured: storm runs whose guard
/// rose again for the clients' 5 s retries and replaced those peers were four of the five
/// worst (BENCHMARKS.md, storm, sixth round).
pub const DETOUR_MIN_AGE: Duration = Duration::from_secs(6);

/// Most peers written in one JIT install call.
pub const MAX_INSTALL_BATCH: usize = 512;

/// Most peers written in one call when re-installing the peers active before a restart.
/// Each call takes the data plane ~0.5 ms per peer (wireguard-go creates the peer with its
/// static-static X25519), and the paced initiations go out only between calls: at 512 a
/// call, 1,000 peers were all installed (552 ms) before most initiated (another 650 ms at
/// 1,500/s). 32 peers take about as long as the pacer's burst (20 ms), so installing and
/// initiating overlap.
pub const REINSTALL_BATCH: usize = 32;

/// Most peers written in one bulk (preload, push) install call.
pub const BULK_INSTALL_CHUNK: usize = 4096;

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
    /// Role-inversion initiations per second (`InitiationPacer`); 0 = unpaced. Installs
    /// beyond the rate are written at once without the keepalive and initiate later.
    pub initiate_rate: u32,
    /// `Some`: adapt the rate to the running count of cookie replies seen leaving the data
    /// plane (`--initiate-adapt`, counted by `install::feedback`); `None`: a fixed rate.
    pub initiate_feedback: Option<Arc<AtomicU64>>,
    /// Most peers removed in one data-plane call.
    pub sweep_chunk: usize,
    /// Time one removal call should take at most, so installs queued behind it wait no
    /// longer than this (chunk sizes adapt to it: see `sweep::RemovalPacer`).
    pub sweep_budget: Duration,
}

/// One peer's part of a data-plane write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Add or replace the peer; `keepalive` set makes the data plane initiate at once.
    Install {
        write: PeerWrite,
        keepalive: Option<u16>,
    },
    /// Make an installed peer initiate now (a deferred role inversion): the keepalive
    /// turned on, cleared again by a following `ClearKeepalive`.
    Initiate(PublicKey),
    /// Turn the install-time keepalive off again, so the peer can go idle.
    ClearKeepalive(PublicKey),
    Remove(PublicKey),
}

/// One data-plane write (one UAPI or netlink call); converted into a
/// `wireguard_control::DeviceUpdate` by the backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan(pub Vec<PeerChange>);

impl Plan {
    fn install(writes: &[PeerWrite], keepalive: Option<u16>) -> Plan {
        Plan::install_initiating(writes, keepalive.map_or(0, |_| writes.len()))
    }

    /// Installs where the first `initiating` writes carry the role-inversion keepalive.
    fn install_initiating(writes: &[PeerWrite], initiating: usize) -> Plan {
        Plan(
            writes
                .iter()
                .enumerate()
                .map(|(i, w)| PeerChange::Install {
                    write: w.clone(),
                    keepalive: (i < initiating).then_some(ROLE_INVERSION_KEEPALIVE),
                })
                .collect(),
        )
    }

    fn clear_keepalives(keys: impl IntoIterator<Item = PublicKey>) -> Plan {
        Plan(keys.into_iter().map(PeerChange::ClearKeepalive).collect())
    }
}

/// Deferred role inversions due now: apply `initiate`, then `clear`.
#[derive(Debug)]
pub struct InitiationRound {
    pub initiate: Plan,
    pub clear: Plan,
    /// Peers dropped from the queue because they waited too long or are gone.
    pub expired: usize,
}

/// Where plans are applied: the real data plane, or a fake in tests.
pub trait Backend: Send + Sync {
    /// Apply one plan as one call.
    fn apply(&self, plan: &Plan) -> Result<(), DataPlaneError>;
    /// Every installed peer with its last handshake.
    fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError>;
}

/// What a sweep found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepStarted {
    pub installed: usize,
    pub selected: usize,
    /// How long reading every peer from the data plane took (off the install worker).
    pub read: Duration,
}

/// Peers queued for removal; `ticket` is handed back when the last chunk is done.
struct RemovalJob<R> {
    keys: VecDeque<PublicKey>,
    reason: RemovalReason,
    removed: usize,
    ticket: Option<R>,
}

/// The next removal call: apply `plan`, then report with `Scheduler::removal_applied`.
#[derive(Debug)]
pub struct RemovalChunk {
    pub plan: Plan,
    pub keys: Vec<PublicKey>,
    pub reason: RemovalReason,
}

/// The worker's state and rules. `R`: what a removal's requester waits on (a reply
/// channel in the worker, anything in tests).
pub struct Scheduler<R> {
    settings: InstallSettings,
    metrics: Arc<Metrics>,
    /// Shared with `InstallQueue::is_installed`, read by the packet path.
    installed: Arc<Mutex<HashSet<PublicKey>>>,
    /// When each peer was installed (or first seen): a peer that never completes a
    /// handshake is evicted `evict_after` after this.
    installed_at: HashMap<PublicKey, SystemTime>,
    removals: VecDeque<RemovalJob<R>>,
    pacer: RemovalPacer,
    /// Writes made while a sweep's read is in flight (`None` when no sweep is reading).
    journal: Option<Vec<sweep::Change>>,
    initiations: InitiationPacer,
    /// Installed peers waiting for their role-inversion initiation, oldest first.
    deferred: VecDeque<(PeerWrite, Instant)>,
    /// Which of the gateway's initiations the data plane refused (`refusals`).
    refusals: RefusalWatch,
    /// Peers whose response was refused (or whose own initiation the storm guard dropped:
    /// `initiate_again`), to initiate to again (ahead of `deferred`) from
    /// when each is due (`REFUSAL_RETRY_DELAY` after its cookie reply: in time order).
    again: VecDeque<(PeerWrite, Instant)>,
}

impl<R> Scheduler<R> {
    /// `adopted`: what the data plane holds at start; those peers count as installed and
    /// first seen at `now`, so they get a full evict-after period to show a handshake.
    pub fn new(
        settings: InstallSettings,
        metrics: Arc<Metrics>,
        adopted: &[InstalledPeer],
        now: SystemTime,
    ) -> Self {
        let installed: HashSet<PublicKey> = adopted.iter().map(|p| p.public_key).collect();
        metrics.installed_peers.set(installed.len() as i64);
        let initiations = match settings.initiate_feedback {
            Some(_) => InitiationPacer::adaptive(settings.initiate_rate),
            None => InitiationPacer::new(settings.initiate_rate),
        };
        Scheduler {
            pacer: RemovalPacer::new(settings.sweep_budget, settings.sweep_chunk),
            settings,
            metrics,
            installed: Arc::new(Mutex::new(installed)),
            installed_at: adopted.iter().map(|p| (p.public_key, now)).collect(),
            removals: VecDeque::new(),
            journal: None,
            initiations,
            deferred: VecDeque::new(),
            refusals: RefusalWatch::new(),
            again: VecDeque::new(),
        }
    }

    #[cfg(test)]
    pub fn metrics_for_tests(&self) -> &Metrics {
        &self.metrics
    }

    /// The installed set, for readers on other threads.
    pub fn installed(&self) -> Arc<Mutex<HashSet<PublicKey>>> {
        self.installed.clone()
    }

    pub fn initiate(&self) -> bool {
        self.settings.initiate
    }

    /// Whether removal work is waiting (then the worker must not block on its queue).
    pub fn has_removals(&self) -> bool {
        !self.removals.is_empty()
    }

    /// Queue keys for removal. Revocations jump the queue: they are few and
    /// security-relevant.
    pub fn queue_removal(
        &mut self,
        keys: Vec<PublicKey>,
        reason: RemovalReason,
        ticket: Option<R>,
    ) {
        let job = RemovalJob {
            keys: keys.into(),
            reason,
            removed: 0,
            ticket,
        };
        match reason {
            RemovalReason::Revoked => self.removals.push_front(job),
            RemovalReason::Idle => self.removals.push_back(job),
        }
    }

    /// JIT installs: one call for the whole batch, then (role inversion) a second call
    /// that clears the keepalive that made the data plane initiate. Only as many peers as
    /// the initiation pacer admits at `mono` initiate now; the rest are installed without
    /// the keepalive and queued for `next_initiations`. A failed batch is retried peer by
    /// peer so one bad peer fails alone. One result per write, in order: `Ok(true)` when
    /// the peer initiated at once.
    pub fn install_batch(
        &mut self,
        backend: &dyn Backend,
        writes: &[PeerWrite],
        now: SystemTime,
        mono: Instant,
    ) -> Vec<Result<bool, DataPlaneError>> {
        let initiate = self.settings.initiate;
        // Nothing jumps the queue of deferred initiations or of retries.
        let initiating = if initiate && self.deferred.is_empty() && self.again.is_empty() {
            self.initiations.admit(mono, writes.len())
        } else {
            0
        };
        if let Err(e) = backend.apply(&Plan::install_initiating(writes, initiating)) {
            self.initiations.refund(initiating);
            if writes.len() > 1 {
                tracing::warn!(error = %crate::errors::Causes(&e), batch = writes.len(), "batched install failed; retrying peer by peer");
                return writes
                    .iter()
                    .flat_map(|w| self.install_batch(backend, std::slice::from_ref(w), now, mono))
                    .collect();
            }
            return vec![Err(e)];
        }
        if initiating > 0 {
            let clear =
                Plan::clear_keepalives(writes[..initiating].iter().map(|w| w.config.public_key));
            if let Err(e) = backend.apply(&clear) {
                // The peers are installed; they just keep a keepalive until the next
                // install or eviction. Worth a warning, not a failure.
                tracing::warn!(error = %crate::errors::Causes(&e), "clearing the role-inversion keepalive failed");
            }
        }
        if initiate {
            for w in &writes[..initiating] {
                self.refusals.initiated(w, false, mono);
            }
            self.deferred
                .extend(writes[initiating..].iter().map(|w| (w.clone(), mono)));
        }
        self.mark_installed(writes.iter().map(|w| w.config.public_key), now);
        (0..writes.len()).map(|i| Ok(i < initiating)).collect()
    }

    /// The adaptive pacer's input at `mono`: the running count of cookie replies seen leaving
    /// the data plane (ignored by a fixed-rate pacer).
    pub fn initiation_feedback(&mut self, mono: Instant, cookies: u64) {
        let waiting = !self.deferred.is_empty();
        self.initiations.feedback(mono, cookies, waiting);
    }

    /// The current role-inversion rate (per second; 0 = unpaced).
    pub fn initiation_rate(&self) -> f64 {
        self.initiations.rate()
    }

    /// How long from `mono` until deferred initiations are due; `None` when none wait.
    pub fn initiation_wait(&self, mono: Instant) -> Option<Duration> {
        let paced = self.initiations.wait(mono);
        if !self.deferred.is_empty() || self.again_ready(mono) > 0 {
            return Some(paced);
        }
        let (_, due) = self.again.front()?;
        Some(paced.max(due.saturating_duration_since(mono)))
    }

    /// Initiate again, as soon as the pacer allows and ahead of the deferred ones, to an
    /// installed peer whose own initiation did not reach the data plane (the storm guard
    /// dropped it): a fresh peer at `write`'s endpoint, like a refused response's retry.
    /// Nothing when the gateway does not initiate, the peer is not installed, was installed
    /// less than `DETOUR_MIN_AGE` before `now`, or is already queued. `true`: queued.
    pub fn initiate_again(&mut self, write: PeerWrite, now: SystemTime, mono: Instant) -> bool {
        let key = write.config.public_key;
        // `installed_at` holds exactly the installed peers (kept with `installed`).
        let old_enough = self
            .installed_at
            .get(&key)
            .is_some_and(|at| now.duration_since(*at).unwrap_or_default() >= DETOUR_MIN_AGE);
        if !self.settings.initiate
            || !old_enough
            || self.again.iter().any(|(w, _)| w.config.public_key == key)
        {
            return false;
        }
        self.metrics.shield.storm_guard_detours.inc();
        // `again` is in due order; due now goes after those already due.
        let at = self.again.partition_point(|(_, due)| *due <= mono);
        self.again.insert(at, (write, mono));
        true
    }

    /// How many refused peers are due for their next initiation at `mono`.
    fn again_ready(&self, mono: Instant) -> usize {
        self.again
            .iter()
            .take_while(|(_, due)| *due <= mono)
            .count()
    }

    /// The client at `endpoint` sent an initiation with `sender_index` (its JIT install is
    /// coming): cookie replies carrying that index are not refusals of ours.
    pub fn client_initiation(&mut self, endpoint: SocketAddr, sender_index: u32, mono: Instant) {
        if self.settings.initiate {
            self.refusals
                .client_initiation(endpoint, sender_index, mono);
        }
    }

    /// The data plane sent a cookie reply with `receiver_index` to `endpoint`: if that
    /// refused a client's response to one of our initiations, initiate to it again (the
    /// client holds a cookie now), ahead of the deferred initiations, once the cookie reply
    /// has had `REFUSAL_RETRY_DELAY` to reach the client first.
    pub fn cookie_reply(&mut self, endpoint: SocketAddr, receiver_index: u32, mono: Instant) {
        if let Some(write) = self.refusals.cookie_reply(endpoint, receiver_index, mono) {
            self.again.push_back((write, mono + REFUSAL_RETRY_DELAY));
        }
    }

    /// The deferred initiations the pacer admits at `mono`, oldest first; peers that
    /// waited longer than `DEFERRED_INITIATION_MAX_AGE` or were removed meanwhile are
    /// dropped (setting a keepalive on a removed peer would re-create it, empty).
    pub fn next_initiations(&mut self, mono: Instant) -> Option<InitiationRound> {
        // Queued in arrival order (install times only grow), so the expired ones are at
        // the front: popping them costs O(expired), not a scan of a storm-sized queue on
        // every round.
        let mut expired = 0;
        while let Some((_, queued)) = self.deferred.front() {
            if mono.saturating_duration_since(*queued) <= DEFERRED_INITIATION_MAX_AGE {
                break;
            }
            self.deferred.pop_front();
            expired += 1;
        }
        let ready = self.again_ready(mono);
        let n = self.initiations.admit(mono, ready + self.deferred.len());
        if n == 0 && expired == 0 {
            return None;
        }
        // Refused ones first: their clients hold a cookie now, so these complete.
        let again_n = n.min(ready);
        let again: Vec<PeerWrite> = self.again.drain(..again_n).map(|(w, _)| w).collect();
        let due: Vec<PeerWrite> = self.deferred.drain(..n - again_n).map(|(w, _)| w).collect();
        let (again, due): (Vec<PeerWrite>, Vec<PeerWrite>) = match self.installed.lock() {
            Ok(set) => (
                again
                    .into_iter()
                    .filter(|w| set.contains(&w.config.public_key))
                    .collect(),
                due.into_iter()
                    .filter(|w| set.contains(&w.config.public_key))
                    .collect(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        expired += n - again.len() - due.len();
        let mut initiate = Vec::with_capacity(2 * again.len() + due.len());
        for w in &again {
            // The data plane sends no second initiation within REKEY_TIMEOUT of its last
            // one, whatever the keepalive says: a fresh peer (same config and endpoint)
            // initiates at once.
            initiate.push(PeerChange::Remove(w.config.public_key));
            initiate.push(PeerChange::Install {
                write: w.clone(),
                keepalive: Some(ROLE_INVERSION_KEEPALIVE),
            });
            self.refusals.initiated(w, true, mono);
        }
        for w in &due {
            initiate.push(PeerChange::Initiate(w.config.public_key));
            self.refusals.initiated(w, false, mono);
        }
        if !again.is_empty() {
            self.metrics
                .role_inversion_retries
                .inc_by(again.len() as u64);
            if let Some(j) = self.journal.as_mut() {
                j.extend(
                    again
                        .iter()
                        .map(|w| sweep::Change::Installed(w.config.public_key)),
                );
            }
        }
        Some(InitiationRound {
            initiate: Plan(initiate),
            clear: Plan::clear_keepalives(again.iter().chain(&due).map(|w| w.config.public_key)),
            expired,
        })
    }

    /// Bulk installs without endpoints (preload, push), in chunks; stops at the first
    /// failed chunk (the chunks before it stay installed).
    pub fn install_many(
        &mut self,
        backend: &dyn Backend,
        writes: &[PeerWrite],
        now: SystemTime,
    ) -> Result<usize, DataPlaneError> {
        let mut done = 0;
        for chunk in writes.chunks(BULK_INSTALL_CHUNK) {
            if let Err(e) = backend.apply(&Plan::install(chunk, None)) {
                self.metrics.install_errors.inc();
                return Err(e);
            }
            self.metrics.installs.inc_by(chunk.len() as u64);
            self.mark_installed(chunk.iter().map(|w| w.config.public_key), now);
            done += chunk.len();
        }
        Ok(done)
    }

    /// A sweep is about to read the data plane: journal writes from now on.
    pub fn begin_sweep(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// The sweep's read is done: reconcile it with the journal, select idle peers and
    /// queue their removal. A failed read only ends the journal.
    pub fn finish_sweep<E>(
        &mut self,
        read: Result<Vec<InstalledPeer>, E>,
        now: SystemTime,
        evict_after: Duration,
    ) -> Result<SweepStarted, E> {
        let journal = self.journal.take().unwrap_or_default();
        let read = read?;
        // The data plane is the truth (someone may have removed peers behind our back):
        // resynchronise the installed set with the read, brought up to date.
        let sweep::Reconciled { present, touched } = sweep::reconcile(&read, &journal);
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
            self.queue_removal(selected, RemovalReason::Idle, None);
        }
        Ok(started)
    }

    /// The next removal call, sized by the pacer; `None` when nothing is queued.
    pub fn next_removal(&mut self) -> Option<RemovalChunk> {
        let job = self.removals.front_mut()?;
        let n = self.pacer.next_chunk().min(job.keys.len());
        let keys: Vec<PublicKey> = job.keys.drain(..n).collect();
        Some(RemovalChunk {
            plan: Plan(keys.iter().map(|k| PeerChange::Remove(*k)).collect()),
            keys,
            reason: job.reason,
        })
    }

    /// Report the call made for `chunk` (which took `took`). A failed chunk is dropped:
    /// the next sweep finds its peers again. Returns the ticket and the count removed when
    /// this finished a job.
    pub fn removal_applied(
        &mut self,
        chunk: RemovalChunk,
        took: Duration,
        result: Result<(), DataPlaneError>,
    ) -> Option<(Option<R>, usize)> {
        let RemovalChunk { keys, reason, .. } = chunk;
        self.pacer.observe(keys.len(), took);
        // A failure is logged by the caller, which saw it.
        if result.is_ok() {
            if let Some(job) = self.removals.front_mut() {
                job.removed += keys.len();
            }
            match reason {
                RemovalReason::Idle => self.metrics.evictions.inc_by(keys.len() as u64),
                RemovalReason::Revoked => self.metrics.revocations.inc_by(keys.len() as u64),
            };
            self.mark_removed(&keys);
        }
        if self.removals.front().is_some_and(|j| j.keys.is_empty()) {
            return self.removals.pop_front().map(|j| (j.ticket, j.removed));
        }
        None
    }

    fn mark_installed(&mut self, keys: impl IntoIterator<Item = PublicKey>, now: SystemTime) {
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
}
