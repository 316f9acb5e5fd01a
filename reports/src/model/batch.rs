//! How many install batches a wave of arrivals makes at jitwgd, as a batch-service queue: the
//! install worker sets up whatever arrived while it was busy in one batch, and a batch of `n`
//! keeps the gateway's one CPU busy `per_batch + n × per_arrival` seconds (jitwgd's and the
//! data plane's work for it: the two share the CPU). A batch's fixed cost is what a lone
//! arrival pays on top of a batched one, so the CPU models charge it per batch.
//!
//! The law's two times are fitted to the calibration runs' own install counts (jitwgd's
//! `install` stage count), not assumed: BENCHMARKS.md, capacity planning, fifth round, shows
//! the counts and why the setup model's drain (`1 - rate/drain` of arrivals alone) fell off
//! too slowly near it.

use serde::Serialize;

/// The batch-service law: seconds a batch keeps the gateway busy, fixed and per arrival.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchLaw {
    pub per_batch_s: f64,
    pub per_arrival_s: f64,
    /// Runs it was fitted on, and the root-mean-square of `ln(law / measured)` over them.
    pub runs: usize,
    pub rms_log_error: f64,
}

/// How a calibration counts install batches: by the batch law fitted to jitwgd's install
/// counts, or, when the runs did not record them (older results), by the arrivals the setup
/// model's drain leaves alone (`1 - rate/drain` of them, each a batch of its own).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Batching {
    Law(BatchLaw),
    Drain { per_s: f64 },
}

/// One calibration run's arrivals and the install batches jitwgd counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchSample {
    pub count: f64,
    pub rate: f64,
    pub batches: f64,
}

impl BatchLaw {
    /// A law with these service times (not fitted: `runs` 0).
    pub fn new(per_batch_s: f64, per_arrival_s: f64) -> Self {
        BatchLaw {
            per_batch_s,
            per_arrival_s,
            runs: 0,
            rms_log_error: 0.0,
        }
    }

    /// Install batches `count` arrivals at `rate` per second (Poisson) make: the fewer of the
    /// steady-state law and the queue's growth from an idle start (a short or overloading wave
    /// never reaches the steady state), at least 1. A burst (infinite rate) makes 2: the first
    /// arrival alone, everyone else behind it.
    pub fn batches(&self, count: f64, rate: f64) -> f64 {
        if count <= 0.0 {
            return 0.0;
        }
        if !rate.is_finite() {
            return count.min(2.0);
        }
        let steady = count * self.steady_share(rate).unwrap_or(1.0);
        steady
            .min(self.batches_from_idle(count, rate))
            .clamp(1.0, count)
    }

    /// Batches per arrival in the steady state, `None` when the queue grows without bound
    /// (`rate × per_arrival ≥ 1`). A batch that takes `s` seconds is the last of its busy
    /// period when nobody arrives during it (`e^{-rate s}`); arrivals that find the gateway
    /// idle start a period (PASTA: `rate × (1 - busy)`), and the gateway is busy `s` per
    /// batch, so batches per arrival are `1 / (e^{-rate s} + rate s)`, with `s` the time of
    /// the mean batch (`per_batch + per_arrival / share`): a fixed point, reached from 1.
    fn steady_share(&self, rate: f64) -> Option<f64> {
        if rate * self.per_arrival_s >= 1.0 {
            return None;
        }
        let mut share: f64 = 1.0;
        for _ in 0..500 {
            let s = self.per_batch_s + self.per_arrival_s / share;
            let next = 1.0 / ((-rate * s).exp() + rate * s);
            if (next - share).abs() < 1e-10 {
                return Some(next);
            }
            share = next;
        }
        Some(share)
    }

    /// Batches from an idle start, in the mean: the first arrival alone, each next batch what
    /// arrived while the last one was set up (at least one), until `count` have arrived.
    fn batches_from_idle(&self, count: f64, rate: f64) -> f64 {
        let mut left = count;
        let mut size: f64 = 1.0;
        let mut batches = 0.0;
        while left > 0.0 {
            let taken = size.min(left);
            left -= taken;
            batches += 1.0;
            let next = (rate * (self.per_batch_s + self.per_arrival_s * taken)).max(1.0);
            // Settled (the steady size, or one at a time): the rest go at this size.
            if (next - size).abs() < 1e-9 {
                return batches + left / size;
            }
            size = next;
        }
        batches
    }

