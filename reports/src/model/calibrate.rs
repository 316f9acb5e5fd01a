//! Fitting the cost model: one least-squares fit per cost, each on the calibration points where
//! that cost can be seen (a reboot's reload only where there was a reboot, steady CPU only where
//! there was none), with a two-segment knee search for setup latency against the clients queued at a searched drain
//! rate (arrivals that come faster than the gateway sets peers up).
//!
//! Every model keeps its fit (R², residuals, bands) so reports can show how far to trust it; a
//! model the directory cannot identify (too few points, a feature that never varied) is listed
//! with the reason instead of being guessed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::batch::{BatchLaw, BatchSample, Batching};
use super::fit::{FitError, LinearFit, Weighting};
use super::knee::{fit_knee, KneeFit};
use super::point::{CalPoint, STAGES};
use super::select::{fit_spec, Spec};
use super::setup::fit_setup;
use crate::figures::Unit;

/// Fewest calibration points a directory must hold.
pub const MIN_POINTS: usize = 3;

/// What a model's fit is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fitted {
    Linear(LinearFit),
    Knee(KneeFit),
}

impl Fitted {
    /// The underlying least-squares fit (a knee's is over `[x, above_knee]`).
    pub fn linear(&self) -> &LinearFit {
        match self {
            Fitted::Linear(f) => f,
            Fitted::Knee(k) => &k.fit,
        }
    }
}

/// One fitted cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    /// Key in [`Calibration::models`], e.g. `daemon_cpu`.
    pub name: String,
    /// One line saying what was fitted against what.
    pub description: String,
    /// Unit of the fitted quantity.
    #[serde(skip)]
    pub unit: Unit,
    /// Fitted on the natural log of the quantity (latency: its noise is multiplicative, and a
    /// storm moves it by orders of magnitude); predictions are transformed back.
    pub log_scale: bool,
    pub fitted: Fitted,
}

/// A model the directory could not fit, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unfitted {
    pub name: String,
    pub reason: String,
}

/// Every cost the calibration directory identifies.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub points: usize,
    pub models: BTreeMap<String, Model>,
    pub unfitted: Vec<Unfitted>,
    /// CPUs the calibration gateway ran on (all points agreeing); `None` when unknown or mixed.
    pub gateway_cpus: Option<u32>,
    /// Peers per second the gateway sets up, as the setup-latency fit found it (the drain rate
    /// of [`Planned::queued`](super::scenario::Planned::queued)); `None` when setup latency was
    /// not fitted.
    pub drain_per_s: Option<f64>,
    /// How install batches are counted: the batch law fitted to the runs' install counts, or
    /// the drain's lone arrivals when they recorded none.
    pub batching: Batching,
    /// Points whose load generator saturated (their timing is suspect, they are still used).
    pub saturated_points: usize,
    /// How far past its `duration` the longest calibration run went (the fleet's finish and
    /// the last sample), floored at 0: a predicted run length is capped at `duration` plus this.
    pub run_end_slack_s: f64,
    /// The first point's recorded scenario: what `--predict` overrides apply to.
    #[serde(skip)]
    pub base_scenario: serde_json::Value,
}

/// Why no calibration could be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("the calibration directory holds {found} finished run(s); the cost model needs at least {MIN_POINTS} (run a parameter sweep with at least {MIN_POINTS} points, or {MIN_POINTS} runs with `jitwg run --out DIR/points/<i>`)")]
    TooFewPoints { found: usize },
}

