//! Per-source penalties: a source network (/24 for IPv4, /64 for IPv6, the unit one
//! operator or one attacker usually holds) whose keys come back 404 from the control
//! plane earns a penalty (a leaky bucket of 404s); while it is over its limit, lookups of
//! keys with no cache entry from that network are refused. Keys that resolve never add
//! to it, so clients whose keys exist are never slowed by it, even when thousands knock
//! at once from one network. Once a network is suspect (its bucket at least half full),
//! its lookups still in flight count as 404s to come: otherwise every first contact
//! arriving while one lookup is out would be let through (measured: ~4 per second per
//! /24 under a 3,000/s flood instead of 1).
//!
//! Pure: time is an argument. Bounded: at most `max_sources` networks are tracked; when
//! full, networks with nothing in flight whose penalty has decayed to nothing are
//! forgotten, and if none has, a new network is simply not tracked (the global
//! unknown-key budget still applies).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The network an address is judged by: its /24 (IPv4, also IPv4-mapped IPv6) or its
/// /64 (IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceNet {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl SourceNet {
    pub fn of(ip: IpAddr) -> SourceNet {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                SourceNet::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceNet::of(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&o[..8]);
                    SourceNet::V6(net)
                }
            },
        }
    }
}

impl std::fmt::Display for SourceNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceNet::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            SourceNet::V6(n) => {
                for (i, pair) in n.chunks(2).enumerate() {
                    let sep = if i == 0 { "" } else { ":" };
                    write!(f, "{sep}{:x}", u16::from_be_bytes([pair[0], pair[1]]))?;
                }
                write!(f, "::/64")
            }
        }
    }
}

/// How penalties are earned and forgiven.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PenaltySettings {
    /// 404s a network may cause in a burst before its unknown keys are refused.
    pub burst: u32,
    /// One 404 is forgiven per this interval (the sustained 404 rate a network keeps).
    pub forgive_every: Duration,
    /// Networks tracked at most.
    pub max_sources: usize,
}

/// A leaky bucket of 404s per network: each 404 adds one, `forgive_every` drains one;
/// and the network's lookups in flight.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: Instant,
    pending: u32,
}

impl Bucket {
    fn level_at(&self, now: Instant, forgive_every: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let per_sec = 1.0 / forgive_every.as_secs_f64().max(1e-9);
        (self.level - elapsed * per_sec).max(0.0)
    }
}

/// Penalties per source network.
#[derive(Debug)]
pub struct SourcePenalties {
    settings: PenaltySettings,
    buckets: HashMap<SourceNet, Bucket>,
}

impl SourcePenalties {
    pub fn new(settings: PenaltySettings) -> Self {
        SourcePenalties {
            settings,
            buckets: HashMap::new(),
        }
    }

    /// Whether `net` may look up a key the cache has never seen at `now`: its bucket has
    /// room for one more 404, counting its lookups in flight once it is suspect.
    pub fn allows(&self, net: SourceNet, now: Instant) -> bool {
        let Some(b) = self.buckets.get(&net) else {
            return true;
        };
        let burst = f64::from(self.settings.burst);
        let level = b.level_at(now, self.settings.forgive_every);
        let suspect = level >= burst / 2.0;
        let to_come = if suspect { f64::from(b.pending) } else { 0.0 };
        level + to_come + 1.0 <= burst
    }

    /// A first contact from `net` went to the control plane.
    pub fn started(&mut self, net: SourceNet, now: Instant) {
        if let Some(b) = self.bucket(net, now) {
            b.pending = b.pending.saturating_add(1);
        }
    }

    /// The lookup `started` for `net` ended; `not_found`: with a 404.
    pub fn answered(&mut self, net: SourceNet, not_found: bool, now: Instant) {
        let forgive = self.settings.forgive_every;
        let cap = 2.0 * f64::from(self.settings.burst);
        if let Some(b) = self.buckets.get_mut(&net) {
            b.pending = b.pending.saturating_sub(1);
            if not_found {
                // Never more than one burst above the limit: a network that stops is
                // forgiven within (2 × burst × forgive_every), however long it flooded.
                b.level = (b.level_at(now, forgive) + 1.0).min(cap);
                b.at = now;
            }
        }
    }

    /// `net`'s bucket, created if the table has room (after forgetting idle networks).
    fn bucket(&mut self, net: SourceNet, now: Instant) -> Option<&mut Bucket> {
        let forgive = self.settings.forgive_every;
        if !self.buckets.contains_key(&net) && self.buckets.len() >= self.settings.max_sources {
            self.buckets
                .retain(|_, b| b.pending > 0 || b.level_at(now, forgive) > 0.0);
            if self.buckets.len() >= self.settings.max_sources {
                return None;
            }
        }
        Some(self.buckets.entry(net).or_insert(Bucket {
            level: 0.0,
            at: now,
            pending: 0,
        }))
    }

