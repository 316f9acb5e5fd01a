//! The IPv4, IPv6 and UDP header facts that both the kernel filter (`bpf`) and the frame
//! parser (`frame`) rely on, written once so the two cannot disagree about a packet.

/// IP protocol number of UDP (IPv4 protocol field, IPv6 next header).
pub const IPPROTO_UDP: u8 = 17;
/// The smallest legal IPv4 header (IHL = 5), in bytes.
pub const IPV4_MIN_HEADER: usize = 20;
/// The fixed IPv6 header, in bytes (UDP directly after it is all the filter accepts).
pub const IPV6_HEADER: usize = 40;
/// The UDP header, in bytes; the WireGuard message starts right after it.
pub const UDP_HEADER: usize = 8;
/// Offset of the source port inside the UDP header.
pub const UDP_SRC_PORT: usize = 0;
/// Offset of the destination port inside the UDP header.
pub const UDP_DST_PORT: usize = 2;
/// IPv4 flags/fragment-offset field: the more-fragments flag.
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
/// IPv4 flags/fragment-offset field: the 13 offset bits. Non-zero = not the first
/// fragment, which carries no UDP header.
pub const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
