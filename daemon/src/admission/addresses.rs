//! The second level of source penalties: the address inside its network. A network
//! penalised for 404s (`sources`) used to refuse every first contact from it, so a
//! flooder sharing a /24 with legitimate clients locked them all out (measured with
//! `flood-shared`: setup p50 10 s, clients in on their 5 s and 10 s retries). Inside a
//! penalised network this tells the flooder's addresses from its neighbours' by what each
//! address itself did, before any Diffie-Hellman:
//!
//! - an address whose key came back 404, or hit the negative cache, is penalised for
//!   `hold` (an offence);
//! - so is an address sending unknown-lane initiations less than `quiet_gap` apart while
//!   its network is penalised: a WireGuard client retries an initiation no sooner than
//!   every 5 s (REKEY_TIMEOUT), so only a flooder (or several clients starting at once
//!   behind one NAT) knocks faster; every such knock renews the hold, so a flooding
//!   address stays shed for as long as it floods and is forgiven `hold` after it stops;
//! - any other address is quiet: its initiation may go on if the network grants it a
//!   newcomer pass (`SourcePenalties::take_newcomer`, a small per-network token bucket a
//!   resolving key gives back), which bounds what a flooder with many addresses (an IPv6
//!   /64 holds 2^64) gets out of looking quiet.
//!
//! Outside penalised networks nothing here refuses anything: the address level only
//! narrows a network's penalty down to its offenders.
//!
//! Pure: time is an argument. Bounded: at most `capacity` addresses are remembered, least
//! recently seen out (a forgotten address is a quiet newcomer again, which the network's
//! newcomer passes bound).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hashlink::linked_hash_map::Entry;
use hashlink::LruCache;

use super::SourceNet;

/// How addresses are judged inside a penalised network.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AddressSettings {
    /// Two unknown-lane initiations from one address closer than this are a flood's
    /// (zero: the address level is off, a penalised network refuses every first contact).
    pub quiet_gap: Duration,
    /// How long an address stays penalised after its last offence.
    pub hold: Duration,
    /// Addresses remembered at most (and networks' newcomer passes).
    pub capacity: usize,
    /// Newcomer passes a penalised network holds at most (and at first).
    pub newcomer_burst: u32,
    /// Newcomer passes a penalised network regains per second.
    pub newcomer_rate: f64,
}

impl AddressSettings {
    /// The address level off: a penalised network refuses every first contact.
    pub fn off() -> Self {
        AddressSettings {
            quiet_gap: Duration::ZERO,
            hold: Duration::ZERO,
            capacity: 1,
            newcomer_burst: 0,
            newcomer_rate: 0.0,
        }
    }
}

/// An address's standing as of one initiation from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Nothing against it.
    Quiet,
    /// It knocks faster than a WireGuard client would (only reported outside penalised
    /// networks; inside one it is an offence, so `Penalised`).
    Chatty,
    /// It committed an offence less than `hold` ago.
    Penalised,
}

#[derive(Clone, Copy, Debug, Default)]
struct Address {
    /// When its last unknown-lane initiation was captured.
    last_seen: Option<Instant>,
    /// Penalised until then.
    penalised_until: Option<Instant>,
    /// It was granted a newcomer pass at this time (for the lookup to use).
    pass: Option<Instant>,
    /// Its last knock came less than `quiet_gap` after the one before.
    chatty: bool,
}

/// A pass unused for this long (its initiation was dropped or identified as a known key)
/// is void: identification waits at most 5 s, a lookup a few more.
const PASS_TTL: Duration = Duration::from_secs(10);

/// A penalised network's newcomer passes (a token bucket).
#[derive(Clone, Copy, Debug)]
struct Passes {
    tokens: f64,
    at: Instant,
}

/// What the daemon remembers about recent source addresses, and the newcomer passes of
/// the networks they are in.
pub struct SourceAddresses {
    settings: AddressSettings,
    table: LruCache<IpAddr, Address>,
    passes: LruCache<SourceNet, Passes>,
}

