//! The cost model's fit quality as a self-contained HTML fragment (inline SVG, inline style, no
//! external assets) for the parameter-sweep report: per model, what was fitted, R², the residual
//! standard error, the coefficients with their 95 % bands, a chart of the points against the
//! fit (the knee marked), and the residuals.

use std::fmt::Write;

use plotters::prelude::*;

use super::calibrate::{Calibration, Fitted, Model};
use super::fit::Weighting;
use super::knee::is_knee_column;
use super::predict::short;
use crate::charts::{cartesian, color, draw_legend, render, ChartError};
use crate::html::escape;

/// The fragment: one `<section>` holding a summary table and one figure per model.
pub fn section(c: &Calibration) -> Result<String, ChartError> {
    let mut out = String::new();
    let _ = write!(
        out,
        "<section class=\"cost-model\"><style>.cost-model table{{border-collapse:collapse;margin:1em 0}}\
.cost-model th,.cost-model td{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
.cost-model th:first-child,.cost-model td:first-child{{text-align:left}}\
.cost-model svg{{max-width:100%;height:auto}}</style>\
<h2>Cost model</h2><p>Fitted by least squares from {} calibration run(s){}; bands are 95 %. \
A model is only as good as its R² and its residuals: read both before its prediction.</p>",
        c.points,
        if c.saturated_points > 0 {
            format!(
                " ({} flagged saturated: their timing figures are suspect)",
                c.saturated_points
            )
        } else {
            String::new()
        }
    );
    out.push_str(
        "<table><tr><th>model</th><th>points</th><th>R²</th><th>residual s.e.</th><th>coefficients (95 %)</th></tr>",
    );
    for m in c.models.values() {
        let fit = m.fitted.linear();
        let _ = write!(
            out,
            "<tr><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.description),
            escape(&m.name),
            fit.residuals.len(),
            fit.r_squared.map_or("—".into(), |r| format!("{r:.3}")),
            match fit.weighting {
                Weighting::Uniform => short(fit.residual_std_error),
                Weighting::Relative =>
                    format!("{:.0} % (relative)", fit.residual_std_error * 100.0),
                Weighting::RelativeAbove { floor } => format!(
                    "{:.0} % (relative above {})",
                    fit.residual_std_error * 100.0,
                    short(floor)
                ),
            },
            escape(&coefficients(m)),
        );
    }
    out.push_str("</table>");
    if !c.unfitted.is_empty() {
        out.push_str("<p>Not fitted:</p><ul>");
        for u in &c.unfitted {
            let _ = write!(out, "<li>{}: {}</li>", escape(&u.name), escape(&u.reason));
        }
        out.push_str("</ul>");
    }
    for m in c.models.values() {
        let _ = write!(
            out,
            "<figure><figcaption>{} — {}</figcaption>{}{}</figure>",
            escape(&m.name),
            escape(&m.description),
            chart(m)?,
            residual_table(m)
        );
    }
    out.push_str("</section>");
    Ok(out)
}

/// `intercept + slope·feature` with each coefficient's band, and the knee if there is one.
pub fn coefficients(m: &Model) -> String {
    let fit = m.fitted.linear();
    let mut parts = vec![format!("intercept {}", short(fit.intercept()))];
    for f in &fit.features {
        if let Some(b) = fit.slope_band(f) {
            parts.push(format!(
                "{} per {f} ({}..{})",
                short(b.value),
                short(b.low),
                short(b.high)
            ));
        }
    }
    if let Fitted::Knee(k) = &m.fitted {
        match k.knee {
            Some(at) => parts.push(format!("knee at {} {}", short(at), k.fit.features[0])),
            None => parts.push("no knee in the data".into()),
        }
    }
    parts.join("; ")
}

fn residual_table(m: &Model) -> String {
    let fit = m.fitted.linear();
    let mut out = String::from("<details><summary>residuals</summary><table><tr>");
    for f in fit.features.iter().filter(|f| !is_knee_column(f)) {
        let _ = write!(out, "<th>{}</th>", escape(f));
    }
    out.push_str("<th>measured</th><th>fitted</th><th>residual</th></tr>");
    for r in &fit.residuals {
        out.push_str("<tr>");
        for (f, x) in fit.features.iter().zip(&r.x) {
            if !is_knee_column(f) {
                let _ = write!(out, "<td>{}</td>", short(*x));
            }
        }
        let _ = write!(
            out,
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            short(r.y),
            short(r.fitted),
            short(r.residual())
        );
    }
    out.push_str("</table></details>");
    out
}

/// One-feature models: points against the feature with the fitted curve (knee marked).
/// Several features: measured against fitted, with the identity line.
fn chart(m: &Model) -> Result<String, ChartError> {
    let fit = m.fitted.linear();
    let single = fit.features.iter().filter(|f| !is_knee_column(f)).count() <= 1;
    let points: Vec<(f64, f64)> = fit
        .residuals
        .iter()
        .map(|r| {
            if single {
                (r.x.first().copied().unwrap_or(0.0), r.y)
            } else {
                (r.fitted, r.y)
            }
        })
        .collect();
    let (x_lo, x_hi) = span(points.iter().map(|p| p.0));
    let curve: Vec<(f64, f64)> = if single && !fit.features.is_empty() {
        (0..=100)
            .map(|i| {
                let x = x_lo + (x_hi - x_lo) * f64::from(i) / 100.0;
                let y = match &m.fitted {
                    Fitted::Knee(k) => k.predict(x).value,
                    Fitted::Linear(f) => f.predict(&[x]).value,
                };
                (x, y)
            })
            .collect()
    } else if single {
        vec![(x_lo, fit.intercept()), (x_hi, fit.intercept())]
    } else {
        vec![(x_lo, x_lo), (x_hi, x_hi)]
    };
    let (y_lo, y_hi) = span(points.iter().chain(&curve).map(|p| p.1));
    let knee = match &m.fitted {
        Fitted::Knee(k) => k.knee,
        Fitted::Linear(_) => None,
    };
    let x_desc = if single {
        fit.features
            .first()
            .cloned()
            .unwrap_or_else(|| "point".into())
    } else {
        "fitted".into()
    };
    let title = format!("{}: measured and fitted", m.name);
    render(&title, |root| {
        let mut chart = cartesian(root, &title, 80, x_lo..x_hi, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .x_desc(x_desc.as_str())
            .y_desc(if m.log_scale {
                format!("ln({} in {})", m.name, m.unit.label())
            } else {
                format!("{} ({})", m.name, m.unit.label())
            })
            .x_label_formatter(&|v| short(*v))
            .y_label_formatter(&|v| short(*v))
            .draw()?;
        let fitted_color = color(1);
        chart
            .draw_series(LineSeries::new(
                curve.iter().copied(),
                fitted_color.stroke_width(2),
            ))?
            .label(if single { "fit" } else { "measured = fitted" })
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], fitted_color));
        let point_color = color(0);
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 4, point_color.filled())),
            )?
            .label("calibration runs")
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, point_color.filled()));
        if let Some(k) = knee {
            let knee_color = color(3);
            chart
                .draw_series(LineSeries::new(
                    [(k, y_lo), (k, y_hi)],
                    knee_color.stroke_width(2),
                ))?
                .label(format!("knee {}", short(k)))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], knee_color));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    })
}

/// The range of `values` with a margin, never empty.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs().max(1e-9) * 0.05);
    (lo - pad, hi + pad)
}
