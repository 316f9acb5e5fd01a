//! What every report format says first, computed once: the verdict on a run's expectations, the
//! summary table's rows, the per-figure comparison of several runs, and the short terminal summary.
//! HTML and Markdown only differ in how they print these.

use crate::compare::{compare, format_change, Verdict};
use crate::figures::{figure, FigureDef, Figures, Unit, FIGURES};
use crate::schema::{ExpectationResult, Results};

/// Relative change a comparison report tolerates before calling a figure improved or regressed.
pub const DEFAULT_TOLERANCE: f64 = 0.10;

/// Figures in the summary table, in order (the list: clients, outcomes, setup latency, API
/// calls, peers, reload, resources).
const SUMMARY_FIGURES: &[&str] = &[
    "clients",
    "connected",
    "failed",
    "connected_ratio",
    "setup_p50",
    "setup_p90",
    "setup_p99",
    "setup_max",
    "setup_from_intent_p99",
    "driver_lag_p99",
    "driver_rx_lag_p99",
    "api_calls_total",
    "api_calls_per_key_max",
    "installed_peers_max",
    "stale_peers_max",
    "stale_peers_final",
    "never_handshaked_max",
    "gateway_udp_drops",
    "reload_time",
    "stored_peers",
    "recovery_time",
    "recovery_p50",
    "recovery_p99",
    "daemon_rss_peak",
    "daemon_cpu",
    "dataplane_rss_peak",
    "dataplane_cpu",
    "driver_rss_peak",
    "driver_cpu",
    "driver_cpu_per_client_ms",
];

/// The definitions behind the figures whose meaning is easy to get wrong, printed under every
/// report's summary table (term, definition).
pub const GLOSSARY: &[(&str, &str)] = &[
    (
        "installed peer",
        "A peer configured on the data plane. Its install time is when it first appeared there:          the first sample that showed it (peers preinstalled or adopted at start count from the          first sample).",
    ),
    (
        "stale peer",
        "An installed peer whose last handshake is older than the stale threshold, or that never          completed one and was installed more than the stale threshold ago. A peer that is          merely new is not stale.",
    ),
    (
        "never-handshaked peers (peak)",
        "The most installed peers at one sample that had never completed a handshake, however          new (peers installed for clients still knocking, or for keys that never come back).",
    ),
    (
        "reload time",
        "From the daemon's start after the reboot to ready (listening and every boot-time peer          installed).",
    ),
    (
        "peers stored at reboot",
        "Rows in the daemon's database when it started again: what a preload boot installs.",
    ),
    (
        "recovery time",
        "From the reboot until every client that had a working tunnel just before it (an echo          reply within 1 s before the reboot) got an echo reply through the tunnel again. Seen          by clients with continuous traffic, never by a client's own return schedule. p50/p99          are over each such client's own recovery. Not measured when no client had a working          tunnel at the reboot or one never passed traffic again.",
    ),
    (
        "gateway UDP drops",
        "UDP datagrams addressed to the gateway that its own kernel dropped because the \
         receiving socket's buffer was full (`RcvbufErrors` of the gateway namespace's \
         /proc/net/snmp, whole run). Neither jitwgd nor the data plane sees them: in a storm \
         they are the data plane reading its socket too slowly, and a dropped handshake \
         response costs its client a 5 s retransmit.",
    ),
];

/// Shown for a figure the run did not measure.
pub const NOT_MEASURED: &str = "not measured";

/// One row of the summary table.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// Human label, e.g. `setup p99`.
    pub label: &'static str,
    /// Registry name, e.g. `setup_p99` (what `[expect]` keys use).
    pub name: &'static str,
    /// Raw value in the figure's base unit; `None` when not measured.
    pub value: Option<f64>,
    /// Formatted value with its unit, or [`NOT_MEASURED`].
    pub text: String,
}

/// The summary table of one run.
pub fn summary_rows(figures: &Figures) -> Vec<SummaryRow> {
    SUMMARY_FIGURES
        .iter()
        .filter_map(|name| figure(name))
        .map(|def| {
            let value = (def.get)(figures);
            SummaryRow {
                label: def.label,
                name: def.name,
                value,
                text: format_value(&def, value),
            }
        })
        .collect()
}

