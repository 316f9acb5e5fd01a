//! The fleet plan: how many gateways `N` registered peers arriving at `R` connections per second
//! need, from the calibrated per-unit costs and closed-form steady-state laws.
//!
//! Assumptions, stated so they can be argued with: clients are spread evenly over gateways
//! (sticky per key); each key reconnects as a Poisson process, so the idle gap before a key's
//! next connection is exponential with mean `N/R - dwell`; an idle peer is evicted at the first
//! eviction sweep after `evict_after`, half a sweep period late on average. Then by Little's law
//! a gateway holds `R/G · (dwell + m·(1 - e^(-W/m)))` peers (`m` the mean gap, `W = evict_after +
//! sweep/2`), and a fraction `e^(-W/m)` of arrivals find their peer evicted and re-install it.
//! CPU per second and installed peers both fall as `1/G`, so each limit gives `G` directly.

use serde::Serialize;

use super::calibrate::Calibration;
use super::fit::Band;
use super::predict::{short, Evaluator};
use super::wave;

/// wireguard-go holds at most this many peers (its index table).
pub const DATAPLANE_PEER_LIMIT: f64 = 65_536.0;
/// Steady CPU a gateway is planned to, as a share of its CPUs: the rest absorbs storms.
pub const CPU_TARGET: f64 = 0.7;

/// What the operator asks about.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FleetInputs {
    /// Registered keys.
    pub peers: f64,
    /// New connections per second across the fleet.
    pub arrivals_per_s: f64,
    /// How long a client stays connected.
    pub dwell_s: f64,
    pub evict_after_s: f64,
    /// The eviction sweep period (jitwgd's `sweep_every`).
    pub sweep_every_s: f64,
    pub cpus_per_gateway: f64,
    /// Longest acceptable reboot (daemon start to ready).
    pub reboot_budget_s: Option<f64>,
    /// A storm: this many clients arriving within one second across the fleet.
    pub storm: Option<f64>,
    /// A peer idle this long counts as stale (REJECT_AFTER_TIME by default).
    pub stale_threshold_s: f64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetPlan {
    pub gateways: u64,
    /// Gateways with the per-unit costs at the low and high ends of their bands.
    pub gateways_low: u64,
    pub gateways_high: u64,
    /// Which limit set the count: `cpu`, `peer_limit`, `storm_knee` or `minimum`.
    pub binding: String,
    /// Each limit's own (fractional) gateway count.
    pub limits: Vec<(String, f64)>,
    pub per_gateway: PerGateway,
    /// The legacy push design on the same fleet: every gateway holds every key.
    pub legacy_push: LegacyPush,
    pub reboot: Reboot,
    pub storm: Option<StormHeadroom>,
    /// Per input: the relative change of the (fractional) gateway count for +10 % of it, most
    /// influential first.
    pub sensitivity: Vec<(String, f64)>,
    /// Every input outside the calibration range, and any CPU count other than calibrated.
    pub extrapolated: Vec<String>,
    /// Costs the calibration did not have, left out of the plan.
    pub missing: Vec<String>,
}

/// One gateway at steady state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerGateway {
    pub arrivals_per_s: f64,
    pub installed_peers: f64,
    /// Stale peers under JIT: idle past the threshold but not yet evicted.
    pub stale_peers: f64,
    pub reinstalls_per_s: f64,
    pub api_calls_per_s: Option<Band>,
    /// CPU seconds per second (1.0 = one CPU busy).
    pub cpu: Band,
    pub daemon_rss_bytes: Option<Band>,
    pub dataplane_rss_bytes: Option<Band>,
}

/// The push baseline, per gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegacyPush {
    pub installed_peers: f64,
    pub stale_peers: f64,
    pub dataplane_rss_bytes: Option<Band>,
}

/// Reboot of one gateway, ms from daemon start to ready.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reboot {
    /// Legacy preload of every stored key.
    pub preload_ms: Option<Band>,
    pub jit_ms: Option<Band>,
    /// Whether each meets `--reboot-budget`.
    pub preload_within_budget: Option<bool>,
    pub jit_within_budget: Option<bool>,
}

