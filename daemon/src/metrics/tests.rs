//! Tests of the metrics registry: names, labels and the text exposition the scrape returns.

use super::*;

#[test]
fn encodes_names_help_and_values() {
    let m = Metrics::new();
    m.initiations_captured.inc_by(3);
    m.installed_peers.set(7);
    m.time_to_ready_seconds.set(1.5);
    count_lookup(&m, "api_found");
    count_identify_failure(&m, "mac1");
    count_push(&m, "bad_json");
    m.api_latency_seconds.observe(0.001);
    let text = m.encode();
    assert!(
        text.contains("jitwgd_initiations_captured_total 3"),
        "{text}"
    );
    assert!(text.contains("jitwgd_installed_peers 7"), "{text}");
    assert!(text.contains("jitwgd_time_to_ready_seconds 1.5"), "{text}");
    assert!(text.contains("jitwgd_boot_reinstalled_total 0"), "{text}");
    assert!(
        text.contains("jitwgd_boot_reinstalled_handshakes_total 0"),
        "{text}"
    );
    assert!(
        text.contains("jitwgd_lookups_total{outcome=\"api_found\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("jitwgd_identify_failed_total{stage=\"mac1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("jitwgd_push_messages_total{outcome=\"bad_json\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("jitwgd_api_latency_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("# HELP jitwgd_installs Peers installed"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn known_label_values_start_at_zero() {
    let text = Metrics::new().encode();
    for stage in IDENTIFY_STAGES {
        assert!(text.contains(&format!(
            "jitwgd_identify_failed_total{{stage=\"{stage}\"}} 0"
        )));
    }
    for outcome in LOOKUP_OUTCOMES {
        assert!(text.contains(&format!("jitwgd_lookups_total{{outcome=\"{outcome}\"}} 0")));
    }
    for reason in INITIATION_DROP_REASONS {
        assert!(text.contains(&format!(
            "jitwgd_initiations_dropped_total{{reason=\"{reason}\"}} 0"
        )));
    }
    for operation in STORE_OPERATIONS {
        assert!(text.contains(&format!(
            "jitwgd_store_errors_total{{operation=\"{operation}\"}} 0"
        )));
    }
    for outcome in API_REQUEST_OUTCOMES {
        assert!(text.contains(&format!(
            "jitwgd_api_requests_total{{outcome=\"{outcome}\"}} 0"
        )));
    }
    for outcome in PUSH_OUTCOMES {
        assert!(text.contains(&format!(
            "jitwgd_push_messages_total{{outcome=\"{outcome}\"}} 0"
        )));
    }
}

#[test]
fn stage_time_is_a_histogram_per_stage() {
    let m = Metrics::new();
    observe_stage(&m, "lookup", std::time::Duration::from_millis(3));
    observe_stage(&m, "lookup", std::time::Duration::from_millis(1));
    let text = m.encode();
    assert!(
        text.contains("jitwgd_stage_seconds_count{stage=\"lookup\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("jitwgd_stage_seconds_sum{stage=\"lookup\"} 0.004"),
        "{text}"
    );
    for stage in TIMED_STAGES {
        assert!(
            text.contains(&format!("jitwgd_stage_seconds_count{{stage=\"{stage}\"}}")),
            "{stage}: {text}"
        );
    }
}

#[test]
fn ready_follows_the_gauge() {
    let m = Metrics::new();
    assert!(!m.is_ready());
    m.ready.set(1);
    assert!(m.is_ready());
}
