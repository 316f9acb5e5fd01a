//! End-to-end: `jitwg run --capture` on a smoke-sized scenario, then everything a developer
//! reproducing a peer-storm bug does with it. tshark (Debian's, installed by
//! ci/install-deps.sh) must decrypt, with the run's key log, one initiation per client from
//! the client (its static key and timestamp) and the gateway's role-inversion initiation to
//! it; `jitwg timeline` must show the client's install; `jitwg bundle` must hold every file;
//! `jitwg rerun` of that bundle must connect the same clients. Uses `jitwg run`'s own default
//! address plan (no fixture slot) in namespaces of its own. Needs root, wireguard-go, ip and
//! tshark; in CI a missing one fails the test.

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use jitwg::capture::{CaptureLimit, CaptureOptions};
use jitwg::cli::ExitCode;
use jitwg::run::{gateway_private_key, run_scenario, RunOptions};
use jitwg::scenario::Adjustments;
use jitwg::timeline::story::Source;
use jitwg_tests::{daemon_binary, prerequisites_met, public_key};

const SCENARIO: &str = r#"
name = "capture-e2e"
seed = 15
backend = "userspace"
duration = "20s"
[daemon]
mode = "jit"
initiate = "on"
[[population]]
name = "ci"
count = 12
arrival = { kind = "constant", rate = 20.0 }
behaviour = { kind = "connect_once" }
[expect]
connected_ratio = ">= 1.0"
"#;

/// `(source, destination, decrypted static key, timestamp)` of every initiation tshark
/// decrypts with the key log.
fn tshark_initiations(dir: &Path) -> Vec<(String, String, String, String)> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(dir.join("capture.pcapng"))
        .arg("-o")
        .arg(format!(
            "wg.keylog_file:{}",
            dir.join("wg.keylog").display()
        ))
        .args(["-Y", "wg.type == 1", "-T", "fields"])
        .args(["-e", "ip.src", "-e", "ip.dst", "-e", "wg.static"])
        .args(["-e", "wg.timestamp.value"])
        .output()
        .expect("running tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 4).then(|| (f[0].into(), f[1].into(), f[2].into(), f[3].into()))
        })
        .collect()
}

#[test]
fn capture_decrypts_every_initiation_and_rerun_timeline_bundle_follow() {
    if !prerequisites_met(&["wireguard-go", "ip", "tshark"]).unwrap() {
        return;
    }
    // The driver finds jitwgd next to its own executable or here; a test binary is elsewhere.
    std::env::set_var("JITWGD_BIN", daemon_binary().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("capture-e2e.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let scenario = jitwg::scenario::load(&file, &Adjustments::default()).unwrap();
    let first = dir.path().join("first");
    let opts = RunOptions {
        scenario_file: file.clone(),
        adjustments: Adjustments::default(),
        out: Some(first.clone()),
        quiet: true,
        event_log: false,
        capture: Some(CaptureOptions {
            limit: CaptureLimit::DEFAULT,
        }),
        overrides_text: vec![],
    };
    let outcome = run_scenario(scenario.clone(), &opts).unwrap();
    assert!(outcome.passed(), "{:?}", outcome.results.expectations);
    let capture = outcome.results.capture.clone().expect("results.capture");
    assert_eq!(capture.keys, 13);
    assert!(capture.packets > 0 && !capture.limit_reached);
    let report = jitwg_reports::markdown::render(&outcome.results);
    assert!(
        report.contains("capture.pcapng") && report.contains("PRIVATE keys"),
        "{report}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(first.join("wg.keylog"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // tshark decrypts each client's initiation and the gateway's role-inversion one to it.
    let initiations = tshark_initiations(&first);
    let gateway = BASE64.encode(public_key(&gateway_private_key(scenario.seed)));
    for c in &scenario.clients {
        let (ip, key) = (
            c.source_ip.to_string(),
            BASE64.encode(c.identity.public_key),
        );
        assert!(
            initiations
                .iter()
                .any(|(s, _, k, t)| *s == ip && *k == key && !t.is_empty()),
            "client {} ({ip}): no decrypted initiation in {initiations:?}",
            c.id
        );
        assert!(
            initiations
                .iter()
                .any(|(_, d, k, t)| *d == ip && *k == gateway && !t.is_empty()),
            "client {} ({ip}): no decrypted role-inversion initiation in {initiations:?}",
            c.id
        );
    }

    // The timeline of client 0 shows its initiation, its install and the role inversion.
    let story = jitwg::timeline::build(&first, Some(0), None).unwrap();
    let has = |source: Source, text: &str| {
        story
            .lines
            .iter()
            .any(|l| l.source == source && l.text.contains(text))
    };
    let shown: Vec<&str> = story.lines.iter().map(|l| l.text.as_str()).collect();
    assert!(has(Source::Daemon, "peer installed"), "{shown:#?}");
    assert!(
        has(Source::Packet, "client → gateway  handshake initiation"),
        "{shown:#?}"
    );
    assert!(has(Source::Packet, "role inversion"), "{shown:#?}");
    assert!(has(Source::Event, "connected"), "{shown:#?}");

    // The bundle holds everything; rerunning it connects the same clients.
    let bundle = dir.path().join("first.tar.gz");
    let manifest = jitwg::bundle::write_bundle(&first, &bundle).unwrap();
    assert!(manifest.missing.is_empty(), "{:?}", manifest.missing);
    let second = dir.path().join("second");
    let code = jitwg::rerun::command(jitwg::rerun::RerunArgs {
        source: bundle,
        out: Some(second.clone()),
        repeat: 1,
        quiet: true,
    })
    .unwrap_or_else(|e| panic!("{:#}", e.error));
    assert_eq!(code, ExitCode::Ok);
    let again = jitwg_reports::load(second.join("results.json")).unwrap();
    assert_eq!(again.run.seed, scenario.seed);
    assert_eq!(
        jitwg::rerun::compare::outcome_changes(&outcome.results.clients, &again.clients),
        vec![]
    );
    assert!(second.join("capture.pcapng").is_file() && second.join("scenario.toml").is_file());
}
