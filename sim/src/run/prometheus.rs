//! Reads the daemon's lookup counters out of its `/metrics` page (Prometheus
//! text format). Pure: text in, counts out; only the counter we chart is parsed.

use std::collections::BTreeMap;

/// The counter whose `outcome` label splits lookups by result.
pub const LOOKUPS_METRIC: &str = "jitwgd_lookups_total";

/// Sums `jitwgd_lookups_total{outcome="..."}` samples by outcome. Lines that do
/// not parse are skipped: a half-written scrape must not abort a run.
pub fn lookups_by_outcome(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(LOOKUPS_METRIC) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(outcome) = label(labels, "outcome") else {
            continue;
        };
        // Value, optionally followed by a timestamp.
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if value.is_finite() && value >= 0.0 {
            *out.entry(outcome.to_owned()).or_insert(0) += value as u64;
        }
    }
    out
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_outcome_and_ignores_other_metrics() {
        let text = "# HELP jitwgd_lookups_total Lookups.\n\
                    # TYPE jitwgd_lookups_total counter\n\
                    jitwgd_lookups_total{outcome=\"cache_hit\"} 3\n\
                    jitwgd_lookups_total{outcome=\"api_found\",source=\"x\"} 5 1700000000\n\
                    jitwgd_lookups_total_created{outcome=\"api_found\"} 1.7e9\n\
                    jitwgd_installs_total 9\n\
                    jitwgd_lookups_total{outcome=\"broken\"} nope\n";
        let m = lookups_by_outcome(text);
        assert_eq!(m.get("cache_hit"), Some(&3));
        assert_eq!(m.get("api_found"), Some(&5));
        assert_eq!(m.len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,200}") {
            let _ = lookups_by_outcome(&text);
        }
    }
}
