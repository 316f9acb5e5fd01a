//! Scenario files → resolved scenarios, in two stages (ripgrep style): `file`
//! mirrors the TOML exactly, `resolve` turns it into the typed `Scenario` the run
//! uses. Everything is validated here, before anything is started.

pub mod arrival;
pub mod attack;
pub mod cpus;
pub mod file;
pub mod overrides;
pub mod resolve;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use arrival::Arrival;
pub use attack::{AttackKind, AttackPlan};
pub use cpus::{CpuChoice, CpuList, CpuPlan, CpuSplit};
pub use file::ScenarioFile;
pub use overrides::{Override, OverrideError};
pub use resolve::{
    ClientPlan, ControlPlaneSettings, DaemonSettings, EventAction, Link, PeerIdentity, Population,
    PreinstalledPeer, Scenario, TimedEvent,
};

/// A value that parsed but makes no sense, named by its key (`population[0].count`).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("`{key}` {reason}")]
pub struct FieldError {
    pub key: String,
    pub reason: String,
}

/// Why a scenario could not be loaded; every variant names the file.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {file} is not valid: {message}")]
    Toml { file: PathBuf, message: String },
    #[error("scenario {file}: {source}")]
    Override {
        file: PathBuf,
        #[source]
        source: OverrideError,
    },
    #[error("scenario {file}: {source}")]
    Invalid {
        file: PathBuf,
        #[source]
        source: FieldError,
    },
    #[error("scenario {file}: {source}")]
    Expectation {
        file: PathBuf,
        #[source]
        source: jitwg_reports::ExpectError,
    },
}

/// How the user adjusted a scenario on the command line.
#[derive(Debug, Clone, Default)]
pub struct Adjustments {
    pub overrides: Vec<Override>,
    pub seed: Option<u64>,
}

/// Reads, adjusts and resolves a scenario file.
pub fn load(path: &Path, adjust: &Adjustments) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, adjust)
}

/// Parses scenario text as if read from `path` (pure; used by `load` and tests).
pub fn parse(path: &Path, text: &str, adjust: &Adjustments) -> Result<Scenario, ScenarioError> {
    let file = path.to_path_buf();
    let toml_error = |e: toml::de::Error| ScenarioError::Toml {
        file: file.clone(),
        message: e.to_string(),
    };
    let parsed: ScenarioFile = if adjust.overrides.is_empty() {
        // Straight from the text, so errors carry line, column and key.
        toml::from_str(text).map_err(toml_error)?
    } else {
        let mut tree = toml::Value::Table(toml::from_str(text).map_err(toml_error)?);
        for o in &adjust.overrides {
            o.apply(&mut tree)
                .map_err(|source| ScenarioError::Override {
                    file: file.clone(),
                    source,
                })?;
        }
        tree.try_into()
            .map_err(|e: toml::de::Error| ScenarioError::Toml {
                file: file.clone(),
                message: format!("{} (after --set overrides)", e.to_string().trim_end()),
            })?
    };
    let mut parsed = parsed;
    if let Some(seed) = adjust.seed {
        parsed.seed = seed;
    }
    let expectations = jitwg_reports::parse_expectations(&parsed.expect).map_err(|source| {
        ScenarioError::Expectation {
            file: file.clone(),
            source,
        }
    })?;
    let mut scenario =
        resolve::resolve(parsed).map_err(|source| ScenarioError::Invalid { file, source })?;
    scenario.expectations = expectations;
    Ok(scenario)
}