/// What a storm does to one gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StormHeadroom {
    /// Storm arrivals landing on one gateway.
    pub per_gateway: f64,
    /// CPU seconds the storm costs one gateway.
    pub cpu_seconds: Band,
    /// Spare CPU seconds per second at steady state.
    pub headroom_cpu_per_s: f64,
    /// Seconds of spare CPU the storm takes to absorb.
    pub absorb_s: f64,
    /// Storm size per gateway (arrivals within one second) where setup latency turns up: the
    /// knee in clients queued plus what the gateway drains in that second; `None`: no knee.
    pub knee: Option<f64>,
    pub below_knee: Option<bool>,
}

/// Per-unit costs read off the calibration (CPU seconds per unit).
struct Costs {
    per_arrival: Band,
    /// Per arrival of a storm: arrivals faster than the gateway drains are installed in a
    /// few large batches and pay no batch cost to speak of.
    per_storm_arrival: Band,
    /// CPU per installed peer per eviction sweep; the testbed's own sampling cost per peer
    /// (`peer_samples`, when the calibration tells it apart) is not charged: a production
    /// gateway is not sampled.
    per_peer_sweep: Band,
    /// A gateway's fixed CPU per second (idle work, metrics; in calibration also the
    /// testbed's once-a-second sampling).
    per_second: Band,
    missing: Vec<String>,
}

/// Handshakes a gateway sends to one departed client before it gives up or evicts the peer
/// (WireGuard's retries, [`wave::RETRY_AFTER_S`] after the client's last packet, every
/// [`wave::RETRY_EVERY_S`] for at most [`wave::RETRY_FOR_S`]): an upper bound, as a client that
/// returns within the window stops them.
fn retries_per_departure(i: &FleetInputs) -> f64 {
    let idle_window = i.evict_after_s + i.sweep_every_s / 2.0;
    let phase = idle_window.min(wave::RETRY_AFTER_S + wave::RETRY_FOR_S) - wave::RETRY_AFTER_S;
    phase.max(0.0) / wave::RETRY_EVERY_S
}

impl Costs {
    fn read(c: &Calibration, retries_per_arrival: f64) -> Self {
        let mut missing = Vec::new();
        let zero = Band::around(0.0, 0.0);
        let slope = |model: &str, feature: &str| {
            c.model(model)
                .and_then(|m| m.fitted.linear().slope_band(feature))
        };
        let daemon = slope("daemon_cpu", "arrivals").unwrap_or_else(|| {
            missing.push("daemon CPU per arrival".into());
            zero
        });
        let per_handshake = slope("dataplane_cpu", "handshakes").unwrap_or_else(|| {
            missing.push("data-plane CPU per handshake".into());
            zero
        });
        // A cost per `term` summed over jitwgd's and the data plane's CPU models.
        let both_cpus = |term: &str| {
            ["daemon_cpu", "dataplane_cpu"]
                .iter()
                .filter_map(|m| slope(m, term))
                .fold(zero, |a, b| a + b)
        };
        // A fleet spreads its arrivals so each gateway sees a small share, far below the rate
        // it drains: every arrival is set up alone and pays an install batch's cost on top (an
        // upper bound when the share per gateway is high enough for installs to batch).
        let batch = both_cpus("install_batches");
        let handshakes = slope("handshakes", "arrivals").unwrap_or(Band::around(1.0, 0.0));
        let dataplane = Band {
            value: per_handshake.value * handshakes.value,
            low: per_handshake.low * handshakes.low,
            high: per_handshake.high * handshakes.high,
        };
        // Every arrival leaves again: the data plane's retries to it (kept in the model only
        // when the calibration told their cost apart from zero).
        let retries = slope("dataplane_cpu", "gateway_retries")
            .map_or(zero, |b| b.scale(retries_per_arrival));
        let sweep = both_cpus("peer_sweeps");
        if sweep == zero {
            missing.push("CPU per peer read by the eviction sweep".into());
        }
        let per_second = both_cpus("run_seconds");
        Costs {
            per_storm_arrival: (daemon + dataplane).at_least(0.0),
            per_arrival: (daemon + dataplane + batch + retries).at_least(0.0),
            per_peer_sweep: sweep.at_least(0.0),
            per_second: per_second.at_least(0.0),
            missing,
        }
    }
}

/// One set of per-unit CPU costs (seconds per arrival, per peer swept, per second).
#[derive(Debug, Clone, Copy)]
struct CostPoint {
    arrival: f64,
    peer_sweep: f64,
    second: f64,
}

