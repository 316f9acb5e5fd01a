//! The TOML config file exactly as written. Values that need more than TOML's own types
//! (durations, addresses, enum words) stay strings here and are checked by `resolve`
//! with the same parsers the flags use, so an error can name the key and the file.

use std::path::PathBuf;

use serde::Deserialize;

/// One key per long flag, dashes turned into underscores. Unknown keys are refused:
/// `evict_afer = "10s"` must not silently leave the default in place.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub interface: Option<String>,
    pub backend: Option<String>,
    pub capture_interface: Option<String>,
    pub listen_port: Option<u16>,
    pub db: Option<PathBuf>,
    pub api_url: Option<String>,
    pub api_timeout: Option<String>,
    pub api_retries: Option<u32>,
    pub metrics_addr: Option<String>,
    pub mode: Option<String>,
    pub boot: Option<String>,
    pub evict_after: Option<String>,
    pub sweep_every: Option<String>,
    pub sweep_chunk: Option<usize>,
    pub sweep_budget: Option<String>,
    pub evict_in_push_mode: Option<Switch>,
    pub initiate: Option<Switch>,
    pub nats_url: Option<String>,
    pub nats_subject: Option<String>,
    pub allowed_prefix: Option<String>,
    pub positive_ttl: Option<String>,
    pub negative_ttl: Option<String>,
    pub api_min_interval: Option<String>,
    pub log_format: Option<String>,
}

/// An on/off setting as written in TOML: `initiate = "off"` (like the flag) or
/// `initiate = false` (like TOML).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Switch {
    Bool(bool),
    Word(String),
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
    fn empty_file_is_all_defaults() {
        assert_eq!(ConfigFile::parse("").unwrap(), ConfigFile::default());
    }
}
