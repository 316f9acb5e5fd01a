//! The storm knee, found from the data: two line segments that meet, or jump, at a breakpoint,
//! `y = a + b·x + d·[x > k] + c·max(0, x - k)`, with `k` searched; kept only when it explains the
//! data better than one straight line by more than its three extra parameters cost (BIC) and the
//! curve turns *up* after it (a jump up, or a steeper slope). The jump matters for storms:
//! setup latency steps from milliseconds to WireGuard's 5 s retry rather than bending.

use serde::Serialize;

use super::fit::{FitError, LinearFit, Weighting};

/// Name of the hinge column `max(0, x - knee)` in a knee's inner fit.
pub const ABOVE_KNEE: &str = "above_knee";
/// Name of the step column `[x > knee]` in a knee's inner fit.
pub const JUMP: &str = "jump_at_knee";

/// Whether a feature name is one of a knee's derived columns (they follow from `x`).
pub fn is_knee_column(name: &str) -> bool {
    name == ABOVE_KNEE || name == JUMP
}

/// A line, or a hinge at a found knee.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KneeFit {
    /// Where the slope turns up; `None`: one line explains the data.
    pub knee: Option<f64>,
    /// Over features `[x]` (no knee) or `[x, [x > knee], max(0, x - knee)]` ([`JUMP`],
    /// [`ABOVE_KNEE`]).
    pub fit: LinearFit,
}

impl KneeFit {
    /// The fitted value at `x` with its 95 % prediction interval.
    pub fn predict(&self, x: f64) -> super::fit::Band {
        self.fit.predict(&self.features(x))
    }

    /// The feature row the inner fit takes for `x`.
    pub fn features(&self, x: f64) -> Vec<f64> {
        match self.knee {
            Some(k) => vec![x, if x > k { 1.0 } else { 0.0 }, (x - k).max(0.0)],
            None => vec![x],
        }
    }

    /// Slope before and (if there is a knee) after it.
    pub fn slopes(&self) -> (f64, Option<f64>) {
        let before = self.fit.coefficients[1];
        (before, self.knee.map(|_| before + self.fit.coefficients[3]))
    }

    /// How far the curve jumps at the knee (0 without one).
    pub fn jump(&self) -> f64 {
        self.knee.map_or(0.0, |_| self.fit.coefficients[2])
    }
}

/// Fits `ys` against `xs`, searching the breakpoint over the range between the second and the
/// second-to-last distinct x (each segment keeps at least two distinct x values).
pub fn fit_knee(x_name: &str, xs: &[f64], ys: &[f64]) -> Result<KneeFit, FitError> {
    fit_knee_weighted(x_name, xs, ys, Weighting::Uniform)
}

/// [`fit_knee`] with each point's miss weighted as `weighting` says: the breakpoint search and
/// the line-or-knee test then compare weighted sums of squares.
pub fn fit_knee_weighted(
    x_name: &str,
    xs: &[f64],
    ys: &[f64],
    weighting: Weighting,
) -> Result<KneeFit, FitError> {
    let rows: Vec<Vec<f64>> = xs.iter().map(|&x| vec![x]).collect();
    let line = LinearFit::fit_weighted(&[x_name], &rows, ys, weighting)?;
    let mut distinct: Vec<f64> = xs.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    // A knee has 5 parameters (a, b, d, c, k): it needs a residual degree of freedom beyond them.
    if distinct.len() < 4 || xs.len() < 6 {
        return Ok(KneeFit {
            knee: None,
            fit: line,
        });
    }
    // Between two neighbouring x values a jump and a bend span the same columns, so the fit is
    // the same wherever the breakpoint sits between them: fit once per gap with the step just
    // after its lower end, then place the knee where the two segments cross (a bend), or mid-gap
    // when they do not cross inside it (a jump).
    let mut best: Option<(f64, f64, f64)> = None; // (lower, upper, sse)
    for pair in distinct[1..distinct.len() - 1].windows(2) {
        let (lower, upper) = (pair[0], pair[1]);
        let Ok(fit) = hinge_fit(x_name, xs, ys, lower, weighting) else {
            continue;
        };
        let sse = fit.sse();
        if best.as_ref().is_none_or(|b| sse < b.2) {
            best = Some((lower, upper, sse));
        }
    }
    let Some((lower, upper, _)) = best else {
        return Ok(KneeFit {
            knee: None,
            fit: line,
        });
    };
    let no_knee = |fit: LinearFit| Ok(KneeFit { knee: None, fit });
    let Ok(placed) = hinge_fit(x_name, xs, ys, lower, weighting) else {
        return no_knee(line);
    };
    let (jump, bend) = (placed.coefficients[2], placed.coefficients[3]);
    let crossing = if bend != 0.0 {
        lower - jump / bend
    } else {
        f64::NAN
    };
    // Segments that cross inside the gap meet there (a bend); otherwise the turn is a jump
    // somewhere in the gap.
    let k = if (lower..=upper).contains(&crossing) {
        crossing
    } else {
        (lower + upper) / 2.0
    };
    let Ok(hinge) = hinge_fit(x_name, xs, ys, k, weighting) else {
        return no_knee(line);
    };
    let hinge_sse = hinge.sse();
    let n = xs.len() as f64;
    let weights: Vec<f64> = ys.iter().map(|&y| weighting.weight(y)).collect();
    let mean =
        ys.iter().zip(&weights).map(|(y, w)| w * y).sum::<f64>() / weights.iter().sum::<f64>();
    let sst: f64 = ys
        .iter()
        .zip(&weights)
        .map(|(y, w)| w * (y - mean).powi(2))
        .sum();
    // Floors keep ln() finite for exact data; a perfect line needs no knee.
    let floor = (sst * 1e-12).max(f64::MIN_POSITIVE);
    let line_sse = line.sse();
    let bic = |sse: f64, params: f64| n * (sse.max(floor) / n).ln() + params * n.ln();
    // Turning up: a jump up at the knee, or the points past it lying above the lower segment's
    // extension on average (a bend up).
    let (jump, bend) = (hinge.coefficients[2], hinge.coefficients[3]);
    let y_span = ys.iter().fold(0.0f64, |a, y| a.max(y.abs()));
    let above: Vec<f64> = xs
        .iter()
        .filter(|&&x| x > k)
        .map(|&x| jump + bend * (x - k))
        .collect();
    let mean_above = above.iter().sum::<f64>() / above.len().max(1) as f64;
    let turns_up = jump > 1e-6 * y_span || mean_above > 1e-6 * y_span;
    if turns_up && line_sse > floor && bic(hinge_sse, 5.0) < bic(line_sse, 2.0) {
        Ok(KneeFit {
            knee: Some(k),
            fit: hinge,
        })
    } else {
        Ok(KneeFit {
            knee: None,
            fit: line,
        })
    }
}

