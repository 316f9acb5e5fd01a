//! Attacking populations on the wire: a flood (packets built before the run by [`packets`]) or
//! a replay of initiations legitimate clients sent ([`capture`]), paced at the population's
//! packets per second from its own source addresses. Cheap per packet by design: one socket
//! per source address (not per key), a pre-built packet, one `send_to`, and a sleep of about a
//! millisecond between bursts of the packets that are due. Runs on one plain thread inside the
//! client namespace, beside (never inside) the fleet, and is never counted as a client.

pub mod capture;
pub mod packets;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use capture::{Capture, CaptureError, Captured};
use packets::Initiation;

/// Longest sleep between checks of the schedule and of `stop`.
const PACE_SLEEP: Duration = Duration::from_millis(1);
/// Longest wait before the start, per check of `stop`.
const WAIT_STEP: Duration = Duration::from_millis(50);

/// What an attack sends.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Packets built before the run, sent in order (cycled if fewer than `packets`).
    Built(Arc<Vec<Initiation>>),
    /// Initiations captured on `interface` (the client namespace's link to the gateway); the
    /// schedule starts at the first capture.
    Replay { interface: String },
}

/// One attack to run.
#[derive(Debug, Clone)]
pub struct AttackSpec {
    pub name: String,
    /// Relative to the run's origin.
    pub start: Duration,
    pub packets: u32,
    pub packets_per_second: f64,
    pub sources: Vec<IpAddr>,
    /// The gateway's WireGuard endpoint for IPv4 sources.
    pub gateway_v4: SocketAddr,
    /// The same for IPv6 sources (`None`: the lab has no IPv6 underlay).
    pub gateway_v6: Option<SocketAddr>,
    pub payload: Payload,
}

/// Live count of packets sent, for progress and tests.
#[derive(Debug, Default)]
pub struct AttackProgress {
    pub sent: AtomicU64,
}

/// What one attack did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttackOutcome {
    pub sent: u64,
    /// `send_to` calls that failed (a full socket buffer, an unreachable route).
    pub send_errors: u64,
    /// First and last packet, ms after the run's origin.
    pub first_sent_ms: Option<f64>,
    pub last_sent_ms: Option<f64>,
    /// Most packets ever due but not yet sent at one check: how far the sender fell behind.
    pub max_behind: u64,
    /// Initiations captured from legitimate clients (replay only).
    pub captured: u64,
}

impl AttackOutcome {
    /// Packets per second between the first and the last packet.
    pub fn rate(&self) -> Option<f64> {
        let span = (self.last_sent_ms? - self.first_sent_ms?) / 1000.0;
        (span > 0.0 && self.sent > 1).then(|| (self.sent - 1) as f64 / span)
    }
}

/// Why an attack could not run.
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error("attack {name}: binding source {source_ip}")]
    Bind {
        name: String,
        source_ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("attack {name}: IPv6 sources but the lab has no IPv6 underlay")]
    NoIpv6 { name: String },
    #[error("attack {name}: nothing to send")]
    Empty { name: String },
    #[error("attack {name}: starting the replay capture")]
    Capture {
        name: String,
        #[source]
        source: CaptureError,
    },
}

/// A UDP socket bound to `ip` (any address of a locally routed range; freebind otherwise).
pub fn bind_any(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if ip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let addr: SocketAddr = SocketAddr::new(ip, 0);
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            if ip.is_ipv6() {
                socket.set_freebind_ipv6(true)?;
            } else {
                socket.set_freebind(true)?;
            }
            socket.bind(&addr.into())?;
        }
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// Runs one attack on the calling thread (which must be in the client namespace) until every
/// packet is sent or `stop` is set. `origin` is the run's time zero.
pub fn run_attack(
    spec: &AttackSpec,
    origin: Instant,
    stop: &AtomicBool,
    progress: &AttackProgress,
) -> Result<AttackOutcome, AttackError> {
    let name = spec.name.clone();
    let mut sockets = Vec::with_capacity(spec.sources.len());
    for &ip in &spec.sources {
        let target = match ip {
            IpAddr::V4(_) => spec.gateway_v4,
            IpAddr::V6(_) => spec
                .gateway_v6
                .ok_or(AttackError::NoIpv6 { name: name.clone() })?,
        };
        let socket = bind_any(ip).map_err(|source| AttackError::Bind {
            name: name.clone(),
            source_ip: ip,
            source,
        })?;
        sockets.push((socket, target));
    }
    if sockets.is_empty() || spec.packets == 0 {
        return Err(AttackError::Empty { name });
    }
    // The replay's capture starts at once: it must see the clients' first initiations.
    let captured = Arc::new(Captured::default());
    let capture_stop = Arc::new(AtomicBool::new(false));
    let capture_thread = match &spec.payload {
        Payload::Built(p) if p.is_empty() => return Err(AttackError::Empty { name }),
        Payload::Built(_) => None,
        Payload::Replay { interface } => {
            let capture = Capture::open(interface).map_err(|source| AttackError::Capture {
                name: name.clone(),
                source,
            })?;
            let exclude: HashSet<IpAddr> = spec.sources.iter().copied().collect();
            let (into, halt) = (Arc::clone(&captured), Arc::clone(&capture_stop));
            let port = spec.gateway_v4.port();
            Some(std::thread::spawn(move || {
                capture.run(port, &exclude, &into, &halt)
            }))
        }
    };
    let mut outcome = AttackOutcome::default();
    let start_at = origin + spec.start;
    if wait_until(start_at, stop) {
        let (clock, from) = match &spec.payload {
            Payload::Built(_) => (start_at, Some(())),
            // A replay has nothing to send before the first capture: its clock starts then.
            Payload::Replay { .. } => {
                let mut first = None;
                while !stop.load(Ordering::Relaxed) {
                    if !captured.is_empty() {
                        first = Some(());
                        break;
                    }
                    std::thread::sleep(PACE_SLEEP);
                }
                (Instant::now(), first)
            }
        };
        if from.is_some() {
            send_paced(
                spec,
                &sockets,
                &captured,
                clock,
                origin,
                stop,
                progress,
                &mut outcome,
            );
        }
    }
    capture_stop.store(true, Ordering::Relaxed);
    if let Some(t) = capture_thread {
        outcome.captured = t.join().unwrap_or(0);
    }
    Ok(outcome)
}

