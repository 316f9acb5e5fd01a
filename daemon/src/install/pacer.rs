//! Paces the gateway's own handshake initiations (role inversion) during a peer storm.
//! Every initiation the data plane sends comes back as a handshake response that joins
//! its handshake queue; wireguard-go turns "under load" at 128 queued handshakes and then
//! refuses responses without mac2 (a cookie reply the client stores but does not act on),
//! so a burst of initiations turns into clients waiting for the 5 s retransmit. A token
//! bucket at about the rate the data plane completes handshakes keeps the queue short.
//! Pure: time comes in as an argument.

use std::time::{Duration, Instant};

/// How much of a second's rate may go out at once: 20 ms worth, so a batch of hundreds
/// of installs becomes a trickle of small bursts rather than one wave of responses.
const BURST_SECONDS: f64 = 0.02;

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
        }
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
    fn slow_rates_still_send_one_at_a_time() {
        let t = Instant::now();
        let mut p = InitiationPacer::new(10);
        assert_eq!(p.admit(t, 3), 1);
        assert_eq!(p.wait(t), Duration::from_millis(100));
        assert_eq!(p.admit(t + Duration::from_millis(100), 3), 1);
    }
}
