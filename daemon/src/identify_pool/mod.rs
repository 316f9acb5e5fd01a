//! Identification (two X25519 operations per initiation, one for a known key) off the
//! capture task: captured initiations go through a bounded queue to a few worker
//! threads, so a storm can never make the capture socket's reader fall behind, and work
//! beyond what the workers can do is dropped and counted (the client retries) instead of
//! piling up as latency. The workers run at a lower CPU priority than the data plane
//! they feed: the data plane's handshake queue draining is what decides whether clients
//! connect before their retry.
//!
//! Two lanes, each bounded: initiations from a source address that recently brought a
//! key the daemon resolved (`KnownSources`) wait in the `Known` lane, which workers
//! always empty first; everything else waits in `Unknown`. Before identification the
//! source is the only thing knowable about a packet (the key needs the first DH), and a
//! returning client usually comes from the endpoint it used last; a fresh-key flood
//! fills only the `Unknown` lane. Spoofing a known source only buys a place in the
//! `Known` lane: identification, the replay guard and the lookup still apply.
//!
//! The `Unknown` lane is fair across source networks (`fair`: a sub-queue per /24 or
//! /64, served round robin, each bounded, the longest giving way when the lane is full),
//! because a legitimate client's first initiation also waits there: a flood from a few
//! networks must not fill the lane and crowd out a new network's first contact.

mod fair;

pub use fair::{FairQueue, FairSettings, Next, Pushed};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hashlink::LruCache;

use crate::admission::SourceNet;
use crate::identify::Identified;

/// One captured datagram's payload waiting to be identified.
#[derive(Debug)]
pub struct Captured {
    pub payload: Vec<u8>,
    pub src: SocketAddr,
    pub captured_at: Instant,
}

/// Which queue a captured initiation waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// From the source of a key that resolved recently: identified first.
    Known,
    /// Everything else.
    Unknown,
}

/// Why a captured initiation was not identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Every worker busy and the initiation's lane full (in the unknown lane: or its
    /// source network already has its share waiting).
    QueueFull,
    /// Queued in the unknown lane, then dropped to make room for a network with fewer
    /// initiations waiting (the oldest of the longest queue goes).
    Displaced,
    /// Waited longer than `MAX_WAIT` for a worker: its client has retried by then.
    Expired,
    /// The workers have stopped (shutdown).
    Stopped,
}

impl DropReason {
    /// The `reason` label of `jitwgd_capture_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "identify_queue_full",
            DropReason::Displaced => "identify_displaced",
            DropReason::Expired => "identify_expired",
            DropReason::Stopped => "identify_stopped",
        }
    }
}

/// How long an initiation may wait in the unknown lane: WireGuard's REKEY_TIMEOUT, after
/// which its client has sent a newer initiation of its own.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// What `submit` did with an initiation it queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued; nothing else moved.
    Alone,
    /// Queued, and another initiation was dropped to make room (`DropReason::Displaced`).
    Displacing,
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
    /// Captured initiations that may wait for a worker, per lane; more are dropped.
    pub queue: usize,
    /// Of those, at most this many from one source network in the unknown lane.
    pub per_source: usize,
    /// Nice value added to the workers' threads (0 = same priority as the daemon).
    pub nice: i32,
}

/// Source addresses of keys that resolved recently (bounded, least recently seen out).
pub struct KnownSources {
    sources: Mutex<LruCache<SocketAddr, ()>>,
}

