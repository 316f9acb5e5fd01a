//! The control-plane channel's security. Its answers carry peer configs, preshared keys
//! included, so it speaks HTTPS (rustls; the system's roots or a CA file), can present a
//! bearer token read from a file and a client certificate, and plain `http://` is meant
//! only for loopback and the private lab ranges: `plain_http_is_local` is that rule (pure),
//! `build_client` turns the settings into a reqwest client.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Url;

/// How the channel is secured; all `None`: system roots, no credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelSecurity {
    /// PEM CA certificate(s); when set, the only roots trusted for the control plane.
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its PEM private key.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// What could not be set up for the channel. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token file {} is empty", .0.display())]
    EmptyToken(PathBuf),
    #[error("the API token in {} is not a valid HTTP header value (control characters?)", .0.display())]
    BadToken(PathBuf),
    #[error("{} holds no usable PEM CA certificate", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("the client certificate {} or its key {} is not usable", cert.display(), key.display())]
    BadClientCert {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTPS client")]
    Client(#[source] reqwest::Error),
}

/// Ranges where plain HTTP is expected: the lab's underlay and tunnel ranges (private to
/// the namespaces the testbed creates) besides loopback.
const LOCAL_RANGES: [&str; 3] = ["100.64.0.0/10", "198.18.0.0/15", "2001:2::/48"];

/// Whether plain `http://` to this URL's host stays on this machine or the lab's private
/// ranges (loopback, 100.64.0.0/10, 198.18.0.0/15, 2001:2::/48). Host names other than
/// `localhost` are not resolved: they count as elsewhere. Pure.
pub fn plain_http_is_local(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = bare.parse::<IpAddr>() else {
        return host.eq_ignore_ascii_case("localhost");
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback()
        || LOCAL_RANGES
            .iter()
            .filter_map(|r| r.parse::<IpNet>().ok())
            .any(|range| range.contains(&ip))
}

/// Reads the bearer token: the file's content, trimmed, non-empty.
pub fn read_token(path: &Path) -> Result<HeaderValue, ChannelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ChannelError::Read {
        what: "the API token file",
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ChannelError::EmptyToken(path.to_path_buf()));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ChannelError::BadToken(path.to_path_buf()))?;
    value.set_sensitive(true);
    Ok(value)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ChannelError> {
    std::fs::read(path).map_err(|source| ChannelError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The HTTP client for the control plane: `timeout` per request, no proxy, TLS roots and
/// credentials from `security`.
pub fn build_client(
    security: &ChannelSecurity,
    timeout: Duration,
) -> Result<reqwest::Client, ChannelError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        // Talk to the control plane directly, whatever HTTP_PROXY says.
        .no_proxy()
        .use_rustls_tls()
        .https_only(false);
    if let Some(path) = &security.ca_file {
        let pem = read("the API CA file", path)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ChannelError::BadCa {
                path: path.clone(),
                source: Some(e),
            })?;
        if certs.is_empty() {
            return Err(ChannelError::BadCa {
                path: path.clone(),
                source: None,
            });
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &security.client_cert {
        let mut pem = read("the API client certificate", cert)?;
        pem.push(b'\n');
        pem.extend(read("the API client key", key)?);
        let identity =
            reqwest::Identity::from_pem(&pem).map_err(|source| ChannelError::BadClientCert {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?;
        builder = builder.identity(identity);
    }
    if let Some(path) = &security.token_file {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, read_token(path)?);
        builder = builder.default_headers(headers);
    }
    builder.build().map_err(ChannelError::Client)
}

/// The start-up warning for a plain-http URL outside loopback and the lab ranges, if any.
pub fn plain_http_warning(url: &Url, security: &ChannelSecurity) -> Option<&'static str> {
    if url.scheme() != "http" || plain_http_is_local(url) {
        return None;
    }
    Some(if security.token_file.is_some() {
        "the control-plane URL is plain http:// outside loopback and the lab ranges: \
         the bearer token and peer configs (preshared keys included) cross the network \
         unencrypted; use https://"
    } else {
        "the control-plane URL is plain http:// outside loopback and the lab ranges: \
         peer configs (preshared keys included) cross the network unencrypted and \
         unauthenticated; use https://"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn local(url: &str) -> bool {
        plain_http_is_local(&Url::parse(url).unwrap())
    }

    #[test]
    fn loopback_and_lab_ranges_are_local() {
        for url in [
            "http://127.0.0.1:8080",
            "http://127.8.9.10",
            "http://[::1]:80",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://198.18.255.1:8080",
            "http://198.19.0.1",
            "http://100.64.0.1",
            "http://100.127.255.254",
            "http://[2001:2::1]:8080",
            "http://[2001:2:0:ffff::1]",
            "http://[::ffff:198.18.0.1]",
        ] {
            assert!(local(url), "{url}");
        }
    }

    #[test]
    fn everything_else_is_not() {
        for url in [
            "http://10.0.0.1",
            "http://192.168.1.1",
            "http://198.20.0.1",
            "http://100.128.0.1",
            "http://[2001:3::1]",
            "http://[2001:2:1::1]",
            "http://cp.example.com",
            "http://localhost.example.com",
            "http://8.8.8.8",
        ] {
            assert!(!local(url), "{url}");
        }
    }

    #[test]
    fn only_plain_http_elsewhere_is_warned_about() {
        let none = ChannelSecurity::default();
        let url = |s| Url::parse(s).unwrap();
        assert!(plain_http_warning(&url("http://10.0.0.1"), &none).is_some());
        assert!(plain_http_warning(&url("https://10.0.0.1"), &none).is_none());
        assert!(plain_http_warning(&url("http://198.18.0.1"), &none).is_none());
        let token = ChannelSecurity {
            token_file: Some("/t".into()),
            ..none
        };
        let warning = plain_http_warning(&url("http://10.0.0.1"), &token).unwrap();
        assert!(warning.contains("bearer token"), "{warning}");
    }

    #[test]
    fn the_token_is_read_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret\n").unwrap();
        let value = read_token(&path).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer s3cret");
        assert!(value.is_sensitive());
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token(&path),
            Err(ChannelError::EmptyToken(_))
        ));
        std::fs::write(&path, "a\u{7}b").unwrap();
        assert!(matches!(read_token(&path), Err(ChannelError::BadToken(_))));
        let missing = dir.path().join("missing");
        let err = read_token(&missing).unwrap_err().to_string();
        assert!(err.contains("token file"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let security = ChannelSecurity {
            ca_file: Some(path),
            ..ChannelSecurity::default()
        };
        assert!(matches!(
            build_client(&security, Duration::from_secs(1)),
            Err(ChannelError::BadCa { .. })
        ));
    }

    proptest! {
        /// Every IPv4 address is local exactly when it is loopback or in one of the ranges.
        #[test]
        fn ipv4_rule_matches_the_ranges(a in any::<u32>()) {
            let ip = std::net::Ipv4Addr::from(a);
            let expected = ip.is_loopback()
                || (a >> 22) == (0x6440_0000u32 >> 22)
                || (a >> 17) == (0xc612_0000u32 >> 17);
            prop_assert_eq!(local(&format!("http://{ip}:8080/")), expected);
        }

        /// IPv6: local exactly in 2001:2::/48 or ::1 (or an IPv4-mapped local address).
        #[test]
        fn ipv6_rule_matches_the_range(hi in any::<u64>(), lo in any::<u64>()) {
            let bits = (u128::from(hi) << 64) | u128::from(lo);
            let ip = std::net::Ipv6Addr::from(bits);
            let mapped_local = ip
                .to_ipv4_mapped()
                .is_some_and(|v4| local(&format!("http://{v4}/")));
            let expected = ip.is_loopback() || (bits >> 80) == 0x2001_0002_0000 || mapped_local;
            prop_assert_eq!(local(&format!("http://[{ip}]/")), expected);
        }
    }
}
