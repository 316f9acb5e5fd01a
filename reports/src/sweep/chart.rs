//! One sweep chart: a figure against the first varied key, one line per combination of the other
//! varied keys, the mean of the repeats with a min–max error bar, and the caller's annotation
//! (fitted curve dashed, knee as a vertical line). A categorical key is drawn at evenly spaced
//! positions labelled with its values.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::fit::FigureAnnotation;
use super::SweepFile;
use crate::charts::{cartesian, color, draw_legend, render, ChartError};
use crate::figures::FigureDef;

/// One point of a series: x, then the mean, min and max over the repeats.
type Mark = (f64, f64, f64, f64);

/// The x axis: the first varied key, numeric or by position.
struct Axis {
    key: String,
    /// Value text by position, for a categorical key; empty for a numeric one.
    categories: Vec<String>,
    /// The values are durations, drawn in seconds.
    seconds: bool,
}

impl Axis {
    fn of(sweep: &SweepFile) -> Option<Axis> {
        let first = sweep.vary.first()?;
        let numeric = sweep
            .points
            .iter()
            .all(|p| matches!(p.x.get(&first.key), Some(Some(_))));
        // Numeric values that are not plain numbers are durations (`30s`), in seconds in `x`.
        let seconds = numeric
            && first.values.iter().any(|v| {
                v.trim()
                    .trim_matches('"')
                    .replace('_', "")
                    .parse::<f64>()
                    .is_err()
            });
        Some(Axis {
            seconds,
            key: first.key.clone(),
            categories: if numeric {
                Vec::new()
            } else {
                first.values.clone()
            },
        })
    }

    fn x(&self, point: &super::Point) -> Option<f64> {
        if self.categories.is_empty() {
            point.x.get(&self.key).copied().flatten()
        } else {
            let text = point.values.get(&self.key)?;
            self.categories
                .iter()
                .position(|c| c == text)
                .map(|i| i as f64)
        }
    }

    /// The axis description: the key, with its unit for durations.
    fn description(&self) -> String {
        if self.seconds {
            format!("{} (s)", self.key)
        } else {
            self.key.clone()
        }
    }