impl KnownSources {
    pub fn new(capacity: usize) -> Self {
        KnownSources {
            sources: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// A key that came from `src` resolved.
    pub fn resolved(&self, src: SocketAddr) {
        lock(&self.sources).insert(src, ());
    }

    /// The lane an initiation from `src` waits in (a known source counts as seen again).
    pub fn lane(&self, src: &SocketAddr) -> Lane {
        if lock(&self.sources).get(src).is_some() {
            Lane::Known
        } else {
            Lane::Unknown
        }
    }
}

/// Each lock here guards plain data left consistent between statements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The two lanes and whether the pool is closing.
struct Lanes {
    known: VecDeque<Captured>,
    unknown: FairQueue<SourceNet, Captured>,
    closed: bool,
}

struct Queue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    capacity: usize,
}

/// The workers and their queue. Dropping it stops them once the queue is drained.
pub struct IdentifyPool {
    queue: Arc<Queue>,
    threads: Vec<JoinHandle<()>>,
}

impl IdentifyPool {
    /// Start `settings.workers` threads, each running `work` on identified-or-not
    /// results: `identify` turns a payload into an initiation, `deliver` takes the
    /// successes and failures, `expired` each initiation that waited too long (both must
    /// not block for long: they run on the worker).
    pub fn start<I, D, E>(
        settings: PoolSettings,
        identify: I,
        deliver: D,
        expired: E,
    ) -> Result<Self, PoolStartError>
    where
        I: Fn(&[u8]) -> Result<Identified, crate::identify::IdentifyError> + Send + Sync + 'static,
        D: Fn(Captured, Result<Identified, crate::identify::IdentifyError>) + Send + Sync + 'static,
        E: Fn(Captured) + Send + Sync + 'static,
    {
        let queue = Arc::new(Queue {
            lanes: Mutex::new(Lanes {
                known: VecDeque::new(),
                unknown: FairQueue::new(FairSettings {
                    total: settings.queue.max(1),
                    per_source: settings.per_source.max(1),
                    max_wait: MAX_WAIT,
                }),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: settings.queue.max(1),
        });
        let handlers = Arc::new(Handlers {
            identify: Box::new(identify),
            deliver: Box::new(deliver),
            expired: Box::new(expired),
        });
        let mut pool = IdentifyPool {
            queue: queue.clone(),
            threads: Vec::new(),
        };
        for index in 0..settings.workers.max(1) {
            let (queue, handlers) = (queue.clone(), handlers.clone());
            let nice = settings.nice;
            let thread = std::thread::Builder::new()
                .name(format!("jitwgd-ident{index}"))
                .spawn(move || {
                    lower_priority(nice);
                    work(&queue, &handlers);
                })
                // Dropping `pool` stops the threads already started.
                .map_err(|source| PoolStartError { index, source })?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Queue one captured payload in `lane`; never blocks. In the unknown lane it is
    /// queued under its source network (`SourceNet`), with the time it was captured.
    pub fn submit(&self, captured: Captured, lane: Lane) -> Result<Queued, DropReason> {
        let mut lanes = lock(&self.queue.lanes);
        if lanes.closed {
            return Err(DropReason::Stopped);
        }
        let queued = match lane {
            Lane::Known => {
                if lanes.known.len() >= self.queue.capacity {
                    return Err(DropReason::QueueFull);
                }
                lanes.known.push_back(captured);
                Queued::Alone
            }
            Lane::Unknown => {
                let (net, at) = (SourceNet::of(captured.src.ip()), captured.captured_at);
                match lanes.unknown.push(net, captured, at) {
                    Pushed::Queued => Queued::Alone,
                    Pushed::Displaced(_) => Queued::Displacing,
                    Pushed::Refused(_) => return Err(DropReason::QueueFull),
                }
            }
        };
        drop(lanes);
        self.queue.ready.notify_one();
        Ok(queued)
    }
}

impl Drop for IdentifyPool {
    fn drop(&mut self) {
        lock(&self.queue.lanes).closed = true;
        self.queue.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

type Identify = dyn Fn(&[u8]) -> Result<Identified, crate::identify::IdentifyError> + Send + Sync;
type Deliver = dyn Fn(Captured, Result<Identified, crate::identify::IdentifyError>) + Send + Sync;

/// What a worker does with what it takes from the lanes.
struct Handlers {
    identify: Box<Identify>,
    deliver: Box<Deliver>,
    expired: Box<dyn Fn(Captured) + Send + Sync>,
}

fn work(queue: &Queue, handlers: &Handlers) {
    loop {
        // The lock is held only while taking the next job, not while identifying.
        let next = {
            let mut lanes = lock(&queue.lanes);
            loop {
                if let Some(c) = lanes.known.pop_front() {
                    break Some(Next::Ready(c));
                }
                if let Some(next) = lanes.unknown.pop(Instant::now()) {
                    break Some(next);
                }
                if lanes.closed {
                    break None;
                }
                lanes = queue
                    .ready
                    .wait(lanes)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        match next {
            None => return,
            Some(Next::Expired(captured)) => (handlers.expired)(captured),
            Some(Next::Ready(captured)) => {
                let result = (handlers.identify)(&captured.payload);
                (handlers.deliver)(captured, result);
            }
        }
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
    use crate::identify::{IdentifyError, Initiation};
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

    fn fake_identify(p: &[u8]) -> Result<Identified, IdentifyError> {
        match p.first() {
            Some(&b) if b != 0 => Ok(Initiation {
                sender_index: u32::from(b),
                initiator: PublicKey([b; 32]),
                timestamp: Timestamp([0; 12]),
            }
            .into()),
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
            per_source: 64,
            nice: 0,
        };
        let pool = IdentifyPool::start(
            settings,
            fake_identify,
            move |c, r| {
                let _ = tx
                    .lock()
                    .unwrap()
                    .send((c.payload[0], r.map(|i| i.initiation.sender_index)));
            },
            |_| {},
        )
        .unwrap();
        for b in 0..50u8 {
            let lane = if b % 2 == 0 {
                Lane::Known
            } else {
                Lane::Unknown
            };
            assert_eq!(pool.submit(captured(b), lane), Ok(Queued::Alone));
        }
        drop(pool); // drains the queue, then joins
        let mut got: Vec<(u8, Result<u32, IdentifyError>)> = rx.try_iter().collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(got.len(), 50);
        assert_eq!(got[0], (0, Err(IdentifyError::Mac1)));
        assert_eq!(got[7], (7, Ok(7)));
    }

    /// A one-worker pool whose worker holds the payloads `held` picks until the rig finishes,
    /// and which records the order payloads are delivered in: lets a test queue work up behind
    /// a busy worker.
    struct HeldPool {
        pool: IdentifyPool,
        release: std::sync::mpsc::Sender<()>,
        order: std::sync::mpsc::Receiver<u8>,
    }

    impl HeldPool {
        fn start(queue: usize, nice: i32, held: fn(&[u8]) -> bool) -> Self {
            let (release, release_rx) = channel::<()>();
            let release_rx = Mutex::new(release_rx);
            let (order_tx, order) = channel();
            let order_tx = Mutex::new(order_tx);
            let settings = PoolSettings {
                workers: 1,
                queue,
                per_source: queue,
                nice,
            };
            let pool = IdentifyPool::start(
                settings,
                move |p| {
                    if held(p) {
                        let _ = release_rx
                            .lock()
                            .unwrap()
                            .recv_timeout(Duration::from_secs(10));
                    }
                    fake_identify(p)
                },
                move |c, _| {
                    let _ = order_tx.lock().unwrap().send(c.payload[0]);
                },
                |_| {},
            )
            .unwrap();
            Self {
                pool,
                release,
                order,
            }
        }

        /// Releases every held payload, drains and joins the pool; the delivery order.
        fn finish(self) -> Vec<u8> {
            drop(self.release);
            drop(self.pool);
            self.order.try_iter().collect()
        }
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        // The one worker holds every job until the rig finishes.
        let rig = HeldPool::start(2, 5, |_| true);
        let mut dropped = 0;
        for b in 1..=20u8 {
            if rig.pool.submit(captured(b), Lane::Unknown) == Err(DropReason::QueueFull) {
                dropped += 1;
            }
        }
        // One in the worker (maybe), two queued: at least 17 dropped.
        assert!(dropped >= 17, "{dropped}");
        // The known lane has room of its own.
        assert_eq!(
            rig.pool.submit(captured(99), Lane::Known),
            Ok(Queued::Alone)
        );
        rig.finish();
    }

    /// Holds the job whose payload is 1.
    fn first_job(p: &[u8]) -> bool {
        p.first() == Some(&1)
    }

    #[test]
    fn known_lane_is_served_first() {
        let rig = HeldPool::start(16, 0, first_job);
        // The worker blocks on 1; meanwhile unknown 2..=4 and known 10..=12 queue up.
        rig.pool.submit(captured(1), Lane::Unknown).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for b in 2..=4 {
            rig.pool.submit(captured(b), Lane::Unknown).unwrap();
        }
        for b in 10..=12 {
            rig.pool.submit(captured(b), Lane::Known).unwrap();
        }
        assert_eq!(rig.finish(), vec![1, 10, 11, 12, 2, 3, 4]);
    }

    fn captured_from(byte: u8, src: &str) -> Captured {
        Captured {
            payload: vec![byte],
            src: src.parse().unwrap(),
            captured_at: Instant::now(),
        }
    }

    #[test]
    fn a_flooding_network_cannot_crowd_out_a_new_networks_first_contact() {
        let rig = HeldPool::start(8, 0, first_job);
        let pool = &rig.pool;
        pool.submit(captured_from(1, "198.18.200.1:1"), Lane::Unknown)
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // The flood's /24 fills the lane...
        for b in 2..=9 {
            pool.submit(captured_from(b, "198.18.200.9:1"), Lane::Unknown)
                .unwrap();
        }
        assert_eq!(
            pool.submit(captured_from(10, "198.18.200.7:1"), Lane::Unknown),
            Err(DropReason::QueueFull)
        );
        // ...yet a first contact from another /24 gets in, and is served next.
        assert_eq!(
            pool.submit(captured_from(50, "198.18.7.2:1"), Lane::Unknown),
            Ok(Queued::Displacing)
        );
        assert_eq!(rig.finish(), vec![1, 3, 50, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn known_sources_are_bounded() {
        let known = KnownSources::new(2);
        let a: SocketAddr = "198.18.0.2:1".parse().unwrap();
        let b: SocketAddr = "198.18.0.3:1".parse().unwrap();
        let c: SocketAddr = "198.18.0.4:1".parse().unwrap();
        assert_eq!(known.lane(&a), Lane::Unknown);
        known.resolved(a);
        known.resolved(b);
        assert_eq!(known.lane(&a), Lane::Known);
        known.resolved(c);
        assert_eq!(known.lane(&b), Lane::Unknown, "least recently used out");
        assert_eq!(known.lane(&a), Lane::Known);
    }
}
