//! Least squares with an intercept and up to a few features, ordinary or weighted by 1/y² (a
//! fit of relative misses), and the numbers that say how far to trust it: R², residuals, the
//! residual standard error, and a 95 % prediction interval for a new point (which widens away
//! from the calibration data).
//!
//! Pure arithmetic on `f64`; the design matrices here have at most four columns, so the normal
//! equations, solved with partial pivoting, are accurate enough and need no linear-algebra crate.

use serde::Serialize;

/// Why a fit could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error("{points} point(s) cannot fit {params} parameter(s) with a residual left to judge it")]
    TooFewPoints { points: usize, params: usize },
    #[error("the features do not vary independently across the points (singular design)")]
    Singular,
    #[error("a value is not a finite number")]
    NotFinite,
    #[error("a fit of relative misses needs every measured value above 0 (or a floor above 0)")]
    NotPositive,
}

/// How much each point's miss counts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Every point alike: misses in the unit of `y` (ordinary least squares).
    #[default]
    Uniform,
    /// Each point by `1/y²`: misses as a fraction of the measured value, so a 20 ms run counts
    /// as much as a 2 s one. The scatter is then taken as proportional to the value: the
    /// residual standard error is a fraction of `y`, R² is the weighted one (relative misses
    /// around the weighted mean) and a prediction band widens with the predicted value.
    Relative,
    /// As [`Weighting::Relative`] above `floor`, and every value below it weighted as the
    /// floor: for a quantity measured in steps (CPU time in the kernel's 10 ms ticks), where
    /// one step's miss on a value of one or two steps is quantisation, not a 50-100 % miss.
    /// Values of 0 are allowed.
    RelativeAbove { floor: f64 },
}

impl Weighting {
    /// How much a point measured at `y` counts.
    pub fn weight(self, y: f64) -> f64 {
        1.0 / self.scale(y).powi(2)
    }

    /// The size a miss at `y` is measured against: 1 (uniform), or the value itself.
    pub fn scale(self, y: f64) -> f64 {
        match self {
            Weighting::Uniform => 1.0,
            Weighting::Relative => y,
            Weighting::RelativeAbove { floor } => y.abs().max(floor),
        }
    }

    /// Whether residuals are fractions of the value (a relative fit, floored or not).
    pub fn is_relative(self) -> bool {
        !matches!(self, Weighting::Uniform)
    }
}

/// One calibration observation as the fit saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Residual {
    /// Feature values, in the order of [`LinearFit::features`].
    pub x: Vec<f64>,
    pub y: f64,
    pub fitted: f64,
}

impl Residual {
    /// Measured minus fitted.
    pub fn residual(&self) -> f64 {
        self.y - self.fitted
    }
}

/// A value with a 95 % band around it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Band {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The band of a sum: values, lows and highs add (a conservative band, as the terms' errors
/// are not assumed to cancel).
impl std::ops::Add for Band {
    type Output = Band;
    fn add(self, other: Band) -> Band {
        Band {
            value: self.value + other.value,
            low: self.low + other.low,
            high: self.high + other.high,
        }
    }
}

impl Band {
    /// A band `half` wide either side of `value`.
    pub fn around(value: f64, half: f64) -> Self {
        Band {
            value,
            low: value - half,
            high: value + half,
        }
    }

    /// The same band with every number multiplied by `k` (`k` may be negative).
    pub fn scale(self, k: f64) -> Self {
        let (a, b) = (self.low * k, self.high * k);
        Band {
            value: self.value * k,
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// Clamps the band below at `floor` (counts, bytes and seconds are never negative).
    pub fn at_least(self, floor: f64) -> Self {
        Band {
            value: self.value.max(floor),
            low: self.low.max(floor),
            high: self.high.max(floor),
        }
    }

    /// Half the band's width.
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }
}

/// A fitted `y = b0 + b1·x1 + …` with its quality.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinearFit {
    pub features: Vec<String>,
    /// Intercept first, then one slope per feature.
    pub coefficients: Vec<f64>,
    /// Standard error of each coefficient (same order).
    pub std_errors: Vec<f64>,
    /// How the misses were weighted; [`Weighting::Relative`] changes what the next two mean.
    pub weighting: Weighting,
    /// `1 - SSE/SST` (both weighted, for a relative fit); `None` when `y` did not vary.
    pub r_squared: Option<f64>,
    /// `sqrt(SSE / (n - p))`: the typical size of a residual (in the unit of `y`, or for a
    /// relative fit as a fraction of `y`).
    pub residual_std_error: f64,
    pub residuals: Vec<Residual>,
    /// Smallest and largest calibration value of each feature: the range predictions are
    /// interpolations in.
    pub ranges: Vec<(f64, f64)>,
    /// `(XᵀWX)⁻¹`, kept for prediction intervals.
    #[serde(skip)]
    unscaled_cov: Vec<Vec<f64>>,
}