impl std::fmt::Debug for SourceAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceAddresses")
            .field("settings", &self.settings)
            .field("tracked", &self.table.len())
            .finish()
    }
}

impl SourceAddresses {
    pub fn new(settings: AddressSettings) -> Self {
        SourceAddresses {
            settings,
            table: LruCache::new(settings.capacity.max(1)),
            passes: LruCache::new(settings.capacity.max(1)),
        }
    }

    /// Whether the address level judges anything (`quiet_gap` > 0).
    pub fn enabled(&self) -> bool {
        !self.settings.quiet_gap.is_zero()
    }

    /// An unknown-lane initiation from `ip` was captured at `now`; `net_penalised`: its
    /// network is penalised. Knocking faster than `quiet_gap` in a penalised network is an
    /// offence.
    pub fn seen(&mut self, ip: IpAddr, now: Instant, net_penalised: bool) -> Standing {
        if !self.enabled() {
            return Standing::Quiet;
        }
        let s = self.settings;
        let a = self.entry(ip);
        let chatty = a
            .last_seen
            .is_some_and(|last| now.saturating_duration_since(last) < s.quiet_gap);
        a.last_seen = Some(a.last_seen.map_or(now, |last| last.max(now)));
        a.chatty = chatty;
        if chatty && net_penalised {
            a.penalised_until = Some(now + s.hold);
        }
        if a.penalised_until.is_some_and(|until| now < until) {
            Standing::Penalised
        } else if chatty {
            Standing::Chatty
        } else {
            Standing::Quiet
        }
    }

    /// A key from `ip` came back 404 (or hit the negative cache) at `now`.
    pub fn offence(&mut self, ip: IpAddr, now: Instant) {
        // A lookup with no source (`Lookup::lookup`) has nobody to blame.
        if !self.enabled() || ip.is_unspecified() {
            return;
        }
        let hold = self.settings.hold;
        self.entry(ip).penalised_until = Some(now + hold);
    }

    /// Whether `ip` is penalised at `now`.
    pub fn penalised(&self, ip: IpAddr, now: Instant) -> bool {
        self.table
            .peek(&ip)
            .and_then(|a| a.penalised_until)
            .is_some_and(|until| now < until)
    }

    /// Whether `ip` was seen, its last knock was not chatty and it is not penalised at
    /// `now`: it looks like a WireGuard client's first contact.
    pub fn quiet(&self, ip: IpAddr, now: Instant) -> bool {
        self.enabled()
            && !self.penalised(ip, now)
            && self
                .table
                .peek(&ip)
                .is_some_and(|a| a.last_seen.is_some() && !a.chatty)
    }

    /// Use `ip`'s newcomer pass, if it holds a valid one and is not penalised.
    pub fn take_pass(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.penalised(ip, now) {
            return false;
        }
        let Some(a) = self.table.get_mut(&ip) else {
            return false;
        };
        match a.pass.take() {
            Some(at) => now.saturating_duration_since(at) <= PASS_TTL,
            None => false,
        }
    }

    /// Take one of `net`'s newcomer passes for the quiet address `ip` at `now`; false
    /// when the network has none left.
    pub fn take_newcomer(&mut self, net: SourceNet, ip: IpAddr, now: Instant) -> bool {
        let s = self.settings;
        let burst = f64::from(s.newcomer_burst);
        if !self.passes.contains_key(&net) && self.passes.len() >= self.passes.capacity() {
            self.passes.remove_lru();
        }
        let p = self.passes.entry(net).or_insert(Passes {
            tokens: burst,
            at: now,
        });
        let dt = now.saturating_duration_since(p.at).as_secs_f64();
        p.at = p.at.max(now);
        p.tokens = (p.tokens + dt * s.newcomer_rate).min(burst);
        if p.tokens < 1.0 {
            return false;
        }
        p.tokens -= 1.0;
        self.entry(ip).pass = Some(now);
        true
    }

