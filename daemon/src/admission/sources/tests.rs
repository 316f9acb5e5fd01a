//! Tests of the per-network and per-site penalties (`super`).
use super::*;
use proptest::prelude::*;

fn settings() -> PenaltySettings {
    PenaltySettings {
        burst: 4,
        forgive_every: Duration::from_secs(1),
        max_sources: 3,
    }
}

fn net(n: u8) -> SourceNet {
    SourceNet::V4([198, 18, n])
}

#[test]
fn networks_are_slash24_and_slash64() {
    assert_eq!(
        SourceNet::of("198.18.7.9".parse().unwrap()),
        SourceNet::of("198.18.7.200".parse().unwrap())
    );
    assert_ne!(
        SourceNet::of("198.18.7.9".parse().unwrap()),
        SourceNet::of("198.18.8.9".parse().unwrap())
    );
    assert_eq!(
        SourceNet::of("::ffff:198.18.7.9".parse().unwrap()),
        SourceNet::of("198.18.7.1".parse().unwrap())
    );
    let a = SourceNet::of("2001:2:0:1::5".parse().unwrap());
    assert_eq!(a, SourceNet::of("2001:2:0:1:ffff::1".parse().unwrap()));
    assert_ne!(a, SourceNet::of("2001:2:0:2::5".parse().unwrap()));
    assert_eq!(a.to_string(), "2001:2:0:1::/64");
    assert_eq!(net(3).to_string(), "198.18.3.0/24");
}

/// One 404 answered for `net` at `at`.
fn not_found(p: &mut SourcePenalties, n: u8, at: Instant) {
    p.started(net(n), at);
    p.answered(net(n), true, at);
}

#[test]
fn a_network_is_refused_after_its_burst_and_forgiven_over_time() {
    let t0 = Instant::now();
    let mut p = SourcePenalties::new(settings());
    for _ in 0..4 {
        assert!(p.allows(net(1), t0));
        not_found(&mut p, 1, t0);
    }
    assert!(!p.allows(net(1), t0));
    assert!(p.allows(net(2), t0), "other networks are not affected");
    assert!(!p.allows(net(1), t0 + Duration::from_millis(900)));
    assert!(p.allows(net(1), t0 + Duration::from_millis(1100)));
}

#[test]
fn a_storm_in_flight_from_a_clean_network_is_never_refused() {
    let t0 = Instant::now();
    let mut p = SourcePenalties::new(settings());
    for _ in 0..1000 {
        assert!(p.allows(net(1), t0));
        p.started(net(1), t0);
    }
    for _ in 0..1000 {
        p.answered(net(1), false, t0);
    }
    assert!(p.allows(net(1), t0));
}

#[test]
fn a_suspect_network_counts_its_lookups_in_flight() {
    let t0 = Instant::now();
    let mut p = SourcePenalties::new(settings());
    // Half the burst (2 of 4): suspect; two more in flight fit, a third does not.
    not_found(&mut p, 1, t0);
    not_found(&mut p, 1, t0);
    for _ in 0..2 {
        assert!(p.allows(net(1), t0));
        p.started(net(1), t0);
    }
    assert!(!p.allows(net(1), t0));
    p.answered(net(1), false, t0);
    assert!(p.allows(net(1), t0), "the key resolved: nothing charged");
}

#[test]
fn the_table_stays_bounded_and_forgets_forgiven_networks_first() {
    let t0 = Instant::now();
    let mut p = SourcePenalties::new(settings());
    for n in 0..3 {
        not_found(&mut p, n, t0);
    }
    not_found(&mut p, 9, t0);
    assert_eq!(p.tracked(), 3, "full and nothing forgiven: not tracked");
    let later = t0 + Duration::from_secs(5);
    not_found(&mut p, 9, later);
    assert_eq!(p.tracked(), 1);
}

fn site_settings() -> PenaltySettings {
    PenaltySettings {
        burst: 8,
        forgive_every: Duration::from_secs(1),
        max_sources: 4096,
    }
}

