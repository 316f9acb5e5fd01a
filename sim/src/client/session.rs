//! One connection of one simulated client: a state machine around boringtun's `Tunn` that
//! takes datagrams and the current time in and hands back packets to send and events to
//! record. It does no IO, so two in-memory tunnels can drive it in tests.
//!
//! boringtun facts this relies on (checked in boringtun 0.7.1's `noise/timers.rs`): the
//! initiator retries an unanswered initiation after REKEY_TIMEOUT = 5 s (without
//! WireGuard's 0–333 ms jitter) and reports `ConnectionExpired` after REKEY_ATTEMPT_TIME
//! = 90 s. The session enforces its own `give_up_after` as well, and restarts boringtun's
//! handshake when boringtun expires earlier than that.
//!
//! Beside it: `session/events.rs` (what the session hands back), `session/message.rs` (WireGuard
//! message types by header) and `session/tests.rs` (the machine against an in-memory responder).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::icmp::{self, Echo, EchoKind};

mod events;
mod message;
#[cfg(test)]
mod tests;

pub use events::{Action, SessionEvent};
pub use message::{message_type, MSG_COOKIE_REPLY, MSG_DATA, MSG_INITIATION, MSG_RESPONSE};

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
