//! The run's attacking populations: their packets built before the clients start (timed, so a
//! report says what the build cost), one plain thread each in the client namespace while the
//! fleet runs, and their outcomes as `results.attacks`, kept apart from the clients. An
//! attack's API calls are the control plane's lookups of its own keys.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use jitwg_reports::AttackResult;

use crate::client::attack::packets::FloodRecipe;
use crate::client::attack::{
    run_attack, AttackError, AttackOutcome, AttackProgress, AttackSpec, Payload,
};
use crate::controlplane::StatsSnapshot;
use crate::lab::{LabError, NsThread, RuntimeFlavor};
use crate::scenario::{AttackKind, AttackPlan, Scenario};

use super::lab::Lab;
use super::RunError;

/// Where the attacks send.
#[derive(Debug, Clone)]
pub struct AttackTargets {
    pub gateway_public_key: [u8; 32],
    pub gateway_v4: SocketAddr,
    pub gateway_v6: Option<SocketAddr>,
    /// The client namespace's link to the gateway, where a replay captures.
    pub client_interface: String,
}

/// An attack ready to start.
pub struct PreparedAttack {
    pub plan: AttackPlan,
    pub spec: AttackSpec,
    /// Keys its packets carry, as the control plane counts them (hex); `None`: not its own.
    pub keys: Option<HashSet<String>>,
    pub build_ms: Option<f64>,
}

/// Builds every attack's packets (on every CPU the driver may use: before the run, nothing
/// else is measured yet).
pub fn prepare(
    scenario: &Scenario,
    targets: &AttackTargets,
) -> Result<Vec<PreparedAttack>, RunError> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut out = Vec::with_capacity(scenario.attacks.len());
    for plan in &scenario.attacks {
        let (payload, keys, build_ms) = match plan.kind {
            AttackKind::Flood { keys, mac1 } => {
                let recipe = FloodRecipe {
                    keys,
                    mac1,
                    key_pool: &plan.key_pool,
                    gateway_public_key: targets.gateway_public_key,
                    seed: plan.seed,
                };
                let started = Instant::now();
                let built = recipe.build(plan.packets, threads).map_err(|source| {
                    RunError::AttackPackets {
                        name: plan.name.clone(),
                        source,
                    }
                })?;
                let build_ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(
                    attack = %plan.name,
                    packets = built.packets.len(),
                    build_ms,
                    "attack packets built"
                );
                let keys: HashSet<String> = built.keys.iter().map(hex::encode).collect();
                (
                    Payload::Built(Arc::new(built.packets)),
                    (!keys.is_empty()).then_some(keys),
                    Some(build_ms),
                )
            }
            AttackKind::Replay => (
                Payload::Replay {
                    interface: targets.client_interface.clone(),
                },
                None,
                None,
            ),
        };
        out.push(PreparedAttack {
            spec: AttackSpec {
                name: plan.name.clone(),
                start: plan.start,
                packets: plan.packets,
                packets_per_second: plan.packets_per_second,
                sources: plan.sources.clone(),
                gateway_v4: targets.gateway_v4,
                gateway_v6: targets.gateway_v6,
                payload,
            },
            plan: plan.clone(),
            keys,
            build_ms,
        });
    }
    Ok(out)
}

type AttackOutput = Result<Result<AttackOutcome, AttackError>, LabError>;

/// The running attacks; dropping them stops and joins every thread.
pub struct AttackThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<NsThread<AttackOutput>>,
    pub progress: Vec<Arc<AttackProgress>>,
}

/// Starts one thread per attack in the client namespace; `origin` is the run's time zero.
pub fn start(
    lab: &Lab,
    prepared: &[PreparedAttack],
    origin: Instant,
) -> Result<AttackThreads, RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = AttackThreads {
        stop: Arc::clone(&stop),
        threads: Vec::new(),
        progress: Vec::new(),
    };
    for attack in prepared {
        let (spec, halt) = (attack.spec.clone(), Arc::clone(&stop));
        let progress = Arc::new(AttackProgress::default());
        let counter = Arc::clone(&progress);
        let thread = lab
            .topology()
            .client
            .spawn_runtime_thread("attack", RuntimeFlavor::CurrentThread, move || async move {
                // A plain blocking loop: nothing else runs on this thread's runtime.
                run_attack(&spec, origin, &halt, &counter)
            })
            .map_err(RunError::lab("starting an attacking population"))?;
        running.threads.push(thread);
        running.progress.push(progress);
    }
    Ok(running)
}

impl AttackThreads {
    /// Whether every attack has sent all its packets (or failed).
    pub fn is_done(&self) -> bool {
        self.threads.iter().all(NsThread::is_finished)
    }

    /// Stops every attack still sending and returns their outcomes, in start order.
    pub fn finish(mut self) -> Result<Vec<AttackOutcome>, RunError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::with_capacity(self.threads.len());
        for t in std::mem::take(&mut self.threads) {
            let outcome = super::lab::blocking(|| t.join())
                .and_then(|r| r)
                .map_err(|e| RunError::AttackThread(Box::new(e)))?
                .map_err(RunError::Attack)?;
            out.push(outcome);
        }
        Ok(out)
    }
}

impl Drop for AttackThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = super::lab::blocking(|| t.join());
        }
    }
}

/// `results.attacks`: each attack's plan, outcome and API calls for its own keys.
pub fn results(
    prepared: &[PreparedAttack],
    outcomes: &[AttackOutcome],
    api: &StatsSnapshot,
) -> Vec<AttackResult> {
    prepared
        .iter()
        .zip(outcomes)
        .map(|(attack, outcome)| {
            let plan = &attack.plan;
            let (api_calls, api_keys) = match &attack.keys {
                Some(keys) => {
                    let mut calls = 0;
                    let mut asked = 0;
                    for (key, n) in &api.per_key {
                        if keys.contains(key) {
                            calls += n;
                            asked += 1;
                        }
                    }
                    (Some(calls), Some(asked))
                }
                None => (None, None),
            };
            let subnets: HashSet<_> = plan
                .sources
                .iter()
                .map(|ip| match ip {
                    std::net::IpAddr::V4(a) => u128::from(u32::from(*a) >> 8),
                    std::net::IpAddr::V6(a) => u128::from(*a) >> 64,
                })
                .collect();
            AttackResult {
                population: plan.name.clone(),
                kind: plan.kind.label(),
                sources: plan.sources.len() as u32,
                subnets: subnets.len() as u32,
                family: if plan.is_ipv6() { "ipv6" } else { "ipv4" }.into(),
                packets_planned: u64::from(plan.packets),
                target_rate: plan.packets_per_second,
                packets_sent: outcome.sent,
                send_errors: outcome.send_errors,
                achieved_rate: outcome.rate(),
                first_sent_ms: outcome.first_sent_ms,
                last_sent_ms: outcome.last_sent_ms,
                max_behind: outcome.max_behind,
                api_calls,
                api_keys,
                captured: matches!(plan.kind, AttackKind::Replay).then_some(outcome.captured),
                build_ms: attack.build_ms,
            }
        })
        .collect()
}
