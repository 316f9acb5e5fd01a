//! The fleet: one tokio task per simulated client, each with its own UDP socket bound to the
//! client's own source address, a [`Session`] per connection, the client's link model applied
//! to every packet (delayed packets wait on the fleet's one [`DelayLine`] thread, not on tokio
//! timers, whose 1 ms granularity doubled a 1 ms link), progress counters for the driver's
//! live display, and the results.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jitwg_reports::{ClientResult, Connection};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::delay::{delayed_down, DelayHandle, DelayLine, DelayLineError, DelayPort, Delivery};
use super::eventlog::{EventLog, EventLogError, EventRecord, EventSink};
use super::link::{is_transparent, Direction, LinkModel};
use super::prepare::{prepare, Prepared, PREPARE_AHEAD};
use super::rxlag::{RxLagRecorder, RxLagTotals};
use super::session::{Action, Phase, SessionEvent, MAX_SENDER_INDEX};
use super::socket::{control_buffer, raise_open_files_limit, receive_lag, recv_stamped};
use crate::scenario::file::BehaviourFile;
use crate::scenario::resolve::{ClientPlan, Link};

/// How often boringtun's timers run (the brief asks for at least every 250 ms).
const TICK: Duration = Duration::from_millis(250);
/// The shortest echo interval a client keeps: the echo has its own timer (not the tick),
/// so a scenario's `traffic_every` is kept as written down to this. It was clamped to the
/// 250 ms tick, which turned reboot-active's 200 ms echo into 250 ms and added up to 50 ms
/// of the driver's own to every client's measured recovery.
const MIN_TRAFFIC_EVERY: Duration = Duration::from_millis(10);
/// The interval a staying client echoes at: the scenario's, except that a tiny one (`resolve`
/// refuses zero) is raised to [`MIN_TRAFFIC_EVERY`] so it cannot spin.
fn echo_interval(traffic_every: Duration) -> Duration {
    traffic_every.max(MIN_TRAFFIC_EVERY)
}

/// How long to wait for an echo reply before sending the echo again.
const ECHO_RETRY: Duration = Duration::from_secs(1);
/// Receive buffer: larger than any WireGuard message the gateway sends here.
const RECV_BUF: usize = 2048;

/// Where the fleet connects and how patient it is.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Gateway underlay endpoint, e.g. 198.19.0.1:51820.
    pub gateway: SocketAddr,
    pub gateway_public_key: [u8; 32],
    /// The echo target inside the tunnel (the gateway kernel answers ICMP), e.g. 100.64.0.1.
    pub gateway_tunnel_ip: Ipv4Addr,
    /// An attempt without an echo reply this long after its first initiation fails
    /// (90 s like WireGuard's REKEY_ATTEMPT_TIME).
    pub give_up_after: Duration,
    /// JSON lines, one per client event; `None` = off.
    pub event_log: Option<PathBuf>,
}

/// One client to run.
#[derive(Debug, Clone)]
pub struct FleetClient {
    pub plan: ClientPlan,
    /// Population name, copied into the result.
    pub population: String,
    pub behaviour: BehaviourFile,
    pub link: Link,
}

/// Live counters, updated by every client task; read with [`FleetProgress::snapshot`].
#[derive(Debug, Default)]
pub struct FleetProgress {
    /// Connection attempts begun.
    started: AtomicU64,
    /// Sessions currently proven and held.
    connected_now: AtomicU64,
    /// Attempts that connected, ever.
    connected_total: AtomicU64,
    /// Attempts that gave up or were cancelled before connecting.
    failed: AtomicU64,
    /// Attempts begun and neither connected nor failed yet.
    in_flight: AtomicU64,
    /// How late the clients read the gateway's datagrams (`results.load.rx_lag_*`).
    rx_lag: RxLagRecorder,
}

/// A copy of [`FleetProgress`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub started: u64,
    pub connected_now: u64,
    pub connected_total: u64,
    pub failed: u64,
    pub in_flight: u64,
}

