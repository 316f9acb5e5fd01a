//! The cost model end to end on synthetic runs with planted costs: calibration recovers them,
//! predictions land on them and flag extrapolation, the fleet plan and the HTML fragment work.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::schema::{ClientResult, Connection, ProcessUsage, Results, RunInfo, Sample};

const DEFAULTS: DaemonDefaults = DaemonDefaults {
    evict_after: Duration::from_secs(180),
    sweep_every: Duration::from_secs(30),
};

/// A storm run of `n` clients in one second with planted costs: daemon 0.1 s + 1 ms per
/// arrival, data plane 0.2 s + 0.4 ms per handshake (2 per arrival), 20 MB + 4 KiB per
/// installed peer in jitwgd, setup p50 30 ms below 1,000 clients and growing 0.4 % per client above.
fn storm_run(n: u32) -> CalPoint {
    let scenario = json!({
        "name": "storm", "duration": "25s",
        "daemon": {"sweep_every": "5s"},
        "population": [{"name": "s", "count": n,
            "arrival": {"kind": "poisson", "rate": f64::from(n)},
            "behaviour": {"kind": "stay", "duration": "15s", "traffic_every": "5s"}}]
    });
    let mut results = Results::new(RunInfo {
        resolved_scenario: scenario,
        ..RunInfo::default()
    });
    let x = f64::from(n);
    let setup = 30.0 * (0.004 * (x - 1000.0).max(0.0)).exp();
    results.clients = (0..n)
        .map(|id| ClientResult {
            id,
            population: "s".into(),
            connections: vec![Connection {
                setup_latency_ms: Some(setup),
                handshake_attempts: 2,
                ..Connection::default()
            }],
        })
        .collect();
    results.samples = (0..=25)
        .map(|t| Sample {
            t_ms: f64::from(t) * 1000.0,
            installed_peers: if t < 20 { u64::from(n) } else { 0 },
            ..Sample::default()
        })
        .collect();
    results.api.calls_total = u64::from(n);
    results.processes = vec![
        usage("daemon", 0.1 + 0.001 * x, 20e6 + 4096.0 * x),
        usage("dataplane", 0.2 + 0.0004 * 2.0 * x, 10e6 + 8192.0 * x),
    ];
    CalPoint::from_results(
        PathBuf::from(format!("p{n}")),
        &results,
        &json!({}),
        DEFAULTS,
    )
    .unwrap()
}

fn usage(name: &str, cpu: f64, rss: f64) -> ProcessUsage {
    ProcessUsage {
        name: name.into(),
        cpu_seconds: cpu,
        peak_rss_bytes: rss as u64,
    }
}

fn calibration() -> Calibration {
    let points: Vec<CalPoint> = [200, 400, 600, 800, 1000, 1200, 1400, 1600]
        .into_iter()
        .map(storm_run)
        .collect();
    Calibration::fit(&points).unwrap()
}

#[test]
fn calibration_recovers_planted_costs() {
    let c = calibration();
    let daemon = c.model("daemon_cpu").unwrap().fitted.linear();
    assert!(
        (daemon.slope("arrivals").unwrap() - 0.001).abs() < 1e-9,
        "{daemon:?}"
    );
    let dp = c.model("dataplane_cpu").unwrap().fitted.linear();
    assert!((dp.slope("handshakes").unwrap() - 0.0004).abs() < 1e-9);
    let rss = c.model("daemon_rss_peak").unwrap().fitted.linear();
    assert!((rss.slope("installed_peers").unwrap() - 4096.0).abs() < 1.0);
    let hs = c.model("handshakes").unwrap().fitted.linear();
    assert!((hs.slope("arrivals").unwrap() - 2.0).abs() < 1e-9);
    // Each storm arrives within its second, so the knee as a storm is the clients queued at
    // the knee plus what the gateway drained meanwhile.
    let knee = c.storm_knee().expect("a knee");
    assert!(
        (knee - 1000.0).abs() <= 200.0,
        "knee {knee}, drain {:?}",
        c.drain_per_s
    );
    // No reboot in a storm sweep: the reload models say why they are missing.
    assert!(c.unfitted.iter().any(|u| u.name == "reload_time_preload"));
    assert_eq!(c.gateway_cpus, None);
}

