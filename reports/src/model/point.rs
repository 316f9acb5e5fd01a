//! Calibration points: every finished run under a calibration directory, reduced to what it
//! planned (its recorded scenario) and what it measured (figures, plus the counts the cost model
//! divides by: connections, handshakes, peer-seconds installed, stored peers, per-stage time).
//!
//! A directory is either a parameter sweep's (`points/<i>/r<k>/results.json`; `*.partial`
//! directories are runs in progress and skipped) or any tree of `results.json` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::scenario::{DaemonDefaults, Planned, ScenarioReadError};
use crate::figures::{figure, Figures};
use crate::schema::Results;

/// The figures the model predicts, by registry name.
pub const PREDICTED_FIGURES: [&str; 7] = [
    "daemon_cpu",
    "dataplane_cpu",
    "daemon_rss_peak",
    "dataplane_rss_peak",
    "setup_p50",
    "stale_peers_max",
    "reload_time",
];

/// jitwgd's stages with their own time metric.
pub const STAGES: [&str; 3] = ["identify", "lookup", "install"];

/// Why a calibration directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationReadError {
    #[error("cannot read calibration directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read calibration point {path}")]
    Load {
        path: PathBuf,
        #[source]
        source: crate::schema::LoadError,
    },
    #[error("calibration point {path}: its recorded scenario cannot be read")]
    Scenario {
        path: PathBuf,
        #[source]
        source: ScenarioReadError,
    },
}

/// What one run measured, in the model's units (seconds, bytes, counts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// Connection attempts.
    pub arrivals: f64,
    /// Handshake initiations the clients sent (retries included).
    pub handshakes: f64,
    pub installed_peak: Option<f64>,
    /// Installed peers integrated over the run, divided by the sweep period: peers each
    /// eviction sweep read, summed over sweeps.
    pub peer_sweeps: f64,
    /// Peers in jitwgd's database at the reboot.
    pub stored_peers: Option<f64>,
    /// How long the run lasted (it ends early when every client is done).
    pub run_seconds: f64,
    pub api_calls: f64,
    /// The predicted figures this run measured (registry units: seconds, bytes, ms, count).
    pub figures: BTreeMap<String, f64>,
    /// Per stage (`identify`, `lookup`, `install`): seconds spent and how many, when the run
    /// recorded jitwgd's stage metrics.
    pub stages: BTreeMap<String, (f64, f64)>,
    /// Per stage that runs on one thread (`identify`, `install`): its thread's CPU seconds,
    /// when the run recorded them.
    pub stage_cpu: BTreeMap<String, f64>,
    /// CPUs the gateway was confined to (1 under the default split).
    pub gateway_cpus: Option<u32>,
    pub saturated: bool,
}

/// One calibration run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalPoint {
    /// Where its results.json is.
    pub source: PathBuf,
    pub planned: Planned,
    pub measured: Measured,
    /// The recorded scenario (the base for `--predict`).
    #[serde(skip)]
    pub scenario: serde_json::Value,
}

impl CalPoint {
    /// Reduces one run. `raw` is the file's JSON (for fields newer than this crate's schema).
    pub fn from_results(
        source: PathBuf,
        results: &Results,
        raw: &serde_json::Value,
        defaults: DaemonDefaults,
    ) -> Result<Self, ScenarioReadError> {
        let scenario = results.run.resolved_scenario.clone();
        let planned = Planned::from_json(&scenario, defaults)?;
        let figures = Figures::from_results(results);
        let attempts = results.clients.iter().flat_map(|c| &c.connections);
        let arrivals = attempts.clone().count() as f64;
        let handshakes = attempts.map(|c| f64::from(c.handshake_attempts)).sum();
        let mut peer_seconds = 0.0;
        for pair in results.samples.windows(2) {
            let dt = (pair[1].t_ms - pair[0].t_ms).max(0.0) / 1000.0;
            peer_seconds += dt * (pair[0].installed_peers + pair[1].installed_peers) as f64 / 2.0;
        }
        let measured = Measured {
            arrivals,
            handshakes,
            installed_peak: figures.installed_peers_max.map(|n| n as f64),
            peer_sweeps: peer_seconds / planned.sweep_every_s.max(f64::MIN_POSITIVE),
            stored_peers: figures.stored_peers.map(|n| n as f64),
            run_seconds: results.run.duration_ms / 1000.0,
            api_calls: results.api.calls_total as f64,
            figures: PREDICTED_FIGURES
                .iter()
                .filter_map(|name| {
                    let value = (figure(name)?.get)(&figures)?;
                    Some((name.to_string(), value))
                })
                .collect(),
            stages: stages(raw),
            stage_cpu: stage_cpu(raw),
            gateway_cpus: results
                .run
                .cpu_split
                .as_ref()
                .and_then(|s| cpu_count(&s.gateway)),
            saturated: figures.saturated,
        };
        Ok(CalPoint {
            source,
            planned,
            measured,
            scenario,
        })
    }

