//! Attacking populations (`behaviour.kind = "flood"` or `"replay"`) resolved into
//! [`AttackPlan`]s: who sends what, how fast, from which addresses. They are not clients: they
//! never count in the clients' figures, and their sources lie in ranges of their own (or, on
//! request, in the legitimate clients' /24s at addresses no client holds). Pure, seeded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use rand::RngCore;
use rand_chacha::ChaCha20Rng;

use super::arrival::Arrival;
use super::file::{Family, FloodFile, FloodKeys, Mac1, ReplayFile, SubnetsOf};
use super::resolve::{
    attack_shape, identity, rng, ClientPlan, PeerIdentity, Population, STREAM_ATTACKS,
};
use super::FieldError;
use crate::lab::topology::{ATTACK_SOURCES_V4, ATTACK_SOURCES_V6};

/// Keys cycled by `registered` and `unregistered` floods when `key_pool` is unset.
pub const DEFAULT_KEY_POOL: u32 = 256;
/// Most keys one flood may cycle: each is derived (one X25519) when the scenario resolves.
/// Registered pools also count against `MAX_PEERS`; an unregistered pool only has this.
pub const MAX_KEY_POOL: u32 = super::resolve::MAX_PEERS;
/// Most initiations one flood may send: its packets are built before the run (a fresh-key
/// initiation costs ~4 X25519 operations, too many to build live at thousands per second on
/// a shared driver CPU), and this bounds that time and memory (148 bytes each).
pub const MAX_FLOOD_PACKETS: u32 = 2_000_000;
/// Hosts used per /24 (.1 to .254) and, for symmetry, per IPv6 /64.
const HOSTS_PER_SUBNET: u32 = 254;

/// What an attacking population sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackKind {
    Flood {
        keys: FloodKeys,
        mac1: Mac1,
    },
    /// Initiations captured from the legitimate clients, sent again from the attack's sources.
    Replay,
}

impl AttackKind {
    /// A short name for results: `flood-fresh`, `flood-junk`, `replay`, ...
    pub fn label(&self) -> String {
        match self {
            AttackKind::Flood {
                mac1: Mac1::Invalid,
                ..
            } => "flood-junk".into(),
            AttackKind::Flood { keys, .. } => format!(
                "flood-{}",
                match keys {
                    FloodKeys::Fresh => "fresh",
                    FloodKeys::Registered => "registered",
                    FloodKeys::Unregistered => "unregistered",
                }
            ),
            AttackKind::Replay => "replay".into(),
        }
    }
}

/// One attacking population, resolved.
#[derive(Debug, Clone)]
pub struct AttackPlan {
    /// Index into `Scenario::populations`.
    pub population: usize,
    pub name: String,
    pub kind: AttackKind,
    /// When it starts sending, relative to the run start.
    pub start: Duration,
    /// Initiations it sends in all (the population's `count`).
    pub packets: u32,
    pub packets_per_second: f64,
    /// One socket each.
    pub sources: Vec<IpAddr>,
    /// Keys cycled (registered / unregistered floods); empty for fresh keys and replays.
    pub key_pool: Vec<PeerIdentity>,
    /// Seeds fresh keys and junk bytes.
    pub seed: u64,
}

impl AttackPlan {
    /// How long it takes to send every packet at its rate.
    pub fn sending_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.packets) / self.packets_per_second)
    }

    pub fn is_ipv6(&self) -> bool {
        self.sources.first().is_some_and(IpAddr::is_ipv6)
    }
}

/// The parts of a flood or replay behaviour that place and pace it.
pub(super) struct AttackShape {
    pub kind: AttackKind,
    pub packets_per_second: f64,
    pub sources: u32,
    pub subnets: u32,
    pub subnets_of: SubnetsOf,
    pub family: Family,
    pub key_pool: Option<u32>,
}

impl AttackShape {
    pub fn flood(f: &FloodFile) -> Self {
        AttackShape {
            kind: AttackKind::Flood {
                keys: f.keys,
                mac1: f.mac1,
            },
            packets_per_second: f.packets_per_second,
            sources: f.sources,
            subnets: f.subnets,
            subnets_of: f.subnets_of,
            family: f.family,
            key_pool: f.key_pool,
        }
    }

    pub fn replay(r: &ReplayFile) -> Self {
        AttackShape {
            kind: AttackKind::Replay,
            packets_per_second: r.packets_per_second,
            sources: r.sources,
            subnets: r.subnets,
            subnets_of: r.subnets_of,
            family: r.family,
            key_pool: None,
        }
    }

    /// Keys the control plane must know for this attack (registered floods), else 0.
    pub fn registered_keys(&self) -> u32 {
        match self.kind {
            AttackKind::Flood {
                keys: FloodKeys::Registered,
                mac1: Mac1::Valid,
            } => self.pool_size(),
            _ => 0,
        }
    }