/// The quantities a model may be fitted against, by name; `batching` counts a run's install
/// batches (the batch law, or the setup model's drain where the runs have no install counts).
pub fn feature(point: &CalPoint, name: &str, batching: &Batching) -> Option<f64> {
    let m = &point.measured;
    let p = &point.planned;
    match name {
        "arrivals" => Some(m.arrivals),
        "handshakes" => Some(m.handshakes),
        "peer_sweeps" => Some(m.peer_sweeps),
        "peer_samples" => Some(m.peer_sweeps * p.sweep_every_s / p.sample_every_s.max(1e-3)),
        "run_seconds" => Some(m.run_seconds),
        "installed_peers" => m.installed_peak,
        "stored_peers" => m.stored_peers,
        "installed_estimate" => Some(p.installed_estimate),
        "installs" => Some(p.installs_estimate),
        "bare_peers" => Some(p.bare_peers),
        "session_peers" => m.installed_peak.map(|n| (n - p.bare_peers).max(0.0)),
        "stale_estimate" => Some(p.stale_estimate),
        "planned_peer_sweeps" => Some(planned_peer_sweeps(p, m.run_seconds)),
        "gateway_retries" => Some(p.gateway_retries(m.run_seconds)),
        "install_batches" => Some(p.install_batches(batching)),
        "storm_size" => Some(p.storm_size),
        _ => STAGES
            .iter()
            .find(|s| name == format!("{s}_count"))
            .and_then(|s| m.stages.get(*s).map(|(_, n)| *n)),
    }
}

/// Peers the eviction sweeps will read over a run that lasts `run_s`, by Little's law: the
/// installed peer-seconds up to the run's end over the sweep period.
pub fn planned_peer_sweeps(p: &super::scenario::Planned, run_s: f64) -> f64 {
    p.peer_seconds(run_s) / p.sweep_every_s.max(f64::MIN_POSITIVE)
}

pub(crate) fn steady(p: &CalPoint) -> bool {
    !p.planned.has_reboot
}

fn any(_: &CalPoint) -> bool {
    true
}

/// The CPU models' feature sets, richest first. Every cost a run has: per arrival (or
/// handshake), per install batch, per installed peer over time (read by the eviction sweep
/// every `sweep_every`, and listed by the testbed's sampling every `sample_every`: the two
/// are told apart only by calibration runs that vary one of the periods, e.g. cal-sample),
/// per second. A short run differs
/// from a long one in all but the first, so fitting one with only arrivals and seconds charged
/// the long churn runs' installed peers to every second and gave a negative start-up cost
/// (BENCHMARKS.md, capacity planning, fourth round).
const CPU_SETS_DAEMON: &[&[&str]] = &[
    &[
        "arrivals",
        "install_batches",
        "peer_sweeps",
        "peer_samples",
        "run_seconds",
    ],
    &["arrivals", "install_batches", "peer_sweeps", "peer_samples"],
    &["arrivals", "install_batches", "peer_samples", "run_seconds"],
    &["arrivals", "install_batches", "peer_samples"],
    &["arrivals", "install_batches", "peer_sweeps", "run_seconds"],
    &["arrivals", "install_batches", "peer_sweeps"],
    &["arrivals", "peer_sweeps", "run_seconds"],
    &["arrivals", "install_batches", "run_seconds"],
    &["arrivals", "install_batches"],
    &["arrivals", "run_seconds"],
    &["arrivals", "peer_sweeps"],
    &["arrivals"],
];
const CPU_SETS_DATAPLANE: &[&[&str]] = &[
    &[
        "handshakes",
        "install_batches",
        "peer_sweeps",
        "peer_samples",
        "run_seconds",
    ],
    &[
        "handshakes",
        "install_batches",
        "peer_sweeps",
        "peer_samples",
    ],
    &[
        "handshakes",
        "install_batches",
        "peer_samples",
        "run_seconds",
    ],
    &["handshakes", "install_batches", "peer_samples"],
    &[
        "handshakes",
        "install_batches",
        "peer_sweeps",
        "run_seconds",
    ],
    &["handshakes", "install_batches", "peer_sweeps"],
    &["handshakes", "peer_sweeps", "run_seconds"],
    &["handshakes", "install_batches", "run_seconds"],
    &["handshakes", "install_batches"],
    &["handshakes", "run_seconds"],
    &["handshakes", "peer_sweeps"],
    &["handshakes"],
];

/// The CPU models' misses are judged as fractions (the goal is ±25 % of the measured value, and
/// the runs span 0.05 to 5 CPU seconds: fitted by absolute misses, the long churn runs set the
/// line and the short storms' fractions fell where they would), floored at 0.1 s because CPU
/// time is read in the kernel's 10 ms ticks (an idle run's jitwgd reads 0.00-0.03 s).
const CPU_WEIGHTING: Weighting = Weighting::RelativeAbove { floor: 0.1 };

