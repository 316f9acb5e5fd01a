//! Tests of the shield's pure core: what to block given judged sources and installed
//! endpoints, driven by admission control with time passed in.

use super::*;
use crate::admission::{
    AddressSettings, Admission, AdmissionSettings, Answer, BudgetSettings, PenaltySettings,
    SHARE_WINDOW,
};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn set(ips: &[&str]) -> HashSet<IpAddr> {
    ips.iter().map(|s| ip(s)).collect()
}

fn block(s: &str) -> Rule {
    let (a, l) = s.split_once('/').unwrap();
    Rule::Block(Prefix {
        addr: ip(a),
        len: l.parse().unwrap(),
    })
}

/// No endpoint in `endpoints` lies in a block of `rules` without its pass.
fn safe(rules: &BTreeSet<Rule>, endpoints: &HashSet<IpAddr>) -> bool {
    endpoints.iter().all(|e| {
        let blocked = rules
            .iter()
            .any(|r| matches!(r, Rule::Block(p) if p.contains(*e)));
        !blocked || rules.contains(&Rule::Pass(canonical(*e)))
    })
}

#[test]
fn prefixes_contain_what_they_should() {
    let p = Prefix::of_net(SourceNet::of(ip("198.18.7.9")));
    assert_eq!(p.to_string(), "198.18.7.0/24");
    assert!(p.contains(ip("198.18.7.200")));
    assert!(p.contains(ip("::ffff:198.18.7.1")));
    assert!(!p.contains(ip("198.18.8.1")));
    assert!(!p.contains(ip("2001:2::1")));
    let p6 = Prefix::of_net(SourceNet::of(ip("2001:2:0:1::5")));
    assert_eq!(p6.to_string(), "2001:2:0:1::/64");
    assert!(p6.contains(ip("2001:2:0:1:ffff::1")));
    assert!(!p6.contains(ip("2001:2:0:2::1")));
    assert_eq!(
        Prefix::host(ip("::ffff:198.18.1.1")).to_string(),
        "198.18.1.1/32"
    );
    assert!(Prefix::host(ip("2001:2::1")).contains(ip("2001:2::1")));
    assert!(!Prefix::host(ip("2001:2::1")).contains(ip("2001:2::2")));
}

fn addresses(ips: &[&str]) -> Judged {
    Judged {
        addresses: ips.iter().map(|s| ip(s)).collect(),
        networks: vec![],
    }
}

fn networks(ips: &[&str]) -> Judged {
    Judged {
        addresses: vec![],
        networks: ips.iter().map(|s| SourceNet::of(ip(s))).collect(),
    }
}

#[test]
fn judged_addresses_are_blocked_except_installed_endpoints() {
    let judged = addresses(&["198.18.1.5", "198.18.1.6", "2001:2::9"]);
    let want = desired(&judged, &set(&["198.18.1.6"]), 100, &BTreeSet::new(), true);
    let expected: BTreeSet<Rule> = [block("198.18.1.5/32"), block("2001:2::9/128")].into();
    assert_eq!(want, expected);
}

#[test]
fn judged_networks_are_blocked_with_a_pass_for_each_installed_endpoint_inside() {
    let mut judged = networks(&["198.18.1.0"]);
    judged.addresses = vec![ip("198.18.1.9"), ip("198.18.2.9")];
    let endpoints = set(&["198.18.1.6", "198.18.2.6", "::ffff:198.18.1.7"]);
    let want = desired(&judged, &endpoints, 100, &BTreeSet::new(), true);
    let expected: BTreeSet<Rule> = [
        block("198.18.1.0/24"),
        Rule::Pass(ip("198.18.1.6")),
        Rule::Pass(ip("198.18.1.7")),
        block("198.18.2.9/32"),
    ]
    .into();
    assert_eq!(want, expected, "198.18.1.9 is inside the blocked network");
    // Without network blocks (no gateway initiation) only the addresses.
    let want = desired(&judged, &endpoints, 100, &BTreeSet::new(), false);
    let expected: BTreeSet<Rule> = [block("198.18.1.9/32"), block("198.18.2.9/32")].into();
    assert_eq!(want, expected);
}

#[test]
fn a_network_whose_passes_do_not_fit_is_left_to_its_addresses() {
    let nets = networks(&["198.18.1.0", "198.18.2.0", "198.18.3.0"]);
    let endpoints = set(&["198.18.1.6", "198.18.1.7"]);
    // Cap 2: 198.18.1.0/24 needs 3 rules, so it is left open; the next two fit.
    let want = desired(&nets, &endpoints, 2, &BTreeSet::new(), true);
    let expected: BTreeSet<Rule> = [block("198.18.2.0/24"), block("198.18.3.0/24")].into();
    assert_eq!(want, expected);
    // Cap 1 with 198.18.3.0/24 in force: it stays rather than the first in order.
    let current: BTreeSet<Rule> = [block("198.18.3.0/24")].into();
    assert_eq!(desired(&nets, &endpoints, 1, &current, true), current);
    // Cap 2 and one judged address inside: the address is blocked instead.
    let mut one = networks(&["198.18.1.0"]);
    one.addresses = vec![ip("198.18.1.9")];
    let want = desired(&one, &endpoints, 2, &BTreeSet::new(), true);
    assert_eq!(want, [block("198.18.1.9/32")].into());
}

