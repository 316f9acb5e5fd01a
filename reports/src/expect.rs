//! The CI gate: a scenario's `[expect]` table parsed into typed thresholds, checked against [`Figures`].
//!
//! Each entry maps a figure name to a string `"<op> <value>"`, e.g. `setup_p99 = "<= 50ms"`. Values are
//! strings on purpose (TOML numbers cannot carry units or operators); a driver that deserializes
//! `[expect]` as `BTreeMap<String, String>` rejects other TOML types itself. Units by figure:
//! - `Ms` figures need a duration unit: `ns`, `us`/`µs`, `ms`, `s`, `m`/`min`, `h` (`50ms`, `1.5s`);
//! - `Bytes` figures take a plain byte count or a size: `B`, `KB`/`MB`/`GB` (10^3), `KiB`/`MiB`/`GiB` (2^10);
//! - `Seconds` figures take plain seconds or a duration;
//! - `Ratio` figures take a plain number (`0.99`) or a percentage (`99%`);
//! - `Count` figures take a plain number.

use std::collections::BTreeMap;

use crate::figures::{figure, figure_names, is_timing, FigureDef, Figures, Unit};
use crate::schema::{CompareOp, ExpectationResult};

/// One parsed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub figure: FigureDef,
    pub op: CompareOp,
    /// In the figure's base unit (ms, ratio, count, bytes, seconds).
    pub threshold: f64,
    /// `figure op value` as written, for messages and the results file.
    pub expr: String,
}

/// What was wrong with an `[expect]` entry; every variant names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpectError {
    #[error("[expect] {key}: unknown figure (known: {known})")]
    UnknownFigure { key: String, known: String },
    #[error("[expect] {key} = {value:?}: missing comparison operator (one of <, <=, >, >=, ==), e.g. \"<= 50ms\"")]
    MissingOperator { key: String, value: String },
    #[error("[expect] {key} = {value:?}: {reason}")]
    BadThreshold {
        key: String,
        value: String,
        reason: String,
    },
}

/// Parses a scenario's `[expect]` table (figure name → `"<op> <value>"`), in key order.
pub fn parse_expectations(
    table: &BTreeMap<String, String>,
) -> Result<Vec<Expectation>, ExpectError> {
    table
        .iter()
        .map(|(key, value)| parse_one(key, value))
        .collect()
}

fn parse_one(key: &str, value: &str) -> Result<Expectation, ExpectError> {
    let figure = figure(key).ok_or_else(|| ExpectError::UnknownFigure {
        key: key.to_string(),
        known: figure_names().collect::<Vec<_>>().join(", "),
    })?;
    let (op, rest) = split_operator(value.trim()).ok_or_else(|| ExpectError::MissingOperator {
        key: key.to_string(),
        value: value.to_string(),
    })?;
    let threshold =
        parse_quantity(rest.trim(), figure.unit).map_err(|reason| ExpectError::BadThreshold {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        })?;
    Ok(Expectation {
        figure,
        op,
        threshold,
        expr: format!("{key} {op} {}", rest.trim()),
    })
}

fn split_operator(text: &str) -> Option<(CompareOp, &str)> {
    // Two-character operators first so "<=" is not read as "<" followed by "=".
    const OPS: [(&str, CompareOp); 5] = [
        ("<=", CompareOp::Le),
        (">=", CompareOp::Ge),
        ("==", CompareOp::Eq),
        ("<", CompareOp::Lt),
        (">", CompareOp::Gt),
    ];
    OPS.iter()
        .find_map(|(sym, op)| text.strip_prefix(sym).map(|rest| (*op, rest)))
}

