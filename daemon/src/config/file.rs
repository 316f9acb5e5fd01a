//! The TOML config file exactly as written. Values that need more than TOML's own types
//! (durations, addresses, enum words) stay strings here and are checked by `resolve`
//! with the same parsers the flags use, so an error can name the key and the file.
//! `Serialize` too, so a program that writes jitwgd's config (the testbed driver) uses
//! this very struct and cannot invent a key jitwgd would refuse.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One key per long flag, dashes turned into underscores. Unknown keys are refused:
/// `evict_afer = "10s"` must not silently leave the default in place. A key left `None`
/// means jitwgd's default (`config::defaults`) and is not written when serialized.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evict_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_every: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_chunk: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep_budget: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evict_in_push_mode: Option<Switch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiate: Option<Switch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reinstall_active: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiate_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initiate_adapt: Option<Switch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm_guard: Option<Switch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identify_workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identify_queue: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identify_queue_per_source: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identify_nice: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub positive_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_min_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ip_min_len_v4: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_ip_min_len_v6: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_client_key: Option<PathBuf>,
    // Limits (`config::limits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_lookup_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_lookup_floor: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_lookup_burst: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_penalty_burst: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_penalty_forgive: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_quiet_gap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shield_filters: Option<CountOrOff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_log_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_memory: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_key_cache: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_cap: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_purge_every: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_corruption: Option<String>,
}

/// An on/off setting as written in TOML: `initiate = "off"` (like the flag) or
/// `initiate = false` (like TOML).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Switch {
    Bool(bool),
    Word(String),
}

/// A count that may be switched off, as written in TOML: `shield_filters = 512` or
/// `shield_filters = "off"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CountOrOff {
    Count(usize),
    Word(String),
}

impl CountOrOff {
    /// The value as the flag would be written.
    pub fn text(&self) -> String {
        match self {
            CountOrOff::Count(n) => n.to_string(),
            CountOrOff::Word(w) => w.clone(),
        }
    }
}

impl ConfigFile {
    /// Parse the text of a config file. Pure: reading the file is the caller's job.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_named_like_flags() {
        let f = ConfigFile::parse(
            "interface = \"wg0\"\nevict_after = \"180s\"\ninitiate = \"off\"\nsweep_chunk = 64\n",
        )
        .unwrap();
        assert_eq!(f.interface.as_deref(), Some("wg0"));
        assert_eq!(f.evict_after.as_deref(), Some("180s"));
        assert_eq!(f.initiate, Some(Switch::Word("off".into())));
        assert_eq!(f.sweep_chunk, Some(64));
    }

    #[test]
    fn switch_accepts_toml_booleans() {
        let f = ConfigFile::parse("evict_in_push_mode = true").unwrap();
        assert_eq!(f.evict_in_push_mode, Some(Switch::Bool(true)));
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = ConfigFile::parse("evict_afer = \"10s\"").unwrap_err();
        assert!(err.to_string().contains("evict_afer"), "{err}");
    }

    #[test]
    fn serializes_only_the_keys_that_are_set() {
        let f = ConfigFile {
            interface: Some("wg0".into()),
            sweep_chunk: Some(64),
            initiate: Some(Switch::Word("off".into())),
            ..ConfigFile::default()
        };
        let text = toml::to_string(&f).unwrap();
        assert_eq!(ConfigFile::parse(&text).unwrap(), f);
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(ConfigFile::parse("").unwrap(), ConfigFile::default());
    }
}
