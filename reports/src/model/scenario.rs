//! What a scenario *plans* (read from its JSON form, `RunInfo::resolved_scenario`), reduced to
//! the few quantities the cost model is driven by: arrivals, storm size, stored peers, and the
//! installed and stale peers Little's law expects from arrival rates and residence times.
//!
//! The same reduction serves calibration points (their recorded scenario) and predictions (a
//! scenario with `--predict` overrides applied), so both sides of a fit speak the same units.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use super::wave::Wave;

/// jitwgd's defaults for the settings a scenario may leave unset; the driver passes jitwgd's
/// own (`reports` depends on neither crate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DaemonDefaults {
    pub evict_after: Duration,
    pub sweep_every: Duration,
}

/// Why a scenario could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioReadError {
    #[error("scenario has no `{0}`")]
    Missing(String),
    #[error("scenario key `{key}`: `{value}` is not {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// The planned quantities of one scenario. Times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub clients: f64,
    /// Connections planned: one per client, `times` for returning ones.
    pub arrivals: f64,
    /// Most connections planned within any one second (the busiest population's).
    pub storm_size: f64,
    /// Each population's first wave of arrivals: how many, how fast. What the setup-latency
    /// model reads through [`Planned::queued`]: the same second can hold 10 arrivals spread
    /// over it or 50 within 20 ms, and only the second kind queues.
    pub waves: Vec<Wave>,
    /// Peers in jitwgd's database that never connect (`stored_peers` + `extra_registered`).
    pub stored_peers: f64,
    pub preinstalled_peers: f64,
    pub evict_after_s: f64,
    pub sweep_every_s: f64,
    /// How often the testbed's driver samples the gateway (lists the data plane's peers,
    /// scrapes jitwgd's metrics): a cost per installed peer the run pays and a production
    /// gateway does not.
    pub sample_every_s: f64,
    pub stale_threshold_s: f64,
    pub duration_s: f64,
    /// How long the run is expected to last: until its last client is done, at most `duration`.
    pub run_s: f64,
    /// Latency the control plane adds to every lookup.
    pub api_latency_s: f64,
    /// `jit` or `push`.
    pub mode: String,
    /// `jit` or `preload`.
    pub boot: String,
    pub has_reboot: bool,
    /// Peak installed peers by Little's law: each arrival holds a peer for its active time plus
    /// `evict_after` plus a whole sweep period (the peak is just before a sweep; half a period
    /// on average), capped by what arrives within the run.
    pub installed_estimate: f64,
    /// Mean installed peers over the run (same law with half a sweep period, averaged over the
    /// run's duration).
    pub installed_mean_estimate: f64,
    /// Peak stale peers by the same law: time a peer spends past the stale threshold before
    /// the eviction sweep removes it, times the arrival rate.
    pub stale_estimate: f64,
    /// Peers one data-plane process installs over its life (removed ones included): every
    /// key's installs (a returning client evicted between its connections is installed again),
    /// plus preinstalled peers, plus stored peers a preload boot or push installs. wireguard-go
    /// keeps memory of removed peers, so its peak RSS follows this as well as the peak.
    pub installs_estimate: f64,
    /// Peers installed without ever handshaking: preinstalled ones, and stored ones a preload
    /// boot or push installs. wireguard-go holds far less for such a peer than for one with a
    /// session (keypairs, queues in use).
    pub bare_peers: f64,
    /// Peers installed for the whole run whatever the arrivals do: preinstalled ones, stored
    /// ones a preload boot or push installs, and in push mode every registered client. They
    /// count in full in [`Planned::peer_seconds`].
    pub resident_peers: f64,
}

