//! The daemon-config contract: what the driver renders, read back by jitwgd's own
//! resolver, is what the scenario set, and jitwgd's defaults where it set nothing.

use std::path::{Path, PathBuf};

use jitwgd::config::{defaults, Backend, Boot, Config, Mode};

use super::*;
use crate::scenario::{load, parse, Adjustments, Override};

fn endpoints(push: bool) -> DaemonEndpoints {
    DaemonEndpoints {
        interface: "jwgabc-wg".into(),
        capture_interface: "jwgabc-gc".into(),
        db: "/tmp/x/daemon.db".into(),
        api_url: "http://198.18.255.1:8080".into(),
        metrics_addr: "127.0.0.1:9100".parse().unwrap(),
        nats_url: push.then(|| "nats://198.18.255.1:4222".into()),
        nats_subject: "jitwg.peers".into(),
        channel: Default::default(),
    }
}

const BASE: &str = "name = \"t\"\nduration = \"5s\"\n[[population]]\nname = \"a\"\ncount = 1\n\
                    arrival = { kind = \"burst\", at = \"0s\" }\n";

fn with_sets(sets: &[&str]) -> Scenario {
    let adjust = Adjustments {
        overrides: sets.iter().map(|s| Override::parse(s).unwrap()).collect(),
        seed: None,
    };
    parse(Path::new("t.toml"), BASE, &adjust).unwrap()
}

fn on(s: Switch) -> bool {
    s == Switch::On
}

/// The one check: every setting jitwgd resolved equals the scenario's value when the
/// scenario set it and jitwgd's own default when it did not; the endpoints are this run's.
fn check(s: &Scenario) -> Config {
    let push = s.daemon.mode == crate::scenario::file::ModeName::Push;
    let at = endpoints(push);
    let c = resolve(s, &at).unwrap_or_else(|e| panic!("{}: {e}", s.name));
    let d = &s.file.daemon;
    let name = &s.name;
    assert_eq!(
        c.backend,
        s.file.backend.map_or(defaults::BACKEND, Backend::from),
        "{name}"
    );
    assert_eq!(c.mode, d.mode.map_or(defaults::MODE, Mode::from), "{name}");
    assert_eq!(c.boot, d.boot.map_or(defaults::BOOT, Boot::from), "{name}");
    let dur = |set: Option<std::time::Duration>, default| set.unwrap_or(default);
    // Each setting: the scenario's value where it sets one, else jitwgd's default.
    macro_rules! same {
        ($field:ident, $want:expr) => {
            assert_eq!(c.$field, $want, "{name}: {}", stringify!($field))
        };
    }
    same!(evict_after, dur(d.evict_after, defaults::EVICT_AFTER));
    same!(sweep_every, dur(d.sweep_every, defaults::SWEEP_EVERY));
    same!(sweep_chunk, d.sweep_chunk.unwrap_or(defaults::SWEEP_CHUNK));
    same!(sweep_budget, dur(d.sweep_budget, defaults::SWEEP_BUDGET));
    same!(
        evict_in_push_mode,
        d.evict_in_push_mode
            .map_or(defaults::EVICT_IN_PUSH_MODE, on)
    );
    same!(initiate, d.initiate.map_or(defaults::INITIATE, on));
    assert_eq!(
        c.initiate, s.daemon.initiate,
        "{name}: the driver reports what jitwgd does"
    );
    same!(positive_ttl, dur(d.positive_ttl, defaults::POSITIVE_TTL));
    same!(negative_ttl, dur(d.negative_ttl, defaults::NEGATIVE_TTL));
    same!(api_timeout, dur(d.api_timeout, defaults::API_TIMEOUT));
    same!(api_retries, d.api_retries.unwrap_or(defaults::API_RETRIES));
    same!(
        api_min_interval,
        dur(d.api_min_interval, defaults::API_MIN_INTERVAL)
    );
    same!(
        reinstall_active,
        dur(d.reinstall_active, defaults::REINSTALL_ACTIVE)
    );
    same!(
        initiate_rate,
        d.initiate_rate.unwrap_or(defaults::INITIATE_RATE)
    );
    same!(
        identify_workers,
        d.identify_workers.unwrap_or(defaults::IDENTIFY_WORKERS)
    );
    same!(
        identify_queue,
        d.identify_queue.unwrap_or(defaults::IDENTIFY_QUEUE)
    );
    same!(
        identify_queue_per_source,
        d.identify_queue_per_source
            .unwrap_or(defaults::IDENTIFY_QUEUE_PER_SOURCE)
    );
    let l = &c.limits;
    let limit = |set: Option<usize>, default| set.unwrap_or(default);
    assert_eq!(l.max_pending, limit(d.max_pending, defaults::MAX_PENDING));
    assert_eq!(
        l.api_concurrency,
        limit(d.api_concurrency, defaults::API_CONCURRENCY)
    );
    assert_eq!(
        l.unknown_lookup_rate,
        d.unknown_lookup_rate
            .unwrap_or(defaults::UNKNOWN_LOOKUP_RATE)
    );
    assert_eq!(
        l.unknown_lookup_floor,
        d.unknown_lookup_floor
            .unwrap_or(defaults::UNKNOWN_LOOKUP_FLOOR)
    );
    assert_eq!(
        l.unknown_lookup_burst,
        limit(d.unknown_lookup_burst, defaults::UNKNOWN_LOOKUP_BURST)
    );
    assert_eq!(
        l.source_penalty_burst,
        limit(d.source_penalty_burst, defaults::SOURCE_PENALTY_BURST)
    );
    assert_eq!(
        l.source_penalty_forgive,
        dur(d.source_penalty_forgive, defaults::SOURCE_PENALTY_FORGIVE)
    );
    assert_eq!(
        l.source_quiet_gap,
        dur(d.source_quiet_gap, defaults::SOURCE_QUIET_GAP)
    );
    // Where this run's collaborators are, and the lab's tunnel prefix.
    assert_eq!(c.interface, at.interface);
    assert_eq!(
        c.capture_interface.as_deref(),
        Some(at.capture_interface.as_str())
    );
    assert_eq!(c.db, at.db);
    assert_eq!(c.api_url.as_deref(), Some(at.api_url.as_str()));
    assert_eq!(c.metrics_addr, Some(at.metrics_addr));
    assert_eq!(c.nats_url, at.nats_url);
    assert_eq!(c.nats_subject, at.nats_subject);
    assert_eq!(c.allowed_prefix.to_string(), LAB_TUNNEL_PREFIX);
    assert_eq!(c.api_ca_file, at.channel.ca_file);
    assert_eq!(c.api_token_file, at.channel.token_file);
    // The lab's tunnel addresses are host routes: jitwgd's default rule applies.
    assert_eq!(
        (c.allowed_ip_min_len_v4, c.allowed_ip_min_len_v6),
        (
            defaults::ALLOWED_IP_MIN_LEN_V4,
            defaults::ALLOWED_IP_MIN_LEN_V6
        )
    );
    c
}

