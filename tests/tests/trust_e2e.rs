//! End-to-end tests of what jitwgd trusts: the control-plane channel (HTTPS with a CA made
//! for the test, a bearer token; wrong credentials fail clearly) and the answers it gets
//! (host routes only, no address taken from another installed peer unless the control
//! plane no longer gives it to that peer). Address slots 60–63 are this file's.
//! Needs root and wireguard-go/wg/ip; in CI a missing one fails the test.

use std::time::Duration;

use jitwg_tests::prereq::TOOLS;
use jitwg_tests::{
    prerequisites_met, random_key, wait_for, ChannelTamper, Gateway, GatewayOptions,
};

fn gateway(opts: GatewayOptions) -> Option<Gateway> {
    if !prerequisites_met(TOOLS).unwrap() {
        return None;
    }
    Some(Gateway::start(opts).unwrap())
}

const TOKEN: &str = "e2e-bearer-token-4f1c";

fn api_requests(gw: &Gateway, outcome: &str) -> u64 {
    gw.scrape()
        .unwrap()
        .by_label("jitwgd_api_requests_total", "outcome")
        .get(outcome)
        .copied()
        .unwrap_or(0)
}

#[test]
fn a_client_connects_through_a_tls_control_plane_with_a_token() {
    let Some(gw) = gateway(GatewayOptions::new(60).tls_with_token(TOKEN)) else {
        return;
    };
    let mut client = gw.knocker(0, random_key()).unwrap();
    let key = client.public_key();
    gw.register(&key, &["100.64.0.2/32"]).unwrap();
    let took = client.connect(Duration::from_secs(10)).unwrap();
    assert!(took < Duration::from_secs(4), "handshake took {took:?}");
    assert_eq!(gw.api_calls(&key), 1);
    assert_eq!(api_requests(&gw, "ok"), 1);
    assert_eq!(api_requests(&gw, "error"), 0);
    let stats = gw.control().stats();
    assert_eq!(stats.by_status.get("200").copied(), Some(1), "{stats:?}");
}

/// Knocks with a registered key until the daemon has sent at least one failing request.
fn knock_until_api_error(gw: &Gateway) -> [u8; 32] {
    let mut client = gw.knocker(0, random_key()).unwrap();
    let key = client.public_key();
    gw.register(&key, &["100.64.0.2/32"]).unwrap();
    let failed = wait_for(Duration::from_secs(15), || {
        client.knock().unwrap();
        std::thread::sleep(Duration::from_millis(1200));
        (api_requests(gw, "error") > 0).then_some(())
    });
    assert!(
        failed.is_some(),
        "no failing request:\n{}",
        gw.scrape().unwrap().text()
    );
    assert!(
        gw.peer(&key).unwrap().is_none(),
        "installed without a valid channel"
    );
    key
}

#[test]
fn a_wrong_token_is_refused_and_says_so() {
    let opts = GatewayOptions::new(61)
        .tls_with_token(TOKEN)
        .tamper(ChannelTamper::WrongToken);
    let Some(gw) = gateway(opts) else {
        return;
    };
    knock_until_api_error(&gw);
    let stats = gw.control().stats();
    assert!(
        stats.by_status.get("401").copied().unwrap_or(0) > 0,
        "{stats:?}"
    );
    let log = gw.daemon_log_tail(200_000);
    assert!(log.contains("refused our credentials"), "{log}");
    assert!(!log.contains("not-the-token"), "the token was logged");
}

#[test]
fn a_control_plane_signed_by_another_ca_is_refused_and_says_so() {
    let opts = GatewayOptions::new(62)
        .tls_with_token(TOKEN)
        .tamper(ChannelTamper::OtherCa);
    let Some(gw) = gateway(opts) else {
        return;
    };
    knock_until_api_error(&gw);
    // The TLS handshake failed: no lookup ever reached the control plane's handler.
    assert_eq!(gw.control().stats().requests_total, 0);
    let log = gw.daemon_log_tail(200_000).to_ascii_lowercase();
    assert!(log.contains("certificate"), "{log}");
}

fn counter(gw: &Gateway, name: &str, label: &str, value: &str) -> u64 {
    gw.scrape()
        .unwrap()
        .by_label(name, label)
        .get(value)
        .copied()
        .unwrap_or(0)
}

#[test]
fn an_address_is_taken_only_from_a_holder_that_lost_it() {
    let Some(gw) = gateway(GatewayOptions::new(63)) else {
        return;
    };
    let conflicts = |outcome| counter(&gw, "jitwgd_address_conflicts_total", "outcome", outcome);

    // The holder: connected, holding 100.64.0.2.
    let mut holder = gw.knocker(0, random_key()).unwrap();
    let holder_key = holder.public_key();
    gw.register(&holder_key, &["100.64.0.2/32"]).unwrap();
    holder.connect(Duration::from_secs(10)).unwrap();

    // A newcomer the control plane (wrongly) gives the same address: refused.
    let mut newcomer = gw.knocker(1, random_key()).unwrap();
    let newcomer_key = newcomer.public_key();
    gw.register(&newcomer_key, &["100.64.0.2/32"]).unwrap();
    newcomer.knock().unwrap();
    let refused = wait_for(Duration::from_secs(10), || {
        (conflicts("refused") > 0).then_some(())
    });
    assert!(refused.is_some(), "{}", gw.scrape().unwrap().text());
    assert!(gw.peer(&newcomer_key).unwrap().is_none());
    assert!(
        gw.peer(&holder_key).unwrap().is_some(),
        "the holder lost its peer"
    );

    // A range instead of a host route: refused at validation, whatever it overlaps.
    let mut wide = gw.knocker(2, random_key()).unwrap();
    gw.register(&wide.public_key(), &["100.64.1.0/24"]).unwrap();
    wide.knock().unwrap();
    let lookups = |outcome| counter(&gw, "jitwgd_lookups_total", "outcome", outcome);
    assert!(
        wait_for(Duration::from_secs(10), || (lookups("refused") > 0)
            .then_some(()))
        .is_some()
    );
    assert!(gw.peer(&wide.public_key()).unwrap().is_none());

    // The address is recycled: the holder's key is deleted, the newcomer knocks again
    // (after the holder's per-key API interval) and gets it.
    assert!(gw.revoke(&holder_key).unwrap());
    std::thread::sleep(Duration::from_millis(1100));
    newcomer.connect(Duration::from_secs(10)).unwrap();
    assert_eq!(conflicts("reassigned"), 1);
    assert!(gw.peer(&newcomer_key).unwrap().is_some());
    assert!(
        gw.peer(&holder_key).unwrap().is_none(),
        "the former holder is still installed"
    );
}
