//! Identification (two X25519 operations per initiation) off the capture task: captured
//! initiations go through a bounded queue to a few worker threads, so a storm can never
//! make the capture socket's reader fall behind, and work beyond what the workers can do
//! is dropped and counted (the client retries) instead of piling up as latency. The
//! workers run at a lower CPU priority than the data plane they feed: the data plane's
//! handshake queue draining is what decides whether clients connect before their retry.

use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::identify::Initiation;

/// One captured datagram's payload waiting to be identified.
#[derive(Debug)]
pub struct Captured {
    pub payload: Vec<u8>,
    pub src: SocketAddr,
    pub captured_at: Instant,
}

/// Why a captured initiation was not identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Every worker busy and the queue full.
    QueueFull,
    /// The workers have stopped (shutdown).
    Stopped,
}

impl DropReason {
    /// The `reason` label of `jitwgd_capture_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "identify_queue_full",
            DropReason::Stopped => "identify_stopped",
        }
    }
}

/// What failed starting the pool.
#[derive(Debug, thiserror::Error)]
#[error("cannot start identify worker thread {index}")]
pub struct PoolStartError {
    index: usize,
    #[source]
    source: std::io::Error,
}

/// Settings of the pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Captured initiations that may wait for a worker; more are dropped.
    pub queue: usize,
    /// Nice value added to the workers' threads (0 = same priority as the daemon).
    pub nice: i32,
}

/// The workers and the sending end of their queue. Dropping it stops them once the
/// queue is drained.
pub struct IdentifyPool {
    tx: Option<SyncSender<Captured>>,
    threads: Vec<JoinHandle<()>>,
}

impl IdentifyPool {
    /// Start `settings.workers` threads, each running `work` on identified-or-not
    /// results: `identify` turns a payload into an initiation, `deliver` takes the
    /// successes and failures (it must not block for long: it runs on the worker).
    pub fn start<I, D>(
        settings: PoolSettings,
        identify: I,
        deliver: D,
    ) -> Result<Self, PoolStartError>
    where
        I: Fn(&[u8]) -> Result<Initiation, crate::identify::IdentifyError> + Send + Sync + 'static,
        D: Fn(Captured, Result<Initiation, crate::identify::IdentifyError>) + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(settings.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let identify = Arc::new(identify);
        let deliver = Arc::new(deliver);
        let mut threads = Vec::new();
        for index in 0..settings.workers.max(1) {
            let (rx, identify, deliver) = (rx.clone(), identify.clone(), deliver.clone());
            let nice = settings.nice;
            let thread = std::thread::Builder::new()
                .name(format!("jitwgd-ident{index}"))
                .spawn(move || {
                    lower_priority(nice);
                    work(&rx, identify.as_ref(), deliver.as_ref());
                })
                .map_err(|source| PoolStartError { index, source })?;
            threads.push(thread);
        }
        Ok(IdentifyPool {
            tx: Some(tx),
            threads,
        })
    }

    /// Queue one captured payload; never blocks.
    pub fn submit(&self, captured: Captured) -> Result<(), DropReason> {
        let Some(tx) = &self.tx else {
            return Err(DropReason::Stopped);
        };
        tx.try_send(captured).map_err(|e| match e {
            TrySendError::Full(_) => DropReason::QueueFull,
            TrySendError::Disconnected(_) => DropReason::Stopped,
        })
    }
}

impl Drop for IdentifyPool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Identify = dyn Fn(&[u8]) -> Result<Initiation, crate::identify::IdentifyError> + Send + Sync;
type Deliver = dyn Fn(Captured, Result<Initiation, crate::identify::IdentifyError>) + Send + Sync;

fn work(rx: &Mutex<Receiver<Captured>>, identify: &Identify, deliver: &Deliver) {
    loop {
        // The lock is held only while waiting for the next job, not while identifying.
        let next = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(captured) = next else { return };
        let result = identify(&captured.payload);
        deliver(captured, result);
    }
}

/// Raise this thread's nice value by `nice` (Linux: per thread). Failure only costs
/// priority, so it is logged, not fatal.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only
    // changes this thread's scheduling priority.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), nice, "cannot lower the identify worker's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::IdentifyError;
    use crate::peer::{PublicKey, Timestamp};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    fn captured(byte: u8) -> Captured {
        Captured {
            payload: vec![byte],
            src: "198.18.0.2:51820".parse().unwrap(),
            captured_at: Instant::now(),
        }
    }

    fn fake_identify(p: &[u8]) -> Result<Initiation, IdentifyError> {
        match p.first() {
            Some(&b) if b != 0 => Ok(Initiation {
                sender_index: u32::from(b),
                initiator: PublicKey([b; 32]),
                timestamp: Timestamp([0; 12]),
            }),
            _ => Err(IdentifyError::Mac1),
        }
    }

    #[test]
    fn every_submitted_payload_is_delivered_with_its_result() {
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let settings = PoolSettings {
            workers: 3,
            queue: 64,
            nice: 0,
        };
        let pool = IdentifyPool::start(settings, fake_identify, move |c, r| {
            let _ = tx
                .lock()
                .unwrap()
                .send((c.payload[0], r.map(|i| i.sender_index)));
        })
        .unwrap();
        for b in 0..50u8 {
            pool.submit(captured(b)).unwrap();
        }
        drop(pool); // drains the queue, then joins
        let mut got: Vec<(u8, Result<u32, IdentifyError>)> = rx.try_iter().collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(got.len(), 50);
        assert_eq!(got[0], (0, Err(IdentifyError::Mac1)));
        assert_eq!(got[7], (7, Ok(7)));
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let (release_tx, release_rx) = channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let settings = PoolSettings {
            workers: 1,
            queue: 2,
            nice: 5,
        };
        // The one worker blocks on its first job until released.
        let pool = IdentifyPool::start(
            settings,
            move |p| {
                let _ = release_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
                fake_identify(p)
            },
            |_, _| {},
        )
        .unwrap();
        let mut dropped = 0;
        for b in 1..=20u8 {
            if pool.submit(captured(b)) == Err(DropReason::QueueFull) {
                dropped += 1;
            }
        }
        // One in the worker (maybe), two queued: at least 17 dropped.
        assert!(dropped >= 17, "{dropped}");
        for _ in 0..3 {
            let _ = release_tx.send(());
        }
        drop(pool);
    }
}
