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
//! IPv6 sites: a flooder holding a /48 has 65,536 /64s, and each penalised network still
//! earns one renewal lookup per `forgive_every` (the lookup whose 404 keeps it penalised).
//! Measured with `flood-ipv6` (64 /64s of one /48): those renewals, and the 8 404s each
//! /64 needed before its own penalty, kept the unknown-key budget empty, and legitimate
//! first contacts were refused with the flood (setup p50 5 s). So an IPv6 /64's 404s also
//! fill a bucket of its /48 (its site); while the site is over the limit, every /64 of it
//! with a 404 not yet forgiven (a member) is refused with it, and the site, not each
//! member, earns the one renewal lookup per `forgive_every`. A member that keeps knocking
//! while refused keeps its membership (its level does not drain below half the burst);
//! a /64 of the site that never caused a 404 is judged on its own bucket only.
//!
//! A renewal the global budget refuses (`hold`) keeps the penalty where it is instead of
//! letting it lapse: otherwise an empty budget would re-open every flooding network to
//! identification and to the data plane (the kernel shield blocks only penalised sources).
//! So does a knock from one of the network's offending addresses (`Admission::screen`):
//! it is shed before identification, so a flood resending initiations the control plane
//! already refused would never earn a renewal 404, drain out of its penalty and be
//! identified again (a Diffie-Hellman each), and while it lasts a network needs no renewal
//! lookup as long as its offenders keep knocking.
//!
//! Pure: time is an argument. Bounded: at most `max_sources` networks (and as many sites)
//! are tracked; when full, networks with nothing in flight whose penalty has decayed to
//! nothing are forgotten, and if none has, a new network is simply not tracked (the
//! global unknown-key budget still applies).

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

/// An IPv6 /48 (the first 48 bits): the allocation one site usually gets, whose /64s'
/// penalties add up (see the module's doc).
type Site = [u8; 6];

impl SourceNet {
    /// The /48 an IPv6 /64 is in; `None` for IPv4 (the /24s of one /16 usually belong to
    /// different operators).
    fn site(self) -> Option<Site> {
        match self {
            SourceNet::V4(_) => None,
            SourceNet::V6(n) => {
                let mut site = [0u8; 6];
                site.copy_from_slice(&n[..6]);
                Some(site)
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
    /// Networks tracked at most (and IPv6 sites).
    pub max_sources: usize,
}

/// A leaky bucket of 404s per network (or site): each 404 adds one, `forgive_every`
/// drains one; the lookups in flight; and whether it went over the limit since it was
/// last at rest (a penalty `hold` may keep).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: f64,
    at: Instant,
    pending: u32,
    penalised: bool,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            level: 0.0,
            at: now,
            pending: 0,
            penalised: false,
        }
    }

    fn level_at(&self, now: Instant, forgive_every: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let per_sec = 1.0 / forgive_every.as_secs_f64().max(1e-9);
        (self.level - elapsed * per_sec).max(0.0)
    }

    /// Room for one more 404 at `now`, counting the lookups in flight once suspect (at
    /// least half the burst).
    fn has_room(&self, now: Instant, s: &PenaltySettings) -> bool {
        let burst = f64::from(s.burst);
        let level = self.level_at(now, s.forgive_every);
        let suspect = level >= burst / 2.0;
        let to_come = if suspect {
            f64::from(self.pending)
        } else {
            0.0
        };
        level + to_come + 1.0 <= burst
    }

    /// Set the level to at least `floor` at `now` (and restart the drain from there).
    fn raise_to(&mut self, floor: f64, now: Instant, s: &PenaltySettings) {
        let level = self.level_at(now, s.forgive_every);
        if level <= 0.0 {
            self.penalised = false;
        }
        self.level = level.max(floor);
        self.at = now;
    }

    /// One 404 at `now`.
    fn charge(&mut self, now: Instant, s: &PenaltySettings) {
        let level = self.level_at(now, s.forgive_every);
        // Never more than one burst above the limit: a network that stops is forgiven
        // within (2 × burst × forgive_every), however long it flooded.
        self.raise_to((level + 1.0).min(2.0 * f64::from(s.burst)), now, s);
        if !self.has_room(now, s) {
            self.penalised = true;
        }
    }

    /// A lookup the penalty would have allowed was refused elsewhere (the budget) at
    /// `now`: if this bucket went over the limit since it was last at rest, it stays at
    /// least at the limit (refused for another `forgive_every`), neither more nor less.
    fn hold(&mut self, now: Instant, s: &PenaltySettings) {
        if self.penalised && self.level_at(now, s.forgive_every) > 0.0 {
            self.raise_to(f64::from(s.burst), now, s);
        }
    }
}

/// Penalties per source network, and per IPv6 site.
#[derive(Debug)]
pub struct SourcePenalties {
    settings: PenaltySettings,
    buckets: HashMap<SourceNet, Bucket>,
    sites: HashMap<Site, Bucket>,
}

impl SourcePenalties {
    pub fn new(settings: PenaltySettings) -> Self {
        SourcePenalties {
            settings,
            buckets: HashMap::new(),
            sites: HashMap::new(),
        }
    }