const SPECS: &[Spec] = &[
    Spec {
        name: "daemon_cpu",
        description: "jitwgd CPU seconds: a fixed start-up cost (the intercept, never significantly below 0), per arrival, per install batch (the batch's fixed cost: the batch law fitted to jitwgd's install counts says how many a run's arrivals make), per installed peer per sweep period (the eviction sweep; in the testbed also its once-a-second sampling), per second of run (timers); fitted by relative misses (runs under 0.1 s weighted as 0.1 s): R² is the weighted one",
        unit: Unit::Seconds,
        weighting: CPU_WEIGHTING,
        filter: steady,
        y: |p| p.figure("daemon_cpu"),
        feature_sets: CPU_SETS_DAEMON,
    },
    Spec {
        name: "dataplane_cpu",
        description: "data-plane CPU seconds: a fixed start-up cost (the intercept, never significantly below 0), per handshake, per install batch (a data-plane write of its own), per handshake it sends to departed clients (WireGuard's retries, kept only when told apart from zero), per installed peer per sweep period (the sweep's and the testbed's listings of the peers), per second of run (timers); fitted by relative misses (runs under 0.1 s weighted as 0.1 s): R² is the weighted one",
        unit: Unit::Seconds,
        weighting: CPU_WEIGHTING,
        filter: steady,
        y: |p| p.figure("dataplane_cpu"),
        feature_sets: CPU_SETS_DATAPLANE,
    },
    Spec {
        name: "handshakes",
        description: "client handshake initiations per arrival (retries included)",
        unit: Unit::Count,
        weighting: Weighting::Uniform,
        filter: steady,
        y: |p| Some(p.measured.handshakes),
        feature_sets: &[&["arrivals"]],
    },
    Spec {
        name: "api_calls",
        description: "control-plane API calls per arrival",
        unit: Unit::Count,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| Some(p.measured.api_calls),
        feature_sets: &[&["arrivals"]],
    },
    Spec {
        name: "installed_peers",
        description: "peak installed peers against Little's law (arrival rate × residence)",
        unit: Unit::Count,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.measured.installed_peak,
        feature_sets: &[&["installed_estimate"]],
    },
    Spec {
        name: "peer_sweeps",
        description: "peers read by the eviction sweeps against Little's law",
        unit: Unit::Count,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| Some(p.measured.peer_sweeps),
        feature_sets: &[&["planned_peer_sweeps"]],
    },
    Spec {
        name: "daemon_rss_peak",
        description: "jitwgd peak RSS bytes per installed peer and per arrival in the busiest second",
        unit: Unit::Bytes,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.figure("daemon_rss_peak"),
        feature_sets: &[&["installed_peers", "storm_size"], &["installed_peers"]],
    },
    Spec {
        name: "dataplane_rss_peak",
        description: "data-plane peak RSS bytes per installed peer without a session (preloaded, preinstalled), per installed peer with one, and per peer installed over the process's life (removed ones included; kept only when it is told apart from zero)",
        unit: Unit::Bytes,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.figure("dataplane_rss_peak"),
        feature_sets: &[
            &["bare_peers", "session_peers", "installs"],
            &["bare_peers", "session_peers"],
            &["session_peers", "installs"],
            &["session_peers"],
            &["installed_peers", "storm_size"],
            &["installed_peers"],
        ],
    },
    Spec {
        name: "reload_time_preload",
        description: "preload reboot: ms from daemon start to ready per stored peer",
        unit: Unit::Ms,
        weighting: Weighting::Uniform,
        filter: |p| p.planned.boot == "preload",
        y: |p| p.figure("reload_time"),
        feature_sets: &[&["stored_peers"]],
    },
    Spec {
        name: "reload_time_jit",
        description: "JIT reboot: ms from daemon start to ready (a constant)",
        unit: Unit::Ms,
        weighting: Weighting::Uniform,
        filter: |p| p.planned.boot == "jit",
        y: |p| p.figure("reload_time"),
        feature_sets: &[&[]],
    },
    Spec {
        name: "stale_peers_max",
        description: "peak stale peers against Little's law (arrival rate × time past the stale threshold before eviction)",
        unit: Unit::Count,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.figure("stale_peers_max"),
        feature_sets: &[&["stale_estimate"]],
    },
    Spec {
        name: "identify_seconds",
        description: "jitwgd seconds per identify (stage metric)",
        unit: Unit::Seconds,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.measured.stages.get("identify").map(|s| s.0),
        feature_sets: &[&["identify_count"]],
    },
    Spec {
        name: "lookup_seconds",
        description: "jitwgd seconds per lookup (stage metric; includes waiting for the API)",
        unit: Unit::Seconds,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.measured.stages.get("lookup").map(|s| s.0),
        feature_sets: &[&["lookup_count"]],
    },
    Spec {
        name: "identify_cpu_seconds",
        description: "jitwgd CPU seconds per identify (its worker thread's CPU time: mac1, two X25519 for a first contact, one for a key whose static-static DH is cached)",
        unit: Unit::Seconds,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.measured.stage_cpu.get("identify").copied(),
        feature_sets: &[&["identify_count"]],
    },
    Spec {
        name: "install_cpu_seconds",
        description: "jitwgd CPU seconds per install batch (the install worker thread's CPU time for the batch's data-plane write: building the request, sending it, reading the answer; a lookup's CPU has no series of its own and is in daemon_cpu)",
        unit: Unit::Seconds,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.measured.stage_cpu.get("install").copied(),
        feature_sets: &[&["install_count"]],
    },
    Spec {
        name: "install_seconds",
        description: "jitwgd seconds per install (stage metric)",
        unit: Unit::Seconds,
        weighting: Weighting::Uniform,
        filter: any,
        y: |p| p.measured.stages.get("install").map(|s| s.0),
        feature_sets: &[&["install_count"]],
    },
];

