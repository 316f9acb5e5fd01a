//! The kernel shield: sources admission control has judged (penalised addresses, and
//! with the gateway initiating whole penalised networks) get their handshake initiations
//! dropped at tc ingress of the capture interface, before wireguard-go spends its own
//! X25519 on each (measured: 34-46 % of the gateway core under a 3,000/s fresh-key flood,
//! and bursts that put it in its cookie "under load" mode, which then refuses legitimate
//! clients' responses). jitwgd's own capture still sees every dropped initiation (packet
//! taps run before tc ingress), so the penalties that drive the filters stay current and
//! expire on their own terms, and admission still lets a first contact through to
//! identify as before; the gateway's JIT initiation and the client's response (type 2)
//! are never filtered.
//!
//! Installed peers are never cut off: `plan` leaves their endpoints unblocked, with pass
//! rules inside a blocked network (module doc there). The endpoints come from the data
//! plane's one reader (`sweep::PeerReads`, shared with the sweep): while anything is
//! judged, the last read (the sweep's or its own) is used when it is at most
//! `ENDPOINT_REFRESH` old, else one is made and kept for the sweep too; until the first
//! read succeeds nothing is blocked. What the shield cannot see is an installed peer
//! roaming to a judged address (or into a blocked network, before the next endpoint read
//! shows it there): its initiations are dropped until the penalty ends, the same window
//! admission already applies to first contacts from it.
//!
//! A flood wakes the loop once per refused knock; it plans its rules only when what they
//! are planned from changed (`plan::needs_replan`), so most wake-ups cost a comparison.
//!
//! With the gateway initiating and `--storm-guard` on (the default), the shield also raises
//! the storm guard (`storm`) while newcomers arrive faster than the data plane is initiated
//! to: then every initiation is dropped before the data plane, and the pipeline has the
//! data plane initiate to an installed peer whose own initiation met the guard.
//!
//! `plan` is the pure core (time is the caller's), `bpf` compiles a family's rules into
//! one classic program, `tc` is the rtnetlink edge; `run` is the loop between them.
//! Bounded: at most `max_filters` rules (one program per family); removed at exit, and
//! a restart flushes a killed run's leftovers.

pub mod plan;

pub mod bpf;

pub mod tc;

pub mod storm;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admission::{Judged, LogBudget};
use crate::errors::Causes;
use crate::lookup::Lookup;
use crate::metrics::Metrics;
use crate::sweep::{reads, PeerRead, PeerReads};

pub use plan::{JudgedSet, Prefix, Rule};
pub use storm::GuardFlag;
pub use tc::{TcError, TcShield};

/// How often the rules are recomputed without a wake-up (penalties expiring); a newly
/// judged source wakes the loop at once (`Lookup::judged_changed`).
pub const TICK: Duration = Duration::from_millis(250);

/// How stale the installed peers' endpoints may be while anything is judged. A peer
/// installed meanwhile is set up by the gateway's own initiation (its client's response
/// is never filtered); its client's next initiation, a rekey, comes minutes later.
pub const ENDPOINT_REFRESH: Duration = Duration::from_secs(2);

/// Rules one classic program holds even when all are IPv6 hosts (`bpf::MAX_INSNS`);
/// the cap is clamped to it.
pub const MAX_FILTERS: usize = (bpf::MAX_INSNS - bpf::HEADER_INSNS - 1) / bpf::MAX_RULE_INSNS;

/// The least time between two program replacements: a flood's addresses are judged one
/// knock at a time, so their rules are batched rather than installed one by one.
pub const MIN_GAP: Duration = Duration::from_millis(10);

/// How often, at most, the loop logs what it did so far (only when it did something).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// What the shield loop needs.
pub struct ShieldSettings {
    /// Rules at most (0: no shield).
    pub max_filters: usize,
    /// Block whole judged networks (the gateway initiates to newcomers, `plan::desired`).
    pub block_networks: bool,
    /// The storm guard (`storm`), when the gateway initiates and it is not turned off.
    pub storm_guard: Option<StormGuardInput>,
}

/// What the storm guard is raised from and what it reports to.
pub struct StormGuardInput {
    /// The last moment the capture loop saw newcomers at the storm rate (`storm::StormMeter`).
    pub storm: watch::Receiver<Option<Instant>>,
    /// Set while the guard's rules are in force (read by the pipeline).
    pub flag: GuardFlag,
}