impl Costs {
    /// The costs at one end of their bands (`pick` chooses value, low or high).
    fn at(&self, pick: fn(&Band) -> f64) -> CostPoint {
        CostPoint {
            arrival: pick(&self.per_arrival),
            peer_sweep: pick(&self.per_peer_sweep),
            second: pick(&self.per_second),
        }
    }
}

/// Peers installed across the whole fleet and the share of arrivals that re-install.
fn steady_state(i: &FleetInputs) -> (f64, f64) {
    let idle_window = i.evict_after_s + i.sweep_every_s / 2.0;
    let rate = i.arrivals_per_s.max(f64::MIN_POSITIVE);
    let gap = (i.peers / rate - i.dwell_s).max(0.0);
    let (idle_held, reinstall) = if gap > 0.0 {
        (
            gap * (1.0 - (-idle_window / gap).exp()),
            (-idle_window / gap).exp(),
        )
    } else {
        (0.0, 0.0)
    };
    let installed = (i.arrivals_per_s * (i.dwell_s + idle_held)).min(i.peers);
    (installed, reinstall)
}

/// Fractional gateways each limit needs, for costs `per_arrival` and `per_peer_sweep`.
fn limits(i: &FleetInputs, c: CostPoint, knee: Option<f64>) -> Vec<(String, f64)> {
    let (installed, _) = steady_state(i);
    // Fleet-wide CPU that splits over gateways, against what each gateway has left after its
    // fixed per-second work.
    let shared = i.arrivals_per_s * c.arrival + c.peer_sweep * installed / i.sweep_every_s;
    let spare = (i.cpus_per_gateway * CPU_TARGET - c.second).max(f64::MIN_POSITIVE);
    let mut out = vec![
        ("cpu".to_string(), shared / spare),
        ("peer_limit".to_string(), installed / DATAPLANE_PEER_LIMIT),
    ];
    if let (Some(storm), Some(knee)) = (i.storm, knee) {
        out.push(("storm_knee".to_string(), storm / knee.max(1.0)));
    }
    out.push(("minimum".to_string(), 1.0));
    out
}

fn gateways_for(limits: &[(String, f64)]) -> (f64, String) {
    limits
        .iter()
        .fold((0.0, String::new()), |(best, name), (n, g)| {
            if *g > best {
                (*g, n.clone())
            } else {
                (best, name)
            }
        })
}

