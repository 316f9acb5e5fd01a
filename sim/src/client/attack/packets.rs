//! The packets an attacking population sends, built before the run: real WireGuard handshake
//! initiations (boringtun's first Noise leg, so they pass mac1 and decrypt at the gateway) for
//! fresh, registered or unregistered keys, or junk behind a valid header and length for
//! `mac1 = "invalid"`. No IO and no clock of ours (boringtun stamps each initiation with the
//! TAI64N time it is built at).
//!
//! Why before the run: a fresh-key initiation costs a key pair plus the initiation's own three
//! X25519 operations (~0.2 ms on these machines), so 3,000/s built live would take most of a
//! driver CPU away from the legitimate clients it is measured beside. Built in sending order,
//! a key cycled by a `registered` flood gets later timestamps on each use, as a live sender's
//! would (uses of one key closer than TAI64N's ~16.8 ms granularity share a timestamp, and
//! jitwgd rightly drops the later ones as replays).

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::scenario::file::{FloodKeys, Mac1};
use crate::scenario::resolve::PeerIdentity;

/// Length of a handshake initiation on the wire.
pub const INITIATION_LEN: usize = 148;
/// One initiation (or junk of the same shape).
pub type Initiation = [u8; INITIATION_LEN];

/// Why an initiation could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("boringtun refused to build an initiation: {0:?}")]
    Noise(boringtun::noise::errors::WireGuardError),
    #[error("boringtun built {0} bytes, not a {INITIATION_LEN}-byte initiation")]
    Length(usize),
    #[error("boringtun built no initiation")]
    Nothing,
}

/// A real initiation from `private_key` to the gateway, with sender index `index` (24 bits).
pub fn initiation(
    private_key: [u8; 32],
    gateway_public_key: [u8; 32],
    index: u32,
) -> Result<Initiation, PacketError> {
    let mut tunn = Tunn::new(
        StaticSecret::from(private_key),
        PublicKey::from(gateway_public_key),
        None,
        None,
        index & 0x00ff_ffff,
        None,
    );
    let mut buf = [0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(bytes) => {
            Initiation::try_from(&*bytes).map_err(|_| PacketError::Length(bytes.len()))
        }
        TunnResult::Err(e) => Err(PacketError::Noise(e)),
        _ => Err(PacketError::Nothing),
    }
}

/// Random bytes behind an initiation's header (type 1, three zero bytes) and length: passes
/// the header and length checks, fails mac1 (a 2^-128 chance otherwise).
pub fn junk(rng: &mut impl RngCore) -> Initiation {
    let mut packet = [0u8; INITIATION_LEN];
    rng.fill_bytes(&mut packet[4..]);
    packet[0] = 1;
    packet
}

/// What a flood's packets carry.
#[derive(Debug, Clone, Copy)]
pub struct FloodRecipe<'a> {
    pub keys: FloodKeys,
    pub mac1: Mac1,
    /// Keys cycled by registered and unregistered floods.
    pub key_pool: &'a [PeerIdentity],
    pub gateway_public_key: [u8; 32],
    pub seed: u64,
}

