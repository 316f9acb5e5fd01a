//! Unit tests of the merge: shards, the gateway's series, and what only the shards saw.

use super::*;
use jitwg_reports::{ClientResult, Connection, RunInfo};

fn run(name: &str, seed: u64) -> RunInfo {
    RunInfo {
        scenario_name: name.into(),
        seed,
        ..RunInfo::default()
    }
}

fn shard(index: u32, count: u32, ids: &[u32], seed: u64) -> Input {
    let mut r = Results::new(run("smoke", seed));
    let latencies: Vec<f64> = ids.iter().map(|&id| 1.0 + f64::from(id)).collect();
    r.clients = ids
        .iter()
        .zip(&latencies)
        .map(|(&id, &ms)| ClientResult {
            id,
            population: "p".into(),
            connections: vec![Connection {
                setup_latency_ms: Some(ms),
                ..Connection::default()
            }],
        })
        .collect();
    let hist = jitwg_reports::shards::setup_histogram(&latencies);
    r.run.shards = vec![ShardInfo {
        index,
        count,
        clients: ids.len() as u64,
        source_addresses: ids.len() as u64,
        setup_histogram_us: jitwg_reports::shards::encode_histogram(&hist).unwrap(),
        load: Some(LoadSummary {
            saturated: index == 1,
            reasons: vec!["lag p99 50 ms > 20 ms".into()],
            ..LoadSummary::default()
        }),
        ..ShardInfo::default()
    }];
    Input {
        path: PathBuf::from(format!("shard-{index}")),
        results: r,
    }
}

fn gateway(seed: u64) -> Input {
    Input {
        path: "gw".into(),
        results: Results::new(run("smoke", seed)),
    }
}

#[test]
fn merges_clients_histograms_and_keeps_each_shards_load() {
    let merged = merge(vec![
        shard(1, 2, &[1, 3], 7),
        gateway(7),
        shard(0, 2, &[0, 2], 7),
    ])
    .unwrap();
    let ids: Vec<u32> = merged.clients.iter().map(|c| c.id).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    assert_eq!(merged.run.shards.len(), 2);
    assert_eq!(merged.run.source_addresses, Some(4));
    assert_eq!(merged.run.shards[0].index, 0);
    let setup = merged.run.merged_setup.unwrap();
    assert_eq!(setup.count, 4);
    assert!((setup.max_ms.unwrap() - 4.0).abs() < 0.01);
    let load = merged.load.unwrap();
    assert!(load.saturated);
    assert_eq!(load.reasons, ["shard 1: lag p99 50 ms > 20 ms"]);
}

#[test]
fn refuses_different_seeds_scenarios_duplicates_and_gaps() {
    let e = merge(vec![shard(0, 2, &[0], 7), shard(1, 2, &[1], 8)]).unwrap_err();
    assert!(e.to_string().contains("seed"), "{e}");
    let mut other = shard(1, 2, &[1], 7);
    other.results.run.scenario_name = "storm".into();
    let e = merge(vec![shard(0, 2, &[0], 7), other]).unwrap_err();
    assert!(e.to_string().contains("scenario"), "{e}");
    let e = merge(vec![shard(0, 2, &[0], 7), shard(0, 2, &[0], 7)]).unwrap_err();
    assert!(matches!(e, MergeError::DuplicateShard { .. }), "{e}");
    let e = merge(vec![shard(0, 3, &[0], 7), gateway(7)]).unwrap_err();
    assert!(matches!(e, MergeError::MissingShards { ref missing, .. } if missing == &[1, 2]));
    assert!(matches!(merge(vec![gateway(7)]), Err(MergeError::NoShards)));
}

fn sample(t_ms: f64) -> jitwg_reports::Sample {
    jitwg_reports::Sample {
        t_ms,
        installed_peers: 4,
        ..jitwg_reports::Sample::default()
    }
}

fn counts(points: &[(f64, u64, u64)]) -> Vec<ClientCount> {
    points
        .iter()
        .map(|&(t_ms, connected, in_flight)| ClientCount {
            t_ms,
            connected,
            in_flight,
        })
        .collect()
}