/// Parses `text` as a value of `unit`, returned in the unit's base (ms, ratio, count, bytes, seconds).
pub fn parse_quantity(text: &str, unit: Unit) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(text.len());
    // An exponent marker directly followed by letters is a unit, not an exponent (none of ours starts
    // with e, but keep the number part strictly numeric anyway).
    let (number, suffix) = text.split_at(split);
    let suffix = suffix.trim();
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    if !number.is_finite() {
        return Err(format!("{text:?} is not a finite number"));
    }
    let scale = match unit {
        Unit::Ms => match duration_ms(suffix) {
            Some(scale) => scale,
            None if suffix.is_empty() => {
                return Err("a duration needs a unit, e.g. 50ms or 2s".to_string())
            }
            None => return Err(format!("unknown duration unit {suffix:?}")),
        },
        Unit::Seconds if suffix.is_empty() => 1.0,
        Unit::Seconds => duration_ms(suffix)
            .map(|ms| ms / 1000.0)
            .ok_or_else(|| format!("unknown duration unit {suffix:?}"))?,
        Unit::Bytes => {
            byte_multiplier(suffix).ok_or_else(|| format!("unknown size unit {suffix:?}"))?
        }
        Unit::Ratio => match suffix {
            "" => 1.0,
            "%" => 0.01,
            _ => {
                return Err(format!(
                    "a ratio is a plain number or a percentage, not {suffix:?}"
                ))
            }
        },
        Unit::Count if suffix.is_empty() => 1.0,
        Unit::Count => return Err(format!("a count is a plain number, not {suffix:?}")),
    };
    Ok(number * scale)
}

/// Milliseconds per `suffix`, for duration units.
fn duration_ms(suffix: &str) -> Option<f64> {
    Some(match suffix {
        "ns" => 1e-6,
        "us" | "µs" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" | "min" => 60e3,
        "h" => 3600e3,
        _ => return None,
    })
}

