//! Identify throughput next to raw X25519 throughput, measured in the same run: a
//! first-contact key costs two Diffie-Hellman operations (about half the X25519 rate),
//! a known key whose static-static secret is cached costs one (the goal is at least
//! 0.8x the X25519 rate), and a mac1 rejection (no DH at all) far less. After the run
//! it prints the same-run ratios from criterion's medians, and a paired ratio that
//! alternates short blocks of DH and known-key identify so that load from other work on
//! a shared machine hits both sides alike (criterion measures them minutes apart).
//! Two more: what the identify workers add to every identification (a miss in a full
//! `ResentMemory` and the insert after it), and what an initiation sent again costs
//! instead of its DH.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use criterion::{black_box, Criterion};
use jitwgd::identify::{
    ephemeral_of, identify, identify_cached, identify_unless_resent, ResponderKeys,
    StaticStaticCache,
};
use jitwgd::replay::ResentMemory;
use x25519_dalek::{PublicKey, StaticSecret};

const GROUP: &str = "identify";
const RAW_DH: &str = "x25519_dh";
const COLD: &str = "identify_first_contact";
const WARM: &str = "identify_known_key";
const MAC1: &str = "identify_bad_mac1";
const RESENT_BOOKKEEPING: &str = "resent_memory_miss_and_insert";
const RESENT: &str = "identify_sent_again";

/// The identify workers' `ResentMemory` size (`config::defaults::RESENT_MEMORY`).
const RESENT_CAPACITY: usize = 16_384;

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

    let initiator = identify(&keys, &packet)
        .expect("vector identifies")
        .initiator;
    // Cold: the cache is consulted but does not hold this key (a first contact).
    let empty = StaticStaticCache::new(&keys, 4096);
    // Warm: the key was remembered after an earlier initiation was found known.
    let warm = StaticStaticCache::new(&keys, 4096);
    assert!(warm.remember(&keys, initiator));

    let mut group = c.benchmark_group(GROUP);
    group.bench_function(RAW_DH, |b| {
        b.iter(|| black_box(secret.diffie_hellman(black_box(&public))))
    });
    group.bench_function(COLD, |b| {
        b.iter(|| black_box(identify_cached(&keys, &empty, black_box(&packet))))
    });
    group.bench_function(WARM, |b| {
        b.iter(|| black_box(identify_cached(&keys, &warm, black_box(&packet))))
    });
    group.bench_function(MAC1, |b| {
        b.iter(|| black_box(identify_cached(&keys, &warm, black_box(&bad_mac))))
    });
    // A full memory: each new ephemeral misses, is inserted and evicts the oldest.
    let mut memory = ResentMemory::new(RESENT_CAPACITY);
    let mut n = 0u64;
    let mut next = move || {
        n += 1;
        let mut e = [0u8; 32];
        e[..8].copy_from_slice(&n.to_le_bytes());
        e
    };
    for _ in 0..RESENT_CAPACITY {
        memory.identified(next());
    }
    group.bench_function(RESENT_BOOKKEEPING, |b| {
        b.iter(|| {
            let e = next();
            black_box(memory.resent(black_box(&e)));
            memory.identified(e);
        })
    });
    let mut seen = ResentMemory::new(RESENT_CAPACITY);
    seen.identified(ephemeral_of(&packet).expect("an initiation"));
    group.bench_function(RESENT, |b| {
        b.iter(|| {
            black_box(identify_unless_resent(
                &keys,
                &warm,
                black_box(&packet),
                |e| seen.resent(e),
            ))
        })
    });
    group.finish();
}

/// Where criterion writes its estimates: `$CRITERION_HOME`, else `criterion/` in the
/// target directory this binary was built into (target/<profile>/deps/<bench>).
fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median (ns) criterion recorded for `name`, if it was measured in this run.
fn median_ns(home: &std::path::Path, name: &str, since: SystemTime) -> Option<f64> {
    let path = home.join(GROUP).join(name).join("new/estimates.json");
    let fresh = std::fs::metadata(&path).ok()?.modified().ok()? >= since;
    if !fresh {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn report_ratios(since: SystemTime) {
    let Some(home) = criterion_home() else {
        println!("ratios: criterion output directory not found");
        return;
    };
    let median = |name| median_ns(&home, name, since);
    let Some(dh) = median(RAW_DH) else {
        println!("ratios: {RAW_DH} was not measured in this run");
        return;
    };
    println!("\nsame-run medians and rates relative to one raw X25519 DH:");
    println!("  {RAW_DH:<30} {:>10.2} µs  1.00x", dh / 1000.0);
    for name in [COLD, WARM, MAC1, RESENT_BOOKKEEPING, RESENT] {
        if let Some(t) = median(name) {
            // Rate ratio: (1/t) / (1/dh).
            println!("  {name:<30} {:>10.2} µs  {:.2}x", t / 1000.0, dh / t);
        }
    }
}

/// Median over `rounds` of (time of `block` raw DHs) / (time of `block` known-key
/// identifies): the known-key identify rate relative to the raw DH rate.
fn paired_ratio(rounds: usize, block: usize) -> f64 {
    let (keys, packet) = vector();
    let initiator = identify(&keys, &packet)
        .expect("vector identifies")
        .initiator;
    let warm = StaticStaticCache::new(&keys, 64);
    assert!(warm.remember(&keys, initiator));
    let secret = StaticSecret::from([7u8; 32]);
    let public = PublicKey::from(&StaticSecret::from([9u8; 32]));
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..block {
                black_box(secret.diffie_hellman(black_box(&public)));
            }
            let dh = start.elapsed().as_secs_f64();
            let start = Instant::now();
            for _ in 0..block {
                let _ = black_box(identify_cached(&keys, &warm, black_box(&packet)));
            }
            dh / start.elapsed().as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    report_ratios(started);
    // Only on a real benchmark run (not `cargo test --benches`' quick check).
    if std::env::args().any(|a| a == "--bench") {
        let rounds = 101;
        let ratio = paired_ratio(rounds, 50);
        println!("  paired ({rounds} alternating blocks of 50): {WARM} rate / {RAW_DH} rate = {ratio:.2}x (median)");
    }
}
