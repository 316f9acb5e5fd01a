//! What a [`Session`](super::Session) hands back to its caller: datagrams to send and events to
//! record. Kept apart from the state machine because the fleet and the event log depend on
//! this vocabulary, not on how the session decides.

use std::time::Duration;

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
