//! Turns one captured IP packet (as an AF_PACKET SOCK_DGRAM socket hands it over:
//! starting at the IP header) into the UDP 4-tuple and payload. Pure: bytes in,
//! borrowed values out. The source address matters: it becomes the peer's endpoint.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::wire::{
    IPPROTO_UDP, IPV4_FRAGMENT_OFFSET, IPV4_MIN_HEADER, IPV4_MORE_FRAGMENTS, IPV6_HEADER,
    UDP_HEADER,
};

/// A UDP datagram found in a captured packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Captured<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The UDP payload, exactly as long as the UDP header says.
    pub payload: &'a [u8],
}

/// Why a captured packet is not a usable UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("packet shorter than its IP header")]
    TruncatedIpHeader,
    #[error("IPv4 header length {0} bytes is below the minimum of 20")]
    Ipv4HeaderLength(usize),
    #[error("IPv4 fragment: the datagram is incomplete")]
    Fragment,
    #[error("IP protocol / next header {0} is not UDP")]
    NotUdp(u8),
    #[error("packet shorter than its UDP header")]
    TruncatedUdpHeader,
    #[error("UDP length {0} is below the header size of 8")]
    UdpLength(u16),
    #[error("UDP length {udp_length} runs past the {available} captured bytes")]
    TruncatedPayload { udp_length: u16, available: usize },
}

/// Parse an IPv4 (options allowed, unfragmented) or IPv6 (UDP as the first next
/// header) packet carrying UDP. The payload is bounded by the UDP length field; a
/// UDP length that runs past the captured bytes is an error, never a silent cut.
pub fn parse_datagram(packet: &[u8]) -> Result<Captured<'_>, FrameError> {
    let first = *packet.first().ok_or(FrameError::Empty)?;
    let (src, dst, udp) = match first >> 4 {
        4 => parse_ipv4(packet)?,
        6 => parse_ipv6(packet)?,
        other => return Err(FrameError::Version(other)),
    };
    let header = udp
        .get(..UDP_HEADER)
        .ok_or(FrameError::TruncatedUdpHeader)?;
    let src_port = u16::from_be_bytes([header[0], header[1]]);
    let dst_port = u16::from_be_bytes([header[2], header[3]]);
    let udp_length = u16::from_be_bytes([header[4], header[5]]);
    if usize::from(udp_length) < UDP_HEADER {
        return Err(FrameError::UdpLength(udp_length));
    }
    let payload =
        udp.get(UDP_HEADER..usize::from(udp_length))
            .ok_or(FrameError::TruncatedPayload {
                udp_length,
                available: udp.len(),
            })?;
    Ok(Captured {
        src: SocketAddr::new(src, src_port),
        dst: SocketAddr::new(dst, dst_port),
        payload,
    })
}

type Addresses<'a> = (std::net::IpAddr, std::net::IpAddr, &'a [u8]);

/// Returns source, destination and everything from the UDP header on.
fn parse_ipv4(packet: &[u8]) -> Result<Addresses<'_>, FrameError> {
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if header_len < IPV4_MIN_HEADER {
        return Err(FrameError::Ipv4HeaderLength(header_len));
    }
    let header = packet
        .get(..header_len)
        .ok_or(FrameError::TruncatedIpHeader)?;
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    if flags_offset & (IPV4_MORE_FRAGMENTS | IPV4_FRAGMENT_OFFSET) != 0 {
        return Err(FrameError::Fragment);
    }
    if header[9] != IPPROTO_UDP {
        return Err(FrameError::NotUdp(header[9]));
    }
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    Ok((src.into(), dst.into(), &packet[header_len..]))
}

fn parse_ipv6(packet: &[u8]) -> Result<Addresses<'_>, FrameError> {
    let header = packet
        .get(..IPV6_HEADER)
        .ok_or(FrameError::TruncatedIpHeader)?;
    if header[6] != IPPROTO_UDP {
        return Err(FrameError::NotUdp(header[6]));
    }
    let address = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&header[range]);
        Ipv6Addr::from(bytes)
    };
    Ok((
        address(8..24).into(),
        address(24..40).into(),
        &packet[IPV6_HEADER..],
    ))
}

