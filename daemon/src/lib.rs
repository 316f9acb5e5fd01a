//! jitwgd: a just-in-time WireGuard gateway. Modules are listed in the order a
//! handshake initiation travels through them: capture -> identify -> replay ->
//! lookup (store, api) -> install (dataplane) -> sweep; boot and push are the
//! start-up and legacy paths; daemon wires it all together.

pub mod peer;

pub mod config;

pub mod api;
pub mod boot;
pub mod capture;
pub mod dataplane;
pub mod identify;
pub mod install;
pub mod lookup;
pub mod push;
pub mod replay;
pub mod store;
pub mod sweep;

pub mod daemon;
pub mod metrics;
