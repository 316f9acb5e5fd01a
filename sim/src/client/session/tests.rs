//! The session state machine driven by a real boringtun responder in memory: both roles,
//! lost packets, giving up, cookies.

use super::*;
use rand::RngCore;

const CLIENT_TUNNEL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const GATEWAY_TUNNEL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

fn keypair() -> ([u8; 32], [u8; 32]) {
    let mut private = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut private);
    let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
    (private, public)
}

/// A gateway played by a bare responder `Tunn` that answers echoes itself.
struct Gateway {
    tunn: Tunn,
    buf: Vec<u8>,
}

impl Gateway {
    fn new(gateway_private: [u8; 32], client_public: [u8; 32]) -> Self {
        Self {
            tunn: Tunn::new(
                StaticSecret::from(gateway_private),
                PublicKey::from(client_public),
                None,
                None,
                4242,
                None,
            ),
            buf: vec![0u8; BUF_LEN],
        }
    }

    /// Feeds one datagram; returns datagrams to send back.
    fn receive(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        let mut inner = None;
        match self.tunn.decapsulate(None, datagram, &mut self.buf) {
            TunnResult::WriteToNetwork(p) => {
                replies.push(p.to_vec());
                while let TunnResult::WriteToNetwork(p) =
                    self.tunn.decapsulate(None, &[], &mut self.buf)
                {
                    replies.push(p.to_vec());
                }
            }
            TunnResult::WriteToTunnelV4(p, _) => inner = Some(p.to_vec()),
            _ => {}
        }
        if let Some(packet) = inner {
            let echo = icmp::parse(&packet).unwrap();
            assert_eq!(echo.kind, EchoKind::Request);
            assert_eq!(echo.src, CLIENT_TUNNEL);
            assert_eq!(echo.dst, GATEWAY_TUNNEL);
            let reply = icmp::build(&icmp::reply_to(&echo));
            if let TunnResult::WriteToNetwork(p) = self.tunn.encapsulate(&reply, &mut self.buf) {
                replies.push(p.to_vec());
            }
        }
        replies
    }

    fn initiate(&mut self) -> Vec<u8> {
        match self.tunn.format_handshake_initiation(&mut self.buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            other => panic!("gateway could not initiate: {other:?}"),
        }
    }
}

fn client_and_gateway() -> (Session, Gateway) {
    let (client_private, client_public) = keypair();
    let (gateway_private, gateway_public) = keypair();
    let session = Session::new(SessionConfig {
        private_key: client_private,
        gateway_public_key: gateway_public,
        sender_index: 17,
        tunnel_ip: CLIENT_TUNNEL,
        gateway_tunnel_ip: GATEWAY_TUNNEL,
        give_up_after: Duration::from_secs(90),
        echo_retry: Duration::from_secs(1),
    })
    .unwrap();
    (session, Gateway::new(gateway_private, client_public))
}

fn sends(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p.clone()),
            Action::Record(_) => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(e) => Some(e.name()),
            Action::Send(_) => None,
        })
        .collect()
}

/// Shuttles packets both ways until neither side has anything left to say.
fn exchange(
    session: &mut Session,
    gateway: &mut Gateway,
    mut to_gateway: Vec<Vec<u8>>,
    log: &mut Vec<Action>,
) {
    for _ in 0..20 {
        if to_gateway.is_empty() {
            return;
        }
        let mut to_client = Vec::new();
        for packet in to_gateway.drain(..) {
            to_client.extend(gateway.receive(&packet));
        }
        for packet in to_client {
            let mut out = Vec::new();
            session.on_datagram(Instant::now(), &packet, &mut out);
            to_gateway.extend(sends(&out));
            log.extend(out);
        }
    }
    panic!("endless exchange");
}

