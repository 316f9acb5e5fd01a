//! End-to-end tests of `jitwgd`: the real daemon binary against a real wireguard-go data
//! plane, the testbed control plane and real or boringtun clients, in private network
//! namespaces. Each test builds its own `Gateway` fixture, so they run in parallel.
//! Needs root and wireguard-go/wg/ping/ip; in CI (`CI` set, not 0/false) a missing one fails the test.

use std::time::Duration;

use jitwg::scenario::file::Switch;
use jitwg_tests::prereq::TOOLS;
use jitwg_tests::{
    prerequisites_met, random_key, wait_for, Gateway, GatewayOptions, Knocker, StockClient,
};

/// The fixture, or `None` when prerequisites are missing outside CI (skipped loudly).
fn gateway(opts: GatewayOptions, tools: &[&str]) -> Option<Gateway> {
    if !prerequisites_met(tools).unwrap() {
        return None;
    }
    Some(Gateway::start(opts).unwrap())
}

/// A stock client registered as 100.64.0.2/32, and how long its first ping through the
/// tunnel took (it must get through).
fn first_ping(gw: &Gateway) -> (StockClient, Duration) {
    let client = gw.stock_client(0, random_key()).unwrap();
    gw.register(&client.public_key(), &["100.64.0.2/32"])
        .unwrap();
    let (ok, took) = client.ping(gw.plan().tunnel_gateway, 10).unwrap();
    assert!(ok, "first ping through the tunnel failed (took {took:?})");
    (client, took)
}

/// A boringtun client registered as 100.64.0.2/32, and its key.
fn registered_knocker(gw: &Gateway) -> (Knocker, [u8; 32]) {
    let client = gw.knocker(0, random_key()).unwrap();
    let key = client.public_key();
    gw.register(&key, &["100.64.0.2/32"]).unwrap();
    (client, key)
}

/// A boringtun client registered as 100.64.0.2/32 that completed a handshake, and its key.
fn connected_knocker(gw: &Gateway) -> (Knocker, [u8; 32]) {
    let (mut client, key) = registered_knocker(gw);
    client.connect(Duration::from_secs(10)).unwrap();
    (client, key)
}

const INSTALLS: &str = "jitwgd_installs_total";

#[test]
fn stock_client_connects_on_first_attempt_with_initiate_on() {
    let Some(gw) = gateway(
        GatewayOptions::new(1).daemon(|d| d.initiate = Some(Switch::On)),
        TOOLS,
    ) else {
        return;
    };
    let (client, took) = first_ping(&gw);
    assert!(
        took < Duration::from_secs(4),
        "first ping took {took:?}: the gateway did not handshake back at once"
    );
    let m = gw.scrape().unwrap();
    assert_eq!(m.counter(INSTALLS), 1, "{}", m.text());
    assert_eq!(m.counter("jitwgd_role_inversions_total"), 1, "{}", m.text());
    // The stages that ran on one thread were charged their thread's CPU: an identify is at
    // least one X25519, an install a UAPI round trip, neither free.
    for stage in ["identify", "install"] {
        let cpu = m.value("jitwgd_stage_cpu_seconds_total", &[("stage", stage)]);
        assert!(cpu > 0.0, "{stage}: {cpu}\n{}", m.text());
    }
    assert_eq!(gw.api_calls(&client.public_key()), 1);
    let peer = gw
        .peer(&client.public_key())
        .unwrap()
        .expect("client installed");
    assert!(peer.last_handshake.is_some());
}

#[test]
fn initiate_off_needs_the_5s_retry() {
    let Some(gw) = gateway(
        GatewayOptions::new(2).daemon(|d| d.initiate = Some(Switch::Off)),
        TOOLS,
    ) else {
        return;
    };
    let (_client, took) = first_ping(&gw);
    assert!(
        took >= Duration::from_millis(4500),
        "first ping took only {took:?}: without initiate the client must wait for REKEY_TIMEOUT"
    );
    let m = gw.scrape().unwrap();
    assert_eq!(m.counter(INSTALLS), 1, "{}", m.text());
    assert_eq!(m.counter("jitwgd_role_inversions_total"), 0, "{}", m.text());
}