    fn label(&self, x: f64) -> String {
        if self.categories.is_empty() {
            let s = format!("{x:.3}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            let i = x.round();
            if (x - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            self.categories.get(i as usize).cloned().unwrap_or_default()
        }
    }
}

/// The points of `figure`, one series per combination of the other varied keys.
pub(super) fn series(sweep: &SweepFile, figure: &str) -> BTreeMap<String, Vec<Mark>> {
    let mut out: BTreeMap<String, Vec<Mark>> = BTreeMap::new();
    let Some(axis) = Axis::of(sweep) else {
        return out;
    };
    for point in sweep.measured_points() {
        let (Some(x), Some(agg)) = (axis.x(point), point.figures.get(figure)) else {
            continue;
        };
        let name: Vec<String> = sweep
            .vary
            .iter()
            .skip(1)
            .filter_map(|k| Some(format!("{}={}", k.key, point.values.get(&k.key)?)))
            .collect();
        out.entry(name.join(", "))
            .or_default()
            .push((x, agg.mean, agg.min, agg.max));
    }
    for marks in out.values_mut() {
        marks.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The chart of `def` over the sweep as SVG, with how many points it drew; `None` when no point
/// measured the figure (a report leaves such figures out rather than drawing an empty chart).
pub fn figure_chart(
    sweep: &SweepFile,
    def: &FigureDef,
    annotation: Option<&FigureAnnotation>,
) -> Result<Option<(String, usize)>, ChartError> {
    let all = series(sweep, def.name);
    let count: usize = all.values().map(Vec::len).sum();
    let Some(axis) = Axis::of(sweep).filter(|_| count > 0) else {
        return Ok(None);
    };
    let fitted: &[(f64, f64)] = annotation.map_or(&[], |a| a.fitted.as_slice());
    let knee = annotation.and_then(|a| a.knee_x);
    let xs = all
        .values()
        .flatten()
        .map(|m| m.0)
        .chain(fitted.iter().map(|p| p.0))
        .chain(knee);
    let ys = all
        .values()
        .flatten()
        .flat_map(|m| [m.2, m.3])
        .chain(fitted.iter().map(|p| p.1));
    let (x0, x1) = bounds(xs);
    let (y0, y1) = bounds(ys);
    let pad_x = ((x1 - x0) * 0.05).max(if axis.categories.is_empty() {
        x0.abs() * 0.05 + 1e-9
    } else {
        0.5
    });
    let y_lo = y0.min(0.0);
    let y_hi = if y1 > y_lo {
        y1 + (y1 - y_lo) * 0.08
    } else {
        y_lo + 1.0
    };
    let title = format!("{} vs {}", def.label, axis.key);
    let svg = render(&title, |root| {
        let mut chart = cartesian(root, &title, 70, (x0 - pad_x)..(x1 + pad_x), y_lo..y_hi)?;
        let unit = def.unit;
        chart
            .configure_mesh()
            .x_desc(axis.description())
            .y_desc(format!("{} ({})", def.label, unit.label()))
            .x_label_formatter(&|x| axis.label(*x))
            .y_label_formatter(&|y| unit.format(*y))
            .x_labels(if axis.categories.is_empty() {
                10
            } else {
                axis.categories.len()
            })
            .draw()?;
        for (i, (name, marks)) in all.iter().enumerate() {
            let c = color(i);
            let line = marks.iter().map(|m| (m.0, m.1));
            let drawn = chart.draw_series(LineSeries::new(line, c.stroke_width(2)))?;
            let legend = if name.is_empty() {
                "mean of repeats"
            } else {
                name
            };
            drawn.label(legend).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
            chart.draw_series(marks.iter().map(|m| Circle::new((m.0, m.1), 4, c.filled())))?;
            // Error bars: min to max of the repeats, with caps a few pixels wide.
            let cap = (x1 - x0 + 2.0 * pad_x) * 0.006;
            chart.draw_series(marks.iter().filter(|m| m.3 > m.2).flat_map(|m| {
                [
                    PathElement::new(vec![(m.0, m.2), (m.0, m.3)], c.stroke_width(1)),
                    PathElement::new(vec![(m.0 - cap, m.2), (m.0 + cap, m.2)], c.stroke_width(1)),
                    PathElement::new(vec![(m.0 - cap, m.3), (m.0 + cap, m.3)], c.stroke_width(1)),
                ]
            }))?;
        }
        if fitted.len() >= 2 {
            let fit = BLACK.mix(0.7).stroke_width(2);
            let label = annotation
                .and_then(|a| a.r_squared)
                .map_or_else(|| "fit".to_string(), |r2| format!("fit (R² {r2:.3})"));
            chart
                .draw_series(DashedLineSeries::new(fitted.iter().copied(), 6, 4, fit))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], fit));
        }
        if let Some(k) = knee {
            let red = RED.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new([(k, y_lo), (k, y_hi)], 3, 3, red))?
                .label(format!("knee at {}", axis.label(k)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })?;
    Ok(Some((svg, count)))
}

/// Smallest and largest finite value, `(0, 1)` when there is none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::figure;
    use crate::sweep::fit::fallback_annotations;
    use crate::sweep::tests::knee_sweep;

    #[test]
    fn draws_points_error_bars_fit_and_knee() {
        let sweep = knee_sweep();
        let notes = fallback_annotations(&sweep);
        let note = notes.iter().find(|a| a.figure == "setup_p50");
        let def = figure("setup_p50").unwrap();
        let (svg, n) = figure_chart(&sweep, &def, note).unwrap().unwrap();
        assert_eq!(n, 6);
        assert!(svg.contains("knee at"), "{svg}");
        assert!(svg.contains("R²"), "{svg}");
        roxmltree::Document::parse(&svg).expect("well-formed SVG");
    }

    #[test]
    fn a_duration_key_is_drawn_in_seconds() {
        let mut sweep = knee_sweep();
        sweep.vary[0].values = sweep.vary[0]
            .values
            .iter()
            .map(|v| format!("{v}s"))
            .collect();
        let def = figure("daemon_cpu").unwrap();
        let (svg, _) = figure_chart(&sweep, &def, None).unwrap().unwrap();
        assert!(svg.contains("population.0.count (s)"), "{svg}");
    }

    #[test]
    fn an_unmeasured_figure_draws_no_chart() {
        let def = figure("reload_time").unwrap();
        assert!(figure_chart(&knee_sweep(), &def, None).unwrap().is_none());
    }

    #[test]
    fn a_categorical_key_is_drawn_by_position() {
        let mut sweep = knee_sweep();
        for p in &mut sweep.points {
            p.x.insert("population.0.count".into(), None);
        }
        let def = figure("daemon_cpu").unwrap();
        let (svg, n) = figure_chart(&sweep, &def, None).unwrap().unwrap();
        assert_eq!(n, 6);
        assert!(svg.contains("\n600\n</text>"), "category labels: {svg}");
    }
}