    /// The law that fits the runs' install counts best (least squares on `ln`, so a run of
    /// 5 batches weighs as much as one of 300), searched on a grid of 0.1-100 ms per batch and
    /// 0 or 0.05-5 ms per arrival, 12 % apart. `None` with fewer than 3 runs or when their
    /// rates do not differ (nothing to tell the two times apart).
    pub fn fit(samples: &[BatchSample]) -> Option<BatchLaw> {
        let usable: Vec<&BatchSample> = samples
            .iter()
            .filter(|s| s.count >= 1.0 && s.batches >= 1.0 && s.rate > 0.0)
            .collect();
        let first_rate = usable.first()?.rate;
        if usable.len() < 3 || usable.iter().all(|s| s.rate == first_rate) {
            return None;
        }
        let error = |law: &BatchLaw| -> f64 {
            usable
                .iter()
                .map(|s| (law.batches(s.count, s.rate) / s.batches).ln().powi(2))
                .sum()
        };
        let mut best: Option<(f64, BatchLaw)> = None;
        for i in 0..=60 {
            let per_batch = 1e-4 * 10f64.powf(f64::from(i) / 20.0);
            for j in 0..=40 {
                let per_arrival = if j == 0 {
                    0.0
                } else {
                    5e-5 * 10f64.powf(f64::from(j) / 20.0)
                };
                let law = BatchLaw::new(per_batch, per_arrival);
                let e = error(&law);
                if best.as_ref().is_none_or(|(b, _)| e < *b) {
                    best = Some((e, law));
                }
            }
        }
        let (sse, law) = best?;
        Some(BatchLaw {
            runs: usable.len(),
            rms_log_error: (sse / usable.len() as f64).sqrt(),
            ..law
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fifth round's fitted law (5.01 ms per batch, 0.446 ms per arrival).
    fn measured_law() -> BatchLaw {
        BatchLaw::new(0.00501, 0.000446)
    }

    #[test]
    fn slow_arrivals_are_set_up_alone_and_fast_ones_in_a_few_batches() {
        let law = measured_law();
        // 300 at 10/s: a batch lasts ~5.5 ms, the next arrival comes ~100 ms later.
        assert!(law.batches(300.0, 10.0) > 299.0);
        // 300 at 2,500/s: the gateway cannot keep up (2,500 × 0.446 ms > 1), batches grow
        // 1, 5, 13, 30, ... and 300 are in after a handful (the runs counted 5-8).
        let storm = law.batches(300.0, 2500.0);
        assert!((4.0..=9.0).contains(&storm), "{storm}");
        assert_eq!(law.batches(300.0, f64::INFINITY), 2.0);
        assert_eq!(law.batches(0.0, 10.0), 0.0);
        // Monotone in the rate, and never more batches than arrivals or fewer than 1.
        let mut last = f64::INFINITY;
        for rate in [1.0, 10.0, 100.0, 300.0, 600.0, 1000.0, 1200.0, 5000.0, 1e5] {
            let b = law.batches(300.0, rate);
            assert!(
                b <= last + 1e-9 && (1.0..=300.0).contains(&b),
                "{rate}: {b}"
            );
            last = b;
        }
    }

    #[test]
    fn the_steady_share_is_the_busy_period_law() {
        // Without a per-arrival time: 1 / (e^{-x} + x) at x = rate × per_batch = 1.
        let law = BatchLaw::new(0.002, 0.0);
        let share = law.steady_share(500.0).unwrap();
        assert!((share - 1.0 / ((-1.0f64).exp() + 1.0)).abs() < 1e-9);
        assert_eq!(BatchLaw::new(0.001, 0.001).steady_share(1000.0), None);
    }

    #[test]
    fn the_fit_recovers_a_planted_law_from_counts() {
        let planted = BatchLaw::new(0.002, 0.0005);
        let samples: Vec<BatchSample> = [10.0, 40.0, 150.0, 300.0, 600.0, 1200.0, 2500.0]
            .into_iter()
            .map(|rate| (300.0, rate))
            .chain([(50.0, 2500.0), (1000.0, 2500.0)])
            .map(|(count, rate)| BatchSample {
                count,
                rate,
                batches: planted.batches(count, rate),
            })
            .collect();
        let law = BatchLaw::fit(&samples).unwrap();
        for s in &samples {
            let got = law.batches(s.count, s.rate);
            assert!(
                (got / s.batches - 1.0).abs() < 0.1,
                "{s:?}: {got} ({law:?})"
            );
        }
        assert_eq!(law.runs, samples.len());
        // One rate tells nothing about how the count falls with it.
        assert_eq!(BatchLaw::fit(&samples[..1]), None);
        let same_rate = vec![samples[0]; 5];
        assert_eq!(BatchLaw::fit(&same_rate), None);
    }
}
