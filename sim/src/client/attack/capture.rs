//! What a replaying attacker sees on the wire: an AF_PACKET socket on the client namespace's
//! link to the gateway, keeping the newest handshake initiations legitimate clients sent (not
//! the attackers' own), for [`super`] to send again from other addresses. `parse` is pure.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::packets::{Initiation, INITIATION_LEN};

/// Captured initiations kept (the newest): replaying these is as good as replaying all.
const KEEP: usize = 4096;
/// How long one `recv` waits, so the capture notices it should stop.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// Why the capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("interface {0:?} not found in the client namespace")]
    Interface(String),
    #[error("opening the AF_PACKET capture socket")]
    Socket(#[source] std::io::Error),
    #[error("binding the capture socket to {interface}")]
    Bind {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// Initiations captured so far, newest last, shared with the replaying sender.
#[derive(Debug, Default)]
pub struct Captured {
    packets: Mutex<VecDeque<Initiation>>,
}

impl Captured {
    fn push(&self, packet: Initiation) {
        if let Ok(mut q) = self.packets.lock() {
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(packet);
        }
    }

    /// Captured initiation number `n`, cycling over those held; `None` before the first.
    pub fn get(&self, n: u64) -> Option<Initiation> {
        let q = self.packets.lock().ok()?;
        let len = q.len() as u64;
        (len > 0).then(|| q[(n % len) as usize])
    }

    pub fn len(&self) -> usize {
        self.packets.lock().map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The initiation in an IP packet from a source not in `exclude` to UDP port `port`.
pub fn parse(ip: &[u8], port: u16, exclude: &HashSet<IpAddr>) -> Option<Initiation> {
    let (source, udp) = match ip.first()? >> 4 {
        4 => {
            let header = usize::from(ip[0] & 0x0f) * 4;
            if *ip.get(9)? != 17 || header < 20 {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(src)), ip.get(header..)?)
        }
        6 => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(src)), ip.get(40..)?)
        }
        _ => return None,
    };
    let dst_port = u16::from_be_bytes(udp.get(2..4)?.try_into().ok()?);
    let payload = udp.get(8..)?;
    if dst_port != port || payload.len() != INITIATION_LEN || payload[..4] != [1, 0, 0, 0] {
        return None;
    }
    if exclude.contains(&source) {
        return None;
    }
    Initiation::try_from(payload).ok()
}

/// An open capture on one interface of the calling thread's namespace.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Opens the capture on `interface` (in the caller's namespace).
    pub fn open(interface: &str) -> Result<Capture, CaptureError> {
        let name = std::ffi::CString::new(interface)
            .map_err(|_| CaptureError::Interface(interface.into()))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string we own.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(CaptureError::Interface(interface.into()));
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(protocol)) };
        if raw < 0 {
            return Err(CaptureError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: RECV_TIMEOUT.as_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt reads `timeout`, which outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::addr_of!(timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(CaptureError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: bind reads `addr` for the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(CaptureError::Bind {
                interface: interface.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Capture { fd })
    }

    /// Keeps the initiations to `port` from sources outside `exclude` in `into` until `stop`.
    pub fn run(
        self,
        port: u16,
        exclude: &HashSet<IpAddr>,
        into: &Arc<Captured>,
        stop: &AtomicBool,
    ) -> u64 {
        let mut buf = [0u8; 2048];
        let mut seen = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: recv writes at most `buf.len()` bytes into our buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else {
                continue; // timeout or EINTR: look at `stop` again
            };
            if let Some(packet) = parse(&buf[..n.min(buf.len())], port, exclude) {
                into.push(packet);
                seen += 1;
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_udp(src: [u8; 4], port: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[198, 19, 0, 1]);
        p.extend_from_slice(&[0x30, 0x39]);
        p.extend_from_slice(&port.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(payload);
        p
    }

    fn initiation_bytes() -> Vec<u8> {
        let mut b = vec![7u8; INITIATION_LEN];
        b[..4].copy_from_slice(&[1, 0, 0, 0]);
        b
    }

    #[test]
    fn keeps_initiations_to_the_port_from_others() {
        let none = HashSet::new();
        let p = ipv4_udp([198, 18, 1, 2], 51820, &initiation_bytes());
        assert!(parse(&p, 51820, &none).is_some());
        assert!(parse(&p, 51821, &none).is_none());
        let own: HashSet<IpAddr> = [IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2))].into();
        assert!(parse(&p, 51820, &own).is_none());
        let mut response = initiation_bytes();
        response[0] = 2;
        assert!(parse(&ipv4_udp([198, 18, 1, 2], 51820, &response), 51820, &none).is_none());
        assert!(parse(
            &ipv4_udp([198, 18, 1, 2], 51820, &[1, 0, 0, 0]),
            51820,
            &none
        )
        .is_none());
    }

    #[test]
    fn never_panics_on_short_or_odd_packets() {
        let none = HashSet::new();
        for len in 0..80 {
            let mut p = vec![0x45u8; len];
            let _ = parse(&p, 51820, &none);
            if let Some(b) = p.first_mut() {
                *b = 0x60;
            }
            let _ = parse(&p, 51820, &none);
            if let Some(b) = p.first_mut() {
                *b = 0x4f;
            }
            let _ = parse(&p, 51820, &none);
        }
    }

    #[test]
    fn captured_keeps_the_newest_and_cycles() {
        let c = Captured::default();
        assert!(c.get(0).is_none());
        for i in 0..(KEEP + 2) {
            let mut p = [0u8; INITIATION_LEN];
            p[4..12].copy_from_slice(&(i as u64).to_le_bytes());
            c.push(p);
        }
        assert_eq!(c.len(), KEEP);
        let first = c.get(0).unwrap();
        assert_eq!(u64::from_le_bytes(first[4..12].try_into().unwrap()), 2);
    }
}