#[test]
fn client_initiates_and_proves_the_tunnel_with_an_echo() {
    let (mut session, mut gateway) = client_and_gateway();
    let mut out = Vec::new();
    session.start(Instant::now(), &mut out);
    let first = sends(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(message_type(&first[0]), Some(MSG_INITIATION));
    assert_eq!(session.phase(), Phase::Connecting);
    let mut log = out;
    exchange(&mut session, &mut gateway, first, &mut log);
    assert_eq!(session.phase(), Phase::Connected);
    assert_eq!(session.handshake_attempts(), 1);
    assert!(session.setup_latency().is_some());
    let names = events(&log);
    for expected in [
        "initiation_sent",
        "response_received",
        "echo_reply",
        "connected",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
    // Later traffic flows on the same session.
    let mut out = Vec::new();
    session.send_echo(Instant::now(), &mut out);
    exchange(&mut session, &mut gateway, sends(&out), &mut Vec::new());
    assert_eq!(session.echo_replies(), 2);
}

#[test]
fn gateway_initiates_role_inversion() {
    let (mut session, mut gateway) = client_and_gateway();
    let mut out = Vec::new();
    session.start(Instant::now(), &mut out);
    // The gateway does not know us yet: our initiation is dropped (the JIT daemon sniffs it
    // and makes the data plane initiate instead).
    drop(out);
    let initiation = gateway.initiate();
    let mut out = Vec::new();
    session.on_datagram(Instant::now(), &initiation, &mut out);
    let replies = sends(&out);
    assert_eq!(
        replies.len(),
        1,
        "only a handshake response, no competing initiation"
    );
    assert_eq!(message_type(&replies[0]), Some(MSG_RESPONSE));
    // Until the gateway's first data packet our echo must wait, and retries must not
    // start a new handshake.
    let mut tick = Vec::new();
    session.on_tick(Instant::now() + Duration::from_secs(2), &mut tick);
    assert!(sends(&tick).is_empty(), "{:?}", events(&tick));
    let mut log = out;
    exchange(&mut session, &mut gateway, replies, &mut log);
    assert_eq!(session.phase(), Phase::Connected);
    assert_eq!(session.handshake_attempts(), 1);
    let names = events(&log);
    assert!(names.contains(&"initiation_received"));
    assert!(names.contains(&"response_sent"));
    assert!(names.contains(&"connected"));
}

#[test]
fn lost_echo_is_retried() {
    let (mut session, mut gateway) = client_and_gateway();
    let start = Instant::now();
    let mut out = Vec::new();
    session.start(start, &mut out);
    // Handshake completes, but the echo that follows the keepalive is lost.
    let response = gateway.receive(&sends(&out)[0]);
    let mut out = Vec::new();
    session.on_datagram(start, &response[0], &mut out);
    let after = sends(&out);
    assert_eq!(after.len(), 2, "keepalive then the queued echo");
    gateway.receive(&after[0]);
    // after[1] (the echo) is dropped.
    let mut out = Vec::new();
    session.on_tick(start + Duration::from_millis(500), &mut out);
    assert!(sends(&out).is_empty());
    session.on_tick(start + Duration::from_millis(1100), &mut out);
    let retry = sends(&out);
    assert_eq!(retry.len(), 1);
    exchange(&mut session, &mut gateway, retry, &mut Vec::new());
    assert_eq!(session.phase(), Phase::Connected);
}

#[test]
fn gives_up_after_the_configured_time() {
    let (mut session, _gateway) = client_and_gateway();
    let start = Instant::now();
    let mut out = Vec::new();
    session.start(start, &mut out);
    session.on_tick(start + Duration::from_secs(89), &mut out);
    assert_eq!(session.phase(), Phase::Connecting);
    session.on_tick(start + Duration::from_secs(90), &mut out);
    assert_eq!(session.phase(), Phase::Failed);
    assert_eq!(events(&out).last(), Some(&"gave_up"));
    assert_eq!(session.setup_latency(), None);
    // A failed session ignores further input.
    let mut more = Vec::new();
    session.on_tick(start + Duration::from_secs(91), &mut more);
    assert!(more.is_empty());
}

#[test]
fn cookie_replies_from_a_loaded_gateway_are_counted() {
    let (client_private, client_public) = keypair();
    let (gateway_private, gateway_public) = keypair();
    let mut session = Session::new(SessionConfig {
        private_key: client_private,
        gateway_public_key: gateway_public,
        sender_index: 5,
        tunnel_ip: CLIENT_TUNNEL,
        gateway_tunnel_ip: GATEWAY_TUNNEL,
        give_up_after: Duration::from_secs(90),
        echo_retry: Duration::from_secs(1),
    })
    .unwrap();
    // A gateway "under load": a rate limit of 0 answers every initiation with a cookie.
    let gateway_secret = StaticSecret::from(gateway_private);
    let limiter = std::sync::Arc::new(boringtun::noise::rate_limiter::RateLimiter::new(
        &PublicKey::from(&gateway_secret),
        0,
    ));
    let mut gateway = Tunn::new(
        gateway_secret,
        PublicKey::from(client_public),
        None,
        None,
        99,
        Some(limiter),
    );
    let mut out = Vec::new();
    session.start(Instant::now(), &mut out);
    let initiation = sends(&out).remove(0);
    let mut buf = vec![0u8; BUF_LEN];
    let source = Some(std::net::IpAddr::from([198, 18, 1, 0]));
    let cookie = match gateway.decapsulate(source, &initiation, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("expected a cookie reply, got {other:?}"),
    };
    assert_eq!(message_type(&cookie), Some(MSG_COOKIE_REPLY));
    let mut out = Vec::new();
    session.on_datagram(Instant::now(), &cookie, &mut out);
    assert_eq!(session.cookies_received(), 1);
    assert!(events(&out).contains(&"cookie_received"));
    assert_eq!(session.phase(), Phase::Connecting);
}

#[test]
fn sender_index_must_fit_24_bits() {
    let (private, public) = keypair();
    let config = SessionConfig {
        private_key: private,
        gateway_public_key: public,
        sender_index: 1 << 24,
        tunnel_ip: CLIENT_TUNNEL,
        gateway_tunnel_ip: GATEWAY_TUNNEL,
        give_up_after: Duration::from_secs(90),
        echo_retry: Duration::from_secs(1),
    };
    assert!(matches!(
        Session::new(config),
        Err(SessionError::SenderIndexTooLarge { .. })
    ));
}
