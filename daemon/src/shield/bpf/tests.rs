//! The shield's BPF programs run on a small classic-BPF interpreter (the opcodes
//! `program` emits, loads relative to the network header) against built packets.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const PORT: u16 = 51820;

/// Run `program` on the network-layer `packet` as cls_bpf would (out of bounds: 0).
fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let ins = program[pc];
        let code = u32::from(ins.code);
        pc += 1;
        match code & 0x07 {
            c if c == BPF_LD => {
                assert_eq!(code & 0xe0, BPF_ABS);
                let offset = (ins.k as i32).wrapping_sub(NET_OFF);
                let size = match code & 0x18 {
                    s if s == BPF_W => 4,
                    s if s == BPF_H => 2,
                    _ => 1,
                };
                let Some(bytes) = usize::try_from(offset)
                    .ok()
                    .and_then(|o| packet.get(o..o + size))
                else {
                    return 0;
                };
                a = bytes.iter().fold(0, |acc, b| (acc << 8) | u32::from(*b));
            }
            c if c == BPF_ALU => {
                assert_eq!(code & 0xf0, BPF_AND);
                a &= ins.k;
            }
            c if c == BPF_JMP => {
                let taken = match code & 0xf0 {
                    op if op == BPF_JEQ => a == ins.k,
                    op if op == BPF_JSET => a & ins.k != 0,
                    other => panic!("unexpected jump {other:#x}"),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            c if c == BPF_RET => return ins.k,
            other => panic!("unexpected class {other:#x}"),
        }
    }
}

/// A datagram from `src` to UDP `port` whose payload starts with `word`.
fn datagram(src: IpAddr, port: u16, word: [u8; 4]) -> Vec<u8> {
    let mut udp = vec![0x9c, 0x40];
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&[0, 156, 0, 0]);
    udp.extend_from_slice(&word);
    udp.extend_from_slice(&[0xaa; 144]);
    match src {
        IpAddr::V4(s) => {
            let mut p = vec![0x45, 0, 0, 176, 0, 0, 0x40, 0, 64, 17, 0, 0];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&[198, 19, 52, 1]);
            p.extend(udp);
            p
        }
        IpAddr::V6(s) => {
            let mut p = vec![0x60, 0, 0, 0, 0, 156, 17, 64];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&"2001:2::1".parse::<Ipv6Addr>().unwrap().octets());
            p.extend(udp);
            p
        }
    }
}

const INIT: [u8; 4] = [1, 0, 0, 0];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rules(list: &[Rule], v4: bool) -> Vec<sock_filter> {
    let set: BTreeSet<Rule> = list.iter().copied().collect();
    let ordered: Vec<Rule> = set.into_iter().collect();
    program(&ordered, v4, PORT)
}

fn block(s: &str) -> Rule {
    let (a, l) = s.split_once('/').unwrap();
    Rule::Block(Prefix {
        addr: ip(a),
        len: l.parse().unwrap(),
    })
}

#[test]
fn ipv4_initiations_from_blocked_sources_are_shot_and_nothing_else() {
    let p = rules(
        &[
            block("198.18.1.0/24"),
            Rule::Pass(ip("198.18.1.6")),
            block("198.18.2.9/32"),
        ],
        true,
    );
    let shot = |src: &str, port: u16, word: [u8; 4]| run(&p, &datagram(ip(src), port, word));
    assert_eq!(shot("198.18.1.5", PORT, INIT), TC_ACT_SHOT);
    assert_eq!(
        shot("198.18.1.6", PORT, INIT),
        TC_ACT_UNSPEC,
        "installed endpoint"
    );
    assert_eq!(shot("198.18.2.9", PORT, INIT), TC_ACT_SHOT);
    assert_eq!(shot("198.18.2.8", PORT, INIT), TC_ACT_UNSPEC);
    assert_eq!(
        shot("198.18.1.5", PORT, [2, 0, 0, 0]),
        TC_ACT_UNSPEC,
        "a response"
    );
    assert_eq!(
        shot("198.18.1.5", PORT, [4, 0, 0, 0]),
        TC_ACT_UNSPEC,
        "data"
    );
    assert_eq!(
        shot("198.18.1.5", PORT, [1, 0, 0, 1]),
        TC_ACT_UNSPEC,
        "not type 1 to WireGuard"
    );
    assert_eq!(
        shot("198.18.1.5", PORT + 1, INIT),
        TC_ACT_UNSPEC,
        "another port"
    );
    let mut options = datagram(ip("198.18.1.5"), PORT, INIT);
    options[0] = 0x46;
    assert_eq!(run(&p, &options), TC_ACT_UNSPEC, "IPv4 options: not judged");
    let mut later = datagram(ip("198.18.1.5"), PORT, INIT);
    later[7] = 0x10;
    assert_eq!(run(&p, &later), TC_ACT_UNSPEC, "a later fragment");
    let mut tcp = datagram(ip("198.18.1.5"), PORT, INIT);
    tcp[9] = 6;
    assert_eq!(run(&p, &tcp), TC_ACT_UNSPEC);
    assert_eq!(
        run(&p, &[0x45, 0, 0]),
        0,
        "truncated: the kernel's out-of-bounds 0"
    );
}

