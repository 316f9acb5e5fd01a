//! Test-only helpers every workspace crate shares (as a dev-dependency; `jitwgd` may depend
//! on nothing else in the workspace, so this crate depends on no workspace crate either).
//!
//! The rule it keeps in one place: a test whose prerequisites (root, a tool) are missing is
//! skipped loudly on a developer machine and FAILS in CI, so CI never passes by skipping.
//! Also [`ipv4_udp`], the datagram the packet parsers' unit tests (jitwgd's and the driver's)
//! feed them.

use std::fmt::Display;
use std::net::SocketAddrV4;
use std::path::PathBuf;

/// Whether `CI` (its value, if set) says the tests run in CI: any value other than empty,
/// `0` or `false` (any case) does, so `CI=1` and `CI=true` both count.
pub fn ci_value_means_ci(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None => false,
        Some(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

/// Whether this process runs in CI, per the `CI` environment variable.
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

/// What is missing for a test to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "missing prerequisite: {}", self.0)
    }
}

impl std::error::Error for Missing {}

/// Decides what a test does when `missing` lists something: `Ok(true)` when nothing is
/// missing; outside CI a loud SKIPPED line on stderr and `Ok(false)`; in CI `Err` (a failure).
pub fn check(missing: &[impl Display]) -> Result<bool, Missing> {
    decide(missing, in_ci())
}

/// [`check`] for tests that return nothing: panics in CI instead of returning `Err`.
pub fn require(missing: &[impl Display]) -> bool {
    match check(missing) {
        Ok(run) => run,
        Err(e) => panic!("{e} (CI is set, so this is a failure, not a skip)"),
    }
}

/// [`require`] for one condition: `met` or else `what` is missing.
pub fn require_that(met: bool, what: impl Display) -> bool {
    if met {
        true
    } else {
        require(&[what])
    }
}

fn decide(missing: &[impl Display], ci: bool) -> Result<bool, Missing> {
    if missing.is_empty() {
        return Ok(true);
    }
    let list = missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ci {
        return Err(Missing(list));
    }
    eprintln!("!!!!!! SKIPPED: missing {list} (with CI set this is a failure)");
    Ok(false)
}

/// Whether the process runs as root (namespaces, raw sockets and interfaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where `tool` is: the first match on `PATH`, then `/usr/sbin` and `/sbin` (root tools).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// What of root and `tools` is missing, worded for the skip or failure message.
pub fn missing_root_and_tools(tools: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (these tests create network namespaces)".to_string());
    }
    for tool in tools {
        if find_tool(tool).is_none() {
            missing.push(format!("`{tool}` in PATH (run ci/install-deps.sh)"));
        }
    }
    missing
}

/// An IPv4 UDP datagram from `src` to `dst` carrying `payload`: a 20-byte header (no
/// options, don't fragment, TTL 64), lengths filled in, both checksums zero.
pub fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_udp_lays_out_the_headers_and_the_payload() {
        let src = "198.18.0.1:51820".parse().unwrap();
        let p = ipv4_udp(src, "198.18.1.9:40000".parse().unwrap(), &[1, 2, 3]);
        assert_eq!(p.len(), 31);
        assert_eq!(&p[..4], &[0x45, 0, 0, 31]);
        assert_eq!(p[9], 17);
        assert_eq!(&p[12..20], &[198, 18, 0, 1, 198, 18, 1, 9]);
        assert_eq!(&p[20..28], &[0xca, 0x6c, 0x9c, 0x40, 0, 11, 0, 0]);
        assert_eq!(&p[28..], &[1, 2, 3]);
    }

    #[test]
    fn any_ci_value_but_empty_zero_or_false_means_ci() {
        for v in ["true", "1", "yes", "TRUE", "gitlab"] {
            assert!(ci_value_means_ci(Some(v)), "{v}");
        }
        for v in [
            None,
            Some(""),
            Some("0"),
            Some("false"),
            Some("False"),
            Some(" "),
        ] {
            assert!(!ci_value_means_ci(v), "{v:?}");
        }
    }

    #[test]
    fn missing_fails_in_ci_and_skips_elsewhere() {
        let none: [&str; 0] = [];
        assert_eq!(decide(&none, true), Ok(true));
        assert_eq!(decide(&["root", "wg"], false), Ok(false));
        assert_eq!(
            decide(&["root", "wg"], true),
            Err(Missing("root, wg".into()))
        );
    }
}
