//! Identify: who is knocking? From a captured WireGuard handshake initiation and the
//! interface's private key, recover the initiator's static public key and its TAI64N
//! timestamp by running the responder's half of the Noise IKpsk2 first message.
//!
//! Pure: bytes and keys in, values out; no IO, no clock. Cheap checks come first so
//! junk costs one BLAKE2s: header, length, then mac1 — no Diffie-Hellman until mac1
//! proves the sender knows our public key. A sniffer cannot check mac2 (cookies) and
//! keeps no timestamp state; replay protection is the caller's job (`replay`).
//!
//! The second DH (responder static x initiator static) depends only on the key pair,
//! so `identify_cached` takes it from a `StaticStaticCache` for keys the caller has
//! said it knows: a repeat initiation from a known key then costs one DH. And an
//! initiation the caller has identified before (the same ephemeral key: WireGuard makes
//! a new one for every initiation, retries included) costs none: `identify_unless_resent`
//! asks the caller's memory (`replay::ResentMemory`) after mac1, before any DH.

mod cache;
mod noise;

pub use cache::{FreshStaticStatic, StaticStaticCache};

use x25519_dalek::{PublicKey as DhPublic, StaticSecret};

use crate::peer::{PublicKey, Timestamp};
use noise::{KEY_LEN, TAG_LEN};

/// Length of a handshake initiation on the wire.
pub const INITIATION_LEN: usize = 148;
/// Type byte 1 followed by three reserved zero bytes.
const INITIATION_HEADER: [u8; 4] = [1, 0, 0, 0];

// Field offsets inside the initiation.
const SENDER_INDEX: std::ops::Range<usize> = 4..8;
const EPHEMERAL: std::ops::Range<usize> = 8..40;
const ENCRYPTED_STATIC: std::ops::Range<usize> = 40..(40 + KEY_LEN + TAG_LEN);
const ENCRYPTED_TIMESTAMP: std::ops::Range<usize> = 88..(88 + 12 + TAG_LEN);
/// mac1 covers everything before it.
const MAC1: std::ops::Range<usize> = 116..132;

/// The responder's precomputed state, built once per interface key.
#[derive(Clone)]
pub struct ResponderKeys {
    private: StaticSecret,
    public: [u8; KEY_LEN],
    /// HASH("mac1----" || responder public): what initiators key mac1 with.
    mac1_key: [u8; KEY_LEN],
    /// HASH(CONSTRUCTION): the chaining key before any message.
    initial_chaining_key: [u8; KEY_LEN],
    /// HASH(HASH(ck || IDENTIFIER) || responder public): the hash before any message.
    initial_hash: [u8; KEY_LEN],
}

impl ResponderKeys {
    pub fn new(private: [u8; KEY_LEN]) -> Self {
        let private = StaticSecret::from(private);
        let public = DhPublic::from(&private).to_bytes();
        let initial_chaining_key = noise::hash(noise::CONSTRUCTION, &[]);
        let initial_hash = noise::hash(
            &noise::hash(&initial_chaining_key, noise::IDENTIFIER),
            &public,
        );
        Self {
            private,
            public,
            mac1_key: noise::hash(noise::LABEL_MAC1, &public),
            initial_chaining_key,
            initial_hash,
        }
    }

    /// The interface's static public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.public)
    }
}

impl std::fmt::Debug for ResponderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("ResponderKeys")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Who sent a valid initiation, and when (by its own clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initiation {
    /// The initiator's session index (echoed in our response; not an identity).
    pub sender_index: u32,
    pub initiator: PublicKey,
    pub timestamp: Timestamp,
}

/// An identified initiation, with the static-static secret identify had to compute for it
/// (None when it came from the cache). `StaticStaticCache::remember_identified` keeps that
/// secret, so vouching for a first contact's key costs no second X25519.
#[derive(Clone)]
pub struct Identified {
    pub initiation: Initiation,
    fresh: Option<FreshStaticStatic>,
}

impl Identified {
    /// The initiator's key.
    pub fn initiator(&self) -> PublicKey {
        self.initiation.initiator
    }

    pub(crate) fn fresh_secret(&self) -> Option<&FreshStaticStatic> {
        self.fresh.as_ref()
    }
}

/// An initiation identified elsewhere (tests, replays): nothing to hand to the cache.
impl From<Initiation> for Identified {
    fn from(initiation: Initiation) -> Self {
        Identified {
            initiation,
            fresh: None,
        }
    }
}

impl std::fmt::Debug for Identified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identified")
            .field("initiation", &self.initiation)
            .field("fresh_secret", &self.fresh.is_some())
            .finish()
    }
}

