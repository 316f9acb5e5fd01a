//! Admission control for keys the control plane does not know. A first contact (a key
//! with no cache entry at all) may only go to the API if its source network is not
//! penalised for recent 404s (`sources`), or, inside a penalised network, if its own
//! address is quiet and holds one of the network's newcomer passes (`addresses`), and
//! the global unknown-key budget has a token (`budget`); keys that resolve give their
//! tokens back and never add to a penalty, so the limits bite only on keys the control
//! plane answers 404 for. Known keys (a cache entry, fresh or stale) never pass through
//! here. An IPv6 /64's 404s also count for its /48, so a flood spread over many /64s
//! of one site earns one penalty renewal per forgive period, not one per /64; and a
//! penalised network whose renewal the budget refuses, or whose offending addresses keep
//! knocking, keeps its penalty (`sources`).
//! `LogBudget` rate-limits the per-key log lines about unknown keys, so a flood
//! cannot fill the disk.
//!
//! Pure: every call takes the time; the pipeline holds these behind a lock.

mod addresses;
mod budget;
mod sources;

use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use addresses::{AddressSettings, SourceAddresses, Standing};
pub use budget::{Answer, BudgetSettings, UnknownBudget};
pub use sources::{PenaltySettings, SourceNet, SourcePenalties};

/// The limits' settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionSettings {
    pub penalties: PenaltySettings,
    pub budget: BudgetSettings,
    /// The address level inside penalised networks (`AddressSettings::off()`: none).
    pub addresses: AddressSettings,
}

/// Why a first contact was not looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source network caused too many 404s recently (and, inside it, the address
    /// got no newcomer pass).
    SourcePenalised,
    /// Its source address, in a penalised network, caused a 404 or knocked faster than a
    /// WireGuard client does.
    AddressPenalised,
    /// The global budget for first contacts is spent.
    UnknownBudget,
}

impl Refusal {
    /// The `reason` label of `jitwgd_initiations_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SourcePenalised => "source_penalised",
            Refusal::AddressPenalised => "address_penalised",
            Refusal::UnknownBudget => "unknown_budget",
        }
    }
}

/// Sources admission control refuses at one moment (`Admission::judged`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Judged {
    /// Penalised addresses (the address level), the longest-held first.
    pub addresses: Vec<IpAddr>,
    /// Penalised networks.
    pub networks: Vec<SourceNet>,
}

impl Judged {
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.networks.is_empty()
    }
}

/// A first contact's permission to ask the API; hand it back with the answer.
#[derive(Debug)]
#[must_use = "hand the ticket back with `Admission::answered`"]
pub struct Ticket {
    net: SourceNet,
    src: IpAddr,
    /// Admitted on a newcomer pass of a penalised network.
    newcomer: bool,
}

/// The limits together.
#[derive(Debug)]
pub struct Admission {
    penalties: SourcePenalties,
    budget: UnknownBudget,
    addresses: SourceAddresses,
}

impl Admission {
    pub fn new(settings: AdmissionSettings, now: Instant) -> Self {
        Admission {
            penalties: SourcePenalties::new(settings.penalties),
            budget: UnknownBudget::new(settings.budget, now),
            addresses: SourceAddresses::new(settings.addresses),
        }
    }

    /// May a first contact from `src` be looked up at `now`? The source check comes
    /// first, so a penalised network's flood spends none of the global budget. Inside a
    /// penalised network only an address holding a newcomer pass (granted by `screen`)
    /// gets through.
    pub fn admit(&mut self, src: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let net = SourceNet::of(src);
        let mut newcomer = false;
        if !self.penalties.allows(net, now) {
            self.penalties.knocked(net, now);
            if self.addresses.penalised(src, now) {
                return Err(Refusal::AddressPenalised);
            }
            // Screened before the network was penalised (a flood's 404s can penalise it
            // while this initiation was being identified): a quiet address may take its
            // pass now, on the same terms as `screen`.
            let passed = self.addresses.take_pass(src, now)
                || (self.addresses.quiet(src, now)
                    && self.budget.healthy(now)
                    && self.addresses.take_newcomer(net, src, now)
                    && self.addresses.take_pass(src, now));
            if !passed {
                return Err(Refusal::SourcePenalised);
            }
            newcomer = true;
        }
        if !self.budget.try_take(now) {
            // A penalised network's renewal refused here keeps its penalty: letting it
            // lapse would re-open the network to identification and the data plane.
            self.penalties.hold(net, now);
            return Err(Refusal::UnknownBudget);
        }
        self.penalties.started(net, now);
        Ok(Ticket { net, src, newcomer })
    }

