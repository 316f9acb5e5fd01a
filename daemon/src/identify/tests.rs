//! identify checked against an independent implementation: initiations made by
//! boringtun's `noise::Tunn`, compared with boringtun's own first-leg parser and
//! responder. (Captured wireguard-go vectors live in `daemon/tests/identify_vectors.rs`.)

use super::*;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::time::{SystemTime, UNIX_EPOCH};

/// TAI64 labels seconds from 2^62; boringtun also adds 37 leap seconds, wireguard-go 10.
const TAI64_BASE: u64 = 1 << 62;

fn public_of(private: [u8; 32]) -> DhPublic {
    DhPublic::from(&StaticSecret::from(private))
}

fn initiator_tunn(initiator: [u8; 32], responder: [u8; 32], psk: Option<[u8; 32]>) -> Tunn {
    Tunn::new(
        StaticSecret::from(initiator),
        public_of(responder),
        psk,
        None,
        7,
        None,
    )
}

/// boringtun's responder holding `initiator_public`: the independent check of what
/// identify accepts.
fn responder_tunn(responder: [u8; 32], initiator_public: DhPublic, psk: Option<[u8; 32]>) -> Tunn {
    Tunn::new(
        StaticSecret::from(responder),
        initiator_public,
        psk,
        None,
        9,
        None,
    )
}

fn next_initiation(tunn: &mut Tunn) -> Vec<u8> {
    let mut buf = [0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(packet) => packet.to_vec(),
        other => panic!("no initiation: {other:?}"),
    }
}

fn initiation(initiator: [u8; 32], responder: [u8; 32], psk: Option<[u8; 32]>) -> Vec<u8> {
    next_initiation(&mut initiator_tunn(initiator, responder, psk))
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tai64_seconds(t: Timestamp) -> u64 {
    u64::from_be_bytes(t.0[..8].try_into().unwrap())
}

/// boringtun's stateless first-leg parser: initiator key and sender index.
fn boringtun_anon(responder: [u8; 32], msg: &[u8]) -> Option<([u8; 32], u32)> {
    let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(msg) else {
        return None;
    };
    let private = StaticSecret::from(responder);
    let public = DhPublic::from(&private);
    let half = parse_handshake_anon(&private, &public, &init).ok()?;
    Some((half.peer_static_public, half.peer_index))
}

/// Whether a boringtun responder that knows the initiator accepts `msg` (this
/// also checks the timestamp against the newest it has seen).
fn boringtun_responder_accepts(responder: &mut Tunn, msg: &[u8]) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        responder.decapsulate(None, msg, &mut buf),
        TunnResult::WriteToNetwork(_)
    )
}

#[test]
fn error_labels_match_vector_stages() {
    let labels: Vec<_> = [
        IdentifyError::Header,
        IdentifyError::Length,
        IdentifyError::Mac1,
        IdentifyError::DecryptStatic,
        IdentifyError::DecryptTimestamp,
    ]
    .iter()
    .map(IdentifyError::as_str)
    .collect();
    assert_eq!(
        labels,
        [
            "header",
            "length",
            "mac1",
            "decrypt_static",
            "decrypt_timestamp"
        ]
    );
}

#[test]
fn header_is_checked_before_length() {
    let keys = ResponderKeys::new([1; 32]);
    assert_eq!(identify(&keys, &[]), Err(IdentifyError::Header));
    assert_eq!(identify(&keys, &[1, 0, 0]), Err(IdentifyError::Header));
    assert_eq!(identify(&keys, &[2; 92]), Err(IdentifyError::Header));
    assert_eq!(identify(&keys, &[1, 0, 0, 0]), Err(IdentifyError::Length));
}

