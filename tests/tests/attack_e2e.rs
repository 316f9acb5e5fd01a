//! End-to-end: a fresh-key flood at a real jitwgd while a stock wireguard-go client connects.
//! Every flood initiation passes mac1 and decrypts (the flooder holds the gateway's public key,
//! as every customer does) and carries a key nobody knows; the client's first initiation must
//! still be answered at once, so its first ping arrives before WireGuard's 5 s retry.
//! Needs root and wireguard-go/wg/ping/ip; in CI (`CI` set, not 0/false) a missing one fails.
//! Address slot 24 (links 198.19.48.0/30 and 198.19.49.0/30, flood sources 198.18.152.0/24).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitwg::client::attack::packets::FloodRecipe;
use jitwg::client::attack::{run_attack, AttackProgress, AttackSpec, Payload};
use jitwg::lab::RuntimeFlavor;
use jitwg::scenario::file::{FloodKeys, Mac1};
use jitwg_tests::prereq::TOOLS;
use jitwg_tests::{prerequisites_met, random_key, Gateway, GatewayOptions};

/// The flood: 3,000 fresh keys a second.
const RATE: f64 = 3000.0;
/// Long enough to cover the client's whole first attempt and its retry window.
const FLOOD: Duration = Duration::from_secs(8);
/// The client starts once the flood has run this long (jitwgd is under load by then).
const CLIENT_AFTER: Duration = Duration::from_millis(1500);
/// WireGuard's REKEY_TIMEOUT: a first ping later than this needed the client's own retry.
const RETRY: Duration = Duration::from_secs(5);
/// Flood sources: this many addresses of the slot's attack /24.
const SOURCES: u8 = 64;

#[test]
fn stock_client_first_ping_beats_its_retry_under_a_fresh_key_flood() {
    if !prerequisites_met(TOOLS).unwrap() {
        return;
    }
    let gw = Gateway::start(GatewayOptions::new(24)).unwrap();
    let packets = (RATE * FLOOD.as_secs_f64()) as u32;
    let recipe = FloodRecipe {
        keys: FloodKeys::Fresh,
        mac1: Mac1::Valid,
        key_pool: &[],
        gateway_public_key: gw.public_key(),
        seed: 24,
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let built = recipe.build(packets, threads).unwrap();
    let net = gw.plan().attack_sources.network().octets();
    let spec = AttackSpec {
        name: "fresh-key flood".into(),
        start: Duration::ZERO,
        packets,
        packets_per_second: RATE,
        sources: (1..=SOURCES)
            .map(|h| IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], h)))
            .collect(),
        gateway_v4: gw.endpoint(),
        gateway_v6: None,
        payload: Payload::Built(Arc::new(built.packets)),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AttackProgress::default());
    let (halt, counter) = (Arc::clone(&stop), Arc::clone(&progress));
    let origin = Instant::now();
    let flood = gw
        .topology()
        .client
        .spawn_runtime_thread("flood", RuntimeFlavor::CurrentThread, move || async move {
            run_attack(&spec, origin, &halt, &counter)
        })
        .unwrap();
    std::thread::sleep(CLIENT_AFTER);

    let client = gw.stock_client(0, random_key()).unwrap();
    gw.register(&client.public_key(), &["100.64.0.2/32"])
        .unwrap();
    let sent_before = progress.sent.load(Ordering::Relaxed);
    let (ok, took) = client.ping(gw.plan().tunnel_gateway, 10).unwrap();
    let sent_during = progress.sent.load(Ordering::Relaxed) - sent_before;

    stop.store(true, Ordering::Relaxed);
    let outcome = flood.join().unwrap().unwrap().unwrap();
    let metrics = gw.scrape().unwrap();
    let drops = metrics.by_label("jitwgd_initiations_dropped_total", "reason");
    eprintln!(
        "first ping {ok} after {took:?}; flood sent {} ({sent_during} while the client \
         connected) at {:.0}/s, {} send errors; API calls {}; jitwgd drops {drops:?}",
        outcome.sent,
        outcome.rate().unwrap_or(0.0),
        outcome.send_errors,
        gw.api_calls_total(),
    );
    // The flood really ran, at its rate, all through the client's first attempt: without
    // this the test could pass against an idle gateway.
    assert!(
        outcome.rate().is_some_and(|r| r > RATE * 0.8),
        "the flood ran at {:?}/s, not {RATE}/s",
        outcome.rate()
    );
    assert!(
        sent_during as f64 >= RATE * took.min(RETRY).as_secs_f64() * 0.5,
        "the flood was not running while the client connected ({sent_during} packets)"
    );
    assert!(ok, "the stock client never got a ping through ({took:?})");
    assert!(
        took < RETRY,
        "first ping took {took:?}: the client's first initiation was lost in the flood and it \
         needed its own 5 s retry; daemon log:\n{}",
        gw.daemon_log_tail(4000)
    );
    assert_eq!(gw.api_calls(&client.public_key()), 1);
}
