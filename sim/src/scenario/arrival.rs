//! Arrival processes: when each client of a population starts. Pure and seeded,
//! so the same seed gives the same start offsets on every run.

use std::time::Duration;

use rand::Rng;

/// A validated arrival process (rates are finite and positive).
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    Constant { rate: f64 },
    Poisson { rate: f64 },
    Burst { at: Duration },
    Ramp { from: f64, to: f64, over: Duration },
}

impl Arrival {
    /// Start offsets for `count` clients, non-decreasing; `None` when a start is not a
    /// representable duration (a rate so small that clients would start after ~584 billion
    /// years, or extreme ramp values that make it NaN).
    pub fn offsets(&self, count: u32, rng: &mut impl Rng) -> Option<Vec<Duration>> {
        let secs: Vec<f64> = match *self {
            Arrival::Constant { rate } => (0..count).map(|i| f64::from(i) / rate).collect(),
            Arrival::Poisson { rate } => {
                let mut t = 0.0;
                (0..count)
                    .map(|_| {
                        let at = t;
                        // 1 - gen() lies in (0, 1], so ln() is finite.
                        let u: f64 = 1.0 - rng.gen::<f64>();
                        t += -u.ln() / rate;
                        at
                    })
                    .collect()
            }
            Arrival::Burst { at } => vec![at.as_secs_f64(); count as usize],
            Arrival::Ramp { from, to, over } => (0..count)
                .map(|i| ramp_time(from, to, over.as_secs_f64(), f64::from(i)))
                .collect(),
        };
        secs.into_iter()
            .map(|s| Duration::try_from_secs_f64(s).ok())
            .collect()
    }
}

/// The time at which `n` clients have arrived when the rate rises linearly from
/// `from` to `to` over `over` seconds and then stays at `to`: inverts
/// N(t) = from*t + (to-from)/(2*over)*t^2.
fn ramp_time(from: f64, to: f64, over: f64, n: f64) -> f64 {
    let arrived_during_ramp = (from + to) / 2.0 * over;
    if n > arrived_during_ramp || over <= 0.0 {
        let ramp = over.max(0.0);
        let before = if over <= 0.0 {
            0.0
        } else {
            arrived_during_ramp
        };
        return ramp + (n - before) / to;
    }
    let a = (to - from) / (2.0 * over);
    if a.abs() < 1e-12 {
        return n / from;
    }
    // Smallest non-negative root of a*t^2 + from*t - n = 0.
    let disc = (from * from + 4.0 * a * n).max(0.0);
    ((-from + disc.sqrt()) / (2.0 * a)).clamp(0.0, over)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn offs(a: Arrival, n: u32) -> Vec<f64> {
        a.offsets(n, &mut ChaCha20Rng::seed_from_u64(1))
            .expect("representable starts")
            .into_iter()
            .map(|d| d.as_secs_f64())
            .collect()
    }

    #[test]
    fn constant_is_evenly_spaced() {
        let o = offs(Arrival::Constant { rate: 4.0 }, 5);
        assert_eq!(o, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    }

    #[test]
    fn starts_beyond_any_duration_are_refused_not_a_panic() {
        // Found while writing the scenario fuzz target: `rate = 1e-300` put the second client
        // 1e300 s out, and converting that to a Duration panicked.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for a in [
            Arrival::Constant { rate: 1e-300 },
            Arrival::Poisson { rate: 1e-300 },
            Arrival::Ramp {
                from: 1e308,
                to: 1.7e308,
                over: Duration::from_nanos(1),
            },
        ] {
            assert_eq!(a.offsets(3, &mut rng), None, "{a:?}");
        }
        assert_eq!(
            Arrival::Constant { rate: 1e-300 }.offsets(1, &mut rng),
            Some(vec![Duration::ZERO])
        );
    }

    #[test]
    fn burst_starts_everyone_together() {
        let o = offs(
            Arrival::Burst {
                at: Duration::from_secs(2),
            },
            3,
        );
        assert_eq!(o, vec![2.0; 3]);
    }

    #[test]
    fn poisson_is_seeded_monotone_and_has_roughly_the_right_rate() {
        let a = offs(Arrival::Poisson { rate: 100.0 }, 2000);
        assert_eq!(a, offs(Arrival::Poisson { rate: 100.0 }, 2000));
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let last = a[a.len() - 1];
        assert!(
            (15.0..25.0).contains(&last),
            "2000 arrivals at 100/s took {last}s"
        );
    }

    #[test]
    fn ramp_is_monotone_and_matches_the_integral() {
        // 0 -> 10/s over 10 s: 50 clients during the ramp, then 10/s.
        let o = offs(
            Arrival::Ramp {
                from: 0.0,
                to: 10.0,
                over: Duration::from_secs(10),
            },
            61,
        );
        assert!(o.windows(2).all(|w| w[0] <= w[1] + 1e-9));
        assert!((o[50] - 10.0).abs() < 1e-6, "{}", o[50]);
        assert!((o[60] - 11.0).abs() < 1e-6, "{}", o[60]);
        // Flat ramp equals constant.
        let flat = offs(
            Arrival::Ramp {
                from: 5.0,
                to: 5.0,
                over: Duration::from_secs(1),
            },
            10,
        );
        let constant = offs(Arrival::Constant { rate: 5.0 }, 10);
        for (f, c) in flat.iter().zip(&constant) {
            assert!((f - c).abs() < 1e-6);
        }
    }
}