#[test]
fn low_order_ephemeral_is_rejected_before_aead() {
    // A correct mac1 over an all-zero ephemeral (a low-order point): DH gives zero.
    let keys = ResponderKeys::new([9; 32]);
    let mut msg = [0u8; INITIATION_LEN];
    msg[..4].copy_from_slice(&INITIATION_HEADER);
    let mac = {
        use blake2::digest::{Mac, Update};
        let mut m =
            blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(&keys.mac1_key)
                .unwrap();
        Update::update(&mut m, &msg[..MAC1.start]);
        m.finalize().into_bytes()
    };
    msg[MAC1].copy_from_slice(&mac);
    assert!(mac1_valid(&keys, &msg));
    assert_eq!(identify(&keys, &msg), Err(IdentifyError::DecryptStatic));
}

#[test]
fn debug_hides_private_key() {
    let keys = ResponderKeys::new([0x42; 32]);
    let shown = format!("{keys:?}");
    assert!(!shown.contains("66, 66"), "{shown}");
    assert!(shown.contains(&keys.public_key().fingerprint()));
}

#[test]
fn timestamps_follow_boringtun_order_and_replay_view() {
    let (initiator, responder) = ([3u8; 32], [4u8; 32]);
    let keys = ResponderKeys::new(responder);
    let mut client = initiator_tunn(initiator, responder, None);
    let first = next_initiation(&mut client);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let second = next_initiation(&mut client);
    let t1 = identify(&keys, &first).unwrap().timestamp;
    let t2 = identify(&keys, &second).unwrap().timestamp;
    assert!(t1 < t2);

    // boringtun's responder, after the newer one, refuses the older one as a replay:
    // the same ordering identify reports.
    let mut server = responder_tunn(responder, public_of(initiator), None);
    assert!(boringtun_responder_accepts(&mut server, &second));
    assert!(!boringtun_responder_accepts(&mut server, &first));
}

fn key() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn recovers_boringtun_initiator(
        initiator in key(),
        responder in key(),
        psk in proptest::option::of(key()),
    ) {
        let before = unix_seconds();
        let msg = initiation(initiator, responder, psk);
        let after = unix_seconds();
        let keys = ResponderKeys::new(responder);

        let found = identify(&keys, &msg).unwrap();
        prop_assert_eq!(found.initiator, PublicKey(public_of(initiator).to_bytes()));
        prop_assert!(mac1_valid(&keys, &msg));

        // Same key and index as boringtun's own stateless first leg.
        let (anon_key, anon_index) = boringtun_anon(responder, &msg).unwrap();
        prop_assert_eq!(found.initiator, PublicKey(anon_key));
        prop_assert_eq!(found.sender_index, anon_index);

        // The timestamp is boringtun's clock reading at creation, in TAI64N.
        let secs = tai64_seconds(found.timestamp);
        prop_assert!(secs >= TAI64_BASE + before && secs <= TAI64_BASE + after + 38, "{secs}");
        let nanos = u32::from_be_bytes(found.timestamp.0[8..].try_into().unwrap());
        prop_assert!(nanos < 1_000_000_000);

        // A boringtun responder holding that initiator's key accepts the same bytes.
        let mut server = responder_tunn(responder, public_of(initiator), psk);
        prop_assert!(boringtun_responder_accepts(&mut server, &msg));
    }

    #[test]
    fn wrong_responder_fails_mac1(initiator in key(), responder in key(), other in key()) {
        prop_assume!(public_of(responder) != public_of(other));
        let msg = initiation(initiator, responder, None);
        let keys = ResponderKeys::new(other);
        prop_assert_eq!(identify(&keys, &msg), Err(IdentifyError::Mac1));
        prop_assert!(!mac1_valid(&keys, &msg));
    }

    #[test]
    fn any_flipped_bit_under_mac1_is_rejected(
        initiator in key(),
        responder in key(),
        bit in 0usize..(MAC1.end * 8),
    ) {
        let mut msg = initiation(initiator, responder, None);
        msg[bit / 8] ^= 1 << (bit % 8);
        let expected = if bit < 32 { IdentifyError::Header } else { IdentifyError::Mac1 };
        // The reserved/type bytes fail as Header, the rest (mac1 included) as Mac1.
        prop_assert_eq!(identify(&ResponderKeys::new(responder), &msg), Err(expected));
    }

    #[test]
    fn wrong_lengths_are_rejected(
        initiator in key(),
        responder in key(),
        len in 0usize..400,
        filler in any::<u8>(),
    ) {
        prop_assume!(len != INITIATION_LEN);
        let mut msg = initiation(initiator, responder, None);
        msg.resize(len, filler);
        let keys = ResponderKeys::new(responder);
        let result = identify(&keys, &msg);
        let expected = if len < 4 { IdentifyError::Header } else { IdentifyError::Length };
        prop_assert_eq!(result, Err(expected));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let keys = ResponderKeys::new([5; 32]);
        let _ = identify(&keys, &bytes);
        let _ = mac1_valid(&keys, &bytes);
    }

    #[test]
    fn arbitrary_initiation_shaped_bytes_are_rejected(
        mut bytes in proptest::collection::vec(any::<u8>(), INITIATION_LEN),
    ) {
        bytes[..4].copy_from_slice(&INITIATION_HEADER);
        let keys = ResponderKeys::new([5; 32]);
        prop_assert_eq!(identify(&keys, &bytes), Err(IdentifyError::Mac1));
    }
}

