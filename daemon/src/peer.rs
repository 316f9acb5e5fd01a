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
    #[error("allowed IP {ip} is wider than /{min_len} (host routes only unless widened by --allowed-ip-min-len-v4/-v6)")]
    TooWide { ip: IpNet, min_len: u8 },
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
    /// `expected` when given: the key we asked for), and every allowed IP must pass
    /// `policy` (inside the tunnel prefix, no wider than its length limit).
    pub fn validate(
        &self,
        expected: Option<PublicKey>,
        policy: &AddressPolicy,
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
        let mut allowed_ips = Vec::with_capacity(self.allowed_ips.len());
        for raw in &self.allowed_ips {
            let ip: IpNet = raw
                .parse()
                .map_err(|_| PeerRejected::BadAllowedIp(raw.clone()))?;
            allowed_ips.push(ip.trunc());
        }
        policy.check_ips(&allowed_ips)?;
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

/// Which allowed IPs a peer may be given: inside the tunnel prefix, and no wider than a
/// host route (/32, /128) unless the operator widened that (`--allowed-ip-min-len-v4`,
/// `--allowed-ip-min-len-v6`). One answer must not be able to route a whole range to
/// one peer. Pure; applied to every config before it is installed, whether it came from
/// the control plane, NATS, the cache or the store, so a change of settings also applies
/// to what was stored under the old ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AddressPolicy {
    /// Every allowed IP must lie inside this prefix.
    pub tunnel_prefix: IpNet,
    /// Shortest IPv4 prefix length accepted (32 = host routes only).
    pub min_len_v4: u8,
    /// Shortest IPv6 prefix length accepted (128 = host routes only).
    pub min_len_v6: u8,
}

impl AddressPolicy {
    /// Host routes only, inside `tunnel_prefix`.
    pub fn host_routes(tunnel_prefix: IpNet) -> Self {
        AddressPolicy {
            tunnel_prefix,
            min_len_v4: 32,
            min_len_v6: 128,
        }
    }

    /// Whether one allowed IP may be installed.
    pub fn check(&self, ip: &IpNet) -> Result<(), PeerRejected> {
        if !self.tunnel_prefix.contains(ip) {
            return Err(PeerRejected::OutsidePrefix {
                ip: *ip,
                prefix: self.tunnel_prefix,
            });
        }
        let min_len = match ip {
            IpNet::V4(_) => self.min_len_v4,
            IpNet::V6(_) => self.min_len_v6,
        };
        if ip.prefix_len() < min_len {
            return Err(PeerRejected::TooWide { ip: *ip, min_len });
        }
        Ok(())
    }

    /// Whether a whole list of allowed IPs may be installed (at least one, each passing).
    pub fn check_ips(&self, ips: &[IpNet]) -> Result<(), PeerRejected> {
        if ips.is_empty() {
            return Err(PeerRejected::NoAllowedIps);
        }
        ips.iter().try_for_each(|ip| self.check(ip))
    }