#[test]
fn a_secured_control_plane_reaches_jitwgd_as_its_channel_keys() {
    let s = with_sets(&[]);
    let mut at = endpoints(false);
    at.api_url = "https://198.18.255.1:8080".into();
    at.channel = crate::run::channel::DaemonChannel {
        ca_file: Some("/run/x/cp-ca.pem".into()),
        token_file: Some("/run/x/cp-token".into()),
        client_cert: Some(("/run/x/gw.pem".into(), "/run/x/gw-key.pem".into())),
    };
    let text = render(&s, &at).unwrap();
    let c = daemon::resolve_text(daemon::Args::default(), &text, Path::new("jitwgd.toml")).unwrap();
    assert_eq!(c.api_url.as_deref(), Some("https://198.18.255.1:8080"));
    assert_eq!(c.api_ca_file, Some(PathBuf::from("/run/x/cp-ca.pem")));
    assert_eq!(c.api_token_file, Some(PathBuf::from("/run/x/cp-token")));
    assert_eq!(c.api_client_cert, Some(PathBuf::from("/run/x/gw.pem")));
    assert_eq!(c.api_client_key, Some(PathBuf::from("/run/x/gw-key.pem")));
}

#[test]
fn an_empty_daemon_table_leaves_every_setting_to_jitwgd() {
    let s = with_sets(&[]);
    let text = render(&s, &endpoints(false)).unwrap();
    for key in [
        "mode",
        "boot",
        "evict_after",
        "sweep_every",
        "negative_ttl",
        "api_retries",
    ] {
        assert!(!text.contains(key), "{key} written though unset:\n{text}");
    }
    let c = check(&s);
    assert_eq!(c.sweep_every, defaults::SWEEP_EVERY);
    assert_eq!(c.negative_ttl, defaults::NEGATIVE_TTL);
}

#[test]
fn every_daemon_key_reaches_jitwgd_under_its_own_name() {
    let s = with_sets(&[
        "backend=kernel",
        "daemon.mode=push",
        "daemon.boot=preload",
        "daemon.evict_after=90s",
        "daemon.sweep_every=7s",
        "daemon.sweep_chunk=1000",
        "daemon.sweep_budget=1h",
        "daemon.evict_in_push_mode=on",
        "daemon.initiate=off",
        "daemon.positive_ttl=1m",
        "daemon.negative_ttl=5s",
        "daemon.api_timeout=750ms",
        "daemon.api_retries=0",
        "daemon.api_min_interval=250ms",
        "daemon.reinstall_active=0s",
        "daemon.initiate_rate=700",
        "daemon.max_pending=100",
        "daemon.api_concurrency=3",
        "daemon.unknown_lookup_rate=20",
        "daemon.unknown_lookup_floor=2",
        "daemon.unknown_lookup_burst=16",
        "daemon.source_penalty_burst=4",
        "daemon.source_penalty_forgive=2s",
        "daemon.source_quiet_gap=0s",
        "daemon.identify_workers=1",
        "daemon.identify_queue=512",
        "daemon.identify_queue_per_source=32",
    ]);
    let c = check(&s);
    assert_eq!(
        (c.limits.api_concurrency, c.identify_queue_per_source),
        (3, 32)
    );
    assert_eq!((c.sweep_chunk, c.api_retries), (1000, 0));
    assert!(!c.initiate && c.evict_in_push_mode);
    assert!(c.reinstall_active.is_zero(), "0s turns the re-install off");
    assert!(
        c.limits.source_quiet_gap.is_zero(),
        "0s turns the per-address level off"
    );
    assert_eq!(c.initiate_rate, 700);
    let settings = describe(&s).unwrap();
    assert!(settings.iter().all(|s| !s.jitwgd_default), "{settings:?}");
}

