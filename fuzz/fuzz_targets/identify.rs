//! Fuzzes the first Noise leg. Random bytes almost never pass mac1, which is checked before
//! any Diffie-Hellman, so the target also re-signs each input with a valid mac1 for the
//! responder key: the DH, key derivation and both AEAD openings then see arbitrary
//! ephemeral keys and ciphertexts. Differential check: the cached path (one DH) agrees with
//! the uncached one (two DH) against a cache that already holds the wire vectors' initiators
//! (mutated vector packets take the hit path, anything else a miss), and against a fresh
//! cache once the initiator an input proved is remembered.
//!
//! Everything per process (responder keys, mac1 key, the warm cache) is built once. The
//! cached path is compared only once the plain one got past the static-key AEAD: up to
//! there both run the same code without consulting the cache, so rerunning it (one more
//! X25519 per input) could not disagree and only halved the exec rate.
#![no_main]

use std::sync::OnceLock;

use blake2::digest::{consts::U16, Mac};
use blake2::{Blake2s256, Blake2sMac, Digest};
use jitwgd::identify::{
    identify, identify_cached, IdentifyError, ResponderKeys, StaticStaticCache,
};
use jitwgd::peer::PublicKey;
use libfuzzer_sys::fuzz_target;

/// The responder key of the wire vectors in `../shared/vectors/`, so their packets pass.
const RESPONDER_PRIVATE: [u8; 32] = [
    0x50, 0xef, 0xcc, 0x49, 0xfe, 0x10, 0x32, 0xda, 0x6f, 0x4a, 0x1d, 0x5e, 0x74, 0x4e, 0x49, 0x73,
    0xab, 0xf3, 0x36, 0x18, 0xbd, 0x15, 0x97, 0x61, 0x85, 0x22, 0x44, 0xc2, 0xf7, 0xda, 0x63, 0x74,
];
/// The initiators of the valid wire vectors (the seeds `ci/fuzz.sh` writes).
const VECTOR_INITIATORS: [&str; 24] = [
    "aHCBtyiPyEDj500p94e7Yhz0/1nQvqbYh0wWAr8xEw0=",
    "yQ4Pkse3FRh5eNFUTvuVuunNGBgtVGtCMcAooc0V+TM=",
    "lwKDwKHukqDIoRMLmVu9rddbbjQSOrcYBTBJvSsk7g8=",
    "OqQlwUdfm4L3TwtkZYWExRBD9Be8iFsuQyPWDz/c4Ts=",
    "Oqfs71C+GCdXlsLYquQu1NypjxDl5VJfZYFbcjQepSM=",
    "STnhKP2SB4widmqFqayOh8llkdzi+AVTniuQJ6B7NxA=",
    "TaLC09Wzp0gavbtUBnYRCrqnT/+QIEt5F70abI4LQEY=",
    "22IE1eha+YVuJZJkA1kBOk9omNzYD46NazC2gi2EZGg=",
    "AVyXjpaEBYzsmc9VnRXDWpaF2ji0Nbtf6tClsyOsnGY=",
    "avZxmLOR72Jw9/DmxCAvAm0y0R5sYRMDDzC/YbIy4kE=",
    "xUo8ewszmbgNXHTroctyIvk5X4nY+4exWqj2mZK57B4=",
    "BzFXTRSgFDnkNvxSRgIe5Mxl+r5rQ6rlvRiYtsKzz1c=",
    "MUdvkk6FO+KO9s8GOiA8ojgEyup0NDVmcmyR5ot/2lg=",
    "Sp8aFHafjohOdMgteZ6Ev3r15nAl66zCi8aO8EMGcwc=",
    "rQ9rzZEB/OH2E35j/qEWTvCHl8gEKsnhTR9NojglZxU=",
    "FU0k1dH2hUO1roJTiaxM0/PvAONVgmRNkRZVIySNowU=",
    "Qygl2I9TfSylzt0P16z6AUysFM2wo7NCPcbkwHQAslg=",
    "pZqd85+miqswbu3RXONdbrhlnlVNRv3+w9b/DIBX0XE=",
    "wv6SdT92I7mKU6fpqdiL5qlJyIBj1G76WMZLeCMhMXg=",
    "/wK74e6mjBbZ26XsfrWUZDU2OzLQLkSo0ZaVrSeC7Bc=",
    "iR/KQin+vHb877cPFq9Jn7v2+cWJzw+6bLRteePkzFk=",
    "c6Q6M9t7LwyTov+GFtmzAY7KUoTtpcl/Qm+QqN0B7H4=",
    "M6Bp6tP9OgDH3EF36G6c4NDP88c1tzfM6HG8YEGk/nk=",
    "tJQKJgzGd8ZifGt5vJJ6gYTmU2780KKa8X4Yx1wvVTA=",
];
const INITIATION_LEN: usize = 148;
const MAC1_AT: usize = 116;

struct Fixture {
    keys: ResponderKeys,
    mac1_key: [u8; 32],
    /// Holds every vector initiator; only read after it is built, so inputs cannot
    /// influence one another through it.
    warm: StaticStaticCache,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = ResponderKeys::new(RESPONDER_PRIVATE);
        let mut hasher = Blake2s256::new();
        hasher.update(b"mac1----");
        hasher.update(keys.public_key().0);
        // Room for every key in whichever of the cache's 16 shards it lands, so none is
        // evicted.
        let warm = StaticStaticCache::new(&keys, 16 * VECTOR_INITIATORS.len());
        let initiators = VECTOR_INITIATORS
            .map(|key| PublicKey::from_base64(key).expect("vector keys are valid base64"));
        for key in initiators {
            assert!(warm.remember(&keys, key), "vector key {key} is cacheable");
        }
        assert!(initiators.iter().all(|key| warm.contains(key)));
        Fixture {
            mac1_key: hasher.finalize().into(),
            keys,
            warm,
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
    if matches!(
        plain,
        Err(IdentifyError::Header
            | IdentifyError::Length
            | IdentifyError::Mac1
            | IdentifyError::DecryptStatic)
    ) {
        return;
    }
    // A hit for the vectors' initiators, a miss for any other.
    assert_eq!(plain, identify_cached(&f.keys, &f.warm, msg));
    // Remembering the initiator this input proved (one X25519) makes the next one a hit.
    if let Ok(init) = &plain {
        let cache = StaticStaticCache::new(&f.keys, 4);
        assert!(cache.remember(&f.keys, init.initiator));
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
