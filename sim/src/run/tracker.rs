//! Bookkeeping the run loop does while things restart under it: per-process CPU and peak RSS
//! summed over every incarnation of a process, and the recovery figures of a reboot.
//! Pure: observations in, figures out.

use std::collections::{BTreeMap, HashMap, HashSet};

use jitwg_reports::{nearest_rank, ProcessUsage};

#[derive(Debug, Default, Clone, Copy)]
struct Incarnations {
    /// CPU seconds of incarnations that already ended.
    retired_cpu: f64,
    /// Latest CPU seconds of the running incarnation.
    current_cpu: f64,
    peak_rss: u64,
}

/// CPU seconds and peak RSS per process name, across restarts.
#[derive(Debug, Default, Clone)]
pub struct UsageTracker {
    by_name: BTreeMap<String, Incarnations>,
}

impl UsageTracker {
    /// Records the running incarnation's cumulative CPU time and peak RSS.
    pub fn observe(&mut self, name: &str, cpu_seconds: f64, peak_rss_bytes: u64) {
        let e = self.by_name.entry(name.to_owned()).or_default();
        if cpu_seconds.is_finite() && cpu_seconds >= e.current_cpu {
            e.current_cpu = cpu_seconds;
        }
        e.peak_rss = e.peak_rss.max(peak_rss_bytes);
    }

    /// The process was restarted: its last observed CPU time is final, a new count starts.
    pub fn restarted(&mut self, name: &str) {
        if let Some(e) = self.by_name.get_mut(name) {
            e.retired_cpu += e.current_cpu;
            e.current_cpu = 0.0;
        }
    }

    /// One entry per process name, sorted by name.
    pub fn usage(&self) -> Vec<ProcessUsage> {
        self.by_name
            .iter()
            .map(|(name, e)| ProcessUsage {
                name: name.clone(),
                cpu_seconds: e.retired_cpu + e.current_cpu,
                peak_rss_bytes: e.peak_rss,
            })
            .collect()
    }
}

/// Recovery after a reboot, from the echo replies clients with continuous traffic received.
///
/// A client "had a working tunnel just before the reboot" when it got a reply within `window_ms`
/// before `reboot_ms`; it "passes traffic again" at its first reply at or after `back_ms`, when
/// the restarted data plane was up (a reply between the reboot and then can only have come
/// through the old data plane on its way down). Pure: replies in any order, figures out.
#[derive(Debug, Clone)]
pub struct RecoveryWatch {
    reboot_ms: f64,
    back_ms: f64,
    window_ms: f64,
    /// Clients with a reply in the window before the reboot.
    had_tunnel: HashSet<u32>,
    /// Each client's first reply after `back_ms`.
    first_after: HashMap<u32, f64>,
}

/// What [`RecoveryWatch::finish`] measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Clients that had a working tunnel just before the reboot.
    pub clients: u64,
    /// Of those, how many passed traffic again.
    pub recovered: u64,
    /// Reboot until the last of them passed traffic again; `None` when some never did, or
    /// there was no such client (nothing to measure).
    pub all_after_ms: Option<f64>,
    /// Per-client recovery over the clients that recovered (nearest rank).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl RecoveryWatch {
    pub fn new(reboot_ms: f64, back_ms: f64, window_ms: f64) -> Self {
        Self {
            reboot_ms,
            back_ms: back_ms.max(reboot_ms),
            window_ms,
            had_tunnel: HashSet::new(),
            first_after: HashMap::new(),
        }
    }

    /// One echo reply that `client` received at `t_ms`.
    pub fn reply(&mut self, client: u32, t_ms: f64) {
        if t_ms < self.reboot_ms && t_ms >= self.reboot_ms - self.window_ms {
            self.had_tunnel.insert(client);
        } else if t_ms >= self.back_ms {
            let first = self.first_after.entry(client).or_insert(t_ms);
            *first = first.min(t_ms);
        }
    }

    /// Clients that had a working tunnel just before the reboot, and the recovery (ms) of each
    /// of them that passed traffic again: what a shard of a sharded run reports, so a merge
    /// can compute [`Recovery`] over every shard's clients.
    pub fn per_client(&self) -> (u64, Vec<f64>) {
        let per_client = self
            .had_tunnel
            .iter()
            .filter_map(|c| self.first_after.get(c))
            .map(|t| t - self.reboot_ms)
            .collect();
        (self.had_tunnel.len() as u64, per_client)
    }

    pub fn finish(&self) -> Recovery {
        let (clients, per_client) = self.per_client();
        Recovery::from_per_client(clients, per_client)
    }
}

