//! The delay line that makes the link model's delays real: one thread per fleet holding every
//! packet in flight, woken by a high-resolution timer, so a configured 1 ms trip takes 1 ms.
//! tokio's timer wheel has 1 ms granularity and rounds up, which turned each 1 ms trip into
//! about 2 ms; LAN-like links are exactly where that error swamped the figure being measured.
//!
//! [`DelayQueue`] is the pure part (time passed in); [`DelayLine`] is its thread: it sleeps on
//! a condition variable until [`WAKE_EARLY`] before the next packet is due (the
//! thread's timer slack cut to 1 ns), then delivers every packet due within that margin in one
//! go. On a busy machine the timer is not the problem, the scheduler is: a woken thread can
//! wait a whole 4 ms tick for a core. So the thread asks for SCHED_FIFO (the driver runs as
//! root), which preempts ordinary threads on wake-up. It never polls: an earlier version
//! yielded in a loop for the last 50 µs before each packet, and in a storm, with a packet due
//! every few µs, that loop never ended. A SCHED_FIFO thread's `sched_yield` yields only to
//! other real-time threads, so it held the driver's CPU (60 % of the driver's CPU in a
//! 5,000-client storm) and starved the client tasks it was delaying packets for.
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
#[cfg(test)]
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How long before a packet is due the thread wakes, and how early a packet may leave: about
/// the kernel's wake-up latency of a SCHED_FIFO thread (10–40 µs measured here), so packets
/// leave on time on average, and packets due within this margin of each other share one
/// wake-up (in a storm, thousands a second do).
const WAKE_EARLY: Duration = Duration::from_micros(25);

/// Items ordered by when they are due, then by the order they were pushed (so packets with
/// equal delay keep their send order). Pure: the caller says what time it is.
#[derive(Debug)]
pub struct DelayQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    pushed: u64,
}

#[derive(Debug)]
struct Entry<T> {
    due: Instant,
    order: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            pushed: 0,
        }
    }
}

impl<T> DelayQueue<T> {
    pub fn push(&mut self, due: Instant, item: T) {
        self.pushed += 1;
        self.heap.push(Reverse(Entry {
            due,
            order: self.pushed,
            item,
        }));
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.due)
    }

    /// Takes the earliest item if it is due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.next_due()? <= now {
            self.heap.pop().map(|Reverse(e)| e.item)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// A socket the line can send from: the client task's own (tokio) socket, shared, not a
/// duplicate descriptor (a duplicate per client made 10,000 clients exceed a 20,000 hard
/// limit on open files). Sends go straight to the descriptor, beside tokio's readiness
/// tracking, which a plain non-blocking `sendto` does not disturb.
pub trait SendSocket: AsFd + Send + Sync + std::fmt::Debug {}
impl<T: AsFd + Send + Sync + std::fmt::Debug> SendSocket for T {}

