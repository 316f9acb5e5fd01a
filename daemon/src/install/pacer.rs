//! Paces the gateway's own handshake initiations (role inversion) during a peer storm.
//! Every initiation the data plane sends comes back as a handshake response that joins
//! its handshake queue; wireguard-go turns "under load" at 128 queued handshakes and then
//! refuses responses without mac2 (a cookie reply the client stores but does not act on),
//! so a burst of initiations turns into clients waiting for the 5 s retransmit. A token
//! bucket at about the rate the data plane completes handshakes keeps the queue short.
//!
//! That rate depends on the machine and on what else the data plane is doing (the clients'
//! own initiations fill the same queue), so the pacer can also adapt it (`--initiate-adapt`)
//! from the one signal that says the data plane has gone under load: cookie replies leaving
//! it (counted by `install::feedback`). Every [`ADAPT_INTERVAL`] with cookie replies seen it
//! halves the rate (down to an eighth of the configured one); an interval without any while
//! initiations wait raises it by a quarter (up to four times the configured one); with none
//! waiting it returns to the configured rate, where the next storm starts. Multiplicative both
//! ways, like TCP's congestion window: wireguard-go stays under load for a sticky second
//! after its queue drains, so the rate must fall fast while it lasts and climb fast after.
//! Pure: time and the cookie count come in as arguments.

use std::time::{Duration, Instant};

/// How much of a second's rate may go out at once: 20 ms worth, so a batch of hundreds
/// of installs becomes a trickle of small bursts rather than one wave of responses.
const BURST_SECONDS: f64 = 0.02;

/// How often an adaptive pacer revises its rate.
pub const ADAPT_INTERVAL: Duration = Duration::from_millis(50);
/// Rate factor after an interval with cookie replies.
const ADAPT_DECREASE: f64 = 0.5;
/// Rate factor after an interval without cookie replies while initiations waited.
const ADAPT_INCREASE: f64 = 1.25;
/// The adaptive rate stays within [configured / this, configured * `ADAPT_MAX_FACTOR`].
const ADAPT_MIN_DIVISOR: f64 = 8.0;
const ADAPT_MAX_FACTOR: f64 = 4.0;

/// Token bucket for role-inversion initiations. Rate 0 = unpaced (every install
/// initiates at once, the behaviour before pacing).
#[derive(Debug, Clone)]
pub struct InitiationPacer {
    /// Initiations per second; 0 = unpaced.
    rate: f64,
    /// Most tokens held (and so the largest burst).
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
    /// `None`: a fixed rate.
    adapt: Option<Adapt>,
}

/// The adaptive pacer's state: the configured rate and the cookie count at the last revision.
#[derive(Debug, Clone)]
struct Adapt {
    configured: f64,
    revised_at: Option<Instant>,
    cookies: u64,
}

