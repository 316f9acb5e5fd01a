//! The run's timeline: the scenario's timed events (reboots, daemon restarts, API outages)
//! fired against the lab, and the samples taken of the gateway while the fleet runs.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, SystemTime};

use jitwg_reports::{Event, EventKind, GatewayUdp, Reload, Sample, RECOVERY_WINDOW_MS};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::context::{ms, RunContext};
use super::lab::{blocking, Lab, READY_POLL};
use super::probe::ProbeClient;
use super::stale::StaleTracker;
use super::tracker::{RecoveryWatch, UsageTracker};
use super::{api_count, prometheus, stage_time, stale, RunError, READY_TIMEOUT};
use crate::lab::process::{namespace_udp, own_usage, Child};
use crate::scenario::{EventAction, Scenario};

/// Grace period for SIGTERM before SIGKILL when the daemon restarts.
const DAEMON_GRACE: Duration = Duration::from_secs(5);

/// A scheduled action, in run time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    Reboot,
    DaemonRestart,
    DaemonKill,
    OutageStart { len: Duration },
    OutageEnd,
}

/// The scenario's events as actions, in the order they fire.
pub(crate) fn schedule(scenario: &Scenario) -> Vec<(Duration, Action)> {
    let mut out = Vec::new();
    for ev in &scenario.events {
        match ev.action {
            EventAction::Reboot => out.push((ev.at, Action::Reboot)),
            EventAction::DaemonRestart => out.push((ev.at, Action::DaemonRestart)),
            EventAction::DaemonKill => out.push((ev.at, Action::DaemonKill)),
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

/// How often a run's loop wakes up: events fire with this resolution.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// What a run's loop has left to do on the timeline: the scenario's events still to fire and
/// when the next sample is due, woken every [`TICK`]. `jitwg run` and `jitwg gateway` both step
/// it, so a sharded run's gateway fires events and samples exactly as a single-machine run.
pub(crate) struct Clock {
    pending: std::iter::Peekable<std::vec::IntoIter<(Duration, Action)>>,
    next_sample: Duration,
    tick: tokio::time::Interval,
}

impl Clock {
    /// The scenario's schedule, with the first sample due at once.
    pub fn new(scenario: &Scenario) -> Self {
        let pending = schedule(scenario).into_iter().peekable();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self {
            pending,
            next_sample: Duration::ZERO,
            tick,
        }
    }

    /// Waits for the next tick; `false` when `interrupt` fired first.
    pub async fn wait(&mut self, interrupt: &CancellationToken) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = interrupt.cancelled() => false,
        }
    }

    /// One tick at `elapsed` into the run: fires every event that is due, in order (calling
    /// `fired` after each), checks the daemon's readiness, and samples when a sample is due.
    /// Returns whether it sampled.
    pub async fn step(
        &mut self,
        elapsed: Duration,
        timeline: &mut Timeline,
        ctx: &mut RunContext<'_>,
        mut fired: impl FnMut(&Timeline),
    ) -> Result<bool, RunError> {
        while let Some(&(at, action)) = self.pending.peek() {
            if at > elapsed {
                break;
            }
            self.pending.next();
            let t_ms = ctx.now_ms();
            timeline.act(action, t_ms, ctx).await?;
            fired(timeline);
        }
        timeline.check_ready(&ctx.lab).await;
        if elapsed < self.next_sample {
            return Ok(false);
        }
        timeline.sample(ctx).await;
        self.next_sample += ctx.scenario.sample_every;
        Ok(true)
    }
}

/// The reload after the first reboot or daemon restart.
struct ReloadWatch {
    /// When the daemon (and, for a reboot, the data plane) was killed.
    reboot_start_ms: f64,
    daemon_start_ms: f64,
    /// Rows in the daemon's database just before it started again.
    stored_peers: Option<u64>,
    /// Resolves once `/ready` answers 200 (or `None` on timeout).
    waiter: Option<JoinHandle<Option<Ready>>>,
    ready_after_ms: Option<f64>,
    peers_at_boot: u64,
}

/// The daemon's first 200 from `/ready`.
struct Ready {
    after: Duration,
    /// jitwgd's `jitwgd_installed_peers` gauge, read right after that 200 (`None`: not exported).
    installed: Option<u64>,
}

const INSTALLED_GAUGE: &str = "jitwgd_installed_peers";
/// jitwgd's count of initiations it dropped, by `reason` (admission control).
pub(super) const DROPS_METRIC: &str = "jitwgd_initiations_dropped_total";

fn wait_ready(probe: ProbeClient, started: Instant) -> JoinHandle<Option<Ready>> {
    tokio::spawn(async move {
        while started.elapsed() < READY_TIMEOUT {
            if probe.is_ready().await {
                let after = started.elapsed();
                // The count at the instant it reported ready: its own gauge, read at once (a
                // JIT boot starts installing knocking peers straight away).
                let installed = match probe.get("/metrics").await {
                    Ok((200, body)) => {
                        let scrape = prometheus::Scrape::parse(body);
                        let exported = scrape.series().iter().any(|s| s.name == INSTALLED_GAUGE);
                        exported.then(|| scrape.value(INSTALLED_GAUGE, &[]) as u64)
                    }
                    _ => None,
                };
                return Some(Ready { after, installed });
            }
            tokio::time::sleep(READY_POLL).await;
        }
        None
    })
}

/// Rows in jitwgd's store, read-only (the daemon is not running while this is called).
fn stored_peer_count(db: &Path) -> Option<u64> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| tracing::warn!(db = %db.display(), error = %e, "opening jitwgd's database to count stored peers"))
        .ok()?;
    conn.query_row("SELECT COUNT(*) FROM peers", [], |row| row.get::<_, i64>(0))
        .map_err(
            |e| tracing::warn!(db = %db.display(), error = %e, "counting jitwgd's stored peers"),
        )
        .ok()
        .and_then(|n| u64::try_from(n).ok())
}