/// Where a delayed packet goes when it is due.
#[derive(Debug)]
pub enum Delivery {
    /// Client to gateway: sent from the client's own socket, so the source address is the
    /// client's.
    Up {
        socket: Arc<dyn SendSocket>,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Gateway to client: handed back to the client's task, which feeds its session.
    Down {
        to: UnboundedSender<Vec<u8>>,
        bytes: Vec<u8>,
    },
}

impl Delivery {
    fn deliver(self) {
        match self {
            Delivery::Up { socket, to, bytes } => {
                // Like a full NIC queue: the protocol's retries cover a lost send.
                if let Err(e) = socket2::SockRef::from(&socket.as_fd()).send_to(&bytes, &to.into())
                {
                    tracing::debug!(error = %e, %to, "delayed send failed");
                }
            }
            // The client's connection ended while its packet was in flight: the packet dies.
            Delivery::Down { to, bytes } => drop(to.send(bytes)),
        }
    }
}

/// One connection's end of the delay line.
#[derive(Debug)]
pub struct DelayPort {
    pub line: DelayHandle,
    /// The connection's socket, shared with its task, so delayed packets leave from the
    /// client's own address without going back through the task.
    pub up: Arc<dyn SendSocket>,
    /// Delayed gateway packets come back to the task here.
    pub down: UnboundedSender<Vec<u8>>,
}

impl DelayPort {
    /// A port for the connection on `socket`, and where its delayed gateway packets arrive.
    pub fn open(
        line: &DelayHandle,
        socket: Arc<tokio::net::UdpSocket>,
    ) -> (Self, UnboundedReceiver<Vec<u8>>) {
        let (down, rx) = tokio::sync::mpsc::unbounded_channel();
        let port = DelayPort {
            line: line.clone(),
            up: socket,
            down,
        };
        (port, rx)
    }
}

/// The next delayed gateway packet; pends forever without a receiver (transparent link).
pub async fn delayed_down(rx: &mut Option<UnboundedReceiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Why the delay line could not start.
#[derive(Debug, thiserror::Error)]
pub enum DelayLineError {
    #[error("spawning the link delay thread")]
    Spawn(#[source] std::io::Error),
}

/// The fleet's delay thread. It stops once every [`DelayHandle`] is dropped; packets still in
/// flight then are dropped (their connections are over).
#[derive(Debug)]
pub struct DelayLine {
    handle: DelayHandle,
    thread: JoinHandle<()>,
}

/// Packets handed to the line and not yet in its heap, and whether the thread sleeps.
///
/// A mutex and a condition variable rather than a lock-free channel: std's channel makes a
/// receiver that finds a slot half-written spin with `sched_yield` until the sender finishes,
/// and a SCHED_FIFO receiver yields only to real-time threads, so on a one-CPU cpuset it
/// spun until the kernel's real-time throttling let the preempted sender run (this was most
/// of the driver's CPU in a storm). A contended futex mutex sleeps instead, which lets the
/// holder run.
#[derive(Debug, Default)]
struct Inbox {
    items: Vec<(Instant, Delivery)>,
    /// Live handles; the thread ends when the last one is dropped.
    handles: usize,
    /// When the sleeping thread will wake by itself; `None` while it is awake.
    sleeping_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // A panic while holding the lock leaves a plain Vec behind: still usable.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Schedules packets on a [`DelayLine`]; cheap to clone, one per client task.
#[derive(Debug)]
pub struct DelayHandle {
    shared: Arc<Shared>,
}

impl Clone for DelayHandle {
    fn clone(&self) -> Self {
        self.shared.inbox().handles += 1;
        DelayHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for DelayHandle {
    fn drop(&mut self) {
        let mut inbox = self.shared.inbox();
        inbox.handles -= 1;
        if inbox.handles == 0 {
            self.shared.wake.notify_one();
        }
    }
}

impl DelayHandle {
    /// Delivers `delivery` at `due` (at once if `due` has passed).
    pub fn schedule(&self, due: Instant, delivery: Delivery) {
        let mut inbox = self.shared.inbox();
        inbox.items.push((due, delivery));
        // Wake the thread only if it would otherwise sleep past this packet: in a storm most
        // packets are due after one already waited for, and cost no wake-up.
        if inbox
            .sleeping_until
            .is_some_and(|until| due.checked_sub(WAKE_EARLY).unwrap_or(due) < until)
        {
            inbox.sleeping_until = None;
            self.shared.wake.notify_one();
        }
    }
}

impl DelayLine {
    pub fn start() -> Result<Self, DelayLineError> {
        let shared = Arc::new(Shared::default());
        shared.inbox().handles = 1;
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("jitwg-link-delay".into())
            .spawn(move || run(&for_thread))
            .map_err(DelayLineError::Spawn)?;
        Ok(Self {
            handle: DelayHandle { shared },
            thread,
        })
    }

    pub fn handle(&self) -> DelayHandle {
        self.handle.clone()
    }

    /// Drops this line's own handle and waits for the thread, which ends when the other
    /// handles are gone too.
    pub fn finish(self) {
        drop(self.handle);
        if self.thread.join().is_err() {
            tracing::warn!("link delay thread panicked");
        }
    }
}

/// How long an idle line sleeps before it looks again (a new packet wakes it sooner).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

fn run(shared: &Shared) {
    cut_timer_slack();
    raise_to_realtime();
    let mut queue: DelayQueue<Delivery> = DelayQueue::default();
    let mut arrived = Vec::new();
    loop {
        let horizon = Instant::now() + WAKE_EARLY;
        while let Some(delivery) = queue.pop_due(horizon) {
            delivery.deliver();
        }
        let mut inbox = shared.inbox();
        // Take what arrived in one swap and sort it into the heap outside the lock.
        std::mem::swap(&mut inbox.items, &mut arrived);
        if inbox.handles == 0 {
            return;
        }
        if arrived.is_empty() {
            let now = Instant::now();
            let wait = match queue.next_due() {
                Some(due) => due
                    .saturating_duration_since(now)
                    .saturating_sub(WAKE_EARLY),
                None => IDLE_WAIT,
            };
            if !wait.is_zero() {
                inbox.sleeping_until = Some(now + wait);
                let (mut inbox, _) = shared
                    .wake
                    .wait_timeout(inbox, wait)
                    .unwrap_or_else(PoisonError::into_inner);
                inbox.sleeping_until = None;
            }
            continue;
        }
        drop(inbox);
        for (due, delivery) in arrived.drain(..) {
            queue.push(due, delivery);
        }
    }
}

/// Linux rounds every timed wait up by the thread's timer slack (50 µs by default); the
/// delay thread wants its waits exact.
fn cut_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and only changes this thread's attribute.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "PR_SET_TIMERSLACK");
    }
}

/// Lowest real-time priority: above every ordinary thread, below the kernel's own.
fn raise_to_realtime() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; the struct is read, not kept.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "SCHED_FIFO refused: link delays may overshoot on a busy machine"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_orders_by_due_then_push_order() {
        let now = Instant::now();
        let mut queue = DelayQueue::default();
        for (due_ms, name) in [(30, "c"), (10, "a"), (10, "b")] {
            queue.push(now + Duration::from_millis(due_ms), name);
        }
        assert_eq!(queue.pop_due(now), None);
        assert_eq!(queue.next_due(), Some(now + Duration::from_millis(10)));
        let later = now + Duration::from_millis(10);
        assert_eq!(queue.pop_due(later), Some("a"));
        assert_eq!(queue.pop_due(later), Some("b"));
        assert_eq!(queue.pop_due(later), None);
        assert_eq!(queue.pop_due(now + Duration::from_millis(31)), Some("c"));
        assert!(queue.is_empty());
    }

    fn median(mut samples: Vec<Duration>) -> Duration {
        samples.sort();
        samples[samples.len() / 2]
    }

    /// The model's promise: the one-way delay a packet sees is the configured delay within
    /// 10 % or 0.1 ms, whichever is larger. Timestamps are taken at the sending end (when the
    /// packet enters the line) and the receiving end (when a real UDP socket on loopback
    /// returns it). The median of 25 packets is asserted, so a scheduler hiccup on a busy
    /// machine moves a few samples, not the verdict. The receiving thread takes the same
    /// real-time priority as the line (when allowed), or it would measure its own wake-up.
    fn measure_up(delay: Duration) -> Duration {
        // The receiving end must not add its own wake-up latency to what it measures.
        raise_to_realtime();
        let line = DelayLine::start().unwrap();
        let handle = line.handle();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let sender: Arc<dyn SendSocket> = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let mut samples = Vec::new();
        let mut buf = [0u8; 16];
        for i in 0u8..25 {
            let sent = Instant::now();
            let bytes = vec![i];
            let socket = Arc::clone(&sender);
            handle.schedule(sent + delay, Delivery::Up { socket, to, bytes });
            let (len, _) = receiver.recv_from(&mut buf).unwrap();
            samples.push(sent.elapsed());
            assert_eq!(&buf[..len], &[i]);
        }
        drop(handle);
        line.finish();
        median(samples)
    }

    fn assert_within_tolerance(configured: Duration, measured: Duration) {
        let tolerance = (configured / 10).max(Duration::from_micros(100));
        let error = measured.abs_diff(configured);
        assert!(
            error <= tolerance,
            "configured {configured:?}, median measured {measured:?} (tolerance {tolerance:?})"
        );
    }

    #[test]
    fn one_way_delay_over_loopback_is_the_configured_one() {
        for ms in [0.5, 1.0, 5.0] {
            let configured = Duration::from_secs_f64(ms / 1000.0);
            assert_within_tolerance(configured, measure_up(configured));
        }
    }

    #[test]
    fn downward_packets_reach_the_client_task_on_time() {
        let line = DelayLine::start().unwrap();
        let handle = line.handle();
        let (to, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let configured = Duration::from_millis(1);
        raise_to_realtime();
        let mut samples = Vec::new();
        for i in 0u8..25 {
            let sent = Instant::now();
            let to = to.clone();
            handle.schedule(sent + configured, Delivery::Down { to, bytes: vec![i] });
            assert_eq!(rx.blocking_recv(), Some(vec![i]));
            samples.push(sent.elapsed());
        }
        drop(handle);
        line.finish();
        assert_within_tolerance(configured, median(samples));
    }

    #[test]
    fn line_stops_when_every_handle_is_gone() {
        let line = DelayLine::start().unwrap();
        let (to, _rx) = tokio::sync::mpsc::unbounded_channel();
        line.handle().schedule(
            Instant::now() + Duration::from_secs(3600),
            Delivery::Down { to, bytes: vec![] },
        );
        // Would hang if the thread waited for the hour-away packet.
        line.finish();
    }
}
