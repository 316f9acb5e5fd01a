//! Which keys a sweep may vary for a given scenario: every dotted path of the scenario as
//! `ScenarioFile` serializes it (defaults included, so `stale_threshold` or
//! `control_plane.faults.latency` are there even when the file leaves them out), plus every
//! optional key the file left unset (`[daemon]`'s, `backend`, `lab.lag_limit`). Array entries are
//! indexed (`population.0.count`), exactly as `--set` spells them.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::scenario::file::{BackendName, BootName, DaemonFile, ModeName, Switch};
use crate::scenario::ScenarioFile;

/// Every `[daemon]` key set, so that each appears when serialized. The struct literal names
/// every field on purpose: a new `[daemon]` key fails to compile here until it is listed.
fn every_daemon_key() -> DaemonFile {
    let d = Duration::from_secs(1);
    DaemonFile {
        mode: Some(ModeName::Jit),
        boot: Some(BootName::Jit),
        evict_after: Some(d),
        sweep_every: Some(d),
        sweep_chunk: Some(1),
        sweep_budget: Some(d),
        evict_in_push_mode: Some(Switch::On),
        initiate: Some(Switch::On),
        positive_ttl: Some(d),
        negative_ttl: Some(d),
        api_timeout: Some(d),
        api_retries: Some(1),
        api_min_interval: Some(d),
        reinstall_active: Some(d),
        initiate_rate: Some(1),
        max_pending: Some(1),
        api_concurrency: Some(1),
        unknown_lookup_rate: Some(1),
        unknown_lookup_floor: Some(1),
        unknown_lookup_burst: Some(1),
        source_penalty_burst: Some(1),
        source_penalty_forgive: Some(d),
        source_quiet_gap: Some(d),
        identify_workers: Some(1),
        identify_queue: Some(1),
        identify_queue_per_source: Some(1),
    }
}

/// Every dotted path (tables, arrays and leaves) a `--vary` may name for `file`, and the leaves
/// alone, for the error message that lists them.
pub struct ValidKeys {
    pub all: BTreeSet<String>,
    pub leaves: BTreeSet<String>,
}

impl ValidKeys {
    pub fn of(file: &ScenarioFile) -> ValidKeys {
        let mut full = file.clone();
        full.sweep = None;
        full.backend = Some(full.backend.unwrap_or(BackendName::Userspace));
        full.lab.lag_limit = Some(full.lab.lag_limit.unwrap_or(Duration::from_millis(20)));
        // The file's own [daemon] values are kept; the unset ones appear with stand-ins.
        let file_daemon = toml::Value::try_from(&file.daemon).ok();
        full.daemon = every_daemon_key();
        let mut keys = ValidKeys {
            all: BTreeSet::new(),
            leaves: BTreeSet::new(),
        };
        if let Ok(tree) = toml::Value::try_from(&full) {
            keys.walk("", &tree);
        }
        if let Some(tree) = file_daemon {
            keys.walk("daemon", &tree);
        }
        keys
    }

    fn walk(&mut self, prefix: &str, node: &toml::Value) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match node {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let path = join(k);
                    self.all.insert(path.clone());
                    self.walk(&path, v);
                }
            }
            toml::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let path = join(&i.to_string());
                    self.all.insert(path.clone());
                    self.walk(&path, v);
                }
            }
            _ => {
                if !prefix.is_empty() {
                    self.leaves.insert(prefix.to_owned());
                }
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.all.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "t"
duration = "10s"
[daemon]
evict_after = "30s"
[[population]]
name = "a"
count = 4
arrival = { kind = "constant", rate = 2.0 }
"#;

    #[test]
    fn lists_file_keys_defaults_and_unset_daemon_keys() {
        let file: ScenarioFile = toml::from_str(FILE).unwrap();
        let keys = ValidKeys::of(&file);
        for k in [
            "duration",
            "stale_threshold",
            "stored_peers",
            "population.0.count",
            "population.0.arrival.rate",
            "population.0.arrival",
            "daemon.evict_after",
            "daemon.boot",
            "daemon.sweep_every",
            "control_plane.faults.latency",
            "lab.lag_limit",
            "backend",
        ] {
            assert!(keys.contains(k), "{k} missing: {:?}", keys.leaves);
        }
        assert!(!keys.contains("population.1.count"));
        assert!(!keys.contains("daemon.bogus"));
        assert!(keys.leaves.contains("population.0.count"));
        assert!(!keys.leaves.contains("population.0"));
    }
}
