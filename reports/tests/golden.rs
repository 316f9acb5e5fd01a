//! Golden numbers: figures, expectation breaches and comparison deltas computed from the hand-written
//! fixture `data/fixed-results.json`, asserted against values worked out by hand (see comments).

use std::collections::BTreeMap;

use jitwg_reports::compare::{compare, format_change, Verdict};
use jitwg_reports::summary::{compared_figures, verdict};
use jitwg_reports::{evaluate, figure, load, parse_expectations, Figures, Results};

mod common;
use common::{fixed, fixture};

fn value(figures: &Figures, name: &str) -> Option<f64> {
    (figure(name).unwrap().get)(figures)
}

#[test]
fn figures_of_the_fixed_run() {
    let f = Figures::from_results(&fixed());
    // 11 clients; client 5 made two attempts: 12 attempts, clients 8 and 9 failed.
    assert_eq!(f.clients, 11);
    assert_eq!(f.connections, 12);
    assert_eq!(f.connected, 10);
    assert_eq!(f.failed, 2);
    assert_eq!(f.connected_ratio, Some(10.0 / 12.0));
    // Sorted latencies: 1 2 3 4 5 6 7 8 9 5200 (n = 10), nearest rank ceil(p/100 * n):
    // p50 -> rank 5 = 5 ms, p90 -> rank 9 = 9 ms, p99 -> rank 10 = 5200 ms.
    assert_eq!(f.setup_p50_ms, Some(5.0));
    assert_eq!(f.setup_p90_ms, Some(9.0));
    assert_eq!(f.setup_p99_ms, Some(5200.0));
    assert_eq!(f.setup_max_ms, Some(5200.0));
    assert_eq!(f.setup_histogram_us.len(), 10);
    // per_key: 2, 5, 1 x 7 -> max 5, two keys asked more than once.
    assert_eq!(f.api_calls_total, 14);
    assert_eq!(f.api_calls_per_key_max, 5);
    assert_eq!(f.api_duplicate_keys, 2);
    // Samples installed 0 5 10 8 3, stale 0 0 2 6 1.
    assert_eq!(f.installed_peers_max, Some(10));
    assert_eq!(f.stale_peers_max, Some(6));
    assert_eq!(f.stale_peers_final, Some(1));
    assert_eq!(f.reload_time_ms, Some(1200.0));
    assert_eq!(f.reconnect_time_ms, Some(3400.0));
    assert_eq!(value(&f, "daemon_rss_peak"), Some(52_428_800.0));
    assert_eq!(value(&f, "dataplane_cpu"), Some(3.5));
    assert_eq!(value(&f, "driver_rss_peak"), Some(209_715_200.0));
}

