//! jitwg
pub mod scenario;
pub mod client;
pub mod controlplane;
