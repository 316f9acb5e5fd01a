//! What one simulated client costs the driver, next to the WireGuard work it cannot avoid,
//! measured in the same run: `bare` is boringtun alone (initiator and responder `Tunn`s, a
//! handshake and one data packet each way, in memory); `session` adds the client state
//! machine; `fleet_loopback` is the driver's real code path (`run_fleet` with one client,
//! its own socket, tokio task and link model) against a boringtun responder on 127.0.0.1.
//! The fleet should cost at most 1.5 times `bare`; BENCHMARKS.md records the ratio.
//!
//! Each is measured twice: `cpu/*` reports the CPU time the whole process spent (every thread,
//! the responder thread's included, so both sides of the ratio contain the same boringtun
//! work of both ends), which is what the goal is judged on; `wall/*` reports elapsed time,
//! which on a shared machine also counts waiting for a core and for the loopback round trips.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{black_box, criterion_group, criterion_main, Bencher, Criterion};
use jitwg::client::icmp::{self, Echo, EchoKind};
use jitwg::client::session::{Action, Phase, Session, SessionConfig};
use jitwg::client::{run_fleet, FleetClient, FleetConfig, FleetProgress};
use jitwg::scenario::file::BehaviourFile;
use jitwg::scenario::resolve::{ClientPlan, Link, PeerIdentity};
use tokio_util::sync::CancellationToken;

const CLIENT_PRIVATE: [u8; 32] = [0x11; 32];
const GATEWAY_PRIVATE: [u8; 32] = [0x22; 32];
const CLIENT_TUNNEL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const GATEWAY_TUNNEL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const BUF_LEN: usize = 2048;

fn public(private: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(private)).to_bytes()
}

/// Public keys are derived once: the driver reads them from the resolved plan and the gateway
/// from its configuration, so deriving them per iteration (one X25519 each) is no one's cost.
static CLIENT_PUBLIC: LazyLock<[u8; 32]> = LazyLock::new(|| public(CLIENT_PRIVATE));
static GATEWAY_PUBLIC: LazyLock<[u8; 32]> = LazyLock::new(|| public(GATEWAY_PRIVATE));

fn tunn(private: [u8; 32], peer_public: [u8; 32], index: u32) -> Tunn {
    Tunn::new(
        StaticSecret::from(private),
        PublicKey::from(peer_public),
        None,
        None,
        index,
        None,
    )
}

/// The gateway's side: a fresh responder `Tunn` per handshake that answers echoes itself.
struct Responder {
    tunn: Option<Tunn>,
    client_public: [u8; 32],
    buf: Vec<u8>,
}

impl Responder {
    fn new() -> Self {
        Self {
            tunn: None,
            client_public: *CLIENT_PUBLIC,
            buf: vec![0; BUF_LEN],
        }
    }

    /// Feeds one datagram, calls `send` with every datagram to send back.
    fn receive(&mut self, datagram: &[u8], mut send: impl FnMut(&[u8])) {
        if datagram.first() == Some(&1) {
            self.tunn = Some(tunn(GATEWAY_PRIVATE, self.client_public, 4242));
        }
        let Some(tunn) = self.tunn.as_mut() else {
            return;
        };
        let mut inner = None;
        match tunn.decapsulate(None, datagram, &mut self.buf) {
            TunnResult::WriteToNetwork(p) => send(p),
            TunnResult::WriteToTunnelV4(p, _) => inner = Some(p.to_vec()),
            _ => {}
        }
        if let Some(Ok(echo)) = inner.map(|p| icmp::parse(&p)) {
            if echo.kind == EchoKind::Request {
                let reply = icmp::build(&icmp::reply_to(&echo));
                if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(&reply, &mut self.buf) {
                    send(p);
                }
            }
        }
    }
}

