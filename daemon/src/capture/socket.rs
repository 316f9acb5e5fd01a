//! The one IO part of capture: an AF_PACKET SOCK_DGRAM socket that sees every IP
//! packet arriving on an interface (or all interfaces) before any UDP socket does,
//! narrowed in the kernel by the initiation filter, read asynchronously via tokio.
//!
//! Order of operations matters: the socket is created with protocol 0 (it receives
//! nothing yet), the filter is attached, anything queued so far is drained, and only
//! then is it bound to ETH_P_ALL on the interface. No unfiltered packet is ever read.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use super::bpf;

/// A failed system call while opening or reading the capture socket.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("socket(AF_PACKET, SOCK_DGRAM) failed (needs CAP_NET_RAW)")]
    Socket(#[source] io::Error),
    #[error("attaching the BPF filter (SO_ATTACH_FILTER) failed")]
    AttachFilter(#[source] io::Error),
    #[error("draining packets queued before the filter was attached failed")]
    Drain(#[source] io::Error),
    #[error("interface name {0:?} contains a NUL byte")]
    InterfaceName(String),
    #[error("no interface named {name:?} (if_nametoindex failed)")]
    InterfaceIndex {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("bind(AF_PACKET) failed")]
    Bind(#[source] io::Error),
    #[error("registering the capture socket with tokio failed")]
    Register(#[source] io::Error),
    #[error("recv on the capture socket failed")]
    Recv(#[source] io::Error),
}

/// A kernel-filtered stream of handshake initiations to one UDP port, as IP packets.
#[derive(Debug)]
pub struct CaptureSocket {
    fd: AsyncFd<OwnedFd>,
}

impl CaptureSocket {
    /// Open the capture on `interface` (None = every interface) for initiations to
    /// UDP `port`. Needs CAP_NET_RAW. Must be called inside a tokio runtime.
    pub fn open(interface: Option<&str>, port: u16) -> Result<CaptureSocket, CaptureError> {
        Self::open_filtered(interface, &bpf::initiation_filter(port))
    }

    /// Open a capture on `interface` (None = every interface) of what `filter` accepts
    /// (e.g. `bpf::cookie_reply_filter`). Needs CAP_NET_RAW. Must be called inside a tokio
    /// runtime.
    pub fn open_filtered(
        interface: Option<&str>,
        filter: &[libc::sock_filter],
    ) -> Result<CaptureSocket, CaptureError> {
        let ifindex = match interface {
            None => 0,
            Some(name) => interface_index(name)?,
        };
        let fd = packet_socket()?;
        socket2::SockRef::from(&fd)
            .attach_filter(filter)
            .map_err(CaptureError::AttachFilter)?;
        drain(&fd)?;
        bind(&fd, ifindex)?;
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open, and its
        // as_raw_fd() returns the same descriptor, until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| CaptureError::Register(e.into()))?;
        Ok(CaptureSocket { fd })
    }

    /// Wait for the next accepted packet and copy it into `buf`, starting at the IP
    /// header. Returns the number of bytes written (a packet longer than `buf` is cut).
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize, CaptureError> {
        loop {
            let mut guard = self.fd.readable().await.map_err(CaptureError::Recv)?;
            match guard.try_io(|fd| recv_nonblocking(fd.get_ref(), buf)) {
                Ok(result) => return result.map_err(CaptureError::Recv),
                Err(_would_block) => continue,
            }
        }
    }
}

fn interface_index(name: &str) -> Result<i32, CaptureError> {
    let c_name = CString::new(name).map_err(|_| CaptureError::InterfaceName(name.to_owned()))?;
    // SAFETY: c_name is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(CaptureError::InterfaceIndex {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    i32::try_from(index).map_err(|_| CaptureError::InterfaceIndex {
        name: name.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidData),
    })
}

/// An AF_PACKET SOCK_DGRAM socket with protocol 0: it receives nothing until bound.
fn packet_socket() -> Result<OwnedFd, CaptureError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(CaptureError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: raw is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Throw away anything that reached the socket before the filter was attached.
fn drain(fd: &OwnedFd) -> Result<(), CaptureError> {
    let mut scratch = [0u8; 64];
    loop {
        match recv_nonblocking(fd, &mut scratch) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CaptureError::Drain(e)),
        }
    }
}

fn bind(fd: &OwnedFd, ifindex: i32) -> Result<(), CaptureError> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex;
    // SAFETY: addr is a valid sockaddr_ll and the length passed matches its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(CaptureError::Bind(io::Error::last_os_error()));
    }
    Ok(())
}

fn recv_nonblocking(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes for the whole call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // n is non-negative here, so the conversion cannot fail.
    Ok(usize::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::frame::parse_datagram;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Returns false (skip) when unprivileged outside CI; fails loudly in CI.
    fn require_root() -> bool {
        if is_root() {
            return true;
        }
        jitwg_testsupport::require(&["root (capture socket test)"])
    }

    #[test]
    fn unknown_interface_is_reported() {
        let err = interface_index("jwt-no-such-if").unwrap_err();
        assert!(matches!(err, CaptureError::InterfaceIndex { .. }));
        let err = interface_index("a\0b").unwrap_err();
        assert!(matches!(err, CaptureError::InterfaceName(_)));
    }

    #[tokio::test]
    async fn sees_only_initiations_on_loopback() {
        if !require_root() {
            return;
        }
        // A listener so the port is ours and the kernel does not answer with ICMP.
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let capture = CaptureSocket::open(Some("lo"), port).unwrap();

        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender_addr = sender.local_addr().unwrap();
        sender
            .send_to(&[1, 0xaa, 0xbb], ("127.0.0.1", port))
            .unwrap();
        sender.send_to(&[2, 0xcc], ("127.0.0.1", port)).unwrap();

        // Collect for a while; other processes may use loopback too, so keep only
        // packets from our sender.
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(result) = tokio::time::timeout_at(deadline, capture.recv(&mut buf)).await {
            let n = result.unwrap();
            let captured = parse_datagram(&buf[..n]).unwrap();
            if captured.src == sender_addr {
                seen.push(captured.payload.to_vec());
            }
        }
        assert_eq!(seen, vec![vec![1, 0xaa, 0xbb]]);
    }
}
