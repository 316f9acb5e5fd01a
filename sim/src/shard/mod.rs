//! Sharded runs: the client fleet split over processes and machines, against one gateway.
//!
//! - [`gateway`]: `jitwg gateway`, the lab on a host's own interface plus the shard API;
//! - [`fleet`]: `jitwg fleet`, shard `I/N` of the scenario's clients;
//! - [`merge`]: `jitwg merge`, the shards' results and the gateway's series in one file, with
//!   percentiles from merged HDR histograms;
//! - [`local`]: `jitwg run --shards N`, the same split on one machine in namespaces;
//! - [`spec`] holds the pure rules (which clients, which sources, clock offset), [`api`] the
//!   shard API both sides speak.
//!
//! **Invariant:** a fleet sends only to the gateway address and control-plane URL it is given.

pub mod api;
pub mod cli;
pub mod fleet;
pub mod gateway;
pub mod local;
pub mod merge;
pub mod spec;
