//! The run's timeline: the scenario's timed events (reboots, daemon restarts, API outages)
//! fired against the lab, and the samples taken of the gateway while the fleet runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use jitwg_reports::{Event, EventKind, Reload, Sample};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lab::process::{own_usage, Child};
use crate::scenario::{EventAction, Scenario};
use jitwg_reports::ClientResult;

use super::context::{ms, RunContext};
use super::lab::{blocking, Lab, READY_POLL};
use super::probe::ProbeClient;
use super::tracker::{all_reconnected_after, UsageTracker};
use super::{api_count, prometheus, stale, RunError, READY_TIMEOUT};

/// Grace period for SIGTERM before SIGKILL when the daemon restarts.
const DAEMON_GRACE: Duration = Duration::from_secs(5);

/// A scheduled action, in run time.
#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    Reboot,
    DaemonRestart,
    OutageStart { len: Duration },
    OutageEnd,
}

/// The scenario's events as actions, in the order they fire.
pub(super) fn schedule(scenario: &Scenario) -> Vec<(Duration, Action)> {
    let mut out = Vec::new();
    for ev in &scenario.events {
        match ev.action {
            EventAction::Reboot => out.push((ev.at, Action::Reboot)),
            EventAction::DaemonRestart => out.push((ev.at, Action::DaemonRestart)),
            EventAction::ApiOutage { until } => {
                out.push((
                    ev.at,
                    Action::OutageStart {
                        len: until.saturating_sub(ev.at),
                    },
                ));
                out.push((until, Action::OutageEnd));
            }
        }
    }
    out.sort_by_key(|(at, _)| *at);
    out
}

/// The reload after the first reboot or daemon restart.
struct ReloadWatch {
    reboot_start_ms: f64,
    daemon_start_ms: f64,
    /// Resolves to "ready after" once `/ready` answers 200 (or `None` on timeout).
    waiter: Option<JoinHandle<Option<Duration>>>,
    ready_after_ms: Option<f64>,
    peers_at_boot: u64,
}

fn wait_ready(probe: ProbeClient, started: Instant) -> JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        while started.elapsed() < READY_TIMEOUT {
            if probe.is_ready().await {
                return Some(started.elapsed());
            }
            tokio::time::sleep(READY_POLL).await;
        }
        None
    })
}

/// Events and samples so far, and what is needed to take the next ones.
#[derive(Default)]
pub(super) struct Timeline {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    pub usage: UsageTracker,
    /// Last successful scrape, kept when a scrape fails (e.g. during a reboot).
    lookups: BTreeMap<String, u64>,
    /// jitwgd's count of the API requests it sent, over its restarts.
    pub api_sent: api_count::CountAcrossRestarts,
    reload: Option<ReloadWatch>,
    /// Readiness waits of restarts after the first, with their start (ms into the run).
    pending_ready: Vec<(JoinHandle<Option<Duration>>, f64)>,
    /// Set while the data plane does not answer, so the warning is logged once per outage.
    dataplane_down: bool,
}

impl Timeline {
    /// Fires `action` at `t_ms` into the run.
    pub async fn act(
        &mut self,
        action: Action,
        t_ms: f64,
        ctx: &mut RunContext<'_>,
    ) -> Result<(), RunError> {
        let cp = ctx.lab.control();
        match action {
            Action::OutageStart { len } => {
                cp.start_outage(len);
                self.push_event(t_ms, EventKind::ApiOutageStart, format!("for {len:?}"));
            }
            Action::OutageEnd => {
                cp.end_outage();
                self.push_event(t_ms, EventKind::ApiOutageEnd, String::new());
            }
            Action::Reboot | Action::DaemonRestart => {
                self.observe_usage(&ctx.lab);
                // Its last count before it goes (what it sends after this is lost with it).
                if let Ok((200, body)) = ctx.lab.probe().get("/metrics").await {
                    self.api_sent.observe(api_count::requests_by_outcome(&body));
                }
                if matches!(action, Action::Reboot) {
                    self.push_event(
                        t_ms,
                        EventKind::RebootStart,
                        "kill -9 daemon and data plane".into(),
                    );
                    ctx.lab
                        .reboot_dataplane()
                        .map_err(RunError::lab("restarting the data plane after a reboot"))?;
                    self.usage.restarted("dataplane");
                } else {
                    self.push_event(t_ms, EventKind::DaemonRestart, "SIGTERM daemon".into());
                    if let Err(e) = ctx.lab.terminate_daemon(DAEMON_GRACE) {
                        tracing::warn!(error = %e, "stopping jitwgd");
                    }
                }
                self.usage.restarted("daemon");
                self.api_sent.restarted();
                let start = Instant::now();
                ctx.lab.start_daemon()?;
                let waiter = wait_ready(ctx.lab.probe().clone(), start);
                let daemon_start_ms = ms(start.duration_since(ctx.origin));
                if self.reload.is_none() {
                    self.reload = Some(ReloadWatch {
                        reboot_start_ms: t_ms,
                        daemon_start_ms,
                        waiter: Some(waiter),
                        ready_after_ms: None,
                        peers_at_boot: 0,
                    });
                } else {
                    // Later restarts still get a "ready" mark on the timeline.
                    self.pending_ready.push((waiter, daemon_start_ms));
                }
            }
        }
        Ok(())
    }

