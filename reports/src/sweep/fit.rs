//! What a sweep report draws on top of each figure's points: a knee marker, a fitted curve and
//! its R². The caller fills [`FigureAnnotation`]s (a cost model fitted elsewhere can); this
//! module's [`fallback_annotations`] is the report's own simple method for when none is given.
//!
//! **Fallback method** (pure, documented in ARCHITECTURE.md "Parameter sweeps"): over every
//! finished repeat (x = the first varied key's numeric value, y = the figure), fit one
//! least-squares line; then try every split of the sorted distinct x values into a left and a
//! right part of at least two distinct x each, fitting a line to each part. The best split is a
//! **knee** when it at least halves the single line's residual sum of squares *and* its right
//! segment is at least twice as steep as its left (a level shift between two flat parts counts);
//! the knee x is where the two lines cross,
//! clamped to the gap between the parts. Without a knee the single line is the fit ("linear
//! where the data is linear"). R² = 1 − SSE/SST of the fit drawn.

use super::SweepFile;

/// Per-figure marks a sweep chart draws, in the figure's own units and the x of the points.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FigureAnnotation {
    /// Registry name of the figure (`setup_p50`).
    pub figure: String,
    /// Vertical marker at this x.
    pub knee_x: Option<f64>,
    /// The fitted curve as (x, y) points, drawn as a dashed line.
    pub fitted: Vec<(f64, f64)>,
    /// Fit quality, shown in the caption.
    pub r_squared: Option<f64>,
    /// (x, measured − fitted) per repeat, listed under the chart.
    pub residuals: Vec<(f64, f64)>,
    /// How the marks were made, shown in the caption.
    pub method: String,
}

/// A least-squares line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub slope: f64,
    pub intercept: f64,
    /// Residual sum of squares.
    pub sse: f64,
}

impl Line {
    pub fn at(&self, x: f64) -> f64 {
        self.slope * x + self.intercept
    }
}

/// Least squares through `points`; `None` with fewer than two distinct x.
pub fn linear_fit(points: &[(f64, f64)]) -> Option<Line> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= f64::EPSILON * mx.abs().max(1.0) {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let sse = points
        .iter()
        .map(|p| (p.1 - (slope * p.0 + intercept)).powi(2))
        .sum();
    Some(Line {
        slope,
        intercept,
        sse,
    })
}

/// Total sum of squares around the mean.
fn sst(points: &[(f64, f64)]) -> f64 {
    let my = points.iter().map(|p| p.1).sum::<f64>() / points.len().max(1) as f64;
    points.iter().map(|p| (p.1 - my).powi(2)).sum()
}

/// 1 − SSE/SST; `None` when the data does not vary at all.
pub fn r_squared(points: &[(f64, f64)], sse: f64) -> Option<f64> {
    let total = sst(points);
    (total > 0.0).then(|| 1.0 - sse / total)
}

/// A two-segment fit found by [`knee`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knee {
    pub x: f64,
    pub left: Line,
    pub right: Line,
    /// Largest x of the left part and smallest of the right.
    pub split: (f64, f64),
}

/// Steepening a knee must show over the line before it.
const KNEE_STEEPENING: f64 = 2.0;
/// Share of the single line's residual sum of squares a knee must remove at least.
const KNEE_SSE_GAIN: f64 = 0.5;

/// The knee of `points` by the module's method, or `None` (linear, or too few distinct x).
pub fn knee(points: &[(f64, f64)]) -> Option<Knee> {
    let single = linear_fit(points)?;
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let mut best: Option<(f64, Knee)> = None;
    for cut in 2..xs.len().saturating_sub(1) {
        let (lo, hi) = (xs[cut - 1], xs[cut]);
        let left: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 <= lo).collect();
        let right: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= hi).collect();
        let (Some(l), Some(r)) = (linear_fit(&left), linear_fit(&right)) else {
            continue;
        };
        let sse = l.sse + r.sse;
        let crossing = if (r.slope - l.slope).abs() > f64::EPSILON {
            (l.intercept - r.intercept) / (r.slope - l.slope)
        } else {
            lo
        };
        let candidate = Knee {
            x: crossing.clamp(lo, hi),
            left: l,
            right: r,
            split: (lo, hi),
        };
        if best.as_ref().is_none_or(|(b, _)| sse < *b) {
            best = Some((sse, candidate));
        }
    }
    let (sse, k) = best?;
    let steeper = k.right.slope.abs() >= KNEE_STEEPENING * k.left.slope.abs();
    let better = sse <= KNEE_SSE_GAIN * single.sse;
    (steeper && better && single.sse > 0.0).then_some(k)
}

