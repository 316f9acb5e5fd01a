//! Choosing a model's features: each specification lists feature sets richest first, and the
//! first set whose fit is sound is kept (no negative cost per unit, no clearly negative fixed
//! cost, every cost but the base one told apart from zero). A CPU model's base cost (per
//! arrival, per handshake) is never the one dropped, and is held at 0 when the data put it
//! insignificantly below 0. A model with an optional cost (the data plane's retries to departed
//! clients) tries it on top of every set and takes the sets by size instead, keeping the best fit
//! among the sound sets of the largest size that has one.

use super::batch::Batching;
use super::calibrate::{feature, Fitted, Model};
use super::fit::{FitError, LinearFit, Weighting};
use super::point::CalPoint;
use crate::figures::Unit;

/// The models whose first feature is a base cost kept whatever the richer sets do.
const CPU_SPECS: [&str; 2] = ["daemon_cpu", "dataplane_cpu"];

/// A cost some runs have and others lack, tried with every feature set (the set with it first,
/// then the set alone) so that it is kept only on top of the costs the set already names: the
/// data plane's handshakes to departed clients come only with churn runs whose peers outlive
/// the retry delay, so as a set of its own it stood in for the installed peers' sweep cost.
const OPTIONAL: [(&str, &str); 1] = [("dataplane_cpu", "gateway_retries")];