#[test]
fn breaches_of_the_fixed_run() {
    let f = Figures::from_results(&fixed());
    let table: BTreeMap<String, String> = [
        ("setup_p99", "<= 50ms"),          // 5200 ms: breach
        ("setup_p90", "<= 10ms"),          // 9 ms: pass
        ("connected_ratio", ">= 80%"),     // 0.8333: pass
        ("api_calls_per_key_max", "<= 1"), // 5: breach
        ("reload_time", "<= 1.2s"),        // 1200 ms: pass (boundary)
        ("stale_peers_final", "== 1"),     // 1: pass
        ("daemon_rss_peak", "< 50MiB"),    // exactly 50 MiB: breach
        ("failed", "== 0"),                // 2: breach
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let results = evaluate(&parse_expectations(&table).unwrap(), &f);
    let outcome: BTreeMap<&str, (bool, Option<f64>)> = results
        .iter()
        .map(|r| (r.figure.as_str(), (r.passed, r.measured)))
        .collect();
    assert_eq!(outcome["setup_p99"], (false, Some(5200.0)));
    assert_eq!(outcome["setup_p90"], (true, Some(9.0)));
    assert_eq!(outcome["connected_ratio"], (true, Some(10.0 / 12.0)));
    assert_eq!(outcome["api_calls_per_key_max"], (false, Some(5.0)));
    assert_eq!(outcome["reload_time"], (true, Some(1200.0)));
    assert_eq!(outcome["stale_peers_final"], (true, Some(1.0)));
    assert_eq!(outcome["daemon_rss_peak"], (false, Some(52_428_800.0)));
    assert_eq!(outcome["failed"], (false, Some(2.0)));
    assert_eq!(results.iter().filter(|r| !r.passed).count(), 4);
}

#[test]
fn verdict_of_the_fixed_run_reports_stored_breaches() {
    let r = fixed();
    let text = verdict(&r, &Figures::from_results(&r));
    assert!(
        text.starts_with("FAILED: scenario \"fixed\" breached 2 of 3 expectations"),
        "{text}"
    );
    assert!(
        text.contains("setup_p99 <= 50ms (measured 5200 ms)"),
        "{text}"
    );
    assert!(
        text.contains("api_calls_per_key_max <= 1 (measured 5)"),
        "{text}"
    );
    assert!(
        text.contains("connected_ratio >= 80% (measured 83.33 %)"),
        "{text}"
    );
    assert!(
        text.contains("10 of 12 connection attempts connected (2 failed) from 11 clients"),
        "{text}"
    );
}

/// The fixture with three figures moved by known amounts.
fn candidate() -> Results {
    let mut r = fixed();
    // Key "111..." 5 -> 10 requests: api_calls_per_key_max 5 -> 10, +100 %.
    *r.api.per_key.get_mut(&"1".repeat(64)).unwrap() = 10;
    // Daemon RSS 50 MiB -> 60 MiB: +20 %.
    r.processes[0].peak_rss_bytes = 62_914_560;
    // Reload 1200 ms -> 900 ms: -25 %.
    r.reload.as_mut().unwrap().ready_after_ms = Some(900.0);
    // Drop the slowest attempt's success: connected 10 -> 9 of 12, p99 5200 -> 9 ms.
    r.clients[6].connections[0].setup_latency_ms = None;
    r
}

#[test]
fn comparison_deltas_and_verdicts() {
    let base = Figures::from_results(&fixed());
    let cand = Figures::from_results(&candidate());
    let c = compare(&base, &cand, 0.10);
    let row = |name: &str| c.rows.iter().find(|r| r.figure.name == name).unwrap();

    assert_eq!(row("api_calls_per_key_max").change, Some(1.0));
    assert_eq!(row("api_calls_per_key_max").verdict, Verdict::Regressed);
    assert_eq!(row("daemon_rss_peak").change, Some(0.2));
    assert_eq!(row("daemon_rss_peak").verdict, Verdict::Regressed);
    assert_eq!(row("reload_time").change, Some(-0.25));
    assert_eq!(row("reload_time").verdict, Verdict::Improved);
    // connected 10 -> 9: -10 % exactly, within a 10 % tolerance; failed 2 -> 3: +50 %.
    assert_eq!(row("connected").change, Some(-0.1));
    assert_eq!(row("connected").verdict, Verdict::Unchanged);
    assert_eq!(row("failed").change, Some(0.5));
    assert_eq!(row("failed").verdict, Verdict::Regressed);
    // p99 5200 -> 9 ms: (9 - 5200) / 5200.
    assert_eq!(row("setup_p99").change, Some((9.0 - 5200.0) / 5200.0));
    assert_eq!(row("setup_p99").verdict, Verdict::Improved);
    assert_eq!(row("clients").change, Some(0.0));
    assert_eq!(format_change(row("reload_time").change), "-25.0 %");

    let names: Vec<&str> = c.regressions().iter().map(|r| r.figure.name).collect();
    assert_eq!(
        names,
        vec![
            "connected_ratio",
            "failed",
            "api_calls_per_key_max",
            "daemon_rss_peak"
        ]
    );
    // connected_ratio 10/12 -> 9/12 is -10 % as well, but the float division lands just beyond it.
    let ratio = row("connected_ratio").change.unwrap();
    assert!((ratio + 0.1).abs() < 1e-12, "{ratio}");

    let side_by_side = compared_figures(&[base, cand], 0.10);
    let per_key = side_by_side
        .iter()
        .find(|r| r.figure.name == "api_calls_per_key_max")
        .unwrap();
    assert_eq!(per_key.cells[0].text, "5");
    assert_eq!(per_key.cells[1].text, "10");
    assert_eq!(per_key.cells[1].change.as_deref(), Some("+100.0 %"));
}

/// Files written before jitwgd's own API count was recorded still load, with nothing to check;
/// the new fields round-trip when present.
#[test]
fn api_sent_by_daemon_is_optional_in_older_files_and_round_trips() {
    for name in ["fixed-results.json", "v0-results.json"] {
        let r = load(fixture(name)).unwrap();
        assert_eq!(r.api.sent_by_daemon, None, "{name}");
        assert!(r.api.sent_by_daemon_by_outcome.is_empty(), "{name}");
        assert_eq!(jitwg_reports::api_accounting(&r), None, "{name}");
    }
    let mut r = fixed();
    r.api.sent_by_daemon = Some(7);
    r.api.sent_by_daemon_by_outcome = [("ok".to_string(), 5), ("timeout".to_string(), 2)].into();
    r.api
        .by_status
        .insert(jitwg_reports::BY_STATUS_ABORTED.into(), 2);
    let back = Results::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back, r);
}
