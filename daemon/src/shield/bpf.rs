//! The shield's rules of one address family as one classic BPF program for a tc `bpf`
//! classifier in direct-action mode: `TC_ACT_SHOT` for a WireGuard handshake initiation
//! (UDP to the listen port, first payload word 1) from a blocked source,
//! `TC_ACT_UNSPEC` (carry on, as if no filter were there) for everything else. A
//! classic program with direct action needs no tc action module (this machine's kernel
//! has cls_bpf but no act_gact, so u32 + gact drop cannot load here).
//!
//! Loads are relative to the network header (`SKF_NET_OFF`), so the program is the same
//! on Ethernet and on interfaces without a link-layer header. Only IPv4 without options
//! (first fragments) and IPv6 with UDP as the first next header are judged: anything else
//! passes, so the shield errs towards letting traffic through. Rules are checked in
//! order, passes first (`Rule`'s order); every match returns at once, so conditional
//! jumps only skip the next rule (classic BPF jumps reach 255 instructions at most).

use libc::{
    sock_filter, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
    BPF_LD, BPF_RET, BPF_W,
};

use super::plan::{Prefix, Rule};

/// The kernel's limit on a classic program's length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;
/// Instructions one rule costs at most (an IPv6 host: 4 words × 2, plus its return).
pub const MAX_RULE_INSNS: usize = 9;
/// Instructions before the first rule, at most.
pub const HEADER_INSNS: usize = 12;

/// `SKF_NET_OFF`: loads at this negative base are relative to the network header.
const NET_OFF: i32 = -0x0010_0000;
/// tc verdicts returned in direct-action mode.
pub const TC_ACT_UNSPEC: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
/// WireGuard's first word of an initiation, read big-endian: type 1, three zero bytes
/// (wireguard-go reads the word little-endian and wants exactly 1).
const INITIATION_WORD: u32 = 0x0100_0000;
const IPPROTO_UDP: u32 = 17;

fn net(offset: u32) -> u32 {
    // Two's complement of a negative base plus a small offset, as the kernel reads k.
    NET_OFF.wrapping_add(i32::try_from(offset).unwrap_or(0)) as u32
}

fn insn(code: u32, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter {
        // Opcodes fit 16 bits by construction (the libc constants are u32).
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn load(size: u32, offset: u32) -> sock_filter {
    insn(BPF_LD | size | BPF_ABS, 0, 0, net(offset))
}

fn ret(verdict: u32) -> sock_filter {
    insn(BPF_RET | BPF_K, 0, 0, verdict)
}

/// "Unless A == k, pass": the jump skips the return when equal.
fn require_eq(p: &mut Vec<sock_filter>, k: u32) {
    p.push(insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, k));
    p.push(ret(TC_ACT_UNSPEC));
}

/// The program for `rules` (all of one family, `v4`) guarding UDP `port`.
pub fn program(rules: &[Rule], v4: bool, port: u16) -> Vec<sock_filter> {
    let mut p = Vec::with_capacity(HEADER_INSNS + rules.len() * MAX_RULE_INSNS + 1);
    let src_offset = if v4 {
        // Version 4, header length 5 words (no options).
        p.push(load(BPF_B, 0));
        require_eq(&mut p, 0x45);
        p.push(load(BPF_B, 9));
        require_eq(&mut p, IPPROTO_UDP);
        // A later fragment carries no UDP header.
        p.push(load(BPF_H, 6));
        p.push(insn(BPF_JMP | BPF_JSET | BPF_K, 0, 1, 0x1fff));
        p.push(ret(TC_ACT_UNSPEC));
        p.push(load(BPF_H, 20 + 2));
        require_eq(&mut p, u32::from(port));
        p.push(load(BPF_W, 28));
        require_eq(&mut p, INITIATION_WORD);
        12
    } else {
        p.push(load(BPF_B, 6));
        require_eq(&mut p, IPPROTO_UDP);
        p.push(load(BPF_H, 40 + 2));
        require_eq(&mut p, u32::from(port));
        p.push(load(BPF_W, 48));
        require_eq(&mut p, INITIATION_WORD);
        8
    };
    for rule in rules.iter().filter(|r| r.is_v4() == v4) {
        let (prefix, verdict) = match rule {
            Rule::Pass(ip) => (Prefix::host(*ip), TC_ACT_UNSPEC),
            Rule::Block(prefix) => (*prefix, TC_ACT_SHOT),
        };
        let words = words(&prefix);
        // Each word: load, (mask), compare; a mismatch skips the rest of the rule.
        let mut body = Vec::new();
        for (offset, mask, value) in &words {
            body.push(load(BPF_W, src_offset + offset));
            if *mask != u32::MAX {
                body.push(insn(BPF_ALU | BPF_AND | BPF_K, 0, 0, *mask));
            }
            // Patched below once the rule's length is known.
            body.push(insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, *value));
        }
        body.push(ret(verdict));
        let len = body.len();
        for (at, ins) in body.iter_mut().enumerate() {
            if u32::from(ins.code) == BPF_JMP | BPF_JEQ | BPF_K {
                // On mismatch jump past the return that ends this rule.
                ins.jf = u8::try_from(len - at - 1).unwrap_or(u8::MAX);
            }
        }
        p.extend(body);
    }
    p.push(ret(TC_ACT_UNSPEC));
    p
}

/// A prefix's 32-bit words to compare: (offset from the source address, mask, value).
fn words(prefix: &Prefix) -> Vec<(u32, u32, u32)> {
    let (bits, total): (u128, u32) = match prefix.addr {
        std::net::IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
        std::net::IpAddr::V6(a) => (u128::from(a), 128),
    };
    let len = u32::from(prefix.len).min(total);
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    (0..total / 32)
        .filter_map(|w| {
            let shift = 96 - 32 * w;
            let m = u32::try_from((mask >> shift) & 0xffff_ffff).unwrap_or(0);
            let v = u32::try_from((bits >> shift) & 0xffff_ffff).unwrap_or(0);
            (m != 0).then_some((4 * w, m, v & m))
        })
        .collect()
}

/// The program as the kernel takes it (`TCA_BPF_OPS`): `struct sock_filter` in host order.
pub fn to_bytes(program: &[sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