/// A value in its figure's unit, or [`NOT_MEASURED`].
pub fn format_value(def: &FigureDef, value: Option<f64>) -> String {
    value.map_or_else(|| NOT_MEASURED.to_string(), |v| def.unit.format(v))
}

/// The unit of the figure an expectation names; plain numbers for a name this version does not know.
fn unit_of(result: &ExpectationResult) -> Unit {
    figure(&result.figure).map_or(Unit::Count, |d| d.unit)
}

/// `setup_p99 <= 50ms (measured 3.20 ms)`.
fn describe(result: &ExpectationResult) -> String {
    let measured = result
        .measured
        .map_or_else(|| NOT_MEASURED.to_string(), |m| unit_of(result).format(m));
    if result.inconclusive {
        return format!(
            "{} (measured {measured}; INCONCLUSIVE: the load generator saturated)",
            result.expr
        );
    }
    format!("{} (measured {measured})", result.expr)
}

/// The one-paragraph verdict on a run: how many expectations passed, each breach with its measured
/// figure, and the headline numbers. Plain text; each format escapes it itself.
pub fn verdict(results: &Results, figures: &Figures) -> String {
    let run = &results.run;
    let name = if run.scenario_name.is_empty() {
        "this run".to_string()
    } else {
        format!("scenario {:?}", run.scenario_name)
    };
    let headline = headline(figures);
    let expectations = &results.expectations;
    if expectations.is_empty() {
        return format!(
            "NO EXPECTATIONS: {name} set no expectations, so nothing was gated. {headline}"
        );
    }
    let failed: Vec<&ExpectationResult> = expectations.iter().filter(|e| !e.passed).collect();
    let passed: Vec<&ExpectationResult> = expectations.iter().filter(|e| e.passed).collect();
    let list = |items: &[&ExpectationResult]| {
        items
            .iter()
            .map(|e| describe(e))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if failed.is_empty() {
        format!(
            "PASSED: {name} met all {} expectations: {}. {headline}",
            expectations.len(),
            list(&passed)
        )
    } else {
        let mut text = format!(
            "FAILED: {name} breached {} of {} expectations: {}.",
            failed.len(),
            expectations.len(),
            list(&failed)
        );
        if !passed.is_empty() {
            text.push_str(&format!(" Passed: {}.", list(&passed)));
        }
        text.push(' ');
        text.push_str(&headline);
        text
    }
}

/// Whether every expectation of the run passed (a run without expectations passes).
pub fn passed(results: &Results) -> bool {
    results.expectations.iter().all(|e| e.passed)
}

fn headline(f: &Figures) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| NOT_MEASURED.to_string(), |v| Unit::Ms.format(v));
    format!(
        "{} of {} connection attempts connected ({} failed) from {} clients; setup latency p50 {}, p99 {}, max {}.",
        f.connected,
        f.connections,
        f.failed,
        f.clients,
        ms(f.setup_p50_ms),
        ms(f.setup_p99_ms),
        ms(f.setup_max_ms),
    )
}