fn byte_multiplier(suffix: &str) -> Option<f64> {
    Some(match suffix {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// Checks every expectation; a figure the run could not measure is a breach, never a pass.
///
/// On a run whose load generator saturated (`figures.saturated`), a timing goal
/// ([`is_timing`]) is **inconclusive** and fails, whatever it measured: a latency met while the
/// driver was overloaded says nothing, and a CI gate must not pass on it (a false failure asks
/// for a rerun on a bigger machine; a false pass hides a regression). Survival goals
/// (`connected_ratio`, `failed`) and resource goals still count.
pub fn evaluate(expectations: &[Expectation], figures: &Figures) -> Vec<ExpectationResult> {
    expectations
        .iter()
        .map(|e| {
            let measured = (e.figure.get)(figures);
            let inconclusive = figures.saturated && is_timing(&e.figure);
            ExpectationResult {
                expr: e.expr.clone(),
                figure: e.figure.name.to_string(),
                op: e.op,
                threshold: e.threshold,
                measured,
                passed: !inconclusive && measured.is_some_and(|m| e.op.holds(m, e.threshold)),
                inconclusive,
            }
        })
        .collect()
}

/// Whether every result passed (an empty list passes).
pub fn all_passed(results: &[ExpectationResult]) -> bool {
    results.iter().all(|r| r.passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(key: &str, value: &str, op: CompareOp, threshold: f64) {
        let parsed = parse_expectations(&table(&[(key, value)])).unwrap();
        assert_eq!(parsed[0].op, op, "{key} = {value}");
        assert!(
            (parsed[0].threshold - threshold).abs() < 1e-9,
            "{key} = {value}: {}",
            parsed[0].threshold
        );
    }

    #[test]
    fn parses_the_briefed_examples() {
        check("connected_ratio", ">= 1.0", CompareOp::Ge, 1.0);
        check("setup_p99", "<= 50ms", CompareOp::Le, 50.0);
        check("stale_peers_max", "<= 100", CompareOp::Le, 100.0);
        check("api_calls_per_key_max", "<= 1", CompareOp::Le, 1.0);
        check("reload_time", "<= 2s", CompareOp::Le, 2000.0);
        check(
            "daemon_rss_peak",
            "< 200MiB",
            CompareOp::Lt,
            200.0 * 1024.0 * 1024.0,
        );
        check("connected_ratio", "> 99.5%", CompareOp::Gt, 0.995);
        check("daemon_cpu", "< 1.5", CompareOp::Lt, 1.5);
        check("daemon_cpu", "< 500ms", CompareOp::Lt, 0.5);
        check("failed", "==0", CompareOp::Eq, 0.0);
        check("setup_p50", "< 1.5 s", CompareOp::Lt, 1500.0);
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = parse_expectations(&table(&[("setup_p42", "< 1ms")])).unwrap_err();
        assert!(unknown.to_string().contains("setup_p42"));
        for (key, value) in [
            ("setup_p99", "50ms"),
            ("setup_p99", "<= 50"),
            ("setup_p99", "<= 50 parsecs"),
            ("stale_peers_max", "<= many"),
            ("failed", "<= 3 peers"),
            ("daemon_rss_peak", "< 2 bananas"),
        ] {
            let err = parse_expectations(&table(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn timing_goals_on_a_saturated_run_are_inconclusive_survival_goals_count() {
        use crate::schema::{ClientResult, Connection, Results};
        let mut run = Results::new(Default::default());
        run.clients.push(ClientResult {
            id: 1,
            population: "p".into(),
            connections: vec![Connection {
                scheduled_ms: Some(0.0),
                started_ms: 1.0,
                setup_latency_ms: Some(2.0),
                ..Connection::default()
            }],
        });
        let parsed = parse_expectations(&table(&[
            ("setup_p99", "<= 50ms"),
            ("setup_from_intent_p99", "<= 50ms"),
            ("driver_lag_p99", "<= 20ms"),
            ("connected_ratio", ">= 1.0"),
        ]))
        .unwrap();
        let kept_up = evaluate(&parsed, &Figures::from_results(&run));
        assert!(all_passed(&kept_up) && kept_up.iter().all(|r| !r.inconclusive));
        let intent = kept_up.iter().find(|r| r.figure == "setup_from_intent_p99");
        assert_eq!(
            intent.unwrap().measured,
            Some(3.0),
            "intent → session = lag + setup"
        );
        run.load = Some(crate::load::LoadSummary {
            saturated: true,
            reasons: vec!["driver CPU 97 %".into()],
            ..Default::default()
        });
        let saturated = evaluate(&parsed, &Figures::from_results(&run));
        let verdict = |figure: &str| {
            let r = saturated.iter().find(|r| r.figure == figure).unwrap();
            (r.passed, r.inconclusive)
        };
        assert_eq!(verdict("setup_p99"), (false, true));
        assert_eq!(verdict("setup_from_intent_p99"), (false, true));
        assert_eq!(verdict("driver_lag_p99"), (true, false));
        assert_eq!(verdict("connected_ratio"), (true, false));
    }

    #[test]
    fn unmeasured_figure_is_a_breach() {
        let figures = Figures::from_results(&crate::schema::Results::new(Default::default()));
        let parsed =
            parse_expectations(&table(&[("reload_time", "<= 2s"), ("failed", "== 0")])).unwrap();
        let results = evaluate(&parsed, &figures);
        assert_eq!(results.len(), 2);
        assert!(
            !results
                .iter()
                .find(|r| r.figure == "reload_time")
                .unwrap()
                .passed
        );
        assert!(
            results
                .iter()
                .find(|r| r.figure == "failed")
                .unwrap()
                .passed
        );
        assert!(!all_passed(&results));
    }

    proptest! {
        #[test]
        fn parser_never_panics(key in "[a-z_0-9]{0,20}", value in "\\PC{0,20}") {
            let _ = parse_expectations(&table(&[(&key, &value)]));
        }

        #[test]
        fn millisecond_thresholds_round_trip(ms in 0.0f64..1e6) {
            let value = format!("<= {ms}ms");
            let parsed = parse_expectations(&table(&[("setup_p99", &value)])).unwrap();
            prop_assert!((parsed[0].threshold - ms).abs() <= 1e-9 * ms.max(1.0));
        }
    }
}
