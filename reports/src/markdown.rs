//! `summary.md`: the verdict and summary table as Markdown, short enough to print into a CI log or a
//! pull-request comment (no charts; those live in `report.html`).

use std::fmt::Write as _;

use crate::api_check::api_accounting;
use crate::figures::Figures;
use crate::schema::Results;
use crate::summary::{compared_figures, comparison_verdict, summary_rows, verdict, GLOSSARY};

/// Escapes text for a Markdown table cell (pipes would split the cell, newlines the row).
fn cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// The Markdown summary of one run.
pub fn render(results: &Results) -> String {
    let figures = Figures::from_results(results);
    let mut out = String::new();
    let title = if results.run.scenario_name.is_empty() {
        "jitwg report".to_string()
    } else {
        format!("jitwg report: {}", results.run.scenario_name)
    };
    let _ = writeln!(out, "# {title}\n\n{}\n", verdict(results, &figures));
    if let Some(banner) = crate::load::banner(results) {
        let _ = writeln!(out, "> **{}**\n", cell(&banner));
    }
    if let Some(check) = api_accounting(results) {
        let mark = if check.mismatch() { "**" } else { "" };
        let _ = writeln!(out, "{mark}{}{mark}\n", cell(&check.describe()));
    }
    if let Some(capture) = &results.capture {
        let _ = writeln!(out, "> {}\n", cell(&capture.describe()));
    }
    out.push_str("| figure | value | name |\n|---|---:|---|\n");
    for row in summary_rows(&figures) {
        let _ = writeln!(
            out,
            "| {} | {} | `{}` |",
            cell(row.label),
            cell(&row.text),
            row.name
        );
    }
    out.push_str(&crate::attack::markdown(results));
    out.push_str(&crate::shards::markdown(&results.run.shards));
    out.push_str("\nDefinitions:\n\n");
    for (term, definition) in GLOSSARY {
        let _ = writeln!(out, "- **{term}**: {}", cell(definition));
    }
    let run = &results.run;
    let _ = writeln!(
        out,
        "\nRun `{}`, seed {}, mode {} / boot {}, backend {}.",
        cell(&run.id),
        run.seed,
        cell(&run.mode),
        cell(&run.boot),
        cell(&run.backend)
    );
    out
}

/// The Markdown comparison of several runs, `runs[0]` being the baseline.
pub fn render_comparison(runs: &[(String, Results)], tolerance: f64) -> String {
    let figures: Vec<Figures> = runs.iter().map(|(_, r)| Figures::from_results(r)).collect();
    let rows = compared_figures(&figures, tolerance);
    let mut out = String::new();
    let labels: Vec<&str> = runs.iter().map(|(l, _)| l.as_str()).collect();
    let _ = writeln!(
        out,
        "# jitwg comparison: {}\n\n{}\n",
        labels.join(" vs "),
        comparison_verdict(runs, &rows, tolerance)
    );
    out.push_str("| figure |");
    let mut rule = String::from("|---|");
    for (i, label) in labels.iter().enumerate() {
        if i == 0 {
            let _ = write!(out, " {} (baseline) |", cell(label));
            rule.push_str("---:|");
        } else {
            let _ = write!(out, " {} | change |", cell(label));
            rule.push_str("---:|---:|");
        }
    }
    let _ = writeln!(out, "\n{rule}");
    for row in &rows {
        let _ = write!(out, "| {} |", cell(row.figure.label));
        for c in &row.cells {
            let _ = write!(out, " {} |", cell(&c.text));
            if let Some(change) = &c.change {
                let mark = match c.verdict {
                    Some(crate::compare::Verdict::Regressed) => " **REGRESSED**",
                    _ => "",
                };
                let _ = write!(out, " {}{mark} |", cell(change));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_count_mismatch_is_flagged_and_older_files_say_nothing() {
        let mut r = Results::new(crate::schema::RunInfo::default());
        r.api.calls_total = 1_000;
        assert!(!render(&r).contains("API co"));
        r.api.sent_by_daemon = Some(800);
        assert!(
            render(&r).contains("**API COUNT MISMATCH"),
            "{}",
            render(&r)
        );
        r.api.sent_by_daemon = Some(1_000);
        assert!(render(&r).contains("API counts agree"));
    }

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