#[test]
fn unknown_key_gets_one_api_call_per_negative_ttl() {
    let Some(gw) = gateway(
        GatewayOptions::new(3).daemon(|d| d.negative_ttl = Some(Duration::from_secs(3))),
        TOOLS,
    ) else {
        return;
    };
    let mut client = gw.knocker(0, random_key()).unwrap();
    let key = client.public_key();
    let knock_many = |client: &mut jitwg_tests::Knocker, n: u64| {
        for _ in 0..n {
            client.knock().unwrap();
            // TAI64N advances every ~16.8 ms; 30 ms makes every initiation strictly newer.
            std::thread::sleep(Duration::from_millis(30));
        }
    };
    let captured = |m: &jitwg_tests::Scrape| m.counter("jitwgd_initiations_captured_total");
    let started = std::time::Instant::now();
    knock_many(&mut client, 20);
    // Wait until the daemon has processed all of them.
    let m = wait_for(Duration::from_secs(5), || {
        let m = gw.scrape().ok()?;
        (captured(&m) >= 20).then_some(m)
    })
    .unwrap_or_else(|| panic!("daemon did not capture 20 initiations"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        gw.api_calls(&key),
        1,
        "an unknown key must cost exactly one control-plane request per negative TTL"
    );
    assert!(gw.peers().unwrap().is_empty(), "unknown key was installed");
    assert_eq!(m.counter(INSTALLS), 0);

    // Once the negative entry expired, the key is asked about once more, and only once.
    if let Some(rest) = Duration::from_millis(3500).checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    knock_many(&mut client, 10);
    let asked_again = wait_for(Duration::from_secs(5), || {
        (gw.api_calls(&key) >= 2).then_some(())
    });
    assert!(asked_again.is_some(), "negative entry never expired");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        gw.api_calls(&key),
        2,
        "more than one request after the negative TTL"
    );
    assert!(gw.peers().unwrap().is_empty(), "unknown key was installed");
    // jitwgd counts the same requests the control plane saw arrive.
    let m = gw.scrape().unwrap();
    let not_found = m.value("jitwgd_api_requests_total", &[("outcome", "not_found")]);
    assert_eq!(not_found as u64, gw.api_calls_total(), "{}", m.text());
}

#[test]
fn replayed_initiation_from_another_source_changes_nothing() {
    let Some(gw) = gateway(GatewayOptions::new(4), TOOLS) else {
        return;
    };
    let (mut client, key) = registered_knocker(&gw);
    let first = client.knock().unwrap();
    assert!(
        gw.wait_installed(&key, true, Duration::from_secs(5)),
        "registered client was not installed"
    );
    let peer = gw.peer(&key).unwrap().expect("installed");
    assert_eq!(peer.endpoint, Some(client.local_addr().unwrap()));
    assert_eq!(gw.api_calls(&key), 1);

    gw.remove_peer(&key).unwrap();
    assert!(gw.wait_installed(&key, false, Duration::from_secs(2)));
    let before = gw.scrape().unwrap();

    // The very same bytes, from another source address.
    let attacker = gw.knocker(7, random_key()).unwrap();
    attacker.send(&first).unwrap();
    let after = wait_for(Duration::from_secs(5), || {
        let m = gw.scrape().ok()?;
        (m.counter("jitwgd_initiations_captured_total")
            > before.counter("jitwgd_initiations_captured_total"))
        .then_some(m)
    })
    .unwrap_or_else(|| panic!("daemon did not capture the replayed initiation"));
    std::thread::sleep(Duration::from_millis(1000));
    let after = gw.scrape().unwrap_or(after);
    assert_eq!(gw.api_calls(&key), 1, "a replay caused an API call");
    assert!(
        gw.peer(&key).unwrap().is_none(),
        "a replay reinstalled the peer"
    );
    assert_eq!(after.counter(INSTALLS), 1);
    assert!(
        after.counter("jitwgd_replays_ignored_total")
            > before.counter("jitwgd_replays_ignored_total"),
        "{}",
        after.text()
    );
}

#[test]
fn replayed_initiation_while_installed_keeps_the_endpoint() {
    let Some(gw) = gateway(GatewayOptions::new(5), TOOLS) else {
        return;
    };
    let (mut client, key) = registered_knocker(&gw);
    let first = client.knock().unwrap();
    assert!(gw.wait_installed(&key, true, Duration::from_secs(5)));
    // Complete a handshake (a newer initiation reaches wireguard-go itself).
    std::thread::sleep(Duration::from_millis(40));
    client.connect(Duration::from_secs(10)).unwrap();
    let home = client.local_addr().unwrap();
    assert_eq!(
        gw.peer(&key).unwrap().expect("installed").endpoint,
        Some(home)
    );

    let attacker = gw.knocker(9, random_key()).unwrap();
    attacker.send(&first).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let peer = gw.peer(&key).unwrap().expect("still installed");
    assert_eq!(peer.endpoint, Some(home), "a replay moved the endpoint");
    assert_eq!(gw.api_calls(&key), 1);
    assert_eq!(gw.scrape().unwrap().counter(INSTALLS), 1);
}

