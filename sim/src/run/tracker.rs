//! Bookkeeping the run loop does while things restart under it: per-process CPU and peak RSS
//! summed over every incarnation of a process, and the post-run reconnect figure of a reboot.
//! Pure: observations in, figures out.

use std::collections::BTreeMap;

use jitwg_reports::{ClientResult, ProcessUsage};

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

/// How long after `daemon_start_ms` every returning client was connected again. A returning
/// client connected before `reboot_start_ms` and attempted again at or after it. `None` when some
/// returning client never connected again, or when no client returned (nothing was measured).
pub fn all_reconnected_after(
    clients: &[ClientResult],
    reboot_start_ms: f64,
    daemon_start_ms: f64,
) -> Option<f64> {
    let mut latest: Option<f64> = None;
    for client in clients {
        let was_up = client
            .connections
            .iter()
            .any(|c| c.started_ms < reboot_start_ms && c.connected());
        let after: Vec<_> = client
            .connections
            .iter()
            .filter(|c| c.started_ms >= reboot_start_ms)
            .collect();
        if !was_up || after.is_empty() {
            continue;
        }
        let up_again = after
            .iter()
            .filter_map(|c| c.setup_latency_ms.map(|l| c.started_ms + l))
            .reduce(f64::min)?;
        latest = Some(latest.map_or(up_again, |l: f64| l.max(up_again)));
    }
    latest.map(|t| (t - daemon_start_ms).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitwg_reports::Connection;

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

    fn conn(started_ms: f64, latency: Option<f64>) -> Connection {
        Connection {
            started_ms,
            setup_latency_ms: latency,
            handshake_attempts: 1,
            ..Connection::default()
        }
    }

    fn client(id: u32, connections: Vec<Connection>) -> ClientResult {
        ClientResult {
            id,
            population: "p".into(),
            connections,
        }
    }

    #[test]
    fn reconnect_time_is_the_last_returning_client() {
        let clients = vec![
            client(0, vec![conn(0.0, Some(2.0)), conn(25_000.0, Some(3.0))]),
            client(1, vec![conn(1.0, Some(2.0)), conn(26_000.0, Some(5.0))]),
            // Arrived after the reboot only: not a returning client.
            client(2, vec![conn(30_000.0, Some(1.0))]),
            // Never came back: not returning either.
            client(3, vec![conn(2.0, Some(1.0))]),
        ];
        assert_eq!(
            all_reconnected_after(&clients, 20_000.0, 20_100.0),
            Some(5_905.0)
        );
    }

    #[test]
    fn a_returning_client_that_never_connects_means_no_figure() {
        let clients = vec![client(0, vec![conn(0.0, Some(2.0)), conn(25_000.0, None)])];
        assert_eq!(all_reconnected_after(&clients, 20_000.0, 20_100.0), None);
        assert_eq!(all_reconnected_after(&[], 20_000.0, 20_100.0), None);
    }
}