    /// Keys cycled by a registered or unregistered flood.
    pub fn pool_size(&self) -> u32 {
        match self.kind {
            AttackKind::Flood {
                keys: FloodKeys::Registered | FloodKeys::Unregistered,
                mac1: Mac1::Valid,
            } => self.key_pool.unwrap_or(DEFAULT_KEY_POOL),
            _ => 0,
        }
    }

    /// Checks the values; `key` is `population[i].behaviour`.
    pub fn check(&self, key: &str, count: u32) -> Result<(), FieldError> {
        let bad = |k: &str, reason: String| {
            Err(FieldError {
                key: format!("{key}.{k}"),
                reason,
            })
        };
        if !(self.packets_per_second.is_finite() && self.packets_per_second > 0.0) {
            return bad(
                "packets_per_second",
                format!("must be a positive number, got {}", self.packets_per_second),
            );
        }
        if self.sources == 0 {
            return bad("sources", "must be at least 1".into());
        }
        if self.subnets == 0 || self.subnets > self.sources {
            return bad(
                "subnets",
                format!("must be between 1 and sources ({})", self.sources),
            );
        }
        if self.sources.div_ceil(self.subnets) > HOSTS_PER_SUBNET {
            return bad(
                "sources",
                format!(
                    "{} sources over {} subnets exceed {HOSTS_PER_SUBNET} per subnet",
                    self.sources, self.subnets
                ),
            );
        }
        if self.subnets_of == SubnetsOf::Shared && self.family == Family::Ipv6 {
            return bad(
                "subnets_of",
                "`shared` needs family = \"ipv4\": legitimate clients have IPv4 sources".into(),
            );
        }
        if count > MAX_FLOOD_PACKETS {
            return Err(FieldError {
                key: key.replace(".behaviour", ".count"),
                reason: format!("an attack sends at most {MAX_FLOOD_PACKETS} packets"),
            });
        }
        if self.key_pool == Some(0) {
            return bad("key_pool", "must be at least 1".into());
        }
        if self.key_pool.is_some_and(|n| n > MAX_KEY_POOL) {
            return bad("key_pool", format!("must be at most {MAX_KEY_POOL}"));
        }
        if self.key_pool.is_some() && self.pool_size() == 0 {
            return bad(
                "key_pool",
                "is only for registered or unregistered keys with mac1 = \"valid\"".into(),
            );
        }
        Ok(())
    }
}

/// Hands out attack subnets so that no two attacking populations share one.
#[derive(Debug, Default)]
pub(super) struct SourceAllocator {
    next_v4_subnet: u32,
    next_v6_subnet: u32,
    /// Per legitimate /24 (its first three octets as a number), the hosts already given out.
    shared_taken: BTreeMap<u32, u32>,
}

