//! The global budget for lookups of keys the cache has never seen (first contacts: a
//! new client, or a flood of fresh keys; nothing tells them apart before the control
//! plane answers). Each such lookup takes a token; a key that resolves (200), or that
//! the control plane could not answer, gives it back, so only 404s spend the budget and
//! a legitimate storm of resolving keys is limited by `burst` lookups outstanding at
//! once, never by the rate. Tokens come back at `rate` per second while most answers
//! are 200s, and slow down towards `floor_rate` as the recent share of 404s rises past
//! one half: a flood of unknown keys earns itself a tighter budget.
//!
//! Pure: time is an argument.

use std::time::{Duration, Instant};

/// How the budget behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSettings {
    /// Tokens per second while 404s are at most half of recent answers.
    pub rate: f64,
    /// Tokens per second when every recent answer was a 404.
    pub floor_rate: f64,
    /// Tokens at most (and at start): first-contact lookups outstanding at once.
    pub burst: u32,
    /// Time constant of the recent 404 share (an exponentially decaying average).
    pub share_window: Duration,
}

/// How the control plane answered a lookup that took a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Found,
    NotFound,
    /// No answer (error, timeout, refused document): not the key's fault.
    Unavailable,
}

/// The budget's state.
#[derive(Debug, Clone)]
pub struct UnknownBudget {
    settings: BudgetSettings,
    tokens: f64,
    /// Decaying counts of recent answers, as of `at`.
    found: f64,
    not_found: f64,
    at: Instant,
}

impl UnknownBudget {
    pub fn new(settings: BudgetSettings, now: Instant) -> Self {
        UnknownBudget {
            settings,
            tokens: f64::from(settings.burst),
            found: 0.0,
            not_found: 0.0,
            at: now,
        }
    }

    /// Share of 404s among recent answers (0 when there were none).
    pub fn not_found_share(&self) -> f64 {
        let total = self.found + self.not_found;
        if total < 1e-9 {
            0.0
        } else {
            self.not_found / total
        }
    }

    /// Tokens per second at the current 404 share.
    pub fn current_rate(&self) -> f64 {
        let s = self.settings;
        let share = self.not_found_share();
        if share <= 0.5 {
            s.rate
        } else {
            let tight = (share - 0.5) * 2.0;
            s.rate + (s.floor_rate.min(s.rate) - s.rate) * tight
        }
    }

    /// Tokens available now (after refilling up to `now`).
    pub fn tokens(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.tokens
    }

    /// Whether at least half the burst is left at `now`: while 404s have drained it
    /// further, newcomer passes of penalised networks are not granted (they would spend
    /// what legitimate first contacts elsewhere need).
    pub fn healthy(&mut self, now: Instant) -> bool {
        self.tokens(now) * 2.0 >= f64::from(self.settings.burst)
    }

    /// Take a token for one first-contact lookup; false when there is none.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.advance(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The lookup that took a token ended with `answer`.
    pub fn answered(&mut self, answer: Answer, now: Instant) {
        self.advance(now);
        match answer {
            Answer::Found => {
                self.found += 1.0;
                self.refund();
            }
            Answer::NotFound => self.not_found += 1.0,
            Answer::Unavailable => self.refund(),
        }
    }

    fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(f64::from(self.settings.burst));
    }

    /// Refill at the rate the share allowed since the last step, then decay the counts.
    fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        self.tokens = (self.tokens + dt * self.current_rate()).min(f64::from(self.settings.burst));
        let tau = self.settings.share_window.as_secs_f64().max(1e-3);
        let decay = (-dt / tau).exp();
        self.found *= decay;
        self.not_found *= decay;
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> BudgetSettings {
        BudgetSettings {
            rate: 10.0,
            floor_rate: 1.0,
            burst: 5,
            share_window: Duration::from_secs(10),
        }
    }

    #[test]
    fn resolving_keys_never_run_the_budget_dry() {
        let t0 = Instant::now();
        let mut b = UnknownBudget::new(settings(), t0);
        // 10,000 first contacts in the same instant, each answered before the next.
        for _ in 0..10_000 {
            assert!(b.try_take(t0));
            b.answered(Answer::Found, t0);
        }
        assert_eq!(b.current_rate(), 10.0);
    }

    #[test]
    fn outstanding_lookups_are_capped_by_the_burst() {
        let t0 = Instant::now();
        let mut b = UnknownBudget::new(settings(), t0);
        let taken = (0..20).filter(|_| b.try_take(t0)).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn a_404_flood_tightens_the_rate_to_the_floor() {
        let t0 = Instant::now();
        let mut b = UnknownBudget::new(settings(), t0);
        let mut now = t0;
        let mut granted = 0;
        for _ in 0..2_000 {
            now += Duration::from_millis(10);
            if b.try_take(now) {
                granted += 1;
                b.answered(Answer::NotFound, now);
            }
        }
        // 20 s of asking 100 times a second: the burst, then at most the rate.
        assert!(granted <= 5 + 200, "{granted}");
        assert!(b.not_found_share() > 0.99);
        assert!((b.current_rate() - 1.0).abs() < 1e-9);
        // The last 10 s ran at about the floor.
        let before = granted;
        for _ in 0..1_000 {
            now += Duration::from_millis(10);
            if b.try_take(now) {
                granted += 1;
                b.answered(Answer::NotFound, now);
            }
        }
        assert!(granted - before <= 11, "{}", granted - before);
    }

    #[test]
    fn the_rate_recovers_when_404s_stop() {
        let t0 = Instant::now();
        let mut b = UnknownBudget::new(settings(), t0);
        for _ in 0..50 {
            b.answered(Answer::NotFound, t0);
        }
        assert!(b.current_rate() < 1.5);
        let _ = b.tokens(t0 + Duration::from_secs(60));
        for _ in 0..3 {
            b.answered(Answer::Found, t0 + Duration::from_secs(60));
        }
        assert_eq!(b.current_rate(), 10.0);
    }

    proptest! {
        /// Whatever the answers, tokens stay within [0, burst], and the lookups granted
        /// without a refund (404s) never exceed burst + rate × elapsed.
        #[test]
        fn spent_tokens_never_exceed_burst_plus_rate(
            steps in proptest::collection::vec((0u64..200, 0u8..4), 1..300),
        ) {
            let s = settings();
            let t0 = Instant::now();
            let mut b = UnknownBudget::new(s, t0);
            let mut now = t0;
            let mut spent = 0u32;
            for (ms, what) in steps {
                now += Duration::from_millis(ms);
                if b.try_take(now) {
                    match what {
                        0 => b.answered(Answer::Found, now),
                        1 => b.answered(Answer::Unavailable, now),
                        _ => { spent += 1; b.answered(Answer::NotFound, now) }
                    }
                }
                let t = b.tokens(now);
                prop_assert!((0.0..=f64::from(s.burst)).contains(&t));
                let elapsed = now.duration_since(t0).as_secs_f64();
                prop_assert!(f64::from(spent) <= f64::from(s.burst) + s.rate * elapsed + 1e-6);
            }
        }
    }
}