#[test]
fn a_few_keys_set_the_rest_default() {
    check(&with_sets(&["daemon.sweep_chunk=1"]));
    check(&with_sets(&[
        "daemon.initiate=off",
        "daemon.negative_ttl=0s",
    ]));
    let s = with_sets(&["daemon.mode=push", "daemon.sweep_budget=250ms"]);
    check(&s);
    let settings = describe(&s).unwrap();
    let shown = |key: &str| settings.iter().find(|s| s.key == key).unwrap().clone();
    assert!(!shown("mode").jitwgd_default && shown("mode").value == "push");
    assert!(!shown("sweep_budget").jitwgd_default && shown("sweep_budget").value == "250ms");
    assert!(shown("sweep_every").jitwgd_default && shown("sweep_every").value == "30s");
    assert!(shown("backend").jitwgd_default && shown("backend").value == "userspace");
    assert!(shown("initiate").jitwgd_default && shown("initiate").value == "on");
}

#[test]
fn every_shipped_scenario_renders_what_it_says() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut seen = 0;
    for dir in [root.clone(), root.join("kernel")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = load(&path, &Adjustments::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                check(&s);
                seen += 1;
            }
        }
    }
    assert!(seen >= 17, "only {seen} shipped scenarios found");
}

#[test]
fn shipped_scenarios_keep_the_sweep_and_negative_ttl_they_ran_with() {
    // Before scenario keys meant jitwgd's defaults, the driver silently wrote
    // sweep_every = 10s and negative_ttl = 5s; the shipped scenarios now say so.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    for name in [
        "storm.toml",
        "reboot.toml",
        "api-outage.toml",
        "kernel/jit-reboot.toml",
    ] {
        let s = load(&root.join(name), &Adjustments::default()).unwrap();
        let c = check(&s);
        assert_eq!(c.sweep_every, std::time::Duration::from_secs(10), "{name}");
        assert_eq!(c.negative_ttl, std::time::Duration::from_secs(5), "{name}");
    }
}

#[test]
fn admission_limits_are_validated_naming_their_key() {
    let adjust = Adjustments::default();
    for (line, key) in [
        ("max_pending = 0", "daemon.max_pending"),
        ("api_concurrency = 0", "daemon.api_concurrency"),
        ("unknown_lookup_burst = 0", "daemon.unknown_lookup_burst"),
        ("source_penalty_burst = 0", "daemon.source_penalty_burst"),
        (
            "source_penalty_forgive = \"0s\"",
            "daemon.source_penalty_forgive",
        ),
        (
            "identify_queue_per_source = 0",
            "daemon.identify_queue_per_source",
        ),
    ] {
        let text = format!("{BASE}[daemon]\n{line}\n");
        let err = parse(Path::new("t.toml"), &text, &adjust)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{line}: {err}");
    }
    let text = format!("{BASE}[daemon]\nunknown_lookup_rate = 0\nsource_penalty_burst = 2\n");
    let s = parse(Path::new("t.toml"), &text, &adjust).unwrap();
    let c = check(&s);
    assert_eq!(
        (c.limits.unknown_lookup_rate, c.limits.source_penalty_burst),
        (0, 2)
    );
    let settings = describe(&s).unwrap();
    let shown = |key: &str| settings.iter().find(|s| s.key == key).unwrap().clone();
    assert!(!shown("source_penalty_burst").jitwgd_default);
    assert_eq!(shown("source_penalty_burst").value, "2");
    assert!(shown("api_concurrency").jitwgd_default);
    assert_eq!(shown("api_concurrency").value, "32");
}

#[test]
fn unknown_daemon_keys_are_refused_by_the_scenario() {
    let adjust = Adjustments::default();
    let text = format!("{BASE}[daemon]\nremoval_chunk = 8\n");
    assert!(parse(Path::new("t.toml"), &text, &adjust).is_err());
}

#[test]
fn a_gateway_on_a_host_without_a_capture_interface_sniffs_every_interface() {
    let s = with_sets(&[]);
    let named = resolve(&s, &endpoints(false)).unwrap();
    assert_eq!(named.capture_interface.as_deref(), Some("jwgabc-gc"));
    let every = DaemonEndpoints {
        capture_interface: String::new(),
        ..endpoints(false)
    };
    assert_eq!(resolve(&s, &every).unwrap().capture_interface, None);
}
