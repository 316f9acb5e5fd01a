//! Predicting a run's figures from its planned quantities: each figure's model is evaluated at
//! inputs that are themselves predicted (installed peers from Little's law through the
//! calibrated `installed_peers` model, handshakes from arrivals), and each input's own band is
//! carried into the figure's band.

use std::collections::BTreeMap;

use serde::Serialize;

use super::calibrate::{planned_peer_sweeps, Calibration, Fitted, RUN_MODEL, SETUP_MODEL};
use super::fit::Band;
use super::scenario::Planned;

/// One predicted figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Predicted {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl From<Band> for Predicted {
    fn from(b: Band) -> Self {
        Predicted {
            value: b.value,
            low: b.low,
            high: b.high,
        }
    }
}

/// What `jitwg plan --predict` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// By figure name (the results' own: `daemon_cpu`, `setup_p50`, ...), in registry units.
    pub predicted: BTreeMap<String, Predicted>,
    /// Figures not predicted, and why.
    pub not_predicted: BTreeMap<String, String>,
    /// Every model input outside its calibration range: `model: feature = value (calibrated
    /// lo..hi)`.
    pub extrapolated: Vec<String>,
    /// The intermediate quantities the figures were evaluated at.
    pub inputs: BTreeMap<String, Predicted>,
}

/// Evaluates models, remembering which inputs were extrapolated.
pub(crate) struct Evaluator<'a> {
    pub calibration: &'a Calibration,
    pub extrapolated: Vec<String>,
}

impl<'a> Evaluator<'a> {
    pub fn new(calibration: &'a Calibration) -> Self {
        Evaluator {
            calibration,
            extrapolated: Vec::new(),
        }
    }

    /// `model` at `inputs` (one band per feature, in the model's feature order): the model's
    /// prediction interval widened by each input's band. `None` if the model is not fitted.
    pub fn eval(&mut self, model: &str, inputs: &[Band]) -> Option<Band> {
        let m = self.calibration.model(model)?;
        let (fit, row): (_, Vec<Band>) = match &m.fitted {
            Fitted::Linear(f) => (f, inputs.to_vec()),
            Fitted::Knee(k) => {
                let x = inputs.first()?;
                let expand = |v: f64| k.features(v)[1..].to_vec();
                let mut row = vec![*x];
                for (i, _) in expand(x.value).iter().enumerate() {
                    row.push(Band {
                        value: expand(x.value)[i],
                        low: expand(x.low)[i],
                        high: expand(x.high)[i],
                    });
                }
                (&k.fit, row)
            }
        };
        let values: Vec<f64> = row.iter().map(|b| b.value).collect();
        let base = fit.predict(&values);
        let mut spread = base.half_width().powi(2);
        for i in 0..row.len() {
            let at = |v: f64| {
                let mut x = values.clone();
                x[i] = v;
                fit.predict(&x).value
            };
            spread += ((at(row[i].high) - at(row[i].low)) / 2.0).powi(2);
        }
        for name in fit.extrapolated(&values) {
            // A knee's second column follows from its first.
            if super::knee::is_knee_column(&name) {
                continue;
            }
            if let Some(i) = fit.features.iter().position(|f| *f == name) {
                let (lo, hi) = fit.ranges[i];
                self.extrapolated.push(format!(
                    "{model}: {name} = {} (calibrated {}..{})",
                    short(values[i]),
                    short(lo),
                    short(hi)
                ));
            }
        }
        Some(Band::around(base.value, spread.sqrt()))
    }

    /// `model` at inputs looked up by feature name.
    pub fn named(&mut self, model: &str, input: impl Fn(&str) -> Band) -> Option<Band> {
        let features = self
            .calibration
            .model(model)?
            .fitted
            .linear()
            .features
            .clone();
        let row: Vec<Band> = features
            .iter()
            .filter(|f| !super::knee::is_knee_column(f))
            .map(|f| input(f))
            .collect();
        self.eval(model, &row)
    }

    /// `model` at one exact input.
    pub fn at(&mut self, model: &str, x: f64) -> Option<Band> {
        self.eval(model, &[Band::around(x, 0.0)])
    }
}