/// What the loop did so far, logged every `REPORT_EVERY` while it works and at exit: the
/// figures behind `jitwgd_shield_*_total`, with the time each part took, for judging the
/// shield's own cost.
#[derive(Debug, Default)]
struct Tally {
    wakeups: u64,
    /// From each wake-up until its rules were planned (or found current): the judged
    /// sources, any read (also in `read_time`), the decision and the plan; not tc.
    wake_time: Duration,
    recomputes: u64,
    reads: u64,
    read_time: Duration,
    replacements: u64,
    replace_time: Duration,
}

/// Keep the filters on `tc` in step with `lookup`'s judged sources until `cancel`, then
/// remove them. Installed endpoints come from `reads`, shared with the sweep.
pub async fn run(
    mut tc: TcShield,
    lookup: Arc<Lookup>,
    reads: Arc<PeerReads>,
    metrics: Arc<Metrics>,
    settings: ShieldSettings,
    cancel: CancellationToken,
) {
    let cap = settings.max_filters.min(MAX_FILTERS);
    // What each family's program holds now (IPv4, IPv6).
    let mut installed: [BTreeSet<Rule>; 2] = Default::default();
    // The read the endpoints were taken from, and those endpoints.
    let mut endpoints: Option<(Arc<PeerRead>, HashSet<IpAddr>)> = None;
    // What the last plan was made from, whether the endpoints changed since, and whether
    // that plan is wholly in force (`plan::needs_replan`). A flood wakes the loop once
    // per refused knock, mostly with nothing new to plan.
    let mut planned_from: Option<JudgedSet> = None;
    let mut endpoints_changed = false;
    let mut plan_in_force = false;
    let mut warnings = LogBudget::new(1, Instant::now());
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let judged_changed = lookup.judged_changed();
    let (mut storm, guard_flag) = match settings.storm_guard {
        Some(g) => (Some(g.storm), Some(g.flag)),
        None => (None, None),
    };
    let mut hold = storm::StormHold::default();
    // Whether the last plan raised the guard.
    let mut planned_guard = false;
    // When the work so far was last logged, and how many wake-ups it showed.
    let mut last_report = (Instant::now(), 0u64);
    loop {
        // Woken only by a storm stamp: while the guard is up that just extends it.
        let mut stamp_only = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            _ = judged_changed.notified() => {
                // Let the knocks of the same moment be judged too, then act on all.
                tokio::time::sleep(MIN_GAP).await;
            }
            changed = storm_changed(&mut storm) => {
                if changed {
                    stamp_only = true;
                } else {
                    // The capture loop is gone: the guard has nothing to follow.
                    storm = None;
                }
            }
        }
        let began = Instant::now();
        if let Some(at) = storm.as_ref().and_then(|rx| *rx.borrow()) {
            hold.observe(at);
        }
        if stamp_only && planned_guard && plan_in_force {
            // A stamp every 20 ms of a storm: no need to judge and plan each time (the tick
            // still does, and sees the hold end).
            continue;
        }
        let guard = guard_flag.is_some() && hold.up(began);
        let judged = match lookup.judged_sources(began) {
            Some(judged) => judged,
            // No admission control: only the storm guard can block anything.
            None if guard_flag.is_some() => Judged::default(),
            None => {
                // Nothing is ever judged and there is no guard: idle until shutdown.
                cancel.cancelled().await;
                break;
            }
        };
        tally.wakeups += 1;
        metrics.shield.wakeups.inc();
        if !judged.is_empty() {
            // The last read (the sweep's or ours) when recent enough, else one new read.
            let reading = Instant::now();
            match reads
                .read_started_after(reads::age_limit(began, ENDPOINT_REFRESH))
                .await
            {
                Ok(got) => {
                    if got.made_by_caller {
                        tally.reads += 1;
                        tally.read_time += reading.elapsed();
                        metrics.shield.reads.inc();
                    }
                    if endpoints
                        .as_ref()
                        .is_none_or(|(had, _)| !Arc::ptr_eq(had, &got.read))
                    {
                        let fresh = plan::installed_endpoints(&got.read.peers);
                        // Only a different set of addresses can change the plan.
                        endpoints_changed |= endpoints.as_ref().is_none_or(|(_, e)| *e != fresh);
                        endpoints = Some((got.read, fresh));
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = warnings.allow(began) {
                        let using = if endpoints.is_some() {
                            "planning with the last endpoints read"
                        } else {
                            "blocking nothing until a read succeeds"
                        };
                        tracing::warn!(error = %Causes(&e), suppressed, "shield: reading the installed peers failed; {using}");
                    }
                }
            }
        }
        let judged_set = JudgedSet::from(&judged);
        if plan::needs_replan(
            planned_from.as_ref(),
            &judged_set,
            endpoints_changed,
            plan_in_force,
        ) || guard != planned_guard
        {
            tally.recomputes += 1;
            metrics.shield.recomputes.inc();
            // Never block without knowing whom not to block.
            let current: BTreeSet<Rule> = installed.iter().flatten().copied().collect();
            let mut want = match &endpoints {
                Some((_, endpoints)) => {
                    plan::desired(&judged, endpoints, cap, &current, settings.block_networks)
                }
                None => BTreeSet::new(),
            };
            if guard {
                // Beside the cap: two rules, and whatever else is planned is then moot.
                want.extend(storm::rules());
            }
            tally.wake_time += began.elapsed();
            plan_in_force = true;
            let was_up = guard_flag.as_ref().is_some_and(GuardFlag::in_force);
            if let (Some(flag), false) = (&guard_flag, guard) {
                // Cleared before the rules go: an initiation the pipeline does not detour
                // must be one the data plane gets.
                flag.set(false);
            }
            for (family, v4) in [(0, true), (1, false)] {
                let rules = plan::family(&want, v4);
                if rules == installed[family] {
                    continue;
                }
                let list: Vec<Rule> = rules.iter().copied().collect();
                let replacing = Instant::now();
                match tc.replace(&list, v4).await {
                    Ok(()) => {
                        tracing::debug!(rules = list.len(), v4, "shield program replaced");
                        installed[family] = rules;
                        tally.replacements += 1;
                        metrics.shield.replacements.inc();
                    }
                    Err(e) => {
                        plan_in_force = false;
                        if let Some(suppressed) = warnings.allow(began) {
                            tracing::warn!(error = %Causes(&e), suppressed, "shield: replacing the tc program failed; retrying next tick");
                        }
                    }
                }
                tally.replace_time += replacing.elapsed();
            }
            if let Some(flag) = &guard_flag {
                let [v4, v6] = storm::rules();
                let up = installed[0].contains(&v4) && installed[1].contains(&v6);
                if up != was_up {
                    // Once each way per storm: worth a line.
                    if up {
                        metrics.shield.storm_guard_raised.inc();
                    }
                    tracing::info!(
                        up,
                        detours = metrics.shield.storm_guard_detours.get(),
                        "storm guard {}",
                        if up {
                            "up: every initiation goes by jitwgd"
                        } else {
                            "down"
                        }
                    );
                }
                flag.set(up);
                metrics.shield.storm_guard_up.set(i64::from(up));
            }
            planned_from = Some(judged_set);
            planned_guard = guard;
            endpoints_changed = false;
        } else {
            tally.wake_time += began.elapsed();
        }
        if began.duration_since(last_report.0) >= REPORT_EVERY && tally.wakeups > last_report.1 {
            tally.log("kernel shield: work so far");
            last_report = (began, tally.wakeups);
        }
    }
    tally.log("kernel shield stopping");
    if let Err(e) = tc.close().await {
        tracing::warn!(error = %Causes(&e), "shield: removing the tc filters at exit failed");
    }
}

/// Waits for a new storm stamp; `false` when the capture loop is gone (never resolves
/// without a receiver, so `select!` keeps waiting on the other branches).
async fn storm_changed(rx: &mut Option<watch::Receiver<Option<Instant>>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Tally {
    fn log(&self, what: &str) {
        tracing::info!(
            wakeups = self.wakeups,
            wake_ms = ms(self.wake_time),
            recomputes = self.recomputes,
            reads = self.reads,
            read_ms = ms(self.read_time),
            replacements = self.replacements,
            replace_ms = ms(self.replace_time),
            "{what}"
        );
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