/// Plans the fleet.
pub fn plan(c: &Calibration, i: &FleetInputs) -> FleetPlan {
    let costs = Costs::read(c, retries_per_departure(i));
    // A storm of S within one second leaves S - drain queued: its knee in storm units.
    let knee = c.storm_knee();
    let limits_mid = limits(i, costs.at(|b| b.value), knee);
    let (g_exact, binding) = gateways_for(&limits_mid);
    let g_at = |c: CostPoint| gateways_for(&limits(i, c, knee)).0.ceil().max(1.0) as u64;
    let gateways = g_exact.ceil().max(1.0) as u64;
    let g = gateways as f64;

    let mut ev = Evaluator::new(c);
    let (installed_fleet, reinstall_share) = steady_state(i);
    let installed = installed_fleet / g;
    let arrivals = i.arrivals_per_s / g;
    let reinstalls = arrivals * reinstall_share;
    let idle_window = i.evict_after_s + i.sweep_every_s / 2.0;
    let cpu_at =
        |c: CostPoint| c.second + arrivals * c.arrival + c.peer_sweep * installed / i.sweep_every_s;
    let cpu = Band {
        value: cpu_at(costs.at(|b| b.value)),
        low: cpu_at(costs.at(|b| b.low)),
        high: cpu_at(costs.at(|b| b.high)),
    };
    // Memory at a given number of installed peers, with a steady second's arrivals in flight.
    // wireguard-go keeps memory of removed peers until its garbage collector reuses it, which
    // it does once the heap doubles the live set (GOGC=100): the removed peers it holds are at
    // most about as many as are installed, which by Little's law are the peers evicted within
    // one residence time. So a long-lived gateway counts as having installed twice its peers.
    let exact = |v: f64| Band::around(v, 0.0);
    let memory_inputs = |peers: f64, churn: bool| {
        move |f: &str| match f {
            "installed_peers" => exact(peers),
            // JIT peers are installed on a handshake; pushed ones are not, until they connect.
            "session_peers" => exact(if churn { peers } else { 0.0 }),
            "bare_peers" => exact(if churn { 0.0 } else { peers }),
            "installs" => exact(if churn { 2.0 * peers } else { peers }),
            "storm_size" => exact(arrivals),
            _ => exact(f64::NAN),
        }
    };
    let api_per_arrival = c
        .model("api_calls")
        .and_then(|m| m.fitted.linear().slope_band("arrivals"));
    let per_gateway = PerGateway {
        arrivals_per_s: arrivals,
        installed_peers: installed,
        stale_peers: (arrivals * (idle_window - i.stale_threshold_s).max(0.0)).min(installed),
        reinstalls_per_s: reinstalls,
        api_calls_per_s: api_per_arrival.map(|b| b.scale(reinstalls).at_least(0.0)),
        cpu,
        daemon_rss_bytes: ev.named("daemon_rss_peak", memory_inputs(installed, true)),
        dataplane_rss_bytes: ev.named("dataplane_rss_peak", memory_inputs(installed, true)),
    };
    // Legacy push: every key is pushed to every gateway and never evicted.
    let active = (arrivals * (i.dwell_s + i.stale_threshold_s)).min(i.peers);
    let mut legacy_ev = Evaluator::new(c);
    let legacy_push = LegacyPush {
        installed_peers: i.peers,
        stale_peers: (i.peers - active).max(0.0),
        // Pushed peers are never removed.
        dataplane_rss_bytes: legacy_ev.named("dataplane_rss_peak", memory_inputs(i.peers, false)),
    };
    let preload_ms = legacy_ev
        .at("reload_time_preload", i.peers)
        .map(|b| b.at_least(0.0));
    let jit_ms = ev.eval("reload_time_jit", &[]).map(|b| b.at_least(0.0));
    let budget_ms = i.reboot_budget_s.map(|s| s * 1000.0);
    let reboot = Reboot {
        preload_within_budget: budget_ms.zip(preload_ms).map(|(b, p)| p.high <= b),
        jit_within_budget: budget_ms.zip(jit_ms).map(|(b, p)| p.high <= b),
        preload_ms,
        jit_ms,
    };
    let storm = i.storm.map(|s| {
        let per_gateway = s / g;
        let cpu_seconds = costs.per_storm_arrival.scale(per_gateway);
        let headroom = (i.cpus_per_gateway - cpu.value).max(0.0);
        StormHeadroom {
            per_gateway,
            cpu_seconds,
            headroom_cpu_per_s: headroom,
            absorb_s: if headroom > 0.0 {
                cpu_seconds.value / headroom
            } else {
                f64::INFINITY
            },
            knee,
            below_knee: knee.map(|k| per_gateway <= k),
        }
    });
    if let Some(s) = &storm {
        ev.at(
            super::calibrate::SETUP_MODEL,
            (s.per_gateway - c.drain_per_s.unwrap_or(0.0)).max(0.0),
        );
    }
    if let Some(m) = c.model("daemon_cpu") {
        let fit = m.fitted.linear();
        if let Some(j) = fit.features.iter().position(|f| f == "arrivals") {
            // A calibration run's arrivals are a whole run's; compare a gateway's arrivals over
            // the calibration runs' typical length (a planned second is much less load).
            let (lo, hi) = fit.ranges[j];
            if arrivals > hi {
                ev.extrapolated.push(format!(
                    "daemon_cpu: arrivals per gateway per second = {} above the largest calibrated run ({}..{} arrivals)",
                    short(arrivals),
                    short(lo),
                    short(hi)
                ));
            }
        }
    }
    let mut extrapolated = ev.extrapolated;
    extrapolated.extend(
        legacy_ev
            .extrapolated
            .into_iter()
            .map(|e| format!("legacy push: {e}")),
    );
    match c.gateway_cpus {
        Some(n) if f64::from(n) == i.cpus_per_gateway => {}
        Some(n) => extrapolated.push(format!(
            "--cpus-per-gateway {} (calibrated on {n} gateway CPU(s)): CPU costs assumed to scale linearly",
            short(i.cpus_per_gateway)
        )),
        None => extrapolated.push(format!(
            "--cpus-per-gateway {}: the calibration's gateway CPU count is unknown (CPU split off or mixed)",
            short(i.cpus_per_gateway)
        )),
    }
    extrapolated.dedup();
    FleetPlan {
        gateways,
        gateways_low: g_at(costs.at(|b| b.low)),
        gateways_high: g_at(costs.at(|b| b.high)),
        binding,
        limits: limits_mid,
        per_gateway,
        legacy_push,
        reboot,
        storm,
        sensitivity: sensitivity(i, &costs, knee),
        extrapolated,
        missing: costs.missing,
    }
}

