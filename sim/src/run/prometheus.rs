//! The one reader of the daemon's `/metrics` page (Prometheus/OpenMetrics text) for both the
//! driver (lookup counters on the timeline) and the end-to-end tests (named counters). Pure:
//! text in, numbers out. Hand-written because the text format is small and the crates that
//! parse it (e.g. `prometheus-parse`, last released 2023) pull in regex, chrono and itertools.

use std::collections::BTreeMap;

/// The counter whose `outcome` label splits lookups by result.
pub const LOOKUPS_METRIC: &str = "jitwgd_lookups_total";

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape of `/metrics`, parsed. Lines that do not parse are skipped: a half-written
/// scrape must not abort a run.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    text: String,
    series: Vec<Series>,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let series = text.lines().filter_map(parse_line).collect();
        Scrape { text, series }
    }

    /// The page as served.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every parsed sample line.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Sum of the samples named `name` whose labels include all of `labels` (summed over the
    /// other labels); 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// A counter without labels, by its wire name (e.g. `jitwgd_installs_total`).
    pub fn counter(&self, name: &str) -> u64 {
        self.value(name, &[]) as u64
    }

    /// `name`'s samples summed by the value of their `label` (negative and non-finite
    /// values are dropped: counters never are).
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.series.iter().filter(|s| s.name == name) {
            if let Some(key) = s.labels.get(label) {
                if s.value.is_finite() && s.value >= 0.0 {
                    *out.entry(key.clone()).or_insert(0) += s.value as u64;
                }
            }
        }
        out
    }
}

/// Sums `jitwgd_lookups_total{outcome="..."}` samples by outcome.
pub fn lookups_by_outcome(text: &str) -> BTreeMap<String, u64> {
    Scrape::parse(text.to_owned()).by_label(LOOKUPS_METRIC, "outcome")
}

fn parse_line(line: &str) -> Option<Series> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line.get(open..)?.find('}')?;
            (
                line.get(..open)?,
                parse_labels(line.get(open + 1..close)?)?,
                line.get(close + 1..)?,
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, BTreeMap::new(), rest)
        }
    };
    // The value, optionally followed by a timestamp.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Series {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"`; label values in jitwgd's metrics contain neither `,` nor `"`.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
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

    #[test]
    fn finds_counters_with_and_without_labels() {
        let s = Scrape::parse(
            "# HELP jitwgd_installs Peers installed.\n# TYPE jitwgd_installs counter\n\
             jitwgd_installs_total 3\n\
             jitwgd_lookups_total{outcome=\"refused\"} 2\n\
             jitwgd_lookups_total{outcome=\"api_found\"} 5\n# EOF\n"
                .to_string(),
        );
        assert_eq!(s.counter("jitwgd_installs_total"), 3);
        assert_eq!(
            s.value("jitwgd_lookups_total", &[("outcome", "refused")]),
            2.0
        );
        assert_eq!(s.value("jitwgd_lookups_total", &[]), 7.0);
        assert_eq!(s.counter("jitwgd_evictions_total"), 0);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,200}") {
            let _ = lookups_by_outcome(&text);
        }
    }
}
