//! The AF_PACKET socket the capture reads the gateway's uplink from: cooked (`SOCK_DGRAM`,
//! packets start at the IP header, as pcapng's `LINKTYPE_RAW` and jitwgd's own frame parser
//! expect), every protocol, both directions, bound to one interface. Each packet comes with
//! the kernel's receive timestamp. The only `unsafe` of the capture: the socket calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Bytes kept of each packet: every WireGuard message whole (the largest data packet on a
/// 1420-byte MTU tunnel plus headers fits).
pub const SNAPLEN: u32 = 2048;
/// How long one `recv` waits, so the capture thread notices it was told to stop.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// Kernel buffer for bursts (a storm's initiations arrive faster than a file takes them).
const RECV_BUFFER: libc::c_int = 32 << 20;
/// `SIOCGSTAMPNS` (linux/sockios.h): the last packet's receive time, in nanoseconds.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// One received packet: its length in the buffer, on the wire, and when the kernel got it.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub original_len: u32,
    /// Since the Unix epoch.
    pub timestamp: Duration,
}

/// A bound capture socket (in whatever namespace it was opened in).
#[derive(Debug)]
pub struct UplinkSocket {
    fd: OwnedFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn packet_socket(protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the returned descriptor is owned by the OwnedFd.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::c_int::from(protocol.to_be()),
        )
    })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Whether this process may open packet sockets at all (CAP_NET_RAW). Receives nothing.
pub fn check_permission() -> io::Result<()> {
    packet_socket(0).map(drop)
}

impl UplinkSocket {
    /// Opens and binds the socket to `interface` (in the calling thread's namespace).
    pub fn open(interface: &str) -> io::Result<UplinkSocket> {
        let name = std::ffi::CString::new(interface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: `name` is a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = packet_socket(ETH_P_ALL)?;
        // A larger buffer than the default; SO_RCVBUFFORCE (root) past rmem_max, else best effort.
        if set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RECV_BUFFER).is_err() {
            let _ = set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RECV_BUFFER);
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: RECV_TIMEOUT.as_micros() as libc::suseconds_t,
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
        // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = index as libc::c_int;
        // SAFETY: `addr` is a sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(UplinkSocket { fd })
    }

    /// Receives one IP packet into `buf`; `None` when the timeout passed or the frame was not
    /// IP (ARP and the like are not part of the story).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: zeroed sockaddr_ll is valid; recvfrom fills at most `addr_len` bytes of it.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut addr_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` is valid for `buf.len()` bytes; MSG_TRUNC makes the return value the
        // packet's full length while at most `buf.len()` bytes are written.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut addr_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let protocol = u16::from_be(addr.sll_protocol);
        if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
            return Ok(None);
        }
        let full = n as usize;
        Ok(Some(Received {
            len: full.min(buf.len()),
            original_len: u32::try_from(full).unwrap_or(u32::MAX),
            timestamp: self.last_timestamp(),
        }))
    }

    /// The kernel's receive time of the last packet; the current time if it cannot say.
    fn last_timestamp(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: SIOCGSTAMPNS writes one timespec into `ts`.
        let ok = unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) } == 0;
        if ok && ts.tv_sec > 0 {
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        }
    }

    /// Packets the kernel dropped because the buffer was full (since the last call).
    pub fn kernel_drops(&self) -> u64 {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: PACKET_STATISTICS writes one tpacket_stats of the size passed.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if ret == 0 {
            u64::from(stats.tp_drops)
        } else {
            0
        }
    }
}