/// Feeds the `echo_reply` lines of the fleet's event log to `watch`, for the clients in
/// `continuous` only (clients that send traffic all along: anyone else's next reply is set by
/// its own schedule, not by the gateway).
pub(crate) fn read_replies(
    path: &Path,
    continuous: &HashSet<u32>,
    watch: &mut RecoveryWatch,
) -> std::io::Result<()> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        client: u32,
        t_ms: f64,
        event: &'a str,
    }
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    for line in file.lines() {
        let line = line?;
        // Cheap filter first: most lines are other events.
        if !line.contains("\"echo_reply\"") {
            continue;
        }
        if let Ok(l) = serde_json::from_str::<Line<'_>>(&line) {
            if l.event == "echo_reply" && continuous.contains(&l.client) {
                watch.reply(l.client, l.t_ms);
            }
        }
    }
    Ok(())
}

/// Events and samples so far, and what is needed to take the next ones.
#[derive(Default)]
pub(crate) struct Timeline {
    pub samples: Vec<Sample>,
    pub events: Vec<Event>,
    pub usage: UsageTracker,
    /// Install times of the peers on the data plane, for the stale rule (set at the first sample).
    stale: Option<StaleTracker>,
    /// Last successful scrape, kept when a scrape fails (e.g. during a reboot).
    lookups: BTreeMap<String, u64>,
    /// jitwgd's count of the API requests it sent, over its restarts.
    pub api_sent: api_count::CountAcrossRestarts,
    /// jitwgd's initiations dropped by reason, over its restarts (absent metric: nothing).
    pub drops: api_count::CountAcrossRestarts,
    /// jitwgd's time per JIT stage (`stage_time::counters`), over its restarts.
    pub stage_time: api_count::CountAcrossRestarts,
    reload: Option<ReloadWatch>,
    /// Readiness waits of restarts after the first, with their start (ms into the run).
    pending_ready: Vec<(JoinHandle<Option<Ready>>, f64)>,
    /// Set while the data plane does not answer, so the warning is logged once per outage.
    dataplane_down: bool,
    /// The gateway namespace's UDP counters at the last sample (they outlive restarts).
    pub gateway_udp: Option<GatewayUdp>,
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
            Action::Reboot | Action::DaemonRestart | Action::DaemonKill => {
                self.observe_usage(&ctx.lab);
                // Its last count before it goes (what it sends after this is lost with it).
                if let Ok((200, body)) = ctx.lab.probe().get("/metrics").await {
                    let scrape = prometheus::Scrape::parse(body);
                    self.api_sent
                        .observe(scrape.by_label(api_count::API_REQUESTS_METRIC, "outcome"));
                    self.drops.observe(scrape.by_label(DROPS_METRIC, "reason"));
                    self.stage_time.observe(stage_time::counters(&scrape));
                }
                // The reboot's time is the kill's, read after the scrape above, not the
                // (earlier) time it was due.
                let t_ms = ctx.now_ms();
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
                    // Everything on the restarted data plane is a new install.
                    if let Some(stale) = self.stale.as_mut() {
                        stale.forget_all();
                    }
                } else if matches!(action, Action::DaemonKill) {
                    self.push_event(t_ms, EventKind::DaemonRestart, "kill -9 daemon".into());
                    ctx.lab
                        .kill9_daemon()
                        .map_err(RunError::lab("killing jitwgd"))?;
                } else {
                    self.push_event(t_ms, EventKind::DaemonRestart, "SIGTERM daemon".into());
                    if let Err(e) = ctx.lab.terminate_daemon(DAEMON_GRACE) {
                        tracing::warn!(error = %e, "stopping jitwgd");
                    }
                }
                self.usage.restarted("daemon");
                self.api_sent.restarted();
                self.drops.restarted();
                self.stage_time.restarted();
                let stored_peers = if self.reload.is_none() {
                    let db = ctx.lab.endpoints().db.clone();
                    blocking(|| stored_peer_count(&db))
                } else {
                    None
                };
                let start = Instant::now();
                tracing::info!(
                    since_kill_ms = ctx.now_ms() - t_ms,
                    "starting jitwgd after the kill"
                );
                ctx.lab.start_daemon()?;
                let waiter = wait_ready(ctx.lab.probe().clone(), start);
                let daemon_start_ms = ms(start.duration_since(ctx.origin));
                if self.reload.is_none() {
                    self.reload = Some(ReloadWatch {
                        reboot_start_ms: t_ms,
                        daemon_start_ms,
                        stored_peers,
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

    /// The first reboot's (or restart's) start and its daemon's start, ms into the run.
    pub fn first_reboot(&self) -> Option<(f64, f64)> {
        self.reload
            .as_ref()
            .map(|r| (r.reboot_start_ms, r.daemon_start_ms))
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
            let peers = match ready.as_ref().and_then(|r| r.installed) {
                Some(n) => n,
                // A jitwgd without the gauge: the data plane now, a little after ready.
                None => blocking(|| lab.dataplane().peers()).map_or(0, |p| p.len() as u64),
            };
            if let Some(r) = self.reload.as_mut() {
                r.ready_after_ms = ready.as_ref().map(|r| ms(r.after));
                r.peers_at_boot = peers;
            }
            self.ready_event(start_ms, ready.map(|r| r.after));
        }
        let mut still = Vec::new();
        for (h, start_ms) in std::mem::take(&mut self.pending_ready) {
            if h.is_finished() {
                let ready = h.await.ok().flatten();
                self.ready_event(start_ms, ready.map(|r| r.after));
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
        // Any process in the gateway's namespace shows its counters; the data plane is there
        // in every backend but the kernel one, where jitwgd is.
        let in_gateway = lab
            .dataplane()
            .pid()
            .or_else(|| lab.daemon().map(Child::pid));
        if let Some(u) = in_gateway.and_then(namespace_udp) {
            self.gateway_udp = Some(GatewayUdp {
                in_datagrams: u.in_datagrams,
                rcvbuf_errors: u.rcvbuf_errors,
                in_errors: u.in_errors,
            });
        }
    }

    /// Closes the run's timeline: one last readiness check and sample, and the `RunEnd` event
    /// (detail `interrupted` when the user cut the run short). Returns the run's end, ms into it.
    pub async fn end(&mut self, ctx: &RunContext<'_>, interrupted: bool) -> f64 {
        let end = ctx.now_ms();
        self.check_ready(&ctx.lab).await;
        self.sample(ctx).await;
        self.events.push(Event {
            t_ms: end,
            kind: EventKind::RunEnd,
            detail: if interrupted {
                "interrupted".into()
            } else {
                String::new()
            },
        });
        end
    }

    /// Takes one sample of the gateway; its time is when the data plane was read.
    pub async fn sample(&mut self, ctx: &RunContext<'_>) {
        self.observe_usage(&ctx.lab);
        let listing = blocking(|| ctx.lab.dataplane().peers());
        let (t_ms, now) = (ctx.now_ms(), SystemTime::now());
        let stale = self
            .stale
            .get_or_insert_with(|| StaleTracker::new(ctx.scenario.stale_threshold));
        let counts = match listing {
            Ok(peers) => {
                self.dataplane_down = false;
                stale.observe(peers.iter().map(|p| (p.public_key, p.last_handshake)), now)
            }
            // Reboots restart the data plane before the next sample, so this is a crash (or
            // someone else killed it): say so once, and count nothing installed.
            Err(e) => {
                if !self.dataplane_down {
                    tracing::warn!(error = %e, "the data plane stopped answering; sampling 0 installed peers");
                }
                self.dataplane_down = true;
                stale::PeerCounts::default()
            }
        };
        if let Ok((200, body)) = ctx.lab.probe().get("/metrics").await {
            // One parse of the page for both counters.
            let scrape = prometheus::Scrape::parse(body);
            self.lookups = scrape.by_label(prometheus::LOOKUPS_METRIC, "outcome");
            self.api_sent
                .observe(scrape.by_label(api_count::API_REQUESTS_METRIC, "outcome"));
            self.drops.observe(scrape.by_label(DROPS_METRIC, "reason"));
            self.stage_time.observe(stage_time::counters(&scrape));
        }
        let snap = ctx.progress.snapshot();
        self.samples.push(Sample {
            t_ms,
            installed_peers: counts.installed,
            stale_peers: counts.stale,
            never_handshaked_peers: Some(counts.never_handshaked),
            connected_clients: snap.connected_now,
            in_flight: snap.in_flight,
            api_calls_total: ctx.lab.control().stats().requests_total,
            lookups: self.lookups.clone(),
            processes: self.usage.usage(),
        });
    }

    /// Closes the timeline: the reload's figures (with a Recovered event when every client that
    /// had a tunnel at the reboot passed traffic again), recovery read from the fleet's event log
    /// (`None`: no log, so recovery is not measured), and the events in time order.
    pub fn finish(
        &mut self,
        event_log: Option<&Path>,
        continuous: &HashSet<u32>,
    ) -> Option<Reload> {
        let reload = self.reload.take().map(|r| {
            let mut watch =
                RecoveryWatch::new(r.reboot_start_ms, r.daemon_start_ms, RECOVERY_WINDOW_MS);
            let read = event_log.map(|path| {
                read_replies(path, continuous, &mut watch).map_err(|e| {
                    tracing::warn!(log = %path.display(), error = %e, "reading echo replies for recovery time");
                })
            });
            let recovery = watch.finish();
            let measured = matches!(read, Some(Ok(())));
            let after = recovery.all_after_ms.filter(|_| measured);
            if let Some(after) = after {
                self.events.push(Event {
                    t_ms: r.reboot_start_ms + after,
                    kind: EventKind::Recovered,
                    detail: format!("{} clients", recovery.clients),
                });
            }
            Reload {
                reboot_at_ms: r.daemon_start_ms,
                ready_after_ms: r.ready_after_ms,
                peers_at_boot: r.peers_at_boot,
                stored_peers: r.stored_peers,
                reboot_start_ms: r.reboot_start_ms,
                recovery_after_ms: after,
                recovery_p50_ms: recovery.p50_ms.filter(|_| measured),
                recovery_p99_ms: recovery.p99_ms.filter(|_| measured),
                recovery_clients: recovery.clients,
                recovered_clients: recovery.recovered,
            }
        });
        self.events.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        reload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_reads_only_echo_replies_of_clients_with_continuous_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-events.jsonl");
        let lines = [
            r#"{"client":0,"t_ms":19900.0,"event":"echo_reply","connection":0,"detail":"seq=1"}"#,
            r#"{"client":0,"t_ms":35000.0,"event":"echo_sent","connection":0,"detail":"seq=2"}"#,
            r#"{"client":0,"t_ms":36000.0,"event":"echo_reply","connection":0,"detail":"seq=2"}"#,
            // A returning client: up just before the reboot, back on its own schedule. Ignored.
            r#"{"client":1,"t_ms":19950.0,"event":"echo_reply","connection":0,"detail":"seq=1"}"#,
            r#"{"client":1,"t_ms":45000.0,"event":"echo_reply","connection":1,"detail":"seq=1"}"#,
            "not json",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let mut watch = RecoveryWatch::new(20_000.0, 20_050.0, RECOVERY_WINDOW_MS);
        read_replies(&path, &HashSet::from([0]), &mut watch).unwrap();
        let r = watch.finish();
        assert_eq!((r.clients, r.recovered), (1, 1));
        assert_eq!(r.all_after_ms, Some(16_000.0));
    }
}