    /// Re-check a config validated earlier (cached, stored, preloaded) against the
    /// current settings.
    pub fn check_config(&self, config: &PeerConfig) -> Result<(), PeerRejected> {
        self.check_ips(&config.allowed_ips)
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

    fn prefix() -> AddressPolicy {
        AddressPolicy::host_routes("100.64.0.0/10".parse().unwrap())
    }

    #[test]
    fn accepts_address_inside_tunnel_prefix() {
        let cfg = doc(&["100.64.0.2/32"])
            .validate(Some(PublicKey([7; 32])), &prefix())
            .unwrap();
        assert_eq!(
            cfg.allowed_ips,
            vec!["100.64.0.2/32".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn refuses_address_outside_tunnel_prefix() {
        let err = doc(&["100.64.0.2/32", "0.0.0.0/0"])
            .validate(None, &prefix())
            .unwrap_err();
        assert!(matches!(err, PeerRejected::OutsidePrefix { .. }));
    }

    #[test]
    fn refuses_other_key_than_requested() {
        let err = doc(&["100.64.0.2/32"])
            .validate(Some(PublicKey([8; 32])), &prefix())
            .unwrap_err();
        assert!(matches!(err, PeerRejected::KeyMismatch { .. }));
    }

    /// One place the address rule is exercised: (policy v4/v6 limits, allowed IP, verdict).
    fn check(min_v4: u8, min_v6: u8, ip: &str) -> Result<(), PeerRejected> {
        let policy = AddressPolicy {
            tunnel_prefix: "100.64.0.0/10".parse().unwrap(),
            min_len_v4: min_v4,
            min_len_v6: min_v6,
        };
        policy.check(&ip.parse().unwrap())
    }

    #[test]
    fn only_host_routes_by_default() {
        assert_eq!(check(32, 128, "100.64.0.2/32"), Ok(()));
        assert!(matches!(
            check(32, 128, "100.64.0.0/24"),
            Err(PeerRejected::TooWide { min_len: 32, .. })
        ));
        // The whole tunnel range in one answer: the attack this rule exists for.
        assert!(matches!(
            check(32, 128, "100.64.0.0/10"),
            Err(PeerRejected::TooWide { .. })
        ));
    }

    #[test]
    fn a_widened_limit_admits_prefixes_up_to_it() {
        assert_eq!(check(24, 128, "100.64.3.0/24"), Ok(()));
        assert_eq!(check(24, 128, "100.64.3.0/28"), Ok(()));
        assert!(check(24, 128, "100.64.0.0/23").is_err());
    }

    #[test]
    fn ipv6_outside_an_ipv4_tunnel_prefix_is_refused() {
        assert!(matches!(
            check(32, 128, "2001:2::1/128"),
            Err(PeerRejected::OutsidePrefix { .. })
        ));
    }

    #[test]
    fn a_document_with_a_wide_prefix_is_refused_whole() {
        let err = doc(&["100.64.0.2/32", "100.64.0.0/16"])
            .validate(None, &prefix())
            .unwrap_err();
        assert!(matches!(err, PeerRejected::TooWide { .. }), "{err}");
    }

    #[test]
    fn stored_configs_are_rechecked_against_new_settings() {
        let cfg = doc(&["100.64.0.0/24"])
            .validate(
                None,
                &AddressPolicy {
                    min_len_v4: 24,
                    ..prefix()
                },
            )
            .unwrap();
        assert!(prefix().check_config(&cfg).is_err());
        let empty = PeerConfig {
            allowed_ips: vec![],
            ..cfg
        };
        assert_eq!(
            prefix().check_config(&empty),
            Err(PeerRejected::NoAllowedIps)
        );
    }

    proptest::proptest! {
        /// Whatever the limits, an accepted allowed IP lies inside the tunnel prefix and is
        /// at least as long as the limit of its family; a host route inside the prefix is
        /// always accepted.
        #[test]
        fn accepted_ips_respect_prefix_and_length(
            addr in proptest::prelude::any::<u32>(),
            len in 0u8..=32,
            min_v4 in 0u8..=32,
        ) {
            let ip = IpNet::V4(ipnet::Ipv4Net::new(addr.into(), len).unwrap()).trunc();
            let policy = AddressPolicy { min_len_v4: min_v4, ..prefix() };
            match policy.check(&ip) {
                Ok(()) => {
                    proptest::prop_assert!(policy.tunnel_prefix.contains(&ip));
                    proptest::prop_assert!(ip.prefix_len() >= min_v4);
                }
                Err(_) => proptest::prop_assert!(
                    !policy.tunnel_prefix.contains(&ip) || ip.prefix_len() < min_v4
                ),
            }
            let host = IpNet::V4(ipnet::Ipv4Net::new(addr.into(), 32).unwrap());
            proptest::prop_assert_eq!(
                policy.check(&host).is_ok(),
                policy.tunnel_prefix.contains(&host)
            );
        }
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
