//! The sweep's `report.html`: self-contained like a run report (inline CSS and SVG, no script),
//! with the grid, a table of headline figures per point, and one chart per measured figure
//! against the varied parameter, each with the caller's annotation (knee, fit, R², residuals).

use std::fmt::Write as _;

use super::fit::FigureAnnotation;
use super::{figure_chart, Point, SweepFile};
use crate::charts::ChartError;
use crate::figures::{figure, FIGURES};
use crate::html::{close, escape, open, strip_xml_declaration};

/// Figures shown per point in the grid table (all of them are charted below it).
pub(super) const HEADLINE: &[&str] = &[
    "connected_ratio",
    "setup_p50",
    "setup_p99",
    "installed_peers_max",
    "stale_peers_max",
    "api_calls_total",
    "reload_time",
    "daemon_cpu",
    "daemon_rss_peak",
    "dataplane_rss_peak",
];

/// `mean ± stddev` of a point's figure in its unit, or `-`.
pub(super) fn cell(point: &Point, name: &str) -> String {
    let (Some(agg), Some(def)) = (point.figures.get(name), figure(name)) else {
        return "-".into();
    };
    if agg.n > 1 {
        format!(
            "{} ± {}",
            def.unit.format(agg.mean),
            def.unit.format(agg.stddev)
        )
    } else {
        def.unit.format(agg.mean)
    }
}

/// Headline figures some point measured, in [`HEADLINE`] order.
pub(super) fn headline(sweep: &SweepFile) -> Vec<&'static str> {
    HEADLINE
        .iter()
        .copied()
        .filter(|n| sweep.points.iter().any(|p| p.figures.contains_key(*n)))
        .collect()
}

/// The caption line of an annotated chart: method, R², knee.
pub(super) fn describe(note: &FigureAnnotation, unit: crate::figures::Unit) -> String {
    let mut parts = vec![note.method.clone()];
    if let Some(r2) = note.r_squared {
        parts.push(format!("R² = {r2:.3}"));
    }
    match note.knee_x {
        Some(k) => parts.push(format!("knee at x = {}", trim(k))),
        None => parts.push("no knee".into()),
    }
    if !note.residuals.is_empty() {
        let worst = note.residuals.iter().map(|r| r.1.abs()).fold(0.0, f64::max);
        parts.push(format!("largest residual {}", unit.format(worst)));
    }
    parts.join("; ")
}

pub(super) fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn grid(out: &mut String, sweep: &SweepFile) {
    let names = headline(sweep);
    out.push_str("<h2>Grid</h2>\n<table>\n<tr><th>point</th>");
    for k in &sweep.vary {
        let _ = write!(out, "<th><code>{}</code></th>", escape(&k.key));
    }
    out.push_str("<th>repeats</th>");
    for n in &names {
        let label = figure(n).map_or(*n, |d| d.label);
        let _ = write!(out, "<th>{}</th>", escape(label));
    }
    out.push_str("</tr>\n");
    for p in &sweep.points {
        let _ = write!(out, "<tr><td>{}</td>", p.index);
        for k in &sweep.vary {
            let v = p.values.get(&k.key).map_or("-", String::as_str);
            let _ = write!(out, "<td>{}</td>", escape(v));
        }
        let links: Vec<String> = p
            .repeats
            .iter()
            .map(|r| {
                format!(
                    "<a href=\"{}/report.html\">r{}</a>",
                    escape(&r.dir),
                    r.index
                )
            })
            .collect();
        let _ = write!(
            out,
            "<td>{}/{} {}</td>",
            p.repeats.len(),
            sweep.repeat,
            links.join(" ")
        );
        for n in &names {
            let _ = write!(out, "<td>{}</td>", escape(&cell(p, n)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn residuals(out: &mut String, note: &FigureAnnotation, unit: crate::figures::Unit) {
    if note.residuals.is_empty() {
        return;
    }
    out.push_str("<details><summary>residuals</summary>\n<table>\n<tr><th>x</th><th>measured − fitted</th></tr>\n");
    for (x, r) in &note.residuals {
        let sign = if *r < 0.0 { "−" } else { "" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{sign}{}</td></tr>",
            trim(*x),
            escape(&unit.format(r.abs()))
        );
    }
    out.push_str("</table>\n</details>\n");
}

/// The sweep report. `annotations` mark knees and fits per figure (by registry name); figures
/// without one are drawn bare.
pub fn render_html(
    sweep: &SweepFile,
    annotations: &[FigureAnnotation],
) -> Result<String, ChartError> {
    let mut out = String::new();
    open(
        &mut out,
        &format!("jitwg parameter sweep: {}", sweep.scenario_name),
    );
    let complete = sweep.points.iter().filter(|p| p.complete).count();
    let class = if complete == sweep.points.len() {
        "pass"
    } else {
        "fail"
    };
    let _ = writeln!(
        out,
        "<p class=\"verdict {class}\">{complete} of {} points complete ({} repeat{} each); scenario \
         <code>{}</code>, seeds {}..{}{}</p>",
        sweep.points.len(),
        sweep.repeat,
        if sweep.repeat == 1 { "" } else { "s" },
        escape(&sweep.scenario_file),
        sweep.base_seed,
        sweep.base_seed + sweep.repeat.saturating_sub(1) as u64,
        if sweep.fixed.is_empty() {
            String::new()
        } else {
            format!(", with --set {}", escape(&sweep.fixed.join(" ")))
        },
    );
    out.push_str(
        "<p>A <em>parameter sweep</em> runs the scenario once per grid point and repeat, each on a \
         fresh lab. Points are the mean of the repeats; error bars span their min and max.</p>\n",
    );
    grid(&mut out, sweep);
    out.push_str("<h2>Charts</h2>\n");
    for def in FIGURES {
        let note = annotations.iter().find(|a| a.figure == def.name);
        let Some((svg, points)) = figure_chart(sweep, def, note)? else {
            continue;
        };
        let _ = write!(
            out,
            "<figure class=\"sweep-chart\" data-figure=\"{}\" data-points=\"{points}\">\n<figcaption>{} <code>{}</code></figcaption>\n",
            escape(def.name),
            escape(def.label),
            escape(def.name),
        );
        if let Some(note) = note {
            let _ = writeln!(out, "<p>{}</p>", escape(&describe(note, def.unit)));
        }
        let _ = writeln!(out, "{}", strip_xml_declaration(&svg));
        if let Some(note) = note {
            residuals(&mut out, note, def.unit);
        }
        out.push_str("</figure>\n");
    }
    close(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::fit::fallback_annotations;
    use crate::sweep::tests::knee_sweep;

    #[test]
    fn report_has_grid_charts_knee_and_links() {
        let sweep = knee_sweep();
        let html = render_html(&sweep, &fallback_annotations(&sweep)).unwrap();
        assert!(html.contains("6 of 6 points complete"), "{html}");
        assert!(html.contains("points/0/r1/report.html"));
        assert!(html.contains("data-figure=\"setup_p50\" data-points=\"6\""));
        assert!(html.contains("knee at x = 4"), "knee in the caption");
        assert!(html.contains("R² = "));
        assert!(!html.contains("<script"), "self-contained, no script");
        assert!(!html.contains("data-figure=\"reload_time\""), "unmeasured");
    }

    #[test]
    fn renders_without_annotations() {
        let html = render_html(&knee_sweep(), &[]).unwrap();
        assert!(html.contains("sweep-chart"));
        assert!(!html.contains("knee at"));
    }
}