/// Name of the setup-latency model (a knee fit against storm size).
pub const SETUP_MODEL: &str = "setup_p50";

/// Name of the setup and run-length models' input: clients queued at the fitted drain rate.
pub const QUEUED: &str = "queued";

/// Name of the run-length model: the per-second CPU terms are charged for the run as it will
/// last, which is longer than planned when clients connect late.
pub const RUN_MODEL: &str = "run_overrun";

impl Calibration {
    /// Fits every model the points identify.
    pub fn fit(points: &[CalPoint]) -> Result<Self, CalibrationError> {
        if points.len() < MIN_POINTS {
            return Err(CalibrationError::TooFewPoints {
                found: points.len(),
            });
        }
        let mut models = BTreeMap::new();
        let mut unfitted = Vec::new();
        // Setup latency first: where the runs recorded no install counts, its drain rate tells
        // which arrivals were set up alone (each a batch).
        let setup = fit_setup(points);
        let drain_per_s = setup.as_ref().ok().map(|(_, drain)| *drain);
        let batching = fit_batching(points).map_or(
            Batching::Drain {
                per_s: drain_per_s.unwrap_or(0.0),
            },
            Batching::Law,
        );
        for spec in SPECS {
            match fit_spec(spec, points, &batching) {
                Ok(model) => {
                    models.insert(spec.name.to_string(), model);
                }
                Err(reason) => {
                    // A stage model without stage metrics is not news: say nothing.
                    if !(spec.name.ends_with("_seconds") && reason.starts_with("no point")) {
                        unfitted.push(Unfitted {
                            name: spec.name.to_string(),
                            reason,
                        });
                    }
                }
            }
        }
        for (name, fitted) in [
            (SETUP_MODEL, setup.map(|(model, _)| model)),
            (RUN_MODEL, fit_overrun(points, drain_per_s.unwrap_or(0.0))),
        ] {
            match fitted {
                Ok(model) => {
                    models.insert(name.to_string(), model);
                }
                Err(reason) => unfitted.push(Unfitted {
                    name: name.to_string(),
                    reason,
                }),
            }
        }
        let cpus: Vec<Option<u32>> = points.iter().map(|p| p.measured.gateway_cpus).collect();
        let gateway_cpus = match cpus.first() {
            Some(Some(first)) if cpus.iter().all(|c| *c == Some(*first)) => Some(*first),
            _ => None,
        };
        Ok(Calibration {
            drain_per_s,
            batching,
            points: points.len(),
            models,
            unfitted,
            gateway_cpus,
            saturated_points: points.iter().filter(|p| p.measured.saturated).count(),
            run_end_slack_s: points
                .iter()
                .map(|p| p.measured.run_seconds - p.planned.duration_s)
                .fold(0.0, f64::max),
            base_scenario: points[0].scenario.clone(),
        })
    }