/// Sleeps until `at`; `false` if `stop` was set first.
fn wait_until(at: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(WAIT_STEP));
    }
}

/// The pacing loop: at each wake-up, sends every packet due by now (round robin over the
/// sources), then sleeps until the next is due (at most [`PACE_SLEEP`]).
#[allow(clippy::too_many_arguments)]
fn send_paced(
    spec: &AttackSpec,
    sockets: &[(UdpSocket, SocketAddr)],
    captured: &Captured,
    clock: Instant,
    origin: Instant,
    stop: &AtomicBool,
    progress: &AttackProgress,
    outcome: &mut AttackOutcome,
) {
    let total = u64::from(spec.packets);
    let interval = Duration::from_secs_f64(1.0 / spec.packets_per_second);
    let ms = |t: Instant| t.saturating_duration_since(origin).as_secs_f64() * 1000.0;
    let mut sent = 0u64;
    while sent < total && !stop.load(Ordering::Relaxed) {
        let elapsed = clock.elapsed().as_secs_f64();
        let due = ((elapsed * spec.packets_per_second) as u64 + 1).min(total);
        outcome.max_behind = outcome.max_behind.max(due.saturating_sub(sent));
        while sent < due {
            let packet = match &spec.payload {
                Payload::Built(p) => p.get((sent % p.len() as u64) as usize).copied(),
                Payload::Replay { .. } => captured.get(sent),
            };
            let Some(packet) = packet else { break };
            let (socket, target) = &sockets[(sent % sockets.len() as u64) as usize];
            if socket.send_to(&packet, target).is_err() {
                outcome.send_errors += 1;
            }
            let now = Instant::now();
            outcome.first_sent_ms.get_or_insert(ms(now));
            outcome.last_sent_ms = Some(ms(now));
            sent += 1;
            progress.sent.store(sent, Ordering::Relaxed);
        }
        let next_due = clock + interval.mul_f64(sent as f64);
        let now = Instant::now();
        if next_due > now {
            std::thread::sleep((next_due - now).min(PACE_SLEEP));
        }
    }
    outcome.sent = sent;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_and_sends_every_packet_over_loopback() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let spec = AttackSpec {
            name: "t".into(),
            start: Duration::from_millis(20),
            packets: 200,
            packets_per_second: 1000.0,
            sources: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
            gateway_v4: receiver.local_addr().unwrap(),
            gateway_v6: None,
            payload: Payload::Built(Arc::new(vec![[1u8; packets::INITIATION_LEN]; 3])),
        };
        let stop = AtomicBool::new(false);
        let progress = AttackProgress::default();
        let origin = Instant::now();
        let outcome = run_attack(&spec, origin, &stop, &progress).unwrap();
        assert_eq!(outcome.sent, 200);
        assert_eq!(outcome.send_errors, 0);
        // 200 packets at 1000/s span ~199 ms; generous bounds, this is not a timing test.
        let span = outcome.last_sent_ms.unwrap() - outcome.first_sent_ms.unwrap();
        assert!(span > 150.0, "{span}");
        assert!(outcome.first_sent_ms.unwrap() >= 20.0);
        let mut sources = HashSet::new();
        let mut buf = [0u8; 256];
        for _ in 0..200 {
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(n, packets::INITIATION_LEN);
            sources.insert(from.ip());
        }
        assert_eq!(sources.len(), 2);
    }

    #[test]
    fn stop_ends_an_attack_before_it_starts() {
        let spec = AttackSpec {
            name: "t".into(),
            start: Duration::from_secs(3600),
            packets: 10,
            packets_per_second: 10.0,
            sources: vec!["127.0.0.1".parse().unwrap()],
            gateway_v4: "127.0.0.1:9".parse().unwrap(),
            gateway_v6: None,
            payload: Payload::Built(Arc::new(vec![[1u8; packets::INITIATION_LEN]])),
        };
        let stop = AtomicBool::new(true);
        let outcome = run_attack(&spec, Instant::now(), &stop, &AttackProgress::default()).unwrap();
        assert_eq!(outcome.sent, 0);
        assert_eq!(outcome.rate(), None);
    }
}
