//! The kernel shield's pure core: which rules the kernel should apply at a moment, given
//! the sources admission control judges (`Admission::judged`) and the endpoints of
//! installed peers. No IO, no clock: the caller evaluates the penalties at its `now`.
//! The rules of one address family become one program (`bpf`), swapped in atomically, so
//! there is never a moment with a block in force and its passes missing.
//!
//! Safety rule: an installed peer must always be able to initiate (rekey, retry). A
//! judged address that is an installed endpoint is simply not blocked; a judged network
//! gets a pass rule (checked before any block) for each installed endpoint inside it, and
//! is not blocked at all when its passes do not fit the rule budget.
//! (The storm guard, `storm`, blocks everything for a while; installed peers then get their
//! handshake from the gateway's initiation instead, so the rule's purpose still holds.)

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::admission::{Judged, SourceNet};
use crate::dataplane::InstalledPeer;

/// An IPv4 or IPv6 prefix (host bits zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The host prefix of `ip` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn host(ip: IpAddr) -> Prefix {
        let addr = canonical(ip);
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    /// The /24 or /64 admission control judges.
    pub fn of_net(net: SourceNet) -> Prefix {
        match net {
            SourceNet::V4([a, b, c]) => Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(a, b, c, 0)),
                len: 24,
            },
            SourceNet::V6(n) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(&n);
                Prefix {
                    addr: IpAddr::V6(Ipv6Addr::from(o)),
                    len: 64,
                }
            }
        }
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An IPv4-mapped IPv6 address as IPv4 (what the wire carries on an IPv4 underlay).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One filter on the capture interface's ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Let initiations from this installed endpoint through (checked before any block).
    Pass(IpAddr),
    /// Drop initiations from this prefix.
    Block(Prefix),
}

impl Rule {
    pub fn is_v4(&self) -> bool {
        match self {
            Rule::Pass(ip) => ip.is_ipv4(),
            Rule::Block(p) => p.addr.is_ipv4(),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Pass(ip) => write!(f, "pass {ip}"),
            Rule::Block(p) => write!(f, "block {p}"),
        }
    }
}

/// The rules that should exist, at most `cap`: with `block_networks`, each judged
/// network with a pass for every installed endpoint inside it (left open when those do
/// not fit); then each judged address that is no installed endpoint and not inside a
/// network already blocked. Within each kind, rules already in force (`current`) are
/// kept first, then the rest in `judged`'s order.
///
/// Blocking a whole network is for the JIT path with the gateway initiating: a newcomer
/// there needs no initiation to reach the data plane (jitwgd captures it before tc, and
/// the client's response is never filtered); without initiation a newcomer's retry must
/// reach it, so only the offending addresses are blocked.
pub fn desired(
    judged: &Judged,
    endpoints: &HashSet<IpAddr>,
    cap: usize,
    current: &BTreeSet<Rule>,
    block_networks: bool,
) -> BTreeSet<Rule> {
    let endpoints: BTreeSet<IpAddr> = endpoints.iter().map(|ip| canonical(*ip)).collect();
    let in_force = |p: &Prefix| !current.contains(&Rule::Block(*p));
    let mut out = BTreeSet::new();
    let mut blocked_nets: Vec<Prefix> = Vec::new();
    if block_networks {
        let mut nets: Vec<Prefix> = judged.networks.iter().map(|n| Prefix::of_net(*n)).collect();
        nets.sort_by_key(in_force);
        for p in nets {
            let passes = endpoints
                .iter()
                .filter(|e| p.contains(**e))
                .map(|e| Rule::Pass(*e));
            let new: Vec<Rule> = std::iter::once(Rule::Block(p))
                .chain(passes)
                .filter(|r| !out.contains(r))
                .collect();
            if out.len() + new.len() <= cap {
                out.extend(new);
                blocked_nets.push(p);
            }
        }
    }
    let mut hosts: Vec<Prefix> = judged
        .addresses
        .iter()
        .map(|ip| Prefix::host(*ip))
        .filter(|p| !endpoints.contains(&p.addr))
        .filter(|p| !blocked_nets.iter().any(|n| n.contains(p.addr)))
        .collect();
    hosts.sort_by_key(in_force);
    for p in hosts {
        if out.len() < cap {
            out.insert(Rule::Block(p));
        }
    }
    out
}

/// The judged sources as sets, what a plan is made from. `Judged` lists them longest-held
/// first, an order every renewed penalty changes (a flood renews them with each knock);
/// `desired` looks at that order only to choose among rules not yet in force, which
/// cannot change a plan already in force whose sources are the same set (tested).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JudgedSet {
    addresses: HashSet<IpAddr>,
    networks: HashSet<SourceNet>,
}

impl From<&Judged> for JudgedSet {
    fn from(judged: &Judged) -> Self {
        JudgedSet {
            addresses: judged.addresses.iter().copied().collect(),
            networks: judged.networks.iter().copied().collect(),
        }
    }
}

/// Whether a wake-up of the shield must plan its rules again: the sources judged now
/// differ from those the last plan was made from (`None`: nothing planned yet), the
/// installed endpoints changed since, or that plan is not wholly in force (a tc
/// replacement failed and is retried). Otherwise planning would give back the rules in
/// force (`desired` is a fixpoint of its own output, whatever the order of the same
/// sources: tested), and the wake-up costs only the comparison.
pub fn needs_replan(
    planned_from: Option<&JudgedSet>,
    judged: &JudgedSet,
    endpoints_changed: bool,
    plan_in_force: bool,
) -> bool {
    !plan_in_force || endpoints_changed || planned_from != Some(judged)
}

/// The endpoint addresses of installed peers (canonical: an IPv4-mapped address as IPv4).
pub fn installed_endpoints(peers: &[InstalledPeer]) -> HashSet<IpAddr> {
    peers
        .iter()
        .filter_map(|p| p.endpoint.map(|e| canonical(e.ip())))
        .collect()
}

/// The rules of one address family (the kernel holds one program per family).
pub fn family(rules: &BTreeSet<Rule>, v4: bool) -> BTreeSet<Rule> {
    rules.iter().filter(|r| r.is_v4() == v4).copied().collect()
}

#[cfg(test)]
mod tests;