/// The /64 2001:2:0:`n`::/64 (all of them in the site 2001:2::/48).
fn v6(n: u16) -> SourceNet {
    let mut net = [0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0];
    net[6..].copy_from_slice(&n.to_be_bytes());
    SourceNet::V6(net)
}

/// 64 /64s of one /48 knock every 100 ms each for `secs` seconds from `t0`, each
/// looking up a key (which 404s) whenever its penalty allows; the clean /64 `clean`
/// of the same site looks up a resolving key every 100 ms. Returns the flood's lookups
/// per second and the fewest networks refused half-way between two ticks after the
/// first 5 s, and asserts the clean /64 was never refused.
fn flood_site(
    p: &mut SourcePenalties,
    t0: Instant,
    secs: u64,
    clean: SourceNet,
) -> (Vec<u32>, usize) {
    let mut per_second = vec![0u32; secs as usize];
    let mut fewest_refused = usize::MAX;
    for tick in 0..secs * 10 {
        let now = t0 + Duration::from_millis(100 * tick);
        for n in 0..64 {
            if p.allows(v6(n), now) {
                p.started(v6(n), now);
                p.answered(v6(n), true, now);
                per_second[(tick / 10) as usize] += 1;
            } else {
                p.knocked(v6(n), now);
            }
        }
        assert!(p.allows(clean, now), "the clean /64 at {tick}");
        p.started(clean, now);
        p.answered(clean, false, now);
        if tick >= 50 {
            let between = now + Duration::from_millis(50);
            fewest_refused = fewest_refused.min(p.refused(between).len());
        }
    }
    (per_second, fewest_refused)
}

#[test]
fn a_site_flooding_from_64_slash64s_earns_about_one_renewal_a_second() {
    let t0 = Instant::now();
    let s = site_settings();
    let mut p = SourcePenalties::new(s);
    let (per_second, fewest_refused) = flood_site(&mut p, t0, 60, v6(0x4000));
    // The start: each /64's first 404, and the site's burst, while its 404s come in.
    assert!(per_second[0] <= 64 + 16, "{per_second:?}");
    // Then one renewal per forgive period for the whole site, not one per /64.
    let steady: u32 = per_second[5..].iter().sum();
    assert!(steady <= 2 * 55, "{steady} in 55 s: {per_second:?}");
    assert!(
        steady >= 40,
        "the site's penalty is renewed: {per_second:?}"
    );
    // Every flooding /64 stays refused (the kernel shield blocks the refused ones)
    // between the site's renewals, and the clean /64 never is.
    assert_eq!(fewest_refused, 64);
    let now = t0 + Duration::from_millis(59_950);
    assert!(!p.refused(now).contains(&v6(0x4000)));
}

#[test]
fn without_sites_each_slash64_would_earn_its_own_renewals() {
    // The same flood with each /64 in a site of its own (2001:2:n::/64): every
    // network renews for itself, about one lookup a second each. This is what the
    // site's bucket saves.
    let t0 = Instant::now();
    let mut p = SourcePenalties::new(site_settings());
    let net = |n: u16| {
        let mut net = [0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0];
        net[4..6].copy_from_slice(&n.to_be_bytes());
        SourceNet::V6(net)
    };
    let mut lookups = 0;
    for tick in 0..300u64 {
        let now = t0 + Duration::from_millis(100 * tick);
        for n in 0..64 {
            if p.allows(net(n), now) {
                p.started(net(n), now);
                p.answered(net(n), true, now);
                if tick >= 100 {
                    lookups += 1;
                }
            }
        }
    }
    assert!(lookups >= 64 * 15, "{lookups} in 20 s");
}

#[test]
fn a_site_member_that_stops_is_forgiven() {
    let t0 = Instant::now();
    let s = site_settings();
    let mut p = SourcePenalties::new(s);
    let _ = flood_site(&mut p, t0, 20, v6(0x4000));
    let quiet = t0 + Duration::from_secs(20) + s.forgive_every * (2 * s.burst);
    for n in 0..64 {
        assert!(p.allows(v6(n), quiet), "{n}");
    }
    assert!(p.refused(quiet).is_empty());
}