impl FleetProgress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            started: self.started.load(Ordering::Relaxed),
            connected_now: self.connected_now.load(Ordering::Relaxed),
            connected_total: self.connected_total.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// The receive lags of every datagram the clients read so far.
    pub fn rx_lag(&self) -> RxLagTotals {
        self.rx_lag.totals()
    }

    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the fleet as a whole failed (a single client's failure is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client {id}: sender index {index} does not fit in 24 bits")]
    SenderIndex { id: u32, index: u32 },
    #[error(transparent)]
    EventLog(#[from] EventLogError),
    #[error(transparent)]
    DelayLine(#[from] DelayLineError),
    #[error("a client task panicked or was aborted")]
    ClientTask(#[source] tokio::task::JoinError),
}

/// What every client task shares.
struct Shared {
    config: FleetConfig,
    origin: Instant,
    progress: Arc<FleetProgress>,
    cancel: CancellationToken,
    events: EventSink,
    /// The fleet's delay thread; `None` when every client's link is transparent.
    delay: Option<DelayHandle>,
}

impl Shared {
    fn ms_since_origin(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64() * 1000.0
    }
}

/// Runs every client (each starting at `origin + plan.start`) until it is done, gave up, or
/// `cancel` fires; returns one result per client sorted by id. Runs on the caller's runtime,
/// whose threads must be in the client namespace.
pub async fn run_fleet(
    config: FleetConfig,
    clients: Vec<FleetClient>,
    origin: Instant,
    progress: Arc<FleetProgress>,
    cancel: CancellationToken,
) -> Result<Vec<ClientResult>, ClientError> {
    for client in &clients {
        let index = sender_index(client.plan.id);
        if index > MAX_SENDER_INDEX {
            return Err(ClientError::SenderIndex {
                id: client.plan.id,
                index,
            });
        }
    }
    raise_open_files_limit(clients.len());
    let (event_log, events) = match &config.event_log {
        Some(path) => {
            let (log, sink) = EventLog::start(path).await?;
            (Some(log), sink)
        }
        None => (None, EventSink::disabled()),
    };
    let delay_line = if clients.iter().all(|c| is_transparent(&c.link)) {
        None
    } else {
        Some(DelayLine::start()?)
    };
    let shared = Arc::new(Shared {
        config,
        origin,
        progress,
        cancel,
        events,
        delay: delay_line.as_ref().map(DelayLine::handle),
    });
    let mut tasks = JoinSet::new();
    for client in clients {
        tasks.spawn(run_client(Arc::clone(&shared), client));
    }
    drop(shared);
    let mut results = Vec::with_capacity(tasks.len());
    let mut task_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => {
                task_error.get_or_insert(e);
            }
        }
    }
    // Every task (and so every sink and delay handle clone) is gone: both threads stop.
    if let Some(line) = delay_line {
        line.finish();
    }
    if let Some(log) = event_log {
        let lines = log.finish().await?;
        tracing::debug!(lines, "client event log written");
    }
    if let Some(e) = task_error {
        return Err(ClientError::ClientTask(e));
    }
    results.sort_by_key(|r| r.id);
    Ok(results)
}

/// boringtun shifts the index left by 8; 0 is avoided so no client shares a gateway's default.
fn sender_index(id: u32) -> u32 {
    id.saturating_add(1)
}

/// What a client does once a connection is proven.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// Close at once.
    Leave,
    /// Keep the session for `duration`, echoing every `every`.
    Stay { duration: Duration, every: Duration },
}

async fn run_client(shared: Arc<Shared>, client: FleetClient) -> ClientResult {
    let id = client.plan.id;
    let mut result = ClientResult {
        id,
        population: client.population.clone(),
        connections: Vec::new(),
    };
    let start_at = shared.origin + client.plan.start;
    let (times, gap, hold) = match client.behaviour {
        BehaviourFile::ConnectOnce => (1, Duration::ZERO, Hold::Leave),
        BehaviourFile::Stay {
            duration,
            traffic_every,
        } => (
            1,
            Duration::ZERO,
            Hold::Stay {
                duration,
                every: echo_interval(traffic_every),
            },
        ),
        BehaviourFile::Return { gap, times } => (times.max(1), gap, Hold::Leave),
        // Attackers are never clients (`scenario::attack`); they run in `client::attack`.
        BehaviourFile::Flood(_) | BehaviourFile::Replay(_) => return result,
    };
    // The first connection's socket and Tunn are made ready ahead of the arrival (`prepare`);
    // later connections make their own when they start.
    let prepare_at = start_at.checked_sub(PREPARE_AHEAD).unwrap_or(start_at);
    tokio::select! {
        _ = shared.cancel.cancelled() => return result,
        _ = tokio::time::sleep_until(prepare_at) => {}
    }
    let mut prepared = Some(prepare(
        &shared.config,
        &client.plan,
        sender_index(client.plan.id),
        ECHO_RETRY,
    ));
    tokio::select! {
        _ = shared.cancel.cancelled() => return result,
        _ = tokio::time::sleep_until(start_at) => {}
    }
    let mut link = LinkModel::new(client.link, client.plan.link_seed);
    // When the arrival process meant each connection to start, against which lag is measured.
    let mut scheduled = start_at;
    for n in 0..times {
        if n > 0 {
            scheduled = Instant::now() + gap;
            tokio::select! {
                _ = shared.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(scheduled) => {}
            }
        }
        let ready = prepared.take();
        let mut connection = connect(&shared, &client, n, &mut link, hold, ready).await;
        connection.scheduled_ms = Some(shared.ms_since_origin(scheduled));
        result.connections.push(connection);
        if shared.cancel.is_cancelled() {
            break;
        }
    }
    result
}

