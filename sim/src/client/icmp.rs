//! IPv4 ICMP echo packets: the one kind of traffic a simulated client sends through its
//! tunnel to prove the session works. Pure: builds and parses bytes, no IO.

use std::net::Ipv4Addr;

/// IPv4 header without options.
const IPV4_HEADER_LEN: usize = 20;
/// ICMP echo header: type, code, checksum, identifier, sequence.
const ICMP_ECHO_HEADER_LEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const DEFAULT_TTL: u8 = 64;

/// Whether an echo packet asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoKind {
    Request,
    Reply,
}

/// The fields of an ICMP echo that matter for matching a reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo {
    pub kind: EchoKind,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// Why bytes are not an ICMP echo this client can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IcmpParseError {
    #[error("packet of {len} bytes is shorter than an IPv4 header")]
    TooShort { len: usize },
    #[error("not IPv4 (version {version})")]
    NotIpv4 { version: u8 },
    #[error("bad IPv4 header length {ihl_bytes}")]
    BadHeaderLength { ihl_bytes: usize },
    #[error("IPv4 total length {total} does not fit the {len} bytes received")]
    BadTotalLength { total: usize, len: usize },
    #[error("IPv4 header checksum mismatch")]
    HeaderChecksum,
    #[error("IP protocol {proto} is not ICMP")]
    NotIcmp { proto: u8 },
    #[error("fragmented packet")]
    Fragmented,
    #[error("ICMP message of {len} bytes is shorter than an echo header")]
    IcmpTooShort { len: usize },
    #[error("ICMP type {icmp_type} code {code} is not an echo")]
    NotEcho { icmp_type: u8, code: u8 },
    #[error("ICMP checksum mismatch")]
    IcmpChecksum,
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Serialises `echo` as a complete IPv4 packet (header + ICMP) with valid checksums.
pub fn build(echo: &Echo) -> Vec<u8> {
    let icmp_len = ICMP_ECHO_HEADER_LEN + echo.payload.len();
    let total = IPV4_HEADER_LEN + icmp_len;
    let mut packet = vec![0u8; total];
    // IPv4 header.
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[4..6].copy_from_slice(&echo.seq.to_be_bytes()); // identification: any value
    packet[6] = 0x40; // don't fragment
    packet[8] = DEFAULT_TTL;
    packet[9] = PROTO_ICMP;
    packet[12..16].copy_from_slice(&echo.src.octets());
    packet[16..20].copy_from_slice(&echo.dst.octets());
    let header_sum = checksum(&packet[..IPV4_HEADER_LEN]);
    packet[10..12].copy_from_slice(&header_sum.to_be_bytes());
    // ICMP echo.
    let icmp = &mut packet[IPV4_HEADER_LEN..];
    icmp[0] = match echo.kind {
        EchoKind::Request => ICMP_ECHO_REQUEST,
        EchoKind::Reply => ICMP_ECHO_REPLY,
    };
    icmp[4..6].copy_from_slice(&echo.ident.to_be_bytes());
    icmp[6..8].copy_from_slice(&echo.seq.to_be_bytes());
    icmp[ICMP_ECHO_HEADER_LEN..].copy_from_slice(&echo.payload);
    let icmp_sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&icmp_sum.to_be_bytes());
    packet
}

