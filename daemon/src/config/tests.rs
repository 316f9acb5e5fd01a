//! Tests for configuration layering: precedence, durations, file errors, required keys.

use std::io::Write;
use std::sync::Mutex;

use clap::{CommandFactory, Parser};

use super::*;

/// Parsing `Args` reads `JITWGD_*` variables; tests that parse or change the
/// environment hold this lock so they do not see each other's variables.
pub(super) static ENV_LOCK: Mutex<()> = Mutex::new(());

fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("jitwgd").chain(argv.iter().copied()))
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn resolve_argv(argv: &[&str]) -> Result<Config, ConfigError> {
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    resolve(parse(argv).unwrap())
}

const MINIMAL: &[&str] = &["--interface", "wg0", "--api-url", "http://198.18.0.1:8080"];

#[test]
fn help_is_well_formed() {
    Args::command().debug_assert();
    let help = Args::command().render_long_help().to_string();
    assert!(help.contains("JITWGD_EVICT_AFTER"), "{help}");
    assert!(help.contains("default: 180s"), "{help}");
}

#[test]
fn minimal_settings_get_documented_defaults() {
    let c = resolve_argv(MINIMAL).unwrap();
    assert_eq!(c.interface, "wg0");
    assert_eq!(c.backend, Backend::Userspace);
    assert_eq!(c.capture_interface, None);
    assert_eq!(c.listen_port, None);
    assert_eq!(c.db, PathBuf::from("/var/lib/jitwgd/jitwgd.db"));
    assert_eq!(c.api_url.as_deref(), Some("http://198.18.0.1:8080"));
    assert_eq!(c.api_timeout, Duration::from_secs(2));
    assert_eq!(c.api_retries, 3);
    assert_eq!(c.metrics_addr, None);
    assert_eq!(c.mode, Mode::Jit);
    assert_eq!(c.boot, Boot::Jit);
    assert_eq!(c.evict_after, Duration::from_secs(180));
    assert_eq!(c.sweep_every, Duration::from_secs(30));
    assert_eq!(c.sweep_chunk, 256);
    assert_eq!(c.sweep_budget, Duration::from_millis(50));
    assert!(!c.evict_in_push_mode);
    assert!(c.initiate);
    assert_eq!(c.reinstall_active, Duration::from_secs(180));
    assert_eq!(c.nats_url, None);
    assert_eq!(c.nats_subject, "jitwg.peers");
    assert_eq!(c.allowed_prefix.to_string(), "100.64.0.0/10");
    assert_eq!(c.positive_ttl, Duration::from_secs(300));
    assert_eq!(c.negative_ttl, Duration::from_secs(60));
    assert_eq!(c.api_min_interval, Duration::from_secs(1));
    assert_eq!(c.log_format, LogFormat::Text);
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = config_file("interface = \"wgfile\"\napi_url = \"http://198.18.0.1:1\"\nevict_after = \"10s\"\nsweep_every = \"11s\"\nnegative_ttl = \"12s\"\n");
    let path = file.path().to_str().unwrap();
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("JITWGD_EVICT_AFTER", "20s");
    std::env::set_var("JITWGD_SWEEP_EVERY", "21s");
    let args = parse(&["--config", path, "--evict-after", "30s"]);
    std::env::remove_var("JITWGD_EVICT_AFTER");
    std::env::remove_var("JITWGD_SWEEP_EVERY");
    let c = resolve(args.unwrap()).unwrap();
    assert_eq!(c.evict_after, Duration::from_secs(30), "flag wins");
    assert_eq!(c.sweep_every, Duration::from_secs(21), "env beats file");
    assert_eq!(
        c.negative_ttl,
        Duration::from_secs(12),
        "file beats default"
    );
    assert_eq!(
        c.positive_ttl,
        Duration::from_secs(300),
        "default when unset"
    );
    assert_eq!(c.interface, "wgfile");
}

#[test]
fn config_path_can_come_from_env() {
    let file = config_file(
        "interface = \"wgenv\"\nmode = \"push\"\nnats_url = \"nats://198.18.0.1:4222\"\n",
    );
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var("JITWGD_CONFIG", file.path());
    let args = parse(&[]);
    std::env::remove_var("JITWGD_CONFIG");
    let c = resolve(args.unwrap()).unwrap();
    assert_eq!(c.interface, "wgenv");
    assert_eq!(c.mode, Mode::Push);
}