/// The stage at which an initiation was rejected. Checked in this order: Header
/// (type/reserved, including messages shorter than 4 bytes), Length (exactly 148),
/// Mac1, DecryptStatic, DecryptTimestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IdentifyError {
    #[error("not a handshake initiation (type or reserved bytes)")]
    Header,
    #[error("handshake initiation is not exactly 148 bytes")]
    Length,
    #[error("mac1 does not match our public key")]
    Mac1,
    #[error("initiator static key does not decrypt")]
    DecryptStatic,
    #[error("timestamp does not decrypt")]
    DecryptTimestamp,
    /// Not a failure of the packet: the caller said it identified this one before.
    #[error("initiation identified before (same ephemeral key): sent again")]
    Resent,
}

impl IdentifyError {
    /// Stable label for metrics and test vectors.
    pub fn as_str(&self) -> &'static str {
        match self {
            IdentifyError::Header => "header",
            IdentifyError::Length => "length",
            IdentifyError::Mac1 => "mac1",
            IdentifyError::DecryptStatic => "decrypt_static",
            IdentifyError::DecryptTimestamp => "decrypt_timestamp",
            IdentifyError::Resent => "resent",
        }
    }
}

/// Header and length checks, shared by `identify` and `mac1_valid`.
fn initiation_bytes(msg: &[u8]) -> Result<&[u8; INITIATION_LEN], IdentifyError> {
    if msg.get(..INITIATION_HEADER.len()) != Some(&INITIATION_HEADER[..]) {
        return Err(IdentifyError::Header);
    }
    msg.try_into().map_err(|_| IdentifyError::Length)
}

fn mac1_matches(keys: &ResponderKeys, msg: &[u8; INITIATION_LEN]) -> bool {
    noise::mac_matches(&keys.mac1_key, &msg[..MAC1.start], &msg[MAC1])
}

/// Whether `msg` is a well-formed initiation whose mac1 was made for our public key.
/// One BLAKE2s; no Diffie-Hellman.
pub fn mac1_valid(keys: &ResponderKeys, msg: &[u8]) -> bool {
    initiation_bytes(msg).is_ok_and(|msg| mac1_matches(keys, msg))
}

/// Recover the initiator's static public key and timestamp from a handshake
/// initiation addressed to `keys`. Costs two X25519 operations once mac1 passes.
pub fn identify(keys: &ResponderKeys, msg: &[u8]) -> Result<Initiation, IdentifyError> {
    identify_with(keys, None, msg, |_| false).map(|i| i.initiation)
}

/// `identify`, taking the static-static DH from `cache` when the initiator's key is
/// in it: one X25519 instead of two for a known key. Same result as `identify` for
/// every input (the cached secret is the one `identify` would compute, and the AEAD
/// on the timestamp still authenticates it). Never fills the cache: call
/// `StaticStaticCache::remember` for keys found to be known.
pub fn identify_cached(
    keys: &ResponderKeys,
    cache: &StaticStaticCache,
    msg: &[u8],
) -> Result<Initiation, IdentifyError> {
    identify_with(keys, Some(cache), msg, |_| false).map(|i| i.initiation)
}

/// `identify_cached`, also handing back the static-static secret it computed on a cache
/// miss, for `StaticStaticCache::remember_identified` once the key proves known.
pub fn identify_keeping_secret(
    keys: &ResponderKeys,
    cache: &StaticStaticCache,
    msg: &[u8],
) -> Result<Identified, IdentifyError> {
    identify_with(keys, Some(cache), msg, |_| false)
}

