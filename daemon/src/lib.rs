//! jitwgd: a just-in-time WireGuard gateway. Modules are listed in the order a
//! handshake initiation travels through them: capture -> identify -> replay ->
//! lookup (store, api) -> install (dataplane) -> sweep (activity); `pipeline` strings the JIT
//! stages together, boot and push are the start-up and legacy paths, and `daemon`
//! wires it all up.
//!
//! Each `pub mod` line stands alone (separated by a blank line) on purpose: rustfmt sorts
//! `mod` lines only within a contiguous block, and would otherwise put them in
//! alphabetical order instead of packet order.

// Shared vocabulary: keys, peer documents, configuration, errors on one line.
pub mod peer;

pub mod config;

pub mod errors;

// The packet path, in the order a handshake initiation takes it.
pub mod capture;

pub mod identify;

pub mod identify_pool;

pub mod admission;

pub mod shield;

pub mod replay;

pub mod lookup;

pub mod store;

pub mod api;

pub mod channel;

pub mod install;

pub mod addresses;

pub mod dataplane;

pub mod sweep;

pub mod activity;

// The stages strung together for the JIT path.
pub mod pipeline;

// Start-up and the legacy path.
pub mod boot;

pub mod push;

// Wiring and observation.
pub mod daemon;

pub mod metrics;