/// Admission with quick penalties (burst 2), a budget that never refuses, and `addresses`.
fn admission_with(addresses: AddressSettings, now: Instant) -> Admission {
    Admission::new(
        AdmissionSettings {
            penalties: PenaltySettings {
                burst: 2,
                forgive_every: Duration::from_secs(1),
                max_sources: 16,
            },
            budget: BudgetSettings {
                rate: 100.0,
                floor_rate: 100.0,
                burst: 100,
                share_window: SHARE_WINDOW,
            },
            addresses,
        },
        now,
    )
}

/// With the address level on.
fn admission(now: Instant) -> Admission {
    admission_with(
        AddressSettings {
            quiet_gap: Duration::from_secs(1),
            hold: Duration::from_secs(4),
            capacity: 64,
            newcomer_burst: 2,
            newcomer_rate: 0.5,
        },
        now,
    )
}

#[test]
fn blocks_follow_the_penalties_and_expire_with_them() {
    let t0 = Instant::now();
    let mut a = admission(t0);
    // Two 404s penalise 198.18.1.0/24 and both offending addresses.
    for src in ["198.18.1.5", "198.18.1.6"] {
        let t = a.admit(ip(src), t0).unwrap();
        a.answered(t, Answer::NotFound, t0);
    }
    // A flooder knocking every 100 ms stays judged for as long as it knocks.
    let mut table = BTreeSet::new();
    let endpoints = set(&["198.18.1.6"]);
    for step in 0..20u32 {
        let now = t0 + Duration::from_millis(100) * step;
        let _ = a.screen(ip("198.18.1.9"), now);
        table = desired(&a.judged(now), &endpoints, 16, &table, false);
        assert!(safe(&table, &endpoints));
    }
    let at_2s = t0 + Duration::from_secs(2);
    let expected: BTreeSet<Rule> = [block("198.18.1.5/32"), block("198.18.1.9/32")].into();
    assert_eq!(
        table, expected,
        "the installed endpoint .6 is never blocked"
    );
    // With network blocks, while the /24 is penalised (its 404s at t0): the /24, and a
    // pass for the endpoint inside it.
    let with_nets = desired(&a.judged(t0), &endpoints, 16, &BTreeSet::new(), true);
    let expected_nets: BTreeSet<Rule> =
        [block("198.18.1.0/24"), Rule::Pass(ip("198.18.1.6"))].into();
    assert_eq!(with_nets, expected_nets);
    // 198.18.1.5 offended at t0 (hold 4 s); the flooder's last knock was at 1.9 s.
    let at_4500 = t0 + Duration::from_millis(4500);
    table = desired(&a.judged(at_4500), &endpoints, 16, &table, false);
    assert_eq!(table, [block("198.18.1.9/32")].into());
    let at_6 = at_2s + Duration::from_secs(4);
    table = desired(&a.judged(at_6), &endpoints, 16, &table, false);
    assert!(table.is_empty(), "every penalty has expired");
}

#[test]
fn without_the_address_level_only_networks_are_judged() {
    let t0 = Instant::now();
    let mut a = admission_with(AddressSettings::off(), t0);
    for _ in 0..2 {
        let t = a.admit(ip("198.18.1.5"), t0).unwrap();
        a.answered(t, Answer::NotFound, t0);
    }
    assert_eq!(a.judged(t0), networks(&["198.18.1.5"]));
    assert!(a.judged(t0 + Duration::from_secs(5)).is_empty());
}

/// A judged state drawn from small address and network pools.
/// The lab address a generated host number stands for: three /24s, so networks hold several.
fn host_ip(h: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, h % 3, h))
}

fn judged_strategy() -> impl Strategy<Value = Judged> {
    (
        proptest::collection::vec(0u8..12, 0..8),
        proptest::collection::vec(0u8..4, 0..3),
    )
        .prop_map(|(hosts, nets)| Judged {
            addresses: hosts.into_iter().map(host_ip).collect(),
            networks: nets
                .into_iter()
                .map(|n| SourceNet::V4([198, 18, n]))
                .collect(),
        })
}

