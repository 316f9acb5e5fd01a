//! Direct UAPI access to a userspace WireGuard interface (wireguard-go) for what the
//! lab's `DataPlane` does not offer: removing a peer by hand and reading each peer's
//! persistent-keepalive setting. The socket path is global, so no namespace is entered.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime};

use jitwg::lab::names::uapi_socket_path;

use crate::HarnessError;

/// One peer as the data plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub persistent_keepalive: Option<u16>,
}

/// Every peer configured on `iface`.
pub fn peers(iface: &str) -> Result<Vec<PeerState>, HarnessError> {
    let text = request(iface, "get=1\n\n")?;
    parse_peers(&text).map_err(|what| uapi_error(iface, what))
}

/// The peer with `public_key` on `iface`, if configured.
pub fn peer(iface: &str, public_key: &[u8; 32]) -> Result<Option<PeerState>, HarnessError> {
    Ok(peers(iface)?
        .into_iter()
        .find(|p| &p.public_key == public_key))
}

/// Removes a peer (like `wg set IFACE peer KEY remove`).
pub fn remove_peer(iface: &str, public_key: &[u8; 32]) -> Result<(), HarnessError> {
    let body = format!("public_key={}\nremove=true\n", hex::encode(public_key));
    let reply = request(iface, &format!("set=1\n{body}\n"))?;
    if reply.lines().any(|l| l == "errno=0") {
        Ok(())
    } else {
        Err(uapi_error(iface, format!("set failed: {reply:?}")))
    }
}

fn request(iface: &str, request: &str) -> Result<String, HarnessError> {
    let path = uapi_socket_path(iface);
    let err = |what: String| uapi_error(iface, what);
    let mut s =
        UnixStream::connect(&path).map_err(|e| err(format!("connect {}: {e}", path.display())))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| err(format!("set timeout: {e}")))?;
    s.write_all(request.as_bytes())
        .map_err(|e| err(format!("write: {e}")))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"\n\n") {
        let n = s.read(&mut buf).map_err(|e| err(format!("read: {e}")))?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn uapi_error(iface: &str, what: String) -> HarnessError {
    HarnessError::Uapi {
        iface: iface.to_string(),
        what,
    }
}

/// Parses a UAPI `get=1` reply into peers.
fn parse_peers(text: &str) -> Result<Vec<PeerState>, String> {
    let mut peers: Vec<PeerState> = Vec::new();
    let mut secs = 0u64;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "errno" if v != "0" => return Err(format!("get failed: errno={v}")),
            "public_key" => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(v, &mut key).map_err(|e| format!("bad key {v}: {e}"))?;
                peers.push(PeerState {
                    public_key: key,
                    endpoint: None,
                    last_handshake: None,
                    persistent_keepalive: None,
                });
            }
            _ => {
                let Some(peer) = peers.last_mut() else {
                    continue;
                };
                match k {
                    "endpoint" => peer.endpoint = v.parse().ok(),
                    "persistent_keepalive_interval" => {
                        peer.persistent_keepalive = v.parse().ok().filter(|&k: &u16| k != 0)
                    }
                    "last_handshake_time_sec" => secs = v.parse().unwrap_or(0),
                    "last_handshake_time_nsec" => {
                        let nanos: u64 = v.parse().unwrap_or(0);
                        peer.last_handshake = (secs != 0 || nanos != 0).then(|| {
                            SystemTime::UNIX_EPOCH
                                + Duration::from_secs(secs)
                                + Duration::from_nanos(nanos)
                        });
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_uapi_dump() {
        let k = "11".repeat(32);
        let text = format!(
            "private_key={}\nlisten_port=51820\npublic_key={k}\nendpoint=198.18.1.1:4000\n\
             persistent_keepalive_interval=0\nlast_handshake_time_sec=10\n\
             last_handshake_time_nsec=5\nallowed_ip=100.64.0.2/32\n\
             public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n\n",
            "22".repeat(32),
            "33".repeat(32)
        );
        let peers = parse_peers(&text).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, [0x11; 32]);
        assert_eq!(peers[0].endpoint, Some("198.18.1.1:4000".parse().unwrap()));
        assert_eq!(peers[0].persistent_keepalive, None);
        assert_eq!(
            peers[0].last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(10, 5))
        );
        assert_eq!(peers[1].last_handshake, None);
        assert!(parse_peers("errno=2\n\n").is_err());
    }
}
