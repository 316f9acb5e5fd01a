//! Rendering: every chart is valid SVG for empty, one-point and large runs; reports are self-contained
//! (no script, no external reference); older results files still render and newer ones are refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use jitwg_reports::charts::{self, all_charts, Chart};
use jitwg_reports::{
    load, text_summary, write_comparison, write_report, ClientResult, Connection, Event, EventKind,
    LoadError, Reload, Results, RunInfo, Sample, SCHEMA_VERSION,
};

mod common;
use common::{fixed, fixture};

/// Parses `svg` as XML and checks it is an `<svg>` document; returns the number of drawn polylines.
fn check_svg(title: &str, svg: &str) -> usize {
    let doc = roxmltree::Document::parse(svg)
        .unwrap_or_else(|e| panic!("{title}: invalid SVG: {e}\n{svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg", "{title}");
    doc.descendants()
        .filter(|n| n.tag_name().name() == "polyline")
        .count()
}

fn check_all(runs: &[(&str, &Results)], expected_charts: usize) -> Vec<Chart> {
    let charts = all_charts(runs).unwrap();
    assert_eq!(charts.len(), expected_charts);
    for chart in &charts {
        check_svg(&chart.title, &chart.svg);
    }
    charts
}

fn one_point() -> Results {
    let mut r = Results::new(RunInfo::default());
    r.clients.push(ClientResult {
        id: 1,
        population: "p".into(),
        connections: vec![Connection {
            started_ms: 0.0,
            setup_latency_ms: Some(1.5),
            handshake_attempts: 1,
            ..Connection::default()
        }],
    });
    r.samples.push(Sample {
        t_ms: 0.0,
        installed_peers: 1,
        connected_clients: 1,
        api_calls_total: 1,
        ..Sample::default()
    });
    r.reload = Some(Reload {
        reboot_at_ms: 0.0,
        ready_after_ms: Some(3.0),
        peers_at_boot: 0,
        all_reconnected_after_ms: None,
    });
    r
}

/// `clients` clients (1 % failing, latencies spread from 1 ms to ~6 s) and `seconds` samples.
fn large(clients: u32, seconds: u32) -> Results {
    let mut r = Results::new(RunInfo::default());
    r.clients = (0..clients)
        .map(|i| ClientResult {
            id: i,
            population: "bulk".into(),
            connections: vec![Connection {
                started_ms: f64::from(i % seconds) * 1000.0,
                setup_latency_ms: (i % 100 != 0).then(|| {
                    let base = 1.0 + f64::from(i % 997) / 100.0;
                    if i % 20 == 0 {
                        base + 5000.0
                    } else {
                        base
                    }
                }),
                handshake_attempts: 1,
                ..Connection::default()
            }],
        })
        .collect();
    r.samples = (0..seconds)
        .map(|s| {
            let mut lookups = BTreeMap::new();
            lookups.insert("api_found".to_string(), u64::from(s) * 10);
            lookups.insert("cache_hit".to_string(), u64::from(s) * 3);
            Sample {
                t_ms: f64::from(s) * 1000.0,
                installed_peers: u64::from(s * 13 % 50_000),
                stale_peers: u64::from(s * 7 % 1000),
                connected_clients: u64::from(s * 13 % 50_000),
                in_flight: u64::from(s % 200),
                api_calls_total: u64::from(s) * 10,
                lookups,
                processes: Vec::new(),
            }
        })
        .collect();
    r.events = vec![
        Event {
            t_ms: 600_000.0,
            kind: EventKind::ApiOutageStart,
            detail: String::new(),
        },
        Event {
            t_ms: 900_000.0,
            kind: EventKind::ApiOutageEnd,
            detail: String::new(),
        },
        Event {
            t_ms: 1_800_000.0,
            kind: EventKind::RebootStart,
            detail: String::new(),
        },
    ];
    r.reload = Some(Reload {
        reboot_at_ms: 1_800_000.0,
        ready_after_ms: Some(812.0),
        peers_at_boot: 50_000,
        all_reconnected_after_ms: Some(7_400.0),
    });
    r
}

#[test]
fn empty_run_renders_no_data_notes_not_lines() {
    let r = Results::new(RunInfo::default());
    let charts = all_charts(&[("empty", &r)]).unwrap();
    // No reload: the reload timeline is left out.
    assert_eq!(charts.len(), 5);
    for chart in &charts {
        assert_eq!(check_svg(&chart.title, &chart.svg), 0, "{}", chart.title);
        assert!(chart.svg.contains("no data"), "{}", chart.title);
    }
    // Asked directly, the reload chart says so too.
    let reload = charts::reload_timeline(&[("empty", &r)]).unwrap();
    check_svg("reload", &reload);
    assert!(reload.contains("no data"));
}

#[test]
fn one_point_run_renders_every_chart() {
    let r = one_point();
    let charts = check_all(&[("one", &r)], 6);
    // Stale peers are 0 (a measured value, drawn); lookups were never reported (noted, not drawn).
    let api = charts.iter().find(|c| c.title.contains("API")).unwrap();
    assert!(api.svg.contains("lookups: no data"));
    assert!(!charts[0].svg.contains("no data"));
}

#[test]
fn large_run_renders_fast_and_valid() {
    // The size; the timing bound is checked in release builds (`cargo test --release`).
    let r = large(50_000, 3600);
    let started = Instant::now();
    let charts = check_all(&[("large", &r)], 6);
    let dir = tempfile::tempdir().unwrap();
    write_report(&r, dir.path()).unwrap();
    let elapsed = started.elapsed();
    for chart in &charts {
        assert!(
            chart.svg.len() < 2_000_000,
            "{} is {} bytes",
            chart.title,
            chart.svg.len()
        );
    }
    if !cfg!(debug_assertions) {
        assert!(elapsed.as_secs_f64() < 10.0, "rendering took {elapsed:?}");
    }
}

#[test]
fn comparison_overlays_every_run() {
    let a = fixed();
    let b = one_point();
    let charts = check_all(&[("a", &a), ("b", &b)], 6);
    let cdf = &charts[0].svg;
    assert!(cdf.contains("a: setup latency") && cdf.contains("b: setup latency"));
}

/// The HTML must stand alone: no script, no external reference of any kind.
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "script in report");
    assert!(!lower.contains("href=\"http"), "external link in report");
    assert!(!lower.contains("src="), "external source in report");
    assert!(
        !lower.contains("@import") && !lower.contains("url("),
        "external CSS in report"
    );
}

