//! Tests of the figures computed from a run's results: percentiles, ratios and their edge cases.

use super::*;
use crate::schema::{ClientResult, Connection, RunInfo};

fn with_latencies(latencies: &[Option<f64>]) -> Results {
    let mut r = Results::new(RunInfo::default());
    for (i, l) in latencies.iter().enumerate() {
        r.clients.push(ClientResult {
            id: i as u32,
            population: "p".into(),
            connections: vec![Connection {
                setup_latency_ms: *l,
                ..Connection::default()
            }],
        });
    }
    r
}

#[test]
fn nearest_rank_matches_definition() {
    let v: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(nearest_rank(&v, 50.0), Some(5.0));
    assert_eq!(nearest_rank(&v, 90.0), Some(9.0));
    assert_eq!(nearest_rank(&v, 99.0), Some(10.0));
    assert_eq!(nearest_rank(&v, 0.0), Some(1.0));
    assert_eq!(nearest_rank(&[], 50.0), None);
}

#[test]
fn failures_lower_the_ratio_not_the_percentiles() {
    let f = Figures::from_results(&with_latencies(&[Some(2.0), None, Some(4.0), None]));
    assert_eq!(f.connections, 4);
    assert_eq!(f.connected, 2);
    assert_eq!(f.failed, 2);
    assert_eq!(f.connected_ratio, Some(0.5));
    assert_eq!(f.setup_max_ms, Some(4.0));
    assert_eq!(f.setup_histogram_us.len(), 2);
}

#[test]
fn empty_run_measures_nothing_but_counts() {
    let f = Figures::from_results(&with_latencies(&[]));
    assert_eq!(f.connected_ratio, None);
    assert_eq!(f.setup_p50_ms, None);
    assert_eq!(f.installed_peers_max, None);
    assert_eq!((figure("failed").unwrap().get)(&f), Some(0.0));
    assert_eq!((figure("reload_time").unwrap().get)(&f), None);
}

#[test]
fn registry_has_every_briefed_name() {
    for name in [
        "connected_ratio",
        "failed",
        "setup_p50",
        "setup_p90",
        "setup_p99",
        "setup_max",
        "api_calls_total",
        "api_calls_per_key_max",
        "stale_peers_max",
        "stale_peers_final",
        "installed_peers_max",
        "reload_time",
        "recovery_time",
        "recovery_p50",
        "recovery_p99",
        "never_handshaked_max",
        "daemon_rss_peak",
        "dataplane_rss_peak",
        "driver_rss_peak",
        "daemon_cpu",
        "dataplane_cpu",
    ] {
        assert!(figure(name).is_some(), "{name}");
    }
    assert!(figure("nope").is_none());
    // Replaced by recovery_time (schema 2): it measured the clients' own return schedule.
    assert!(figure("reconnect_time").is_none());
}

#[test]
fn driver_cpu_per_client_divides_by_clients() {
    let mut r = with_latencies(&[Some(1.0), Some(2.0), None, Some(3.0)]);
    r.processes.push(crate::schema::ProcessUsage {
        name: "driver".into(),
        cpu_seconds: 2.0,
        peak_rss_bytes: 0,
    });
    let get = figure("driver_cpu_per_client_ms").unwrap().get;
    assert_eq!(get(&Figures::from_results(&r)), Some(500.0));
    assert_eq!(get(&Figures::from_results(&with_latencies(&[]))), None);
}

#[test]
fn gateway_udp_drops_are_the_receive_buffer_drops_and_absent_in_older_files() {
    let get = figure("gateway_udp_drops").unwrap().get;
    let older = with_latencies(&[Some(1.0)]);
    assert_eq!(get(&Figures::from_results(&older)), None);
    let mut r = older.clone();
    r.gateway_udp = Some(crate::schema::GatewayUdp {
        in_datagrams: 40_000,
        rcvbuf_errors: 646,
        in_errors: 650,
    });
    assert_eq!(get(&Figures::from_results(&r)), Some(646.0));
    // It survives the file round trip; a file without it still loads.
    let back = crate::schema::Results::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back.gateway_udp, r.gateway_udp);
    let text = older.to_json().unwrap();
    assert!(!text.contains("gateway_udp"));
    assert_eq!(
        crate::schema::Results::from_json(&text)
            .unwrap()
            .gateway_udp,
        None
    );
}

#[test]
fn units_format_readably() {
    assert_eq!(Unit::Ms.format(1.5), "1.50 ms");
    assert_eq!(Unit::Ms.format(5300.0), "5300 ms");
    assert_eq!(Unit::Ms.format(12_500.0), "12.50 s");
    assert_eq!(Unit::Ratio.format(0.995), "99.50 %");
    assert_eq!(Unit::Bytes.format(200.0 * 1024.0 * 1024.0), "200.0 MiB");
}
