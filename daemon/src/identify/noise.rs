//! The Noise_IKpsk2 building blocks WireGuard uses (HASH, MAC, HMAC-based KDF, AEAD
//! with a zero nonce), each a small pure function over fixed-size arrays, so the
//! handshake steps in `identify` read like the protocol text.

use blake2::digest::{FixedOutput, KeyInit, Mac, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};

pub(super) const KEY_LEN: usize = 32;
pub(super) const TAG_LEN: usize = 16;

/// Noise protocol name; its hash is the initial chaining key.
pub(super) const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier, mixed into the initial hash.
pub(super) const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the mac1 key: mac1 key = HASH(LABEL_MAC1 || responder static public).
pub(super) const LABEL_MAC1: &[u8] = b"mac1----";

/// HASH(a || b): BLAKE2s-256.
pub(super) fn hash(a: &[u8], b: &[u8]) -> [u8; KEY_LEN] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, a);
    Digest::update(&mut h, b);
    h.finalize().into()
}

type HmacBlake2s = hmac::SimpleHmac<Blake2s256>;

/// HMAC-BLAKE2s(key, parts concatenated).
fn hmac(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
    #[allow(clippy::expect_used)]
    let mut mac = <HmacBlake2s as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        Update::update(&mut mac, part);
    }
    mac.finalize_fixed().into()
}

/// KDF1(ck, input): the new chaining key.
pub(super) fn kdf1(chaining_key: &[u8; KEY_LEN], input: &[u8]) -> [u8; KEY_LEN] {
    let prk = hmac(chaining_key, &[input]);
    hmac(&prk, &[&[0x01]])
}

/// KDF2(ck, input): the new chaining key and a message key.
pub(super) fn kdf2(chaining_key: &[u8; KEY_LEN], input: &[u8]) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let prk = hmac(chaining_key, &[input]);
    let t1 = hmac(&prk, &[&[0x01]]);
    let t2 = hmac(&prk, &[&t1, &[0x02]]);
    (t1, t2)
}

/// Keyed BLAKE2s-128 over `data`, compared in constant time with `expected`.
pub(super) fn mac_matches(key: &[u8; KEY_LEN], data: &[u8], expected: &[u8]) -> bool {
    // Blake2sMac accepts keys up to 32 bytes, so a 32-byte key cannot fail.
    let Ok(mut mac) = <Blake2sMac<blake2::digest::consts::U16> as KeyInit>::new_from_slice(key)
    else {
        return false;
    };
    Update::update(&mut mac, data);
    mac.verify_slice(expected).is_ok()
}

/// AEAD-open with ChaCha20-Poly1305, nonce counter 0, into a fixed-size plaintext.
/// `sealed` is plaintext || 16-byte tag. None when authentication fails.
pub(super) fn open<const N: usize>(
    key: &[u8; KEY_LEN],
    sealed: &[u8],
    associated: &[u8],
) -> Option<[u8; N]> {
    if sealed.len() != N + TAG_LEN {
        return None;
    }
    let (ciphertext, tag) = sealed.split_at(N);
    let mut plaintext = [0u8; N];
    plaintext.copy_from_slice(ciphertext);
    let cipher = <ChaCha20Poly1305 as KeyInit>::new(key.into());
    cipher
        .decrypt_in_place_detached(
            &Nonce::default(),
            associated,
            &mut plaintext,
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_chaining_values_match_wireguard() {
        // Published constants (boringtun's INITIAL_CHAIN_KEY / INITIAL_CHAIN_HASH).
        let ck: [u8; 32] = [
            96, 226, 109, 174, 243, 39, 239, 192, 46, 195, 53, 226, 160, 37, 210, 208, 22, 235, 66,
            6, 248, 114, 119, 245, 45, 56, 209, 152, 139, 120, 205, 54,
        ];
        let h: [u8; 32] = [
            34, 17, 179, 97, 8, 26, 197, 102, 105, 18, 67, 219, 69, 138, 213, 50, 45, 156, 108,
            102, 34, 147, 232, 183, 14, 225, 156, 101, 186, 7, 158, 243,
        ];
        assert_eq!(hash(CONSTRUCTION, &[]), ck);
        assert_eq!(hash(&ck, IDENTIFIER), h);
    }

    #[test]
    fn open_rejects_wrong_length_and_bad_tag() {
        let key = [7u8; 32];
        assert!(open::<12>(&key, &[0; 27], b"").is_none());
        assert!(open::<12>(&key, &[0; 28], b"").is_none());
    }

    #[test]
    fn kdf2_first_output_is_kdf1() {
        let ck = [3u8; 32];
        assert_eq!(kdf2(&ck, b"input").0, kdf1(&ck, b"input"));
    }
}
