//! Value parsers shared by both configuration stages, so a setting is checked the same
//! way whether it came from a flag, an environment variable or the config file.

use std::time::Duration;

/// Linux interface names must fit IFNAMSIZ (16 bytes) including the terminating NUL.
pub const MAX_INTERFACE_NAME: usize = 15;

/// A human duration such as `180s`, `5m`, `1h 30m`, `250ms`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration ({e}); write it like 180s, 5m or 250ms"))
}

/// A duration that must be positive: a zero period would spin a timer loop or make
/// every request time out at once.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// A duration where `off` (or `0`) means zero: the feature it sizes is disabled.
pub fn duration_or_off(s: &str) -> Result<Duration, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "0" => Ok(Duration::ZERO),
        _ => duration(s).map_err(|e| format!("{e}, or off")),
    }
}

/// An on/off switch. `on|off` is the documented spelling; the usual boolean words
/// are accepted too because people type them.
pub fn switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err("expected on or off".to_string()),
    }
}

/// A network interface name as the kernel accepts it (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn interface_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("interface name is empty".to_string());
    }
    if s.len() > MAX_INTERFACE_NAME {
        return Err(format!(
            "interface name is {} bytes long; Linux allows at most {MAX_INTERFACE_NAME}",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err("interface name cannot be . or ..".to_string());
    }
    if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("interface name cannot contain '/', ':' or whitespace".to_string());
    }
    Ok(s.to_string())
}

/// The control plane's base URL, `https://` or `http://` (plain http is warned about at
/// start unless its host is loopback or a lab range: `channel::plain_http_is_local`). A
/// trailing `/` is dropped so callers can append `/v1/peers/{key}`.
pub fn api_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s.trim()).map_err(|e| format!("not a URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "scheme {:?} is not supported; use https:// (or http:// on a private underlay)",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err("URL has no host".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("base URL cannot carry a query or fragment".to_string());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// A NATS server URL (or a comma-separated list), e.g. `nats://198.18.0.1:4222`.
pub fn nats_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("NATS URL is empty".to_string());
    }
    Ok(s.to_string())
}

/// A NATS subject: dot-separated tokens, no whitespace, no empty token.
pub fn nats_subject(s: &str) -> Result<String, String> {
    if s.is_empty() || s.split('.').any(str::is_empty) {
        return Err("subject needs non-empty dot-separated tokens, e.g. jitwg.peers".to_string());
    }
    if s.chars().any(char::is_whitespace) {
        return Err("subject cannot contain whitespace".to_string());
    }
    Ok(s.to_string())
}

/// The tunnel prefix every allowed IP must lie inside; host bits are cleared.
pub fn prefix(s: &str) -> Result<ipnet::IpNet, String> {
    s.trim()
        .parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| "not an IP prefix; write it like 100.64.0.0/10".to_string())
}

/// Shortest IPv4 allowed-IP prefix length, 0..=32.
pub fn prefix_len_v4(s: &str) -> Result<u8, String> {
    prefix_len(s, 32)
}

/// Shortest IPv6 allowed-IP prefix length, 0..=128.
pub fn prefix_len_v6(s: &str) -> Result<u8, String> {
    prefix_len(s, 128)
}

fn prefix_len(s: &str, max: u8) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("not a prefix length between 0 and {max}")),
    }
}

/// A listening socket address such as `127.0.0.1:9100` or `[::1]:9100`.
pub fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| "not a socket address; write it like 127.0.0.1:9100".to_string())
}

/// A count that must be at least one (zero would make a loop do nothing forever).
pub fn positive_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a whole number".to_string()),
    }
}

/// A count where 0 (or `off`) switches the feature off.
pub fn count_or_off(s: &str) -> Result<usize, String> {
    match s.trim() {
        "off" => Ok(0),
        t => t
            .parse::<usize>()
            .map_err(|_| "not a whole number or off".to_string()),
    }
}

/// A nice value to add to a thread, 0..=19.
pub fn nice(s: &str) -> Result<i32, String> {
    match s.trim().parse::<i32>() {
        Ok(n) if (0..=19).contains(&n) => Ok(n),
        Ok(_) => Err("must be between 0 and 19".to_string()),
        Err(_) => Err("not a whole number".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_read_like_humans_write_them() {
        assert_eq!(duration("180s").unwrap(), Duration::from_secs(180));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(duration("180").is_err(), "a bare number has no unit");
        assert!(positive_duration("0s").is_err());
    }

    #[test]
    fn switches_take_on_and_off() {
        assert!(switch("on").unwrap());
        assert!(!switch("off").unwrap());
        assert!(switch("ON").unwrap());
        assert!(!switch("false").unwrap());
        assert!(switch("maybe").is_err());
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert_eq!(interface_name("wg0").unwrap(), "wg0");
        assert!(interface_name("exactly15chars_").is_ok());
        assert!(interface_name("sixteen_chars_xx").is_err());
        assert!(interface_name("").is_err());
        assert!(interface_name("a/b").is_err());
        assert!(interface_name("..").is_err());
    }

    #[test]
    fn api_url_must_be_plain_http_and_loses_trailing_slash() {
        assert_eq!(
            api_url("http://198.18.0.1:8080/").unwrap(),
            "http://198.18.0.1:8080"
        );
        assert_eq!(
            api_url("http://cp:8080/base").unwrap(),
            "http://cp:8080/base"
        );
        assert_eq!(api_url("https://cp:8443/").unwrap(), "https://cp:8443");
        assert!(api_url("ftp://cp").is_err());
        assert!(api_url("198.18.0.1:8080").is_err());
    }

    #[test]
    fn prefix_clears_host_bits() {
        assert_eq!(
            prefix("100.64.1.2/10").unwrap().to_string(),
            "100.64.0.0/10"
        );
        assert!(prefix("100.64.0.0").is_err());
    }

    #[test]
    fn prefix_lengths_fit_their_family() {
        assert_eq!(prefix_len_v4("32"), Ok(32));
        assert_eq!(prefix_len_v4(" 24 "), Ok(24));
        assert!(prefix_len_v4("33").is_err());
        assert_eq!(prefix_len_v6("128"), Ok(128));
        assert!(prefix_len_v6("129").is_err());
        assert!(prefix_len_v6("-1").is_err());
    }

    #[test]
    fn subjects_need_non_empty_tokens() {
        assert!(nats_subject("jitwg.peers").is_ok());
        assert!(nats_subject("jitwg..peers").is_err());
        assert!(nats_subject("jitwg peers").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = duration(&s);
            let _ = switch(&s);
            let _ = interface_name(&s);
            let _ = api_url(&s);
            let _ = nats_subject(&s);
            let _ = prefix(&s);
            let _ = socket_addr(&s);
            let _ = positive_count(&s);
            let _ = prefix_len_v4(&s);
            let _ = prefix_len_v6(&s);
        }

        #[test]
        fn accepted_interface_names_fit_ifnamsiz(s in "[a-z0-9./: -]{0,20}") {
            if let Ok(name) = interface_name(&s) {
                prop_assert!(!name.is_empty() && name.len() <= MAX_INTERFACE_NAME);
            }
        }
    }
}
