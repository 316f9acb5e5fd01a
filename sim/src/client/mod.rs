//! Simulated WireGuard clients: thousands of boringtun `Tunn`s over plain UDP sockets, each
//! from its own source address, proving their tunnel with an ICMP echo and measuring setup
//! latency as the brief defines it.
//!
//! Code map: [`icmp`] builds and parses echo packets, [`link`] decides each packet's delay and
//! loss and [`delay`] applies them on one timer thread, [`session`] is one connection's protocol state machine (no IO, time passed in),
//! [`eventlog`] writes the per-event JSON lines, [`socket`] binds sockets and reads datagrams
//! with their kernel receive time, [`rxlag`] aggregates how late they were read, [`prepare`] readies a connection before
//! its client arrives, and [`fleet`]
//! owns sockets, tasks and timers.

pub mod attack;
pub mod delay;
pub mod eventlog;
pub mod fleet;
pub mod icmp;
pub mod link;
pub mod prepare;
pub mod rxlag;
pub mod session;
pub mod socket;

pub use fleet::{
    run_fleet, ClientError, FleetClient, FleetConfig, FleetProgress, ProgressSnapshot,
};
pub use prepare::{prepare_lead, PREPARE_AHEAD};
pub use socket::bind_source;