impl FloodRecipe<'_> {
    /// Packet number `n` of the flood: the same `n` and seed give the same key.
    pub fn packet(&self, n: u32) -> Result<Initiation, PacketError> {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(n));
        if self.mac1 == Mac1::Invalid {
            return Ok(junk(&mut rng));
        }
        let private_key = match self.keys {
            FloodKeys::Fresh => {
                let mut key = [0u8; 32];
                rng.fill_bytes(&mut key);
                key
            }
            FloodKeys::Registered | FloodKeys::Unregistered => {
                let len = u32::try_from(self.key_pool.len())
                    .unwrap_or(u32::MAX)
                    .max(1);
                match self.key_pool.get((n % len) as usize) {
                    Some(identity) => identity.private_key,
                    None => {
                        let mut key = [0u8; 32];
                        rng.fill_bytes(&mut key);
                        key
                    }
                }
            }
        };
        initiation(private_key, self.gateway_public_key, rng.next_u32())
    }

    /// The static public key packet `n` carries (`None` for junk): how the run tells the
    /// flood's API calls from the clients'.
    pub fn public_key(&self, n: u32) -> Option<[u8; 32]> {
        if self.mac1 == Mac1::Invalid {
            return None;
        }
        match self.keys {
            FloodKeys::Fresh => {
                let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
                rng.set_stream(u64::from(n));
                let mut key = [0u8; 32];
                rng.fill_bytes(&mut key);
                Some(PublicKey::from(&StaticSecret::from(key)).to_bytes())
            }
            FloodKeys::Registered | FloodKeys::Unregistered => {
                let len = u32::try_from(self.key_pool.len())
                    .unwrap_or(u32::MAX)
                    .max(1);
                self.key_pool
                    .get((n % len) as usize)
                    .map(|identity| identity.public_key)
            }
        }
    }

    /// Packets `0..count` in order, built on `threads` threads (each takes a contiguous
    /// share, so the order of a cycled key's timestamps follows the sending order within it),
    /// with the public key each carries (`None` for junk).
    pub fn build(&self, count: u32, threads: usize) -> Result<BuiltFlood, PacketError> {
        let threads = u32::try_from(threads.max(1)).unwrap_or(1);
        let share = count.div_ceil(threads).max(1);
        type Part = Result<Vec<(Initiation, Option<[u8; 32]>)>, PacketError>;
        let parts: Vec<Part> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (from, to) = ((t * share).min(count), ((t + 1) * share).min(count));
                    scope.spawn(move || {
                        (from..to)
                            .map(|n| Ok((self.packet(n)?, self.public_key(n))))
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(PacketError::Nothing)))
                .collect()
        });
        let mut built = BuiltFlood {
            packets: Vec::with_capacity(count as usize),
            keys: Vec::new(),
        };
        for part in parts {
            for (packet, key) in part? {
                built.packets.push(packet);
                built.keys.extend(key);
            }
        }
        Ok(built)
    }
}

/// A flood's packets in sending order and the static keys they carry.
#[derive(Debug, Default)]
pub struct BuiltFlood {
    pub packets: Vec<Initiation>,
    pub keys: Vec<[u8; 32]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitwgd::identify::{identify, IdentifyError, ResponderKeys};

    fn gateway() -> (ResponderKeys, [u8; 32]) {
        let secret = StaticSecret::from([7u8; 32]);
        (
            ResponderKeys::new(secret.to_bytes()),
            PublicKey::from(&secret).to_bytes(),
        )
    }

    fn pool(n: u8) -> Vec<PeerIdentity> {
        (1..=n)
            .map(|i| {
                let secret = StaticSecret::from([i; 32]);
                PeerIdentity {
                    private_key: secret.to_bytes(),
                    public_key: PublicKey::from(&secret).to_bytes(),
                    tunnel_ip: std::net::Ipv4Addr::new(100, 64, 0, 2),
                }
            })
            .collect()
    }

    #[test]
    fn fresh_keys_pass_identify_and_never_repeat() {
        let (private, public) = gateway();
        let recipe = FloodRecipe {
            keys: FloodKeys::Fresh,
            mac1: Mac1::Valid,
            key_pool: &[],
            gateway_public_key: public,
            seed: 9,
        };
        let packets = recipe.build(40, 3).unwrap().packets;
        assert_eq!(packets.len(), 40);
        let mut keys = Vec::new();
        for (n, p) in packets.iter().enumerate() {
            let who = identify(&private, p).unwrap();
            assert_eq!(Some(who.initiator.0), recipe.public_key(n as u32));
            keys.push(who.initiator.0);
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 40);
    }

    #[test]
    fn pooled_keys_cycle_in_sending_order() {
        let (private, public) = gateway();
        let keys = pool(3);
        let recipe = FloodRecipe {
            keys: FloodKeys::Registered,
            mac1: Mac1::Valid,
            key_pool: &keys,
            gateway_public_key: public,
            seed: 1,
        };
        for (n, p) in recipe.build(7, 2).unwrap().packets.iter().enumerate() {
            let who = identify(&private, p).unwrap();
            assert_eq!(who.initiator.0, keys[n % 3].public_key);
        }
    }

    #[test]
    fn junk_fails_at_mac1() {
        let (private, public) = gateway();
        let recipe = FloodRecipe {
            keys: FloodKeys::Fresh,
            mac1: Mac1::Invalid,
            key_pool: &[],
            gateway_public_key: public,
            seed: 2,
        };
        for p in recipe.build(20, 1).unwrap().packets {
            assert_eq!(identify(&private, &p).unwrap_err(), IdentifyError::Mac1);
        }
        assert_eq!(recipe.public_key(0), None);
    }
}
