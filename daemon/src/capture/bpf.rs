//! The classic BPF program that lets the kernel drop everything except WireGuard
//! handshake initiations before they are copied to user space: the equivalent of
//! tcpdump's `udp dst port P and udp[8] = 1`, for IPv4 (any header length, first
//! fragments only) and IPv6 (UDP as the first next header), built in code for any port.
//!
//! The program runs on an AF_PACKET SOCK_DGRAM socket, so offset 0 is the start of
//! the IP header. Packets the host itself sends (packet type OUTGOING) are dropped,
//! so the gateway never sees its own traffic (on `lo` every packet would otherwise be
//! seen twice).

use libc::sock_filter;

use super::wire::{
    IPPROTO_UDP, IPV4_FRAGMENT_OFFSET, IPV4_MIN_HEADER, IPV6_HEADER, UDP_DST_PORT, UDP_HEADER,
    UDP_SRC_PORT,
};

/// Bytes the kernel copies for an accepted packet: far more than IPv6 + UDP + the
/// 148-byte initiation, so nothing we need is ever cut off.
pub const SNAP_LEN: u32 = 0x40000;

/// WireGuard message type of a handshake initiation (the first UDP payload byte).
const INITIATION_TYPE: u32 = 1;
/// WireGuard message type of a cookie reply (the data plane under load).
const COOKIE_REPLY_TYPE: u32 = 3;
/// `PACKET_OUTGOING` from `<linux/if_packet.h>` (not exported at libc's top level).
const PACKET_OUTGOING: u32 = 4;

/// A header length or offset from `wire` as a BPF constant (all are tiny).
const fn k(bytes: usize) -> u32 {
    bytes as u32
}

/// Where a conditional jump goes; resolved to relative offsets once the whole
/// program is laid out, so nobody counts instructions by hand.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Next,
    Ipv6,
    Accept,
    Drop,
}

/// One instruction before jump resolution.
struct Insn {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
    /// Set on the first instruction of a labelled block.
    label: Option<Target>,
}

/// Assembles a program from straight-line instructions and labelled blocks.
#[derive(Default)]
struct Assembler {
    insns: Vec<Insn>,
    pending_label: Option<Target>,
}

impl Assembler {
    fn stmt(&mut self, code: u32, k: u32) {
        self.push(code, k, Target::Next, Target::Next);
    }

    fn jump(&mut self, code: u32, k: u32, jt: Target, jf: Target) {
        self.push(code, k, jt, jf);
    }

    fn label(&mut self, label: Target) {
        self.pending_label = Some(label);
    }

    fn push(&mut self, code: u32, k: u32, jt: Target, jf: Target) {
        // BPF opcodes fit in 16 bits by construction (the libc constants are u32).
        let code = code as u16;
        let label = self.pending_label.take();
        self.insns.push(Insn {
            code,
            k,
            jt,
            jf,
            label,
        });
    }

    fn finish(self) -> Vec<sock_filter> {
        let position = |target: Target| {
            self.insns
                .iter()
                .position(|insn| insn.label == Some(target))
        };
        let resolve = |from: usize, target: Target| -> u8 {
            if target == Target::Next {
                return 0;
            }
            // Every label is defined below (a missing one is a bug in `program`, caught
            // by the tests); jumps only go forward in classic BPF.
            let to = position(target).unwrap_or(from + 1);
            u8::try_from(to.saturating_sub(from + 1)).unwrap_or(u8::MAX)
        };
        self.insns
            .iter()
            .enumerate()
            .map(|(i, insn)| sock_filter {
                code: insn.code,
                jt: resolve(i, insn.jt),
                jf: resolve(i, insn.jf),
                k: insn.k,
            })
            .collect()
    }
}

/// Build the filter accepting IPv4/IPv6 UDP datagrams to `port` whose first payload
/// byte is 1 (a WireGuard handshake initiation) and that the host did not send itself.
/// Accept returns [`SNAP_LEN`], reject returns 0.
pub fn initiation_filter(port: u16) -> Vec<sock_filter> {
    message_filter(UDP_DST_PORT, port, INITIATION_TYPE, false)
}

/// Build the filter accepting IPv4/IPv6 UDP datagrams *from* `port` whose first payload
/// byte is 3: the cookie replies the data plane sends when it is under load, seen leaving
/// (packet type OUTGOING included). The initiation pacer's feedback (`install::feedback`).
pub fn cookie_reply_filter(port: u16) -> Vec<sock_filter> {
    message_filter(UDP_SRC_PORT, port, COOKIE_REPLY_TYPE, true)
}