/// A number short enough for a message.
pub fn short(v: f64) -> String {
    if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Predicts the figures of a scenario with the planned quantities `p`.
pub fn predict(calibration: &Calibration, p: &Planned) -> Prediction {
    let mut ev = Evaluator::new(calibration);
    let mut predicted = BTreeMap::new();
    let mut not_predicted = BTreeMap::new();
    let mut inputs = BTreeMap::new();
    let exact = |v: f64| Band::around(v, 0.0);

    let arrivals = exact(p.arrivals);
    let handshakes = ev
        .eval("handshakes", &[arrivals])
        .unwrap_or(arrivals)
        .at_least(0.0);
    let installed = ev
        .at("installed_peers", p.installed_estimate)
        .unwrap_or(exact(p.installed_estimate))
        .at_least(0.0);
    for (name, band) in [
        ("arrivals", arrivals),
        ("handshakes", handshakes),
        ("installed_peers", installed),
    ] {
        inputs.insert(name.to_string(), band.into());
    }

    // Setup latency first: the run's length (and so the per-second CPU terms) depends on it.
    let steady_jit = !p.has_reboot && p.mode == "jit";
    let api_ms = p.api_latency_s * 1000.0;
    let queued = calibration.queued(p);
    if steady_jit {
        inputs.insert(super::calibrate::QUEUED.to_string(), exact(queued).into());
    }
    let setup = if steady_jit {
        let log_scale = calibration.model(SETUP_MODEL).is_some_and(|m| m.log_scale);
        let back = |v: f64| if log_scale { v.exp() } else { v.max(0.0) };
        ev.at(SETUP_MODEL, queued).map(|b| Band {
            value: back(b.value) + api_ms,
            low: back(b.low) + api_ms,
            high: back(b.high) + api_ms,
        })
    } else {
        None
    };
    // The run lasts its plan plus the setup tail past the knee (steady JIT runs only).
    let planned_run = exact(p.run_s);
    let run_seconds = if steady_jit {
        ev.at(RUN_MODEL, queued)
            .map(|overrun| {
                let run = Band {
                    value: p.run_s + overrun.value,
                    low: p.run_s + overrun.low,
                    high: p.run_s + overrun.high,
                };
                cap_run(run, p.duration_s + calibration.run_end_slack_s)
            })
            .unwrap_or(planned_run)
    } else {
        planned_run
    }
    .at_least(0.0);
    inputs.insert("run_seconds".to_string(), run_seconds.into());
    // Peers the sweeps read: Little's law up to the run's end, through the calibrated model.
    let planned_sweeps = Band {
        value: planned_peer_sweeps(p, run_seconds.value),
        low: planned_peer_sweeps(p, run_seconds.low),
        high: planned_peer_sweeps(p, run_seconds.high),
    };
    let peer_sweeps = ev
        .eval("peer_sweeps", &[planned_sweeps])
        .unwrap_or(planned_sweeps)
        .at_least(0.0);
    inputs.insert("peer_sweeps".to_string(), peer_sweeps.into());
    let batches = exact(calibration.install_batches(p));
    inputs.insert("install_batches".to_string(), batches.into());
    let retries = Band {
        value: p.gateway_retries(run_seconds.value),
        low: p.gateway_retries(run_seconds.low),
        high: p.gateway_retries(run_seconds.high),
    };
    inputs.insert("gateway_retries".to_string(), retries.into());
    let by_name = |name: &str| -> Band {
        match name {
            "arrivals" => arrivals,
            "handshakes" => handshakes,
            "installed_peers" => installed,
            "installs" => exact(p.installs_estimate),
            "bare_peers" => exact(p.bare_peers),
            "session_peers" => Band {
                value: installed.value - p.bare_peers,
                low: installed.low - p.bare_peers,
                high: installed.high - p.bare_peers,
            }
            .at_least(0.0),
            "peer_sweeps" => peer_sweeps,
            "install_batches" => batches,
            "gateway_retries" => retries,
            "peer_samples" => peer_sweeps.scale(p.sweep_every_s / p.sample_every_s.max(1e-3)),
            "run_seconds" => run_seconds,
            "storm_size" => exact(p.storm_size),
            "stale_estimate" => exact(p.stale_estimate),
            _ => exact(f64::NAN),
        }
    };
    let mut put = |name: &str, band: Option<Band>, why: &str| match band {
        Some(b) => {
            predicted.insert(name.to_string(), b.at_least(0.0).into());
        }
        None => {
            not_predicted.insert(name.to_string(), why.to_string());
        }
    };
    let uncalibrated = "not calibrated by this directory (see the fit report)";
    let cpu_figures = ["daemon_cpu", "dataplane_cpu"];
    if p.has_reboot {
        for figure in cpu_figures {
            put(
                figure,
                None,
                "CPU is calibrated on runs without a reboot (a reboot's preload is not in it)",
            );
        }
    }
    let steady_cpu: &[&str] = if p.has_reboot { &[] } else { &cpu_figures };
    for figure in steady_cpu.iter().copied().chain([
        "daemon_rss_peak",
        "dataplane_rss_peak",
        "stale_peers_max",
    ]) {
        put(figure, ev.named(figure, by_name), uncalibrated);
    }
    if steady_jit {
        put("setup_p50", setup, uncalibrated);
    } else {
        put(
            "setup_p50",
            None,
            "calibrated on steady JIT runs only (this scenario reboots or pushes)",
        );
    }
    if !p.has_reboot {
        put("reload_time", None, "the scenario has no reboot");
    } else if p.boot == "preload" {
        // The database at the reboot: the stored peers plus every client looked up before it.
        let stored = p.stored_peers + p.clients;
        inputs.insert("stored_peers".into(), exact(stored).into());
        put(
            "reload_time",
            ev.at("reload_time_preload", stored),
            uncalibrated,
        );
    } else {
        put("reload_time", ev.eval("reload_time_jit", &[]), uncalibrated);
    }
    ev.extrapolated.dedup();
    Prediction {
        predicted,
        not_predicted,
        extrapolated: ev.extrapolated,
        inputs,
    }
}

/// A predicted run length no longer than the run can last: `duration`, plus the time the
/// calibration runs took past theirs to finish.
fn cap_run(band: Band, longest: f64) -> Band {
    Band {
        value: band.value.min(longest),
        low: band.low.min(longest),
        high: band.high.min(longest),
    }
}