/// The floor: the boringtun work one client's first contact needs, nothing else.
fn bare() {
    let mut client = tunn(CLIENT_PRIVATE, *GATEWAY_PUBLIC, 17);
    let mut gateway = tunn(GATEWAY_PRIVATE, *CLIENT_PUBLIC, 4242);
    let (mut cbuf, mut gbuf) = (vec![0u8; BUF_LEN], vec![0u8; BUF_LEN]);
    let TunnResult::WriteToNetwork(init) = client.format_handshake_initiation(&mut cbuf, false)
    else {
        panic!("no initiation")
    };
    let TunnResult::WriteToNetwork(response) = gateway.decapsulate(None, init, &mut gbuf) else {
        panic!("no response")
    };
    // The initiator answers a response with a keepalive when it has nothing queued.
    let _ = client.decapsulate(None, response, &mut cbuf);
    let echo = icmp::build(&Echo {
        kind: EchoKind::Request,
        src: CLIENT_TUNNEL,
        dst: GATEWAY_TUNNEL,
        ident: 1,
        seq: 1,
        payload: b"jitwg-client-echo".to_vec(),
    });
    let TunnResult::WriteToNetwork(data) = client.encapsulate(&echo, &mut cbuf) else {
        panic!("no data")
    };
    let TunnResult::WriteToTunnelV4(inner, _) = gateway.decapsulate(None, data, &mut gbuf) else {
        panic!("gateway did not decrypt")
    };
    let reply = icmp::build(&icmp::reply_to(&icmp::parse(inner).expect("echo")));
    let TunnResult::WriteToNetwork(data) = gateway.encapsulate(&reply, &mut gbuf) else {
        panic!("no reply")
    };
    let TunnResult::WriteToTunnelV4(inner, _) = client.decapsulate(None, data, &mut cbuf) else {
        panic!("client did not decrypt")
    };
    black_box(inner);
}

/// The client state machine against the in-memory responder until the echo comes back.
fn session() {
    let mut session = Session::new(SessionConfig {
        private_key: CLIENT_PRIVATE,
        gateway_public_key: *GATEWAY_PUBLIC,
        sender_index: 17,
        tunnel_ip: CLIENT_TUNNEL,
        gateway_tunnel_ip: GATEWAY_TUNNEL,
        give_up_after: Duration::from_secs(90),
        echo_retry: Duration::from_secs(1),
    })
    .expect("session");
    let mut responder = Responder::new();
    let mut actions = Vec::new();
    session.start(Instant::now(), &mut actions);
    for _ in 0..10 {
        let mut to_client = Vec::new();
        for action in actions.drain(..) {
            if let Action::Send(bytes) = action {
                responder.receive(&bytes, |p| to_client.push(p.to_vec()));
            }
        }
        for packet in to_client {
            session.on_datagram(Instant::now(), &packet, &mut actions);
        }
        if session.phase() == Phase::Connected {
            return;
        }
    }
    panic!("session did not connect");
}

/// Runs the responder on a loopback socket until the process ends.
fn spawn_gateway() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind gateway");
    let addr = socket.local_addr().expect("gateway address");
    std::thread::spawn(move || {
        let mut responder = Responder::new();
        let mut buf = vec![0u8; BUF_LEN];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            responder.receive(&buf[..len], |p| {
                let _ = socket.send_to(p, from);
            });
        }
    });
    addr
}

fn fleet_client() -> FleetClient {
    FleetClient {
        plan: ClientPlan {
            id: 16,
            population: 0,
            start: Duration::ZERO,
            identity: PeerIdentity {
                private_key: CLIENT_PRIVATE,
                public_key: *CLIENT_PUBLIC,
                tunnel_ip: CLIENT_TUNNEL,
            },
            source_ip: Ipv4Addr::LOCALHOST,
            link_seed: 7,
        },
        population: "bench".into(),
        behaviour: BehaviourFile::ConnectOnce,
        link: Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
        },
    }
}

/// CPU time used so far by this whole process (all threads), from the kernel's per-thread
/// runtime accounting (nanosecond resolution, unlike getrusage's tick-split user/system times).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `routine` the number of times criterion asks and reports the process CPU it took.
fn cpu_time(b: &mut Bencher, mut routine: impl FnMut()) {
    b.iter_custom(|iters| {
        let start = process_cpu();
        for _ in 0..iters {
            routine();
        }
        process_cpu().saturating_sub(start)
    });
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = FleetConfig {
        gateway: spawn_gateway(),
        gateway_public_key: *GATEWAY_PUBLIC,
        gateway_tunnel_ip: GATEWAY_TUNNEL,
        give_up_after: Duration::from_secs(10),
        event_log: None,
    };
    let progress = Arc::new(FleetProgress::default());

    let fleet = || {
        let results = runtime
            .block_on(run_fleet(
                config.clone(),
                vec![fleet_client()],
                tokio::time::Instant::now(),
                Arc::clone(&progress),
                CancellationToken::new(),
            ))
            .expect("fleet runs");
        assert!(results[0].connections[0].setup_latency_ms.is_some());
    };

    let mut group = c.benchmark_group("client_session");
    group.bench_function("cpu/bare", |b| cpu_time(b, bare));
    group.bench_function("cpu/session", |b| cpu_time(b, session));
    group.bench_function("cpu/fleet_loopback", |b| cpu_time(b, fleet));
    group.bench_function("wall/bare", |b| b.iter(bare));
    group.bench_function("wall/session", |b| b.iter(session));
    group.bench_function("wall/fleet_loopback", |b| b.iter(fleet));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
