//! jitwgd's own count of the control-plane requests it sent (`jitwgd_api_requests_total`), summed
//! over daemon restarts: each incarnation's counters start again at zero, so the run keeps what
//! earlier incarnations had counted at their last scrape. Pure: scrape text in, counts out.

use std::collections::BTreeMap;

use super::prometheus::Scrape;

/// The counter jitwgd exports, split by `outcome` (`ok`, `not_found`, `error`, `timeout`).
pub const API_REQUESTS_METRIC: &str = "jitwgd_api_requests_total";

/// Sums `jitwgd_api_requests_total{outcome="..."}` samples by outcome (the one parser,
/// `prometheus::Scrape`; lines that do not parse are skipped).
pub fn requests_by_outcome(text: &str) -> BTreeMap<String, u64> {
    Scrape::parse(text.to_owned()).by_label(API_REQUESTS_METRIC, "outcome")
}

/// Per-outcome counters of a process that restarts: what ended incarnations counted, plus the
/// running incarnation's latest scrape.
#[derive(Debug, Default, Clone)]
pub struct CountAcrossRestarts {
    /// Final counts of incarnations that ended (their last scrape).
    retired: BTreeMap<String, u64>,
    /// The running incarnation's latest scrape.
    current: BTreeMap<String, u64>,
    /// Whether any scrape was seen: a run that never scraped measured nothing.
    observed: bool,
}

impl CountAcrossRestarts {
    /// Records a scrape of the running incarnation. A counter lower than at the previous scrape
    /// means the process restarted unseen in between: the previous values become final.
    pub fn observe(&mut self, scrape: BTreeMap<String, u64>) {
        let went_down = scrape
            .iter()
            .any(|(k, v)| self.current.get(k).is_some_and(|old| v < old));
        if went_down {
            self.retire();
        }
        self.current = scrape;
        self.observed = true;
    }

    /// The process was restarted (or killed): its last scrape is final, a new count starts.
    pub fn restarted(&mut self) {
        self.retire();
    }

    fn retire(&mut self) {
        for (k, v) in std::mem::take(&mut self.current) {
            *self.retired.entry(k).or_insert(0) += v;
        }
    }

    /// Counts by outcome over every incarnation.
    pub fn by_outcome(&self) -> BTreeMap<String, u64> {
        let mut all = self.retired.clone();
        for (k, v) in &self.current {
            *all.entry(k.clone()).or_insert(0) += v;
        }
        all
    }

    /// All outcomes over every incarnation; `None` if no scrape ever succeeded.
    pub fn total(&self) -> Option<u64> {
        self.observed
            .then(|| self.by_outcome().values().sum::<u64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_outcomes_and_ignores_other_metrics() {
        let text = "# TYPE jitwgd_api_requests counter\n\
                    jitwgd_api_requests_total{outcome=\"ok\"} 7\n\
                    jitwgd_api_requests_total{outcome=\"timeout\"} 2 1700000000\n\
                    jitwgd_api_requests_total_created{outcome=\"ok\"} 1.7e9\n\
                    jitwgd_lookups_total{outcome=\"api_found\"} 5\n\
                    jitwgd_api_requests_total{outcome=\"error\"} nope\n";
        assert_eq!(
            requests_by_outcome(text),
            scrape(&[("ok", 7), ("timeout", 2)])
        );
    }

    #[test]
    fn nothing_scraped_is_not_measured() {
        let c = CountAcrossRestarts::default();
        assert_eq!(c.total(), None);
        let mut c = c;
        c.observe(BTreeMap::new());
        assert_eq!(c.total(), Some(0));
    }

    #[test]
    fn known_restarts_keep_the_last_scrape_of_each_incarnation() {
        let mut c = CountAcrossRestarts::default();
        c.observe(scrape(&[("ok", 3), ("timeout", 1)]));
        c.observe(scrape(&[("ok", 10), ("timeout", 4)]));
        c.restarted();
        // The new incarnation passes the old values before its first scrape: still summed.
        c.observe(scrape(&[("ok", 12), ("timeout", 0)]));
        assert_eq!(c.total(), Some(26));
        assert_eq!(c.by_outcome(), scrape(&[("ok", 22), ("timeout", 4)]));
    }

    #[test]
    fn a_counter_going_down_is_an_unseen_restart() {
        let mut c = CountAcrossRestarts::default();
        c.observe(scrape(&[("ok", 5), ("error", 2)]));
        c.observe(scrape(&[("ok", 1), ("error", 2)]));
        c.observe(scrape(&[("ok", 4), ("error", 3)]));
        assert_eq!(c.by_outcome(), scrape(&[("ok", 9), ("error", 5)]));
        // The new incarnation keeps counting on top of the retired one.
        c.observe(scrape(&[("ok", 6), ("error", 3)]));
        assert_eq!(c.total(), Some(16));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(text in ".{0,200}") {
            let _ = requests_by_outcome(&text);
        }

        #[test]
        fn total_is_the_sum_of_every_incarnations_last_count(
            incarnations in proptest::collection::vec(proptest::collection::vec(0u64..50, 1..6), 1..6)
        ) {
            let mut c = CountAcrossRestarts::default();
            let mut expected = 0;
            for steps in &incarnations {
                let mut value = 0;
                for step in steps {
                    value += step;
                    c.observe(scrape(&[("ok", value)]));
                }
                expected += value;
                c.restarted();
            }
            proptest::prop_assert_eq!(c.total(), Some(expected));
        }
    }
}