/// Regression: the merged samples showed 0 connected clients (the gateway's own count).
#[test]
fn merged_samples_count_connected_clients_from_the_shards_own_samples() {
    let mut gw = gateway(7);
    // The gateway samples a little after each second; its last sample comes after the end.
    gw.results.samples = [0.0, 1_030.0, 2_040.0, 3_050.0, 6_000.0]
        .into_iter()
        .map(sample)
        .collect();
    gw.results
        .run
        .warnings
        .push(crate::shard::GATEWAY_SERIES_WARNING.into());
    let mut a = shard(0, 2, &[0, 2], 7);
    a.results.run.shards[0].client_counts = counts(&[
        (0.0, 0, 0),
        (1_000.0, 1, 1),
        (2_000.0, 2, 0),
        (3_010.0, 2, 0),
        (3_500.0, 0, 0),
    ]);
    let mut b = shard(1, 2, &[1, 3], 7);
    // A shard whose clock runs slightly ahead of the gateway's estimate: still the same second.
    b.results.run.shards[0].client_counts = counts(&[
        (1.0, 0, 1),
        (1_100.0, 1, 0),
        (2_090.0, 2, 0),
        (3_090.0, 1, 0),
        (3_400.0, 0, 0),
    ]);
    let merged = merge(vec![gw, a, b]).unwrap();
    let connected: Vec<u64> = merged.samples.iter().map(|s| s.connected_clients).collect();
    let in_flight: Vec<u64> = merged.samples.iter().map(|s| s.in_flight).collect();
    assert_eq!(connected, [0, 2, 4, 3, 0]);
    assert_eq!(in_flight, [1, 1, 0, 0, 0]);
    assert_eq!(
        merged.samples[1].installed_peers, 4,
        "the gateway's own figures stay"
    );
    assert!(!merged
        .run
        .warnings
        .iter()
        .any(|w| w == crate::shard::GATEWAY_SERIES_WARNING));
}

#[test]
fn shards_without_counts_are_named_in_a_warning() {
    let mut gw = gateway(7);
    gw.results.samples = vec![sample(0.0), sample(1_000.0)];
    let merged = merge(vec![gw, shard(0, 1, &[0], 7)]).unwrap();
    assert!(merged
        .run
        .warnings
        .iter()
        .any(|w| w.contains("shards [0] recorded no client counts")));
}

fn with_recovery(mut input: Input, clients: u64, recovered_ms: &[f64]) -> Input {
    input.results.run.shards[0].recovery = Some(ShardRecovery {
        clients,
        recovered_ms: recovered_ms.to_vec(),
    });
    input
}

fn rebooted_gateway() -> Input {
    let mut gw = gateway(7);
    gw.results.reload = Some(jitwg_reports::Reload {
        reboot_start_ms: 10_000.0,
        reboot_at_ms: 10_050.0,
        ..jitwg_reports::Reload::default()
    });
    gw
}

#[test]
fn recovery_combines_every_shards_clients() {
    let merged = merge(vec![
        rebooted_gateway(),
        with_recovery(shard(0, 2, &[0, 2], 7), 2, &[100.0, 3_000.0]),
        with_recovery(shard(1, 2, &[1, 3], 7), 1, &[200.0]),
    ])
    .unwrap();
    let reload = merged.reload.as_ref().unwrap();
    assert_eq!((reload.recovery_clients, reload.recovered_clients), (3, 3));
    assert_eq!(reload.recovery_after_ms, Some(3_000.0));
    assert_eq!(reload.recovery_p50_ms, Some(200.0));
    assert_eq!(reload.recovery_p99_ms, Some(3_000.0));
    let recovered: Vec<f64> = merged
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Recovered)
        .map(|e| e.t_ms)
        .collect();
    assert_eq!(recovered, [13_000.0]);
    let figures = Figures::from_results(&merged);
    assert_eq!(figures.recovery_time_ms, Some(3_000.0));

    // One client that never came back: the time is not measured, the percentiles still are.
    let merged = merge(vec![
        rebooted_gateway(),
        with_recovery(shard(0, 2, &[0, 2], 7), 2, &[100.0]),
        with_recovery(shard(1, 2, &[1, 3], 7), 1, &[200.0]),
    ])
    .unwrap();
    let reload = merged.reload.unwrap();
    assert_eq!((reload.recovery_clients, reload.recovered_clients), (3, 2));
    assert_eq!(reload.recovery_after_ms, None);
    assert_eq!(reload.recovery_p99_ms, Some(200.0));

    // A shard that could not measure it: nothing is claimed.
    let merged = merge(vec![
        rebooted_gateway(),
        with_recovery(shard(0, 2, &[0, 2], 7), 2, &[100.0, 3_000.0]),
        shard(1, 2, &[1, 3], 7),
    ])
    .unwrap();
    assert_eq!(merged.reload.as_ref().unwrap().recovery_p50_ms, None);
    assert!(merged
        .run
        .warnings
        .iter()
        .any(|w| w.contains("1 of 2 shards")));
}