    /// A measured figure by registry name.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.measured.figures.get(name).copied()
    }
}

/// Per-stage time from the results' `stage_time` (`{stage: {"seconds": s, "count": n}}`, the
/// driver's sums of jitwgd's `jitwgd_stage_seconds` histogram), or from a `stage_seconds` table
/// (`{stage: seconds}` with counts in `stage_counts`, or the same shape as `stage_time`).
/// Absent in older files: empty.
fn stages(raw: &serde_json::Value) -> BTreeMap<String, (f64, f64)> {
    let Some(seconds) = raw
        .get("stage_time")
        .or_else(|| raw.get("stage_seconds"))
        .and_then(|v| v.as_object())
    else {
        return BTreeMap::new();
    };
    let counts = raw.get("stage_counts");
    STAGES
        .iter()
        .filter_map(|&stage| {
            let entry = seconds.get(stage)?;
            let (s, n) = match entry.as_f64() {
                Some(s) => (s, counts?.get(stage)?.as_f64()?),
                None => (
                    entry
                        .get("seconds")
                        .or_else(|| entry.get("sum"))?
                        .as_f64()?,
                    entry.get("count")?.as_f64()?,
                ),
            };
            Some((stage.to_string(), (s, n)))
        })
        .collect()
}

/// Per-stage CPU seconds from the results' `stage_time` (`{stage: {"cpu_seconds": s, ..}}`).
/// Absent (older files, the lookup stage): not in the map.
fn stage_cpu(raw: &serde_json::Value) -> BTreeMap<String, f64> {
    let Some(table) = raw.get("stage_time").and_then(|v| v.as_object()) else {
        return BTreeMap::new();
    };
    STAGES
        .iter()
        .filter_map(|&stage| {
            let cpu = table.get(stage)?.get("cpu_seconds")?.as_f64()?;
            Some((stage.to_string(), cpu))
        })
        .collect()
}

/// Number of CPUs in a kernel CPU list (`0-1,3` → 3).
fn cpu_count(list: &str) -> Option<u32> {
    let mut n = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse::<u32>().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// Every finished run under `dir`, in path order.
pub fn read_dir(
    dir: &Path,
    defaults: DaemonDefaults,
) -> Result<Vec<CalPoint>, CalibrationReadError> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).map_err(|source| CalibrationReadError::Load {
                    path: path.clone(),
                    source: crate::schema::LoadError::Read {
                        path: path.clone(),
                        source,
                    },
                })?;
            let load = |source| CalibrationReadError::Load {
                path: path.clone(),
                source,
            };
            let results = Results::from_json(&text).map_err(load)?;
            let raw: serde_json::Value = serde_json::from_str(&text)
                .map_err(|source| load(crate::schema::LoadError::Parse { source }))?;
            CalPoint::from_results(path.clone(), &results, &raw, defaults)
                .map_err(|source| CalibrationReadError::Scenario { path, source })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CalibrationReadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CalibrationReadError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CalibrationReadError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            // A repeat still running, or interrupted: not a finished point.
            if !name.to_string_lossy().ends_with(".partial") {
                collect(&path, out)?;
            }
        } else if name == "results.json" {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count() {
        assert_eq!(cpu_count("0"), Some(1));
        assert_eq!(cpu_count("0-1,3"), Some(3));
        assert_eq!(cpu_count(""), None);
        assert_eq!(cpu_count("x"), None);
    }

    #[test]
    fn stage_metrics_in_either_shape() {
        let flat = serde_json::json!({
            "stage_seconds": {"identify": 1.5, "lookup": 0.5},
            "stage_counts": {"identify": 300.0, "lookup": 100.0}
        });
        let s = stages(&flat);
        assert_eq!(s["identify"], (1.5, 300.0));
        assert_eq!(s["lookup"], (0.5, 100.0));
        let nested = serde_json::json!({
            "stage_seconds": {"install": {"seconds": 0.2, "count": 50}}
        });
        assert_eq!(stages(&nested)["install"], (0.2, 50.0));
        assert!(stages(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn stage_cpu_where_the_run_recorded_it() {
        let raw = serde_json::json!({"stage_time": {
            "identify": {"seconds": 1.5, "count": 300, "cpu_seconds": 0.04},
            "lookup": {"seconds": 0.5, "count": 100},
            "install": {"seconds": 0.2, "count": 50, "cpu_seconds": 0.01}
        }});
        let cpu = stage_cpu(&raw);
        assert_eq!(cpu.get("identify"), Some(&0.04));
        assert_eq!(cpu.get("install"), Some(&0.01));
        assert!(!cpu.contains_key("lookup"));
        assert!(stage_cpu(&serde_json::json!({})).is_empty());
    }
}