#[test]
fn too_few_points_is_a_clear_error() {
    let points = vec![storm_run(100), storm_run(200)];
    let e = Calibration::fit(&points).unwrap_err();
    assert_eq!(e, CalibrationError::TooFewPoints { found: 2 });
    assert!(e.to_string().contains("at least 3"));
}

#[test]
fn prediction_inside_and_outside_the_grid() {
    let c = calibration();
    let inside = storm_run(700);
    let p = predict(&c, &inside.planned);
    let cpu = &p.predicted["daemon_cpu"];
    assert!((cpu.value - (0.1 + 0.7)).abs() < 1e-6, "{cpu:?}");
    assert!(cpu.low <= cpu.value && cpu.value <= cpu.high);
    let setup = &p.predicted["setup_p50"];
    assert!((setup.value - 30.0).abs() < 2.0, "{setup:?}");
    assert!(p.extrapolated.is_empty(), "{:?}", p.extrapolated);
    assert!(p.not_predicted.contains_key("reload_time"));

    let outside = storm_run(5000);
    let p = predict(&c, &outside.planned);
    assert!(
        p.extrapolated
            .iter()
            .any(|e| e.starts_with("daemon_cpu: arrivals = 5000")),
        "{:?}",
        p.extrapolated
    );
    assert!(p.extrapolated.iter().any(|e| e.contains("queued")));
}

#[test]
fn fleet_plan_sizes_a_million_peers() {
    let c = calibration();
    let inputs = FleetInputs {
        peers: 2_000_000.0,
        arrivals_per_s: 500.0,
        dwell_s: 1800.0,
        evict_after_s: 180.0,
        sweep_every_s: 30.0,
        cpus_per_gateway: 4.0,
        reboot_budget_s: Some(10.0),
        storm: Some(20_000.0),
        stale_threshold_s: 180.0,
    };
    let plan = plan_fleet(&c, &inputs);
    assert!(plan.gateways >= 1);
    assert!(plan.gateways_low <= plan.gateways && plan.gateways <= plan.gateways_high);
    // 500/s × (1,800 + ~195) s ≈ 997,000 installed across the fleet: the peer limit or the
    // storm knee binds, not CPU (0.5 s of CPU per second).
    assert_ne!(plan.binding, "cpu");
    assert!(plan.per_gateway.installed_peers <= fleet::DATAPLANE_PEER_LIMIT + 1.0);
    assert!(plan
        .extrapolated
        .iter()
        .any(|e| e.contains("--cpus-per-gateway 4")));
    assert_eq!(plan.legacy_push.installed_peers, 2_000_000.0);
    assert!(plan.storm.as_ref().unwrap().below_knee.unwrap());
    assert_eq!(plan.sensitivity.len(), 6);
    assert!(plan.sensitivity[0].1.abs() >= plan.sensitivity[5].1.abs());
}

#[test]
fn html_fragment_is_self_contained_and_well_formed() {
    let html = html::section(&calibration()).unwrap();
    assert!(html.starts_with("<section"));
    assert!(
        !html.contains("http://")
            || html.matches("http://www.w3.org").count() == html.matches("http://").count()
    );
    assert!(!html.contains("<script") && !html.contains("src="));
    for model in ["daemon_cpu", "setup_p50", "daemon_rss_peak"] {
        assert!(html.contains(model), "{model}");
    }
    assert!(html.contains("knee"));
    roxmltree::Document::parse(&html).expect("well-formed fragment");
}

/// A steady JIT run with planted costs that separate what the storm runs above cannot:
/// `count` connect-once or staying clients at `rate`/s, evicted `evict_after_s` after going
/// idle; the run lasts its planned length plus 0.2 s, or 5.5 s past 1,000 arrivals in a second
/// (a WireGuard retry in the setup tail: late connections stay late);
/// jitwgd costs 1 ms per arrival plus 20 ms per second of run; the data plane holds 20 MB +
/// 8 KiB per installed peer + 6 KiB per peer it ever installed (removed ones included).
struct Synthetic {
    count: u32,
    rate: f64,
    stay_s: f64,
    evict_after_s: f64,
    /// Peak installed peers the run's samples show.
    installed_peak: u32,
}