impl InitiationPacer {
    /// `rate`: initiations per second, 0 for unpaced.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        let burst = (rate * BURST_SECONDS).max(1.0);
        InitiationPacer {
            rate,
            burst,
            tokens: burst,
            last: None,
            adapt: None,
        }
    }

    /// A pacer starting at `rate` that adapts it to the cookie replies passed to
    /// [`InitiationPacer::feedback`]; rate 0 stays unpaced.
    pub fn adaptive(rate: u32) -> Self {
        let mut pacer = Self::new(rate);
        if !pacer.is_unpaced() {
            pacer.adapt = Some(Adapt {
                configured: pacer.rate,
                revised_at: None,
                cookies: 0,
            });
        }
        pacer
    }

    /// The current rate (initiations per second; 0 = unpaced).
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// An adaptive pacer's input: `cookies` is the running count of cookie replies seen
    /// leaving the data plane, `waiting` whether initiations are waiting for tokens. Revises
    /// the rate at most once per [`ADAPT_INTERVAL`]; a fixed-rate pacer ignores it.
    pub fn feedback(&mut self, now: Instant, cookies: u64, waiting: bool) {
        let Some(adapt) = self.adapt.as_mut() else {
            return;
        };
        let Some(revised_at) = adapt.revised_at else {
            adapt.revised_at = Some(now);
            adapt.cookies = cookies;
            return;
        };
        if now.saturating_duration_since(revised_at) < ADAPT_INTERVAL {
            return;
        }
        let min = (adapt.configured / ADAPT_MIN_DIVISOR).max(1.0);
        let max = adapt.configured * ADAPT_MAX_FACTOR;
        let rate = if cookies > adapt.cookies {
            self.rate * ADAPT_DECREASE
        } else if waiting {
            self.rate * ADAPT_INCREASE
        } else {
            adapt.configured
        };
        adapt.revised_at = Some(now);
        adapt.cookies = cookies;
        // Tokens earned so far count at the old rate.
        self.refill(now);
        self.rate = rate.clamp(min, max);
        self.burst = (self.rate * BURST_SECONDS).max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    pub fn is_unpaced(&self) -> bool {
        self.rate == 0.0
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            // A clock read out of order (`now` before `last`) adds nothing.
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// How many of `wanted` initiations may go out at `now` (they are taken).
    pub fn admit(&mut self, now: Instant, wanted: usize) -> usize {
        if self.is_unpaced() {
            return wanted;
        }
        self.refill(now);
        let n = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= n as f64;
        n
    }

    /// Give back `n` admitted initiations that were not sent (the write failed).
    pub fn refund(&mut self, n: usize) {
        if !self.is_unpaced() {
            self.tokens = (self.tokens + n as f64).min(self.burst);
        }
    }

    /// How long from `now` until at least one more initiation may go out.
    pub fn wait(&self, now: Instant) -> Duration {
        if self.is_unpaced() {
            return Duration::ZERO;
        }
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        let have = self.tokens + elapsed * self.rate;
        if have >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - have) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaced_admits_everything_and_never_waits() {
        let t = Instant::now();
        let mut p = InitiationPacer::new(0);
        assert_eq!(p.admit(t, 10_000), 10_000);
        assert_eq!(p.admit(t, 10_000), 10_000);
        assert_eq!(p.wait(t), Duration::ZERO);
    }

    #[test]
    fn a_batch_gets_one_burst_then_the_rate() {
        let t = Instant::now();
        let mut p = InitiationPacer::new(1000);
        // 20 ms worth at once, not the whole batch.
        assert_eq!(p.admit(t, 500), 20);
        assert_eq!(p.admit(t, 500), 0);
        assert!(p.wait(t) > Duration::ZERO && p.wait(t) <= Duration::from_millis(1));
        // 10 ms later: 10 more.
        assert_eq!(p.admit(t + Duration::from_millis(10), 500), 10);
        // Over a second, about the rate (the bucket never holds more than the burst).
        let mut sent = 0;
        for ms in 11..=1010 {
            sent += p.admit(t + Duration::from_millis(ms), 500);
        }
        assert!((995..=1005).contains(&sent), "{sent}");
    }

    #[test]
    fn idle_time_does_not_save_up_more_than_a_burst() {
        let t = Instant::now();
        let mut p = InitiationPacer::new(2000);
        assert_eq!(p.admit(t, 1), 1);
        assert_eq!(p.admit(t + Duration::from_secs(60), 10_000), 40);
    }

    #[test]
    fn refunds_are_capped_and_clock_going_back_adds_nothing() {
        let t = Instant::now() + Duration::from_secs(10);
        let mut p = InitiationPacer::new(100);
        assert_eq!(p.admit(t, 5), 2);
        p.refund(50);
        assert_eq!(p.admit(t - Duration::from_secs(5), 5), 2);
        assert_eq!(p.admit(t, 5), 0);
    }

    #[test]
    fn adaptive_rate_halves_on_cookies_climbs_while_waiting_and_stays_in_bounds() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut p = InitiationPacer::adaptive(1000);
        p.feedback(at(0), 0, true);
        assert_eq!(p.rate(), 1000.0);
        // Within one interval nothing changes, whatever the cookies.
        p.feedback(at(10), 5, true);
        assert_eq!(p.rate(), 1000.0);
        p.feedback(at(50), 5, true);
        assert_eq!(p.rate(), 500.0);
        // Keeps falling while cookies keep coming, never below an eighth.
        for i in 2..10 {
            p.feedback(at(50 * i), 5 + i, true);
        }
        assert_eq!(p.rate(), 125.0);
        // Quiet and waiting: climbs by a quarter per interval, never above four times.
        p.feedback(at(500), 14, true);
        assert_eq!(p.rate(), 156.25);
        for i in 11..40 {
            p.feedback(at(50 * i), 14, true);
        }
        assert_eq!(p.rate(), 4000.0);
        assert_eq!(p.admit(at(2000), 10_000), 80, "the burst follows the rate");
        // Nothing waiting: back to the configured rate for the next storm.
        p.feedback(at(2050), 14, false);
        assert_eq!(p.rate(), 1000.0);
    }

    #[test]
    fn fixed_and_unpaced_pacers_ignore_feedback() {
        let t = Instant::now();
        let mut fixed = InitiationPacer::new(1000);
        let mut unpaced = InitiationPacer::adaptive(0);
        for ms in [0, 100, 200] {
            fixed.feedback(t + Duration::from_millis(ms), ms, true);
            unpaced.feedback(t + Duration::from_millis(ms), ms, true);
        }
        assert_eq!(fixed.rate(), 1000.0);
        assert!(unpaced.is_unpaced());
    }

    #[test]
    fn slow_rates_still_send_one_at_a_time() {
        let t = Instant::now();
        let mut p = InitiationPacer::new(10);
        assert_eq!(p.admit(t, 3), 1);
        assert_eq!(p.wait(t), Duration::from_millis(100));
        assert_eq!(p.admit(t + Duration::from_millis(100), 3), 1);
    }
}