#[test]
fn file_durations_are_human_strings() {
    let file = config_file("interface = \"wg0\"\napi_url = \"http://cp:8080\"\npositive_ttl = \"5m\"\napi_min_interval = \"250ms\"\napi_timeout = \"1h 30m\"\n");
    let c = resolve_argv(&["--config", file.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.positive_ttl, Duration::from_secs(300));
    assert_eq!(c.api_min_interval, Duration::from_millis(250));
    assert_eq!(c.api_timeout, Duration::from_secs(5400));
}

#[test]
fn bad_duration_in_file_names_key_and_file() {
    let file =
        config_file("interface = \"wg0\"\napi_url = \"http://cp:8080\"\nevict_after = \"180\"\n");
    let path = file.path().to_str().unwrap();
    let err = resolve_argv(&["--config", path]).unwrap_err().to_string();
    assert!(err.contains("evict_after"), "{err}");
    assert!(err.contains(path), "{err}");
}

#[test]
fn bad_duration_flag_is_refused_by_the_parser() {
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let err = parse(&["--interface", "wg0", "--sweep-every", "0s"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--sweep-every"), "{err}");
}

#[test]
fn unknown_key_in_file_is_an_error_naming_key_and_file() {
    let file = config_file("interface = \"wg0\"\nevict_afer = \"10s\"\n");
    let path = file.path().to_str().unwrap();
    let err = resolve_argv(&["--config", path]).unwrap_err();
    assert!(matches!(err, ConfigError::ParseFile { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("evict_afer") && msg.contains(path), "{msg}");
}

#[test]
fn missing_file_is_an_error_naming_the_file() {
    let err = resolve_argv(&["--config", "/nonexistent/jitwgd.toml"]).unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }));
    assert!(err.to_string().contains("/nonexistent/jitwgd.toml"));
}

#[test]
fn missing_interface_says_how_to_set_it() {
    let err = resolve_argv(&["--api-url", "http://cp:8080"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`interface`"), "{err}");
    assert!(err.contains("--interface"), "{err}");
    assert!(err.contains("JITWGD_INTERFACE"), "{err}");
}

#[test]
fn jit_mode_needs_api_url() {
    let err = resolve_argv(&["--interface", "wg0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("api_url") && err.contains("jit mode"), "{err}");
    assert!(
        err.contains("--api-url") && err.contains("JITWGD_API_URL"),
        "{err}"
    );
}

#[test]
fn push_mode_needs_nats_url_but_not_api_url() {
    let err = resolve_argv(&["--interface", "wg0", "--mode", "push"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nats_url") && err.contains("push mode"),
        "{err}"
    );
    let c = resolve_argv(&[
        "--interface",
        "wg0",
        "--mode",
        "push",
        "--nats-url",
        "nats://198.18.0.1:4222",
    ])
    .unwrap();
    assert_eq!(c.mode, Mode::Push);
    assert_eq!(c.api_url, None);
}

#[test]
fn switches_parse_on_and_off_everywhere() {
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--initiate", "off", "--evict-in-push-mode", "on"]);
    let c = resolve_argv(&argv).unwrap();
    assert!(!c.initiate);
    assert!(c.evict_in_push_mode);

    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let err = parse(&["--initiate", "maybe"]).unwrap_err().to_string();
    assert!(err.contains("on or off"), "{err}");
    drop(_env);

    for (text, want) in [
        ("\"off\"", false),
        ("false", false),
        ("\"on\"", true),
        ("true", true),
    ] {
        let file = config_file(&format!("initiate = {text}\n"));
        let mut argv = MINIMAL.to_vec();
        argv.extend(["--config", file.path().to_str().unwrap()]);
        assert_eq!(
            resolve_argv(&argv).unwrap().initiate,
            want,
            "initiate = {text}"
        );
    }
    let file = config_file("initiate = \"sometimes\"\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    let err = resolve_argv(&argv).unwrap_err().to_string();
    assert!(
        err.contains("initiate") && err.contains("on or off"),
        "{err}"
    );
}

#[test]
fn reinstall_active_takes_a_duration_or_off() {
    for (text, want) in [("off", 0), ("0", 0), ("0s", 0), ("90s", 90), ("5m", 300)] {
        let mut argv = MINIMAL.to_vec();
        argv.extend(["--reinstall-active", text]);
        assert_eq!(
            resolve_argv(&argv).unwrap().reinstall_active,
            Duration::from_secs(want),
            "--reinstall-active {text}"
        );
    }
    let file = config_file("reinstall_active = \"off\"\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    assert_eq!(
        resolve_argv(&argv).unwrap().reinstall_active,
        Duration::ZERO
    );
    let file = config_file("reinstall_active = \"soon\"\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    let err = resolve_argv(&argv).unwrap_err().to_string();
    assert!(
        err.contains("reinstall_active") && err.contains("or off"),
        "{err}"
    );
}

#[test]
fn long_interface_name_is_refused_from_flag_and_file() {
    let _env = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(parse(&["--interface", "a-very-long-name"]).is_err());
    drop(_env);
    let file = config_file("interface = \"a-very-long-name\"\napi_url = \"http://cp:8080\"\n");
    let err = resolve_argv(&["--config", file.path().to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("interface") && err.contains("15"), "{err}");
}

#[test]
fn enum_words_from_file_list_the_choices() {
    let file = config_file("backend = \"kernel\"\nboot = \"preload\"\nlog_format = \"json\"\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    let c = resolve_argv(&argv).unwrap();
    assert_eq!(
        (c.backend, c.boot, c.log_format),
        (Backend::Kernel, Boot::Preload, LogFormat::Json)
    );

    let file = config_file("backend = \"ebpf\"\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    let err = resolve_argv(&argv).unwrap_err().to_string();
    assert!(
        err.contains("backend") && err.contains("userspace, kernel"),
        "{err}"
    );
}

#[test]
fn zero_sweep_chunk_in_file_is_refused() {
    let file = config_file("sweep_chunk = 0\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    let err = resolve_argv(&argv).unwrap_err().to_string();
    assert!(err.contains("sweep_chunk"), "{err}");
}

#[test]
fn effective_config_serializes_with_human_durations() {
    let mut argv = MINIMAL.to_vec();
    argv.extend([
        "--metrics-addr",
        "127.0.0.1:9100",
        "--allowed-prefix",
        "100.64.1.1/10",
    ]);
    let c = resolve_argv(&argv).unwrap();
    assert_eq!(c.allowed_prefix.to_string(), "100.64.0.0/10");
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["evict_after"], "3m");
    assert_eq!(json["backend"], "userspace");
    assert_eq!(json["metrics_addr"], "127.0.0.1:9100");
}

#[test]
fn lookup_stage_defaults_are_the_resolved_defaults() {
    let c = resolve_argv(MINIMAL).unwrap();
    let l = crate::lookup::LookupConfig::default();
    assert_eq!(
        (
            l.positive_ttl,
            l.negative_ttl,
            l.api_min_interval,
            l.api_retries,
            l.addresses
        ),
        (
            c.positive_ttl,
            c.negative_ttl,
            c.api_min_interval,
            c.api_retries,
            c.address_policy()
        )
    );
}

#[test]
fn allowed_ips_are_host_routes_unless_widened() {
    let c = resolve_argv(MINIMAL).unwrap();
    assert_eq!(
        (c.allowed_ip_min_len_v4, c.allowed_ip_min_len_v6),
        (32, 128)
    );
    let file = config_file("allowed_ip_min_len_v4 = 24\nallowed_ip_min_len_v6 = 64\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", file.path().to_str().unwrap()]);
    let c = resolve_argv(&argv).unwrap();
    assert_eq!((c.allowed_ip_min_len_v4, c.allowed_ip_min_len_v6), (24, 64));
    let bad = config_file("allowed_ip_min_len_v4 = 33\n");
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--config", bad.path().to_str().unwrap()]);
    let err = resolve_argv(&argv).unwrap_err().to_string();
    assert!(err.contains("allowed_ip_min_len_v4"), "{err}");
}

#[test]
fn a_client_certificate_needs_its_key() {
    let mut argv = MINIMAL.to_vec();
    argv.extend(["--api-client-cert", "/etc/jitwgd/client.pem"]);
    let err = resolve_argv(&argv).unwrap_err().to_string();
    assert!(err.contains("api_client_key"), "{err}");
    argv.extend([
        "--api-client-key",
        "/etc/jitwgd/client.key",
        "--api-token-file",
        "/etc/jitwgd/token",
    ]);
    let c = resolve_argv(&argv).unwrap();
    let sec = c.channel_security();
    assert!(sec.client_cert.is_some());
    assert_eq!(
        sec.token_file.as_deref(),
        Some(Path::new("/etc/jitwgd/token"))
    );
    assert_eq!(sec.ca_file, None);
}

#[test]
fn resolve_text_layers_a_file_without_reading_one() {
    let c = resolve_text(
        Args::default(),
        "interface = \"wg0\"\napi_url = \"http://198.18.0.1:8080\"\nsweep_budget = \"1h\"\n",
        Path::new("rendered.toml"),
    )
    .unwrap();
    assert_eq!(c.sweep_budget, Duration::from_secs(3600));
    assert_eq!(c.sweep_every, defaults::SWEEP_EVERY);
    let err = resolve_text(
        Args::default(),
        "interface = \"wg0\"\napi_url = \"http://cp:8080\"\nsweep_every = \"0s\"\n",
        Path::new("r.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("r.toml") && err.contains("sweep_every"),
        "{err}"
    );
}

/// The `[default: ...]` a flag's long help states, read back as the flag would parse it
/// (also `limits`' tests).
pub(super) fn documented_default(id: &str) -> String {
    let cmd = Args::command();
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("no flag {id}"));
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let start = help
        .find("[default: ")
        .unwrap_or_else(|| panic!("--{id} states no default: {help}"))
        + "[default: ".len();
    let rest = &help[start..];
    let end = rest.find([']', ',']).unwrap_or(rest.len());
    rest[..end].trim().to_string()
}

#[test]
fn help_states_the_defaults_resolve_uses() {
    let dur = |id: &str| values::duration(&documented_default(id)).unwrap();
    let count = |id: &str| documented_default(id).parse::<u64>().unwrap();
    let switch = |id: &str| values::switch(&documented_default(id)).unwrap();
    assert_eq!(dur("api_timeout"), defaults::API_TIMEOUT);
    assert_eq!(count("api_retries"), u64::from(defaults::API_RETRIES));
    assert_eq!(dur("evict_after"), defaults::EVICT_AFTER);
    assert_eq!(dur("sweep_every"), defaults::SWEEP_EVERY);
    assert_eq!(count("sweep_chunk"), defaults::SWEEP_CHUNK as u64);
    assert_eq!(dur("sweep_budget"), defaults::SWEEP_BUDGET);
    assert_eq!(switch("evict_in_push_mode"), defaults::EVICT_IN_PUSH_MODE);
    assert_eq!(switch("initiate"), defaults::INITIATE);
    assert_eq!(dur("reinstall_active"), defaults::REINSTALL_ACTIVE);
    assert_eq!(documented_default("nats_subject"), defaults::NATS_SUBJECT);
    assert_eq!(
        values::prefix(&documented_default("allowed_prefix")).unwrap(),
        defaults::ALLOWED_PREFIX
    );
    assert_eq!(dur("positive_ttl"), defaults::POSITIVE_TTL);
    assert_eq!(dur("negative_ttl"), defaults::NEGATIVE_TTL);
    assert_eq!(dur("api_min_interval"), defaults::API_MIN_INTERVAL);
    assert_eq!(
        count("allowed_ip_min_len_v4"),
        u64::from(defaults::ALLOWED_IP_MIN_LEN_V4)
    );
    assert_eq!(
        count("allowed_ip_min_len_v6"),
        u64::from(defaults::ALLOWED_IP_MIN_LEN_V6)
    );
    assert_eq!(documented_default("db"), defaults::DB);
    assert_eq!(
        word::<Backend>(&documented_default("backend")),
        Ok(defaults::BACKEND)
    );
    assert_eq!(
        word::<Mode>(&documented_default("mode")),
        Ok(defaults::MODE)
    );
    assert_eq!(
        word::<Boot>(&documented_default("boot")),
        Ok(defaults::BOOT)
    );
    assert_eq!(
        word::<LogFormat>(&documented_default("log_format")),
        Ok(defaults::LOG_FORMAT)
    );
}