/// `msg` with a correct mac1 for `keys` over its (possibly altered) first 116 bytes, so
/// an alteration reaches the Diffie-Hellman stages instead of failing at mac1.
fn with_mac1(keys: &ResponderKeys, mut msg: Vec<u8>) -> Vec<u8> {
    use blake2::digest::{Mac, Update};
    let mut m =
        blake2::Blake2sMac::<blake2::digest::consts::U16>::new_from_slice(&keys.mac1_key).unwrap();
    Update::update(&mut m, &msg[..MAC1.start]);
    msg[MAC1].copy_from_slice(&m.finalize().into_bytes());
    msg
}

fn seal(key: &[u8; 32], plaintext: &[u8], associated: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{ChaCha20Poly1305, Nonce};
    let payload = Payload {
        msg: plaintext,
        aad: associated,
    };
    ChaCha20Poly1305::new(key.into())
        .encrypt(&Nonce::default(), payload)
        .unwrap()
}

/// An initiation claiming `claimed` as its static key, built by someone holding
/// `signer`'s static private key and its own ephemeral: a spoofer can encrypt any
/// claimed key (it owns the ephemeral), but can only key the timestamp with a DH of a
/// static private key it holds. When `signer` is the private key of `claimed`, this
/// is an honest initiation.
fn crafted_initiation(
    keys: &ResponderKeys,
    claimed: [u8; 32],
    signer: [u8; 32],
    ephemeral: [u8; 32],
) -> Vec<u8> {
    let responder = DhPublic::from(keys.public);
    let e_pub = public_of(ephemeral).to_bytes();
    let ck = noise::kdf1(&keys.initial_chaining_key, &e_pub);
    let h = noise::hash(&keys.initial_hash, &e_pub);
    let es = StaticSecret::from(ephemeral).diffie_hellman(&responder);
    let (ck, k) = noise::kdf2(&ck, es.as_bytes());
    let encrypted_static = seal(&k, &claimed, &h);
    let h = noise::hash(&h, &encrypted_static);
    let ss = StaticSecret::from(signer).diffie_hellman(&responder);
    let (_, k) = noise::kdf2(&ck, ss.as_bytes());
    let timestamp = [0x40, 0, 0, 0, 0x66, 0, 0, 0, 0, 0, 0, 1];
    let encrypted_timestamp = seal(&k, &timestamp, &h);
    let mut msg = INITIATION_HEADER.to_vec();
    msg.extend_from_slice(&7u32.to_le_bytes());
    msg.extend_from_slice(&e_pub);
    msg.extend_from_slice(&encrypted_static);
    msg.extend_from_slice(&encrypted_timestamp);
    msg.resize(INITIATION_LEN, 0);
    with_mac1(keys, msg)
}

