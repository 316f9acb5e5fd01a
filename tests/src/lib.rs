//! Harness for the end-to-end tests of `jitwgd`: a [`Gateway`] fixture that builds real
//! namespaces, a wireguard-go data plane, the testbed control plane and the real daemon
//! binary, plus stock and boringtun clients to knock on it. Everything is torn down in
//! `Drop`, names are unique per fixture, so tests run in parallel.

pub mod error;
pub mod gateway;
pub mod knock;

pub mod prereq;

pub use error::HarnessError;
pub use gateway::{ChannelTamper, Gateway, GatewayOptions, Pinger, StockClient};
pub use jitwg::lab::PeerState;
pub use jitwg::run::prometheus::Scrape;
pub use knock::Knocker;
pub use prereq::{daemon_binary, prerequisites_met};

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 32 random bytes: a WireGuard private key (x25519 clamps it on use).
pub fn random_key() -> [u8; 32] {
    rand::random()
}

/// The x25519 public key of `private`.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    let secret = boringtun::x25519::StaticSecret::from(*private);
    boringtun::x25519::PublicKey::from(&secret).to_bytes()
}