impl Planned {
    /// Reads a scenario's JSON form (the `ScenarioFile` as serialized by the driver).
    pub fn from_json(
        scenario: &Value,
        defaults: DaemonDefaults,
    ) -> Result<Self, ScenarioReadError> {
        let daemon = scenario.get("daemon");
        let setting = |key: &str, default: Duration| -> Result<f64, ScenarioReadError> {
            match daemon.and_then(|d| d.get(key)) {
                None | Some(Value::Null) => Ok(default.as_secs_f64()),
                Some(v) => seconds(&format!("daemon.{key}"), v),
            }
        };
        let evict_after_s = setting("evict_after", defaults.evict_after)?;
        let sweep_every_s = setting("sweep_every", defaults.sweep_every)?;
        let word = |key: &str, default: &str| {
            daemon
                .and_then(|d| d.get(key))
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let mode = word("mode", "jit");
        let boot = word("boot", "jit");
        let duration_s = seconds(
            "duration",
            scenario
                .get("duration")
                .ok_or_else(|| ScenarioReadError::Missing("duration".into()))?,
        )?;
        let stale_threshold_s = match scenario.get("stale_threshold") {
            Some(v) => seconds("stale_threshold", v)?,
            None => 180.0,
        };
        // The driver's default sampling period when the scenario leaves it unset.
        let sample_every_s = match scenario.get("sample_every") {
            Some(v) if !v.is_null() => seconds("sample_every", v)?,
            _ => 1.0,
        };
        let api_latency_s = match scenario.pointer("/control_plane/faults/latency") {
            Some(v) => seconds("control_plane.faults.latency", v)?,
            None => 0.0,
        };
        let extra = number(
            scenario,
            "/control_plane/extra_registered",
            "control_plane.extra_registered",
        )?;
        let stored_peers = number(scenario, "/stored_peers", "stored_peers")? + extra;
        let preinstalled_peers = number(scenario, "/preinstalled_peers", "preinstalled_peers")?;
        let has_reboot = scenario
            .get("event")
            .and_then(Value::as_array)
            .is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e.get("kind").and_then(Value::as_str) == Some("reboot"))
            });
        let residence = Residence {
            evict_after_s,
            sweep_every_s,
            stale_threshold_s,
            duration_s,
        };
        let populations = scenario
            .get("population")
            .and_then(Value::as_array)
            .ok_or_else(|| ScenarioReadError::Missing("population".into()))?;
        let mut planned = Planned {
            clients: 0.0,
            arrivals: 0.0,
            storm_size: 0.0,
            waves: Vec::new(),
            stored_peers,
            preinstalled_peers,
            evict_after_s,
            sweep_every_s,
            sample_every_s,
            stale_threshold_s,
            duration_s,
            run_s: 0.0,
            api_latency_s,
            mode,
            boot,
            has_reboot,
            installed_estimate: 0.0,
            installed_mean_estimate: 0.0,
            stale_estimate: 0.0,
            installs_estimate: preinstalled_peers,
            bare_peers: preinstalled_peers,
            resident_peers: preinstalled_peers,
        };
        for (i, population) in populations.iter().enumerate() {
            let p = Population::read(i, population)?;
            planned.clients += p.count;
            planned.arrivals += p.count * p.connections;
            planned.storm_size = planned.storm_size.max(p.busiest_second());
            let (keys, residence_s) = residence.held(&p);
            planned.waves.push(Wave {
                count: p.count,
                rate: p.rate,
                arrivals: p.count * p.connections,
                keys,
                residence_s,
                active_s: p.active_s,
            });
            planned.run_s = planned.run_s.max(p.done_after().min(duration_s));
            let (peak, mean, stale) = residence.of(&p);
            planned.installed_estimate += peak;
            planned.installed_mean_estimate += mean;
            planned.stale_estimate += stale;
            planned.installs_estimate += residence.installs(&p);
        }
        // Peers preinstalled or preloaded sit installed until evicted, idle: they count in full.
        planned.installed_estimate += preinstalled_peers;
        if planned.boot == "preload" && has_reboot || planned.mode == "push" {
            planned.installed_estimate += stored_peers;
            planned.installed_mean_estimate += stored_peers;
            planned.installs_estimate += stored_peers;
            planned.bare_peers += stored_peers;
            planned.resident_peers += stored_peers;
        }
        if planned.mode == "push" {
            planned.resident_peers += planned.clients;
            // Every pushed peer stays installed; those idle past the threshold are stale.
            let pushed = planned.clients + stored_peers;
            planned.installed_estimate = planned.installed_estimate.max(pushed);
            planned.installs_estimate = planned.installs_estimate.max(pushed);
            planned.stale_estimate = if duration_s > stale_threshold_s {
                (pushed - active_within(&planned, stale_threshold_s)).max(0.0)
            } else {
                0.0
            };
        }
        Ok(planned)
    }
}

