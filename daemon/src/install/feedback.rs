//! The adaptive initiation pacer's eyes: a count of the cookie replies the data plane sends.
//! wireguard-go (at 128 queued handshakes) and the kernel (at 512) answer with cookie
//! replies only while under load, and that is exactly the state in which the responses to
//! the gateway's own initiations are refused; so "cookie replies are leaving" is the signal
//! to slow role inversion down. They are seen on an AF_PACKET socket whose kernel filter
//! (`capture::bpf::cookie_reply_filter`) passes only UDP messages of type 3 from the
//! gateway's port, so nothing else is copied to user space.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::capture::{bpf, CaptureError, CaptureSocket};
use crate::errors::Causes;

/// Cookie replies are 64 bytes of WireGuard after the IP and UDP headers; only the count
/// matters, so a short buffer is enough (the kernel cuts what does not fit).
const COOKIE_BUFFER: usize = 128;

/// Opens the cookie-reply capture on `interface` (None = every interface) for the data
/// plane's UDP `port`. Needs CAP_NET_RAW; must be called inside a tokio runtime.
pub fn open_cookie_watch(
    interface: Option<&str>,
    port: u16,
) -> Result<CaptureSocket, CaptureError> {
    CaptureSocket::open_filtered(interface, &bpf::cookie_reply_filter(port))
}

/// Counts every cookie reply `socket` sees into `count` until `cancel`. A receive error
/// ends the count (logged once) but not the daemon: the pacer then sees no cookies and
/// behaves like a fixed-rate one that may climb to its ceiling.
pub async fn count_cookie_replies(
    socket: CaptureSocket,
    count: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut buf = [0u8; COOKIE_BUFFER];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            received = socket.recv(&mut buf) => match received {
                Ok(_) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %Causes(&e), "counting the data plane's cookie replies stopped; role-inversion pacing no longer adapts");
                    cancel.cancelled().await;
                    return;
                }
            },
        }
    }
}