    /// Every network refused at `now` (for the kernel shield, `crate::shield`).
    pub fn refused(&self, now: Instant) -> Vec<SourceNet> {
        self.buckets
            .keys()
            .filter(|net| !self.allows(**net, now))
            .copied()
            .collect()
    }

    /// Networks tracked now (for tests and the gauge).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> PenaltySettings {
        PenaltySettings {
            burst: 4,
            forgive_every: Duration::from_secs(1),
            max_sources: 3,
        }
    }

    fn net(n: u8) -> SourceNet {
        SourceNet::V4([198, 18, n])
    }

    #[test]
    fn networks_are_slash24_and_slash64() {
        assert_eq!(
            SourceNet::of("198.18.7.9".parse().unwrap()),
            SourceNet::of("198.18.7.200".parse().unwrap())
        );
        assert_ne!(
            SourceNet::of("198.18.7.9".parse().unwrap()),
            SourceNet::of("198.18.8.9".parse().unwrap())
        );
        assert_eq!(
            SourceNet::of("::ffff:198.18.7.9".parse().unwrap()),
            SourceNet::of("198.18.7.1".parse().unwrap())
        );
        let a = SourceNet::of("2001:2:0:1::5".parse().unwrap());
        assert_eq!(a, SourceNet::of("2001:2:0:1:ffff::1".parse().unwrap()));
        assert_ne!(a, SourceNet::of("2001:2:0:2::5".parse().unwrap()));
        assert_eq!(a.to_string(), "2001:2:0:1::/64");
        assert_eq!(net(3).to_string(), "198.18.3.0/24");
    }

    /// One 404 answered for `net` at `at`.
    fn not_found(p: &mut SourcePenalties, n: u8, at: Instant) {
        p.started(net(n), at);
        p.answered(net(n), true, at);
    }

    #[test]
    fn a_network_is_refused_after_its_burst_and_forgiven_over_time() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        for _ in 0..4 {
            assert!(p.allows(net(1), t0));
            not_found(&mut p, 1, t0);
        }
        assert!(!p.allows(net(1), t0));
        assert!(p.allows(net(2), t0), "other networks are not affected");
        assert!(!p.allows(net(1), t0 + Duration::from_millis(900)));
        assert!(p.allows(net(1), t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn a_storm_in_flight_from_a_clean_network_is_never_refused() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        for _ in 0..1000 {
            assert!(p.allows(net(1), t0));
            p.started(net(1), t0);
        }
        for _ in 0..1000 {
            p.answered(net(1), false, t0);
        }
        assert!(p.allows(net(1), t0));
    }

    #[test]
    fn a_suspect_network_counts_its_lookups_in_flight() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        // Half the burst (2 of 4): suspect; two more in flight fit, a third does not.
        not_found(&mut p, 1, t0);
        not_found(&mut p, 1, t0);
        for _ in 0..2 {
            assert!(p.allows(net(1), t0));
            p.started(net(1), t0);
        }
        assert!(!p.allows(net(1), t0));
        p.answered(net(1), false, t0);
        assert!(p.allows(net(1), t0), "the key resolved: nothing charged");
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_forgiven_networks_first() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        for n in 0..3 {
            not_found(&mut p, n, t0);
        }
        not_found(&mut p, 9, t0);
        assert_eq!(p.tracked(), 3, "full and nothing forgiven: not tracked");
        let later = t0 + Duration::from_secs(5);
        not_found(&mut p, 9, later);
        assert_eq!(p.tracked(), 1);
    }

    proptest! {
        /// Whatever the sequence of 404s, a network is refused only if it caused at
        /// least half its burst of them, and every network is allowed again after
        /// 2 × burst × forgive_every of silence; the table never exceeds its bound.
        #[test]
        fn refusal_needs_a_burst_and_always_ends(
            events in proptest::collection::vec((0u8..6, 0u64..3000), 0..200),
        ) {
            let t0 = Instant::now();
            let s = settings();
            let mut p = SourcePenalties::new(s);
            let mut counts = HashMap::new();
            let mut at = t0;
            for (n, step_ms) in events {
                at += Duration::from_millis(step_ms);
                not_found(&mut p, n, at);
                *counts.entry(n).or_insert(0u32) += 1;
                prop_assert!(p.tracked() <= s.max_sources);
                for m in 0..6u8 {
                    if !p.allows(net(m), at) {
                        prop_assert!(2 * counts.get(&m).copied().unwrap_or(0) >= s.burst);
                    }
                }
            }
            let quiet = at + s.forgive_every * (2 * s.burst) + Duration::from_millis(1);
            for m in 0..6u8 {
                prop_assert!(p.allows(net(m), quiet));
            }
        }
    }
}
