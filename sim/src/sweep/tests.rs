//! Tests of `jitwg sweep`'s checks: everything a user can get wrong is refused with exit 2
//! before any run, naming the key (and listing the valid ones for an unknown key).

use super::*;

const SCENARIO: &str = r#"
name = "sweep-test"
seed = 5
duration = "10s"
[daemon]
evict_after = "30s"
[[population]]
name = "a"
count = 4
arrival = { kind = "constant", rate = 2.0 }
"#;

fn args(dir: &Path, text: &str, vary: &[&str]) -> SweepArgs {
    let scenario = dir.join("s.toml");
    std::fs::write(&scenario, text).unwrap();
    SweepArgs {
        scenario,
        vary: vary.iter().map(|s| s.to_string()).collect(),
        set: vec![],
        seed: None,
        repeat: None,
        out: dir.join("out"),
        quiet: true,
        dry_run: true,
    }
}

fn message(e: &CliError) -> String {
    format!("{:#}", e.error)
}

#[test]
fn a_grid_from_vary_flags_is_the_product() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(
        dir.path(),
        SCENARIO,
        &["population.0.count=2,4,8", "daemon.evict_after=10s,1m"],
    );
    a.repeat = Some(3);
    let plan = plan(&a).unwrap();
    assert_eq!(plan.points.len(), 6);
    assert_eq!(plan.repeat, 3);
    assert_eq!(plan.base_seed, 5);
    assert_eq!(plan.points[1].x["daemon.evict_after"], Some(60.0));
    let (s, _) = plan.scenario(&plan.points[5], 2).unwrap();
    assert_eq!(s.seed, 7, "repeat k runs with base seed + k");
    assert_eq!(s.clients.len(), 8);
}

#[test]
fn an_unknown_key_exits_2_and_lists_valid_keys() {
    let dir = tempfile::tempdir().unwrap();
    let err = plan(&args(dir.path(), SCENARIO, &["daemon.evict_aftr=1s,2s"])).unwrap_err();
    assert_eq!(err.code, ExitCode::Usage);
    let msg = message(&err);
    assert!(msg.contains("daemon.evict_aftr"), "{msg}");
    assert!(
        msg.contains("valid keys") && msg.contains("daemon.evict_after"),
        "{msg}"
    );
    assert!(msg.contains("population.0.count"), "{msg}");
}

#[test]
fn a_value_that_does_not_parse_exits_2_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["population.0.count=4,many", "daemon.evict_after=30s,soon"] {
        let err = plan(&args(dir.path(), SCENARIO, &[bad])).unwrap_err();
        assert_eq!(err.code, ExitCode::Usage, "{bad}");
        let key = bad.split('=').next().unwrap();
        let msg = message(&err);
        assert!(msg.contains(&format!("--vary {key}")), "{msg}");
    }
}

#[test]
fn a_sweep_table_declares_the_grid_and_vary_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{SCENARIO}\n[sweep]\nrepeat = 2\n[[sweep.vary]]\nkey = \"daemon.evict_after\"\nvalues = [\"10s\", \"20s\", \"40s\"]\n"
    );
    let from_table = plan(&args(dir.path(), &text, &[])).unwrap();
    assert_eq!(from_table.points.len(), 3);
    assert_eq!(from_table.repeat, 2);
    assert_eq!(from_table.points[2].overrides, ["daemon.evict_after=40s"]);
    let from_flags = plan(&args(dir.path(), &text, &["population.0.count=2,3"])).unwrap();
    assert_eq!(from_flags.vary.len(), 1);
    assert_eq!(from_flags.vary[0].key, "population.0.count");
    // `jitwg run` accepts the same file and ignores [sweep].
    assert!(crate::scenario::load(&dir.path().join("s.toml"), &Adjustments::default()).is_ok());
}

#[test]
fn nothing_to_vary_and_zero_repeats_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        plan(&args(dir.path(), SCENARIO, &[])).unwrap_err().code,
        ExitCode::Usage
    );
    let mut a = args(dir.path(), SCENARIO, &["population.0.count=2"]);
    a.repeat = Some(0);
    assert_eq!(plan(&a).unwrap_err().code, ExitCode::Usage);
}

#[test]
fn a_dry_run_runs_nothing_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let a = args(dir.path(), SCENARIO, &["population.0.count=2,3"]);
    assert_eq!(run(a).unwrap(), ExitCode::Ok);
    assert!(!dir.path().join("out").exists());
}

#[test]
fn every_shipped_sweep_declares_a_grid_whose_points_all_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/sweeps");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let a = SweepArgs {
            scenario: path.clone(),
            vary: vec![],
            set: vec![],
            seed: None,
            repeat: None,
            out: dir.join("unused"),
            quiet: true,
            dry_run: true,
        };
        let p = plan(&a).unwrap_or_else(|e| panic!("{}: {:#}", path.display(), e.error));
        assert!(
            p.points.len() >= 4,
            "{}: a curve needs points",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 5, "shipped sweeps in {}", dir.display());
}