/// Clients that arrived within the last `window` seconds of the run (a push-mode estimate of the
/// peers that are *not* stale at the end).
fn active_within(planned: &Planned, window: f64) -> f64 {
    if planned.duration_s <= 0.0 {
        return 0.0;
    }
    planned.arrivals * (window / planned.duration_s).min(1.0)
}

/// One population as the model sees it.
struct Population {
    count: f64,
    /// Connections per client.
    connections: f64,
    /// Arrivals per second; infinite for a burst.
    rate: f64,
    /// Seconds a connection stays active (sending traffic) before going idle.
    active_s: f64,
    /// Gap between a returning client's connections.
    gap_s: Option<f64>,
}

impl Population {
    fn read(index: usize, value: &Value) -> Result<Self, ScenarioReadError> {
        let key = |k: &str| format!("population.{index}.{k}");
        let count = value
            .get("count")
            .and_then(Value::as_f64)
            .ok_or_else(|| ScenarioReadError::Missing(key("count")))?;
        let arrival = value
            .get("arrival")
            .ok_or_else(|| ScenarioReadError::Missing(key("arrival")))?;
        let rate_of = |field: &str| -> Result<f64, ScenarioReadError> {
            arrival
                .get(field)
                .and_then(Value::as_f64)
                .ok_or_else(|| ScenarioReadError::Missing(key(&format!("arrival.{field}"))))
        };
        let rate = match arrival.get("kind").and_then(Value::as_str) {
            Some("constant" | "poisson") => rate_of("rate")?,
            Some("ramp") => rate_of("to")?,
            Some("burst") => f64::INFINITY,
            other => {
                return Err(ScenarioReadError::Invalid {
                    key: key("arrival.kind"),
                    value: other.unwrap_or("(none)").to_string(),
                    expected: "constant, poisson, ramp or burst",
                })
            }
        };
        let behaviour = value.get("behaviour");
        let (connections, active_s, gap_s) = match behaviour
            .and_then(|b| b.get("kind"))
            .and_then(Value::as_str)
        {
            None | Some("connect_once") => (1.0, 0.0, None),
            Some("stay") => {
                let d = behaviour.and_then(|b| b.get("duration"));
                let d = d.ok_or_else(|| ScenarioReadError::Missing(key("behaviour.duration")))?;
                (1.0, seconds(&key("behaviour.duration"), d)?, None)
            }
            Some("return") => {
                let b = behaviour.ok_or_else(|| ScenarioReadError::Missing(key("behaviour")))?;
                let gap = b
                    .get("gap")
                    .ok_or_else(|| ScenarioReadError::Missing(key("behaviour.gap")))?;
                let times = b.get("times").and_then(Value::as_f64).unwrap_or(1.0);
                (times, 0.0, Some(seconds(&key("behaviour.gap"), gap)?))
            }
            Some(other) => {
                return Err(ScenarioReadError::Invalid {
                    key: key("behaviour.kind"),
                    value: other.to_string(),
                    expected: "connect_once, stay or return",
                })
            }
        };
        Ok(Population {
            count,
            connections,
            rate: if rate > 0.0 { rate } else { f64::MIN_POSITIVE },
            active_s,
            gap_s,
        })
    }

