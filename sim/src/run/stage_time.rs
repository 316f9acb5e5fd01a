//! jitwgd's per-stage time (`jitwgd_stage_seconds{stage=...}`, a histogram) and CPU
//! (`jitwgd_stage_cpu_seconds_total{stage=...}`) read from a scrape, as counters the driver sums over daemon restarts (`api_count::CountAcrossRestarts`), and
//! turned into the results' `stage_time`. Pure: scrape in, numbers out.

use std::collections::BTreeMap;

use jitwg_reports::StageTime;

use super::prometheus::Scrape;

/// The histogram jitwgd exports, one series per `stage`.
pub const STAGE_SECONDS_METRIC: &str = "jitwgd_stage_seconds";

/// The CPU counter jitwgd exports for the stages that run on one thread.
pub const STAGE_CPU_METRIC: &str = "jitwgd_stage_cpu_seconds_total";

/// Suffixes of the counter keys: a stage's summed time in microseconds (integers, so the
/// restart-summing counter can hold them) and its observation count.
const MICROS: &str = "_us";
const COUNT: &str = "_count";
const CPU_MICROS: &str = "_cpu_us";

/// `{"identify_us": .., "identify_count": .., ...}` for every stage the scrape has; empty when
/// the daemon does not export the histogram.
pub fn counters(scrape: &Scrape) -> BTreeMap<String, u64> {
    let sums = scrape.series().iter().filter_map(|s| {
        let stage = s.labels.get("stage")?;
        let kind = if s.name == STAGE_CPU_METRIC {
            CPU_MICROS
        } else {
            match s.name.strip_prefix(STAGE_SECONDS_METRIC)? {
                "_sum" => MICROS,
                "_count" => COUNT,
                _ => return None,
            }
        };
        let micros = if kind == COUNT { 1.0 } else { 1e6 };
        let value = (s.value * micros).round();
        (value.is_finite() && value >= 0.0).then(|| (format!("{stage}{kind}"), value as u64))
    });
    let mut out = BTreeMap::new();
    for (key, value) in sums {
        *out.entry(key).or_insert(0) += value;
    }
    out
}

/// The counters back into seconds and counts per stage.
pub fn stage_time(counters: &BTreeMap<String, u64>) -> BTreeMap<String, StageTime> {
    let mut out: BTreeMap<String, StageTime> = BTreeMap::new();
    for (key, &value) in counters {
        // `_cpu_us` first: it also ends in `_us`.
        if let Some(stage) = key.strip_suffix(CPU_MICROS) {
            out.entry(stage.to_owned()).or_default().cpu_seconds = Some(value as f64 / 1e6);
        } else if let Some(stage) = key.strip_suffix(MICROS) {
            out.entry(stage.to_owned()).or_default().seconds = value as f64 / 1e6;
        } else if let Some(stage) = key.strip_suffix(COUNT) {
            out.entry(stage.to_owned()).or_default().count = value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE jitwgd_stage_seconds histogram\n\
        jitwgd_stage_seconds_sum{stage=\"identify\"} 0.0125\n\
        jitwgd_stage_seconds_count{stage=\"identify\"} 250\n\
        jitwgd_stage_seconds_bucket{le=\"0.001\",stage=\"identify\"} 250\n\
        jitwgd_stage_seconds_sum{stage=\"install\"} 1.5\n\
        jitwgd_stage_seconds_count{stage=\"install\"} 3\n\
        jitwgd_stage_cpu_seconds_total{stage=\"identify\"} 0.0075\n\
        jitwgd_installs_total 3\n";

    #[test]
    fn reads_sum_and_count_per_stage_and_nothing_else() {
        let c = counters(&Scrape::parse(PAGE.to_owned()));
        assert_eq!(c.get("identify_us"), Some(&12_500));
        assert_eq!(c.get("identify_count"), Some(&250));
        assert_eq!(c.get("install_us"), Some(&1_500_000));
        assert_eq!(c.get("identify_cpu_us"), Some(&7_500));
        assert_eq!(c.len(), 5, "{c:?}");
        let t = stage_time(&c);
        assert_eq!(
            t.get("identify"),
            Some(&StageTime {
                seconds: 0.0125,
                count: 250,
                cpu_seconds: Some(0.0075),
            })
        );
        assert_eq!(t.get("install").map(|s| s.count), Some(3));
        assert_eq!(t.get("install").and_then(|s| s.cpu_seconds), None);
        assert!(!t.contains_key("lookup"));
    }

    #[test]
    fn a_daemon_without_the_histogram_measures_nothing() {
        let c = counters(&Scrape::parse("jitwgd_installs_total 3\n".to_owned()));
        assert!(c.is_empty());
        assert!(stage_time(&c).is_empty());
    }
}
