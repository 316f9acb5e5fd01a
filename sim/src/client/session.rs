//! One connection of one simulated client: a state machine around boringtun's `Tunn` that
//! takes datagrams and the current time in and hands back packets to send and events to
//! record. It does no IO, so two in-memory tunnels can drive it in tests.
//!
//! boringtun facts this relies on (checked in boringtun 0.7.1's `noise/timers.rs`): the
//! initiator retries an unanswered initiation after REKEY_TIMEOUT = 5 s (without
//! WireGuard's 0–333 ms jitter) and reports `ConnectionExpired` after REKEY_ATTEMPT_TIME
//! = 90 s. The session enforces its own `give_up_after` as well, and restarts boringtun's
//! handshake when boringtun expires earlier than that.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::icmp::{self, Echo, EchoKind};

/// WireGuard message types (first byte of every message; the next three are zero).
const MSG_INITIATION: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;
const MSG_DATA: u8 = 4;

/// boringtun's scratch buffer must hold the largest packet plus 32 bytes and at least 148.
const BUF_LEN: usize = 2048;
/// Sender indices are shifted left by 8 inside boringtun: they must fit in 24 bits.
pub const MAX_SENDER_INDEX: u32 = (1 << 24) - 1;
/// WireGuard's REKEY_TIMEOUT: how long a responder waits for the initiator's first data
/// packet before it treats the handshake as lost.
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Payload of every echo, so a capture shows who sent it.
const ECHO_PAYLOAD: &[u8] = b"jitwg-client-echo";

/// What a session needs to know.
#[derive(Clone)]
pub struct SessionConfig {
    pub private_key: [u8; 32],
    pub gateway_public_key: [u8; 32],
    /// Unique per client, at most [`MAX_SENDER_INDEX`].
    pub sender_index: u32,
    pub tunnel_ip: Ipv4Addr,
    pub gateway_tunnel_ip: Ipv4Addr,
    /// Counted from the first initiation; the attempt fails after it without a reply.
    pub give_up_after: Duration,
    /// How long to wait for an echo reply before sending the echo again (links lose packets).
    pub echo_retry: Duration,
}

/// Why a session could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("sender index {index} does not fit in 24 bits")]
    SenderIndexTooLarge { index: u32 },
}

/// Something worth recording that happened to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    InitiationSent,
    /// The gateway initiated to us (role inversion).
    InitiationReceived,
    ResponseSent,
    ResponseReceived,
    CookieReceived,
    EchoSent {
        seq: u16,
    },
    EchoReply {
        seq: u16,
    },
    /// The first echo reply: the session is proven usable.
    Connected {
        setup_latency: Duration,
    },
    /// boringtun gave up on its handshake before `give_up_after`; a new one was started.
    HandshakeRestarted,
    GaveUp,
}

