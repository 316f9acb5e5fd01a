//! `report.html`: one self-contained file per run or comparison — inline CSS and inline SVG charts, no
//! JavaScript and no external assets, so it can be attached to a CI job or mailed as is.

use std::fmt::Write as _;

use crate::api_check::api_accounting;
use crate::charts::{all_charts, Chart, ChartError, Runs};
use crate::compare::Verdict;
use crate::figures::Figures;
use crate::schema::Results;
use crate::summary::{
    compared_figures, comparison_verdict, passed, summary_rows, verdict, ComparedFigure, GLOSSARY,
};

const STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}\
.verdict{padding:0.8em 1em;border-left:6px solid}.pass{border-color:#2ca02c;background:#eef8ee}\
.fail{border-color:#d62728;background:#fbeeee}.none{border-color:#7f7f7f;background:#f4f4f4}\
.regressed{color:#d62728;font-weight:bold}.improved{color:#2ca02c}\
figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:0.3em}svg{max-width:100%;height:auto}";

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn open(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
}

pub(crate) fn close(out: &mut String) {
    out.push_str("</body>\n</html>\n");
}

fn charts_section(out: &mut String, charts: &[Chart]) {
    out.push_str("<h2>Charts</h2>\n");
    for chart in charts {
        let _ = write!(
            out,
            "<figure>\n<figcaption>{}</figcaption>\n{}\n</figure>\n",
            escape(&chart.title),
            strip_xml_declaration(&chart.svg)
        );
    }
}

/// Inline SVG must not carry an XML declaration.
pub(crate) fn strip_xml_declaration(svg: &str) -> &str {
    let trimmed = svg.trim_start();
    if trimmed.starts_with("<?xml") {
        trimmed
            .find("?>")
            .map_or(trimmed, |end| trimmed[end + 2..].trim_start())
    } else {
        trimmed
    }
}

fn run_section(out: &mut String, label: Option<&str>, results: &Results) {
    let run = &results.run;
    let heading = label.map_or_else(|| "Run".to_string(), |l| format!("Run {l}"));
    let _ = writeln!(out, "<h2>{}</h2>\n<table>", escape(&heading));
    let rows: [(&str, String); 10] = [
        ("run id", run.id.clone()),
        ("scenario", run.scenario_name.clone()),
        ("scenario file", run.scenario_file.clone()),
        ("seed", run.seed.to_string()),
        ("duration", format!("{:.1} s", run.duration_ms / 1000.0)),
        ("mode / boot", format!("{} / {}", run.mode, run.boot)),
        ("backend", run.backend.clone()),
        ("gateway initiates", run.initiate.to_string()),
        (
            "stale threshold",
            format!("{:.0} s", run.stale_threshold_ms / 1000.0),
        ),
        (
            "jitwg / wireguard-go / kernel",
            format!(
                "{} / {} / {} ({} CPUs)",
                run.tool.jitwg_version,
                run.tool.wireguard_go_version.as_deref().unwrap_or("-"),
                run.tool.kernel,
                run.tool.cpus
            ),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&value)
        );
    }
    out.push_str("</table>\n");
}

/// The report of one run.
pub fn render(results: &Results) -> Result<String, ChartError> {
    let figures = Figures::from_results(results);
    let charts = all_charts(&[("run", results)])?;
    let title = if results.run.scenario_name.is_empty() {
        "jitwg report".to_string()
    } else {
        format!("jitwg report: {}", results.run.scenario_name)
    };
    let mut out = String::new();
    open(&mut out, &title);
    let class = match (results.expectations.is_empty(), passed(results)) {
        (true, _) => "none",
        (false, true) => "pass",
        (false, false) => "fail",
    };
    let _ = writeln!(
        out,
        "<p class=\"verdict {class}\">{}</p>",
        escape(&verdict(results, &figures))
    );
    if let Some(banner) = crate::load::banner(results) {
        let _ = writeln!(out, "<p class=\"verdict fail\">{}</p>", escape(&banner));
    }
    if let Some(check) = api_accounting(results) {
        let class = if check.mismatch() { "fail" } else { "none" };
        let _ = writeln!(
            out,
            "<p class=\"verdict {class}\">{}</p>",
            escape(&check.describe())
        );
    }
    if let Some(capture) = &results.capture {
        let _ = writeln!(
            out,
            "<p class=\"verdict none\">{}</p>",
            escape(&capture.describe())
        );
    }
    out.push_str(
        "<h2>Summary</h2>\n<table>\n<tr><th>figure</th><th>value</th><th>name</th></tr>\n",
    );
    for row in summary_rows(&figures) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            escape(row.label),
            escape(&row.text),
            escape(row.name)
        );
    }
    out.push_str("</table>\n");
    attacks_section(&mut out, results);
    shards_section(&mut out, results);
    glossary(&mut out);
    charts_section(&mut out, &charts);
    run_section(&mut out, None, results);
    close(&mut out);
    Ok(out)
}

