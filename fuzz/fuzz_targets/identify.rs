//! Fuzzes the first Noise leg. Random bytes almost never pass mac1, which is checked before
//! any Diffie-Hellman, so the target also re-signs each input with a valid mac1 for the
//! responder key: the DH, key derivation and both AEAD openings then see arbitrary
//! ephemeral keys and ciphertexts. Differential check: the cached path (one DH) agrees with
//! the uncached one (two DH) on every input, before and after the initiator is remembered.
#![no_main]

use std::sync::OnceLock;

use blake2::digest::{consts::U16, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use jitwgd::identify::{identify, identify_cached, ResponderKeys, StaticStaticCache};
use libfuzzer_sys::fuzz_target;

/// The responder key of the wire vectors in `../shared/vectors/`, so their packets pass.
const RESPONDER_PRIVATE: [u8; 32] = [
    0x50, 0xef, 0xcc, 0x49, 0xfe, 0x10, 0x32, 0xda, 0x6f, 0x4a, 0x1d, 0x5e, 0x74, 0x4e, 0x49,
    0x73, 0xab, 0xf3, 0x36, 0x18, 0xbd, 0x15, 0x97, 0x61, 0x85, 0x22, 0x44, 0xc2, 0xf7, 0xda,
    0x63, 0x74,
];
const INITIATION_LEN: usize = 148;
const MAC1_AT: usize = 116;

struct Fixture {
    keys: ResponderKeys,
    mac1_key: [u8; 32],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = ResponderKeys::new(RESPONDER_PRIVATE);
        let mut hasher = Blake2s256::new();
        hasher.update(b"mac1----");
        hasher.update(keys.public_key().0);
        Fixture {
            keys,
            mac1_key: hasher.finalize().into(),
        }
    })
}

/// Puts a valid mac1 (keyed BLAKE2s-128 over everything before it) on a full-length message.
fn sign_mac1(mac1_key: &[u8; 32], msg: &mut [u8]) {
    let mut mac = <Blake2sMac<U16> as Mac>::new_from_slice(mac1_key).expect("32-byte key");
    mac.update(&msg[..MAC1_AT]);
    let tag = mac.finalize().into_bytes();
    msg[MAC1_AT..MAC1_AT + 16].copy_from_slice(&tag);
}

fn check(msg: &[u8]) {
    let f = fixture();
    let plain = identify(&f.keys, msg);
    let cache = StaticStaticCache::new(&f.keys, 4);
    assert_eq!(plain, identify_cached(&f.keys, &cache, msg));
    if let Ok(init) = &plain {
        cache.remember(&f.keys, init.initiator);
        assert_eq!(plain, identify_cached(&f.keys, &cache, msg));
    }
}

fuzz_target!(|data: &[u8]| {
    // As captured: arbitrary bytes, any length.
    check(data);
    // Re-signed: the type byte and reserved zeros set, mac1 made valid, so the DH path runs.
    if data.len() >= INITIATION_LEN {
        let mut msg = data[..INITIATION_LEN].to_vec();
        msg[..4].copy_from_slice(&[1, 0, 0, 0]);
        sign_mac1(&fixture().mac1_key, &mut msg);
        check(&msg);
    }
});
