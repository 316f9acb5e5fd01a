//! `--predict KEY=VALUE`: the same dotted overrides as `jitwg run --set`, applied to the
//! calibration's recorded scenario and checked exactly as a scenario file is (unknown keys and
//! values of the wrong type are refused, naming the key), then reduced to planned quantities.

use anyhow::{anyhow, Context};
use jitwg_reports::model::Planned;

use crate::scenario::{Override, ScenarioFile};

/// Parses every `--predict` argument.
pub fn parse(args: &[String]) -> anyhow::Result<Vec<Override>> {
    args.iter()
        .map(|a| Override::parse(a).with_context(|| format!("--predict {a}")))
        .collect()
}

/// A scenario file in its JSON form (as a run records it), checked like `jitwg validate` reads it.
pub fn read_scenario(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading scenario {}", path.display()))?;
    let file: ScenarioFile =
        toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?;
    serde_json::to_value(&file).context("serializing the scenario")
}

/// The scenario to predict, and the keys that did not change any input of the model.
pub struct Applied {
    pub planned: Planned,
    pub unused: Vec<String>,
}

/// Applies `overrides` one by one to `base` (a recorded `resolved_scenario`), so an error names
/// the key that caused it.
pub fn apply(base: &serde_json::Value, overrides: &[Override]) -> anyhow::Result<Applied> {
    let mut tree: toml::Value = serde_json::from_value(strip_nulls(base.clone()))
        .context("the calibration's recorded scenario is not a scenario")?;
    let mut planned = planned_of(&tree).context("the calibration's recorded scenario")?;
    let mut unused = Vec::new();
    for o in overrides {
        let key = o.key();
        o.apply(&mut tree)
            .with_context(|| format!("--predict {key}"))?;
        let next = planned_of(&tree)
            .map_err(|e| anyhow!("--predict {key}={}: {e:#}", display(&o.value)))?;
        if next == planned {
            unused.push(key);
        }
        planned = next;
    }
    Ok(Applied { planned, unused })
}

fn planned_of(tree: &toml::Value) -> anyhow::Result<Planned> {
    let file: ScenarioFile = tree
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("{}", e.message().trim_end()))?;
    let json = serde_json::to_value(&file).context("serializing the scenario")?;
    Ok(Planned::from_json(&json, super::daemon_defaults())?)
}

fn display(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// TOML has no null: drop null members (unset optional keys) before converting.
fn strip_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "name": "storm", "seed": 1, "duration": "25s", "stale_threshold": "3m",
            "sample_every": "1s", "preinstalled_peers": 0, "stored_peers": 0,
            "control_plane": {"extra_registered": 0, "register_clients": "on",
                "faults": {"latency": "0s", "error_rate": 0.0}},
            "daemon": {"sweep_every": "5s"},
            "lab": {"cpus": "auto"},
            "population": [{"name": "s", "count": 500,
                "arrival": {"kind": "poisson", "rate": 500.0},
                "behaviour": {"kind": "stay", "duration": "15s", "traffic_every": "5s"},
                "link": {"delay": "2ms", "jitter": "1ms", "loss": 0.0}}],
            "event": [], "expect": {}
        })
    }

    fn set(args: &[&str]) -> anyhow::Result<Applied> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        apply(&base(), &parse(&args)?)
    }

    #[test]
    fn overrides_change_the_planned_quantities() {
        let a = set(&["population.0.count=2000", "population.0.arrival.rate=2000"]).unwrap();
        assert_eq!(a.planned.arrivals, 2000.0);
        assert_eq!(a.planned.storm_size, 2000.0);
        assert!(a.unused.is_empty());
        let a = set(&["daemon.evict_after=20s"]).unwrap();
        assert_eq!(a.planned.evict_after_s, 20.0);
    }

    #[test]
    fn a_key_outside_the_model_is_reported_unused() {
        let a = set(&["population.0.link.delay=10ms"]).unwrap();
        assert_eq!(a.unused, vec!["population.0.link.delay".to_string()]);
    }

    #[test]
    fn unparsable_values_and_unknown_keys_name_the_key() {
        let e = set(&["population.0.count=lots"]).err().unwrap();
        assert!(
            format!("{e:#}").contains("population.0.count=lots"),
            "{e:#}"
        );
        let e = set(&["daemon.evict_after=soon"]).err().unwrap();
        assert!(format!("{e:#}").contains("daemon.evict_after"), "{e:#}");
        let e = set(&["daemon.no_such_key=1"]).err().unwrap();
        assert!(format!("{e:#}").contains("no_such_key"), "{e:#}");
        assert!(set(&["population.7.count=1"]).is_err());
        assert!(set(&["no-equals-sign"]).is_err());
    }
}
