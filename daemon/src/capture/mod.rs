//! Capture: the front of the JIT pipeline. A kernel BPF filter (`bpf`) passes only
//! WireGuard handshake initiations to the gateway's UDP port into an AF_PACKET socket
//! (`socket`, the only IO here); `frame` turns each packet into a 4-tuple and payload.
//! The data plane still receives every packet itself: capture only watches.

pub mod bpf;
pub mod frame;
pub mod socket;
mod wire;

pub use frame::{parse_datagram, Captured, FrameError};
pub use socket::{CaptureError, CaptureSocket};

/// A receive buffer size that holds any IP packet short of a jumbogram (IPv4's total
/// length field tops out here); initiations need under 200 bytes.
pub const RECV_BUFFER_LEN: usize = 65_536;