#[test]
fn random_garbage_causes_no_api_calls_or_installs() {
    let Some(gw) = gateway(GatewayOptions::new(6), TOOLS) else {
        return;
    };
    let senders: Vec<_> = (0..10)
        .map(|i| gw.knocker(i, random_key()).unwrap())
        .collect();
    const PACKETS: u64 = 10_000;
    for i in 0..PACKETS {
        let mut packet = [0u8; 148];
        let body: [u8; 144] = std::array::from_fn(|_| rand::random());
        packet[0] = 1;
        packet[4..].copy_from_slice(&body);
        senders[(i % 10) as usize].send(&packet).unwrap();
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // Wait until the counter settles.
    let mut last = 0;
    let rejected = wait_for(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = gw.scrape().ok()?.counter("jitwgd_mac1_rejected_total");
        let settled = now == last && now > 0;
        last = now;
        (settled || now >= PACKETS).then_some(now)
    })
    .unwrap_or(last);
    let m = gw.scrape().unwrap();
    assert!(
        rejected >= PACKETS / 2,
        "mac1 rejections: {rejected} of {PACKETS} garbage packets\n{}",
        m.text()
    );
    assert_eq!(
        gw.api_calls_total(),
        0,
        "garbage caused control-plane requests"
    );
    assert_eq!(m.counter(INSTALLS), 0);
    assert!(gw.peers().unwrap().is_empty());
}

#[test]
fn revoked_key_is_removed_and_not_reinstalled() {
    let opts = GatewayOptions::new(7)
        .daemon(|d| d.positive_ttl = Some(Duration::from_secs(1)))
        .daemon(|d| d.api_min_interval = Some(Duration::from_millis(100)));
    let Some(gw) = gateway(opts, TOOLS) else {
        return;
    };
    let (mut client, key) = connected_knocker(&gw);
    assert!(gw.wait_installed(&key, true, Duration::from_secs(2)));

    assert!(gw.revoke(&key).unwrap());
    assert!(
        gw.wait_installed(&key, false, Duration::from_secs(15)),
        "revoked peer still installed"
    );
    let m = gw.scrape().unwrap();
    assert!(m.counter("jitwgd_revocations_total") >= 1, "{}", m.text());

    client.knock().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        gw.peer(&key).unwrap().is_none(),
        "revoked key was reinstalled"
    );
    assert_eq!(gw.scrape().unwrap().counter(INSTALLS), 1);
}

#[test]
fn allowed_ip_outside_prefix_is_refused() {
    let opts = GatewayOptions::new(8);
    let Some(gw) = gateway(opts, TOOLS) else {
        return;
    };
    let mut client = gw.knocker(0, random_key()).unwrap();
    let key = client.public_key();
    gw.register(&key, &["100.128.0.1/32"]).unwrap();
    client.knock().unwrap();
    let refused = wait_for(Duration::from_secs(5), || {
        let m = gw.scrape().ok()?;
        (m.value("jitwgd_lookups_total", &[("outcome", "refused")]) >= 1.0).then_some(())
    });
    assert!(
        refused.is_some(),
        "refusal not counted\n{}",
        gw.scrape().unwrap().text()
    );
    assert!(
        gw.peers().unwrap().is_empty(),
        "peer outside the prefix installed"
    );
    assert_eq!(gw.scrape().unwrap().counter(INSTALLS), 0);
}

#[test]
fn idle_peer_is_evicted_and_returns() {
    let opts = GatewayOptions::new(9)
        .daemon(|d| d.evict_after = Some(Duration::from_secs(2)))
        .daemon(|d| d.sweep_every = Some(Duration::from_secs(1)));
    let Some(gw) = gateway(opts, TOOLS) else {
        return;
    };
    let (mut client, key) = connected_knocker(&gw);
    let peer = gw.peer(&key).unwrap().expect("installed");
    assert!(peer.last_handshake.is_some());
    let cleared = wait_for(Duration::from_secs(2), || {
        let p = gw.peer(&key).ok()??;
        p.persistent_keepalive.is_none().then_some(())
    });
    assert!(
        cleared.is_some(),
        "persistent keepalive set at install was never cleared: the peer can never go idle"
    );

    assert!(
        gw.wait_installed(&key, false, Duration::from_secs(10)),
        "idle peer was not evicted"
    );
    assert!(gw.scrape().unwrap().counter("jitwgd_evictions_total") >= 1);

    // It comes back: a fresh knock reinstalls it (from the cache, no new API call).
    std::thread::sleep(Duration::from_millis(40));
    client.connect(Duration::from_secs(10)).unwrap();
    assert!(gw.wait_installed(&key, true, Duration::from_secs(2)));
    assert_eq!(gw.scrape().unwrap().counter(INSTALLS), 2);
    assert_eq!(
        gw.api_calls(&key),
        1,
        "returning peer was not served from the cache"
    );
}

