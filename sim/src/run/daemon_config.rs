//! The TOML config file the driver writes for `jitwgd`, built from jitwgd's own
//! `ConfigFile` so the keys are jitwgd's and a key the scenario leaves unset stays
//! unwritten (jitwgd's default applies). Resolving the rendered text with jitwgd's own
//! resolver tells what the daemon will run with. Pure: settings in, text out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jitwgd::config::{self as daemon, ConfigFile};

use super::channel::DaemonChannel;
use crate::scenario::file::{DaemonFile, Switch};
use crate::scenario::Scenario;

/// Where this run's daemon finds its collaborators.
#[derive(Debug, Clone)]
pub struct DaemonEndpoints {
    pub interface: String,
    /// The gateway's underlay interface the daemon sniffs initiations on; empty: every one.
    pub capture_interface: String,
    pub db: PathBuf,
    pub api_url: String,
    /// Inside the gateway namespace; also where `/ready` is polled.
    pub metrics_addr: SocketAddr,
    /// Set in push mode.
    pub nats_url: Option<String>,
    pub nats_subject: String,
    /// The control plane's CA, token and client certificate files, when it asks for them.
    pub channel: DaemonChannel,
}

impl DaemonEndpoints {
    /// Stand-ins shaped like a run's endpoints, for resolving a scenario's daemon settings
    /// before any lab exists (`jitwg validate`); a run allocates its own.
    pub fn stand_in() -> Self {
        DaemonEndpoints {
            interface: "jwg-wg".into(),
            capture_interface: "jwg-gc".into(),
            db: "jitwgd.db".into(),
            api_url: "http://198.18.255.1:8080".into(),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
            nats_url: Some("nats://198.18.255.1:4222".into()),
            nats_subject: daemon::defaults::NATS_SUBJECT.into(),
            channel: DaemonChannel::default(),
        }
    }
}

/// The lab routes tunnel addresses from this prefix, so the daemon must accept it
/// whatever jitwgd's default is.
const LAB_TUNNEL_PREFIX: &str = "100.64.0.0/10";

/// Why the rendered config does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonConfigError {
    #[error("cannot render jitwgd.toml: {0}")]
    Render(#[from] toml::ser::Error),
    #[error("jitwgd would refuse the rendered config: {0}")]
    Resolve(#[from] daemon::ConfigError),
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn switch(s: Switch) -> daemon::Switch {
    daemon::Switch::Bool(s == Switch::On)
}

/// The scenario's `[daemon]` table as jitwgd config keys: exactly the keys it sets.
pub fn settings(d: &DaemonFile) -> ConfigFile {
    // Spelled out field by field (no `..`) so a key added to `[daemon]` must be mapped.
    let DaemonFile {
        mode,
        boot,
        evict_after,
        sweep_every,
        sweep_chunk,
        sweep_budget,
        evict_in_push_mode,
        initiate,
        positive_ttl,
        negative_ttl,
        api_timeout,
        api_retries,
        api_min_interval,
        reinstall_active,
        initiate_rate,
        max_pending,
        api_concurrency,
        unknown_lookup_rate,
        unknown_lookup_floor,
        unknown_lookup_burst,
        source_penalty_burst,
        source_penalty_forgive,
        source_quiet_gap,
        identify_workers,
        identify_queue,
        identify_queue_per_source,
    } = d.clone();
    ConfigFile {
        mode: mode.map(|m| mode_word(m.into()).to_string()),
        boot: boot.map(|b| boot_word(b.into()).to_string()),
        evict_after: evict_after.map(human),
        sweep_every: sweep_every.map(human),
        sweep_chunk,
        sweep_budget: sweep_budget.map(human),
        evict_in_push_mode: evict_in_push_mode.map(switch),
        initiate: initiate.map(switch),
        positive_ttl: positive_ttl.map(human),
        negative_ttl: negative_ttl.map(human),
        api_timeout: api_timeout.map(human),
        api_retries,
        api_min_interval: api_min_interval.map(human),
        reinstall_active: reinstall_active.map(off_or_human),
        initiate_rate,
        max_pending,
        api_concurrency,
        unknown_lookup_rate,
        unknown_lookup_floor,
        unknown_lookup_burst,
        source_penalty_burst,
        source_penalty_forgive: source_penalty_forgive.map(human),
        source_quiet_gap: source_quiet_gap.map(off_or_human),
        identify_workers,
        identify_queue,
        identify_queue_per_source,
        ..ConfigFile::default()
    }
}

/// jitwgd's spelling of a duration that 0 turns off.
fn off_or_human(d: Duration) -> String {
    if d.is_zero() {
        "off".to_string()
    } else {
        human(d)
    }
}

fn mode_word(m: daemon::Mode) -> &'static str {
    match m {
        daemon::Mode::Jit => "jit",
        daemon::Mode::Push => "push",
    }
}

fn boot_word(b: daemon::Boot) -> &'static str {
    match b {
        daemon::Boot::Jit => "jit",
        daemon::Boot::Preload => "preload",
    }
}

