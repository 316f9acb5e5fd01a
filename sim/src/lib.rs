//! jitwg, the scenario driver: builds the lab, starts the real daemon, data plane and control plane,
//! runs simulated clients and writes results. `main.rs` is a thin CLI over this library.

pub mod bundle;
pub mod capture;
pub mod cli;
pub mod client;
pub mod controlplane;
pub mod lab;
pub mod plan;
pub mod private_file;
pub mod rerun;
pub mod run;
pub mod scenario;
pub mod shard;
pub mod sweep;
pub mod timeline;
