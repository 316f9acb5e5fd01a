//! jitwgd: a just-in-time WireGuard gateway. Modules are listed in the order a
//! handshake initiation travels through them: capture -> identify -> replay ->
//! lookup (store, api) -> install (dataplane) -> sweep; boot and push are the
//! start-up and legacy paths; daemon wires it all together.

pub mod peer;

pub mod config;

pub mod capture;
pub mod identify;
pub mod replay;
pub mod store;
pub mod api;
pub mod lookup;
pub mod dataplane;
pub mod install;
pub mod sweep;
pub mod boot;
pub mod push;

pub mod metrics;
pub mod daemon;
