//! The install worker's eyes on the cookie replies the data plane sends. wireguard-go (at 128
//! queued handshakes) and the kernel (at 512) answer with cookie replies only while under
//! load, and that is exactly the state in which the responses to the gateway's own
//! initiations are refused. Each reply's destination and receiver index go to the install
//! worker, which initiates again to a client whose response was refused (`refusals`: the
//! client holds a cookie now); the running count feeds the adaptive pacer
//! (`--initiate-adapt`). They are seen on an AF_PACKET socket whose kernel filter
//! (`capture::bpf::cookie_reply_filter`) passes only UDP messages of type 3 from the
//! gateway's port, so nothing else is copied to user space.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use std::net::SocketAddr;

use crate::capture::frame::parse_datagram;
use crate::capture::{bpf, CaptureError, CaptureSocket};
use crate::errors::Causes;

use super::InstallQueue;

/// A cookie reply's WireGuard message: type and reserved (4), receiver index (4), nonce
/// (24), encrypted cookie (16 + 16).
const COOKIE_REPLY_LEN: usize = 64;

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

/// The destination and receiver index of a cookie reply as the socket hands it over
/// (from the IP header on); None for anything else. Pure.
pub fn cookie_reply_target(packet: &[u8]) -> Option<(SocketAddr, u32)> {
    let datagram = parse_datagram(packet).ok()?;
    let message = datagram.payload;
    if message.len() != COOKIE_REPLY_LEN || message.get(..4)? != [3, 0, 0, 0] {
        return None;
    }
    let index = u32::from_le_bytes(message.get(4..8)?.try_into().ok()?);
    Some((datagram.dst, index))
}

/// Hands every cookie reply `socket` sees to `queue` and counts it into `count` until
/// `cancel` (or the install worker stops). A receive error ends the watch (logged once) but
/// not the daemon: refused responses then wait for the data plane's own retransmit, and the
/// adaptive pacer sees no cookies and behaves like a fixed-rate one.
pub async fn watch_cookie_replies(
    socket: CaptureSocket,
    count: Option<Arc<AtomicU64>>,
    queue: InstallQueue,
    cancel: CancellationToken,
) {
    let mut buf = [0u8; COOKIE_BUFFER];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            received = socket.recv(&mut buf) => match received {
                Ok(n) => {
                    if let Some(count) = &count {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some((endpoint, index)) = cookie_reply_target(&buf[..n.min(buf.len())]) {
                        if !queue.cookie_reply(endpoint, index) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %Causes(&e), "watching the data plane's cookie replies stopped; refused responses wait for its own retransmit");
                    cancel.cancelled().await;
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// An IPv4 packet from the gateway's port 51820 to `dst` carrying `payload`.
    fn ipv4_udp(dst: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
        jitwg_testsupport::ipv4_udp(
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 51820),
            SocketAddrV4::new(dst.into(), dst_port),
            payload,
        )
    }

    #[test]
    fn a_cookie_reply_names_its_client_and_index() {
        let mut reply = vec![3, 0, 0, 0];
        reply.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        reply.resize(COOKIE_REPLY_LEN, 0xaa);
        let packet = ipv4_udp([198, 18, 1, 9], 40_000, &reply);
        assert_eq!(
            cookie_reply_target(&packet),
            Some(("198.18.1.9:40000".parse().unwrap(), 0x0102_0304))
        );
    }

    #[test]
    fn other_messages_are_not_cookie_replies() {
        let mut response = vec![2, 0, 0, 0];
        response.resize(92, 0);
        assert_eq!(
            cookie_reply_target(&ipv4_udp([198, 18, 1, 9], 1, &response)),
            None
        );
        let mut short = vec![3, 0, 0, 0];
        short.resize(COOKIE_REPLY_LEN - 1, 0);
        assert_eq!(
            cookie_reply_target(&ipv4_udp([198, 18, 1, 9], 1, &short)),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = cookie_reply_target(&bytes);
        }
    }
}
