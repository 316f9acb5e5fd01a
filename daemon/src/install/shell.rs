//! The install worker's thread: its loop around the scheduler (receive commands, batch the
//! JIT installs, apply plans to the data plane, reply, measure). The rules are in
//! `scheduler`; this is the IO around them.

use super::*;

/// A JIT install waiting for the next batch.
pub(super) struct PendingInstall {
    write: PeerWrite,
    captured_at: Instant,
    reply: oneshot::Sender<Result<Installed, InstallError>>,
}

/// The worker thread's loop around the scheduler: receive, apply, reply, measure.
pub(super) struct Shell {
    pub(super) scheduler: Scheduler<oneshot::Sender<usize>>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) metrics: Arc<Metrics>,
    /// Who holds which allowed IP. Checked and updated here, in the same step as the
    /// write, so two newcomers racing for one address cannot both be installed.
    pub(super) addresses: AddressIndex,
    /// Cookie replies seen leaving the data plane, for the adaptive pacer.
    pub(super) cookies: Option<Arc<AtomicU64>>,
}

impl Shell {
    pub(super) fn run(&mut self, rx: Receiver<Command>) {
        loop {
            if let Some(cookies) = &self.cookies {
                let rate = self.scheduler.initiation_rate();
                self.scheduler
                    .initiation_feedback(Instant::now(), cookies.load(Ordering::Relaxed));
                let now = self.scheduler.initiation_rate();
                if now != rate {
                    tracing::debug!(from = rate, to = now, "role-inversion rate revised");
                }
            }
            // Idle: block for work. Removals pending: only peek, so queued installs are
            // served between removal chunks. Deferred initiations: wait until one is due.
            let wait = if self.scheduler.has_removals() {
                Some(Duration::ZERO)
            } else {
                self.scheduler.initiation_wait(Instant::now())
            };
            let first = match wait {
                Some(w) => match rx.recv_timeout(w) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                },
            };
            let mut installs = Vec::new();
            let mut next = first;
            while let Some(cmd) = next {
                if !self.take(cmd, &mut installs) {
                    return;
                }
                if installs.len() >= MAX_INSTALL_BATCH {
                    break;
                }
                next = rx.recv_timeout(Duration::ZERO).ok();
            }
            if !installs.is_empty() {
                self.install_batch(installs);
                // A storm's installs arrive for seconds on end; the paced initiations (and
                // the retries of refused responses) must not wait for a gap in them.
                // Measured: with initiations only between batches, none left for a whole
                // second while installs flowed, and retries waited 1.0-1.3 s.
                self.initiate_deferred();
            } else if !self.initiate_deferred() {
                self.remove_one_chunk();
            }
        }
    }

    /// Handles one command; JIT installs are only collected. `false`: stop.
    fn take(&mut self, cmd: Command, installs: &mut Vec<PendingInstall>) -> bool {
        match cmd {
            Command::Stop => return false,
            Command::Install {
                write,
                captured_at,
                reply,
            } => installs.push(PendingInstall {
                write,
                captured_at,
                reply,
            }),
            Command::InstallMany { writes, reply } => {
                let (writes, taken) =
                    crate::addresses::partition(&self.addresses, writes, |w| &w.config);
                let conflicts = taken.into_iter().map(|(w, h)| (w.config, h)).collect();
                let done = self
                    .scheduler
                    .install_many(self.backend.as_ref(), &writes, SystemTime::now())
                    .map_err(InstallError::Write)
                    .map(|installed| ManyInstalled {
                        installed,
                        conflicts,
                    });
                // Also on an error: the chunks before the failed one are installed, and
                // an address wrongly held here is only refused until the next sweep.
                self.index(&writes);
                let _ = reply.send(done);
            }
            Command::ClientInitiation {
                endpoint,
                sender_index,
                at,
            } => self.scheduler.client_initiation(endpoint, sender_index, at),
            Command::CookieReply {
                endpoint,
                receiver_index,
                at,
            } => self.scheduler.cookie_reply(endpoint, receiver_index, at),
            Command::InitiateAgain { write } => {
                let peer = write.config.public_key;
                if self
                    .scheduler
                    .initiate_again(write, SystemTime::now(), Instant::now())
                {
                    tracing::debug!(%peer, "storm guard: initiating again to an installed peer whose initiation it dropped");
                }
            }
            Command::AdoptAddresses { configs, reply } => {
                for config in &configs {
                    self.addresses.insert(config);
                }
                let _ = reply.send(());
            }
            Command::Reinstall { writes, reply } => {
                let (writes, taken) =
                    crate::addresses::partition(&self.addresses, writes, |w| &w.config);
                for (write, holders) in &taken {
                    crate::metrics::count_address_conflict(&self.metrics, "refused");
                    tracing::warn!(peer = %write.config.public_key, holders = ?holders, "not re-installed: allowed IPs overlap an installed peer's");
                }
                // Paced like any storm: peers beyond the initiation rate initiate later.
                let results = self.scheduler.install_batch(
                    self.backend.as_ref(),
                    &writes,
                    SystemTime::now(),
                    Instant::now(),
                );
                let done = results.iter().filter(|r| r.is_ok()).count();
                let initiated = results.iter().filter(|r| matches!(r, Ok(true))).count();
                self.index(
                    writes
                        .iter()
                        .zip(&results)
                        .filter(|(_, r)| r.is_ok())
                        .map(|(w, _)| w),
                );
                self.metrics.installs.inc_by(done as u64);
                self.metrics.role_inversions.inc_by(initiated as u64);
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    self.metrics.install_errors.inc();
                    tracing::warn!(error = %Causes(e), failed = writes.len() - done, "re-installing active peers failed");
                }
                let _ = reply.send(done);
                // The next batch may already be queued and would be taken in this same
                // round: the initiations this batch earned go first, as after a JIT batch.
                self.initiate_deferred();
            }
            Command::Remove {
                keys,
                reason,
                reply,
            } => self.scheduler.queue_removal(keys, reason, Some(reply)),
            Command::SweepBegin { reply } => {
                self.scheduler.begin_sweep();
                let _ = reply.send(());
            }
            Command::Sweep {
                read,
                now,
                evict_after,
                reply,
            } => {
                let _ = reply.send(self.scheduler.finish_sweep(read, now, evict_after));
                self.forget_departed();
            }
        }
        true
    }

    fn install_batch(&mut self, batch: Vec<PendingInstall>) {
        let (batch, taken) =
            crate::addresses::partition(&self.addresses, batch, |p| &p.write.config);
        for (pending, holders) in taken {
            let _ = pending
                .reply
                .send(Err(InstallError::AddressConflict { holders }));
        }
        if batch.is_empty() {
            return;
        }
        let writes: Vec<PeerWrite> = batch.iter().map(|p| p.write.clone()).collect();
        let timer = crate::metrics::StageTimer::start("install");
        let results = self.scheduler.install_batch(
            self.backend.as_ref(),
            &writes,
            SystemTime::now(),
            timer.started(),
        );
        timer.finish(&self.metrics);
        for (pending, result) in batch.into_iter().zip(results) {
            let outcome = match result {
                Ok(initiated) => {
                    self.addresses.insert(&pending.write.config);
                    let latency = pending.captured_at.elapsed();
                    self.metrics.installs.inc();
                    self.metrics
                        .install_latency_seconds
                        .observe(latency.as_secs_f64());
                    if initiated {
                        self.metrics.role_inversions.inc();
                    }
                    Ok(Installed { latency, initiated })
                }
                Err(e) => {
                    self.metrics.install_errors.inc();
                    Err(InstallError::Write(e))
                }
            };
            let _ = pending.reply.send(outcome);
        }
    }

    /// Sends the deferred role-inversion initiations now due; `true` if it wrote.
    fn initiate_deferred(&mut self) -> bool {
        let Some(round) = self.scheduler.next_initiations(Instant::now()) else {
            return false;
        };
        // One clear per peer initiated (a refused one's initiate is a remove and an add).
        let n = round.clear.0.len();
        if round.expired > 0 {
            self.metrics
                .deferred_initiations_dropped
                .inc_by(round.expired as u64);
        }
        if n == 0 {
            return false;
        }
        match self.backend.apply(&round.initiate) {
            Ok(()) => {
                self.metrics.role_inversions.inc_by(n as u64);
                if let Err(e) = self.backend.apply(&round.clear) {
                    tracing::warn!(error = %Causes(&e), "clearing the role-inversion keepalive failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %Causes(&e), peers = n, "deferred role inversion failed; the clients will retry")
            }
        }
        true
    }

    fn remove_one_chunk(&mut self) {
        let Some(chunk) = self.scheduler.next_removal() else {
            return;
        };
        let started = Instant::now();
        let applied = if chunk.keys.is_empty() {
            Ok(())
        } else {
            self.backend.apply(&chunk.plan)
        };
        let took = started.elapsed();
        match &applied {
            Ok(()) => {
                let (peers, reason) = (chunk.keys.len(), chunk.reason);
                // One info line per chunk: a line per peer on this thread cost 0.3-0.7 ms
                // each (measured in the VM) and held installs back longer than the removal.
                tracing::info!(peers, reason = ?reason, "removed peers");
                for k in &chunk.keys {
                    tracing::debug!(peer = %k, reason = ?reason, "removed peer");
                }
            }
            Err(e) => tracing::warn!(
                error = %Causes(e),
                peers = chunk.keys.len(),
                "removing peers failed; the next sweep will retry"
            ),
        }
        if applied.is_ok() {
            for k in &chunk.keys {
                self.addresses.remove(k);
            }
        }
        if let Some((Some(reply), removed)) = self.scheduler.removal_applied(chunk, took, applied) {
            let _ = reply.send(removed);
        }
    }
}
