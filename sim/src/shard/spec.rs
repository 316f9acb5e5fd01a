//! The pure rules of sharding: which clients shard `I/N` runs, which source addresses they send
//! from, whether wireguard-go's per-source handshake limit could bind, and how a shard's clock
//! offset is estimated from timed HTTP exchanges. No IO, no clock: times are arguments.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;

/// wireguard-go under load: handshakes answered per source address and second.
pub const PER_SOURCE_HANDSHAKES_PER_S: usize = 20;

/// `I/N`: shard `I` of `N` runs the clients whose id ≡ I (mod N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub index: u32,
    pub count: u32,
}

/// Why `--shard` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardSpecError {
    #[error("`{0}` is not a shard like 0/3 (index/count)")]
    Syntax(String),
    #[error("shard count must be at least 1, got {0}")]
    NoShards(u32),
    #[error("shard index {index} is out of range for {count} shards (0..={})", count - 1)]
    IndexOutOfRange { index: u32, count: u32 },
}

impl ShardSpec {
    pub fn new(index: u32, count: u32) -> Result<ShardSpec, ShardSpecError> {
        if count == 0 {
            return Err(ShardSpecError::NoShards(count));
        }
        if index >= count {
            return Err(ShardSpecError::IndexOutOfRange { index, count });
        }
        Ok(ShardSpec { index, count })
    }

    /// Whether client `id` belongs to this shard.
    pub fn runs(&self, id: u32) -> bool {
        id % self.count == self.index
    }
}

impl FromStr for ShardSpec {
    type Err = ShardSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ShardSpecError::Syntax(s.to_string());
        let (i, n) = s.trim().split_once('/').ok_or_else(syntax)?;
        let index = i.trim().parse().map_err(|_| syntax())?;
        let count = n.trim().parse().map_err(|_| syntax())?;
        ShardSpec::new(index, count)
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Source address number `n` of `block`, cycling through its usable addresses. A block of one
/// address (a /32, e.g. a pod's own IP) gives that address; larger blocks skip addresses ending
/// in .0 and .255, which some tools treat as network or broadcast addresses.
pub fn source_address(block: Ipv4Net, n: u32) -> Ipv4Addr {
    let usable = usable_sources(block);
    let base = u32::from(block.network());
    if block.prefix_len() >= 31 {
        return Ipv4Addr::from(base + n % usable);
    }
    let mut i = n % usable;
    let mut addr = base;
    // Walk /24 groups of 254 usable addresses, as `AddressPlan::client_source` does.
    if block.prefix_len() <= 24 {
        addr += (i / 254) * 256 + 1;
        i %= 254;
        return Ipv4Addr::from(addr + i);
    }
    // Smaller than a /24: the usable addresses are every one whose last octet is not 0 or 255.
    let mut candidate = base;
    loop {
        let last = candidate & 0xff;
        if last != 0 && last != 255 {
            if i == 0 {
                return Ipv4Addr::from(candidate);
            }
            i -= 1;
        }
        candidate += 1;
    }
}

/// How many distinct addresses [`source_address`] cycles through.
pub fn usable_sources(block: Ipv4Net) -> u32 {
    let total = 1u64 << (32 - block.prefix_len());
    if block.prefix_len() >= 31 {
        return total as u32;
    }
    if block.prefix_len() <= 24 {
        return ((total / 256) * 254) as u32;
    }
    let base = u32::from(block.network());
    let count = (0..total)
        .filter(|k| {
            let last = (u64::from(base) + k) & 0xff;
            last != 0 && last != 255
        })
        .count();
    count.max(1) as u32
}

/// The most first initiations any one source address sends within one second, given each
/// client's source and planned start: more than [`PER_SOURCE_HANDSHAKES_PER_S`] and
/// wireguard-go, once under load, answers some of them only after a retry.
pub fn peak_per_source_rate(starts: &[(Ipv4Addr, Duration)]) -> usize {
    let mut by_source: std::collections::HashMap<Ipv4Addr, Vec<Duration>> =
        std::collections::HashMap::new();
    for (ip, at) in starts {
        by_source.entry(*ip).or_default().push(*at);
    }
    let window = Duration::from_secs(1);
    by_source
        .values_mut()
        .map(|times| {
            times.sort();
            let mut best = 0;
            let mut lo = 0;
            for hi in 0..times.len() {
                while times[hi] - times[lo] >= window {
                    lo += 1;
                }
                best = best.max(hi - lo + 1);
            }
            best
        })
        .max()
        .unwrap_or(0)
}

/// The warning a shard records when its peak per-source rate could meet the limit.
pub fn per_source_warning(peak: usize, sources: u64) -> Option<String> {
    (peak > PER_SOURCE_HANDSHAKES_PER_S).then(|| {
        format!(
            "up to {peak} handshakes/s from one source address ({sources} distinct sources): \
             wireguard-go under load allows {PER_SOURCE_HANDSHAKES_PER_S}/s per source IP, so \
             some clients may connect only on a 5 s retry; give the fleet more source addresses \
             (--sources) or more shards"
        )
    })
}

/// Distinct source addresses of `starts` (source, planned start) and the per-source warning,
/// if the limit could bind.
pub fn source_summary(starts: &[(Ipv4Addr, Duration)]) -> (u64, Option<String>) {
    let distinct = starts
        .iter()
        .map(|(ip, _)| *ip)
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    (
        distinct,
        per_source_warning(peak_per_source_rate(starts), distinct),
    )
}

/// One timed exchange with the gateway's clock: local send and receive times and the gateway's
/// time in between (all Unix ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockSample {
    pub sent_ms: f64,
    pub gateway_ms: f64,
    pub received_ms: f64,
}