#[test]
fn the_merged_report_and_summary_have_a_row_per_shard() {
    let merged = merge(vec![
        gateway(7),
        shard(0, 2, &[0, 2], 7),
        shard(1, 2, &[1, 3], 7),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = jitwg_reports::write_report(&merged, dir.path()).unwrap();
    let html = std::fs::read_to_string(paths.html).unwrap();
    let md = std::fs::read_to_string(paths.markdown).unwrap();
    assert!(
        html.contains("<h2>Shards</h2>"),
        "no shard table in the HTML report"
    );
    for head in jitwg_reports::shards::SHARD_HEADS {
        assert!(html.contains(&format!("<th>{head}</th>")), "{head}");
    }
    assert!(html.contains("<td>1/2</td><td>2</td>"), "{html}");
    assert!(md.contains("## Shards"), "{md}");
    assert!(md.contains("| 0/2 | 2 |"), "{md}");
    assert!(
        md.contains("| 1/2 | 2 | 0 | - / - | yes: lag p99 50 ms > 20 ms | 2 | - |"),
        "{md}"
    );
}

#[test]
fn a_shards_per_source_warning_reaches_the_merged_results() {
    let (sources, warning) = crate::shard::spec::source_summary(
        &(0..30)
            .map(|i| {
                (
                    std::net::Ipv4Addr::new(10, 0, 0, 1),
                    std::time::Duration::from_millis(i * 10),
                )
            })
            .collect::<Vec<_>>(),
    );
    let warning = warning.expect("30 handshakes in 0.3 s from one address");
    let mut a = shard(0, 2, &[0, 2], 7);
    a.results.run.warnings.push(warning.clone());
    a.results.run.shards[0].warnings.push(warning.clone());
    a.results.run.shards[0].source_addresses = sources;
    let merged = merge(vec![gateway(7), a, shard(1, 2, &[1, 3], 7)]).unwrap();
    assert!(merged.run.warnings.contains(&format!("shard 0: {warning}")));
    assert_eq!(merged.run.shards[0].warnings, [warning]);
    assert_eq!(merged.run.source_addresses, Some(1 + 2));
}

/// `input` with its shard's load carrying these receive lags (ms).
fn with_rx_lags(mut input: Input, lags_ms: &[f64]) -> Input {
    let load = input.results.run.shards[0].load.as_mut().unwrap();
    jitwg_reports::load::set_rx_lag(load, &jitwg_reports::shards::setup_histogram(lags_ms));
    input
}

#[test]
fn receive_lag_comes_from_the_sum_of_the_shards_histograms() {
    // Shard 0 read 99 datagrams promptly, shard 1 one datagram 2 s late: over all 100 the p99
    // is prompt and the count is exact (a mean of the shards' p99s would say ~1 s).
    let merged = merge(vec![
        with_rx_lags(shard(0, 2, &[0], 7), &[0.2; 99]),
        with_rx_lags(shard(1, 2, &[1], 7), &[2_000.0]),
    ])
    .unwrap();
    let load = merged.load.unwrap();
    assert_eq!(load.rx_lag_datagrams, 100);
    assert_eq!(
        (load.rx_lag_p50_ms, load.rx_lag_p99_ms),
        (Some(0.2), Some(0.2))
    );
    assert!(load.rx_lag_histogram_us.is_some());
    // Shards from before receive lag was measured: no figure.
    let old = merge(vec![shard(0, 2, &[0], 7), shard(1, 2, &[1], 7)]).unwrap();
    assert_eq!(old.load.unwrap().rx_lag_p99_ms, None);
    // A corrupt histogram is an error, not a silently smaller count.
    let mut broken = shard(1, 2, &[1], 7);
    broken.results.run.shards[0]
        .load
        .as_mut()
        .unwrap()
        .rx_lag_histogram_us = Some("zz".into());
    assert!(matches!(
        merge(vec![shard(0, 2, &[0], 7), broken]),
        Err(MergeError::Histogram(_))
    ));
}