/// Negative-cache rows in the daemon's database, read beside the running daemon (WAL).
fn negative_rows(db: &std::path::Path) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row("SELECT count(*) FROM negative", [], |r| r.get(0))
        .ok()
}

#[test]
fn kill9_mid_load_keeps_sqlite_consistent() {
    let Some(mut gw) = gateway(GatewayOptions::new(10), TOOLS) else {
        return;
    };
    let mut knockers: Vec<_> = (0..40)
        .map(|i| gw.knocker(i, random_key()).unwrap())
        .collect();
    for (i, k) in knockers.iter().enumerate() {
        let ip = format!("100.64.1.{}/32", i + 1);
        gw.register(&k.public_key(), &[&ip]).unwrap();
    }
    // Unregistered keys too, with real initiations that pass identification, so the
    // control plane answers 404 and negative entries are being written at the kill.
    let mut strangers: Vec<_> = (40..60)
        .map(|i| gw.knocker(i, random_key()).unwrap())
        .collect();
    let db_path = gw.db_path();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let negatives_before_kill = std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for k in knockers.iter_mut() {
                    let _ = k.knock();
                }
                for k in strangers.iter_mut() {
                    let _ = k.knock();
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let negatives = wait_for(Duration::from_secs(10), || {
            negative_rows(&db_path).filter(|&n| n > 0)
        });
        std::thread::sleep(Duration::from_millis(300));
        gw.kill9_daemon().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        negatives
    });
    assert!(!gw.daemon_running().unwrap());
    assert!(
        negatives_before_kill.is_some(),
        "no negative-cache rows before the kill: the unregistered keys never reached the control plane"
    );

    let db = rusqlite::Connection::open(gw.db_path()).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let negatives: u64 = db
        .query_row("SELECT count(*) FROM negative", [], |r| r.get(0))
        .unwrap();
    assert!(negatives > 0, "negative rows lost across the kill");
    drop(db);

    gw.start_daemon().unwrap();
    let mut late = gw.knocker(100, random_key()).unwrap();
    gw.register(&late.public_key(), &["100.64.2.1/32"]).unwrap();
    late.connect(Duration::from_secs(10)).unwrap();
    assert!(gw.wait_installed(&late.public_key(), true, Duration::from_secs(2)));
}

#[test]
fn push_mode_installs_published_peer() {
    let mut tools = TOOLS.to_vec();
    tools.push("nats-server");
    let Some(gw) = gateway(GatewayOptions::new(11).push(), &tools) else {
        return;
    };
    let key = jitwg_tests::public_key(&random_key());
    gw.register(&key, &["100.64.0.9/32"]).unwrap();
    assert!(
        gw.wait_installed(&key, true, Duration::from_secs(10)),
        "published peer was not installed"
    );
    assert_eq!(gw.api_calls_total(), 0, "push mode must not call the API");
    let m = gw.scrape().unwrap();
    assert!(
        m.value("jitwgd_push_messages_total", &[("outcome", "installed")]) >= 1.0,
        "{}",
        m.text()
    );
}

/// The legacy design's flaw, pinned: NATS core is at-most-once, so a peer published
/// while the gateway's daemon is down is lost for good, although the control plane
/// holds it and the client holds a valid config. (The JIT path has no such window.)
#[test]
fn push_mode_loses_peers_published_while_the_daemon_is_down() {
    let mut tools = TOOLS.to_vec();
    tools.push("nats-server");
    let Some(mut gw) = gateway(GatewayOptions::new(12).push(), &tools) else {
        return;
    };
    gw.kill9_daemon().unwrap();
    let missed = jitwg_tests::public_key(&random_key());
    gw.register(&missed, &["100.64.0.10/32"]).unwrap();
    gw.start_daemon().unwrap();
    // Proof the restarted daemon is subscribed again: a peer published now arrives.
    let later = jitwg_tests::public_key(&random_key());
    gw.register(&later, &["100.64.0.11/32"]).unwrap();
    assert!(
        gw.wait_installed(&later, true, Duration::from_secs(10)),
        "peer published after the restart was not installed:\n{}",
        gw.daemon_log_tail(20)
    );
    // ...while the one published during the downtime never will be.
    assert!(
        !gw.wait_installed(&missed, true, Duration::from_secs(2)),
        "a peer published while the daemon was down was installed: NATS core should have dropped it"
    );
    eprintln!("as in production: the peer published while the daemon was down is lost");
}