/// Gateway clock minus local clock, and the round trip it was measured over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClockOffset {
    pub offset_ms: f64,
    pub rtt_ms: f64,
}

/// NTP's estimate from the exchange with the shortest round trip (the least queueing): the
/// gateway read its clock halfway through it, give or take half the round trip.
pub fn estimate_offset(samples: &[ClockSample]) -> Option<ClockOffset> {
    samples
        .iter()
        .filter(|s| s.received_ms >= s.sent_ms)
        .map(|s| ClockOffset {
            offset_ms: s.gateway_ms - (s.sent_ms + s.received_ms) / 2.0,
            rtt_ms: s.received_ms - s.sent_ms,
        })
        .min_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms))
}

/// How long to wait from local Unix time `now_ms` for the gateway's start time
/// `start_gateway_ms`, given the gateway's clock is `offset` ahead of ours.
pub fn wait_for_start(start_gateway_ms: f64, now_ms: f64, offset_ms: f64) -> Duration {
    let local_start = start_gateway_ms - offset_ms;
    Duration::from_secs_f64(((local_start - now_ms) / 1000.0).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_parse_and_refuse_out_of_range() {
        let s: ShardSpec = "2/3".parse().unwrap();
        assert_eq!((s.index, s.count), (2, 3));
        assert_eq!(s.to_string(), "2/3");
        assert!(s.runs(5) && !s.runs(6));
        assert_eq!(
            "3/3".parse::<ShardSpec>(),
            Err(ShardSpecError::IndexOutOfRange { index: 3, count: 3 })
        );
        assert_eq!("0/0".parse::<ShardSpec>(), Err(ShardSpecError::NoShards(0)));
        assert!(matches!(
            "1-3".parse::<ShardSpec>(),
            Err(ShardSpecError::Syntax(_))
        ));
        assert!("a/3".parse::<ShardSpec>().is_err());
    }

    #[test]
    fn every_client_is_in_exactly_one_shard() {
        for count in 1..6 {
            for id in 0..50 {
                let owners = (0..count)
                    .filter(|&i| ShardSpec::new(i, count).unwrap().runs(id))
                    .count();
                assert_eq!(owners, 1, "client {id} of {count} shards");
            }
        }
    }

    #[test]
    fn source_addresses_stay_in_their_block_and_skip_dot_zero() {
        let one: Ipv4Net = "198.18.7.9/32".parse().unwrap();
        assert_eq!(usable_sources(one), 1);
        assert_eq!(source_address(one, 5), Ipv4Addr::new(198, 18, 7, 9));
        let wide: Ipv4Net = "198.18.64.0/18".parse().unwrap();
        assert_eq!(usable_sources(wide), 64 * 254);
        assert_eq!(source_address(wide, 0), Ipv4Addr::new(198, 18, 64, 1));
        assert_eq!(source_address(wide, 254), Ipv4Addr::new(198, 18, 65, 1));
        let small: Ipv4Net = "198.18.0.248/29".parse().unwrap();
        assert_eq!(usable_sources(small), 7);
        for n in 0..20 {
            let a = source_address(small, n);
            assert!(small.contains(&a) && a.octets()[3] != 255, "{a}");
            let b = source_address(wide, n * 97);
            assert!(wide.contains(&b) && b.octets()[3] != 0 && b.octets()[3] != 255);
        }
    }

    #[test]
    fn per_source_rate_counts_starts_within_one_second_per_address() {
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        let ms = Duration::from_millis;
        let mut starts: Vec<_> = (0..25).map(|i| (a, ms(i * 10))).collect();
        starts.push((b, ms(0)));
        assert_eq!(peak_per_source_rate(&starts), 25);
        assert!(per_source_warning(25, 2).is_some());
        // Spread over 2.5 s: never more than 10 in a second.
        let spread: Vec<_> = (0..25).map(|i| (a, ms(i * 100))).collect();
        assert_eq!(peak_per_source_rate(&spread), 10);
        assert!(per_source_warning(10, 1).is_none());
        assert_eq!(peak_per_source_rate(&[]), 0);
        let (distinct, warning) = source_summary(&starts);
        assert_eq!(distinct, 2);
        assert!(warning.is_some_and(|w| w.contains("25 handshakes/s")));
    }

    #[test]
    fn clock_offset_uses_the_shortest_round_trip() {
        let samples = [
            ClockSample {
                sent_ms: 1000.0,
                gateway_ms: 1600.0,
                received_ms: 1100.0,
            },
            ClockSample {
                sent_ms: 2000.0,
                gateway_ms: 2502.0,
                received_ms: 2004.0,
            },
        ];
        let o = estimate_offset(&samples).unwrap();
        assert_eq!((o.offset_ms, o.rtt_ms), (500.0, 4.0));
        assert!(estimate_offset(&[]).is_none());
        // The gateway is 500 ms ahead: its start at 10_500 is our 10_000.
        assert_eq!(
            wait_for_start(10_500.0, 9_000.0, 500.0),
            Duration::from_secs(1)
        );
        assert_eq!(wait_for_start(10_500.0, 11_000.0, 500.0), Duration::ZERO);
    }
}