    /// Whether `net` may look up a key the cache has never seen at `now`: its bucket has
    /// room for one more 404, counting its lookups in flight once it is suspect; and, for
    /// a /64 with a 404 not yet forgiven, so has its site's.
    pub fn allows(&self, net: SourceNet, now: Instant) -> bool {
        let s = &self.settings;
        let Some(b) = self.buckets.get(&net) else {
            return true;
        };
        if !b.has_room(now, s) {
            return false;
        }
        match self.site_of_member(net, b, now) {
            Some(site) => site.has_room(now, s),
            None => true,
        }
    }

    /// The site bucket `net` is judged with too: `net` is an IPv6 /64 whose bucket `b`
    /// still holds a 404 (a member of its site's penalty).
    fn site_of_member(&self, net: SourceNet, b: &Bucket, now: Instant) -> Option<&Bucket> {
        let site = net.site()?;
        if b.level_at(now, self.settings.forgive_every) <= 0.0 {
            return None;
        }
        self.sites.get(&site)
    }

    /// A first contact from `net` went to the control plane.
    pub fn started(&mut self, net: SourceNet, now: Instant) {
        if let Some(b) = self.bucket(net, now) {
            b.pending = b.pending.saturating_add(1);
        }
        if let Some(b) = net.site().and_then(|site| self.site(site, now)) {
            b.pending = b.pending.saturating_add(1);
        }
    }

    /// The lookup `started` for `net` ended; `not_found`: with a 404.
    pub fn answered(&mut self, net: SourceNet, not_found: bool, now: Instant) {
        let s = self.settings;
        let site = net.site().and_then(|site| self.sites.get_mut(&site));
        for b in [self.buckets.get_mut(&net), site].into_iter().flatten() {
            b.pending = b.pending.saturating_sub(1);
            if not_found {
                b.charge(now, &s);
            }
        }
    }

    /// A first contact from `net` was refused at `now` because `net` is penalised (before
    /// or after identification). A member of a penalised site stays a member while it
    /// keeps knocking (its level held at half the burst at least): otherwise each of a
    /// site's flooding /64s would drain out of it within a second of its one 404, come
    /// back unjudged and earn a lookup of its own every second again.
    pub fn knocked(&mut self, net: SourceNet, now: Instant) {
        let s = self.settings;
        let held_by_site = self
            .buckets
            .get(&net)
            .and_then(|b| self.site_of_member(net, b, now))
            .is_some_and(|site| !site.has_room(now, &s));
        if held_by_site {
            if let Some(b) = self.buckets.get_mut(&net) {
                b.raise_to(f64::from(s.burst) / 2.0, now, &s);
            }
        }
    }

    /// `net` is still flooding at `now` though nothing it sends can earn a 404: a first
    /// contact the penalty allowed was refused by the global budget, or an address the
    /// network's penalty judged knocked again. A network (or a /64's site) that went over
    /// its limit since it was last at rest keeps its penalty (see `Bucket::hold`), so
    /// neither an empty budget nor shedding a flood before identification lets a flooding
    /// network's penalty lapse. A network that never went over is untouched.
    pub fn hold(&mut self, net: SourceNet, now: Instant) {
        let s = self.settings;
        let member = self
            .buckets
            .get(&net)
            .is_some_and(|b| b.level_at(now, s.forgive_every) > 0.0);
        if let Some(b) = self.buckets.get_mut(&net) {
            b.hold(now, &s);
        }
        if member {
            if let Some(b) = net.site().and_then(|site| self.sites.get_mut(&site)) {
                b.hold(now, &s);
            }
        }
    }

    /// `net`'s bucket, created if the table has room (after forgetting idle networks).
    fn bucket(&mut self, net: SourceNet, now: Instant) -> Option<&mut Bucket> {
        let forgive = self.settings.forgive_every;
        make_room(
            &mut self.buckets,
            &net,
            self.settings.max_sources,
            now,
            forgive,
        )?;
        Some(self.buckets.entry(net).or_insert(Bucket::new(now)))
    }

    /// `site`'s bucket, created if the table has room.
    fn site(&mut self, site: Site, now: Instant) -> Option<&mut Bucket> {
        let forgive = self.settings.forgive_every;
        make_room(
            &mut self.sites,
            &site,
            self.settings.max_sources,
            now,
            forgive,
        )?;
        Some(self.sites.entry(site).or_insert(Bucket::new(now)))
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

/// `Some` when `table` holds `key` or has room for it, after forgetting entries with
/// nothing in flight whose level has drained to nothing if it was full.
fn make_room<K: std::hash::Hash + Eq>(
    table: &mut HashMap<K, Bucket>,
    key: &K,
    max: usize,
    now: Instant,
    forgive: Duration,
) -> Option<()> {
    if !table.contains_key(key) && table.len() >= max {
        table.retain(|_, b| b.pending > 0 || b.level_at(now, forgive) > 0.0);
        if table.len() >= max {
            return None;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests;