/// A few lines for the terminal after a run.
pub fn text_summary(results: &Results) -> String {
    let f = Figures::from_results(results);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| Unit::Ms.format(v));
    let count = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let ratio = f
        .connected_ratio
        .map_or_else(|| "-".to_string(), |r| Unit::Ratio.format(r));
    let total = results.expectations.len();
    let breached = results.expectations.iter().filter(|e| !e.passed).count();
    let verdict = if total == 0 {
        "no expectations set".to_string()
    } else if breached == 0 {
        format!("PASSED ({total} of {total} expectations met)")
    } else {
        let names: Vec<String> = results
            .expectations
            .iter()
            .filter(|e| !e.passed)
            .map(describe)
            .collect();
        format!(
            "FAILED ({breached} of {total} breached: {})",
            names.join("; ")
        )
    };
    // Said only when jitwgd's own count was recorded (not in older files).
    let daemon_count = crate::api_check::api_accounting(results).map_or_else(String::new, |c| {
        let agreement = if c.mismatch() {
            format!(
                "MISMATCH: differs by {}, tolerance {}",
                c.difference, c.tolerance
            )
        } else {
            "agrees".to_string()
        };
        format!("; jitwgd sent {} ({agreement})", c.sent_by_daemon)
    });
    let load = results.load.as_ref().map_or_else(String::new, |l| {
        let cpu = l
            .driver_cpu_utilization
            .map_or_else(|| "-".to_string(), |u| Unit::Ratio.format(u));
        let state = if l.saturated {
            format!("SATURATED: {}", l.reasons.join("; "))
        } else {
            "kept up".to_string()
        };
        format!(
            "load gen:   lag p50 {}, p99 {}; receive lag p50 {}, p99 {}; driver CPU {cpu} of its CPUs: {state}\n",
            ms(l.lag_p50_ms),
            ms(l.lag_p99_ms),
            ms(l.rx_lag_p50_ms),
            ms(l.rx_lag_p99_ms)
        )
    });
    let capture = results
        .capture
        .as_ref()
        .map_or_else(String::new, |c| format!("capture:    {}\n", c.describe()));
    let gateway_udp = results.gateway_udp.map_or_else(String::new, |u| {
        format!(
            "gateway:    {} UDP datagrams in, {} dropped with a full receive buffer\n",
            u.in_datagrams, u.rcvbuf_errors
        )
    });
    format!(
        "clients:    {}\n\
         connected:  {} of {} attempts ({ratio}), failed {}\n\
         setup:      p50 {}, p99 {}, max {}\n\
         API calls:  {} total, {} max per key{daemon_count}\n\
         peers:      {} installed (peak), {} stale (peak)\n\
         {load}\
         {gateway_udp}\
         {capture}\
         verdict:    {verdict}\n",
        f.clients,
        f.connected,
        f.connections,
        f.failed,
        ms(f.setup_p50_ms),
        ms(f.setup_p99_ms),
        ms(f.setup_max_ms),
        f.api_calls_total,
        f.api_calls_per_key_max,
        count(f.installed_peers_max),
        count(f.stale_peers_max),
    )
}

/// One run's value of one figure, and its change against the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparedCell {
    pub value: Option<f64>,
    pub text: String,
    /// `None` for the baseline itself.
    pub change: Option<String>,
    /// `None` for the baseline itself.
    pub verdict: Option<Verdict>,
}

/// One figure across all runs of a comparison; `cells[0]` is the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparedFigure {
    pub figure: FigureDef,
    pub cells: Vec<ComparedCell>,
}

/// Every registered figure of every run, side by side, each candidate compared with `figures[0]`.
pub fn compared_figures(figures: &[Figures], tolerance: f64) -> Vec<ComparedFigure> {
    let Some(baseline) = figures.first() else {
        return Vec::new();
    };
    let comparisons: Vec<_> = figures[1..]
        .iter()
        .map(|candidate| compare(baseline, candidate, tolerance))
        .collect();
    FIGURES
        .iter()
        .enumerate()
        .map(|(row, def)| {
            let base = (def.get)(baseline);
            let mut cells = vec![ComparedCell {
                value: base,
                text: format_value(def, base),
                change: None,
                verdict: None,
            }];
            cells.extend(comparisons.iter().map(|c| {
                let r = &c.rows[row];
                ComparedCell {
                    value: r.candidate,
                    text: format_value(def, r.candidate),
                    change: Some(format_change(r.change)),
                    verdict: Some(r.verdict),
                }
            }));
            ComparedFigure {
                figure: *def,
                cells,
            }
        })
        .collect()
}

