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
//! plane, read at most every `ENDPOINT_REFRESH` while anything is judged; until the first
//! read succeeds nothing is blocked. What the shield cannot see is an installed peer
//! roaming to a judged address (or into a blocked network, before the next endpoint
//! read shows it there): its initiations are dropped until the penalty ends, the same
//! window admission already applies to first contacts from it.
//!
//! `plan` is the pure core (time is the caller's), `bpf` compiles a family's rules into
//! one classic program, `tc` is the rtnetlink edge; `run` is the loop between them.
//! Bounded: at most `max_filters` rules (one program per family); removed at exit, and
//! a restart flushes a killed run's leftovers.

pub mod plan;

pub mod bpf;

pub mod tc;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::admission::LogBudget;
use crate::dataplane::DataPlane;
use crate::errors::Causes;
use crate::lookup::Lookup;

pub use plan::{Prefix, Rule};
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

/// What the shield loop needs.
pub struct ShieldSettings {
    /// Rules at most (0: no shield).
    pub max_filters: usize,
    /// Block whole judged networks (the gateway initiates to newcomers, `plan::desired`).
    pub block_networks: bool,
}

/// Keep the filters on `tc` in step with `lookup`'s judged sources until `cancel`, then
/// remove them.
pub async fn run(
    mut tc: TcShield,
    lookup: Arc<Lookup>,
    dataplane: DataPlane,
    settings: ShieldSettings,
    cancel: CancellationToken,
) {
    let cap = settings.max_filters.min(MAX_FILTERS);
    // What each family's program holds now (IPv4, IPv6).
    let mut installed: [BTreeSet<Rule>; 2] = Default::default();
    let mut endpoints: Option<HashSet<IpAddr>> = None;
    let mut endpoints_at: Option<Instant> = None;
    let mut warnings = LogBudget::new(1, Instant::now());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let judged_changed = lookup.judged_changed();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            _ = judged_changed.notified() => {
                // Let the knocks of the same moment be judged too, then act on all.
                tokio::time::sleep(MIN_GAP).await;
            }
        }
        let now = Instant::now();
        let Some(judged) = lookup.judged_sources(now) else {
            // No admission control, nothing is ever judged: idle until shutdown.
            cancel.cancelled().await;
            break;
        };
        let stale = endpoints_at.is_none_or(|at| now.duration_since(at) >= ENDPOINT_REFRESH);
        if !judged.is_empty() && stale {
            let dp = dataplane.clone();
            match tokio::task::spawn_blocking(move || dp.peers()).await {
                Ok(Ok(peers)) => {
                    endpoints = Some(
                        peers
                            .iter()
                            .filter_map(|p| p.endpoint.map(|e| plan::canonical(e.ip())))
                            .collect(),
                    );
                    endpoints_at = Some(now);
                }
                Ok(Err(e)) => {
                    if let Some(suppressed) = warnings.allow(now) {
                        tracing::warn!(error = %Causes(&e), suppressed, "shield: reading the installed peers failed; blocking nothing new");
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = warnings.allow(now) {
                        tracing::warn!(error = %e, suppressed, "shield: reading the installed peers failed");
                    }
                }
            }
        }
        // Never block without knowing whom not to block.
        let current: BTreeSet<Rule> = installed.iter().flatten().copied().collect();
        let want = match &endpoints {
            Some(endpoints) => {
                plan::desired(&judged, endpoints, cap, &current, settings.block_networks)
            }
            None => BTreeSet::new(),
        };
        for (family, v4) in [(0, true), (1, false)] {
            let rules = plan::family(&want, v4);
            if rules == installed[family] {
                continue;
            }
            let list: Vec<Rule> = rules.iter().copied().collect();
            match tc.replace(&list, v4).await {
                Ok(()) => {
                    tracing::debug!(rules = list.len(), v4, "shield program replaced");
                    installed[family] = rules;
                }
                Err(e) => {
                    if let Some(suppressed) = warnings.allow(now) {
                        tracing::warn!(error = %Causes(&e), suppressed, "shield: replacing the tc program failed; retrying next tick");
                    }
                }
            }
        }
    }
    if let Err(e) = tc.close().await {
        tracing::warn!(error = %Causes(&e), "shield: removing the tc filters at exit failed");
    }
}
