//! Peer identity and configuration: the values that travel through the JIT pipeline
//! (a public key recovered by `identify`, a config found by `lookup`, handed to `install`).

use std::fmt;

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A WireGuard public key (Curve25519 point, 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// Why a key string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    #[error("key is not 64 hex characters")]
    Hex,
    #[error("key is not 44 characters of standard base64 encoding 32 bytes")]
    Base64,
}

impl PublicKey {
    /// Lowercase hex, as used in the control-plane URL `GET /v1/peers/{hex}`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Standard base64, as `wg` prints keys and the API returns them.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| KeyParseError::Hex)?;
        Ok(Self(out))
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyParseError> {
        decode_key_base64(s).map(Self)
    }

    /// A short, log-friendly fingerprint: the first 8 base64 characters, as `wg` users
    /// recognise keys by their prefix.
    pub fn fingerprint(&self) -> String {
        let mut s = self.to_base64();
        s.truncate(8);
        s
    }
}

/// Decode a 32-byte key from standard base64 (public, private or preshared).
pub fn decode_key_base64(s: &str) -> Result<[u8; 32], KeyParseError> {
    let bytes = BASE64.decode(s.trim()).map_err(|_| KeyParseError::Base64)?;
    bytes.try_into().map_err(|_| KeyParseError::Base64)
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// A TAI64N timestamp exactly as carried in a handshake initiation: 8 bytes of
/// big-endian TAI seconds then 4 bytes of big-endian nanoseconds. Byte order is
/// chronological order, so the derived `Ord` is the replay-guard comparison.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Timestamp(pub [u8; 12]);

/// Everything needed to install one peer: what the control plane (or NATS in push
/// mode) says about a key, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub allowed_ips: Vec<IpNet>,
    pub preshared_key: Option<[u8; 32]>,
}

/// The wire form of a peer config, shared by the control-plane API
/// (`GET /v1/peers/{hex}`) and push-mode NATS messages.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerDocument {
    /// Standard base64.
    pub public_key: String,
    pub allowed_ips: Vec<String>,
    /// Standard base64, or null.
    #[serde(default)]
    pub preshared_key: Option<String>,
}

/// Why a peer document was refused. Each variant is counted separately.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerRejected {
    #[error("public key does not decode: {0}")]
    BadKey(KeyParseError),
    #[error("returned key {returned} is not the requested key {requested}")]
    KeyMismatch {
        requested: PublicKey,
        returned: PublicKey,
    },
    #[error("allowed IP {0:?} is not a valid prefix")]
    BadAllowedIp(String),
    #[error("allowed IP {ip} lies outside the tunnel prefix {prefix}")]
    OutsidePrefix { ip: IpNet, prefix: IpNet },
    #[error("preshared key does not decode")]
    BadPresharedKey,
    #[error("no allowed IPs")]
    NoAllowedIps,
}

impl PeerDocument {
    pub fn from_config(config: &PeerConfig) -> Self {
        Self {
            public_key: config.public_key.to_base64(),
            allowed_ips: config.allowed_ips.iter().map(|n| n.to_string()).collect(),
            preshared_key: config.preshared_key.map(|k| BASE64.encode(k)),
        }
    }

    /// Validate a document before anything is installed: the key must decode (and equal
    /// `expected` when given: the key we asked for), and every allowed IP must be a
    /// prefix inside `tunnel_prefix`.
    pub fn validate(
        &self,
        expected: Option<PublicKey>,
        tunnel_prefix: IpNet,
    ) -> Result<PeerConfig, PeerRejected> {
        let public_key = PublicKey::from_base64(&self.public_key).map_err(PeerRejected::BadKey)?;
        if let Some(requested) = expected {
            if requested != public_key {
                return Err(PeerRejected::KeyMismatch {
                    requested,
                    returned: public_key,
                });
            }
        }
        if self.allowed_ips.is_empty() {
            return Err(PeerRejected::NoAllowedIps);
        }
        let mut allowed_ips = Vec::with_capacity(self.allowed_ips.len());
        for raw in &self.allowed_ips {
            let ip: IpNet = raw
                .parse()
                .map_err(|_| PeerRejected::BadAllowedIp(raw.clone()))?;
            if !tunnel_prefix.contains(&ip) {
                return Err(PeerRejected::OutsidePrefix {
                    ip,
                    prefix: tunnel_prefix,
                });
            }
            allowed_ips.push(ip.trunc());
        }
        let preshared_key = match &self.preshared_key {
            None => None,
            Some(s) => Some(decode_key_base64(s).map_err(|_| PeerRejected::BadPresharedKey)?),
        };
        Ok(PeerConfig {
            public_key,
            allowed_ips,
            preshared_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(ips: &[&str]) -> PeerDocument {
        PeerDocument {
            public_key: PublicKey([7; 32]).to_base64(),
            allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
            preshared_key: None,
        }
    }

    fn prefix() -> IpNet {
        "100.64.0.0/10".parse().unwrap()
    }

    #[test]
    fn accepts_address_inside_tunnel_prefix() {
        let cfg = doc(&["100.64.0.2/32"])
            .validate(Some(PublicKey([7; 32])), prefix())
            .unwrap();
        assert_eq!(
            cfg.allowed_ips,
            vec!["100.64.0.2/32".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn refuses_address_outside_tunnel_prefix() {
        let err = doc(&["100.64.0.2/32", "0.0.0.0/0"])
            .validate(None, prefix())
            .unwrap_err();
        assert!(matches!(err, PeerRejected::OutsidePrefix { .. }));
    }

    #[test]
    fn refuses_other_key_than_requested() {
        let err = doc(&["100.64.0.2/32"])
            .validate(Some(PublicKey([8; 32])), prefix())
            .unwrap_err();
        assert!(matches!(err, PeerRejected::KeyMismatch { .. }));
    }

    #[test]
    fn key_round_trips_through_hex_and_base64() {
        let k = PublicKey([0xab; 32]);
        assert_eq!(PublicKey::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(PublicKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(k.to_hex().len(), 64);
    }

    #[test]
    fn timestamps_order_chronologically() {
        let mut a = [0u8; 12];
        let mut b = [0u8; 12];
        a[7] = 1; // 1 s
        b[11] = 0xff; // 255 ns
        assert!(Timestamp(a) > Timestamp(b));
    }
}
