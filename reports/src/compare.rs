//! Baseline-versus-candidate comparison of two runs' figures, aware of which direction is worse, so CI
//! can fail on a regression beyond a tolerance.

use std::fmt;

use crate::figures::{Better, FigureDef, Figures, FIGURES};

/// How one figure moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Better by more than the tolerance.
    Improved,
    /// Within the tolerance either way (or both unmeasured).
    Unchanged,
    /// Worse by more than the tolerance, or measured in the baseline and lost in the candidate.
    Regressed,
    /// Measured only in the candidate: nothing to compare with.
    New,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Improved => "improved",
            Verdict::Unchanged => "ok",
            Verdict::Regressed => "REGRESSED",
            Verdict::New => "new",
        })
    }
}

/// One figure side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonRow {
    pub figure: FigureDef,
    pub baseline: Option<f64>,
    pub candidate: Option<f64>,
    /// `(candidate - baseline) / |baseline|`; infinite when the baseline is 0 and the candidate is not.
    pub change: Option<f64>,
    pub verdict: Verdict,
}

/// Every registered figure of two runs compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Relative change tolerated before a figure counts as moved (0.10 = 10 %).
    pub tolerance: f64,
    pub rows: Vec<ComparisonRow>,
}

impl Comparison {
    /// The rows that got worse beyond the tolerance; the driver exits non-zero when there are any.
    pub fn regressions(&self) -> Vec<&ComparisonRow> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regressed)
            .collect()
    }
}

/// Relative change of `candidate` against `baseline`.
pub fn relative_change(baseline: f64, candidate: f64) -> f64 {
    if baseline == candidate {
        0.0
    } else if baseline == 0.0 {
        f64::INFINITY.copysign(candidate)
    } else {
        (candidate - baseline) / baseline.abs()
    }
}

/// Compares every registered figure; `tolerance` is relative (0.10 allows ±10 %).
pub fn compare(baseline: &Figures, candidate: &Figures, tolerance: f64) -> Comparison {
    let rows = FIGURES
        .iter()
        .map(|def| {
            let b = (def.get)(baseline);
            let c = (def.get)(candidate);
            let change = b.zip(c).map(|(b, c)| relative_change(b, c));
            let verdict = match (b, c, change) {
                (Some(_), Some(_), Some(change)) => judge(def.better, change, tolerance),
                (Some(_), None, _) => Verdict::Regressed,
                (None, Some(_), _) => Verdict::New,
                _ => Verdict::Unchanged,
            };
            ComparisonRow {
                figure: *def,
                baseline: b,
                candidate: c,
                change,
                verdict,
            }
        })
        .collect();
    Comparison { tolerance, rows }
}

fn judge(better: Better, change: f64, tolerance: f64) -> Verdict {
    // Positive `gain` means the figure moved in its better direction.
    let gain = match better {
        Better::Lower => -change,
        Better::Higher => change,
    };
    if gain > tolerance {
        Verdict::Improved
    } else if gain < -tolerance {
        Verdict::Regressed
    } else {
        Verdict::Unchanged
    }
}

/// Formats a relative change as a signed percentage (`+12.5 %`, `n/a`).
pub fn format_change(change: Option<f64>) -> String {
    match change {
        None => "n/a".to_string(),
        Some(c) if c.is_infinite() => (if c > 0.0 { "+inf" } else { "-inf" }).to_string(),
        Some(c) => format!("{:+.1} %", c * 100.0),
    }
}

fn format_value(def: &FigureDef, value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| def.unit.format(v))
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.figure.name.to_string(),
                    format_value(&r.figure, r.baseline),
                    format_value(&r.figure, r.candidate),
                    format_change(r.change),
                    r.verdict.to_string(),
                ]
            })
            .collect();
        let header = ["figure", "baseline", "candidate", "change", "verdict"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&cells) {
            writeln!(
                f,
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3],
            )?;
        }
        let regressions = self.regressions().len();
        write!(
            f,
            "{regressions} regression(s) beyond {:.0} % tolerance",
            self.tolerance * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_decides_the_verdict() {
        assert_eq!(judge(Better::Lower, 0.2, 0.1), Verdict::Regressed);
        assert_eq!(judge(Better::Lower, -0.2, 0.1), Verdict::Improved);
        assert_eq!(judge(Better::Higher, -0.2, 0.1), Verdict::Regressed);
        assert_eq!(judge(Better::Higher, 0.05, 0.1), Verdict::Unchanged);
        assert_eq!(judge(Better::Lower, f64::INFINITY, 0.1), Verdict::Regressed);
    }

    #[test]
    fn relative_change_handles_zero_baseline() {
        assert_eq!(relative_change(0.0, 0.0), 0.0);
        assert_eq!(relative_change(0.0, 3.0), f64::INFINITY);
        assert_eq!(relative_change(10.0, 12.5), 0.25);
        assert_eq!(format_change(Some(0.25)), "+25.0 %");
        assert_eq!(format_change(Some(f64::INFINITY)), "+inf");
    }
}