/// Every inline SVG of the HTML parses as XML.
fn check_inline_svgs(html: &str) -> usize {
    let mut count = 0;
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..].find("</svg>").expect("unclosed svg") + start + "</svg>".len();
        check_svg("inline", &rest[start..end]);
        count += 1;
        rest = &rest[end..];
    }
    count
}

#[test]
fn report_is_one_self_contained_file_in_order() {
    let r = fixed();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested/report");
    let paths = write_report(&r, &out).unwrap();
    assert_eq!(paths.html, out.join("report.html"));
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert_self_contained(&html);
    assert_eq!(check_inline_svgs(&html), 6);
    let verdict = html
        .find("FAILED: scenario &quot;fixed&quot; breached 2 of 3")
        .unwrap();
    let table = html.find("<h2>Summary</h2>").unwrap();
    let charts = html.find("<h2>Charts</h2>").unwrap();
    assert!(verdict < table && table < charts);
    for label in [
        "setup p90",
        "API calls per key (max)",
        "stale peers (peak)",
        "reload time",
        "daemon peak RSS",
        "driver CPU",
    ] {
        assert!(html.contains(label), "{label}");
    }
    // Scenario events are marked on the timeline.
    assert!(html.contains("reboot") && html.contains("API outage"));

    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(md.starts_with("# jitwg report: fixed\n\nFAILED: scenario \"fixed\" breached 2 of 3"));
    assert!(md.contains("| setup p99 | 5200 ms | `setup_p99` |"), "{md}");
    assert!(
        md.contains("| reload time | 1200 ms | `reload_time` |"),
        "{md}"
    );
}