/// `[lab] cpus` on this machine, whose driver may use `available` CPUs: a CPU it does not
/// offer is invalid (exit 2, naming the key), for `jitwg validate` as for `jitwg run`.
pub fn plan_cpus(
    path: &Path,
    scenario: &Scenario,
    available: &CpuList,
) -> Result<CpuPlan, ScenarioError> {
    scenario
        .cpus
        .plan(available)
        .map_err(|source| ScenarioError::Invalid {
            file: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = r#"
name = "t"
seed = 3
duration = "10s"
[[population]]
name = "a"
count = 4
arrival = { kind = "constant", rate = 2.0 }
"#;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("t.toml"), text, &Adjustments::default())
    }

    fn with_sets(text: &str, sets: &[&str]) -> Result<Scenario, ScenarioError> {
        let overrides = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
        parse(
            Path::new("t.toml"),
            text,
            &Adjustments {
                overrides,
                seed: None,
            },
        )
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let s = parse_str(MINIMAL).unwrap();
        assert_eq!(s.stale_threshold, Duration::from_secs(180));
        assert_eq!(s.clients.len(), 4);
        assert!(s.daemon.initiate);
        assert_eq!(s.mode_name(), "jit");
        assert_eq!(s.clients[3].start, Duration::from_millis(1500));
    }

    #[test]
    fn same_seed_same_keys_other_seed_other_keys() {
        let a = parse_str(MINIMAL).unwrap();
        let b = parse_str(MINIMAL).unwrap();
        assert_eq!(
            a.clients[0].identity.public_key,
            b.clients[0].identity.public_key
        );
        let c = parse(
            Path::new("t.toml"),
            MINIMAL,
            &Adjustments {
                overrides: vec![],
                seed: Some(4),
            },
        )
        .unwrap();
        assert_ne!(
            a.clients[0].identity.public_key,
            c.clients[0].identity.public_key
        );
        assert_eq!(c.seed, 4);
    }

    #[test]
    fn clients_get_distinct_sources_and_tunnel_addresses() {
        let s = with_sets(MINIMAL, &["control_plane.extra_registered=3"]).unwrap();
        let mut tunnels: Vec<_> = s.registered_peers().map(|p| p.tunnel_ip).collect();
        tunnels.sort();
        tunnels.dedup();
        assert_eq!(tunnels.len(), 7);
        assert!(tunnels
            .iter()
            .all(|t| t.octets()[0] == 100 && t.octets()[1] == 64));
        let mut sources: Vec<_> = s.clients.iter().map(|c| c.source_ip).collect();
        sources.dedup();
        assert_eq!(sources.len(), 4);
        assert!(sources.iter().all(|ip| ip.octets()[..2] == [198, 18]));
    }

    #[test]
    fn preinstalled_peers_are_seeded_distinct_and_leave_clients_alone() {
        let plain = with_sets(MINIMAL, &["control_plane.extra_registered=3"]).unwrap();
        let s = with_sets(
            MINIMAL,
            &["control_plane.extra_registered=3", "preinstalled_peers=500"],
        )
        .unwrap();
        assert_eq!(s.preinstalled.len(), 500);
        assert_eq!(
            s.preinstalled,
            with_sets(
                MINIMAL,
                &["control_plane.extra_registered=3", "preinstalled_peers=500"]
            )
            .unwrap()
            .preinstalled
        );
        // Adding them does not change any client's or extra peer's key or address.
        let keys = |s: &Scenario| {
            s.registered_peers()
                .map(|p| (p.public_key, p.tunnel_ip))
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&plain), keys(&s));
        // No tunnel address and no key is shared with anyone.
        let mut tunnels: Vec<_> = s.registered_peers().map(|p| p.tunnel_ip).collect();
        tunnels.extend(s.preinstalled.iter().map(|p| p.tunnel_ip));
        let mut all_keys: Vec<_> = s.registered_peers().map(|p| p.public_key).collect();
        all_keys.extend(s.preinstalled.iter().map(|p| p.public_key));
        tunnels.sort();
        tunnels.dedup();
        all_keys.sort();
        all_keys.dedup();
        assert_eq!(tunnels.len(), 507);
        assert_eq!(all_keys.len(), 507);
        assert!(tunnels.iter().all(|t| t.octets()[..2] == [100, 64]));
    }

    #[test]
    fn stored_peers_are_registered_distinct_and_shift_nobody() {
        let sets = ["control_plane.extra_registered=3", "preinstalled_peers=5"];
        let plain = with_sets(MINIMAL, &sets).unwrap();
        let s = with_sets(MINIMAL, &[sets[0], sets[1], "stored_peers=40"]).unwrap();
        assert_eq!(s.stored_peers.len(), 40);
        // Every earlier peer keeps its key and address; the stored ones come after them.
        let registered: Vec<_> = s
            .registered_peers()
            .map(|p| (p.public_key, p.tunnel_ip))
            .collect();
        let before: Vec<_> = plain
            .registered_peers()
            .map(|p| (p.public_key, p.tunnel_ip))
            .collect();
        assert_eq!(registered[..before.len()], before[..]);
        assert_eq!(registered.len(), before.len() + 40);
        assert_eq!(s.preinstalled, plain.preinstalled);
        let mut tunnels: Vec<_> = registered.iter().map(|(_, ip)| *ip).collect();
        tunnels.extend(s.preinstalled.iter().map(|p| p.tunnel_ip));
        tunnels.sort();
        tunnels.dedup();
        assert_eq!(tunnels.len(), registered.len() + 5);
        let err = with_sets(MINIMAL, &["stored_peers=65000"]).unwrap_err();
        assert!(err.to_string().contains("stored_peers"), "{err}");
    }

    #[test]
    fn preinstalled_peers_count_towards_the_peer_limit() {
        let err = with_sets(MINIMAL, &["preinstalled_peers=65000"]).unwrap_err();
        assert!(err.to_string().contains("preinstalled_peers"), "{err}");
        let err = with_sets(MINIMAL, &["sample_every=10ms"]).unwrap_err();
        assert!(err.to_string().contains("sample_every"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_naming_key_and_file() {
        let err = parse_str(&format!("{MINIMAL}\n[daemon]\nmoed = \"push\"\n")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.toml") && msg.contains("moed"), "{msg}");
    }

    #[test]
    fn set_overrides_apply_and_are_validated() {
        let s = with_sets(MINIMAL, &["daemon.mode=push", "duration=20s"]).unwrap();
        assert_eq!(s.mode_name(), "push");
        assert_eq!(s.duration, Duration::from_secs(20));
        let err = with_sets(MINIMAL, &["daemon.mode=pull"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pull") && err.contains("--set"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = with_sets(MINIMAL, &["population.0.count=0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("population[0].count"), "{err}");
        let err = with_sets(MINIMAL, &["population.0.link.loss=1.5"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("population[0].link.loss"), "{err}");
        // A rate so small that the second client's start overflows a Duration is refused,
        // naming the arrival (it panicked in resolve before).
        let err = with_sets(
            MINIMAL,
            &[r#"population.0.arrival={ kind = "constant", rate = 1e-300 }"#],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("population[0].arrival"), "{err}");
    }

    #[test]
    fn events_are_checked() {
        let outage = format!("{MINIMAL}\n[[event]]\nat = \"2s\"\nkind = \"api_outage\"\n");
        let err = parse_str(&outage).unwrap_err().to_string();
        assert!(err.contains("event[0].until"), "{err}");
        let ok = parse_str(&format!("{outage}until = \"5s\"\n")).unwrap();
        assert_eq!(
            ok.events[0].action,
            EventAction::ApiOutage {
                until: Duration::from_secs(5)
            }
        );
        let late = format!("{MINIMAL}\n[[event]]\nat = \"20s\"\nkind = \"reboot\"\n");
        assert!(parse_str(&late)
            .unwrap_err()
            .to_string()
            .contains("event[0].at"));
    }

    #[test]
    fn expectations_are_parsed_before_anything_runs() {
        let s = parse_str(&format!("{MINIMAL}\n[expect]\nsetup_p99 = \"<= 50ms\"\n")).unwrap();
        assert_eq!(s.expectations.len(), 1);
        assert_eq!(s.expectations[0].threshold, 50.0);
        let err = parse_str(&format!("{MINIMAL}\n[expect]\nsetup_p99 = \"50ms\"\n")).unwrap_err();
        assert!(
            err.to_string().contains("setup_p99") && err.to_string().contains("t.toml"),
            "{err}"
        );
        let err = parse_str(&format!("{MINIMAL}\n[expect]\nbogus = \"< 1\"\n")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn every_shipped_scenario_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut seen = 0;
        // scenarios/*.toml and one level below (scenarios/kernel/*.toml).
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).unwrap() {
                    paths.push(inner.unwrap().path());
                }
            } else {
                paths.push(path);
            }
        }
        for path in paths {
            if path.extension().is_some_and(|e| e == "toml") {
                let s = load(&path, &Adjustments::default()).unwrap_or_else(|e| panic!("{e}"));
                assert!(!s.clients.is_empty(), "{}", path.display());
                seen += 1;
            }
        }
        assert!(
            seen >= 9,
            "expected the shipped scenarios in {}",
            dir.display()
        );
    }
}
