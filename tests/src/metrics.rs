//! Reads the daemon's HTTP endpoints (`/metrics`, `/ready`) from inside its namespace; the
//! text is parsed by the driver's `jitwg::run::prometheus`, so tests assert on named counters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use jitwg::lab::Namespace;

use crate::HarnessError;

/// One parsed scrape of `/metrics`: the driver's parser, so tests and runs read the same way.
pub use jitwg::run::prometheus::Scrape;

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
