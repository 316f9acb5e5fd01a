//! The kernel shield's work counters (`crate::shield::run`), kept apart from the JIT
//! pipeline's so the shield's own cost under a flood can be read off a scrape: how often
//! it woke, planned its rules, replaced a tc program and read the data plane itself; and
//! the storm guard's state (`crate::shield::storm`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `jitwgd_shield_*_total`.
#[derive(Debug, Default)]
pub struct ShieldMetrics {
    /// Times the shield loop woke: a refused source or a 404 (`Lookup::judged_changed`),
    /// or its tick.
    pub wakeups: Counter,
    /// Times the shield computed its rules (`shield::plan::desired`): wake-ups with
    /// something new to plan (`shield::plan::needs_replan`).
    pub recomputes: Counter,
    /// tc program replacements (one per address family whose rules changed).
    pub replacements: Counter,
    /// Data-plane reads the shield made itself: no read shared with the sweep
    /// (`sweep::PeerReads`) was recent enough.
    pub reads: Counter,
    /// Times the storm guard went up (its rules in force in both programs).
    pub storm_guard_raised: Counter,
    /// 1 while the storm guard's rules are in force.
    pub storm_guard_up: Gauge,
    /// Installed peers' initiations the guard kept from the data plane, answered by the
    /// data plane initiating to the peer instead (not for a peer installed less than
    /// `install::DETOUR_MIN_AGE` before: its own initiation is still under way).
    pub storm_guard_detours: Counter,
}

impl ShieldMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "shield_wakeups",
            "Times the kernel shield loop woke (a refused source, a 404, or its tick)",
            self.wakeups.clone(),
        );
        r.register(
            "shield_recomputes",
            "Times the kernel shield computed its rules (wake-ups with something new to plan)",
            self.recomputes.clone(),
        );
        r.register(
            "shield_replacements",
            "Kernel shield tc program replacements (one per changed address family)",
            self.replacements.clone(),
        );
        r.register(
            "shield_reads",
            "Data-plane peer reads the kernel shield made itself (none shared was recent enough)",
            self.reads.clone(),
        );
        r.register(
            "storm_guard_raised",
            "Times the storm guard went up: every handshake initiation dropped before the data plane while role-inversion initiations wait for the pacer",
            self.storm_guard_raised.clone(),
        );
        r.register(
            "storm_guard_up",
            "1 while the storm guard's rules are in force",
            self.storm_guard_up.clone(),
        );
        r.register(
            "storm_guard_detours",
            "Installed peers' initiations the storm guard kept from the data plane, answered by the data plane initiating to the peer (not for peers installed less than 6 s before)",
            self.storm_guard_detours.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::Metrics;

    #[test]
    fn shield_counters_are_exposed_from_zero() {
        let m = Metrics::new();
        let before = m.encode();
        for name in ["wakeups", "recomputes", "replacements", "reads"] {
            let line = format!("jitwgd_shield_{name}_total 0");
            assert!(before.contains(&line), "{line} missing from {before}");
        }
        m.shield.replacements.inc_by(2);
        assert!(m.encode().contains("jitwgd_shield_replacements_total 2"));
    }
}