/// identify with no cache, a cold cache and a cache warm for `known` all agree.
fn check_cache_agrees(
    keys: &ResponderKeys,
    known: &[[u8; 32]],
    msg: &[u8],
) -> Result<Result<Initiation, IdentifyError>, TestCaseError> {
    let plain = identify(keys, msg);
    let cold = StaticStaticCache::new(keys, 64);
    prop_assert_eq!(identify_cached(keys, &cold, msg), plain);
    let warm = StaticStaticCache::new(keys, 64);
    for k in known {
        warm.remember(keys, PublicKey(public_of(*k).to_bytes()));
    }
    prop_assert_eq!(identify_cached(keys, &warm, msg), plain);
    // Twice: a hit does not change the entry.
    prop_assert_eq!(identify_cached(keys, &warm, msg), plain);
    Ok(plain)
}

#[test]
fn crafted_initiation_is_honest_with_the_claimed_key() {
    // Guards the helper the spoofing property relies on.
    let keys = ResponderKeys::new([4; 32]);
    let claimed = public_of([3; 32]).to_bytes();
    let msg = crafted_initiation(&keys, claimed, [3; 32], [5; 32]);
    let found = identify(&keys, &msg).unwrap();
    assert_eq!(found.initiator, PublicKey(claimed));
    let mut server = responder_tunn([4; 32], DhPublic::from(claimed), None);
    assert!(boringtun_responder_accepts(&mut server, &msg));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cache_gives_identical_results_for_valid_tampered_and_replayed(
        initiator in key(),
        responder in key(),
        psk in proptest::option::of(key()),
        bit in (4 * 8)..(MAC1.start * 8),
    ) {
        let keys = ResponderKeys::new(responder);
        let mut client = initiator_tunn(initiator, responder, psk);
        let first = next_initiation(&mut client);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let second = next_initiation(&mut client);
        let known = [initiator];

        // Valid, in order, then the first replayed: all identify, same as boringtun's
        // stateless parser, with or without a cache.
        let got_second = check_cache_agrees(&keys, &known, &second)?.unwrap();
        let got_first = check_cache_agrees(&keys, &known, &first)?.unwrap();
        prop_assert_eq!(got_first.initiator, got_second.initiator);
        prop_assert!(got_first.timestamp < got_second.timestamp, "replay is visible");
        let (anon_key, _) = boringtun_anon(responder, &second).unwrap();
        prop_assert_eq!(got_second.initiator, PublicKey(anon_key));

        // Tampered under a recomputed mac1: rejected at the same stage either way, and
        // by boringtun's responder that knows the initiator.
        let mut tampered = second.clone();
        tampered[bit / 8] ^= 1 << (bit % 8);
        let tampered = with_mac1(&keys, tampered);
        let result = check_cache_agrees(&keys, &known, &tampered)?;
        let mut server = responder_tunn(responder, public_of(initiator), psk);
        prop_assert_eq!(result.is_ok(), boringtun_responder_accepts(&mut server, &tampered));
        // Only the sender index is outside the AEADs.
        prop_assert_eq!(result.is_ok(), bit < 8 * 8);
    }

    #[test]
    fn cached_known_key_does_not_let_a_spoofer_claim_it(
        victim in key(),
        spoofer in key(),
        responder in key(),
        ephemeral in key(),
    ) {
        prop_assume!(public_of(victim) != public_of(spoofer));
        let keys = ResponderKeys::new(responder);
        let claimed = public_of(victim).to_bytes();
        let msg = crafted_initiation(&keys, claimed, spoofer, ephemeral);
        // The victim's secret is cached; the claim still fails at the timestamp.
        let result = check_cache_agrees(&keys, &[victim, spoofer], &msg)?;
        prop_assert_eq!(result, Err(IdentifyError::DecryptTimestamp));
        let mut server = responder_tunn(responder, DhPublic::from(claimed), None);
        prop_assert!(!boringtun_responder_accepts(&mut server, &msg));
    }
}