    /// A fitted model by name.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.get(name)
    }

    /// The setup models' input for a run: clients its arrivals leave queued at the fitted drain
    /// rate (the largest wave when setup latency was not fitted).
    pub fn queued(&self, p: &super::scenario::Planned) -> f64 {
        p.queued(self.drain_per_s.unwrap_or(0.0))
    }

    /// Install batches a run's arrivals make: the CPU models' `install_batches`.
    pub fn install_batches(&self, p: &super::scenario::Planned) -> f64 {
        p.install_batches(&self.batching)
    }

    /// The storm knee as a storm arriving within one second: `knee` clients left queued by a
    /// wave of `knee + drain` in that second.
    pub fn storm_knee(&self) -> Option<f64> {
        self.knee().map(|k| k + self.drain_per_s.unwrap_or(0.0))
    }

    /// The clients queued where setup latency turns up, if the data showed one: the first of its
    /// p50's knee and its tail's (the jump in how long runs last past their plan, where some
    /// clients first connect on WireGuard's 5 s retry, usually well before the median moves).
    pub fn knee(&self) -> Option<f64> {
        let knee_of = |name: &str| match &self.model(name)?.fitted {
            Fitted::Knee(k) => k.knee,
            Fitted::Linear(_) => None,
        };
        match (knee_of(SETUP_MODEL), knee_of(RUN_MODEL)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The batch law fitted to the install counts of the steady JIT runs that recorded them
/// (jitwgd's `install` stage count), each run's waves summed into one: `None` when too few
/// recorded one or their rates did not differ.
fn fit_batching(points: &[CalPoint]) -> Option<BatchLaw> {
    let samples: Vec<BatchSample> = points
        .iter()
        .filter(|p| steady(p) && p.planned.mode == "jit")
        .filter_map(|p| {
            let (_, batches) = *p.measured.stages.get("install")?;
            // One population per calibration run; a run of several is left out (its waves
            // overlap in ways one rate does not describe).
            let [wave] = p.planned.waves.as_slice() else {
                return None;
            };
            Some(BatchSample {
                count: wave.count,
                rate: wave.rate,
                batches: batches * wave.count / wave.arrivals.max(1.0),
            })
        })
        .collect();
    BatchLaw::fit(&samples)
}

/// How much longer than planned a steady JIT run lasts (seconds), against the clients queued at
/// the setup model's drain rate `drain`, knee searched. A client's stay starts once it is connected, so the run ends a setup *tail* after
/// the last arrival's stay: milliseconds below the knee, WireGuard's 5 s retry above it, where
/// some clients' first exchange is refused (cookie replies).
fn fit_overrun(points: &[CalPoint], drain: f64) -> Result<Model, String> {
    let (xs, ys): (Vec<f64>, Vec<f64>) = points
        .iter()
        .filter(|p| steady(p) && p.planned.mode == "jit")
        .map(|p| {
            (
                p.planned.queued(drain),
                p.measured.run_seconds - p.planned.run_s,
            )
        })
        .unzip();
    if xs.len() < MIN_POINTS {
        return Err(format!(
            "{} steady JIT point(s); {MIN_POINTS} needed",
            xs.len()
        ));
    }
    let knee = fit_knee(QUEUED, &xs, &ys).map_err(|e| match e {
        FitError::Singular => "the clients queued did not vary across the points".to_string(),
        e => e.to_string(),
    })?;
    Ok(Model {
        name: RUN_MODEL.to_string(),
        description: "seconds a run lasts beyond its plan (last arrival + stay) against the clients queued (at the setup model's drain rate), knee searched: the setup tail, a 5 s retry past the knee; the CPU models' per-second terms are charged for the planned length plus this".to_string(),
        unit: Unit::Seconds,
        log_scale: false,
        fitted: Fitted::Knee(knee),
    })
}
