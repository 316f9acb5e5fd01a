//! Simulated WireGuard clients.