/// One connection's IO: the socket, the link in between, and the event log.
struct Wire<'a> {
    shared: &'a Shared,
    client: u32,
    connection: u32,
    socket: Arc<UdpSocket>,
    link: &'a mut LinkModel,
    /// `None` for a transparent link: packets go straight through.
    delay: Option<DelayPort>,
}

impl Wire<'_> {
    fn record(&self, event: &'static str, detail: Option<String>) {
        self.shared.events.record(EventRecord {
            client: self.client,
            t_ms: self.shared.ms_since_origin(Instant::now()),
            event,
            connection: self.connection,
            detail,
        });
    }

    /// Carries out the session's actions: packets go onto the link, events into the log.
    async fn apply(&mut self, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            match action {
                Action::Send(bytes) => self.travel(Direction::Up, bytes).await,
                // Formatting details costs more than the rest of a record; skip it unlogged.
                Action::Record(_) if !self.shared.events.is_enabled() => {}
                Action::Record(event) => {
                    let detail = match &event {
                        SessionEvent::EchoSent { seq } | SessionEvent::EchoReply { seq } => {
                            Some(format!("seq={seq}"))
                        }
                        SessionEvent::Connected { setup_latency } => Some(format!(
                            "setup_latency_ms={:.3}",
                            setup_latency.as_secs_f64() * 1000.0
                        )),
                        _ => None,
                    };
                    self.record(event.name(), detail);
                }
            }
        }
    }

    /// Sends now (transparent link, upward), drops, or hands a packet going `direction` to
    /// the delay line.
    async fn travel(&mut self, direction: Direction, bytes: Vec<u8>) {
        let Some(port) = &self.delay else {
            self.send(&bytes).await;
            return;
        };
        let Some(delay) = self.link.transit(direction) else {
            return;
        };
        let due = std::time::Instant::now() + delay;
        let delivery = match direction {
            Direction::Up => Delivery::Up {
                socket: Arc::clone(&port.up),
                to: self.shared.config.gateway,
                bytes,
            },
            Direction::Down => Delivery::Down {
                to: port.down.clone(),
                bytes,
            },
        };
        port.line.schedule(due, delivery);
    }

    async fn send(&self, bytes: &[u8]) {
        if let Err(e) = self.socket.send_to(bytes, self.shared.config.gateway).await {
            // The underlay lost it, like a dropped packet: the protocol's retries cover it.
            tracing::debug!(client = self.client, error = %e, "send failed");
        }
    }
}