impl SessionEvent {
    /// The event's name in the event log.
    pub fn name(&self) -> &'static str {
        match self {
            SessionEvent::InitiationSent => "initiation_sent",
            SessionEvent::InitiationReceived => "initiation_received",
            SessionEvent::ResponseSent => "response_sent",
            SessionEvent::ResponseReceived => "response_received",
            SessionEvent::CookieReceived => "cookie_received",
            SessionEvent::EchoSent { .. } => "echo_sent",
            SessionEvent::EchoReply { .. } => "echo_reply",
            SessionEvent::Connected { .. } => "connected",
            SessionEvent::HandshakeRestarted => "handshake_restarted",
            SessionEvent::GaveUp => "gave_up",
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this datagram to the gateway.
    Send(Vec<u8>),
    Record(SessionEvent),
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started yet.
    Idle,
    /// Initiations and echoes going out, no echo reply yet.
    Connecting,
    /// An echo came back through the tunnel.
    Connected,
    /// Gave up.
    Failed,
}

/// One connection attempt and, once up, the session it holds.
pub struct Session {
    tunn: Tunn,
    config: SessionConfig,
    buf: Vec<u8>,
    phase: Phase,
    /// Echo identifier: the low bits of the sender index, so replies are matched per client.
    ident: u16,
    next_seq: u16,
    last_echo_at: Option<Instant>,
    /// When we last answered a gateway initiation: while that responder session waits for the
    /// gateway's first data packet, sending would make boringtun start a competing handshake.
    responded_at: Option<Instant>,
    first_initiation_at: Option<Instant>,
    connected_at: Option<Instant>,
    handshake_attempts: u32,
    cookies_received: u32,
    echo_replies: u64,
}

impl Session {
    pub fn new(config: SessionConfig) -> Result<Self, SessionError> {
        if config.sender_index > MAX_SENDER_INDEX {
            return Err(SessionError::SenderIndexTooLarge {
                index: config.sender_index,
            });
        }
        let tunn = Tunn::new(
            StaticSecret::from(config.private_key),
            PublicKey::from(config.gateway_public_key),
            None,
            None,
            config.sender_index,
            None,
        );
        Ok(Self {
            tunn,
            ident: (config.sender_index & 0xffff) as u16,
            config,
            buf: vec![0u8; BUF_LEN],
            phase: Phase::Idle,
            next_seq: 0,
            last_echo_at: None,
            responded_at: None,
            first_initiation_at: None,
            connected_at: None,
            handshake_attempts: 0,
            cookies_received: 0,
            echo_replies: 0,
        })
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Initiations sent so far (boringtun's retries included).
    pub fn handshake_attempts(&self) -> u32 {
        self.handshake_attempts
    }

    pub fn cookies_received(&self) -> u32 {
        self.cookies_received
    }

    pub fn echo_replies(&self) -> u64 {
        self.echo_replies
    }

    pub fn first_initiation_at(&self) -> Option<Instant> {
        self.first_initiation_at
    }

    /// First initiation to first echo reply.
    pub fn setup_latency(&self) -> Option<Duration> {
        let connected = self.connected_at?;
        Some(connected.saturating_duration_since(self.first_initiation_at?))
    }

    /// Starts connecting: queues the first echo, which makes boringtun send an initiation.
    pub fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Connecting;
        self.send_echo(now, out);
    }

    /// Sends one echo request through the tunnel (queued inside boringtun until a session exists).
    pub fn send_echo(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase == Phase::Failed || self.phase == Phase::Idle {
            return;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let packet = icmp::build(&Echo {
            kind: EchoKind::Request,
            src: self.config.tunnel_ip,
            dst: self.config.gateway_tunnel_ip,
            ident: self.ident,
            seq,
            payload: ECHO_PAYLOAD.to_vec(),
        });
        self.last_echo_at = Some(now);
        out.push(Action::Record(SessionEvent::EchoSent { seq }));
        let mut sends = Vec::new();
        match self.tunn.encapsulate(&packet, &mut self.buf) {
            TunnResult::WriteToNetwork(p) => sends.push(p.to_vec()),
            TunnResult::Err(e) => tracing::debug!(error = ?e, "encapsulating echo"),
            _ => {}
        }
        self.emit_sends(now, sends, out);
    }

    /// Runs boringtun's timers and this session's own retries; call at least every 250 ms.
    pub fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Idle | Phase::Failed) {
            return;
        }
        if self.phase == Phase::Connecting {
            let since = self.first_initiation_at.unwrap_or(now);
            if now.saturating_duration_since(since) >= self.config.give_up_after {
                self.phase = Phase::Failed;
                out.push(Action::Record(SessionEvent::GaveUp));
                return;
            }
        }
        self.run_timers(now, out);
        if self.phase == Phase::Connecting && self.echo_due(now) {
            self.send_echo(now, out);
        }
    }

