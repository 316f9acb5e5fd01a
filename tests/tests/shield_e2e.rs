//! End-to-end: the kernel shield. Flooders inside one /24 get penalised by admission
//! control, and from then on their handshake initiations are dropped at tc ingress of the
//! capture interface: they no longer reach wireguard-go's socket (the gateway namespace's
//! UDP InDatagrams stand still while the flood goes on), yet jitwgd's AF_PACKET capture
//! still sees every one of them (its `address_penalised` drops keep counting, so the
//! penalties that drive the filters stay fresh). The gateway initiates (the fixture's
//! default), so the whole penalised /24 is blocked, with a pass rule for each installed
//! endpoint inside it: an installed peer whose own address is judged too (a 404 from a
//! neighbour key behind the same address) still handshakes, while the same kind of peer
//! roaming to a flooder's address does not. A kill -9 leaves the filter; the next start
//! replaces it.
//! Needs root and wireguard-go/wg/ip; in CI (`CI` set, not 0/false) a missing one fails.
//! Address slot 26 (links 198.19.52.0/30 and 198.19.53.0/30, clients 198.18.26.0/24).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::process::Command;

use jitwg_tests::prereq::TOOLS;
use jitwg_tests::{prerequisites_met, random_key, Gateway, GatewayOptions, Knocker};

/// Flood addresses: client sources 10..26 of the slot's /24.
const FLOODERS: u32 = 16;
/// Each flood address resends its initiation this often (100/s each, 1,600/s in all).
const FLOOD_EVERY: Duration = Duration::from_millis(10);

/// UDP datagrams delivered to sockets in the namespace of process `pid` (its
/// /proc/PID/net/snmp `Udp: InDatagrams`): in the gateway namespace only wireguard-go
/// has a UDP socket on the underlay.
fn udp_in_datagrams(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).unwrap();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let column = names
        .split_whitespace()
        .position(|n| n == "InDatagrams")
        .unwrap();
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

/// The shield's tc filters on the gateway's capture interface (`tc filter show`,
/// priority 0xc7a0 = 51104 for IPv4).
fn shield_filter_present(gw: &Gateway) -> bool {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            gw.topology().gateway.name(),
            "tc",
            "filter",
            "show",
        ])
        .args(["dev", &gw.topology().names.veth_gw_to_client(), "ingress"])
        .output()
        .unwrap();
    assert!(out.status.success(), "tc filter show failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).contains("pref 51104 bpf")
}

fn address_penalised(gw: &Gateway) -> u64 {
    gw.scrape()
        .unwrap()
        .by_label("jitwgd_initiations_dropped_total", "reason")
        .get("address_penalised")
        .copied()
        .unwrap_or(0)
}

#[test]
fn judged_sources_are_dropped_in_the_kernel_and_installed_peers_still_get_in() {
    if !prerequisites_met(TOOLS).unwrap() {
        return;
    }
    let mut gw = Gateway::start(GatewayOptions::new(26)).unwrap();
    let pid = gw.daemon_pid().expect("jitwgd runs");

    // An installed peer at source 0, and one at source 1 that will try to roam to a
    // flooder's address.
    let installed_key = random_key();
    let mut installed = gw.knocker(0, installed_key).unwrap();
    gw.register(&installed.public_key(), &["100.64.0.2/32"])
        .unwrap();
    installed.connect(Duration::from_secs(3)).unwrap();
    let roaming_key = random_key();
    let mut roaming = gw.knocker(1, roaming_key).unwrap();
    gw.register(&roaming.public_key(), &["100.64.0.3/32"])
        .unwrap();
    roaming.connect(Duration::from_secs(3)).unwrap();

    // A key nobody knows from the installed peer's own address: a 404, an offence of
    // the address (a neighbour behind the same NAT, say).
    let mut neighbour = gw.knocker(0, random_key()).unwrap();
    neighbour.knock().unwrap();

    // The flood: each address resends one initiation of an unregistered key.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flooders: Vec<(Knocker, Vec<u8>)> = (0..FLOODERS)
        .map(|i| {
            let mut k = gw.knocker(10 + i, random_key()).unwrap();
            let init = k.initiation().unwrap();
            (k, init)
        })
        .collect();
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (k, init) in &mut flooders {
                    if k.send(init).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(FLOOD_EVERY);
            }
        })
    };

    // Judged within a second or two (8 404s penalise the /24, the knocks that follow
    // penalise each address); the shield follows within its 250 ms tick.
    std::thread::sleep(Duration::from_millis(2500));
    let (udp0, drops0, sent0, t0) = (
        udp_in_datagrams(pid),
        address_penalised(&gw),
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (udp1, drops1, sent1) = (
        udp_in_datagrams(pid),
        address_penalised(&gw),
        sent.load(Ordering::Relaxed),
    );
    let window = t0.elapsed();

    // With the flood still on: the installed peer at the judged address gets in, a peer
    // roaming onto a flooder's address does not.
    let mut again = Knocker::new(
        &gw.topology().client,
        gw.plan().client_source(0),
        gw.endpoint(),
        gw.public_key(),
        installed_key,
        100,
    )
    .unwrap();
    let rekey = again.connect(Duration::from_secs(3));
    let mut roamed = gw.knocker(10, roaming_key).unwrap();
    let roam = roamed.connect(Duration::from_secs(2));
    // A daemon killed now leaves its program behind; the next start replaces it (and,
    // nothing being judged yet, removes it).
    gw.kill9_daemon().unwrap();
    let stale = shield_filter_present(&gw);
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    gw.start_daemon().unwrap();
    let after_restart = shield_filter_present(&gw);

    let flood_in_window = sent1 - sent0;
    let reached = udp1 - udp0;
    let seen = drops1 - drops0;
    eprintln!(
        "in {window:?}: flood sent {flood_in_window}, UDP datagrams delivered in the gateway \
         namespace {reached}, jitwgd address_penalised drops {seen}; installed peer at a \
         judged address: {rekey:?}; roaming onto a flooder's address: {roam:?}"
    );
    assert!(
        flood_in_window > 1000,
        "the flood did not run ({flood_in_window})"
    );
    assert!(
        reached * 20 < flood_in_window,
        "{reached} of {flood_in_window} flood initiations reached wireguard-go's socket; \
         daemon log:\n{}",
        gw.daemon_log_tail(3000)
    );
    assert!(
        seen * 2 > flood_in_window,
        "jitwgd's capture saw only {seen} of {flood_in_window} dropped initiations"
    );
    assert!(
        rekey.is_ok(),
        "the installed peer at a judged address could not handshake: {rekey:?}"
    );
    assert!(
        roam.is_err(),
        "a handshake from a flooder's address got through: the block is not in force"
    );
    assert!(stale, "no shield filter found after the kill");
    assert!(
        !after_restart,
        "the restarted daemon left a killed run's filter in place"
    );
}