    /// Judge an initiation from `src`, captured at `now`, before identification, where
    /// any initiation from an address with no recently resolved key might be a first
    /// contact: `Err` sheds it before it costs a Diffie-Hellman. Outside a penalised
    /// network everything passes. Inside one, an address that offended (a 404, a
    /// negative-cache hit, knocking faster than `quiet_gap`) is refused, its knock holding
    /// the network's penalty (`SourcePenalties::hold`), and a quiet one
    /// passes only on one of the network's newcomer passes, which `admit` then uses, and
    /// only while the global budget is at least half full: passes are the first thing a
    /// flood draining it loses, so a flood's first knocks from many penalised networks
    /// cannot spend what first contacts from clean networks need.
    pub fn screen(&mut self, src: IpAddr, now: Instant) -> Result<(), Refusal> {
        let net = SourceNet::of(src);
        let net_penalised = !self.penalties.allows(net, now);
        if net_penalised {
            self.penalties.knocked(net, now);
        }
        if !self.addresses.enabled() {
            return if net_penalised {
                Err(Refusal::SourcePenalised)
            } else {
                Ok(())
            };
        }
        let standing = self.addresses.seen(src, now, net_penalised);
        if !net_penalised {
            return Ok(());
        }
        match standing {
            Standing::Penalised | Standing::Chatty => {
                // An offender still knocking keeps its network's penalty (`hold`): its
                // knocks are shed here, so they never earn the renewal 404 a flood of fresh
                // keys earns, and without this a flood resending the same initiations
                // drained out of the penalty its first 404s earned and was identified again.
                self.penalties.hold(net, now);
                Err(Refusal::AddressPenalised)
            }
            Standing::Quiet
                if self.budget.healthy(now) && self.addresses.take_newcomer(net, src, now) =>
            {
                Ok(())
            }
            Standing::Quiet => Err(Refusal::SourcePenalised),
        }
    }

    /// Whether a first contact from `src` would be refused at `now` (no side effects).
    pub fn penalised(&self, src: IpAddr, now: Instant) -> bool {
        !self.penalties.allows(SourceNet::of(src), now)
    }

    /// The sources judged at `now`, for the kernel shield (`crate::shield`): every
    /// penalised address (with the address level on) and every penalised network.
    pub fn judged(&self, now: Instant) -> Judged {
        let mut addresses = if self.addresses.enabled() {
            self.addresses.penalised_addresses(now)
        } else {
            Vec::new()
        };
        // Longest-held first: the ones to keep when the shield's table is full.
        addresses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut networks = self.penalties.refused(now);
        networks.sort_by_key(|n| n.to_string());
        Judged {
            addresses: addresses.into_iter().map(|(ip, _)| ip).collect(),
            networks,
        }
    }

    /// A key from `src` hit the negative cache at `now`: an offence of its address.
    pub fn negative_hit(&mut self, src: IpAddr, now: Instant) {
        self.addresses.offence(src, now);
    }

    /// The lookup `ticket` allowed ended with `answer`.
    pub fn answered(&mut self, ticket: Ticket, answer: Answer, now: Instant) {
        self.penalties
            .answered(ticket.net, answer == Answer::NotFound, now);
        self.budget.answered(answer, now);
        match answer {
            Answer::NotFound => self.addresses.offence(ticket.src, now),
            Answer::Found | Answer::Unavailable if ticket.newcomer => {
                self.addresses.newcomer_resolved(ticket.net)
            }
            _ => {}
        }
    }

    /// Recent share of 404s among first contacts' answers (for the gauge).
    pub fn not_found_share(&self) -> f64 {
        self.budget.not_found_share()
    }

    /// Source networks tracked (for the gauge).
    pub fn penalised_sources_tracked(&self) -> usize {
        self.penalties.tracked()
    }

    /// Source addresses tracked (for tests and the gauge).
    pub fn addresses_tracked(&self) -> usize {
        self.addresses.tracked()
    }
}