proptest! {
    /// Whatever the judged sources, installed endpoints and cap: no installed endpoint is
    /// ever inside a block without its pass, the cap holds, a judged address that is no
    /// endpoint is blocked whenever the cap leaves room, and rules already in force are
    /// kept before new ones.
    #[test]
    fn desired_rules_never_cut_off_an_installed_endpoint(
        states in proptest::collection::vec(judged_strategy(), 1..12),
        endpoint_hosts in proptest::collection::vec(0u8..12, 0..6),
        cap in 0usize..10,
        block_networks: bool,
    ) {
        let endpoints: HashSet<IpAddr> = endpoint_hosts.into_iter().map(host_ip).collect();
        let mut current = BTreeSet::new();
        for judged in states {
            let want = desired(&judged, &endpoints, cap, &current, block_networks);
            prop_assert!(want.len() <= cap);
            prop_assert!(safe(&want, &endpoints));
            // Every judged address that is no endpoint is shut out when the cap allows.
            let ips = &judged.addresses;
            let blockable: BTreeSet<IpAddr> =
                ips.iter().filter(|ip| !endpoints.contains(*ip)).copied().collect();
            let shut = |ip: IpAddr| {
                want.iter().any(|r| matches!(r, Rule::Block(p) if p.contains(ip)))
            };
            if blockable.len() + 4 * judged.networks.len() + endpoints.len() <= cap {
                for ip in &blockable {
                    prop_assert!(shut(*ip), "{ip} judged but open");
                }
            }
            if !block_networks {
                prop_assert!(want.iter().all(|r| matches!(r, Rule::Block(p) if p.len == 32)));
                let kept = current.iter().filter(|r| {
                    matches!(r, Rule::Block(p) if ips.contains(&p.addr) && !endpoints.contains(&p.addr))
                });
                for r in kept {
                    prop_assert!(want.contains(r), "{r} was in force and still judged");
                }
            }
            current = want;
        }
    }
}

#[test]
fn installed_endpoints_are_canonical_and_skip_peers_without_one() {
    use crate::dataplane::InstalledPeer;
    use crate::peer::PublicKey;
    let peer = |k: u8, endpoint: Option<&str>| InstalledPeer {
        public_key: PublicKey([k; 32]),
        last_handshake: None,
        endpoint: endpoint.map(|e| e.parse().unwrap()),
    };
    let peers = [
        peer(1, Some("198.18.0.7:51820")),
        peer(2, Some("[::ffff:198.18.0.9]:4000")),
        peer(3, None),
        peer(4, Some("[2001:2::5]:51820")),
        peer(5, Some("198.18.0.7:9")),
    ];
    assert_eq!(
        installed_endpoints(&peers),
        set(&["198.18.0.7", "198.18.0.9", "2001:2::5"])
    );
    assert!(installed_endpoints(&[]).is_empty());
}

#[test]
fn a_wake_up_replans_only_when_something_it_plans_from_changed() {
    let judged = JudgedSet::from(&addresses(&["198.18.0.7", "198.18.0.8"]));
    let reordered = JudgedSet::from(&addresses(&["198.18.0.8", "198.18.0.7"]));
    let fewer = JudgedSet::from(&addresses(&["198.18.0.7"]));
    let nothing = JudgedSet::default();
    // Nothing planned yet: plan, even with nothing judged.
    assert!(needs_replan(None, &nothing, false, true));
    // The same sources (in any order), the same endpoints, in force: nothing to do.
    assert!(!needs_replan(Some(&judged), &reordered, false, true));
    assert!(!needs_replan(Some(&nothing), &nothing, false, true));
    // Any one change: plan.
    assert!(
        needs_replan(Some(&fewer), &judged, false, true),
        "newly judged"
    );
    assert!(
        needs_replan(Some(&judged), &fewer, false, true),
        "a penalty ended"
    );
    let net = JudgedSet::from(&networks(&["198.18.0.7"]));
    assert!(
        needs_replan(Some(&nothing), &net, false, true),
        "a network judged"
    );
    assert!(
        needs_replan(Some(&judged), &judged, true, true),
        "endpoints changed"
    );
    assert!(
        needs_replan(Some(&judged), &judged, false, false),
        "a replacement failed"
    );
}

proptest! {
    /// Skipping a plan whose inputs did not change (`needs_replan`) is sound: planning
    /// again from the same judged sources, listed in any order, and the same endpoints,
    /// with the last plan in force, gives back that plan.
    #[test]
    fn planning_again_from_the_same_inputs_keeps_the_rules_in_force(
        judged in judged_strategy(),
        before in proptest::collection::vec(judged_strategy(), 0..4),
        endpoint_hosts in proptest::collection::vec(0u8..12, 0..6),
        cap in 0usize..10,
        rotate in 0usize..8,
        block_networks: bool,
    ) {
        let endpoints: HashSet<IpAddr> = endpoint_hosts.into_iter().map(host_ip).collect();
        // Whatever was in force before (earlier judged states) ...
        let mut current = BTreeSet::new();
        for earlier in &before {
            current = desired(earlier, &endpoints, cap, &current, block_networks);
        }
        // ... once planned from `judged`, planning from the same sources changes nothing.
        let planned = desired(&judged, &endpoints, cap, &current, block_networks);
        let mut same = judged.clone();
        let (a, n) = (same.addresses.len(), same.networks.len());
        same.addresses.rotate_left(if a == 0 { 0 } else { rotate % a });
        same.networks.rotate_left(if n == 0 { 0 } else { rotate % n });
        same.addresses.reverse();
        prop_assert_eq!(JudgedSet::from(&same), JudgedSet::from(&judged));
        let again = desired(&same, &endpoints, cap, &planned, block_networks);
        prop_assert_eq!(again, planned);
    }
}
