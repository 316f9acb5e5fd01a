//! `jitwg plan`'s arguments and their parsing: each value that does not parse names its flag.

use std::path::PathBuf;

use clap::Args;
use jitwg_reports::model::FleetInputs;

/// Capacity planning from calibration runs.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Calibration directories: a parameter sweep's output (`points/<i>/r<k>/results.json`) or
    /// any tree of results.json files; at least 3 finished runs in all.
    #[arg(required = true, value_name = "CAL_DIR")]
    pub calibration: Vec<PathBuf>,
    /// Predict the figures of the calibration's scenario with this change, e.g.
    /// --predict population.0.count=8000 (the same dotted keys as `jitwg run --set`).
    /// Repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub predict: Vec<String>,
    /// Check the model against held-out runs: predict each finished run under this directory
    /// (a sweep's, one of its `points/<i>`, or any tree of results.json files) from its
    /// recorded scenario and compare with what it measured (predicted / measured - 1, against
    /// ±25 % for CPU, memory and stale peers, ±40 % for latency below the knee). Runs under a
    /// --validate directory are left out of the calibration even when a CAL_DIR holds them, so
    /// a sweep's points can be held out of it. Repeatable.
    #[arg(long, value_name = "HELD_OUT_DIR")]
    pub validate: Vec<PathBuf>,
    /// Leave the runs under this directory out of the calibration (e.g. a sweep's held-out
    /// `points/<i>`, to `--predict` them from the other points). Repeatable.
    #[arg(long, value_name = "DIR")]
    pub exclude: Vec<PathBuf>,
    /// The scenario `--predict` changes [default: the first calibration run's recorded one].
    #[arg(long, value_name = "SCENARIO.toml")]
    pub scenario: Option<PathBuf>,
    /// Fleet plan: registered keys, e.g. 2000000 or 2M.
    #[arg(long, value_name = "N")]
    pub peers: Option<String>,
    /// Fleet plan: new connections per second across the fleet, e.g. 300/s.
    #[arg(long, value_name = "R/s")]
    pub arrivals: Option<String>,
    /// Fleet plan: how long a client stays connected, e.g. 30m.
    #[arg(long, value_name = "D")]
    pub dwell: Option<String>,
    /// Fleet plan: jitwgd's evict_after, e.g. 3m.
    #[arg(long, value_name = "E")]
    pub evict_after: Option<String>,
    /// Fleet plan: jitwgd's sweep_every (the eviction sweep period) [default: jitwgd's].
    #[arg(long, value_name = "S")]
    pub sweep_every: Option<String>,
    /// Fleet plan: CPUs per gateway (anything but the calibration's is extrapolated) [default: 1].
    #[arg(long, value_name = "C")]
    pub cpus_per_gateway: Option<String>,
    /// Fleet plan: longest acceptable reboot, daemon start to ready, e.g. 10s.
    #[arg(long, value_name = "T")]
    pub reboot_budget: Option<String>,
    /// Fleet plan: a storm of this many clients arriving within one second across the fleet.
    #[arg(long, value_name = "S")]
    pub storm: Option<String>,
    /// Fleet plan: a peer idle this long counts as stale [default: 180s].
    #[arg(long, value_name = "T")]
    pub stale_threshold: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// A flag's value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {expected}")]
pub struct BadValue {
    flag: &'static str,
    value: String,
    expected: &'static str,
}

impl PlanArgs {
    /// The fleet question, if `--peers` was given; every fleet flag is then checked.
    pub fn fleet_inputs(&self) -> Result<Option<FleetInputs>, BadValue> {
        let asked = [
            &self.peers,
            &self.arrivals,
            &self.dwell,
            &self.evict_after,
            &self.sweep_every,
            &self.cpus_per_gateway,
            &self.reboot_budget,
            &self.storm,
            &self.stale_threshold,
        ]
        .iter()
        .any(|f| f.is_some());
        if !asked {
            return Ok(None);
        }
        let required = |flag: &'static str, v: &Option<String>| {
            v.clone().ok_or(BadValue {
                flag,
                value: String::new(),
                expected: "a fleet plan needs --peers, --arrivals, --dwell and --evict-after",
            })
        };
        let defaults = super::daemon_defaults();
        Ok(Some(FleetInputs {
            peers: count("--peers", &required("--peers", &self.peers)?)?,
            arrivals_per_s: rate("--arrivals", &required("--arrivals", &self.arrivals)?)?,
            dwell_s: seconds("--dwell", &required("--dwell", &self.dwell)?)?,
            evict_after_s: seconds(
                "--evict-after",
                &required("--evict-after", &self.evict_after)?,
            )?,
            sweep_every_s: match &self.sweep_every {
                Some(v) => seconds("--sweep-every", v)?,
                None => defaults.sweep_every.as_secs_f64(),
            }
            .max(0.001),
            cpus_per_gateway: match &self.cpus_per_gateway {
                Some(v) => positive("--cpus-per-gateway", v)?,
                None => 1.0,
            },
            reboot_budget_s: self
                .reboot_budget
                .as_deref()
                .map(|v| seconds("--reboot-budget", v))
                .transpose()?,
            storm: self
                .storm
                .as_deref()
                .map(|v| count("--storm", v))
                .transpose()?,
            stale_threshold_s: match &self.stale_threshold {
                Some(v) => seconds("--stale-threshold", v)?,
                None => 180.0,
            },
        }))
    }
}

/// `2000000`, `2M`, `250k`.
fn count(flag: &'static str, text: &str) -> Result<f64, BadValue> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        _ => (t, 1.0),
    };
    digits
        .trim()
        .replace('_', "")
        .parse::<f64>()
        .ok()
        .map(|v| v * unit)
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or(BadValue {
            flag,
            value: text.to_string(),
            expected: "a positive count like 2000000, 2M or 250k",
        })
}

/// `300/s` or `300`.
fn rate(flag: &'static str, text: &str) -> Result<f64, BadValue> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    count(flag, t).map_err(|_| BadValue {
        flag,
        value: text.to_string(),
        expected: "a positive rate like 300/s",
    })
}

fn positive(flag: &'static str, text: &str) -> Result<f64, BadValue> {
    count(flag, text).map_err(|_| BadValue {
        flag,
        value: text.to_string(),
        expected: "a positive number",
    })
}

/// A duration like `30m` or `90s`.
fn seconds(flag: &'static str, text: &str) -> Result<f64, BadValue> {
    humantime::parse_duration(text.trim())
        .map(|d| d.as_secs_f64())
        .map_err(|_| BadValue {
            flag,
            value: text.to_string(),
            expected: "a duration like 90s, 30m or 1h",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_with_units() {
        assert_eq!(count("--peers", "2M").unwrap(), 2e6);
        assert_eq!(count("--peers", "250k").unwrap(), 250e3);
        assert_eq!(count("--peers", "1_000").unwrap(), 1000.0);
        assert_eq!(rate("--arrivals", "300/s").unwrap(), 300.0);
        assert_eq!(seconds("--dwell", "30m").unwrap(), 1800.0);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let e = count("--peers", "lots").unwrap_err().to_string();
        assert!(e.starts_with("--peers \"lots\""), "{e}");
        let e = rate("--arrivals", "-3/s").unwrap_err().to_string();
        assert!(e.starts_with("--arrivals"), "{e}");
        let e = seconds("--dwell", "forever").unwrap_err().to_string();
        assert!(e.starts_with("--dwell"), "{e}");
    }
}