/// The two-segment fit with its breakpoint at `k`.
fn hinge_fit(
    x_name: &str,
    xs: &[f64],
    ys: &[f64],
    k: f64,
    weighting: Weighting,
) -> Result<LinearFit, FitError> {
    let rows: Vec<Vec<f64>> = xs
        .iter()
        .map(|&x| vec![x, if x > k { 1.0 } else { 0.0 }, (x - k).max(0.0)])
        .collect();
    LinearFit::fit_weighted(&[x_name, JUMP, ABOVE_KNEE], &rows, ys, weighting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hinge(x: f64, k: f64, base: f64, s1: f64, s2: f64) -> f64 {
        base + s1 * x + s2 * (x - k).max(0.0)
    }

    #[test]
    fn straight_line_has_no_knee() {
        let xs: Vec<f64> = (1..=8).map(|i| i as f64 * 500.0).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 20.0 + 0.01 * x).collect();
        let fit = fit_knee("x", &xs, &ys).unwrap();
        assert_eq!(fit.knee, None);
        assert!((fit.predict(2000.0).value - 40.0).abs() < 1e-6);
    }

    #[test]
    fn a_step_up_is_a_knee() {
        // Milliseconds below 300 clients, WireGuard's 5 s retry above: a jump, not a bend.
        let xs = [
            50.0, 100.0, 150.0, 250.0, 300.0, 400.0, 600.0, 1000.0, 1500.0,
        ];
        let ys: Vec<f64> = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x < 280.0 {
                    40.0 + i as f64
                } else {
                    5000.0 + 50.0 * (i % 2) as f64
                }
            })
            .collect();
        let fit = fit_knee("x", &xs, &ys).unwrap();
        let k = fit.knee.expect("a knee");
        assert!((250.0..300.0).contains(&k), "{k}");
        assert!(fit.jump() > 4000.0);
        assert!(fit.predict(100.0).value < 100.0);
    }

    #[test]
    fn a_downturn_is_not_a_knee() {
        let xs: Vec<f64> = (1..=8).map(f64::from).collect();
        let ys: Vec<f64> = xs.iter().map(|&x| hinge(x, 4.0, 10.0, 2.0, -1.9)).collect();
        assert_eq!(fit_knee("x", &xs, &ys).unwrap().knee, None);
    }

    #[test]
    fn too_few_points_fit_a_line() {
        let fit = fit_knee("x", &[1.0, 2.0, 3.0], &[1.0, 2.0, 9.0]).unwrap();
        assert_eq!(fit.knee, None);
    }

    proptest! {
        /// A knee planted between sample points is found within one sample spacing of it.
        #[test]
        fn finds_a_planted_knee(
            points in 7usize..16,
            knee_at in 0.3f64..0.7,
            base in 1.0f64..100.0,
            s1 in 0.0f64..1.0,
            turn in 5.0f64..50.0,
            noise in proptest::collection::vec(-1.0f64..1.0, 16),
        ) {
            let spacing = 100.0;
            let xs: Vec<f64> = (0..points).map(|i| spacing * (i + 1) as f64).collect();
            let k = xs[0] + knee_at * (xs[points - 1] - xs[0]);
            // Noise well below the turn's size over one spacing.
            let ys: Vec<f64> = xs
                .iter()
                .zip(&noise)
                .map(|(&x, e)| hinge(x, k, base, s1, turn) + e * turn * spacing * 0.02)
                .collect();
            let fit = fit_knee("x", &xs, &ys).unwrap();
            let found = fit.knee.expect("a knee");
            prop_assert!((found - k).abs() <= spacing, "found {found}, planted {k}");
            let (before, after) = fit.slopes();
            prop_assert!(after.unwrap() > before);
        }
    }
}