    fn push_event(&mut self, t_ms: f64, kind: EventKind, detail: String) {
        tracing::info!(t_ms, %kind, %detail, "event");
        self.events.push(Event { t_ms, kind, detail });
    }

    /// Marks restarts whose daemon has become ready since the last call.
    pub async fn check_ready(&mut self, lab: &Lab) {
        let mut done = None;
        if let Some(r) = self.reload.as_mut() {
            if r.waiter.as_ref().is_some_and(JoinHandle::is_finished) {
                if let Some(w) = r.waiter.take() {
                    done = Some((r.daemon_start_ms, w.await.ok().flatten()));
                }
            }
        }
        if let Some((start_ms, ready)) = done {
            let peers = blocking(|| lab.dataplane().peers()).map_or(0, |p| p.len() as u64);
            if let Some(r) = self.reload.as_mut() {
                r.ready_after_ms = ready.map(ms);
                r.peers_at_boot = peers;
            }
            self.ready_event(start_ms, ready);
        }
        let mut still = Vec::new();
        for (h, start_ms) in std::mem::take(&mut self.pending_ready) {
            if h.is_finished() {
                let ready = h.await.ok().flatten();
                self.ready_event(start_ms, ready);
            } else {
                still.push((h, start_ms));
            }
        }
        self.pending_ready = still;
    }

    fn ready_event(&mut self, start_ms: f64, ready: Option<Duration>) {
        match ready {
            Some(after) => self.push_event(
                start_ms + ms(after),
                EventKind::DaemonReady,
                format!("ready {:.1} ms after start", ms(after)),
            ),
            None => tracing::warn!("jitwgd did not become ready after a restart"),
        }
    }

    fn observe_usage(&mut self, lab: &Lab) {
        let procs = [
            ("driver", own_usage()),
            ("daemon", lab.daemon().and_then(Child::usage)),
            ("dataplane", lab.dataplane().usage()),
            ("nats", lab.nats().and_then(Child::usage)),
        ];
        for (name, u) in procs {
            if let Some(u) = u {
                self.usage.observe(name, u.cpu_seconds, u.peak_rss_bytes);
            }
        }
    }

    /// Takes one sample of the gateway at `t_ms` into the run.
    pub async fn sample(&mut self, t_ms: f64, ctx: &RunContext<'_>) {
        self.observe_usage(&ctx.lab);
        let now = SystemTime::now();
        let listing = blocking(|| ctx.lab.dataplane().peers());
        let (installed_peers, stale_peers) = match listing {
            Ok(peers) => {
                self.dataplane_down = false;
                stale::count(
                    peers.iter().map(|p| p.last_handshake),
                    now,
                    ctx.scenario.stale_threshold,
                )
            }
            // Reboots restart the data plane before the next sample, so this is a crash (or
            // someone else killed it): say so once, and count nothing installed.
            Err(e) => {
                if !self.dataplane_down {
                    tracing::warn!(error = %e, "the data plane stopped answering; sampling 0 installed peers");
                }
                self.dataplane_down = true;
                (0, 0)
            }
        };
        if let Ok((200, body)) = ctx.lab.probe().get("/metrics").await {
            self.lookups = prometheus::lookups_by_outcome(&body);
            self.api_sent.observe(api_count::requests_by_outcome(&body));
        }
        let snap = ctx.progress.snapshot();
        self.samples.push(Sample {
            t_ms,
            installed_peers,
            stale_peers,
            connected_clients: snap.connected_now,
            in_flight: snap.in_flight,
            api_calls_total: ctx.lab.control().stats().requests_total,
            lookups: self.lookups.clone(),
            processes: self.usage.usage(),
        });
    }

    /// Closes the timeline: the reload's figures (with an AllReconnected event when every
    /// client came back) and the events in time order.
    pub fn finish(&mut self, clients: &[ClientResult]) -> Option<Reload> {
        let reload = self.reload.take().map(|r| {
            let after = all_reconnected_after(clients, r.reboot_start_ms, r.daemon_start_ms);
            if let Some(after) = after {
                self.events.push(Event {
                    t_ms: r.daemon_start_ms + after,
                    kind: EventKind::AllReconnected,
                    detail: String::new(),
                });
            }
            Reload {
                reboot_at_ms: r.daemon_start_ms,
                ready_after_ms: r.ready_after_ms,
                peers_at_boot: r.peers_at_boot,
                all_reconnected_after_ms: after,
            }
        });
        self.events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        reload
    }
}