    /// Seconds from the run start until the population's last client is done.
    fn done_after(&self) -> f64 {
        let window = if self.rate.is_finite() {
            self.count / self.rate
        } else {
            0.0
        };
        window + self.active_s + self.gap_s.unwrap_or(0.0) * (self.connections - 1.0)
    }

    /// Connections started within the busiest second.
    fn busiest_second(&self) -> f64 {
        self.count.min(self.rate)
    }
}

/// The daemon settings and run length that decide how long a peer stays installed.
struct Residence {
    evict_after_s: f64,
    sweep_every_s: f64,
    stale_threshold_s: f64,
    duration_s: f64,
}

impl Residence {
    /// An idle peer goes at the first sweep after `evict_after`: half a period on average.
    fn idle_s(&self) -> f64 {
        self.evict_after_s + self.sweep_every_s / 2.0
    }

    /// Installs of one population's keys over the run: once per key when the gaps between a
    /// returning client's connections are shorter than the idle time (it stays installed),
    /// otherwise once per connection.
    fn installs(&self, p: &Population) -> f64 {
        match p.gap_s {
            Some(gap) if gap < self.idle_s() => p.count,
            _ => p.count * p.connections,
        }
    }

    /// Keys one population installs and how long each stays installed on average (its active
    /// time, gaps it is held across, then `evict_after` and half a sweep period), not capped by
    /// the run: [`Wave::peer_seconds`] cuts it at the run's end.
    fn held(&self, p: &Population) -> (f64, f64) {
        let idle = self.idle_s();
        // A returning client's peer stays installed across a gap shorter than `idle`.
        let held_across_gaps = match p.gap_s {
            Some(gap) if gap < idle => (p.connections - 1.0) * gap,
            _ => 0.0,
        };
        let per_key_connections = if held_across_gaps > 0.0 {
            1.0
        } else {
            p.connections
        };
        (
            p.count * per_key_connections,
            p.active_s + held_across_gaps + idle,
        )
    }

    /// Peak installed, mean installed and peak stale peers of one population.
    fn of(&self, p: &Population) -> (f64, f64, f64) {
        let idle = self.idle_s();
        // Just before an eviction sweep the oldest idle peers have waited `evict_after` plus a
        // whole period: the peaks (installed, stale) are reached there, the mean half a period
        // earlier.
        let idle_at_peak = self.evict_after_s + self.sweep_every_s;
        let (keys, held_s) = self.held(p);
        let residence = |idle_s: f64| (held_s - idle + idle_s).min(self.duration_s);
        let peak = (p.rate * residence(idle_at_peak)).min(keys);
        // Mean over the run: each of `keys` residences, within the run.
        let mean = (keys * residence(idle) / self.duration_s.max(f64::MIN_POSITIVE)).min(peak);
        // Stale: a peer's last handshake ages past the threshold before it is removed. Clients
        // that stay and send traffic keep handshaking (rekey every 2 min), so only idle time counts.
        let stale_time = (idle_at_peak.min(self.duration_s) - self.stale_threshold_s).max(0.0);
        let stale = (p.rate * stale_time).min(keys);
        (peak, mean, stale)
    }
}

fn number(scenario: &Value, pointer: &str, key: &str) -> Result<f64, ScenarioReadError> {
    match scenario.pointer(pointer) {
        None | Some(Value::Null) => Ok(0.0),
        Some(v) => v.as_f64().ok_or_else(|| ScenarioReadError::Invalid {
            key: key.to_string(),
            value: v.to_string(),
            expected: "a number",
        }),
    }
}