/// Relative change in the fractional gateway count for +10 % of each input.
fn sensitivity(i: &FleetInputs, costs: &Costs, knee: Option<f64>) -> Vec<(String, f64)> {
    let g = |x: &FleetInputs| gateways_for(&limits(x, costs.at(|b| b.value), knee)).0;
    let base = g(i);
    type Bump = fn(&mut FleetInputs);
    let bumps: [(&str, Bump); 6] = [
        ("--peers", |x| x.peers *= 1.1),
        ("--arrivals", |x| x.arrivals_per_s *= 1.1),
        ("--dwell", |x| x.dwell_s *= 1.1),
        ("--evict-after", |x| x.evict_after_s *= 1.1),
        ("--cpus-per-gateway", |x| x.cpus_per_gateway *= 1.1),
        ("--storm", |x| x.storm = x.storm.map(|s| s * 1.1)),
    ];
    let mut out: Vec<(String, f64)> = bumps
        .iter()
        .map(|(name, bump)| {
            let mut x = *i;
            bump(&mut x);
            (name.to_string(), (g(&x) - base) / base)
        })
        .collect();
    out.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> FleetInputs {
        FleetInputs {
            peers: 1_000_000.0,
            arrivals_per_s: 100.0,
            dwell_s: 600.0,
            evict_after_s: 180.0,
            sweep_every_s: 30.0,
            cpus_per_gateway: 1.0,
            reboot_budget_s: None,
            storm: None,
            stale_threshold_s: 180.0,
        }
    }

    #[test]
    fn littles_law_with_rare_returns() {
        // Mean gap 10,000 s - 600 s ≫ 195 s: almost every arrival re-installs, and each holds a
        // peer for dwell + ~195 s.
        let (installed, reinstall) = steady_state(&inputs());
        assert!(
            (installed - 100.0 * (600.0 + 193.0)).abs() < 200.0,
            "{installed}"
        );
        assert!(reinstall > 0.97 && reinstall < 1.0, "{reinstall}");
    }

    #[test]
    fn frequent_returns_keep_peers_installed() {
        let mut i = inputs();
        i.peers = 1000.0;
        i.arrivals_per_s = 10.0;
        i.dwell_s = 10.0;
        // Mean gap 90 s < 195 s: most keys stay installed, few re-install.
        let (installed, reinstall) = steady_state(&i);
        assert!(installed <= 1000.0 && installed > 800.0, "{installed}");
        assert!(reinstall < 0.15, "{reinstall}");
    }

    #[test]
    fn limits_fall_with_gateways() {
        let costs = CostPoint {
            arrival: 0.002,
            peer_sweep: 1e-6,
            second: 0.0,
        };
        let l = limits(&inputs(), costs, Some(500.0));
        let cpu = l.iter().find(|(n, _)| n == "cpu").unwrap().1;
        // 100/s × 2 ms = 0.2 CPU + sweep reads 79,300 peers / 30 s × 1 µs ≈ 0.0026 → /0.7.
        assert!(
            (cpu - (0.2 + 79_300.0 / 30.0 * 1e-6) / 0.7).abs() < 0.01,
            "{cpu}"
        );
        let (g, binding) = gateways_for(&l);
        assert_eq!(binding, "peer_limit");
        assert!(g > 1.0);
    }

    #[test]
    fn a_departed_client_is_retried_from_15_s_until_eviction_or_90_s_of_retries() {
        // Evicted 195 s after its last packet (180 s + half a 30 s sweep): WireGuard gives up
        // first, after 18 retries.
        assert_eq!(retries_per_departure(&inputs()), 18.0);
        // Evicted at 35 s: retries at 15-35 s, one per 5 s.
        let short = FleetInputs {
            evict_after_s: 30.0,
            sweep_every_s: 10.0,
            ..inputs()
        };
        assert_eq!(retries_per_departure(&short), 4.0);
        // Evicted at 12.5 s, before the first retry.
        let shorter = FleetInputs {
            evict_after_s: 10.0,
            sweep_every_s: 5.0,
            ..inputs()
        };
        assert_eq!(retries_per_departure(&shorter), 0.0);
    }
}