/// The one program behind both filters: UDP `port` at `port_field` of the UDP header, and
/// message type `message` as the first payload byte; the host's own sends only if
/// `outgoing`.
fn message_filter(port_field: usize, port: u16, message: u32, outgoing: bool) -> Vec<sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MISC, BPF_MSH, BPF_RET, BPF_RSH, BPF_TXA, BPF_W,
    };
    use Target::{Accept, Drop, Ipv6, Next};
    let port = u32::from(port);
    // SKF_AD_OFF is negative; the kernel reads k as an unsigned offset past it.
    let pkttype = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;

    let mut a = Assembler::default();
    if !outgoing {
        // Never our own sends.
        a.stmt(BPF_LD | BPF_W | BPF_ABS, pkttype);
        a.jump(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, Drop, Next);
    }
    // IP version nibble.
    a.stmt(BPF_LD | BPF_B | BPF_ABS, 0);
    a.stmt(BPF_ALU | BPF_RSH | BPF_K, 4);
    a.jump(BPF_JMP | BPF_JEQ | BPF_K, 4, Next, Ipv6);

    // IPv4: UDP, first fragment, sane header length, then port and type at IHL*4.
    a.stmt(BPF_LD | BPF_B | BPF_ABS, 9);
    a.jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        u32::from(IPPROTO_UDP),
        Next,
        Drop,
    );
    a.stmt(BPF_LD | BPF_H | BPF_ABS, 6);
    a.jump(
        BPF_JMP | BPF_JSET | BPF_K,
        u32::from(IPV4_FRAGMENT_OFFSET),
        Drop,
        Next,
    );
    a.stmt(BPF_LDX | BPF_B | BPF_MSH, 0); // X = 4 * IHL
    a.stmt(BPF_MISC | BPF_TXA, 0);
    a.jump(BPF_JMP | BPF_JGE | BPF_K, k(IPV4_MIN_HEADER), Next, Drop);
    a.stmt(BPF_LD | BPF_H | BPF_IND, k(port_field));
    a.jump(BPF_JMP | BPF_JEQ | BPF_K, port, Next, Drop);
    a.stmt(BPF_LD | BPF_B | BPF_IND, k(UDP_HEADER));
    a.jump(BPF_JMP | BPF_JEQ | BPF_K, message, Accept, Drop);

    a.label(Ipv6);
    a.jump(BPF_JMP | BPF_JEQ | BPF_K, 6, Next, Drop);
    a.stmt(BPF_LD | BPF_B | BPF_ABS, 6); // next header
    a.jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        u32::from(IPPROTO_UDP),
        Next,
        Drop,
    );
    a.stmt(BPF_LD | BPF_H | BPF_ABS, k(IPV6_HEADER + port_field));
    a.jump(BPF_JMP | BPF_JEQ | BPF_K, port, Next, Drop);
    a.stmt(BPF_LD | BPF_B | BPF_ABS, k(IPV6_HEADER + UDP_HEADER));
    a.jump(BPF_JMP | BPF_JEQ | BPF_K, message, Accept, Drop);

    a.label(Accept);
    a.stmt(BPF_RET | BPF_K, SNAP_LEN);
    a.label(Drop);
    a.stmt(BPF_RET | BPF_K, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the kernel tells the filter about a packet besides its bytes.
    const PACKET_HOST: u32 = 0;

    /// A classic-BPF interpreter for exactly the opcodes `initiation_filter` emits,
    /// following the kernel's rules: an out-of-bounds load ends the program with 0.
    fn run(program: &[sock_filter], packet: &[u8], pkttype: u32) -> u32 {
        use libc::*;
        let load = |offset: u32, size: usize| -> Option<u32> {
            let start = usize::try_from(offset).ok()?;
            let bytes = packet.get(start..start.checked_add(size)?)?;
            Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
        };
        let size_of = |code: u32| match code & 0x18 {
            c if c == BPF_W => 4,
            c if c == BPF_H => 2,
            _ => 1,
        };
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let pkttype_offset = (SKF_AD_OFF + SKF_AD_PKTTYPE) as u32;
        loop {
            let insn = program[pc];
            let code = u32::from(insn.code);
            pc += 1;
            match code & 0x07 {
                c if c == BPF_LD => {
                    let mode = code & 0xe0;
                    let offset = if mode == BPF_IND {
                        x.wrapping_add(insn.k)
                    } else {
                        insn.k
                    };
                    a = if mode == BPF_ABS && offset == pkttype_offset {
                        pkttype
                    } else {
                        match load(offset, size_of(code)) {
                            Some(v) => v,
                            None => return 0,
                        }
                    };
                }
                c if c == BPF_LDX => {
                    assert_eq!(code, BPF_LDX | BPF_B | BPF_MSH);
                    match load(insn.k, 1) {
                        Some(v) => x = 4 * (v & 0xf),
                        None => return 0,
                    }
                }
                c if c == BPF_ALU => match code & 0xf0 {
                    op if op == BPF_RSH => a >>= insn.k,
                    op if op == BPF_AND => a &= insn.k,
                    other => panic!("unexpected ALU op {other:#x}"),
                },
                c if c == BPF_JMP => {
                    let taken = match code & 0xf0 {
                        op if op == BPF_JEQ => a == insn.k,
                        op if op == BPF_JGE => a >= insn.k,
                        op if op == BPF_JSET => a & insn.k != 0,
                        other => panic!("unexpected jump op {other:#x}"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                c if c == BPF_MISC => {
                    assert_eq!(code, BPF_MISC | BPF_TXA);
                    a = x;
                }
                c if c == BPF_RET => return insn.k,
                other => panic!("unexpected class {other:#x}"),
            }
        }
    }

    /// The plain-Rust statement of what the filter must accept.
    fn reference(packet: &[u8], port: u16, pkttype: u32) -> bool {
        if pkttype == PACKET_OUTGOING {
            return false;
        }
        let udp_start = match packet.first().map(|b| b >> 4) {
            Some(4) => {
                let header = usize::from(packet[0] & 0x0f) * 4;
                let fragment_offset = packet
                    .get(6..8)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) & 0x1fff);
                if header < 20 || packet.get(9) != Some(&17) || fragment_offset != Some(0) {
                    return false;
                }
                header
            }
            Some(6) => {
                if packet.get(6) != Some(&17) {
                    return false;
                }
                40
            }
            _ => return false,
        };
        let dst_port = packet
            .get(udp_start + 2..udp_start + 4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]));
        dst_port == Some(port) && packet.get(udp_start + 8) == Some(&1)
    }

    fn accepts(packet: &[u8], port: u16, pkttype: u32) -> bool {
        let verdict = run(&initiation_filter(port), packet, pkttype);
        assert!(verdict == 0 || verdict == SNAP_LEN);
        verdict == SNAP_LEN
    }

    fn ipv4(options: usize, proto: u8, frag: u16, port: u16, first: u8) -> Vec<u8> {
        let ihl = 5 + options;
        let mut p = vec![0u8; ihl * 4 + 8 + 4];
        p[0] = 0x40 | ihl as u8;
        p[9] = proto;
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[ihl * 4 + 2..ihl * 4 + 4].copy_from_slice(&port.to_be_bytes());
        p[ihl * 4 + 8] = first;
        p
    }

    fn ipv6(next: u8, port: u16, first: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 8 + 4];
        p[0] = 0x60;
        p[6] = next;
        p[42..44].copy_from_slice(&port.to_be_bytes());
        p[48] = first;
        p
    }

    #[test]
    fn jumps_stay_inside_program() {
        let program = initiation_filter(51820);
        // Only conditional jumps use jt/jf; every other instruction leaves them 0.
        let is_jump = |code: u16| u32::from(code) & 0x07 == libc::BPF_JMP;
        for (i, insn) in program.iter().enumerate() {
            if is_jump(insn.code) {
                assert!(i + 1 + usize::from(insn.jt) < program.len(), "insn {i}");
                assert!(i + 1 + usize::from(insn.jf) < program.len(), "insn {i}");
            } else {
                assert_eq!((insn.jt, insn.jf), (0, 0), "insn {i}");
            }
        }
        let last = program.last().map(|insn| u32::from(insn.code) & 0x07);
        assert_eq!(last, Some(libc::BPF_RET), "a program must end in a return");
        assert!(program.len() < libc::BPF_MAXINSNS as usize);
    }

    #[test]
    fn accepts_initiations_to_port() {
        assert!(accepts(&ipv4(0, 17, 0, 51820, 1), 51820, PACKET_HOST));
        assert!(accepts(&ipv4(10, 17, 0, 51820, 1), 51820, PACKET_HOST));
        // First fragment (more-fragments set, offset 0) still carries the UDP header.
        assert!(accepts(&ipv4(0, 17, 0x2000, 51820, 1), 51820, PACKET_HOST));
        assert!(accepts(&ipv6(17, 51820, 1), 51820, PACKET_HOST));
    }

    #[test]
    fn cookie_reply_filter_takes_outgoing_cookie_replies_from_the_port_only() {
        let filter = cookie_reply_filter(51820);
        let verdict = |packet: &[u8], pkttype| run(&filter, packet, pkttype);
        // A cookie reply from 51820 (source port = the first two UDP bytes), leaving.
        let mut cookie = ipv4(0, 17, 0, 0, 3);
        cookie[20..22].copy_from_slice(&51820u16.to_be_bytes());
        assert_eq!(verdict(&cookie, PACKET_OUTGOING), SNAP_LEN);
        assert_eq!(verdict(&cookie, PACKET_HOST), SNAP_LEN);
        let mut v6 = ipv6(17, 0, 3);
        v6[40..42].copy_from_slice(&51820u16.to_be_bytes());
        assert_eq!(verdict(&v6, PACKET_OUTGOING), SNAP_LEN);
        // Another message type, another port, or the port as destination: dropped.
        let mut response = cookie.clone();
        response[28] = 2;
        assert_eq!(verdict(&response, PACKET_OUTGOING), 0);
        let mut other_port = cookie.clone();
        other_port[20..22].copy_from_slice(&51821u16.to_be_bytes());
        assert_eq!(verdict(&other_port, PACKET_OUTGOING), 0);
        assert_eq!(verdict(&ipv4(0, 17, 0, 51820, 3), PACKET_OUTGOING), 0);
    }

    #[test]
    fn drops_everything_else() {
        assert!(!accepts(&ipv4(0, 17, 0, 51820, 1), 51820, PACKET_OUTGOING));
        assert!(!accepts(&ipv4(0, 17, 0, 51820, 4), 51820, PACKET_HOST));
        assert!(!accepts(&ipv4(0, 17, 0, 51821, 1), 51820, PACKET_HOST));
        assert!(!accepts(&ipv4(0, 6, 0, 51820, 1), 51820, PACKET_HOST));
        assert!(!accepts(&ipv4(0, 17, 0x0001, 51820, 1), 51820, PACKET_HOST));
        assert!(!accepts(&ipv6(17, 51820, 2), 51820, PACKET_HOST));
        assert!(!accepts(&ipv6(0, 51820, 1), 51820, PACKET_HOST)); // hop-by-hop first
        assert!(!accepts(&ipv6(17, 51820, 1), 51820, PACKET_OUTGOING));
        assert!(!accepts(&[], 51820, PACKET_HOST));
        assert!(!accepts(&[0x45], 51820, PACKET_HOST));
    }

    /// Packets shaped like IP/UDP, each field either right or random, then maybe cut
    /// short, so both verdicts are common.
    fn packet_strategy() -> impl Strategy<Value = (Vec<u8>, u16)> {
        (
            any::<u16>(),
            prop_oneof![Just(4u8), Just(6u8), any::<u8>()],
            0u8..16,
            prop_oneof![Just(17u8), any::<u8>()],
            prop_oneof![Just(0u16), Just(0x2000u16), any::<u16>()],
            any::<bool>(),
            prop_oneof![Just(1u8), any::<u8>()],
            proptest::collection::vec(any::<u8>(), 80),
            0usize..90,
        )
            .prop_map(
                |(port, version, ihl, proto, frag, right_port, first, mut bytes, len)| {
                    let dst_port = if right_port { port } else { port ^ 1 };
                    bytes[0] = (version << 4) | ihl;
                    let udp = if version == 6 {
                        bytes[6] = proto;
                        40
                    } else {
                        bytes[9] = proto;
                        bytes[6..8].copy_from_slice(&frag.to_be_bytes());
                        usize::from(ihl) * 4
                    };
                    if udp + 9 <= bytes.len() {
                        bytes[udp + 2..udp + 4].copy_from_slice(&dst_port.to_be_bytes());
                        bytes[udp + 8] = first;
                    }
                    bytes.truncate(len);
                    (bytes, port)
                },
            )
    }

    proptest! {
        #[test]
        fn filter_matches_reference(
            (packet, port) in packet_strategy(),
            pkttype in prop_oneof![Just(PACKET_HOST), Just(PACKET_OUTGOING), 0u32..8],
        ) {
            prop_assert_eq!(accepts(&packet, port, pkttype), reference(&packet, port, pkttype));
        }

        #[test]
        fn filter_matches_reference_on_random_bytes(
            packet in proptest::collection::vec(any::<u8>(), 0..80),
            port in any::<u16>(),
        ) {
            prop_assert_eq!(accepts(&packet, port, PACKET_HOST), reference(&packet, port, PACKET_HOST));
        }
    }
}