    /// A newcomer of `net` resolved its key: its pass goes back to the network.
    pub fn newcomer_resolved(&mut self, net: SourceNet) {
        let burst = f64::from(self.settings.newcomer_burst);
        if let Some(p) = self.passes.get_mut(&net) {
            p.tokens = (p.tokens + 1.0).min(burst);
        }
    }

    /// Every address penalised at `now`, with when its penalty ends (for the kernel
    /// shield, `crate::shield`). Walks the table: call it a few times a second at most.
    pub fn penalised_addresses(&self, now: Instant) -> Vec<(IpAddr, Instant)> {
        self.table
            .iter()
            .filter_map(|(ip, a)| {
                a.penalised_until
                    .filter(|until| now < *until)
                    .map(|u| (*ip, u))
            })
            .collect()
    }

    /// Addresses remembered now (for tests and the gauge).
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// `ip`'s record, created if new (the least recently seen one out if full), marked
    /// as recently seen.
    fn entry(&mut self, ip: IpAddr) -> &mut Address {
        if !self.table.contains_key(&ip) && self.table.len() >= self.table.capacity() {
            self.table.remove_lru();
        }
        match self.table.entry(ip) {
            Entry::Occupied(mut o) => {
                o.to_back();
                o.into_mut()
            }
            Entry::Vacant(v) => v.insert(Address::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> AddressSettings {
        AddressSettings {
            quiet_gap: Duration::from_secs(1),
            hold: Duration::from_secs(8),
            capacity: 8,
            newcomer_burst: 2,
            newcomer_rate: 1.0,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    fn net() -> SourceNet {
        SourceNet::of(ip(1))
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn knocking_faster_than_the_gap_is_an_offence_only_in_a_penalised_network() {
        let t0 = Instant::now();
        let mut a = SourceAddresses::new(settings());
        assert_eq!(a.seen(ip(7), t0, false), Standing::Quiet);
        assert_eq!(a.seen(ip(7), ms(t0, 50), false), Standing::Chatty);
        assert!(!a.penalised(ip(7), ms(t0, 50)), "not penalised outside");
        assert_eq!(a.seen(ip(7), ms(t0, 100), true), Standing::Penalised);
        assert!(a.penalised(ip(7), ms(t0, 8_099)));
        // Every fast knock renews the hold; a client's 5 s retry does not.
        assert_eq!(a.seen(ip(7), ms(t0, 5_000), true), Standing::Penalised);
        assert!(
            !a.penalised(ip(7), ms(t0, 8_101)),
            "the hold ran from the fast knock at 100 ms"
        );
        assert_eq!(a.seen(ip(7), ms(t0, 8_150), true), Standing::Quiet);
        assert_eq!(a.seen(ip(7), ms(t0, 8_200), true), Standing::Penalised);
        assert!(a.penalised(ip(7), ms(t0, 16_199)));
        assert_eq!(a.seen(ip(7), ms(t0, 20_000), true), Standing::Quiet);
        assert!(!a.penalised(ip(7), ms(t0, 20_000)));
        // A neighbour that knocks like a WireGuard client stays quiet throughout.
        for k in 0..5 {
            assert_eq!(a.seen(ip(8), ms(t0, 5_000 * k), true), Standing::Quiet);
        }
    }

    #[test]
    fn a_404_or_negative_hit_penalises_the_address_for_the_hold() {
        let t0 = Instant::now();
        let mut a = SourceAddresses::new(settings());
        a.offence(ip(9), t0);
        assert!(a.penalised(ip(9), ms(t0, 7_999)));
        assert!(!a.penalised(ip(9), ms(t0, 8_000)));
        a.offence("0.0.0.0".parse().unwrap(), t0);
        assert_eq!(a.tracked(), 1, "nobody to blame without a source");
    }

    #[test]
    fn passes_are_spent_by_404s_given_back_by_resolving_keys_and_regained() {
        let t0 = Instant::now();
        let mut a = SourceAddresses::new(settings());
        assert!(a.take_newcomer(net(), ip(1), t0));
        assert!(a.take_newcomer(net(), ip(2), t0));
        assert!(!a.take_newcomer(net(), ip(3), t0), "burst of 2");
        assert!(a.take_pass(ip(1), t0));
        assert!(!a.take_pass(ip(1), t0), "a pass is used once");
        a.newcomer_resolved(net());
        assert!(a.take_newcomer(net(), ip(3), t0), "given back");
        assert!(!a.take_newcomer(net(), ip(4), ms(t0, 900)));
        assert!(a.take_newcomer(net(), ip(4), ms(t0, 1_000)), "one a second");
        // A pass is void once its address offends, or after PASS_TTL.
        a.offence(ip(2), t0);
        assert!(!a.take_pass(ip(2), t0));
        assert!(!a.take_pass(ip(3), t0 + PASS_TTL + Duration::from_millis(1)));
    }

    #[test]
    fn off_judges_nothing() {
        let t0 = Instant::now();
        let mut a = SourceAddresses::new(AddressSettings::off());
        assert!(!a.enabled());
        for k in 0..10 {
            assert_eq!(a.seen(ip(1), ms(t0, k), true), Standing::Quiet);
        }
        a.offence(ip(1), t0);
        assert!(!a.penalised(ip(1), t0));
    }

    proptest! {
        /// Whatever a few flooders sharing the network do (bursts of knocks 10 ms apart,
        /// at any pace, their keys 404ing or not), the table stays bounded, a penalised
        /// address is never handed a pass, and a quiet neighbour that knocks like a
        /// WireGuard client (every 5 s) and whose key resolves is never penalised and
        /// finds a pass within about a second: no starvation of a quiet source.
        #[test]
        fn bounded_and_a_quiet_neighbour_is_never_starved(
            bursts in proptest::collection::vec(
                (2u8..6, 1u64..3_000, 2u32..20, any::<bool>()),
                0..200,
            ),
        ) {
            let s = AddressSettings { capacity: 16, newcomer_burst: 4, ..settings() };
            let mut a = SourceAddresses::new(s);
            let t0 = Instant::now();
            let mut at = t0;
            let mut next_quiet = t0;
            let quiet = ip(1);
            for (who, step_ms, count, not_found) in bursts {
                at += Duration::from_millis(step_ms);
                while next_quiet <= at {
                    prop_assert_eq!(a.seen(quiet, next_quiet, true), Standing::Quiet);
                    let mut waited = Duration::ZERO;
                    while !a.take_newcomer(net(), quiet, next_quiet + waited) {
                        waited += Duration::from_millis(100);
                        // One pass regained a second, after a burst of at most 200 ms.
                        prop_assert!(waited <= Duration::from_millis(1_300), "starved");
                    }
                    prop_assert!(a.take_pass(quiet, next_quiet + waited));
                    a.newcomer_resolved(net());
                    next_quiet += Duration::from_secs(5);
                }
                let flooder = ip(who);
                for k in 0..count {
                    let t = at + Duration::from_millis(10 * u64::from(k));
                    match a.seen(flooder, t, true) {
                        Standing::Quiet => {
                            if a.take_newcomer(net(), flooder, t) && not_found {
                                a.offence(flooder, t);
                            }
                        }
                        Standing::Penalised => prop_assert!(!a.take_pass(flooder, t)),
                        Standing::Chatty => prop_assert!(false, "chatty in a penalised network"),
                    }
                }
                at += Duration::from_millis(10 * u64::from(count));
                prop_assert!(a.tracked() <= s.capacity);
                prop_assert!(!a.penalised(quiet, at));
            }
        }
    }
}
