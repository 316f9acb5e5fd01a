//! Admission control for keys the control plane does not know. A first contact (a key
//! with no cache entry at all) may only go to the API if its source network is not
//! penalised for recent 404s (`sources`) and the global unknown-key budget has a token
//! (`budget`); keys that resolve give their token back and never add to a penalty, so
//! the limits bite only on keys the control plane answers 404 for. Known keys (a cache
//! entry, fresh or stale) never pass through here. `LogBudget` rate-limits the per-key
//! log lines about unknown keys, so a flood cannot fill the disk.
//!
//! Pure: every call takes the time; the pipeline holds these behind a lock.

mod budget;
mod sources;

use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use budget::{Answer, BudgetSettings, UnknownBudget};
pub use sources::{PenaltySettings, SourceNet, SourcePenalties};

/// Both limits' settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionSettings {
    pub penalties: PenaltySettings,
    pub budget: BudgetSettings,
}

/// Why a first contact was not looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source network caused too many 404s recently.
    SourcePenalised,
    /// The global budget for first contacts is spent.
    UnknownBudget,
}

impl Refusal {
    /// The `reason` label of `jitwgd_initiations_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SourcePenalised => "source_penalised",
            Refusal::UnknownBudget => "unknown_budget",
        }
    }
}

/// A first contact's permission to ask the API; hand it back with the answer.
#[derive(Debug)]
#[must_use = "hand the ticket back with `Admission::answered`"]
pub struct Ticket {
    net: SourceNet,
}

/// The two limits together.
#[derive(Debug)]
pub struct Admission {
    penalties: SourcePenalties,
    budget: UnknownBudget,
}

impl Admission {
    pub fn new(settings: AdmissionSettings, now: Instant) -> Self {
        Admission {
            penalties: SourcePenalties::new(settings.penalties),
            budget: UnknownBudget::new(settings.budget, now),
        }
    }

    /// May a first contact from `src` be looked up at `now`? The source check comes
    /// first, so a penalised network's flood spends none of the global budget.
    pub fn admit(&mut self, src: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let net = SourceNet::of(src);
        if !self.penalties.allows(net, now) {
            return Err(Refusal::SourcePenalised);
        }
        if !self.budget.try_take(now) {
            return Err(Refusal::UnknownBudget);
        }
        self.penalties.started(net, now);
        Ok(Ticket { net })
    }

    /// Whether `src`'s network is penalised at `now`: a first contact from it would be
    /// refused. Asked before identification too, where any initiation from an address
    /// with no recently resolved key might be a first contact, so a penalised network's
    /// flood is shed before it costs a Diffie-Hellman.
    pub fn penalised(&self, src: IpAddr, now: Instant) -> bool {
        !self.penalties.allows(SourceNet::of(src), now)
    }

    /// The lookup `ticket` allowed ended with `answer`.
    pub fn answered(&mut self, ticket: Ticket, answer: Answer, now: Instant) {
        self.penalties
            .answered(ticket.net, answer == Answer::NotFound, now);
        self.budget.answered(answer, now);
    }

    /// Recent share of 404s among first contacts' answers (for the gauge).
    pub fn not_found_share(&self) -> f64 {
        self.budget.not_found_share()
    }

    /// Source networks tracked (for the gauge).
    pub fn penalised_sources_tracked(&self) -> usize {
        self.penalties.tracked()
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
