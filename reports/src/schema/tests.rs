//! Unit tests of the results schema: round trips, migrations from older versions, and
//! what a file written by a newer driver may contain.

use super::*;

fn minimal() -> Results {
    let mut r = Results::new(RunInfo {
        id: "r1".into(),
        mode: "jit".into(),
        ..RunInfo::default()
    });
    r.clients.push(ClientResult {
        id: 1,
        population: "ci".into(),
        connections: vec![Connection {
            started_ms: 10.0,
            setup_latency_ms: Some(1.5),
            handshake_attempts: 1,
            ..Connection::default()
        }],
    });
    r.events.push(Event {
        t_ms: 5.0,
        kind: EventKind::ApiOutageStart,
        detail: String::new(),
    });
    r
}

#[test]
fn round_trips_through_json() {
    let r = minimal();
    let back = Results::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn event_kinds_are_snake_case() {
    let json = serde_json::to_string(&EventKind::ApiOutageStart).unwrap();
    assert_eq!(json, "\"api_outage_start\"");
}

#[test]
fn refuses_newer_versions_naming_both() {
    let mut v = serde_json::to_value(minimal()).unwrap();
    v["schema_version"] = serde_json::json!(7);
    let err = Results::from_json(&v.to_string()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("schema_version 7"), "{msg}");
    assert!(msg.contains(&format!("0 to {SCHEMA_VERSION}")), "{msg}");
}

#[test]
fn migrates_v0_microseconds() {
    let mut v = serde_json::to_value(minimal()).unwrap();
    let root = v.as_object_mut().unwrap();
    root.remove("schema_version");
    root.remove("expectations");
    let conn = root["clients"][0]["connections"][0]
        .as_object_mut()
        .unwrap();
    conn.remove("setup_latency_ms");
    conn.insert("setup_latency_us".into(), serde_json::json!(2500));
    let r = Results::from_json(&v.to_string()).unwrap();
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    assert_eq!(r.clients[0].connections[0].setup_latency_ms, Some(2.5));
    assert!(r.expectations.is_empty());
}

#[test]
fn migrates_v1_reload_dropping_the_old_reconnect_figure() {
    let mut v = serde_json::to_value(minimal()).unwrap();
    v["schema_version"] = serde_json::json!(1);
    v["reload"] = serde_json::json!({
        "reboot_at_ms": 20100.0,
        "ready_after_ms": 3.0,
        "peers_at_boot": 0,
        "all_reconnected_after_ms": 8935.0
    });
    v["samples"] = serde_json::json!([{
        "t_ms": 0.0, "installed_peers": 5, "stale_peers": 5,
        "connected_clients": 0, "in_flight": 5, "api_calls_total": 0
    }]);
    let r = Results::from_json(&v.to_string()).unwrap();
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    let reload = r.reload.unwrap();
    assert_eq!(reload.recovery_after_ms, None);
    assert_eq!(reload.stored_peers, None);
    assert_eq!(reload.reboot_start_ms, 20100.0);
    assert_eq!(r.samples[0].stale_peers, 5);
    assert_eq!(r.samples[0].never_handshaked_peers, None);
}

#[test]
fn compare_op_equality_tolerates_rounding() {
    assert!(CompareOp::Eq.holds(0.1 + 0.2, 0.3));
    assert!(!CompareOp::Lt.holds(1.0, 1.0));
    assert!(CompareOp::Le.holds(1.0, 1.0));
}
