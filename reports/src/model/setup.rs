//! The setup-latency fit: p50 against the clients a run's arrivals leave queued at a gateway
//! that sets peers up at a drain rate searched from the data, with the knee searched and the
//! linear or log scale chosen, each candidate judged by how well it predicts the points left out.
//! The linear scale is fitted by relative misses (weights 1/y²): by absolute ones, the 0.3-2 s
//! storms would set the intercept and every unqueued 20 ms run would be under-predicted.

use super::calibrate::{steady, Fitted, Model, MIN_POINTS, QUEUED, SETUP_MODEL};
use super::fit::{FitError, LinearFit, Weighting};
use super::knee::{fit_knee_weighted, KneeFit};
use super::point::CalPoint;
use crate::figures::Unit;

/// Setup latency below this is taken as this before its logarithm (no run measures less).
const LATENCY_FLOOR_MS: f64 = 0.1;

/// Drain rates (peers set up per second) the setup-latency fit tries: 0 (every arrival of a
/// wave counts, the busiest wave's size) and then 1/s to 100,000/s in steps of 5 %.
fn drain_grid() -> impl Iterator<Item = f64> {
    std::iter::once(0.0).chain((0..=236).map(|i| 1.05_f64.powi(i)))
}

/// Setup latency p50 (ms), less the control plane's injected latency, against the clients a
/// run's arrivals leave queued ([`Planned::queued`](super::scenario::Planned::queued)) at a
/// gateway draining `drain` per second, on steady JIT runs. The drain rate is searched (the
/// value whose fit misses the calibration points by the smallest ratios; ties go to the lower
/// rate), and so is the knee. Returns the model and the drain rate.
pub(crate) fn fit_setup(points: &[CalPoint]) -> Result<(Model, f64), String> {
    let runs: Vec<(&CalPoint, f64)> = points
        .iter()
        .filter(|p| steady(p) && p.planned.mode == "jit")
        .filter_map(|p| {
            let y = p.figure("setup_p50")? - p.planned.api_latency_s * 1000.0;
            Some((p, y.max(LATENCY_FLOOR_MS)))
        })
        .collect();
    if runs.len() < MIN_POINTS {
        return Err(format!(
            "{} steady JIT point(s) measured setup latency; {MIN_POINTS} needed",
            runs.len()
        ));
    }
    let ms: Vec<f64> = runs.iter().map(|r| r.1).collect();
    let logs: Vec<f64> = ms.iter().map(|y| y.ln()).collect();
    // (score, drain, log scale, fit)
    let mut best: Option<(f64, f64, bool, KneeFit)> = None;
    let mut last_error = FitError::Singular;
    for drain in drain_grid() {
        let xs: Vec<f64> = runs.iter().map(|r| r.0.planned.queued(drain)).collect();
        // Latency may grow linearly with the queue (draining at a steady rate) or by orders of
        // magnitude (WireGuard's 5 s retries): keep the scale whose fit misses the calibration
        // points by the smaller ratios, the measure the goal is stated in.
        // Both scales fit relative misses: a log's differences are ratios already, and the
        // linear scale weights each point by 1/y², so a 20 ms run counts as much as a 2 s one.
        for log_scale in [false, true] {
            let (ys, weighting) = if log_scale {
                (&logs, Weighting::Uniform)
            } else {
                (&ms, Weighting::Relative)
            };
            let fit = match fit_knee_weighted(QUEUED, &xs, ys, weighting) {
                Ok(fit) => fit,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            let misses = ratio_misses(&xs, &ms, |x| {
                let v = fit.predict(x).value;
                if log_scale {
                    v.exp()
                } else {
                    v
                }
            });
            // The drain rate and a knee are parameters too: a knee searched at every drain rate
            // can follow the noise of a few points. So candidates are compared by how well they
            // predict each point left out (the knee where the full fit put it), which a knee held
            // up by one or two points cannot do. Strictly better by more than rounding: among
            // equals the lower drain rate (and the linear scale) stays, so a calibration at one
            // arrival rate keeps the wave's size.
            if !misses.is_finite() {
                continue;
            }
            let score = left_out_misses(&fit, &xs, &ms, log_scale);
            if score.is_finite()
                && best
                    .as_ref()
                    .is_none_or(|b| score < b.0 * (1.0 - 1e-9) - 1e-12)
            {
                best = Some((score, drain, log_scale, fit));
            }
        }
    }
    let Some((_, drain, log_scale, knee)) = best else {
        return Err(match last_error {
            FitError::Singular => "the clients queued did not vary across the points".to_string(),
            e => e.to_string(),
        });
    };
    let (what, weighted) = if log_scale {
        ("ln of setup latency p50", "")
    } else {
        (
            "setup latency p50",
            "; the linear scale is fitted by relative misses (weights 1/p50²): its R² is the weighted one, its residual s.e. a fraction of p50, and its bands widen in proportion to the prediction",
        )
    };
    Ok((
        Model {
            name: SETUP_MODEL.to_string(),
            description: format!("{what} (ms, less injected API latency) against the clients queued when a wave has arrived (count × (1 − drain / arrival rate), 0 when the gateway keeps up), the gateway's drain rate searched ({} peer setups/s fitted) and the knee searched; the scale (linear or log) and the drain rate whose fit best predicts each calibration point left out of it (squared log ratios){weighted}", super::predict::short(drain)),
            unit: Unit::Ms,
            log_scale,
            fitted: Fitted::Knee(knee),
        },
        drain,
    ))
}

/// Sum over the points of the squared log ratio by which the fit of all the others, with the
/// knee where `fit` has it, misses the one left out; infinite when a point cannot be predicted
/// without itself (it alone held up a parameter).
fn left_out_misses(fit: &KneeFit, xs: &[f64], ms: &[f64], log_scale: bool) -> f64 {
    let names: Vec<&str> = fit.fit.features.iter().map(String::as_str).collect();
    let rows: Vec<Vec<f64>> = xs.iter().map(|&x| fit.features(x)).collect();
    let ys: Vec<f64> = if log_scale {
        ms.iter().map(|y| y.ln()).collect()
    } else {
        ms.to_vec()
    };
    let mut total = 0.0;
    for i in 0..xs.len() {
        let keep = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, y)| *y)
                .collect()
        };
        let others: Vec<Vec<f64>> = rows
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| r.clone())
            .collect();
        let Ok(without) = LinearFit::fit_weighted(&names, &others, &keep(&ys), fit.fit.weighting)
        else {
            return f64::INFINITY;
        };
        let v = without.predict(&rows[i]).value;
        let predicted = if log_scale { v.exp() } else { v };
        if predicted.is_nan() || predicted <= 0.0 {
            return f64::INFINITY;
        }
        total += (predicted / ms[i]).ln().powi(2);
    }
    total
}

/// Sum of squared log ratios of fitted to measured; a fitted value at or below 0 cannot be a
/// latency and counts as an infinite miss.
fn ratio_misses(xs: &[f64], measured: &[f64], fitted: impl Fn(f64) -> f64) -> f64 {
    xs.iter()
        .zip(measured)
        .map(|(&x, &y)| {
            let f = fitted(x);
            if f > 0.0 {
                (f / y).ln().powi(2)
            } else {
                f64::INFINITY
            }
        })
        .sum()
}