impl LinearFit {
    /// Fits `ys` against the rows of `xs` (each row one value per feature name), every point
    /// alike.
    pub fn fit(features: &[&str], xs: &[Vec<f64>], ys: &[f64]) -> Result<Self, FitError> {
        Self::fit_weighted(features, xs, ys, Weighting::Uniform)
    }

    /// Fits `ys` against the rows of `xs`, each point's miss weighted as `weighting` says.
    pub fn fit_weighted(
        features: &[&str],
        xs: &[Vec<f64>],
        ys: &[f64],
        weighting: Weighting,
    ) -> Result<Self, FitError> {
        let n = ys.len();
        let p = features.len() + 1;
        if n < p + 1 || xs.len() != n {
            return Err(FitError::TooFewPoints {
                points: n,
                params: p,
            });
        }
        if ys.iter().chain(xs.iter().flatten()).any(|v| !v.is_finite())
            || xs.iter().any(|row| row.len() != features.len())
        {
            return Err(FitError::NotFinite);
        }
        let floor_ok = match weighting {
            Weighting::Uniform => true,
            Weighting::Relative => ys.iter().all(|&y| y > 0.0),
            Weighting::RelativeAbove { floor } => floor > 0.0 && floor.is_finite(),
        };
        if !floor_ok {
            return Err(FitError::NotPositive);
        }
        let weights: Vec<f64> = ys.iter().map(|&y| weighting.weight(y)).collect();
        let design: Vec<Vec<f64>> = xs
            .iter()
            .map(|row| std::iter::once(1.0).chain(row.iter().copied()).collect())
            .collect();
        // Columns are scaled to unit size before inverting so that a feature in the millions and
        // the intercept do not make a well-posed problem look singular.
        let scale: Vec<f64> = (0..p)
            .map(|j| {
                let max = design.iter().map(|r| r[j].abs()).fold(0.0, f64::max);
                if max > 0.0 {
                    max
                } else {
                    1.0
                }
            })
            .collect();
        let mut xtx = vec![vec![0.0; p]; p];
        let mut xty = vec![0.0; p];
        for ((row, y), w) in design.iter().zip(ys).zip(&weights) {
            for i in 0..p {
                xty[i] += w * row[i] / scale[i] * y;
                for j in 0..p {
                    xtx[i][j] += w * row[i] / scale[i] * row[j] / scale[j];
                }
            }
        }
        let inv = invert(&xtx).ok_or(FitError::Singular)?;
        let coefficients: Vec<f64> = (0..p)
            .map(|i| (0..p).map(|j| inv[i][j] * xty[j]).sum::<f64>() / scale[i])
            .collect();
        let unscaled_cov: Vec<Vec<f64>> = (0..p)
            .map(|i| (0..p).map(|j| inv[i][j] / (scale[i] * scale[j])).collect())
            .collect();
        let residuals: Vec<Residual> = xs
            .iter()
            .zip(ys)
            .map(|(x, &y)| Residual {
                x: x.clone(),
                y,
                fitted: dot(&coefficients, x),
            })
            .collect();
        let sse: f64 = residuals
            .iter()
            .zip(&weights)
            .map(|(r, w)| w * r.residual().powi(2))
            .sum();
        let total_weight: f64 = weights.iter().sum();
        let mean = ys.iter().zip(&weights).map(|(y, w)| w * y).sum::<f64>() / total_weight;
        let sst: f64 = ys
            .iter()
            .zip(&weights)
            .map(|(y, w)| w * (y - mean).powi(2))
            .sum();
        // Below this, y is taken as constant (no R²); a relative fit's sums are dimensionless.
        let constant_below = if weighting.is_relative() {
            f64::EPSILON
        } else {
            f64::EPSILON * mean.abs().max(1.0)
        };
        let residual_std_error = (sse / (n - p) as f64).sqrt();
        let std_errors = (0..p)
            .map(|i| residual_std_error * unscaled_cov[i][i].max(0.0).sqrt())
            .collect();
        let ranges = (0..features.len())
            .map(|j| {
                xs.iter()
                    .map(|r| r[j])
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                        (lo.min(v), hi.max(v))
                    })
            })
            .collect();
        Ok(LinearFit {
            features: features.iter().map(|s| s.to_string()).collect(),
            coefficients,
            std_errors,
            // A constant (no features) explains no variance by construction: no R².
            weighting,
            r_squared: (!features.is_empty() && sst > constant_below).then(|| 1.0 - sse / sst),
            residual_std_error,
            residuals,
            ranges,
            unscaled_cov,
        })
    }

    /// The intercept `b0`.
    pub fn intercept(&self) -> f64 {
        self.coefficients[0]
    }

    /// The slope of `feature`, if the fit has it.
    pub fn slope(&self, feature: &str) -> Option<f64> {
        let i = self.features.iter().position(|f| f == feature)?;
        Some(self.coefficients[i + 1])
    }

    /// The intercept with its 95 % confidence band (`None` without a residual to judge it).
    pub fn intercept_band(&self) -> Option<Band> {
        if self.degrees_of_freedom() == 0 {
            return None;
        }
        let t = t_975(self.degrees_of_freedom());
        Some(Band::around(self.coefficients[0], t * self.std_errors[0]))
    }

    /// The slope of `feature` with its 95 % confidence band.
    pub fn slope_band(&self, feature: &str) -> Option<Band> {
        let i = self.features.iter().position(|f| f == feature)? + 1;
        let t = t_975(self.degrees_of_freedom());
        Some(Band::around(self.coefficients[i], t * self.std_errors[i]))
    }

    /// `n - p`.
    pub fn degrees_of_freedom(&self) -> usize {
        self.residuals.len() - self.coefficients.len()
    }

    /// Weighted sum of squared residuals (the quantity the fit minimised).
    pub fn sse(&self) -> f64 {
        self.residuals
            .iter()
            .map(|r| self.weighting.weight(r.y) * r.residual().powi(2))
            .sum()
    }

    /// The fitted value at `x` with its 95 % prediction interval: where a new measurement at
    /// `x` is expected to fall, counting both the fit's uncertainty and the scatter of points
    /// (for a relative fit, scatter in proportion to the predicted value).
    pub fn predict(&self, x: &[f64]) -> Band {
        let value = dot(&self.coefficients, x);
        let row: Vec<f64> = std::iter::once(1.0).chain(x.iter().copied()).collect();
        let leverage: f64 = (0..row.len())
            .map(|i| {
                (0..row.len())
                    .map(|j| row[i] * self.unscaled_cov[i][j] * row[j])
                    .sum::<f64>()
            })
            .sum();
        // A new point's own scatter, in units of the residual standard error: 1 for a uniform
        // fit, the value squared when the scatter is a fraction of the value.
        let scatter = self.weighting.scale(value).powi(2);
        let half = t_975(self.degrees_of_freedom())
            * self.residual_std_error
            * (scatter + leverage.max(0.0)).sqrt();
        Band::around(value, half)
    }

    /// Names of the features whose value in `x` lies outside the calibration range.
    pub fn extrapolated(&self, x: &[f64]) -> Vec<String> {
        self.features
            .iter()
            .zip(&self.ranges)
            .zip(x)
            .filter(|((_, (lo, hi)), v)| {
                // Within 2 % of the range's span (or of its value, for a point) is not
                // extrapolation: planned and measured quantities differ by that much.
                let slack = ((hi - lo).abs().max(hi.abs()) * 0.02).max(1e-12);
                **v < lo - slack || **v > hi + slack
            })
            .map(|((name, _), _)| name.clone())
            .collect()
    }
}