impl SourceAllocator {
    /// The sources of one attack: `sources` addresses spread round robin over `subnets`.
    pub fn allocate(
        &mut self,
        key: &str,
        shape: &AttackShape,
        clients: &[ClientPlan],
    ) -> Result<Vec<IpAddr>, FieldError> {
        let per_subnet = shape.sources.div_ceil(shape.subnets);
        let too_many = |what: &str| FieldError {
            key: format!("{key}.subnets"),
            reason: format!("not enough {what} left for this population"),
        };
        match (shape.family, shape.subnets_of) {
            (Family::Ipv4, SubnetsOf::Own) => {
                let available = 1u32 << (32 - ATTACK_SOURCES_V4.prefix_len() - 8);
                let first = self.next_v4_subnet;
                if first + shape.subnets > available {
                    return Err(too_many("IPv4 attack /24s"));
                }
                self.next_v4_subnet += shape.subnets;
                let base = u32::from(ATTACK_SOURCES_V4.network());
                Ok((0..shape.sources)
                    .map(|i| {
                        let subnet = first + i % shape.subnets;
                        let host = 1 + i / shape.subnets;
                        IpAddr::V4(Ipv4Addr::from(base + (subnet << 8) + host))
                    })
                    .collect())
            }
            (Family::Ipv6, _) => {
                let available = 1u32 << (64 - ATTACK_SOURCES_V6.prefix_len());
                let first = self.next_v6_subnet;
                if first + shape.subnets > available {
                    return Err(too_many("IPv6 attack /64s"));
                }
                self.next_v6_subnet += shape.subnets;
                let base = u128::from(ATTACK_SOURCES_V6.network());
                Ok((0..shape.sources)
                    .map(|i| {
                        let subnet = u128::from(first + i % shape.subnets);
                        let host = u128::from(1 + i / shape.subnets);
                        IpAddr::V6(Ipv6Addr::from(base + (subnet << 64) + host))
                    })
                    .collect())
            }
            (Family::Ipv4, SubnetsOf::Shared) => {
                let held: BTreeSet<u32> = clients.iter().map(|c| u32::from(c.source_ip)).collect();
                // Clients' /24s that still have a free host (a /24 the clients fill is no
                // neighbourhood to share).
                let free_hosts = |net: u32| {
                    (1..=HOSTS_PER_SUBNET)
                        .filter(|h| !held.contains(&((net << 8) + h)))
                        .count() as u32
                };
                let nets: Vec<u32> = held
                    .iter()
                    .map(|a| a >> 8)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|&net| {
                        free_hosts(net) > self.shared_taken.get(&net).copied().unwrap_or(0)
                    })
                    .take(shape.subnets as usize)
                    .collect();
                if nets.len() < shape.subnets as usize {
                    return Err(FieldError {
                        key: format!("{key}.subnets"),
                        reason: format!(
                            "legitimate clients have free addresses in only {} /24s, fewer than {}",
                            nets.len(),
                            shape.subnets
                        ),
                    });
                }
                // The free hosts of each shared /24, after those earlier attacks took.
                let mut free: Vec<Vec<u32>> = Vec::with_capacity(nets.len());
                for net in &nets {
                    let skip = self.shared_taken.get(net).copied().unwrap_or(0) as usize;
                    let hosts: Vec<u32> = (1..=HOSTS_PER_SUBNET)
                        .map(|h| (net << 8) + h)
                        .filter(|a| !held.contains(a))
                        .skip(skip)
                        .take(per_subnet as usize)
                        .collect();
                    free.push(hosts);
                }
                let mut out = Vec::with_capacity(shape.sources as usize);
                for i in 0..shape.sources {
                    let s = (i % shape.subnets) as usize;
                    let k = (i / shape.subnets) as usize;
                    let addr = free[s]
                        .get(k)
                        .copied()
                        .ok_or_else(|| too_many("free addresses in the clients' /24s"))?;
                    *self.shared_taken.entry(nets[s]).or_insert(0) += 1;
                    out.push(IpAddr::V4(Ipv4Addr::from(addr)));
                }
                Ok(out)
            }
        }
    }
}

