//! The storm guard: while newcomers arrive faster than the data plane is initiated to
//! (`--initiate-rate`), every handshake initiation is dropped before the data plane, not
//! only those of judged sources.
//!
//! Why: with the gateway initiating, a newcomer's own initiation is of no use to the data
//! plane (the peer is not installed yet), yet wireguard-go spends an X25519 on each to
//! find that out, and each takes a slot of its handshake queue: in a 5,000/s storm that is
//! 5,000 X25519 on the gateway core in the storm's first second, and the queue it fills
//! puts wireguard-go "under load", where it refuses the clients' responses to the gateway's
//! own initiations. jitwgd's capture runs before tc, so it still sees every initiation.
//!
//! What it costs: an installed peer's own initiation is dropped too while the guard is up.
//! The pipeline then has the data plane initiate to that peer instead (a fresh peer at the
//! captured endpoint, like a refused response's retry), so every installed peer can still
//! get a handshake, by the gateway's initiation rather than its own; a peer installed less
//! than `install::DETOUR_MIN_AGE` before is left to the data plane's own initiation, which
//! is still under way.
//!
//! The signal is counted where the storm first shows: the capture loop counts initiations
//! from sources of no known key (`StormMeter`) and stamps each [`WINDOW`] that reaches the
//! rate; the guard stays up until [`HOLD`] after the last stamp. (The install worker's
//! backlog of paced initiations was tried first: it forms only once identify, lookup and
//! install catch up, 100-220 ms into a 5,000/s storm, after 500-1,100 initiations had
//! reached the data plane. BENCHMARKS.md, storm, sixth round.)
//!
//! Pure: time comes in as an argument.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{Prefix, Rule};

/// How long the guard stays up after the last window at the storm rate.
pub const HOLD: Duration = Duration::from_secs(1);

/// The window newcomers are counted in.
pub const WINDOW: Duration = Duration::from_millis(20);

/// The guard's two rules: every initiation, of either address family.
pub fn rules() -> [Rule; 2] {
    [
        Rule::Block(Prefix {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            len: 0,
        }),
        Rule::Block(Prefix {
            addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            len: 0,
        }),
    ]
}

/// Counts newcomers' initiations (sources of no known key) in fixed windows; a window
/// reaching `rate` per second is a storm.
#[derive(Debug)]
pub struct StormMeter {
    /// Newcomers per window that make a storm (at least 2: one client retrying is none).
    threshold: u32,
    window_start: Option<Instant>,
    count: u32,
    /// Whether the current window has already been reported.
    reported: bool,
}

impl StormMeter {
    /// A storm is newcomers at `rate` per second or more (0, unpaced initiations: the
    /// default initiation rate, about what one core of wireguard-go completes).
    pub fn new(rate: u32) -> Self {
        let rate = if rate == 0 {
            crate::config::defaults::INITIATE_RATE
        } else {
            rate
        };
        let per_window = f64::from(rate) * WINDOW.as_secs_f64();
        StormMeter {
            threshold: (per_window.ceil() as u32).max(2),
            window_start: None,
            count: 0,
            reported: false,
        }
    }

    /// A newcomer's initiation captured at `now`; `true` the first time its window reaches
    /// the storm rate (the moment to stamp).
    pub fn newcomer(&mut self, now: Instant) -> bool {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.count = 0;
            self.reported = false;
        }
        self.count += 1;
        if self.count >= self.threshold && !self.reported {
            self.reported = true;
            return true;
        }
        false
    }
}

/// Whether the guard should be up: from the first storm stamp until `HOLD` after the last.
#[derive(Debug, Default)]
pub struct StormHold {
    last_storm: Option<Instant>,
}

impl StormHold {
    /// A window at the storm rate was seen at `at`.
    pub fn observe(&mut self, at: Instant) {
        if self.last_storm.is_none_or(|last| at > last) {
            self.last_storm = Some(at);
        }
    }

    pub fn up(&self, now: Instant) -> bool {
        self.last_storm
            .is_some_and(|at| now.saturating_duration_since(at) < HOLD)
    }
}

/// Whether the guard's rules are in force in the kernel, shared by the shield (which sets
/// it) and the pipeline (which detours installed peers' initiations while it is set).
/// Set only once both programs hold the rules, cleared before they are removed: a detour
/// the kernel did not need costs the peer one extra handshake, a missed one a 5 s retry.
#[derive(Clone, Debug, Default)]
pub struct GuardFlag(Arc<AtomicBool>);

impl GuardFlag {
    pub fn in_force(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_from_the_first_stamp_until_hold_after_the_last() {
        let t0 = Instant::now();
        let mut hold = StormHold::default();
        assert!(!hold.up(t0));
        hold.observe(t0);
        assert!(hold.up(t0));
        hold.observe(t0 + Duration::from_millis(600));
        hold.observe(t0 + Duration::from_millis(100));
        assert!(hold.up(t0 + Duration::from_millis(1500)));
        assert!(!hold.up(t0 + Duration::from_millis(600) + HOLD));
    }

    #[test]
    fn a_window_at_the_rate_is_stamped_once() {
        // 1,500/s: 30 newcomers in a 20 ms window.
        let mut meter = StormMeter::new(1500);
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        let stamps: Vec<u64> = (0..100u64)
            .filter(|i| meter.newcomer(us(i * 100)))
            .collect();
        assert_eq!(stamps, vec![29], "the 30th of 10,000/s, once per window");
        // A new window counts from zero: 29 in it are no storm.
        let quiet = (0..29u64).any(|i| meter.newcomer(us(30_000 + i * 600)));
        assert!(!quiet);
        // A trickle never is; unpaced initiation (rate 0) counts at the default rate.
        let mut meter = StormMeter::new(0);
        assert!(!(0..1000u64).any(|i| meter.newcomer(us(i * 1_000))));
    }

    #[test]
    fn one_retrying_client_is_never_a_storm() {
        let mut meter = StormMeter::new(10);
        let t0 = Instant::now();
        assert!(!meter.newcomer(t0));
        assert!(meter.newcomer(t0 + Duration::from_millis(1)));
    }

    #[test]
    fn the_rules_block_every_source_of_both_families() {
        let [v4, v6] = rules();
        assert!(v4.is_v4() && !v6.is_v4());
        for (rule, ip) in [(v4, "198.18.7.9"), (v6, "2001:db8::1")] {
            let Rule::Block(p) = rule else {
                panic!("{rule} is not a block")
            };
            assert!(p.contains(ip.parse().unwrap()));
        }
    }
}
