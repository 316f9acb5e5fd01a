//! Pure parts of `jitwg timeline`: turning one client's event-log records, jitwgd's log lines
//! and captured packets into dated lines of one story, in run-relative milliseconds.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, UNIX_EPOCH};

use jitwgd::capture::parse_datagram;
use jitwgd::identify::{identify, ResponderKeys};

/// Where a line of the story comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The client's own event (the fleet's event log).
    Event,
    /// A line of jitwgd's log about the client's key.
    Daemon,
    /// A packet on the gateway's uplink.
    Packet,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Event => "event",
            Source::Daemon => "jitwgd",
            Source::Packet => "packet",
        }
    }
}

/// One dated line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Run-relative; `None` when the source carried no time that could be read.
    pub t_ms: Option<f64>,
    pub source: Source,
    pub text: String,
}

/// Sorts by time (undated lines last), keeping each source's own order among equal times.
pub fn sort(lines: &mut [Line]) {
    lines.sort_by(|a, b| match (a.t_ms, b.t_ms) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// One line of the fleet's event log, if it is about `client`.
pub fn event_line(json: &str, client: u32) -> Option<Line> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    (v.get("client")?.as_u64()? == u64::from(client)).then_some(())?;
    let event = v.get("event")?.as_str()?;
    let connection = v.get("connection").and_then(|c| c.as_u64()).unwrap_or(0);
    let detail = v
        .get("detail")
        .and_then(|d| d.as_str())
        .map_or_else(String::new, |d| format!(": {d}"));
    Some(Line {
        t_ms: v.get("t_ms").and_then(|t| t.as_f64()),
        source: Source::Event,
        text: format!("{event} (connection {connection}){detail}"),
    })
}

/// A line of jitwgd's text log, if it names `key_base64` (in full, or as `peer=` with its
/// 8-character fingerprint). `origin_unix_ms` is the run's start.
pub fn daemon_line(line: &str, key_base64: &str, origin_unix_ms: f64) -> Option<Line> {
    let fingerprint = key_base64.get(..8)?;
    let names_key = line.contains(key_base64)
        || line
            .match_indices(&format!("peer={fingerprint}"))
            .any(|(i, m)| {
                line[i + m.len()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
            });
    names_key.then_some(())?;
    let (stamp, rest) = line.split_once(' ').unwrap_or(("", line));
    let t_ms = humantime::parse_rfc3339_weak(stamp.trim())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64() * 1000.0 - origin_unix_ms);
    let text = if t_ms.is_some() { rest } else { line };
    Some(Line {
        t_ms,
        source: Source::Daemon,
        text: text.trim().to_string(),
    })
}

/// The keys a packet story needs.
pub struct PacketKeys<'a> {
    pub client_ip: Ipv4Addr,
    pub client: &'a ResponderKeys,
    pub gateway: &'a ResponderKeys,
    pub origin_unix_ms: f64,
}

/// TAI64N label of the Unix epoch, as wireguard-go and Wireshark read it (TAI 1970 = 2^62 + 10).
const TAI64_EPOCH: u64 = (1 << 62) + 10;

/// A TAI64N timestamp as run-relative milliseconds (by the sender's clock).
fn tai64n_ms(t: &[u8; 12], origin_unix_ms: f64) -> Option<f64> {
    let secs = u64::from_be_bytes(t[..8].try_into().ok()?).checked_sub(TAI64_EPOCH)?;
    let nanos = u32::from_be_bytes(t[8..].try_into().ok()?);
    Some(secs as f64 * 1000.0 + f64::from(nanos) / 1e6 - origin_unix_ms)
}