/// A duration as the scenario JSON spells it (`"30s"`, `"1m 30s"`), in seconds; a bare number
/// is seconds.
pub fn seconds(key: &str, value: &Value) -> Result<f64, ScenarioReadError> {
    if let Some(n) = value.as_f64() {
        return Ok(n);
    }
    let text = value.as_str().unwrap_or_default();
    humantime::parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(|_| ScenarioReadError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            expected: "a duration like 30s",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULTS: DaemonDefaults = DaemonDefaults {
        evict_after: Duration::from_secs(180),
        sweep_every: Duration::from_secs(30),
    };

    fn churn(evict_after: &str) -> Value {
        json!({
            "duration": "10m", "stale_threshold": "30s",
            "daemon": {"evict_after": evict_after, "sweep_every": "10s"},
            "population": [{"name": "ci", "count": 10000,
                "arrival": {"kind": "poisson", "rate": 10.0},
                "behaviour": {"kind": "connect_once"}}]
        })
    }

    #[test]
    fn littles_law_for_connect_once_clients() {
        let p = Planned::from_json(&churn("60s"), DEFAULTS).unwrap();
        // Peaks, just before a sweep: 10/s × (60 s + 10 s) = 700 installed, 10/s × (70 - 30) s
        // = 400 stale.
        assert_eq!(p.installed_estimate, 700.0);
        assert_eq!(p.stale_estimate, 400.0);
        assert_eq!(p.storm_size, 10.0);
        assert_eq!(p.arrivals, 10000.0);
        let short = Planned::from_json(&churn("20s"), DEFAULTS).unwrap();
        assert_eq!(short.stale_estimate, 0.0);
        // Installed and removed again, every one: the data plane saw all 10,000.
        assert_eq!(short.installs_estimate, 10000.0);
    }

    #[test]
    fn returning_clients_are_installed_again_only_when_evicted_between_visits() {
        let returning = |evict_after: &str| {
            let mut s = churn(evict_after);
            s["population"][0]["count"] = json!(100);
            s["population"][0]["behaviour"] = json!({"kind": "return", "gap": "30s", "times": 3});
            Planned::from_json(&s, DEFAULTS).unwrap()
        };
        // Idle 10 s + 5 s < the 30 s gap: evicted between visits, three installs per key.
        assert_eq!(returning("10s").installs_estimate, 300.0);
        // Idle 60 s + 5 s > the gap: installed once.
        assert_eq!(returning("60s").installs_estimate, 100.0);
    }

    #[test]
    fn unset_daemon_keys_take_jitwgd_defaults() {
        let mut s = churn("60s");
        s["daemon"] = json!({});
        let p = Planned::from_json(&s, DEFAULTS).unwrap();
        assert_eq!(p.evict_after_s, 180.0);
        assert_eq!(p.sweep_every_s, 30.0);
        assert_eq!(p.installed_estimate, 10.0 * 210.0);
    }

    #[test]
    fn storm_and_preload_reboot() {
        let s = json!({
            "duration": "30s", "stored_peers": 5000,
            "control_plane": {"extra_registered": 1000, "faults": {"latency": "20ms"}},
            "daemon": {"boot": "preload"},
            "event": [{"at": "10s", "kind": "reboot"}],
            "population": [{"name": "s", "count": 3000,
                "arrival": {"kind": "burst", "at": "1s"},
                "behaviour": {"kind": "stay", "duration": "10s", "traffic_every": "1s"}}]
        });
        let p = Planned::from_json(&s, DEFAULTS).unwrap();
        assert_eq!(p.storm_size, 3000.0);
        assert_eq!(p.stored_peers, 6000.0);
        assert!((p.api_latency_s - 0.02).abs() < 1e-12);
        assert!(p.has_reboot);
        assert_eq!(p.installed_estimate, 3000.0 + 6000.0);
        assert_eq!(p.installs_estimate, 3000.0 + 6000.0);
        // The preloaded stored peers never handshake; the storm's clients do.
        assert_eq!(p.bare_peers, 6000.0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = churn("60s");
        s["daemon"]["evict_after"] = json!("soon");
        let e = Planned::from_json(&s, DEFAULTS).unwrap_err();
        assert!(e.to_string().contains("daemon.evict_after"), "{e}");
        let e = Planned::from_json(&json!({"duration": "1s"}), DEFAULTS).unwrap_err();
        assert_eq!(e, ScenarioReadError::Missing("population".into()));
    }
}