const SYNTHETIC_SWEEP_S: f64 = 5.0;

/// Setup p50 (ms) planted with a knee at 1,000 arrivals in a second.
fn planted_setup_ms(storm: f64) -> f64 {
    30.0 * (0.01 * (storm - 1000.0).max(0.0)).exp()
}

fn synthetic(s: &Synthetic) -> CalPoint {
    let behaviour = if s.stay_s > 0.0 {
        json!({"kind": "stay", "duration": format!("{}s", s.stay_s), "traffic_every": "5s"})
    } else {
        json!({"kind": "connect_once"})
    };
    let scenario = json!({
        "name": "synthetic", "duration": "120s",
        "daemon": {"sweep_every": format!("{SYNTHETIC_SWEEP_S}s"),
                   "evict_after": format!("{}s", s.evict_after_s)},
        "population": [{"name": "s", "count": s.count,
            "arrival": {"kind": "poisson", "rate": s.rate},
            "behaviour": behaviour}]
    });
    let n = f64::from(s.count);
    let setup = planted_setup_ms(n.min(s.rate));
    let planned_run = n / s.rate + s.stay_s;
    let run_s = planned_run + if n.min(s.rate) > 1000.0 { 5.5 } else { 0.2 };
    let mut results = Results::new(RunInfo {
        resolved_scenario: scenario,
        duration_ms: run_s * 1000.0,
        ..RunInfo::default()
    });
    results.clients = (0..s.count)
        .map(|id| ClientResult {
            id,
            population: "s".into(),
            connections: vec![Connection {
                setup_latency_ms: Some(setup),
                handshake_attempts: 1,
                ..Connection::default()
            }],
        })
        .collect();
    results.samples = vec![
        Sample {
            t_ms: 0.0,
            installed_peers: u64::from(s.installed_peak),
            ..Sample::default()
        },
        Sample {
            t_ms: run_s * 1000.0,
            installed_peers: 0,
            ..Sample::default()
        },
    ];
    results.api.calls_total = u64::from(s.count);
    let installed = f64::from(s.installed_peak);
    results.processes = vec![
        usage(
            "daemon",
            0.02 * run_s + 0.001 * n,
            20e6 + 4096.0 * installed,
        ),
        usage(
            "dataplane",
            0.01 * run_s + 0.0005 * n,
            20e6 + 8192.0 * installed + 6144.0 * n,
        ),
    ];
    CalPoint::from_results(
        PathBuf::from(format!("c{}-{}-{}", s.count, s.rate, s.evict_after_s)),
        &results,
        &json!({}),
        DEFAULTS,
    )
    .unwrap()
}

/// Storms (everyone stays; installed = installs) and churns (connect once, evicted: installed
/// well below installs) with planned run lengths and storm sizes that vary independently.
fn mixed_calibration_runs() -> Vec<CalPoint> {
    let mut runs = Vec::new();
    for count in [200, 400, 600, 800, 1000, 1200, 1400, 1600] {
        runs.push(synthetic(&Synthetic {
            count,
            rate: f64::from(count),
            stay_s: 15.0,
            evict_after_s: 60.0,
            installed_peak: count,
        }));
    }
    for (evict_after_s, installed_peak) in [(10.0, 125), (20.0, 225), (30.0, 325), (45.0, 475)] {
        runs.push(synthetic(&Synthetic {
            count: 600,
            rate: 10.0,
            stay_s: 0.0,
            evict_after_s,
            installed_peak,
        }));
    }
    runs
}