/// A model specification: which points, which quantity, against which features (tried in
/// order, fewer features when the richer set cannot be identified).
pub(crate) struct Spec {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: Unit,
    pub filter: fn(&CalPoint) -> bool,
    pub y: fn(&CalPoint) -> Option<f64>,
    /// How each point's miss counts in the fit.
    pub weighting: Weighting,
    pub feature_sets: &'static [&'static [&'static str]],
}

pub(crate) fn fit_spec(
    spec: &Spec,
    points: &[CalPoint],
    batching: &Batching,
) -> Result<Model, String> {
    let mut last_error = String::new();
    // The CPU models' first feature is their base cost (per arrival, per handshake): it stays
    // even when a richer set shares its effect with another feature (handshakes and install
    // arrivals move together outside storms); the other features are the ones dropped when
    // not told apart from zero. (Memory keeps the plain rule: a per-peer cost not told apart
    // from zero there means the set is wrong, and the next one is tried.)
    let base = CPU_SPECS
        .contains(&spec.name)
        .then(|| spec.feature_sets.first().and_then(|f| f.first()).copied())
        .flatten();
    // The sampling's cost per peer is told from the sweep's only when the calibration varied
    // one period against the other; otherwise it is one cost, named after the sweep (which a
    // production gateway has too, so the fleet plan charges it).
    let periods_vary = {
        let ratio = |p: &CalPoint| p.planned.sweep_every_s / p.planned.sample_every_s.max(1e-3);
        let mut ratios = points.iter().filter(|p| (spec.filter)(p)).map(ratio);
        let first = ratios.next().unwrap_or(1.0);
        ratios.any(|r| (r / first - 1.0).abs() > 1e-6)
    };
    let optional = OPTIONAL
        .iter()
        .find(|(name, _)| *name == spec.name)
        .map(|(_, f)| *f);
    let mut sets: Vec<Vec<&str>> = spec
        .feature_sets
        .iter()
        .filter(|f| periods_vary || !f.contains(&"peer_samples"))
        .flat_map(|f| {
            let with = optional.map(|o| f.iter().copied().chain([o]).collect::<Vec<_>>());
            with.into_iter().chain([f.to_vec()])
        })
        .collect();
    // With an optional cost, sets are tried by size, richest first, and among the sound sets of
    // one size the best fit is kept (same runs, same number of costs: the higher R²), so the
    // optional cost neither stands in for a cost the set names nor loses to a set that fits
    // worse only because it came first in the list.
    let by_size = optional.is_some();
    if by_size {
        sets.sort_by_key(|f| std::cmp::Reverse(f.len()));
    }
    let mut best: Option<LinearFit> = None;
    for (i, features) in sets.iter().enumerate() {
        if best
            .as_ref()
            .is_some_and(|b| features.len() < b.features.len())
        {
            break;
        }
        let last = i + 1 == sets.len();
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for p in points.iter().filter(|p| (spec.filter)(p)) {
            let row: Option<Vec<f64>> = features.iter().map(|f| feature(p, f, batching)).collect();
            if let (Some(row), Some(y)) = (row, (spec.y)(p)) {
                xs.push(row);
                ys.push(y);
            }
        }
        if ys.is_empty() {
            return Err("no point measured it".to_string());
        }
        let min = features.len() + 2;
        if ys.len() < min {
            last_error = format!("{} point(s) measured it; {min} needed", ys.len());
            continue;
        }
        let fitted = LinearFit::fit_weighted(features, &xs, &ys, spec.weighting)
            .and_then(|fit| without_negative_base(fit, base, &xs, &ys));
        match fitted {
            // A cost per unit is never negative: a negative slope means two features share
            // one effect (they moved together in these runs); fit with fewer.
            Ok(fit) if fit.coefficients[1..].iter().any(|b| *b < 0.0) => {
                last_error = format!(
                    "a negative cost per unit when fitted against {}: the features moved together",
                    features.join(" and ")
                );
            }
            // Every quantity modelled here is 0 when nothing happens, and a run's fixed cost
            // (start-up) is never negative: an intercept clearly below 0 means a cost that
            // grows with the run was left out or charged to the wrong feature; fit another set.
            // (Below 0 by more than rounding: an exact fit's intercept is 0 ± 1e-16, and its
            // band is as narrow, so the sign of the rounding must not reject it.)
            Ok(fit)
                if !last
                    && fit
                        .intercept_band()
                        .is_some_and(|b| b.high < -rounding(&ys)) =>
            {
                last_error = format!(
                    "a negative fixed cost when fitted against {}",
                    features.join(" and ")
                );
            }
            // A cost the data cannot tell apart from zero only widens the bands (and may stand
            // in for another): fit with fewer features while a simpler set is left to try.
            Ok(fit) if !last && insignificant(&fit, base).is_some() => {
                last_error = format!(
                    "the cost per {} was not told apart from zero",
                    insignificant(&fit, base).unwrap_or_default()
                );
            }
            Ok(fit) => {
                let r2 = |f: &LinearFit| f.r_squared.unwrap_or(f64::NEG_INFINITY);
                if best.as_ref().is_none_or(|b| r2(&fit) > r2(b)) {
                    best = Some(fit);
                }
                if !by_size {
                    break;
                }
            }
            Err(FitError::Singular) => {
                last_error = format!(
                    "{} did not vary across the {} point(s) that measured it",
                    features.join(" and "),
                    ys.len()
                );
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let fit = best.ok_or(last_error)?;
    Ok(Model {
        name: spec.name.to_string(),
        description: spec.description.to_string(),
        unit: spec.unit,
        log_scale: false,
        fitted: Fitted::Linear(fit),
    })
}

/// `fit` refitted without its `base` feature when that came out below 0 but not clearly so
/// (its band reaches above 0): the data show no cost of its own (every unit of it came with
/// units of the other features), and a negative cost per handshake would only subtract from
/// predictions. The cost is then 0 (least squares with that slope held at its bound); a base
/// clearly below 0 is left for the negative-slope rule.
fn without_negative_base(
    fit: LinearFit,
    base: Option<&str>,
    xs: &[Vec<f64>],
    ys: &[f64],
) -> Result<LinearFit, FitError> {
    let Some(i) = base.and_then(|b| fit.features.iter().position(|f| f == b)) else {
        return Ok(fit);
    };
    let drop = fit.features.len() > 1
        && fit
            .slope_band(&fit.features[i])
            .is_some_and(|band| band.value < 0.0 && band.high >= 0.0);
    if !drop {
        return Ok(fit);
    }
    let features: Vec<&str> = fit
        .features
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, f)| f.as_str())
        .collect();
    let rows: Vec<Vec<f64>> = xs
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| *v)
                .collect()
        })
        .collect();
    LinearFit::fit_weighted(&features, &rows, ys, fit.weighting)
}

/// Below this an intercept is rounding, not a fixed cost: a billionth of the largest value.
fn rounding(ys: &[f64]) -> f64 {
    ys.iter().fold(0.0, |m: f64, y| m.max(y.abs())) * 1e-9
}

/// The first feature other than `base` whose slope's 95 % band reaches zero.
fn insignificant(fit: &LinearFit, base: Option<&str>) -> Option<String> {
    fit.features
        .iter()
        .filter(|f| Some(f.as_str()) != base)
        .find(|f| fit.slope_band(f).is_some_and(|b| b.low <= 0.0))
        .cloned()
}
