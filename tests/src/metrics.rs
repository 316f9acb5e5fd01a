//! Reads the daemon's HTTP endpoints (`/metrics`, `/ready`) from inside its namespace and
//! parses the Prometheus/OpenMetrics text, so tests can assert on named counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use jitwg::lab::Namespace;

use crate::HarnessError;

/// One scrape of `/metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    text: String,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        Scrape { text }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Value of the sample `name` whose labels include all of `labels`; summed over the
    /// remaining labels. 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, label_text) = match series.split_once('{') {
                    Some((m, rest)) => (m, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                if metric != name {
                    return None;
                }
                let all = labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
                if !all {
                    return None;
                }
                value.parse::<f64>().ok()
            })
            .sum()
    }

    /// A counter without labels, by its wire name (e.g. `jitwgd_installs_total`).
    pub fn counter(&self, name: &str) -> u64 {
        self.value(name, &[]) as u64
    }
}

/// `GET path` over HTTP/1.0 from inside `ns`; returns (status, body).
pub fn http_get(
    ns: &Namespace,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, String), HarnessError> {
    let stream = ns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
        .map_err(|e| HarnessError::Metrics(format!("connect {addr}: {e}")))?;
    let mut stream = stream;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| HarnessError::Metrics(e.to_string()))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| HarnessError::Metrics(format!("write: {e}")))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| HarnessError::Metrics(format!("read: {e}")))?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| HarnessError::Metrics(format!("no HTTP header in {reply:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HarnessError::Metrics(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_counters_with_and_without_labels() {
        let s = Scrape::parse(
            "# HELP jitwgd_installs Peers installed.\n# TYPE jitwgd_installs counter\n\
             jitwgd_installs_total 3\n\
             jitwgd_lookups_total{outcome=\"refused\"} 2\n\
             jitwgd_lookups_total{outcome=\"api_found\"} 5\n# EOF\n"
                .to_string(),
        );
        assert_eq!(s.counter("jitwgd_installs_total"), 3);
        assert_eq!(
            s.value("jitwgd_lookups_total", &[("outcome", "refused")]),
            2.0
        );
        assert_eq!(s.value("jitwgd_lookups_total", &[]), 7.0);
        assert_eq!(s.counter("jitwgd_evictions_total"), 0);
    }
}
