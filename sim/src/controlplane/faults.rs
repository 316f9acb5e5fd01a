//! Fault injection for the control plane: latency models, error rate and outage windows. Pure: the
//! verdict for one request is a function of the configuration, the time since start and a seeded RNG.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// What faults the control plane injects; embeddable in a scenario TOML and sent as JSON to
/// `PUT /v1/faults`. Durations are humantime strings ("5ms").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Added before answering each lookup.
    pub latency: Option<LatencyModel>,
    /// Fraction (0..=1) of lookups answered 503.
    pub error_rate: f64,
    /// Scheduled outages, relative to the server's start.
    pub outages: Vec<OutageWindow>,
    /// How lookups behave during an outage.
    pub outage_mode: OutageMode,
}

/// A latency distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LatencyModel {
    Fixed {
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    Uniform {
        #[serde(with = "humantime_serde")]
        min: Duration,
        #[serde(with = "humantime_serde")]
        max: Duration,
    },
    /// Log-normal given by its median and 99th percentile (p99 >= median).
    Lognormal {
        #[serde(with = "humantime_serde")]
        median: Duration,
        #[serde(with = "humantime_serde")]
        p99: Duration,
    },
}

/// z-score of the 99th percentile of a standard normal distribution.
const Z_P99: f64 = 2.326_347_874;

impl LatencyModel {
    /// Draws one delay.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match *self {
            LatencyModel::Fixed { delay } => delay,
            LatencyModel::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    rng.gen_range(min..=max)
                }
            }
            LatencyModel::Lognormal { median, p99 } => {
                let median_s = median.as_secs_f64();
                if median_s <= 0.0 {
                    return Duration::ZERO;
                }
                let sigma = (p99.as_secs_f64() / median_s).max(1.0).ln() / Z_P99;
                let secs = median_s * (sigma * standard_normal(rng)).exp();
                // Cap absurd tails so a single draw cannot stall a run.
                Duration::from_secs_f64(secs.clamp(0.0, 3600.0))
            }
        }
    }
}

/// Box-Muller: one standard normal draw from two uniforms.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln stays finite
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An outage scheduled relative to the control plane's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutageWindow {
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// Behaviour during an outage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutageMode {
    /// Answer 503 at once.
    #[default]
    #[serde(rename = "503")]
    Unavailable,
    /// Hold the request until the outage ends, then answer 503 (the caller's timeout usually fires
    /// first).
    #[serde(rename = "hang")]
    Hang,
}

/// What to do with one lookup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answer normally after `delay`.
    Serve { delay: Duration },
    /// Answer 503 after `delay`.
    Unavailable { delay: Duration },
    /// Hold until `until` (time since start), then answer 503.
    Hang { until: Duration },
}

/// The live fault state: the configuration plus an outage started by hand.
#[derive(Debug, Clone, Default)]
pub struct FaultState {
    pub config: FaultConfig,
    /// End (time since start) of an outage started through the API; `None` when none is running.
    pub manual_outage_until: Option<Duration>,
}

impl FaultState {
    pub fn new(config: FaultConfig) -> Self {
        FaultState {
            config,
            manual_outage_until: None,
        }
    }

    /// End of the outage covering `now` (time since start), if any.
    pub fn outage_end(&self, now: Duration) -> Option<Duration> {
        let manual = self.manual_outage_until.filter(|end| now < *end);
        let scheduled = self
            .config
            .outages
            .iter()
            .filter(|w| w.start <= now && now < w.start + w.duration)
            .map(|w| w.start + w.duration)
            .max();
        manual.max(scheduled)
    }

    /// Decides the fate of one lookup arriving at `now` (time since start).
    pub fn decide(&self, now: Duration, rng: &mut impl Rng) -> Verdict {
        if let Some(end) = self.outage_end(now) {
            return match self.config.outage_mode {
                OutageMode::Unavailable => Verdict::Unavailable {
                    delay: Duration::ZERO,
                },
                OutageMode::Hang => Verdict::Hang { until: end },
            };
        }
        let delay = self
            .config
            .latency
            .as_ref()
            .map_or(Duration::ZERO, |m| m.sample(rng));
        let rate = self.config.error_rate.clamp(0.0, 1.0);
        if rate > 0.0 && rng.gen_bool(rate) {
            Verdict::Unavailable { delay }
        } else {
            Verdict::Serve { delay }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn parses_from_toml() {
        let cfg: FaultConfig = toml::from_str(
            r#"
            error_rate = 0.1
            outage_mode = "hang"
            latency = { kind = "lognormal", median = "5ms", p99 = "50ms" }
            outages = [{ start = "10s", duration = "30s" }]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.error_rate, 0.1);
        assert_eq!(cfg.outage_mode, OutageMode::Hang);
        assert_eq!(cfg.outages[0].duration, Duration::from_secs(30));
        let json: FaultConfig =
            serde_json::from_str(r#"{"latency":{"kind":"fixed","delay":"5ms"}}"#).unwrap();
        assert_eq!(
            json.latency,
            Some(LatencyModel::Fixed {
                delay: Duration::from_millis(5)
            })
        );
    }

    #[test]
    fn scheduled_and_manual_outages() {
        let mut state = FaultState::new(FaultConfig {
            outages: vec![OutageWindow {
                start: Duration::from_secs(10),
                duration: Duration::from_secs(5),
            }],
            ..Default::default()
        });
        let mut r = rng();
        assert!(matches!(
            state.decide(Duration::from_secs(9), &mut r),
            Verdict::Serve { .. }
        ));
        assert!(matches!(
            state.decide(Duration::from_secs(12), &mut r),
            Verdict::Unavailable { .. }
        ));
        assert!(matches!(
            state.decide(Duration::from_secs(15), &mut r),
            Verdict::Serve { .. }
        ));
        state.manual_outage_until = Some(Duration::from_secs(20));
        state.config.outage_mode = OutageMode::Hang;
        assert_eq!(
            state.decide(Duration::from_secs(16), &mut r),
            Verdict::Hang {
                until: Duration::from_secs(20)
            }
        );
    }

    #[test]
    fn error_rate_extremes() {
        let mut r = rng();
        let all = FaultState::new(FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        });
        let none = FaultState::default();
        for _ in 0..100 {
            assert!(matches!(
                all.decide(Duration::ZERO, &mut r),
                Verdict::Unavailable { .. }
            ));
            assert!(matches!(
                none.decide(Duration::ZERO, &mut r),
                Verdict::Serve { .. }
            ));
        }
    }

    #[test]
    fn lognormal_median_is_roughly_right() {
        let m = LatencyModel::Lognormal {
            median: Duration::from_millis(10),
            p99: Duration::from_millis(100),
        };
        let mut r = rng();
        let mut v: Vec<Duration> = (0..2001).map(|_| m.sample(&mut r)).collect();
        v.sort();
        let median = v[1000].as_secs_f64();
        assert!((0.008..0.0125).contains(&median), "median {median}");
        let p99 = v[1980].as_secs_f64();
        assert!((0.06..0.16).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn uniform_stays_in_range() {
        let m = LatencyModel::Uniform {
            min: Duration::from_millis(2),
            max: Duration::from_millis(4),
        };
        let mut r = rng();
        for _ in 0..100 {
            let d = m.sample(&mut r);
            assert!(d >= Duration::from_millis(2) && d <= Duration::from_millis(4));
        }
    }
}
