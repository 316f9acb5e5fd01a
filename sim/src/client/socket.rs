//! The clients' sockets: each bound to its client's own source address, with the kernel's
//! receive timestamp on every datagram (`SO_TIMESTAMPNS`) so the driver can tell how long an
//! answer from the gateway waited in the socket before a client read it (receive lag, see
//! `jitwg_reports::load`), and the open-files limit thousands of sockets need.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, RecvMsg};
use nix::sys::time::TimeSpec;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Descriptors per client (its socket), and for everything else.
const FILES_PER_CLIENT: u64 = 1;
const FILES_SPARE: u64 = 4096;

/// Raise the open-files limit to what `clients` need, past the hard limit when allowed (root;
/// capped by `fs.nr_open`): 10,000 clients need ~24,000, and a hard limit of 20,000 made
/// hundreds of them fail to bind ("Too many open files") and count as failures.
pub(super) fn raise_open_files_limit(clients: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "reading RLIMIT_NOFILE");
        return;
    }
    let needed = (clients as u64)
        .saturating_mul(FILES_PER_CLIENT)
        .saturating_add(FILES_SPARE);
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(limit.rlim_max);
    let want_max = limit.rlim_max.max(needed.min(ceiling));
    for max in [want_max, limit.rlim_max] {
        if limit.rlim_cur >= max {
            return;
        }
        let wanted = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0 {
            tracing::debug!(from = limit.rlim_cur, to = max, "raised RLIMIT_NOFILE");
            return;
        }
        tracing::debug!(error = %std::io::Error::last_os_error(), to = max, "raising RLIMIT_NOFILE");
    }
    tracing::warn!(
        needed,
        "could not raise RLIMIT_NOFILE: some clients may fail to bind"
    );
}

/// A UDP socket on `ip`, any port; falls back to IP_FREEBIND when the address is not local
/// (the client namespace normally has a local route for the whole source range).
/// Must run inside a tokio runtime.
pub fn bind_source(ip: Ipv4Addr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    let addr: SocketAddr = SocketAddrV4::new(ip, 0).into();
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            socket.set_freebind(true)?;
            socket.bind(&addr.into())?;
        }
        Err(e) => return Err(e),
    }
    UdpSocket::from_std(socket.into())
}

/// Asks the kernel to stamp every datagram `socket` receives with the time it arrived
/// (`CLOCK_REALTIME`, taken when the packet entered the client namespace's stack).
pub fn enable_receive_timestamps(socket: &UdpSocket) -> std::io::Result<()> {
    setsockopt(socket, sockopt::ReceiveTimestampns, &true).map_err(std::io::Error::from)
}

/// One datagram read by [`recv_stamped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// When the kernel received it; `None` when the socket does not stamp (see
    /// [`enable_receive_timestamps`]) or the stamp did not fit `control`.
    pub kernel_at: Option<SystemTime>,
}

/// Room for one receive timestamp; pass one per socket to [`recv_stamped`].
pub fn control_buffer() -> Vec<u8> {
    nix::cmsg_space!(TimeSpec)
}

/// Reads one datagram into `buf` with its kernel receive timestamp (if any) read from the
/// control messages into `control`. Cancel-safe like `UdpSocket::recv_from`: a datagram is
/// only taken off the socket by the synchronous read inside, never across an await.
pub async fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<Received> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(buf)];
            let message: RecvMsg<'_, '_, ()> = recvmsg(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut *control),
                MsgFlags::MSG_DONTWAIT,
            )?;
            Ok(Received {
                len: message.bytes,
                kernel_at: message.cmsgs().ok().and_then(|mut messages| {
                    messages.find_map(|m| match m {
                        ControlMessageOwned::ScmTimestampns(at) => system_time(at),
                        _ => None,
                    })
                }),
            })
        })
        .await
}

/// A timestamp the kernel wrote, as a `SystemTime`; `None` for one before 1970 (never written).
fn system_time(at: TimeSpec) -> Option<SystemTime> {
    let secs = u64::try_from(at.tv_sec()).ok()?;
    let nanos = u32::try_from(at.tv_nsec()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// How long a datagram stamped `kernel_at` waited until it was read at `read_at` (both on the
/// real-time clock); zero if the clock stepped back in between.
pub fn receive_lag(kernel_at: SystemTime, read_at: SystemTime) -> Duration {
    read_at.duration_since(kernel_at).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_lag_is_read_time_minus_stamp_and_never_negative() {
        let stamp = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lag = receive_lag(stamp, stamp + Duration::from_micros(1_833_000));
        assert_eq!(lag, Duration::from_millis(1_833));
        assert_eq!(
            receive_lag(stamp, stamp - Duration::from_millis(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn kernel_timestamps_convert_and_pre_epoch_ones_are_refused() {
        let at = TimeSpec::new(1_800_000_000, 5);
        assert_eq!(
            system_time(at),
            Some(UNIX_EPOCH + Duration::new(1_800_000_000, 5))
        );
        assert_eq!(system_time(TimeSpec::new(-1, 0)), None);
    }

    /// Loopback only: a real socket with timestamps on stamps what it receives, no later than
    /// it was read, and a socket without them reports no stamp.
    #[tokio::test]
    async fn a_stamping_socket_reports_when_the_kernel_received_each_datagram() {
        let stamped = bind_source(Ipv4Addr::LOCALHOST).unwrap();
        enable_receive_timestamps(&stamped).unwrap();
        let plain = bind_source(Ipv4Addr::LOCALHOST).unwrap();
        let sender = bind_source(Ipv4Addr::LOCALHOST).unwrap();
        let (mut buf, mut control) = (vec![0u8; 64], control_buffer());
        for (socket, expect_stamp) in [(&stamped, true), (&plain, false)] {
            let before = SystemTime::now();
            sender
                .send_to(b"hello", socket.local_addr().unwrap())
                .await
                .unwrap();
            let got = recv_stamped(socket, &mut buf, &mut control).await.unwrap();
            let read_at = SystemTime::now();
            assert_eq!((got.len, &buf[..5]), (5, &b"hello"[..]));
            assert_eq!(got.kernel_at.is_some(), expect_stamp, "{got:?}");
            if let Some(at) = got.kernel_at {
                assert!(
                    before <= at && at <= read_at,
                    "{before:?} {at:?} {read_at:?}"
                );
            }
        }
    }
}