/// A token bucket for log lines: at most `per_second` (burst the same) lines; the lines
/// it suppresses are counted and reported on the next line allowed.
#[derive(Debug, Clone)]
pub struct LogBudget {
    per_second: f64,
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

impl LogBudget {
    pub fn new(per_second: u32, now: Instant) -> Self {
        LogBudget {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second),
            at: now,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines suppressed since
    /// the last one written; `None` when this line must be suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        self.tokens = (self.tokens + dt.as_secs_f64() * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

/// Default window of the 404 share; long enough to see a flood, short enough to recover
/// within a minute once it stops.
pub const SHARE_WINDOW: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AdmissionSettings {
        AdmissionSettings {
            penalties: PenaltySettings {
                burst: 2,
                forgive_every: Duration::from_secs(1),
                max_sources: 16,
            },
            budget: BudgetSettings {
                rate: 1.0,
                floor_rate: 0.5,
                burst: 3,
                share_window: SHARE_WINDOW,
            },
            addresses: AddressSettings::off(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_penalised_network_spends_no_budget_and_others_still_get_in() {
        let t0 = Instant::now();
        let mut a = Admission::new(settings(), t0);
        for _ in 0..2 {
            let t = a.admit(ip("198.18.1.5"), t0).unwrap();
            a.answered(t, Answer::NotFound, t0);
        }
        for _ in 0..10 {
            assert_eq!(
                a.admit(ip("198.18.1.77"), t0).unwrap_err(),
                Refusal::SourcePenalised
            );
        }
        // One token left of three, for another network.
        let t = a.admit(ip("198.18.2.5"), t0).unwrap();
        a.answered(t, Answer::Found, t0);
        assert!(a.admit(ip("198.18.2.5"), t0).is_ok());
        assert_eq!(
            a.admit(ip("198.18.3.5"), t0).unwrap_err(),
            Refusal::UnknownBudget
        );
    }

    #[test]
    fn a_suspect_networks_lookups_in_flight_count_against_its_burst() {
        let t0 = Instant::now();
        let mut a = Admission::new(settings(), t0);
        // One 404 makes the network suspect (half its burst of 2).
        let t = a.admit(ip("198.18.1.5"), t0).unwrap();
        a.answered(t, Answer::NotFound, t0);
        let in_flight = a.admit(ip("198.18.1.6"), t0).unwrap();
        assert_eq!(
            a.admit(ip("198.18.1.7"), t0).unwrap_err(),
            Refusal::SourcePenalised
        );
        a.answered(in_flight, Answer::Found, t0);
        assert!(
            a.admit(ip("198.18.1.7"), t0).is_ok(),
            "the resolved one was not charged"
        );
    }

    #[test]
    fn penalised_tells_before_identification_what_admit_would_refuse() {
        let t0 = Instant::now();
        let mut a = Admission::new(settings(), t0);
        assert!(!a.penalised(ip("198.18.1.5"), t0));
        for _ in 0..2 {
            let t = a.admit(ip("198.18.1.5"), t0).unwrap();
            a.answered(t, Answer::NotFound, t0);
        }
        assert!(a.penalised(ip("198.18.1.200"), t0), "the whole /24");
        assert!(!a.penalised(ip("198.18.2.1"), t0));
        assert_eq!(
            a.admit(ip("198.18.1.200"), t0).unwrap_err(),
            Refusal::SourcePenalised
        );
        assert!(!a.penalised(ip("198.18.1.5"), t0 + Duration::from_secs(5)));
    }

    #[test]
    fn resolving_keys_from_one_network_are_never_refused() {
        let t0 = Instant::now();
        let mut a = Admission::new(settings(), t0);
        for _ in 0..1000 {
            let t = a.admit(ip("198.18.1.5"), t0).unwrap();
            a.answered(t, Answer::Found, t0);
        }
    }

    fn with_addresses(budget_burst: u32) -> AdmissionSettings {
        let base = settings();
        AdmissionSettings {
            budget: BudgetSettings {
                burst: budget_burst,
                ..base.budget
            },
            addresses: AddressSettings {
                quiet_gap: Duration::from_secs(1),
                hold: Duration::from_secs(8),
                capacity: 64,
                newcomer_burst: 2,
                newcomer_rate: 0.5,
            },
            ..base
        }
    }

    /// 404s from `src` until its network is penalised (burst 2).
    fn penalise(a: &mut Admission, src: &str, at: Instant) {
        for _ in 0..2 {
            let t = a.admit(ip(src), at).unwrap();
            a.answered(t, Answer::NotFound, at);
        }
    }

    #[test]
    fn inside_a_penalised_network_only_the_offending_address_is_shed() {
        let t0 = Instant::now();
        let mut a = Admission::new(with_addresses(10), t0);
        assert_eq!(a.screen(ip("198.18.1.5"), t0), Ok(()));
        penalise(&mut a, "198.18.1.5", t0);
        assert_eq!(
            a.screen(ip("198.18.1.5"), t0),
            Err(Refusal::AddressPenalised)
        );
        // A neighbour's first knock passes on a newcomer pass and is admitted.
        assert_eq!(a.screen(ip("198.18.1.77"), t0), Ok(()));
        let t = a.admit(ip("198.18.1.77"), t0).unwrap();
        a.answered(t, Answer::Found, t0);
        // Its pass came back: two more neighbours fit the burst of two.
        assert_eq!(a.screen(ip("198.18.1.78"), t0), Ok(()));
        assert_eq!(a.screen(ip("198.18.1.79"), t0), Ok(()));
        assert_eq!(
            a.screen(ip("198.18.1.80"), t0),
            Err(Refusal::SourcePenalised),
            "no pass left"
        );
        // Knocking again at once is a flooder's pace.
        assert_eq!(
            a.screen(ip("198.18.1.78"), t0 + Duration::from_millis(50)),
            Err(Refusal::AddressPenalised)
        );
        assert_eq!(
            a.admit(ip("198.18.1.78"), t0).unwrap_err(),
            Refusal::AddressPenalised
        );
        // Unscreened: the network's penalty refuses, as without the address level.
        assert_eq!(
            a.admit(ip("198.18.1.90"), t0).unwrap_err(),
            Refusal::SourcePenalised
        );
    }

    /// A network penalised by its 404s whose offender goes on resending what it sent (a
    /// flood replaying refused initiations earns no renewal 404: each knock is shed before
    /// identification) stays penalised while the offender knocks, and is forgiven soon
    /// after it stops; a quiet neighbour still gets a newcomer pass meanwhile.
    #[test]
    fn an_offender_still_knocking_keeps_its_networks_penalty() {
        let t0 = Instant::now();
        let mut a = Admission::new(with_addresses(10), t0);
        penalise(&mut a, "198.18.1.5", t0);
        let mut quiet = Admission::new(with_addresses(10), t0);
        penalise(&mut quiet, "198.18.1.5", t0);
        let later = t0 + Duration::from_secs(5);
        assert!(!quiet.penalised(ip("198.18.1.9"), later), "drained");
        let mut t = t0;
        while t < later {
            t += Duration::from_millis(100);
            assert_eq!(
                a.screen(ip("198.18.1.5"), t),
                Err(Refusal::AddressPenalised)
            );
        }
        assert!(a.penalised(ip("198.18.1.9"), later), "held while it knocks");
        assert_eq!(a.screen(ip("198.18.1.9"), later), Ok(()), "a newcomer");
        // Another network's knocks hold nothing: it never went over its limit.
        assert_eq!(a.screen(ip("198.18.2.5"), later), Ok(()));
        assert!(!a.penalised(ip("198.18.2.6"), later));
        // Stopped: forgiven within burst × forgive_every.
        assert!(!a.penalised(ip("198.18.1.9"), later + Duration::from_secs(2)));
    }

    #[test]
    fn no_newcomer_passes_while_404s_have_drained_the_budget_below_half() {
        let t0 = Instant::now();
        // Budget burst 3: two 404s leave 1 token, less than half.
        let mut a = Admission::new(with_addresses(3), t0);
        penalise(&mut a, "198.18.1.5", t0);
        assert_eq!(
            a.screen(ip("198.18.1.77"), t0),
            Err(Refusal::SourcePenalised)
        );
        // Refilled (rate 1/s): passes again.
        let later = t0 + Duration::from_secs(2);
        assert_eq!(a.screen(ip("198.18.1.78"), later), Ok(()));
    }

    #[test]
    fn a_quiet_address_screened_before_the_penalty_takes_its_pass_at_admission() {
        let t0 = Instant::now();
        let mut a = Admission::new(with_addresses(10), t0);
        assert_eq!(a.screen(ip("198.18.1.77"), t0), Ok(()), "not penalised yet");
        assert_eq!(a.screen(ip("198.18.1.78"), t0), Ok(()));
        assert_eq!(
            a.screen(ip("198.18.1.78"), t0),
            Ok(()),
            "chatty, not penalised"
        );
        penalise(&mut a, "198.18.1.5", t0);
        let t = a.admit(ip("198.18.1.77"), t0).unwrap();
        a.answered(t, Answer::Found, t0);
        assert_eq!(
            a.admit(ip("198.18.1.78"), t0).unwrap_err(),
            Refusal::SourcePenalised,
            "its last knock was a flooder's pace"
        );
        assert_eq!(
            a.admit(ip("198.18.1.79"), t0).unwrap_err(),
            Refusal::SourcePenalised,
            "never screened"
        );
    }

    #[test]
    fn a_negative_hit_is_an_offence_of_the_address() {
        let t0 = Instant::now();
        let mut a = Admission::new(with_addresses(10), t0);
        penalise(&mut a, "198.18.1.5", t0);
        a.negative_hit(ip("198.18.1.6"), t0);
        assert_eq!(
            a.screen(ip("198.18.1.6"), t0),
            Err(Refusal::AddressPenalised)
        );
        assert_eq!(a.addresses_tracked(), 2);
    }

    #[test]
    fn without_the_address_level_a_penalised_network_sheds_everyone() {
        let t0 = Instant::now();
        let mut a = Admission::new(settings(), t0);
        penalise(&mut a, "198.18.1.5", t0);
        assert_eq!(
            a.screen(ip("198.18.1.77"), t0),
            Err(Refusal::SourcePenalised)
        );
        assert_eq!(a.screen(ip("198.18.2.77"), t0), Ok(()));
        assert_eq!(a.addresses_tracked(), 0);
    }

    /// `flood-ipv6` in miniature, with the daemon's default limits: 1,000 fresh keys a
    /// second (all 404) from 256 addresses in 64 /64s of one /48, while a new legitimate
    /// IPv4 client (its key resolves) arrives every 50 ms. Returns the flood's lookups
    /// per second; asserts every legitimate first contact was admitted at once.
    fn ipv6_site_flood(secs: u64) -> Vec<u32> {
        let t0 = Instant::now();
        let mut a = Admission::new(
            AdmissionSettings {
                penalties: PenaltySettings {
                    burst: 8,
                    forgive_every: Duration::from_secs(1),
                    max_sources: 65_536,
                },
                budget: BudgetSettings {
                    rate: 50.0,
                    floor_rate: 5.0,
                    burst: 256,
                    share_window: SHARE_WINDOW,
                },
                addresses: AddressSettings {
                    quiet_gap: Duration::from_secs(1),
                    hold: Duration::from_secs(8),
                    capacity: 16_384,
                    newcomer_burst: 64,
                    newcomer_rate: 2.0,
                },
            },
            t0,
        );
        let mut per_second = vec![0u32; secs as usize];
        for ms in 0..secs * 1_000 {
            let now = t0 + Duration::from_millis(ms);
            let k = ms % 256;
            let flooder =
                IpAddr::from([0x2001, 2, 0, (k % 64) as u16, 0, 0, 0, 1 + (k / 64) as u16]);
            if a.screen(flooder, now).is_ok() {
                if let Ok(t) = a.admit(flooder, now) {
                    a.answered(t, Answer::NotFound, now);
                    per_second[(ms / 1_000) as usize] += 1;
                }
            }
            if ms % 50 == 0 {
                let n = ms / 50;
                let client = IpAddr::from([198, 18, (n / 200) as u8, (n % 200) as u8 + 1]);
                assert_eq!(a.screen(client, now), Ok(()), "client {n}");
                let t = a.admit(client, now).expect("a legitimate first contact");
                a.answered(t, Answer::Found, now);
            }
        }
        per_second
    }

    #[test]
    fn a_flood_from_one_ipv6_site_leaves_the_budget_to_legitimate_first_contacts() {
        let per_second = ipv6_site_flood(30);
        // The start (each /64's first 404s, the site's burst, the newcomer passes its
        // addresses take before they offend) stays well inside the budget's burst.
        let start: u32 = per_second[..10].iter().sum();
        assert!(start <= 256, "{per_second:?}");
        // Then about one renewal a second for the whole site.
        let steady: u32 = per_second[10..].iter().sum();
        assert!(steady <= 2 * 20, "{per_second:?}");
    }

    #[test]
    fn log_budget_reports_what_it_suppressed() {
        let t0 = Instant::now();
        let mut l = LogBudget::new(2, t0);
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0), None);
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), Some(2));
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
    }
}
