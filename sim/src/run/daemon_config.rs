//! The TOML config file the driver writes for `jitwgd`: keys are the daemon's
//! long flags with underscores. Pure: settings in, text out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::scenario::Scenario;

/// Where this run's daemon finds its collaborators.
#[derive(Debug, Clone)]
pub struct DaemonEndpoints {
    pub interface: String,
    /// The gateway's underlay interface the daemon sniffs initiations on.
    pub capture_interface: String,
    pub db: PathBuf,
    pub api_url: String,
    /// Inside the gateway namespace; also where `/ready` is polled.
    pub metrics_addr: SocketAddr,
    /// Set in push mode.
    pub nats_url: Option<String>,
    pub nats_subject: String,
}

#[derive(Debug, Serialize)]
struct DaemonConfigFile<'a> {
    interface: &'a str,
    backend: &'a str,
    capture_interface: &'a str,
    db: String,
    api_url: &'a str,
    metrics_addr: String,
    mode: &'a str,
    boot: &'a str,
    evict_after: String,
    sweep_every: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sweep_chunk: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sweep_budget: Option<String>,
    initiate: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_url: Option<&'a str>,
    nats_subject: &'a str,
    allowed_prefix: &'a str,
    positive_ttl: String,
    negative_ttl: String,
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Renders the daemon's config file for `scenario`.
pub fn render(scenario: &Scenario, at: &DaemonEndpoints) -> Result<String, toml::ser::Error> {
    let d = &scenario.daemon;
    toml::to_string(&DaemonConfigFile {
        interface: &at.interface,
        backend: scenario.backend_name(),
        capture_interface: &at.capture_interface,
        db: at.db.display().to_string(),
        api_url: &at.api_url,
        metrics_addr: at.metrics_addr.to_string(),
        mode: scenario.mode_name(),
        boot: scenario.boot_name(),
        evict_after: human(d.evict_after),
        sweep_every: human(d.sweep_every),
        sweep_chunk: d.sweep_chunk,
        sweep_budget: d.sweep_budget.map(human),
        initiate: if d.initiate { "on" } else { "off" },
        nats_url: at.nats_url.as_deref(),
        nats_subject: &at.nats_subject,
        allowed_prefix: "100.64.0.0/10",
        positive_ttl: human(d.positive_ttl),
        negative_ttl: human(d.negative_ttl),
    })
}

/// Renders a config naming only where the collaborators are and the backend, with
/// `settings` (daemon keys, string values) on top; every other key keeps the daemon's
/// default. For the end-to-end tests, which set the keys they exercise one by one.
pub fn render_settings(
    at: &DaemonEndpoints,
    backend: &str,
    settings: &BTreeMap<&str, String>,
) -> Result<String, toml::ser::Error> {
    let mut table = toml::Table::new();
    let mut set = |key: &str, value: String| {
        table.insert(key.to_string(), toml::Value::String(value));
    };
    set("interface", at.interface.clone());
    set("backend", backend.to_string());
    set("capture_interface", at.capture_interface.clone());
    set("db", at.db.display().to_string());
    set("api_url", at.api_url.clone());
    set("metrics_addr", at.metrics_addr.to_string());
    if let Some(url) = &at.nats_url {
        set("nats_url", url.clone());
        set("nats_subject", at.nats_subject.clone());
    }
    for (key, value) in settings {
        set(key, value.clone());
    }
    toml::to_string(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{parse, Adjustments, Override};
    use std::path::Path;

    fn endpoints(nats_url: Option<&str>) -> DaemonEndpoints {
        DaemonEndpoints {
            interface: "jwgabc-wg".into(),
            capture_interface: "jwgabc-gc".into(),
            db: "/tmp/x/daemon.db".into(),
            api_url: "http://198.18.255.1:8080".into(),
            metrics_addr: "127.0.0.1:9100".parse().unwrap(),
            nats_url: nats_url.map(str::to_string),
            nats_subject: "jitwg.peers".into(),
        }
    }

    #[test]
    fn renders_every_key_with_human_durations() {
        let text = "name = \"t\"\nduration = \"5s\"\n[daemon]\nevict_after = \"90s\"\ninitiate = \"off\"\n\
                    [[population]]\nname = \"a\"\ncount = 1\narrival = { kind = \"burst\", at = \"0s\" }\n";
        let adjust = Adjustments {
            overrides: vec![Override::parse("daemon.mode=push").unwrap()],
            seed: None,
        };
        let s = parse(Path::new("t.toml"), text, &adjust).unwrap();
        let at = endpoints(Some("nats://198.18.255.1:4222"));
        let out: toml::Table = toml::from_str(&render(&s, &at).unwrap()).unwrap();
        assert_eq!(out["evict_after"].as_str(), Some("1m 30s"));
        assert_eq!(out["initiate"].as_str(), Some("off"));
        assert_eq!(out["mode"].as_str(), Some("push"));
        assert_eq!(out["backend"].as_str(), Some("userspace"));
        assert_eq!(out["metrics_addr"].as_str(), Some("127.0.0.1:9100"));
        assert_eq!(out["allowed_prefix"].as_str(), Some("100.64.0.0/10"));
        assert_eq!(out.len(), 16);
    }

    #[test]
    fn sweep_pacing_keys_pass_through_only_when_set() {
        let base = "name = \"t\"\nduration = \"5s\"\n[[population]]\nname = \"a\"\ncount = 1\n\
                    arrival = { kind = \"burst\", at = \"0s\" }\n";
        let at = endpoints(None);
        let render_with = |sets: &[&str]| -> toml::Table {
            let adjust = Adjustments {
                overrides: sets.iter().map(|s| Override::parse(s).unwrap()).collect(),
                seed: None,
            };
            let s = parse(Path::new("t.toml"), base, &adjust).unwrap();
            toml::from_str(&render(&s, &at).unwrap()).unwrap()
        };
        let plain = render_with(&[]);
        assert!(!plain.contains_key("sweep_chunk") && !plain.contains_key("sweep_budget"));
        let paced = render_with(&["daemon.sweep_chunk=1000", "daemon.sweep_budget=1h"]);
        assert_eq!(paced["sweep_chunk"].as_integer(), Some(1000));
        assert_eq!(paced["sweep_budget"].as_str(), Some("1h"));
    }

    #[test]
    fn explicit_settings_name_endpoints_and_override_on_top() {
        let at = endpoints(None);
        let settings = BTreeMap::from([
            ("initiate", "off".to_string()),
            ("backend", "kernel".into()),
        ]);
        let out: toml::Table =
            toml::from_str(&render_settings(&at, "userspace", &settings).unwrap()).unwrap();
        assert_eq!(out["initiate"].as_str(), Some("off"));
        assert_eq!(out["backend"].as_str(), Some("kernel"));
        assert_eq!(out["api_url"].as_str(), Some("http://198.18.255.1:8080"));
        assert!(!out.contains_key("nats_url") && !out.contains_key("mode"));
        assert_eq!(out.len(), 7);
    }
}