/// Parses an IPv4 packet carrying an ICMP echo request or reply, checking both checksums.
/// Bytes past the IPv4 total length are ignored (tunnels may pad).
pub fn parse(packet: &[u8]) -> Result<Echo, IcmpParseError> {
    let len = packet.len();
    if len < IPV4_HEADER_LEN {
        return Err(IcmpParseError::TooShort { len });
    }
    let version = packet[0] >> 4;
    if version != 4 {
        return Err(IcmpParseError::NotIpv4 { version });
    }
    let ihl_bytes = usize::from(packet[0] & 0x0f) * 4;
    if ihl_bytes < IPV4_HEADER_LEN || ihl_bytes > len {
        return Err(IcmpParseError::BadHeaderLength { ihl_bytes });
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total < ihl_bytes || total > len {
        return Err(IcmpParseError::BadTotalLength { total, len });
    }
    if checksum(&packet[..ihl_bytes]) != 0 {
        return Err(IcmpParseError::HeaderChecksum);
    }
    let proto = packet[9];
    if proto != PROTO_ICMP {
        return Err(IcmpParseError::NotIcmp { proto });
    }
    let more_fragments = packet[6] & 0x20 != 0;
    let offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
    if more_fragments || offset != 0 {
        return Err(IcmpParseError::Fragmented);
    }
    let icmp = &packet[ihl_bytes..total];
    if icmp.len() < ICMP_ECHO_HEADER_LEN {
        return Err(IcmpParseError::IcmpTooShort { len: icmp.len() });
    }
    let (icmp_type, code) = (icmp[0], icmp[1]);
    let kind = match (icmp_type, code) {
        (ICMP_ECHO_REQUEST, 0) => EchoKind::Request,
        (ICMP_ECHO_REPLY, 0) => EchoKind::Reply,
        _ => return Err(IcmpParseError::NotEcho { icmp_type, code }),
    };
    if checksum(icmp) != 0 {
        return Err(IcmpParseError::IcmpChecksum);
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Ok(Echo {
        kind,
        src,
        dst,
        ident: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: icmp[ICMP_ECHO_HEADER_LEN..].to_vec(),
    })
}

/// The reply a host would send to `request` (addresses swapped, same ident/seq/payload).
pub fn reply_to(request: &Echo) -> Echo {
    Echo {
        kind: EchoKind::Reply,
        src: request.dst,
        dst: request.src,
        ident: request.ident,
        seq: request.seq,
        payload: request.payload.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Echo {
        Echo {
            kind: EchoKind::Request,
            src: Ipv4Addr::new(100, 64, 0, 2),
            dst: Ipv4Addr::new(100, 64, 0, 1),
            ident: 0x1234,
            seq: 7,
            payload: b"jitwg".to_vec(),
        }
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn built_request_parses_back() {
        let echo = sample();
        let packet = build(&echo);
        assert_eq!(packet.len(), 20 + 8 + 5);
        assert_eq!(parse(&packet), Ok(echo));
    }

    #[test]
    fn reply_swaps_addresses_and_keeps_ids() {
        let reply = reply_to(&sample());
        assert_eq!(reply.kind, EchoKind::Reply);
        assert_eq!(reply.src, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(reply.dst, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(parse(&build(&reply)), Ok(reply));
    }

    #[test]
    fn trailing_padding_is_ignored() {
        let mut packet = build(&sample());
        packet.extend_from_slice(&[0, 0, 0]);
        assert_eq!(parse(&packet), Ok(sample()));
    }

    #[test]
    fn corrupted_checksums_are_rejected() {
        let mut packet = build(&sample());
        packet[12] ^= 1;
        assert_eq!(parse(&packet), Err(IcmpParseError::HeaderChecksum));
        let mut packet = build(&sample());
        packet[30] ^= 1;
        assert_eq!(parse(&packet), Err(IcmpParseError::IcmpChecksum));
    }

    #[test]
    fn non_echo_and_non_icmp_are_rejected() {
        let mut packet = build(&sample());
        packet[9] = 17;
        packet[10] = 0;
        packet[11] = 0;
        let sum = checksum(&packet[..20]);
        packet[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(parse(&packet), Err(IcmpParseError::NotIcmp { proto: 17 }));
        assert_eq!(
            parse(&[0x60; 40]),
            Err(IcmpParseError::NotIpv4 { version: 6 })
        );
        assert_eq!(parse(&[0x45; 4]), Err(IcmpParseError::TooShort { len: 4 }));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parser_never_panics_on_ipv4_like(mut bytes in proptest::collection::vec(any::<u8>(), 20..96), ihl in 5u8..16) {
            bytes[0] = 0x40 | ihl;
            let _ = parse(&bytes);
        }

        #[test]
        fn roundtrip(src in any::<u32>(), dst in any::<u32>(), ident in any::<u16>(), seq in any::<u16>(),
                     payload in proptest::collection::vec(any::<u8>(), 0..64), reply in any::<bool>()) {
            let echo = Echo {
                kind: if reply { EchoKind::Reply } else { EchoKind::Request },
                src: Ipv4Addr::from(src), dst: Ipv4Addr::from(dst), ident, seq, payload,
            };
            prop_assert_eq!(parse(&build(&echo)), Ok(echo));
        }
    }
}