/// `identify_keeping_secret`, unless `resent` says the initiation's ephemeral key was
/// seen in an initiation identified before: then `Err(Resent)` once mac1 passes, before
/// any X25519. (A flood resending captured initiations then costs a BLAKE2s and a lookup
/// each; the identification that came first already decided what the packet does.)
pub fn identify_unless_resent(
    keys: &ResponderKeys,
    cache: &StaticStaticCache,
    msg: &[u8],
    resent: impl FnOnce(&[u8; KEY_LEN]) -> bool,
) -> Result<Identified, IdentifyError> {
    identify_with(keys, Some(cache), msg, resent)
}

/// The ephemeral key of a handshake initiation (`None`: not one).
pub fn ephemeral_of(msg: &[u8]) -> Option<[u8; KEY_LEN]> {
    let msg = initiation_bytes(msg).ok()?;
    msg.get(EPHEMERAL)?.try_into().ok()
}

fn identify_with(
    keys: &ResponderKeys,
    cache: Option<&StaticStaticCache>,
    msg: &[u8],
    resent: impl FnOnce(&[u8; KEY_LEN]) -> bool,
) -> Result<Identified, IdentifyError> {
    let msg = initiation_bytes(msg)?;
    if !mac1_matches(keys, msg) {
        return Err(IdentifyError::Mac1);
    }
    let mut sender_index = [0u8; 4];
    sender_index.copy_from_slice(&msg[SENDER_INDEX]);
    let mut ephemeral = [0u8; KEY_LEN];
    ephemeral.copy_from_slice(&msg[EPHEMERAL]);
    if resent(&ephemeral) {
        return Err(IdentifyError::Resent);
    }
    let encrypted_static = &msg[ENCRYPTED_STATIC];
    let encrypted_timestamp = &msg[ENCRYPTED_TIMESTAMP];

    // e: mix the initiator's ephemeral key into chaining key and hash.
    let chaining_key = noise::kdf1(&keys.initial_chaining_key, &ephemeral);
    let hash = noise::hash(&keys.initial_hash, &ephemeral);

    // es: decrypt the initiator's static key.
    let shared = keys.private.diffie_hellman(&DhPublic::from(ephemeral));
    if !shared.was_contributory() {
        return Err(IdentifyError::DecryptStatic);
    }
    let (chaining_key, key) = noise::kdf2(&chaining_key, shared.as_bytes());
    let initiator: [u8; KEY_LEN] =
        noise::open(&key, encrypted_static, &hash).ok_or(IdentifyError::DecryptStatic)?;
    let hash = noise::hash(&hash, encrypted_static);

    // ss: decrypt the timestamp, proving the initiator holds its static private key
    // (the preshared key only enters at the second message, so it is not needed here).
    // The cache only holds contributory results, so a hit skips that check too.
    let initiator_key = PublicKey(initiator);
    let (key, fresh) = match cache.and_then(|c| c.get(keys, &initiator_key)) {
        Some(shared) => (noise::kdf2(&chaining_key, shared.as_bytes()).1, None),
        None => {
            let shared = keys.private.diffie_hellman(&DhPublic::from(initiator));
            if !shared.was_contributory() {
                return Err(IdentifyError::DecryptTimestamp);
            }
            let key = noise::kdf2(&chaining_key, shared.as_bytes()).1;
            (key, Some(shared))
        }
    };
    let timestamp: [u8; 12] =
        noise::open(&key, encrypted_timestamp, &hash).ok_or(IdentifyError::DecryptTimestamp)?;

    Ok(Identified {
        initiation: Initiation {
            sender_index: u32::from_le_bytes(sender_index),
            initiator: initiator_key,
            timestamp: Timestamp(timestamp),
        },
        // Only for a cache that could take it: plain `identify` drops it at once.
        fresh: fresh
            .filter(|_| cache.is_some())
            .map(|secret| FreshStaticStatic::new(keys, initiator_key, secret)),
    })
}

#[cfg(test)]
mod tests;