    /// Feeds one datagram received from the gateway.
    pub fn on_datagram(&mut self, now: Instant, datagram: &[u8], out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Idle | Phase::Failed) {
            return;
        }
        let kind = message_type(datagram);
        match kind {
            Some(MSG_INITIATION) => out.push(Action::Record(SessionEvent::InitiationReceived)),
            Some(MSG_RESPONSE) => out.push(Action::Record(SessionEvent::ResponseReceived)),
            Some(MSG_COOKIE_REPLY) => {
                self.cookies_received += 1;
                out.push(Action::Record(SessionEvent::CookieReceived));
            }
            _ => {}
        }
        // boringtun's timers must run before every decapsulate.
        self.run_timers(now, out);
        if self.phase == Phase::Failed {
            return;
        }
        let mut sends = Vec::new();
        let mut inner = None;
        let mut ok = false;
        match self.tunn.decapsulate(None, datagram, &mut self.buf) {
            TunnResult::WriteToNetwork(p) => {
                sends.push(p.to_vec());
                ok = true;
            }
            TunnResult::WriteToTunnelV4(p, _) => {
                inner = Some(p.to_vec());
                ok = true;
            }
            TunnResult::WriteToTunnelV6(..) => ok = true,
            TunnResult::Done => ok = true,
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, message_type = ?kind, "decapsulating");
            }
        }
        if ok && kind == Some(MSG_INITIATION) {
            // We answered as responder: the session is usable only after the gateway's first
            // data packet. Flushing the queue now would start a competing initiation.
            self.responded_at = Some(now);
        } else if ok && matches!(kind, Some(MSG_RESPONSE) | Some(MSG_DATA)) {
            // A session may have become current: send what boringtun queued (our echo).
            while let TunnResult::WriteToNetwork(p) =
                self.tunn.decapsulate(None, &[], &mut self.buf)
            {
                sends.push(p.to_vec());
            }
        }
        self.emit_sends(now, sends, out);
        if let Some(packet) = inner {
            self.on_inner_packet(now, &packet, out);
        }
    }

    fn echo_due(&self, now: Instant) -> bool {
        let waiting_as_responder = self
            .responded_at
            .is_some_and(|t| now.saturating_duration_since(t) < REKEY_TIMEOUT);
        if waiting_as_responder {
            return false;
        }
        match self.last_echo_at {
            Some(t) => now.saturating_duration_since(t) >= self.config.echo_retry,
            None => true,
        }
    }

    fn run_timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut sends = Vec::new();
        let mut expired = false;
        match self.tunn.update_timers(&mut self.buf) {
            TunnResult::WriteToNetwork(p) => sends.push(p.to_vec()),
            TunnResult::Err(WireGuardError::ConnectionExpired) => expired = true,
            TunnResult::Err(e) => tracing::debug!(error = ?e, "boringtun timers"),
            _ => {}
        }
        self.emit_sends(now, sends, out);
        if expired {
            self.on_expired(now, out);
        }
    }

    /// boringtun stopped retrying (its REKEY_ATTEMPT_TIME) or its keys aged out.
    fn on_expired(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase == Phase::Connecting {
            let since = self.first_initiation_at.unwrap_or(now);
            let left = self
                .config
                .give_up_after
                .saturating_sub(now.saturating_duration_since(since));
            if left < REKEY_TIMEOUT {
                // Another initiation could not be answered and retried in time: stop here.
                self.phase = Phase::Failed;
                out.push(Action::Record(SessionEvent::GaveUp));
                return;
            }
        }
        // Start over: an echo on an expired tunnel makes boringtun begin a new handshake.
        out.push(Action::Record(SessionEvent::HandshakeRestarted));
        self.responded_at = None;
        self.send_echo(now, out);
    }

    fn on_inner_packet(&mut self, now: Instant, packet: &[u8], out: &mut Vec<Action>) {
        let Ok(echo) = icmp::parse(packet) else {
            return;
        };
        let ours = echo.kind == EchoKind::Reply
            && echo.src == self.config.gateway_tunnel_ip
            && echo.dst == self.config.tunnel_ip
            && echo.ident == self.ident;
        if !ours {
            return;
        }
        self.echo_replies += 1;
        out.push(Action::Record(SessionEvent::EchoReply { seq: echo.seq }));
        if self.phase == Phase::Connecting {
            self.phase = Phase::Connected;
            self.connected_at = Some(now);
            if self.first_initiation_at.is_none() {
                self.first_initiation_at = Some(now);
            }
            let setup_latency = self.setup_latency().unwrap_or_default();
            out.push(Action::Record(SessionEvent::Connected { setup_latency }));
        }
    }

    /// Records what goes out (initiations are counted by their type byte, whoever made them).
    fn emit_sends(&mut self, now: Instant, sends: Vec<Vec<u8>>, out: &mut Vec<Action>) {
        for packet in sends {
            match message_type(&packet) {
                Some(MSG_INITIATION) => {
                    self.handshake_attempts += 1;
                    self.first_initiation_at.get_or_insert(now);
                    out.push(Action::Record(SessionEvent::InitiationSent));
                }
                Some(MSG_RESPONSE) => out.push(Action::Record(SessionEvent::ResponseSent)),
                _ => {}
            }
            out.push(Action::Send(packet));
        }
    }
}

/// The WireGuard message type of `datagram`, if it has a well-formed header.
pub fn message_type(datagram: &[u8]) -> Option<u8> {
    match datagram {
        [t @ 1..=4, 0, 0, 0, ..] => Some(*t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
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
                if let TunnResult::WriteToNetwork(p) = self.tunn.encapsulate(&reply, &mut self.buf)
                {
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

    #[test]
    fn message_type_needs_zero_reserved_bytes() {
        assert_eq!(message_type(&[1, 0, 0, 0, 9]), Some(1));
        assert_eq!(message_type(&[1, 0, 1, 0]), None);
        assert_eq!(message_type(&[5, 0, 0, 0]), None);
        assert_eq!(message_type(&[4]), None);
    }
}