#[test]
fn the_storm_guard_shoots_every_initiation_and_only_initiations() {
    let guard = crate::shield::storm::rules();
    for (v4, src) in [(true, "203.0.113.7"), (false, "2001:db8:5::1")] {
        let p = rules(&[guard[0], guard[1], Rule::Pass(ip("198.18.1.6"))], v4);
        let shot = |word: [u8; 4]| run(&p, &datagram(ip(src), PORT, word));
        assert_eq!(shot(INIT), TC_ACT_SHOT, "{src}");
        assert_eq!(shot([2, 0, 0, 0]), TC_ACT_UNSPEC, "a response from {src}");
        assert_eq!(shot([4, 0, 0, 0]), TC_ACT_UNSPEC, "data from {src}");
        assert_eq!(
            run(&p, &datagram(ip(src), PORT + 1, INIT)),
            TC_ACT_UNSPEC,
            "another port"
        );
    }
}

#[test]
fn ipv6_programs_compare_only_the_prefix_words() {
    let p = rules(
        &[
            block("2001:2:0:1::/64"),
            Rule::Pass(ip("2001:2:0:1::6")),
            block("2001:2:0:2::9/128"),
        ],
        false,
    );
    let shot = |src: &str| run(&p, &datagram(ip(src), PORT, INIT));
    assert_eq!(shot("2001:2:0:1:abcd::5"), TC_ACT_SHOT);
    assert_eq!(shot("2001:2:0:1::6"), TC_ACT_UNSPEC);
    assert_eq!(shot("2001:2:0:2::9"), TC_ACT_SHOT);
    assert_eq!(shot("2001:2:0:2::8"), TC_ACT_UNSPEC);
    assert_eq!(shot("2001:2:0:3::9"), TC_ACT_UNSPEC);
    assert_eq!(
        run(&p, &datagram(ip("2001:2:0:1::5"), PORT, [2, 0, 0, 0])),
        TC_ACT_UNSPEC
    );
}

#[test]
fn the_largest_rule_set_fits_the_kernels_limit() {
    let worst: Vec<Rule> = (0..super::super::MAX_FILTERS as u128)
        .map(|i| {
            Rule::Block(Prefix::host(IpAddr::V6(Ipv6Addr::from(
                (0x2001_0002u128 << 96) | i,
            ))))
        })
        .collect();
    let p = program(&worst, false, PORT);
    assert!(p.len() <= MAX_INSNS, "{} instructions", p.len());
    assert!(to_bytes(&p).len() == p.len() * 8);
}

fn v4_rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        (0u8..3, 0u8..6).prop_map(|(n, h)| Rule::Pass(IpAddr::V4(Ipv4Addr::new(198, 18, n, h)))),
        (0u8..3, 0u8..6)
            .prop_map(|(n, h)| Rule::Block(Prefix::host(IpAddr::V4(Ipv4Addr::new(198, 18, n, h))))),
        (0u8..3).prop_map(|n| Rule::Block(Prefix {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, n, 0)),
            len: 24
        })),
    ]
}

proptest! {
    /// For any rules and any source, the program shoots an initiation exactly when no
    /// pass matches the source and some block does.
    #[test]
    fn the_program_agrees_with_the_rules(
        list in proptest::collection::vec(v4_rule(), 0..12),
        n in 0u8..4,
        h in 0u8..7,
    ) {
        let p = rules(&list, true);
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, n, h));
        let passed = list.contains(&Rule::Pass(src));
        let blocked = list.iter().any(|r| matches!(r, Rule::Block(b) if b.contains(src)));
        let expected = if blocked && !passed { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        prop_assert_eq!(run(&p, &datagram(src, PORT, INIT)), expected);
        prop_assert_eq!(run(&p, &datagram(src, PORT, [2, 0, 0, 0])), TC_ACT_UNSPEC);
    }
}