/// The fallback method over one figure's points (see the module docs).
pub fn annotate(figure: &str, points: &[(f64, f64)]) -> Option<FigureAnnotation> {
    let single = linear_fit(points)?;
    let (min_x, max_x) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let found = knee(points);
    // Points of the left part belong to the left line even where the knee sits on their x
    // (parallel segments, a level shift, cross at the left part's last x).
    let model = |x: f64| match &found {
        Some(k) if x <= k.split.0 => k.left.at(x),
        Some(k) if x >= k.split.1 || x >= k.x => k.right.at(x),
        Some(k) => k.left.at(x),
        None => single.at(x),
    };
    let fitted = match &found {
        Some(k) => vec![
            (min_x, k.left.at(min_x)),
            (k.x, k.left.at(k.x)),
            (k.x, k.right.at(k.x)),
            (max_x, k.right.at(max_x)),
        ],
        None => vec![(min_x, single.at(min_x)), (max_x, single.at(max_x))],
    };
    let residuals: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, y - model(x))).collect();
    let sse: f64 = residuals.iter().map(|r| r.1 * r.1).sum();
    Some(FigureAnnotation {
        figure: figure.to_string(),
        knee_x: found.map(|k| k.x),
        fitted,
        r_squared: r_squared(points, sse),
        residuals,
        method: match found {
            Some(_) => "two-segment least squares (report's fallback knee method)".into(),
            None => "least-squares line (report's fallback; no knee found)".into(),
        },
    })
}

/// Every repeat's (x, figure) over the sweep's first varied key, or nothing when the sweep has
/// more than one varied key with several values (the points then do not lie on one curve) or
/// the key is not numeric.
pub fn figure_points(sweep: &SweepFile, figure: &str) -> Vec<(f64, f64)> {
    let several = sweep.vary.iter().skip(1).any(|k| k.values.len() > 1);
    let Some(key) = sweep.vary.first().filter(|_| !several) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for point in sweep.measured_points() {
        let Some(Some(x)) = point.x.get(&key.key) else {
            continue;
        };
        out.extend(
            point
                .repeats
                .iter()
                .filter_map(|r| r.figures.get(figure))
                .map(|&y| (*x, y)),
        );
    }
    out
}

/// The fallback annotation of every figure the sweep measured (see the module docs).
pub fn fallback_annotations(sweep: &SweepFile) -> Vec<FigureAnnotation> {
    crate::figures::FIGURES
        .iter()
        .filter_map(|def| annotate(def.name, &figure_points(sweep, def.name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_line_fits_exactly_with_r2_one_and_no_knee() {
        let pts: Vec<(f64, f64)> = (0..6).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        let l = linear_fit(&pts).unwrap();
        assert!(close(l.slope, 3.0) && close(l.intercept, 1.0) && l.sse < 1e-12);
        let a = annotate("f", &pts).unwrap();
        assert_eq!(a.knee_x, None);
        assert!(close(a.r_squared.unwrap(), 1.0));
    }

    #[test]
    fn a_hockey_stick_has_its_knee_at_the_bend() {
        // Flat until 4, then rising by 10 per unit, with a little noise.
        let pts: Vec<(f64, f64)> = (0..9)
            .flat_map(|i| {
                let x = i as f64;
                let y = if x <= 4.0 {
                    1.0
                } else {
                    1.0 + 10.0 * (x - 4.0)
                };
                [(x, y + 0.05), (x, y - 0.05)]
            })
            .collect();
        let k = knee(&pts).expect("knee");
        assert!((k.x - 4.0).abs() <= 0.5, "{k:?}");
        let a = annotate("f", &pts).unwrap();
        assert!(a.r_squared.unwrap() > 0.99);
        assert_eq!(a.residuals.len(), pts.len());
    }

    #[test]
    fn a_level_shift_is_marked_and_fits_exactly() {
        // lookups vs evict_after: every return re-installs below the gap, none above it.
        let pts = [
            (10.0, 600.0),
            (20.0, 600.0),
            (30.0, 200.0),
            (45.0, 200.0),
            (60.0, 200.0),
        ];
        let a = annotate("lookup_count", &pts).unwrap();
        let knee = a.knee_x.expect("knee");
        assert!((20.0..=30.0).contains(&knee), "{knee}");
        assert!(close(a.r_squared.unwrap(), 1.0), "{a:?}");
        assert!(a.residuals.iter().all(|r| r.1.abs() < 1e-9), "{a:?}");
    }

    #[test]
    fn noise_around_a_line_is_not_a_knee() {
        let noise = [0.3, -0.2, 0.1, -0.3, 0.2, -0.1, 0.25, -0.15];
        let pts: Vec<(f64, f64)> = noise
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64, 2.0 * i as f64 + n))
            .collect();
        assert_eq!(knee(&pts), None);
    }

    #[test]
    fn too_few_points_fit_nothing() {
        assert!(linear_fit(&[(1.0, 1.0)]).is_none());
        assert!(linear_fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
        assert!(knee(&[(1.0, 1.0), (2.0, 2.0), (3.0, 9.0)]).is_none());
    }

    #[test]
    fn constant_data_has_no_r2() {
        let pts = [(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)];
        assert_eq!(annotate("f", &pts).unwrap().r_squared, None);
    }

    #[test]
    fn the_sweep_fixture_gets_a_knee_on_latency_and_a_line_on_cpu() {
        let sweep = super::super::tests::knee_sweep();
        let all = fallback_annotations(&sweep);
        let latency = all.iter().find(|a| a.figure == "setup_p50").unwrap();
        let knee = latency.knee_x.expect("knee");
        assert!((400.0..=500.0).contains(&knee), "{knee}");
        let cpu = all.iter().find(|a| a.figure == "daemon_cpu").unwrap();
        assert_eq!(cpu.knee_x, None);
        assert!(close(cpu.r_squared.unwrap(), 1.0));
    }
}