/// The whole config file for `scenario`: its `[daemon]` settings, its backend, and
/// where this run's collaborators are.
pub fn config_file(scenario: &Scenario, at: &DaemonEndpoints) -> ConfigFile {
    config_file_for(at, scenario.backend_name(), &scenario.daemon.set)
}

/// The whole config file from explicit `[daemon]` settings (the end-to-end fixture's
/// way in): the same keys, types and endpoints as a scenario's, without a scenario.
pub fn config_file_for(at: &DaemonEndpoints, backend: &str, set: &DaemonFile) -> ConfigFile {
    ConfigFile {
        interface: Some(at.interface.clone()),
        backend: Some(backend.to_string()),
        // Empty: every interface (a gateway on a host whose clients arrive anywhere).
        capture_interface: (!at.capture_interface.is_empty()).then(|| at.capture_interface.clone()),
        db: Some(at.db.clone()),
        api_url: Some(at.api_url.clone()),
        metrics_addr: Some(at.metrics_addr.to_string()),
        nats_url: at.nats_url.clone(),
        nats_subject: Some(at.nats_subject.clone()),
        allowed_prefix: Some(LAB_TUNNEL_PREFIX.to_string()),
        api_ca_file: at.channel.ca_file.clone(),
        api_token_file: at.channel.token_file.clone(),
        api_client_cert: at.channel.client_cert.as_ref().map(|(c, _)| c.clone()),
        api_client_key: at.channel.client_cert.as_ref().map(|(_, k)| k.clone()),
        ..settings(set)
    }
}

/// Renders the config file from explicit settings; see [`config_file_for`].
pub fn render_settings(
    at: &DaemonEndpoints,
    backend: &str,
    set: &DaemonFile,
) -> Result<String, toml::ser::Error> {
    toml::to_string(&config_file_for(at, backend, set))
}

/// Renders the daemon's config file for `scenario`.
pub fn render(scenario: &Scenario, at: &DaemonEndpoints) -> Result<String, toml::ser::Error> {
    toml::to_string(&config_file(scenario, at))
}

/// What jitwgd will run with, read back from the rendered file by jitwgd's own resolver.
pub fn resolve(
    scenario: &Scenario,
    at: &DaemonEndpoints,
) -> Result<daemon::Config, DaemonConfigError> {
    let text = render(scenario, at)?;
    Ok(daemon::resolve_text(
        daemon::Args::default(),
        &text,
        Path::new("jitwgd.toml"),
    )?)
}

/// One resolved daemon setting for display.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub key: &'static str,
    pub value: String,
    /// Not set by the scenario: jitwgd's own default.
    pub jitwgd_default: bool,
}

/// The settings a scenario may set (`[daemon]` plus the top-level `backend`), resolved
/// by jitwgd, in the order `jitwg validate` prints them.
pub fn describe(scenario: &Scenario) -> Result<Vec<Setting>, DaemonConfigError> {
    let resolved =
        serde_json::to_value(resolve(scenario, &DaemonEndpoints::stand_in())?).unwrap_or_default();
    let set = toml::Table::try_from(settings(&scenario.daemon.set))?;
    const KEYS: [&str; 27] = [
        "backend",
        "mode",
        "boot",
        "initiate",
        "evict_after",
        "sweep_every",
        "sweep_chunk",
        "sweep_budget",
        "evict_in_push_mode",
        "positive_ttl",
        "negative_ttl",
        "api_timeout",
        "api_retries",
        "api_min_interval",
        "reinstall_active",
        "initiate_rate",
        "max_pending",
        "api_concurrency",
        "unknown_lookup_rate",
        "unknown_lookup_floor",
        "unknown_lookup_burst",
        "source_penalty_burst",
        "source_penalty_forgive",
        "source_quiet_gap",
        "identify_workers",
        "identify_queue",
        "identify_queue_per_source",
    ];
    Ok(KEYS
        .iter()
        .map(|&key| Setting {
            key,
            // The admission limits sit in the resolved config's `limits` table.
            value: match resolved
                .get(key)
                .unwrap_or_else(|| &resolved["limits"][key])
            {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                other => other.to_string(),
            },
            // `backend` is the scenario's top-level key; the rest live in `[daemon]`.
            jitwgd_default: if key == "backend" {
                scenario.file.backend.is_none()
            } else {
                !set.contains_key(key)
            },
        })
        .collect())
}

#[cfg(test)]
mod tests;