/// Build an IP/UDP packet around `payload` (checksums left zero: nothing here checks
/// them). For tests in this crate: the capture socket test and the round-trip proptest.
#[cfg(test)]
pub(crate) fn build_datagram(
    src: SocketAddr,
    dst: SocketAddr,
    ipv4_options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = (UDP_HEADER + payload.len()) as u16;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut packet = match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            assert!(ipv4_options.len().is_multiple_of(4) && ipv4_options.len() <= 40);
            let header_len = IPV4_MIN_HEADER + ipv4_options.len();
            let mut h = vec![0u8; IPV4_MIN_HEADER];
            h[0] = 0x40 | (header_len / 4) as u8;
            h[2..4].copy_from_slice(&((header_len + udp.len()) as u16).to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64;
            h[9] = IPPROTO_UDP;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            h.extend_from_slice(ipv4_options);
            h
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            let mut h = vec![0u8; IPV6_HEADER];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(udp.len() as u16).to_be_bytes());
            h[6] = IPPROTO_UDP;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h
        }
        _ => panic!("mixed address families"),
    };
    packet.extend_from_slice(&udp);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_ipv4_with_options() {
        let p = build_datagram(
            v4("198.18.0.2:4000"),
            v4("198.18.0.1:51820"),
            &[1; 8],
            b"\x01abc",
        );
        let c = parse_datagram(&p).unwrap();
        assert_eq!(c.src, v4("198.18.0.2:4000"));
        assert_eq!(c.dst, v4("198.18.0.1:51820"));
        assert_eq!(c.payload, b"\x01abc");
    }

    #[test]
    fn payload_ignores_trailing_padding() {
        let mut p = build_datagram(v4("198.18.0.2:1"), v4("198.18.0.1:2"), &[], b"xy");
        p.extend_from_slice(&[0; 6]); // Ethernet minimum-frame padding
        assert_eq!(parse_datagram(&p).unwrap().payload, b"xy");
    }

    #[test]
    fn rejects_each_malformation() {
        let good = build_datagram(v4("198.18.0.2:1"), v4("198.18.0.1:2"), &[], b"xy");
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            parse_datagram(&p).unwrap_err()
        };
        assert_eq!(parse_datagram(&[]).unwrap_err(), FrameError::Empty);
        assert_eq!(with(&|p| p[0] = 0x55), FrameError::Version(5));
        assert_eq!(with(&|p| p[0] = 0x44), FrameError::Ipv4HeaderLength(16));
        assert_eq!(with(&|p| p.truncate(19)), FrameError::TruncatedIpHeader);
        assert_eq!(with(&|p| p[6] = 0x20), FrameError::Fragment);
        assert_eq!(with(&|p| p[7] = 0x01), FrameError::Fragment);
        assert_eq!(with(&|p| p[9] = 6), FrameError::NotUdp(6));
        assert_eq!(with(&|p| p.truncate(27)), FrameError::TruncatedUdpHeader);
        assert_eq!(with(&|p| p[25] = 7), FrameError::UdpLength(7));
        assert_eq!(
            with(&|p| p.truncate(29)),
            FrameError::TruncatedPayload {
                udp_length: 10,
                available: 9
            }
        );
    }

    fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv4Addr::from(d).into(), dp)
                )),
            (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(s, sp, d, dp)| (
                    SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                    SocketAddr::new(Ipv6Addr::from(d).into(), dp)
                )),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_datagram(&bytes);
        }

        #[test]
        fn never_panics_on_ip_like_bytes(
            version in prop_oneof![Just(0x40u8), Just(0x60u8)],
            mut bytes in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            bytes[0] = version | (bytes[0] & 0x0f);
            let _ = parse_datagram(&bytes);
        }

        #[test]
        fn round_trips(
            (src, dst) in addr_pair(),
            options in (0usize..=10).prop_flat_map(|words| proptest::collection::vec(any::<u8>(), words * 4)),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            padding in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut packet = build_datagram(src, dst, &options, &payload);
            packet.extend_from_slice(&padding);
            let captured = parse_datagram(&packet).unwrap();
            prop_assert_eq!(captured.src, src);
            prop_assert_eq!(captured.dst, dst);
            prop_assert_eq!(captured.payload, &payload[..]);
        }
    }
}