#[test]
fn a_renewal_refused_by_the_budget_holds_the_penalty() {
    let t0 = Instant::now();
    let s = site_settings();
    let mut p = SourcePenalties::new(s);
    let ms = |ms: u64| t0 + Duration::from_millis(ms);
    for _ in 0..8 {
        not_found(&mut p, 1, t0);
    }
    assert!(!p.allows(net(1), t0));
    // One 404 forgiven: the renewal is allowed, and the budget refuses it.
    assert!(p.allows(net(1), ms(1_010)));
    p.hold(net(1), ms(1_010));
    assert!(!p.allows(net(1), ms(1_010)), "held, not lapsed");
    assert!(!p.allows(net(1), ms(2_000)));
    // Each refused renewal holds it again; it never went above the limit.
    for k in 2..30 {
        let at = ms(1_000 * k + 20);
        assert!(p.allows(net(1), at), "renewal due at {k} s, not later");
        p.hold(net(1), at);
        assert!(!p.allows(net(1), at));
    }
    // Once it stops knocking, it is forgiven like any network.
    assert!(p.allows(net(1), ms(29_020 + 8_000)));
    assert!(p.refused(ms(29_020 + 8_000)).is_empty());
    // A network that never went over its limit is not held.
    not_found(&mut p, 2, t0);
    not_found(&mut p, 2, t0);
    p.hold(net(2), ms(500));
    assert!(p.allows(net(2), ms(500)));
    p.hold(net(2), ms(2_100));
    assert!(p.allows(net(2), ms(2_100)));
    assert!(!p.refused(ms(2_100)).contains(&net(2)));
}

#[test]
fn a_site_renewal_refused_by_the_budget_holds_the_sites_penalty() {
    let t0 = Instant::now();
    let s = site_settings();
    let mut p = SourcePenalties::new(s);
    // Eight /64s, one 404 each: the site is over its limit, each /64 is not.
    for n in 0..8 {
        p.started(v6(n), t0);
        p.answered(v6(n), true, t0);
    }
    assert!(!p.allows(v6(3), t0), "a member, refused with its site");
    assert!(
        p.allows(v6(100), t0),
        "never caused a 404: judged on its own"
    );
    let at = t0 + Duration::from_millis(1_010);
    p.knocked(v6(3), t0);
    assert!(p.allows(v6(3), at), "the site's renewal");
    p.hold(v6(3), at);
    assert!(!p.allows(v6(3), at), "the site's penalty held");
    assert!(p.allows(v6(100), at));
}

proptest! {
    /// Whatever the sequence of 404s, a network is refused only if it caused at
    /// least half its burst of them, and every network is allowed again after
    /// 2 × burst × forgive_every of silence; the table never exceeds its bound.
    #[test]
    fn refusal_needs_a_burst_and_always_ends(
        events in proptest::collection::vec((0u8..6, 0u64..3000), 0..200),
    ) {
        let t0 = Instant::now();
        let s = settings();
        let mut p = SourcePenalties::new(s);
        let mut counts = HashMap::new();
        let mut at = t0;
        for (n, step_ms) in events {
            at += Duration::from_millis(step_ms);
            not_found(&mut p, n, at);
            *counts.entry(n).or_insert(0u32) += 1;
            prop_assert!(p.tracked() <= s.max_sources);
            for m in 0..6u8 {
                if !p.allows(net(m), at) {
                    prop_assert!(2 * counts.get(&m).copied().unwrap_or(0) >= s.burst);
                }
            }
        }
        let quiet = at + s.forgive_every * (2 * s.burst) + Duration::from_millis(1);
        for m in 0..6u8 {
            prop_assert!(p.allows(net(m), quiet));
        }
    }
}