/// Floods and replays beside the clients' summary (nothing without attackers).
fn attacks_section(out: &mut String, results: &Results) {
    if results.attacks.is_empty() {
        return;
    }
    out.push_str("<h2>Attacks</h2>\n<p>Attackers are not clients: the summary above is the legitimate clients' alone.</p>\n<table>\n<tr>");
    for head in crate::attack::HEADS {
        let _ = write!(out, "<th>{}</th>", escape(head));
    }
    out.push_str("</tr>\n");
    for row in crate::attack::rows(results) {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    let _ = writeln!(
        out,
        "</table>\n<p>{}</p>",
        escape(&crate::attack::drops_line(results))
    );
}

/// Each shard's load generator, for a merged sharded run (nothing otherwise).
fn shards_section(out: &mut String, results: &Results) {
    use crate::shards::{shard_rows, SHARD_HEADS};
    if results.run.shards.is_empty() {
        return;
    }
    out.push_str("<h2>Shards</h2>\n<p>Each shard's own load generator (clock offset: the gateway's clock minus the shard's).</p>\n<table class=\"shards\">\n<tr>");
    for head in SHARD_HEADS {
        let _ = write!(out, "<th>{}</th>", escape(head));
    }
    out.push_str("</tr>\n");
    for row in shard_rows(&results.run.shards) {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn glossary(out: &mut String) {
    out.push_str("<h2>Definitions</h2>\n<dl>\n");
    for (term, definition) in GLOSSARY {
        let _ = writeln!(
            out,
            "<dt>{}</dt><dd>{}</dd>",
            escape(term),
            escape(definition)
        );
    }
    out.push_str("</dl>\n");
}

fn verdict_class(verdict: Option<Verdict>) -> &'static str {
    match verdict {
        Some(Verdict::Regressed) => " class=\"regressed\"",
        Some(Verdict::Improved) => " class=\"improved\"",
        _ => "",
    }
}

fn comparison_table(out: &mut String, labels: &[&str], rows: &[ComparedFigure]) {
    out.push_str("<h2>Figures side by side</h2>\n<table>\n<tr><th>figure</th>");
    for (i, label) in labels.iter().enumerate() {
        let suffix = if i == 0 { " (baseline)" } else { "" };
        let _ = write!(out, "<th>{}{suffix}</th>", escape(label));
        if i > 0 {
            out.push_str("<th>change</th>");
        }
    }
    out.push_str("</tr>\n");
    for row in rows {
        let _ = write!(out, "<tr><td>{}</td>", escape(row.figure.label));
        for cell in &row.cells {
            let _ = write!(out, "<td>{}</td>", escape(&cell.text));
            if let Some(change) = &cell.change {
                let _ = write!(
                    out,
                    "<td{}>{}</td>",
                    verdict_class(cell.verdict),
                    escape(change)
                );
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// The comparison of several runs, `runs[0]` being the baseline: verdict, side-by-side table with
/// changes in %, overlaid charts, and each run's settings.
pub fn render_comparison(runs: &[(String, Results)], tolerance: f64) -> Result<String, ChartError> {
    let figures: Vec<Figures> = runs.iter().map(|(_, r)| Figures::from_results(r)).collect();
    let rows = compared_figures(&figures, tolerance);
    let chart_runs: Vec<(&str, &Results)> = runs.iter().map(|(l, r)| (l.as_str(), r)).collect();
    let charts = all_charts(chart_runs.as_slice() as &Runs<'_>)?;
    let labels: Vec<&str> = runs.iter().map(|(l, _)| l.as_str()).collect();
    let mut out = String::new();
    open(
        &mut out,
        &format!("jitwg comparison: {}", labels.join(" vs ")),
    );
    let regressed = rows.iter().any(|r| {
        r.cells
            .iter()
            .any(|c| c.verdict == Some(Verdict::Regressed))
    });
    let failed = runs.iter().any(|(_, r)| !passed(r));
    let class = if regressed || failed { "fail" } else { "pass" };
    let _ = writeln!(
        out,
        "<p class=\"verdict {class}\">{}</p>",
        escape(&comparison_verdict(runs, &rows, tolerance))
    );
    comparison_table(&mut out, &labels, &rows);
    charts_section(&mut out, &charts);
    for (label, results) in runs {
        run_section(&mut out, Some(label), results);
    }
    close(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn strips_only_a_leading_xml_declaration() {
        assert_eq!(
            strip_xml_declaration("<?xml version=\"1.0\"?>\n<svg/>"),
            "<svg/>"
        );
        assert_eq!(strip_xml_declaration("<svg/>"), "<svg/>");
    }
}