/// Resolves the attacking populations. Registered flood keys come after every other peer on
/// the key stream and in the tunnel range (from `first_tunnel_host`), so adding an attack
/// shifts no client's key or address; unregistered keys and seeds have a stream of their own.
pub(super) fn resolve_attacks(
    populations: &[Population],
    clients: &[ClientPlan],
    seed: u64,
    keys: &mut ChaCha20Rng,
    first_tunnel_host: u32,
) -> Result<Vec<AttackPlan>, FieldError> {
    let mut own = rng(seed, STREAM_ATTACKS);
    let mut sources = SourceAllocator::default();
    let mut next_tunnel = first_tunnel_host;
    let mut out = Vec::new();
    for (pi, p) in populations.iter().enumerate() {
        let Some(shape) = attack_shape(&p.behaviour) else {
            continue;
        };
        let key = format!("population[{pi}].behaviour");
        let registered = shape.registered_keys();
        let key_pool = if registered > 0 {
            let pool = (0..registered)
                .map(|i| identity(keys, next_tunnel + i))
                .collect();
            next_tunnel += registered;
            pool
        } else {
            (0..shape.pool_size())
                .map(|_| identity(&mut own, 0))
                .collect()
        };
        let Arrival::Burst { at } = p.arrival else {
            return Err(FieldError {
                key: format!("population[{pi}].arrival"),
                reason: "must be a burst".into(),
            });
        };
        out.push(AttackPlan {
            population: pi,
            name: p.name.clone(),
            kind: shape.kind,
            start: at,
            packets: p.count,
            packets_per_second: shape.packets_per_second,
            sources: sources.allocate(&key, &shape, clients)?,
            key_pool,
            seed: own.next_u64(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::scenario::{parse, Adjustments, Scenario, ScenarioError};

    const BASE: &str = r#"
name = "t"
seed = 3
duration = "10s"
[[population]]
name = "legit"
count = 300
arrival = { kind = "constant", rate = 50.0 }
"#;

    fn with_flood(behaviour: &str) -> Result<Scenario, ScenarioError> {
        let text = format!(
            "{BASE}\n[[population]]\nname = \"flood\"\ncount = 1000\narrival = {{ kind = \"burst\", at = \"1s\" }}\nbehaviour = {behaviour}\n"
        );
        parse(Path::new("t.toml"), &text, &Adjustments::default())
    }

    #[test]
    fn a_flood_is_no_client_and_shifts_no_client() {
        let plain = parse(Path::new("t.toml"), BASE, &Adjustments::default()).unwrap();
        let s = with_flood(
            r#"{ kind = "flood", keys = "fresh", packets_per_second = 500.0, sources = 256, subnets = 16 }"#,
        )
        .unwrap();
        assert_eq!(s.clients.len(), 300);
        let keys = |s: &Scenario| {
            s.clients
                .iter()
                .map(|c| c.identity.public_key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&plain), keys(&s));
        let a = &s.attacks[0];
        assert_eq!((a.packets, a.start), (1000, Duration::from_secs(1)));
        assert_eq!(a.sending_time(), Duration::from_secs(2));
        let mut nets: Vec<u32> = a
            .sources
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => u32::from(*v4) >> 8,
                IpAddr::V6(_) => panic!("IPv4 expected"),
            })
            .collect();
        nets.sort();
        nets.dedup();
        assert_eq!(nets.len(), 16);
        assert!(a
            .sources
            .iter()
            .all(|ip| matches!(ip, IpAddr::V4(v4) if ATTACK_SOURCES_V4.contains(v4))));
        assert!(!s.needs_ipv6());
    }

    #[test]
    fn registered_keys_are_registered_and_shared_sources_avoid_clients() {
        let s = with_flood(
            r#"{ kind = "flood", keys = "registered", key_pool = 10, packets_per_second = 5.0, sources = 40, subnets = 1, subnets_of = "shared" }"#,
        )
        .unwrap();
        assert_eq!(s.registered_peers().count(), 310);
        let held: BTreeSet<IpAddr> = s.clients.iter().map(|c| IpAddr::V4(c.source_ip)).collect();
        let nets: BTreeSet<u32> = s
            .clients
            .iter()
            .map(|c| u32::from(c.source_ip) >> 8)
            .collect();
        for ip in &s.attacks[0].sources {
            assert!(!held.contains(ip), "{ip} is a client's");
            let IpAddr::V4(v4) = ip else { panic!() };
            assert!(nets.contains(&(u32::from(*v4) >> 8)));
        }
        let distinct: BTreeSet<_> = s.attacks[0].sources.iter().collect();
        assert_eq!(distinct.len(), 40);
    }

    #[test]
    fn ipv6_floods_spread_over_slash_64s() {
        let s = with_flood(
            r#"{ kind = "flood", keys = "unregistered", packets_per_second = 5.0, sources = 64, subnets = 8, family = "ipv6" }"#,
        )
        .unwrap();
        assert!(s.needs_ipv6());
        assert_eq!(s.attacks[0].key_pool.len(), DEFAULT_KEY_POOL as usize);
        let nets: BTreeSet<u128> = s.attacks[0]
            .sources
            .iter()
            .map(|ip| match ip {
                IpAddr::V6(v6) => u128::from(*v6) >> 64,
                IpAddr::V4(_) => panic!("IPv6 expected"),
            })
            .collect();
        assert_eq!(nets.len(), 8);
    }

    #[test]
    fn bad_attacks_name_their_key() {
        for (behaviour, key) in [
            (
                r#"{ kind = "flood", keys = "fresh", packets_per_second = 0.0, sources = 1 }"#,
                "packets_per_second",
            ),
            (
                r#"{ kind = "flood", keys = "fresh", packets_per_second = 1.0, sources = 600 }"#,
                "sources",
            ),
            (
                r#"{ kind = "flood", keys = "fresh", packets_per_second = 1.0, sources = 4, subnets = 5 }"#,
                "subnets",
            ),
            (
                r#"{ kind = "flood", keys = "fresh", key_pool = 3, packets_per_second = 1.0, sources = 4 }"#,
                "key_pool",
            ),
            // Unbounded, this derived 4 billion keys before the run could start.
            (
                r#"{ kind = "flood", keys = "unregistered", key_pool = 4000000000, packets_per_second = 1.0, sources = 4 }"#,
                "key_pool",
            ),
            (
                r#"{ kind = "replay", packets_per_second = 1.0, sources = 4, subnets_of = "shared", family = "ipv6" }"#,
                "subnets_of",
            ),
            (
                r#"{ kind = "flood", keys = "fresh", packets_per_second = 1.0, sources = 4, bogus = 1 }"#,
                "bogus",
            ),
        ] {
            let err = with_flood(behaviour).unwrap_err().to_string();
            assert!(err.contains(key), "{behaviour}: {err}");
        }
        let text = format!(
            "{BASE}\n[[population]]\nname = \"f\"\ncount = 10\narrival = {{ kind = \"constant\", rate = 1.0 }}\nbehaviour = {{ kind = \"replay\", packets_per_second = 1.0, sources = 1 }}\n"
        );
        let err = parse(Path::new("t.toml"), &text, &Adjustments::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("population[1].arrival"), "{err}");
    }
}