/// A first contact's secret travels from identify to the cache: the cache then answers
/// with the very secret a fresh X25519 gives, and the next identify of that key is the
/// same as without the cache (and reports nothing new to keep).
#[test]
fn remembering_an_identified_key_keeps_the_secret_identify_computed() {
    let responder = [7u8; 32];
    let initiator = [9u8; 32];
    let keys = ResponderKeys::new(responder);
    let cache = StaticStaticCache::new(&keys, 64);
    let msg = initiation(initiator, responder, None);

    let first = identify_keeping_secret(&keys, &cache, &msg).unwrap();
    assert!(
        first.fresh_secret().is_some(),
        "a cache miss hands its secret on"
    );
    assert!(cache.remember_identified(&keys, &first));
    let cached = cache.get(&keys, &first.initiator()).unwrap();
    let expected = keys
        .private
        .diffie_hellman(&DhPublic::from(first.initiator().0));
    assert_eq!(cached.as_bytes(), expected.as_bytes());

    let again =
        identify_keeping_secret(&keys, &cache, &initiation(initiator, responder, None)).unwrap();
    assert!(
        again.fresh_secret().is_none(),
        "a cache hit computes nothing new"
    );
    assert_eq!(again.initiator(), first.initiator());
}

/// A secret computed for one responder key is never filed in a cache built for another.
#[test]
fn a_secret_for_another_responder_key_is_not_filed() {
    let initiator = [9u8; 32];
    let keys_a = ResponderKeys::new([7u8; 32]);
    let keys_b = ResponderKeys::new([8u8; 32]);
    let cache_a = StaticStaticCache::new(&keys_a, 64);
    let cache_b = StaticStaticCache::new(&keys_b, 64);
    let msg = initiation(initiator, [7u8; 32], None);
    let identified = identify_keeping_secret(&keys_a, &cache_a, &msg).unwrap();
    // Filed under B's key it must not be: `remember` would compute B's own secret, but
    // B's cache is bound to keys_b and this call passes keys_a, so nothing is cached.
    assert!(!cache_b.remember_identified(&keys_a, &identified));
    assert!(cache_b.is_empty());
}

/// Plain `identify` (no cache) never carries a secret around.
#[test]
fn identify_without_a_cache_keeps_no_secret() {
    let keys = ResponderKeys::new([7u8; 32]);
    let msg = initiation([9u8; 32], [7u8; 32], None);
    let plain = identify_with(&keys, None, &msg, |_| false).unwrap();
    assert!(plain.fresh_secret().is_none());
}

/// `identify_unless_resent` asks about the initiation's own ephemeral key, only once mac1
/// passes, and otherwise identifies exactly as `identify_keeping_secret` does.
#[test]
fn a_resent_initiation_is_refused_after_mac1_and_before_any_dh() {
    let keys = ResponderKeys::new([7u8; 32]);
    let cache = StaticStaticCache::new(&keys, 64);
    let msg = initiation([9u8; 32], [7u8; 32], None);
    let ephemeral = ephemeral_of(&msg).unwrap();
    assert_eq!(&ephemeral[..], &msg[8..40]);

    let mut asked = None;
    let refused = identify_unless_resent(&keys, &cache, &msg, |e| {
        asked = Some(*e);
        true
    });
    assert_eq!(refused.unwrap_err(), IdentifyError::Resent);
    assert_eq!(asked, Some(ephemeral));

    let mut bad_mac1 = msg.clone();
    bad_mac1[MAC1.start] ^= 1;
    let mut called = false;
    let junk = identify_unless_resent(&keys, &cache, &bad_mac1, |_| {
        called = true;
        true
    });
    assert_eq!(junk.unwrap_err(), IdentifyError::Mac1);
    assert!(!called, "junk is never looked up");

    let fresh = identify_unless_resent(&keys, &cache, &msg, |_| false).unwrap();
    let plain = identify_keeping_secret(&keys, &cache, &msg).unwrap();
    assert_eq!(fresh.initiation, plain.initiation);
    assert_eq!(ephemeral_of(&msg[..100]), None);
}