#[test]
fn cpu_per_second_is_charged_for_the_run_as_it_will_last() {
    let c = Calibration::fit(&mixed_calibration_runs()).unwrap();
    let Fitted::Knee(run) = &c.model("run_overrun").expect("a run-length model").fitted else {
        panic!("the overrun is a knee fit");
    };
    let knee = run.knee.expect("the retry step is found");
    assert!((1000.0..1200.0).contains(&knee), "knee {knee}");
    assert!((run.jump() - 5.3).abs() < 1e-6, "{run:?}");
    // Held out, above the knee: a 5 s retry in the tail makes the run 5.5 s longer than planned.
    let held = synthetic(&Synthetic {
        count: 1500,
        rate: 1500.0,
        stay_s: 15.0,
        evict_after_s: 60.0,
        installed_peak: 1500,
    });
    let p = predict(&c, &held.planned);
    let measured = held.figure("daemon_cpu").unwrap();
    let predicted = p.predicted["daemon_cpu"].value;
    assert!(
        (predicted / measured - 1.0).abs() < 0.01,
        "predicted {predicted}, measured {measured}"
    );
    // The planned length alone would have missed by the setup time's CPU.
    let planned_only = 0.02 * held.planned.run_s + 0.001 * 1500.0;
    assert!((planned_only / measured - 1.0).abs() > 0.01);
    assert!(p.inputs["run_seconds"].value > held.planned.run_s);
}

#[test]
fn dataplane_memory_counts_the_peers_it_removed() {
    let c = Calibration::fit(&mixed_calibration_runs()).unwrap();
    let rss = c.model("dataplane_rss_peak").unwrap().fitted.linear();
    assert!(
        (rss.slope("installs").unwrap() - 6144.0).abs() < 1.0,
        "{rss:?}"
    );
    assert!((rss.slope("session_peers").unwrap() - 8192.0).abs() < 1.0);
    // A held-out churn: 600 installed and removed, 275 at the peak. Installed peers are
    // predicted by Little's law (10/s × (25 s + 2.5 s) = 275).
    let held = synthetic(&Synthetic {
        count: 600,
        rate: 10.0,
        stay_s: 0.0,
        evict_after_s: 25.0,
        installed_peak: 275,
    });
    let v = validate(&c, std::slice::from_ref(&held));
    let check = v
        .checks
        .iter()
        .find(|k| k.figure == "dataplane_rss_peak")
        .unwrap();
    assert_eq!(check.within_goal, Some(true), "{check:?}");
    assert!(check.error.unwrap().abs() < 0.02, "{check:?}");
    let summary = &v.summary["dataplane_rss_peak"];
    assert_eq!((summary.checks, summary.within_goal), (1, 1));
}

#[test]
fn validation_gives_setup_above_the_knee_no_goal() {
    let c = Calibration::fit(&mixed_calibration_runs()).unwrap();
    let above = synthetic(&Synthetic {
        count: 1500,
        rate: 1500.0,
        stay_s: 15.0,
        evict_after_s: 60.0,
        installed_peak: 1500,
    });
    let v = validate(&c, &[above]);
    let setup = v.checks.iter().find(|k| k.figure == "setup_p50").unwrap();
    assert_eq!(setup.tolerance, None);
    assert_eq!(setup.within_goal, None);
    assert!(setup.note.as_deref().unwrap().contains("knee"));
}

#[test]
fn setup_latency_that_grows_like_a_queue_is_fitted_on_a_linear_scale() {
    let mut runs = mixed_calibration_runs();
    for run in &mut runs {
        // A queue draining at a steady rate: 20 ms + 0.7 ms per client of the storm.
        let queue_ms = 20.0 + 0.7 * run.planned.storm_size;
        run.measured.figures.insert("setup_p50".into(), queue_ms);
    }
    let c = Calibration::fit(&runs).unwrap();
    let setup = c.model("setup_p50").unwrap();
    assert!(!setup.log_scale, "{setup:?}");
    let held = synthetic(&Synthetic {
        count: 700,
        rate: 700.0,
        stay_s: 15.0,
        evict_after_s: 60.0,
        installed_peak: 700,
    });
    let p = predict(&c, &held.planned);
    let predicted = p.predicted["setup_p50"].value;
    assert!(
        (predicted - (20.0 + 0.7 * 700.0)).abs() < 1.0,
        "{predicted}"
    );
    // The planted exponential of the other tests stays on the log scale.
    assert!(calibration().model("setup_p50").unwrap().log_scale);
}

