//! Identification against handshake initiations captured on the wire from stock
//! wireguard-go clients (`data/wireguard-go-initiations.json`, copied from the brief's
//! vectors): every valid one yields the right key and timestamp, every invalid one is
//! rejected at exactly the stage the vector names.

use jitwgd::identify::{identify, identify_cached, ResponderKeys, StaticStaticCache};
use jitwgd::peer::PublicKey;
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    responder_private_key: String,
    responder_public_key: String,
    valid: Vec<Valid>,
    invalid: Vec<Invalid>,
}

#[derive(Deserialize)]
struct Valid {
    packet: String,
    initiator_public_key: String,
    tai64n: String,
}

#[derive(Deserialize)]
struct Invalid {
    packet: String,
    why: String,
    stage: String,
    /// Some vectors are checked with another responder's key.
    responder_private_key: Option<String>,
}

fn vectors() -> (Vectors, ResponderKeys) {
    let text = include_str!("data/wireguard-go-initiations.json");
    let v: Vectors = serde_json::from_str(text).unwrap();
    let private = jitwgd::peer::decode_key_base64(&v.responder_private_key).unwrap();
    let keys = ResponderKeys::new(private);
    assert_eq!(
        keys.public_key(),
        PublicKey::from_base64(&v.responder_public_key).unwrap()
    );
    (v, keys)
}

#[test]
fn every_captured_initiation_identifies_its_sender_and_timestamp() {
    let (v, keys) = vectors();
    assert_eq!(v.valid.len(), 24);
    let mut previous = None;
    for (i, case) in v.valid.iter().enumerate() {
        let packet = hex::decode(&case.packet).unwrap();
        let got = identify(&keys, &packet).unwrap_or_else(|e| panic!("vector {i}: {e:?}"));
        assert_eq!(
            got.initiator,
            PublicKey::from_base64(&case.initiator_public_key).unwrap(),
            "vector {i}"
        );
        assert_eq!(hex::encode(got.timestamp.0), case.tai64n, "vector {i}");
        // Captured in sending order: timestamps increase.
        if let Some(prev) = previous {
            assert!(got.timestamp > prev, "vector {i}");
        }
        previous = Some(got.timestamp);
    }
}

/// The responder key an invalid case was made for, when it is not the file's own.
fn other_responder(case: &Invalid) -> Option<ResponderKeys> {
    case.responder_private_key
        .as_ref()
        .map(|k| ResponderKeys::new(jitwgd::peer::decode_key_base64(k).unwrap()))
}

#[test]
fn every_invalid_packet_is_rejected_at_its_stage() {
    let (v, keys) = vectors();
    assert!(!v.invalid.is_empty());
    for case in &v.invalid {
        let packet = hex::decode(&case.packet).unwrap();
        let other = other_responder(case);
        match identify(other.as_ref().unwrap_or(&keys), &packet) {
            Ok(_) => panic!("accepted an invalid packet ({})", case.why),
            Err(e) => assert_eq!(e.as_str(), case.stage, "{}", case.why),
        }
    }
}

#[test]
fn a_warm_static_static_cache_changes_no_result() {
    let (v, keys) = vectors();
    let cache = StaticStaticCache::new(&keys, 256);
    for case in &v.valid {
        let key = PublicKey::from_base64(&case.initiator_public_key).unwrap();
        assert!(cache.remember(&keys, key));
    }
    assert!(!cache.is_empty());
    for (i, case) in v.valid.iter().enumerate() {
        let packet = hex::decode(&case.packet).unwrap();
        let cached = identify_cached(&keys, &cache, &packet);
        assert_eq!(cached, identify(&keys, &packet), "vector {i}");
        let got = cached.unwrap_or_else(|e| panic!("vector {i}: {e:?}"));
        assert_eq!(hex::encode(got.timestamp.0), case.tai64n, "vector {i}");
    }
    for case in &v.invalid {
        let packet = hex::decode(&case.packet).unwrap();
        let other = other_responder(case);
        let responder = other.as_ref().unwrap_or(&keys);
        match identify_cached(responder, &cache, &packet) {
            Ok(_) => panic!("accepted an invalid packet ({})", case.why),
            Err(e) => assert_eq!(e.as_str(), case.stage, "{}", case.why),
        }
    }
}