#[test]
fn comparison_report_has_side_by_side_changes() {
    let base = fixed();
    let mut cand = fixed();
    cand.reload.as_mut().unwrap().ready_after_ms = Some(900.0);
    cand.run.scenario_name = "fixed-<b>".into();
    let dir = tempfile::tempdir().unwrap();
    let runs = vec![("base".to_string(), base), ("cand <b>".to_string(), cand)];
    let paths = write_comparison(&runs, dir.path()).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert_self_contained(&html);
    assert!(!html.contains("<b>"), "labels must be escaped");
    assert_eq!(check_inline_svgs(&html), 6);
    assert!(html.contains("-25.0 %"));
    let md = std::fs::read_to_string(&paths.markdown).unwrap();
    assert!(
        md.contains("| reload time | 1200 ms | 900 ms | -25.0 % |"),
        "{md}"
    );
    assert!(
        md.contains("\"cand <b>\": no regression; improved in 1 (reload_time -25.0 %)."),
        "{md}"
    );
    assert!(matches!(
        write_comparison(&[], dir.path()),
        Err(jitwg_reports::ReportError::NoRuns)
    ));
}

#[test]
fn v0_results_still_render() {
    let r = load(fixture("v0-results.json")).unwrap();
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    // Microseconds became milliseconds: the same figures as the v1 fixture.
    let v1 = fixed();
    assert_eq!(r.clients, v1.clients);
    assert!(r.expectations.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let paths = write_report(&r, dir.path()).unwrap();
    let html = std::fs::read_to_string(paths.html).unwrap();
    assert_eq!(check_inline_svgs(&html), 6);
    assert!(html.contains("NO EXPECTATIONS"));
}

#[test]
fn future_version_is_refused_clearly() {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fixed-results.json")).unwrap())
            .unwrap();
    v["schema_version"] = serde_json::json!(SCHEMA_VERSION + 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, LoadError::UnsupportedVersion { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("schema_version {}", SCHEMA_VERSION + 1))
            && msg.contains("use a newer jitwg"),
        "{msg}"
    );
}

#[test]
fn text_summary_of_the_fixed_run() {
    let text = text_summary(&fixed());
    assert_eq!(
        text,
        "clients:    11\n\
         connected:  10 of 12 attempts (83.33 %), failed 2\n\
         setup:      p50 5.00 ms, p99 5200 ms, max 5200 ms\n\
         API calls:  14 total, 5 max per key\n\
         peers:      10 installed (peak), 6 stale (peak)\n\
         verdict:    FAILED (2 of 3 breached: setup_p99 <= 50ms (measured 5200 ms); api_calls_per_key_max <= 1 (measured 5))\n"
    );
}

#[test]
#[ignore = "writes sample charts to $JITWG_DUMP_DIR for a human to look at"]
fn dump_sample_charts() {
    let dir = PathBuf::from(std::env::var("JITWG_DUMP_DIR").unwrap());
    let f = fixed();
    let l = large(10_000, 3600);
    write_report(&f, &dir.join("report")).unwrap();
    let runs = vec![
        ("fixed".to_string(), f.clone()),
        ("large".to_string(), l.clone()),
    ];
    write_comparison(&runs, &dir.join("comparison")).unwrap();
    for (name, runs) in [
        ("fixed", vec![("fixed", &f)]),
        ("large", vec![("large", &l)]),
        ("cmp", vec![("fixed", &f), ("large", &l)]),
    ] {
        for (i, chart) in all_charts(&runs).unwrap().iter().enumerate() {
            std::fs::write(dir.join(format!("{name}-{i}.svg")), &chart.svg).unwrap();
        }
    }
}

/// Series lines (stroke width 2, unlike axes, ticks and event marks) of `svg` whose points do not all
/// share one y (a flat series or a legend swatch does).
fn sloped_series_lines(svg: &str) -> usize {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.tag_name().name() == "polyline" && n.attribute("stroke-width") == Some("2"))
        .filter(|n| {
            let ys: Vec<&str> = n
                .attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|p| p.split(',').nth(1))
                .collect();
            ys.windows(2).any(|w| w[0] != w[1])
        })
        .count()
}

#[test]
fn connection_chart_climbs_for_clients_that_leave_after_their_echo() {
    // A connect_once population: every client leaves right after its echo, so no sample ever sees a
    // client holding a tunnel; the chart must still show that connections were made.
    let mut r = fixed();
    for s in &mut r.samples {
        s.connected_clients = 0;
        s.in_flight = 0;
    }
    let svg = charts::connections_over_time(&[("once", &r)]).unwrap();
    check_svg("connections", &svg);
    assert!(svg.contains("connections made (cumulative)"), "{svg}");
    assert!(svg.contains("holding a tunnel now"), "{svg}");
    assert_eq!(sloped_series_lines(&svg), 1, "{svg}");
}