#[test]
fn memory_of_removed_peers_is_dropped_when_the_data_do_not_show_it() {
    let mut runs = mixed_calibration_runs();
    for (i, run) in runs.iter_mut().enumerate() {
        // 8 KiB per peer with a session, nothing per removed peer, ±50 kB of noise.
        let peak = run.measured.installed_peak.unwrap();
        let noise = if i % 2 == 0 { 5e4 } else { -5e4 };
        let rss = 20e6 + 8192.0 * peak + noise;
        run.measured
            .figures
            .insert("dataplane_rss_peak".into(), rss);
    }
    let c = Calibration::fit(&runs).unwrap();
    let rss = c.model("dataplane_rss_peak").unwrap().fitted.linear();
    assert_eq!(rss.slope("installs"), None, "{rss:?}");
    assert!((rss.slope("session_peers").unwrap() - 8192.0).abs() < 200.0);
}

/// Setup p50 planted as a fluid queue: 20 ms of service plus 2 ms per client left waiting when
/// `count` clients arrive at `rate`/s at a gateway that sets up 400 peers/s.
fn planted_queue_ms(count: f64, rate: f64) -> f64 {
    20.0 + 2.0 * count * (1.0 - 400.0 / rate).max(0.0)
}

fn queue_run(count: u32, rate: f64) -> CalPoint {
    let mut run = synthetic(&Synthetic {
        count,
        rate,
        stay_s: 5.0,
        evict_after_s: 60.0,
        installed_peak: count,
    });
    let ms = planted_queue_ms(f64::from(count), rate);
    run.measured.figures.insert("setup_p50".into(), ms);
    run
}

#[test]
fn setup_latency_knows_a_queue_from_a_busy_second() {
    // A rate sweep (300 clients at 10/s ... 2,500/s) beside a storm sweep at 2,500/s.
    let mut runs: Vec<CalPoint> = [10.0, 40.0, 150.0, 300.0, 600.0, 1200.0, 2500.0]
        .into_iter()
        .map(|rate| queue_run(300, rate))
        .collect();
    runs.extend(
        [50, 100, 200, 400, 800]
            .into_iter()
            .map(|n| queue_run(n, 2500.0)),
    );
    let c = Calibration::fit(&runs).unwrap();
    let drain = c.drain_per_s.expect("a drain rate");
    assert!((drain / 400.0 - 1.0).abs() < 0.06, "drain {drain}");
    let setup = c.model("setup_p50").unwrap();
    assert!(setup.fitted.linear().r_squared.unwrap() > 0.99, "{setup:?}");
    // A churn of 600 at 10/s: the busiest second holds 10, none waits: the service time.
    let churn = predict(&c, &queue_run(600, 10.0).planned);
    assert!(
        (churn.predicted["setup_p50"].value - 20.0).abs() < 3.0,
        "{:?}",
        churn.predicted["setup_p50"]
    );
    assert_eq!(churn.inputs["queued"].value, 0.0);
    // Held out between the rates: 300 at 1,000/s leave 180 waiting.
    let between = predict(&c, &queue_run(300, 1000.0).planned);
    let want = planted_queue_ms(300.0, 1000.0);
    let got = between.predicted["setup_p50"].value;
    assert!((got / want - 1.0).abs() < 0.05, "{got} vs {want}");

    // The storms alone (one rate) cannot tell a drain rate from a wave's size: the tie goes to
    // the lowest drain, and the rate runs' churn would be over-predicted.
    let storms: Vec<CalPoint> = [50, 100, 200, 400, 800]
        .into_iter()
        .map(|n| queue_run(n, 2500.0))
        .collect();
    let only_storms = Calibration::fit(&storms).unwrap();
    assert_eq!(only_storms.drain_per_s, Some(0.0));
    let churn = predict(&only_storms, &queue_run(600, 10.0).planned);
    assert!(churn.predicted["setup_p50"].value > 100.0, "{churn:?}");
}

mod cpu;
