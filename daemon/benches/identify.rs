//! Identify throughput next to raw X25519 throughput, measured in the same run: the
//! first Noise leg costs two Diffie-Hellman operations, so identify should run at
//! about half the X25519 rate, and a mac1 rejection (no DH at all) far faster.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jitwgd::identify::{identify, ResponderKeys};
use x25519_dalek::{PublicKey, StaticSecret};

fn vector() -> (ResponderKeys, Vec<u8>) {
    let text = include_str!("../tests/data/wireguard-go-initiations.json");
    let v: serde_json::Value = serde_json::from_str(text).expect("vector file is JSON");
    let private = v["responder_private_key"].as_str().expect("responder key");
    let private = jitwgd::peer::decode_key_base64(private).expect("responder key decodes");
    let packet = v["valid"][0]["packet"].as_str().expect("a valid packet");
    (
        ResponderKeys::new(private),
        hex::decode(packet).expect("hex packet"),
    )
}

fn bench(c: &mut Criterion) {
    let (keys, packet) = vector();
    let mut bad_mac = packet.clone();
    bad_mac[120] ^= 1;
    let secret = StaticSecret::from([7u8; 32]);
    let public = PublicKey::from(&StaticSecret::from([9u8; 32]));

    let mut group = c.benchmark_group("identify");
    group.bench_function("x25519_dh", |b| {
        b.iter(|| black_box(secret.diffie_hellman(black_box(&public))))
    });
    group.bench_function("identify_valid", |b| {
        b.iter(|| black_box(identify(&keys, black_box(&packet))))
    });
    group.bench_function("identify_bad_mac1", |b| {
        b.iter(|| black_box(identify(&keys, black_box(&bad_mac))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