/// The verdict paragraph of a comparison: each candidate's regressions and improvements against the
/// baseline, then each run's own expectation verdict.
pub fn comparison_verdict(
    runs: &[(String, Results)],
    rows: &[ComparedFigure],
    tolerance: f64,
) -> String {
    let Some((baseline, _)) = runs.first() else {
        return "Nothing to compare.".to_string();
    };
    let mut parts = vec![format!(
        "Compared {} run(s) against the baseline {baseline:?} with a tolerance of {:.0} %.",
        runs.len().saturating_sub(1),
        tolerance * 100.0
    )];
    for (i, (label, _)) in runs.iter().enumerate().skip(1) {
        let names = |wanted: Verdict| {
            rows.iter()
                .filter_map(|r| r.cells.get(i).map(|cell| (r, cell)))
                .filter(|(_, cell)| cell.verdict == Some(wanted))
                .map(|(r, cell)| {
                    let change = cell.change.clone().unwrap_or_default();
                    format!("{} {change}", r.figure.name)
                })
                .collect::<Vec<_>>()
        };
        let regressed = names(Verdict::Regressed);
        let improved = names(Verdict::Improved);
        let mut text = if regressed.is_empty() {
            format!("{label:?}: no regression")
        } else {
            format!(
                "{label:?}: REGRESSED in {} figure(s) ({})",
                regressed.len(),
                regressed.join(", ")
            )
        };
        if improved.is_empty() {
            text.push('.');
        } else {
            text.push_str(&format!(
                "; improved in {} ({}).",
                improved.len(),
                improved.join(", ")
            ));
        }
        parts.push(text);
    }
    for (label, results) in runs {
        let total = results.expectations.len();
        let breached = results.expectations.iter().filter(|e| !e.passed).count();
        parts.push(match (total, breached) {
            (0, _) => format!("{label:?} set no expectations."),
            (_, 0) => format!("{label:?} met all {total} expectations."),
            _ => format!("{label:?} FAILED {breached} of {total} expectations."),
        });
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{CompareOp, RunInfo};

    fn expectation(
        expr: &str,
        figure: &str,
        measured: Option<f64>,
        passed: bool,
    ) -> ExpectationResult {
        ExpectationResult {
            expr: expr.into(),
            figure: figure.into(),
            op: CompareOp::Le,
            threshold: 1.0,
            measured,
            passed,
            inconclusive: false,
        }
    }

    #[test]
    fn text_summary_gives_the_daemon_count_only_when_recorded() {
        let mut r = Results::new(RunInfo::default());
        r.api.calls_total = 1_000;
        assert!(!text_summary(&r).contains("jitwgd sent"));
        r.api.sent_by_daemon = Some(1_000);
        assert!(text_summary(&r).contains("1000 total, 0 max per key; jitwgd sent 1000 (agrees)"));
        r.api.sent_by_daemon = Some(900);
        assert!(text_summary(&r).contains("(MISMATCH: differs by 100, tolerance 10)"));
    }

    #[test]
    fn verdict_names_breaches_with_measured_values() {
        let mut r = Results::new(RunInfo {
            scenario_name: "ci".into(),
            ..RunInfo::default()
        });
        r.expectations = vec![
            expectation("setup_p99 <= 50ms", "setup_p99", Some(75.0), false),
            expectation("reload_time <= 2s", "reload_time", None, false),
            expectation("failed == 0", "failed", Some(0.0), true),
        ];
        let text = verdict(&r, &Figures::from_results(&r));
        assert!(
            text.starts_with("FAILED: scenario \"ci\" breached 2 of 3"),
            "{text}"
        );
        assert!(
            text.contains("setup_p99 <= 50ms (measured 75.0 ms)"),
            "{text}"
        );
        assert!(
            text.contains("reload_time <= 2s (measured not measured)"),
            "{text}"
        );
        assert!(text.contains("Passed: failed == 0 (measured 0)"), "{text}");
        assert!(!passed(&r));
    }

    #[test]
    fn summary_lists_unmeasured_figures_as_such() {
        let r = Results::new(RunInfo::default());
        let rows = summary_rows(&Figures::from_results(&r));
        let reload = rows.iter().find(|r| r.name == "reload_time").unwrap();
        assert_eq!(reload.text, NOT_MEASURED);
        assert_eq!(rows.len(), SUMMARY_FIGURES.len());
    }
}
