//! Per-source penalties: a source network (/24 for IPv4, /64 for IPv6, the unit one
//! operator or one attacker usually holds) whose keys come back 404 from the control
//! plane earns a penalty; while it is over its limit, lookups of keys with no cache
//! entry from that network are refused. Each first contact is charged when it goes to
//! the control plane and refunded unless the answer is a 404, so lookups in flight count
//! and keys that resolve never add to it, so clients
//! whose keys exist are never slowed by it, even when thousands knock at once.
//!
//! Pure: time is an argument. Bounded: at most `max_sources` networks are tracked; when
//! full, networks whose penalty has decayed to nothing are forgotten, and if none has,
//! a new network is simply not tracked (the global unknown-key budget still applies).

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

/// A leaky bucket of 404s per network: each 404 adds one, `forgive_every` drains one.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: Instant,
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

    /// Whether `net` may look up a key the cache has never seen at `now`: its bucket
    /// has room for one more 404.
    pub fn allows(&self, net: SourceNet, now: Instant) -> bool {
        match self.buckets.get(&net) {
            None => true,
            Some(b) => {
                b.level_at(now, self.settings.forgive_every) + 1.0 <= f64::from(self.settings.burst)
            }
        }
    }

    /// A first contact from `net` is going to the control plane: charge its 404 now,
    /// before the answer, so lookups in flight count against the burst too (charging
    /// on the answer let through every first contact that arrived while one was out).
    pub fn charge(&mut self, net: SourceNet, now: Instant) {
        let forgive = self.settings.forgive_every;
        if !self.buckets.contains_key(&net) && self.buckets.len() >= self.settings.max_sources {
            self.buckets.retain(|_, b| b.level_at(now, forgive) > 0.0);
            if self.buckets.len() >= self.settings.max_sources {
                return;
            }
        }
        let bucket = self.buckets.entry(net).or_insert(Bucket {
            level: 0.0,
            at: now,
        });
        let level = bucket.level_at(now, forgive) + 1.0;
        // Never more than one burst above the limit: a network that stops is forgiven
        // within (2 × burst × forgive_every), however long it flooded.
        bucket.level = level.min(2.0 * f64::from(self.settings.burst));
        bucket.at = now;
    }

    /// The charged lookup did not end in a 404 (the key resolved, or no answer): take
    /// the charge back.
    pub fn refund(&mut self, net: SourceNet, now: Instant) {
        let forgive = self.settings.forgive_every;
        if let Some(bucket) = self.buckets.get_mut(&net) {
            bucket.level = (bucket.level_at(now, forgive) - 1.0).max(0.0);
            bucket.at = now;
        }
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

    #[test]
    fn a_network_is_refused_after_its_burst_and_forgiven_over_time() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        for _ in 0..4 {
            assert!(p.allows(net(1), t0));
            p.charge(net(1), t0);
        }
        assert!(!p.allows(net(1), t0));
        assert!(p.allows(net(2), t0), "other networks are not affected");
        assert!(!p.allows(net(1), t0 + Duration::from_millis(900)));
        assert!(p.allows(net(1), t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn a_refund_takes_the_charge_back_and_lookups_in_flight_count() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        for _ in 0..4 {
            assert!(p.allows(net(1), t0));
            p.charge(net(1), t0);
        }
        assert!(
            !p.allows(net(1), t0),
            "four lookups in flight fill the burst"
        );
        p.refund(net(1), t0);
        assert!(p.allows(net(1), t0), "one resolved");
        p.refund(net(7), t0);
        assert_eq!(p.tracked(), 1, "a refund creates nothing");
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_forgiven_networks_first() {
        let t0 = Instant::now();
        let mut p = SourcePenalties::new(settings());
        for n in 0..3 {
            p.charge(net(n), t0);
        }
        p.charge(net(9), t0);
        assert_eq!(p.tracked(), 3, "full and nothing forgiven: not tracked");
        let later = t0 + Duration::from_secs(5);
        p.charge(net(9), later);
        assert_eq!(p.tracked(), 1);
    }

    proptest! {
        /// Whatever the sequence of 404s, a network is refused only if it was charged
        /// at least `burst` times, and every network is allowed again after
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
                p.charge(net(n), at);
                *counts.entry(n).or_insert(0u32) += 1;
                prop_assert!(p.tracked() <= s.max_sources);
                for m in 0..6u8 {
                    if !p.allows(net(m), at) {
                        prop_assert!(counts.get(&m).copied().unwrap_or(0) >= s.burst);
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