/// Far enough to mean "never" for a disabled select branch.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// One connection attempt from first initiation to close; never fails, failures are results.
async fn connect(
    shared: &Shared,
    client: &FleetClient,
    n: u32,
    link: &mut LinkModel,
    hold: Hold,
    prepared: Option<Result<Prepared, String>>,
) -> Connection {
    let progress = &shared.progress;
    FleetProgress::inc(&progress.started);
    FleetProgress::inc(&progress.in_flight);
    let began = Instant::now();
    let failed = |failure: String| {
        FleetProgress::dec(&progress.in_flight);
        FleetProgress::inc(&progress.failed);
        Connection {
            scheduled_ms: None,
            started_ms: shared.ms_since_origin(began),
            setup_latency_ms: None,
            handshake_attempts: 0,
            cookies_received: 0,
            failure: Some(failure),
        }
    };
    let plan = &client.plan;
    let prepared = prepared
        .unwrap_or_else(|| prepare(&shared.config, plan, sender_index(plan.id), ECHO_RETRY));
    let Prepared {
        socket,
        mut session,
    } = match prepared {
        Ok(p) => p,
        Err(failure) => return failed(failure),
    };
    let socket = Arc::new(socket);
    let line = shared.delay.as_ref().filter(|_| !link.is_transparent());
    let (delay, mut delayed) = match line.map(|line| DelayPort::open(line, socket.clone())) {
        Some((port, rx)) => (Some(port), Some(rx)),
        None => (None, None),
    };
    let mut wire = Wire {
        shared,
        client: plan.id,
        connection: n,
        socket,
        link,
        delay,
    };
    let mut actions = Vec::new();
    session.start(Instant::now().into_std(), &mut actions);
    wire.apply(&mut actions).await;

    // `interval` would tick at once and run boringtun's timers right after `start` did.
    let mut tick = tokio::time::interval_at(Instant::now() + TICK, TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // One waiter for the whole connection instead of one registered and dropped per packet.
    let cancel = shared.cancel.cancelled();
    tokio::pin!(cancel);
    let mut buf = vec![0u8; RECV_BUF];
    let mut control = control_buffer();
    let mut counted_connected = false;
    let mut stay_until: Option<Instant> = None;
    let mut next_traffic: Option<Instant> = None;
    let mut cancelled = false;
    loop {
        match session.phase() {
            Phase::Failed => break,
            Phase::Connected if !counted_connected => {
                counted_connected = true;
                FleetProgress::dec(&progress.in_flight);
                FleetProgress::inc(&progress.connected_now);
                FleetProgress::inc(&progress.connected_total);
                match hold {
                    Hold::Leave => break,
                    Hold::Stay { duration, every } => {
                        let now = Instant::now();
                        stay_until = Some(now + duration);
                        next_traffic = Some(now + every);
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            biased;
            _ = &mut cancel => {
                cancelled = true;
                break;
            }
            _ = tokio::time::sleep_until(stay_until.unwrap_or_else(never)), if stay_until.is_some() => break,
            Some(datagram) = delayed_down(&mut delayed) => {
                session.on_datagram(Instant::now().into_std(), &datagram, &mut actions);
            }
            received = recv_stamped(&wire.socket, &mut buf, &mut control) => match received {
                Ok(got) => {
                    let now = Instant::now();
                    if let Some(at) = got.kernel_at {
                        let lag = receive_lag(at, std::time::SystemTime::now());
                        progress.rx_lag.record(lag, now.saturating_duration_since(shared.origin));
                    }
                    let datagram = &buf[..got.len];
                    if wire.delay.is_none() {
                        session.on_datagram(now.into_std(), datagram, &mut actions);
                    } else {
                        wire.travel(Direction::Down, datagram.to_vec()).await;
                    }
                }
                Err(e) => tracing::debug!(client = plan.id, error = %e, "receive failed"),
            },
            _ = tick.tick() => session.on_tick(Instant::now().into_std(), &mut actions),
            _ = tokio::time::sleep_until(next_traffic.unwrap_or_else(never)), if next_traffic.is_some() => {
                if let (Some(at), Hold::Stay { every, .. }) = (next_traffic, hold) {
                    next_traffic = Some(at + every);
                }
                session.send_echo(Instant::now().into_std(), &mut actions);
            }
        }
        wire.apply(&mut actions).await;
    }

    let setup_latency_ms = session.setup_latency().map(|d| d.as_secs_f64() * 1000.0);
    let failure = if counted_connected {
        FleetProgress::dec(&progress.connected_now);
        None
    } else {
        FleetProgress::dec(&progress.in_flight);
        FleetProgress::inc(&progress.failed);
        if cancelled {
            wire.record("cancelled", None);
            Some("cancelled".to_string())
        } else {
            let failure = format!(
                "gave up after {}s",
                shared.config.give_up_after.as_secs_f64()
            );
            Some(failure)
        }
    };
    let started_ms = match session.first_initiation_at() {
        Some(at) => shared.ms_since_origin(Instant::from_std(at)),
        None => shared.ms_since_origin(began),
    };
    wire.record("closed", None);
    Connection {
        scheduled_ms: None,
        started_ms,
        setup_latency_ms,
        handshake_attempts: session.handshake_attempts(),
        cookies_received: session.cookies_received(),
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_snapshot_reads_counters() {
        let progress = FleetProgress::default();
        FleetProgress::inc(&progress.started);
        FleetProgress::inc(&progress.in_flight);
        FleetProgress::inc(&progress.in_flight);
        FleetProgress::dec(&progress.in_flight);
        assert_eq!(
            progress.snapshot(),
            ProgressSnapshot {
                started: 1,
                in_flight: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_client_echoes_at_the_scenarios_interval_not_the_timer_tick() {
        // reboot-active's 200 ms echo is shorter than the 250 ms tick.
        let every = Duration::from_millis(200);
        assert!(every < TICK);
        assert_eq!(echo_interval(every), every);
        assert_eq!(echo_interval(Duration::from_nanos(1)), MIN_TRAFFIC_EVERY);
    }

    #[test]
    fn sender_indices_fit_for_every_planned_client() {
        assert_eq!(sender_index(0), 1);
        assert!(sender_index(crate::scenario::resolve::MAX_PEERS) <= MAX_SENDER_INDEX);
    }
}
