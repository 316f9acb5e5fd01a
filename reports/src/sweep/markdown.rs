//! The sweep's `summary.md`: the grid with headline figures per point, and each annotated
//! figure's fit and knee, for a CI log or a pull request.

use std::fmt::Write as _;

use super::fit::FigureAnnotation;
use super::html::{cell, describe, headline};
use super::SweepFile;
use crate::figures::figure;

/// The Markdown summary of a sweep.
pub fn render_markdown(sweep: &SweepFile, annotations: &[FigureAnnotation]) -> String {
    let mut out = format!("# jitwg parameter sweep: {}\n\n", sweep.scenario_name);
    let complete = sweep.points.iter().filter(|p| p.complete).count();
    let _ = writeln!(
        out,
        "{complete} of {} points complete, {} repeat(s) each; scenario `{}`, base seed {}.\n",
        sweep.points.len(),
        sweep.repeat,
        sweep.scenario_file,
        sweep.base_seed
    );
    let names = headline(sweep);
    out.push_str("| point |");
    for k in &sweep.vary {
        let _ = write!(out, " `{}` |", k.key);
    }
    out.push_str(" repeats |");
    for n in &names {
        let _ = write!(out, " {} |", figure(n).map_or(*n, |d| d.label));
    }
    out.push_str("\n|---|");
    for _ in 0..sweep.vary.len() + 1 + names.len() {
        out.push_str("---|");
    }
    out.push('\n');
    for p in &sweep.points {
        let _ = write!(out, "| {} |", p.index);
        for k in &sweep.vary {
            let _ = write!(
                out,
                " {} |",
                p.values.get(&k.key).map_or("-", String::as_str)
            );
        }
        let _ = write!(out, " {}/{} |", p.repeats.len(), sweep.repeat);
        for n in &names {
            let _ = write!(out, " {} |", cell(p, n));
        }
        out.push('\n');
    }
    let annotated: Vec<(&FigureAnnotation, crate::figures::FigureDef)> = annotations
        .iter()
        .filter_map(|a| Some((a, figure(&a.figure)?)))
        .collect();
    if !annotated.is_empty() {
        out.push_str("\n## Fits and knees\n\n");
        for (note, def) in annotated {
            let _ = writeln!(
                out,
                "- **{}** (`{}`): {}",
                def.label,
                def.name,
                describe(note, def.unit)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::fit::fallback_annotations;
    use crate::sweep::tests::knee_sweep;

    #[test]
    fn summary_lists_points_and_knees() {
        let sweep = knee_sweep();
        let md = render_markdown(&sweep, &fallback_annotations(&sweep));
        assert!(md.contains("6 of 6 points complete"), "{md}");
        assert!(md.contains("| 5 | 600 | 2/2 |"), "{md}");
        assert!(
            md.contains("**setup p50** (`setup_p50`)") && md.contains("knee at x = 4"),
            "{md}"
        );
    }
}