impl Recovery {
    /// The figures from `clients` (those with a working tunnel before the reboot) and the
    /// recovery of each that passed traffic again, in any order.
    pub fn from_per_client(clients: u64, mut per_client: Vec<f64>) -> Recovery {
        per_client.sort_by(f64::total_cmp);
        let recovered = per_client.len() as u64;
        Recovery {
            clients,
            recovered,
            all_after_ms: (clients > 0 && recovered == clients)
                .then(|| per_client.last().copied())
                .flatten(),
            p50_ms: nearest_rank(&per_client, 50.0),
            p99_ms: nearest_rank(&per_client, 99.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_adds_up_over_restarts_and_peak_is_the_max() {
        let mut t = UsageTracker::default();
        t.observe("daemon", 1.0, 100);
        t.observe("daemon", 2.0, 300);
        t.restarted("daemon");
        t.observe("daemon", 0.5, 200);
        t.observe("driver", 3.0, 10);
        let u = t.usage();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].name, "daemon");
        assert_eq!(u[0].cpu_seconds, 2.5);
        assert_eq!(u[0].peak_rss_bytes, 300);
        assert_eq!(u[1].cpu_seconds, 3.0);
    }

    fn watch() -> RecoveryWatch {
        // Reboot at 20 s, data plane back at 20.05 s, 1 s window.
        RecoveryWatch::new(20_000.0, 20_050.0, 1_000.0)
    }

    #[test]
    fn recovery_is_the_last_client_with_a_tunnel_before_the_reboot() {
        let mut w = watch();
        for (client, t) in [
            (0, 19_900.0), // had a tunnel
            (0, 35_000.0), // back after 15 s
            (0, 35_100.0),
            (1, 19_500.0), // had a tunnel
            (1, 21_000.0), // back after 1 s
            (2, 10_000.0), // silent in the window: not counted, even though it returns late
            (2, 60_000.0),
            (3, 25_000.0), // only after the reboot: a newcomer, not counted
        ] {
            w.reply(client, t);
        }
        let r = w.finish();
        assert_eq!(r.clients, 2);
        assert_eq!(r.recovered, 2);
        assert_eq!(r.all_after_ms, Some(15_000.0));
        assert_eq!(r.p50_ms, Some(1_000.0));
        assert_eq!(r.p99_ms, Some(15_000.0));
    }

    #[test]
    fn replies_before_the_data_plane_is_back_are_the_old_one_going_down() {
        let mut w = watch();
        w.reply(0, 19_990.0);
        w.reply(0, 20_010.0); // between reboot and restart: not a recovery
        assert_eq!(w.finish().all_after_ms, None);
        w.reply(0, 20_050.0); // first reply through the new data plane
        assert_eq!(w.finish().all_after_ms, Some(50.0));
    }

    #[test]
    fn one_client_that_never_passes_traffic_again_means_not_measured() {
        let mut w = watch();
        w.reply(0, 19_900.0);
        w.reply(1, 19_900.0);
        w.reply(0, 30_000.0);
        let r = w.finish();
        assert_eq!((r.clients, r.recovered), (2, 1));
        assert_eq!(r.all_after_ms, None);
        // The clients that did recover still give their percentiles.
        assert_eq!(r.p50_ms, Some(10_000.0));
    }

    #[test]
    fn no_client_with_a_tunnel_measures_nothing() {
        let mut w = watch();
        w.reply(0, 18_000.0); // before the window
        w.reply(0, 30_000.0);
        assert_eq!(w.finish(), Recovery::default());
    }

    #[test]
    fn reply_order_does_not_matter_and_the_window_edges_are_exact() {
        let mut w = watch();
        w.reply(0, 40_000.0);
        w.reply(0, 30_000.0);
        w.reply(0, 19_000.0); // exactly the window's start: inside
        w.reply(1, 20_000.0); // exactly at the reboot: not "before" it
        let r = w.finish();
        assert_eq!(r.clients, 1);
        assert_eq!(r.all_after_ms, Some(10_000.0));
    }
}