/// A captured IP packet as a line of the client's story, if it is to or from the client.
pub fn packet_line(timestamp: Duration, packet: &[u8], keys: &PacketKeys<'_>) -> Option<Line> {
    let datagram = parse_datagram(packet).ok()?;
    let client = IpAddr::V4(keys.client_ip);
    let from_client = datagram.src.ip() == client;
    (from_client || datagram.dst.ip() == client).then_some(())?;
    let payload = datagram.payload;
    let arrow = if from_client {
        "client → gateway"
    } else {
        "gateway → client"
    };
    let kind = payload.first().copied().unwrap_or(0);
    let what = match (kind, payload.len()) {
        (1, 148) => {
            // From the client: the gateway is the responder; from the gateway (role
            // inversion): the client is.
            let (responder, initiator_name) = if from_client {
                (keys.gateway, "the client's")
            } else {
                (keys.client, "the gateway's")
            };
            match identify(responder, payload) {
                Ok(init) => {
                    let clock = tai64n_ms(&init.timestamp.0, keys.origin_unix_ms)
                        .map_or_else(|| "?".into(), |t| format!("{t:+.1} ms"));
                    let role = if from_client {
                        "handshake initiation"
                    } else {
                        "handshake initiation (role inversion: the gateway initiates)"
                    };
                    format!(
                        "{role}, sender {:#010x}, static key {} ({initiator_name}), TAI64N {clock} (sender's clock)",
                        init.sender_index,
                        init.initiator.fingerprint()
                    )
                }
                Err(e) => format!("handshake initiation that does not decrypt: {e}"),
            }
        }
        (2, 92) => "handshake response".into(),
        (3, 64) => "cookie reply (the gateway is under load)".into(),
        (4, 32) => "keepalive".into(),
        (4, n) => format!("data ({n} bytes)"),
        (_, n) => format!("UDP {n} bytes, not WireGuard"),
    };
    Some(Line {
        t_ms: Some(timestamp.as_secs_f64() * 1000.0 - keys.origin_unix_ms),
        source: Source::Packet,
        text: format!("{arrow}  {what}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    const KEY: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/abcde=";

    #[test]
    fn event_lines_of_other_clients_are_skipped() {
        let own =
            r#"{"client":3,"t_ms":12.5,"event":"connected","connection":0,"detail":"1.2 ms"}"#;
        let line = event_line(own, 3).unwrap();
        assert_eq!(line.t_ms, Some(12.5));
        assert_eq!(line.text, "connected (connection 0): 1.2 ms");
        assert!(event_line(own, 4).is_none());
        assert!(event_line("not json", 3).is_none());
    }

    #[test]
    fn daemon_lines_match_full_key_or_exact_fingerprint() {
        let origin = 1_700_000_000_000.0;
        let line = format!(
            "2023-11-14T22:13:20.250000Z  INFO jitwgd::pipeline: peer installed peer=AbCdEfGh key={KEY} src=198.18.1.2:1000"
        );
        let got = daemon_line(&line, KEY, origin).unwrap();
        assert_eq!(got.t_ms, Some(250.0));
        assert!(got
            .text
            .starts_with("INFO jitwgd::pipeline: peer installed"));
        let short = "2023-11-14T22:13:20Z  INFO x: unknown peer peer=AbCdEfGh src=1";
        assert!(daemon_line(short, KEY, origin).is_some());
        let other = "2023-11-14T22:13:20Z  INFO x: unknown peer peer=AbCdEfGhX src=1";
        assert!(daemon_line(other, KEY, origin).is_none());
        assert!(daemon_line("no time peer=AbCdEfGh", KEY, origin)
            .unwrap()
            .t_ms
            .is_none());
    }

    #[test]
    fn sort_puts_undated_last() {
        let mk = |t: Option<f64>| Line {
            t_ms: t,
            source: Source::Event,
            text: String::new(),
        };
        let mut lines = vec![mk(None), mk(Some(2.0)), mk(Some(1.0))];
        sort(&mut lines);
        assert_eq!(
            lines.iter().map(|l| l.t_ms).collect::<Vec<_>>(),
            vec![Some(1.0), Some(2.0), None]
        );
    }

    /// A datagram from port 50000 to WireGuard's 51820.
    fn udp_v4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        jitwg_testsupport::ipv4_udp(
            SocketAddrV4::new(src.into(), 50000),
            SocketAddrV4::new(dst.into(), 51820),
            payload,
        )
    }

    #[test]
    fn packets_are_classified_and_filtered_by_client_address() {
        let gw = ResponderKeys::new([7; 32]);
        let cl = ResponderKeys::new([8; 32]);
        let keys = PacketKeys {
            client_ip: Ipv4Addr::new(198, 18, 1, 2),
            client: &cl,
            gateway: &gw,
            origin_unix_ms: 1000.0,
        };
        let mut cookie = vec![3u8, 0, 0, 0];
        cookie.resize(64, 0);
        let p = udp_v4([198, 18, 0, 1], [198, 18, 1, 2], &cookie);
        let line = packet_line(Duration::from_millis(1500), &p, &keys).unwrap();
        assert_eq!(line.t_ms, Some(500.0));
        assert!(
            line.text.starts_with("gateway → client  cookie reply"),
            "{}",
            line.text
        );
        let other = udp_v4([198, 18, 0, 1], [198, 18, 9, 9], &cookie);
        assert!(packet_line(Duration::ZERO, &other, &keys).is_none());
        let mut junk = vec![1u8, 0, 0, 0];
        junk.resize(148, 0);
        let p = udp_v4([198, 18, 1, 2], [198, 18, 0, 1], &junk);
        let line = packet_line(Duration::ZERO, &p, &keys).unwrap();
        assert!(line.text.contains("does not decrypt"), "{}", line.text);
    }
}