fn dot(coefficients: &[f64], x: &[f64]) -> f64 {
    coefficients[0]
        + coefficients[1..]
            .iter()
            .zip(x)
            .map(|(b, v)| b * v)
            .sum::<f64>()
}

/// Inverse of a small square matrix by Gauss-Jordan elimination with partial pivoting; `None`
/// when it is singular (relative to its own size).
fn invert(m: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = m.len();
    let norm = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    if norm == 0.0 {
        return None;
    }
    let mut a: Vec<Vec<f64>> = m
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[pivot][col].abs() <= 1e-10 * norm {
            return None;
        }
        a.swap(col, pivot);
        let p = a[col][col];
        for v in a[col].iter_mut() {
            *v /= p;
        }
        for row in 0..n {
            if row != col {
                let factor = a[row][col];
                if factor != 0.0 {
                    let pivot_row = a[col].clone();
                    for (v, p) in a[row].iter_mut().zip(&pivot_row) {
                        *v -= factor * p;
                    }
                }
            }
        }
    }
    Some(a.into_iter().map(|r| r[n..].to_vec()).collect())
}

/// Two-sided 95 % quantile of Student's t with `df` degrees of freedom (table to 30, then the
/// Cornish-Fisher expansion around the normal quantile, within 0.1 % beyond that).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => {
            let z: f64 = 1.959_964;
            let d = df as f64;
            z + (z.powi(3) + z) / (4.0 * d)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * d * d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rows(xs: &[f64]) -> Vec<Vec<f64>> {
        xs.iter().map(|&x| vec![x]).collect()
    }

    #[test]
    fn exact_line_has_r2_one_and_a_tight_band() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        let ys: Vec<f64> = xs.iter().map(|x| 3.0 + 2.0 * x).collect();
        let fit = LinearFit::fit(&["x"], &rows(&xs), &ys).unwrap();
        assert!((fit.intercept() - 3.0).abs() < 1e-9);
        assert!((fit.slope("x").unwrap() - 2.0).abs() < 1e-9);
        assert!((fit.r_squared.unwrap() - 1.0).abs() < 1e-9);
        let band = fit.predict(&[10.0]);
        assert!((band.value - 23.0).abs() < 1e-9);
        assert!(band.half_width() < 1e-6);
        assert_eq!(fit.extrapolated(&[10.0]), vec!["x".to_string()]);
        assert!(fit.extrapolated(&[2.5]).is_empty());
    }

    #[test]
    fn band_widens_away_from_the_data() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0];
        let ys = [2.1, 3.9, 6.2, 7.8, 10.1];
        let fit = LinearFit::fit(&["x"], &rows(&xs), &ys).unwrap();
        let inside = fit.predict(&[3.0]).half_width();
        let outside = fit.predict(&[30.0]).half_width();
        assert!(outside > 2.0 * inside, "{inside} {outside}");
        assert!(fit.r_squared.unwrap() > 0.99);
        assert_eq!(fit.degrees_of_freedom(), 3);
    }

    #[test]
    fn refuses_what_it_cannot_judge() {
        assert!(matches!(
            LinearFit::fit(&["x"], &rows(&[1.0, 2.0]), &[1.0, 2.0]),
            Err(FitError::TooFewPoints { .. })
        ));
        assert_eq!(
            LinearFit::fit(&["x"], &rows(&[1.0, 1.0, 1.0]), &[1.0, 2.0, 3.0]),
            Err(FitError::Singular)
        );
        assert_eq!(
            LinearFit::fit(&["x"], &rows(&[1.0, f64::NAN, 3.0]), &[1.0, 2.0, 3.0]),
            Err(FitError::NotFinite)
        );
        // Two features that are the same column.
        let xs: Vec<Vec<f64>> = (1..6).map(|i| vec![i as f64, 2.0 * i as f64]).collect();
        assert_eq!(
            LinearFit::fit(&["a", "b"], &xs, &[1.0, 2.0, 3.0, 4.0, 5.0]),
            Err(FitError::Singular)
        );
    }

    /// A planted `20 + 1.5·x` with ±10 % multiplicative noise, most points small: the relative
    /// fit recovers both coefficients, and its residual s.e. is the noise's relative size.
    #[test]
    fn relative_fit_recovers_a_line_with_multiplicative_noise() {
        let xs: Vec<f64> = [
            0.0, 0.0, 0.0, 0.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0, 800.0, 1500.0,
        ]
        .to_vec();
        let noise = [
            0.1, -0.08, 0.05, -0.1, 0.07, -0.04, 0.09, -0.06, 0.02, -0.09, 0.08, -0.03,
        ];
        let ys: Vec<f64> = xs
            .iter()
            .zip(noise)
            .map(|(x, e)| (20.0 + 1.5 * x) * (1.0 + e))
            .collect();
        let fit = LinearFit::fit_weighted(&["x"], &rows(&xs), &ys, Weighting::Relative).unwrap();
        assert_eq!(fit.weighting, Weighting::Relative);
        assert!((fit.intercept() / 20.0 - 1.0).abs() < 0.05, "{fit:?}");
        assert!(
            (fit.slope("x").unwrap() / 1.5 - 1.0).abs() < 0.05,
            "{fit:?}"
        );
        assert!(
            (0.03..0.12).contains(&fit.residual_std_error),
            "relative s.e. {}",
            fit.residual_std_error
        );
        let r2 = fit.r_squared.unwrap();
        assert!((0.9..1.0).contains(&r2), "{r2}");
        // The band is a similar fraction of the value at 20 ms and at 2 s, not the same width.
        let small = fit.predict(&[0.0]);
        let large = fit.predict(&[1300.0]);
        let (fs, fl) = (
            small.half_width() / small.value,
            large.half_width() / large.value,
        );
        assert!(fs > 0.05 && fs < 0.4 && fl > 0.05 && fl < 0.4, "{fs} {fl}");
        assert!(large.half_width() > 20.0 * small.half_width());
    }

    /// One point far above the line at large x: the ordinary fit lets it pull the line and its
    /// intercept (the small values' prediction) away; the relative fit keeps the intercept.
    #[test]
    fn a_far_point_does_not_drag_the_relative_intercept() {
        let xs = [0.0, 0.0, 0.0, 0.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
        let ys = [20.0, 21.0, 19.0, 22.0, 95.0, 170.0, 320.0, 770.0, 3000.0];
        let relative =
            LinearFit::fit_weighted(&["x"], &rows(&xs), &ys, Weighting::Relative).unwrap();
        let uniform = LinearFit::fit(&["x"], &rows(&xs), &ys).unwrap();
        assert!(
            (relative.intercept() / 20.5 - 1.0).abs() < 0.1,
            "relative {}",
            relative.intercept()
        );
        assert!(
            (uniform.intercept() / 20.5 - 1.0).abs() > 0.4,
            "uniform {}",
            uniform.intercept()
        );
    }

    #[test]
    fn a_relative_fit_needs_positive_values() {
        assert_eq!(
            LinearFit::fit_weighted(
                &["x"],
                &rows(&[1.0, 2.0, 3.0]),
                &[1.0, 0.0, 3.0],
                Weighting::Relative
            ),
            Err(FitError::NotPositive)
        );
    }

    /// CPU time read in 10 ms ticks: idle runs read 0.00-0.02 s. A floored relative fit takes
    /// the zeros (a plain relative one refuses them), counts every value below the floor as
    /// the floor, and still fits the small storms by their fraction, not by the long runs'
    /// absolute misses: one long run 40 % above the line moves a small run's prediction by
    /// under 5 % (2 %), where the ordinary fit moves it by over 10 % (13 %).
    #[test]
    fn a_floored_relative_fit_takes_zeros_and_keeps_small_runs_on_their_line() {
        let floored = Weighting::RelativeAbove { floor: 0.1 };
        assert_eq!(floored.weight(0.0), floored.weight(0.05));
        assert!((floored.weight(0.1) - 100.0).abs() < 1e-9);
        assert!((floored.weight(1.0) - 1.0).abs() < 1e-12);
        assert_eq!(
            LinearFit::fit_weighted(
                &["x"],
                &rows(&[1.0, 2.0, 3.0]),
                &[0.0, 0.1, 0.2],
                Weighting::RelativeAbove { floor: 0.0 }
            ),
            Err(FitError::NotPositive)
        );
        // y = 0.02 + 0.0005·x, exact but for the largest run, 40 % above the line.
        let xs = [0.0, 0.0, 50.0, 100.0, 200.0, 300.0, 400.0, 6000.0];
        let ys: Vec<f64> = xs
            .iter()
            .map(|x| {
                let y: f64 = 0.02 + 0.0005 * x;
                if *x > 1000.0 {
                    y * 1.4
                } else {
                    (y * 100.0).round() / 100.0
                }
            })
            .collect();
        assert_eq!(ys[0], 0.02);
        let at = |fit: &LinearFit| fit.predict(&[100.0]).value / 0.07 - 1.0;
        let floored_fit = LinearFit::fit_weighted(&["x"], &rows(&xs), &ys, floored).unwrap();
        let uniform_fit = LinearFit::fit(&["x"], &rows(&xs), &ys).unwrap();
        assert!(
            at(&floored_fit).abs() < 0.05,
            "floored {}",
            at(&floored_fit)
        );
        assert!(
            at(&uniform_fit).abs() > 0.10,
            "uniform {}",
            at(&uniform_fit)
        );
        assert_eq!(floored_fit.weighting, floored);
        // The band is a fraction of the value above the floor, the floor's size below it.
        let (small, large) = (floored_fit.predict(&[0.0]), floored_fit.predict(&[4000.0]));
        assert!(large.half_width() > 10.0 * small.half_width());
    }

    #[test]
    fn t_quantiles_match_tables() {
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(10), 2.228);
        assert!((t_975(60) - 2.000).abs() < 0.002);
        assert!((t_975(1000) - 1.962).abs() < 0.002);
        assert!(t_975(0).is_infinite());
    }

    proptest! {
        /// A planted line with bounded noise is recovered: the slope lies within the noise's reach.
        #[test]
        fn recovers_a_planted_line(
            intercept in -1e6f64..1e6,
            slope in -1e3f64..1e3,
            x0 in 0.0f64..1e5,
            step in 1.0f64..1e4,
            noise in proptest::collection::vec(-1.0f64..1.0, 5..30),
        ) {
            let xs: Vec<f64> = (0..noise.len()).map(|i| x0 + step * i as f64).collect();
            let amplitude = 0.01 * step * slope.abs().max(1.0);
            let ys: Vec<f64> = xs
                .iter()
                .zip(&noise)
                .map(|(x, e)| intercept + slope * x + amplitude * e)
                .collect();
            let fit = LinearFit::fit(&["x"], &rows(&xs), &ys).unwrap();
            let got = fit.slope("x").unwrap();
            prop_assert!((got - slope).abs() <= 0.01 * slope.abs().max(1.0) * 2.0 + 1e-6,
                "slope {got} vs {slope}");
            let band = fit.slope_band("x").unwrap();
            prop_assert!(band.low <= got && got <= band.high);
        }

        /// Two independent features are told apart.
        #[test]
        fn recovers_two_slopes(a in -100.0f64..100.0, b in -100.0f64..100.0, c in -1e3f64..1e3) {
            let xs: Vec<Vec<f64>> = (0..12)
                .map(|i| vec![(i % 4) as f64 * 1000.0, (i / 4) as f64 * 7.0 + (i % 3) as f64])
                .collect();
            let ys: Vec<f64> = xs.iter().map(|r| c + a * r[0] + b * r[1]).collect();
            let fit = LinearFit::fit(&["u", "v"], &xs, &ys).unwrap();
            prop_assert!((fit.slope("u").unwrap() - a).abs() < 1e-6 * a.abs().max(1.0));
            prop_assert!((fit.slope("v").unwrap() - b).abs() < 1e-6 * b.abs().max(1.0));
        }
    }
}
