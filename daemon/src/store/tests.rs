//! Unit tests of the peer store: positive and negative cache entries, the replay guard,
//! integrity at open, and property tests of the stored encoding.

use super::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn peer(byte: u8) -> PeerConfig {
    PeerConfig {
        public_key: PublicKey([byte; 32]),
        allowed_ips: vec![format!("100.64.0.{byte}/32").parse().unwrap()],
        preshared_key: None,
    }
}

fn ts(secs: u64) -> Timestamp {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&secs.to_be_bytes());
    Timestamp(bytes)
}

#[test]
fn stored_peer_reads_back_with_its_expiry() {
    let mut store = Store::open_in_memory().unwrap();
    let p = peer(1);
    store
        .put_peer(&p, PeerSource::Api, at(1000), Duration::from_secs(60))
        .unwrap();
    let got = store.get_peer(&p.public_key).unwrap().unwrap();
    assert_eq!(got.config, p);
    assert_eq!(got.source, PeerSource::Api);
    assert_eq!(got.fetched_at, at(1000));
    assert_eq!(got.expires_at, at(1060));
    assert!(got.is_fresh(at(1059)));
    assert!(!got.is_fresh(at(1060)));
}

#[test]
fn missing_peer_is_none() {
    let store = Store::open_in_memory().unwrap();
    assert!(store.get_peer(&PublicKey([9; 32])).unwrap().is_none());
}

#[test]
fn negative_entry_replaces_positive_one() {
    let mut store = Store::open_in_memory().unwrap();
    let p = peer(2);
    store
        .put_peer(&p, PeerSource::Api, at(0), Duration::from_secs(60))
        .unwrap();
    store
        .put_negative(&p.public_key, at(10), Duration::from_secs(30))
        .unwrap();
    assert!(store.get_peer(&p.public_key).unwrap().is_none());
    assert!(store.get_negative(&p.public_key, at(39)).unwrap());
    assert!(!store.get_negative(&p.public_key, at(40)).unwrap());
}

#[test]
fn positive_entry_clears_negative_one() {
    let mut store = Store::open_in_memory().unwrap();
    let p = peer(3);
    store
        .put_negative(&p.public_key, at(0), Duration::from_secs(60))
        .unwrap();
    store
        .put_peer(&p, PeerSource::Push, at(1), Duration::MAX)
        .unwrap();
    assert!(!store.get_negative(&p.public_key, at(2)).unwrap());
    let got = store.get_peer(&p.public_key).unwrap().unwrap();
    assert!(got.is_fresh(at(u32::MAX as u64)));
}

#[test]
fn expired_negative_entries_are_purged() {
    let mut store = Store::open_in_memory().unwrap();
    store
        .put_negative(&PublicKey([1; 32]), at(0), Duration::from_secs(10))
        .unwrap();
    store
        .put_negative(&PublicKey([2; 32]), at(0), Duration::from_secs(100))
        .unwrap();
    assert_eq!(store.purge_expired_negative(at(50)).unwrap(), 1);
    assert!(store.get_negative(&PublicKey([2; 32]), at(50)).unwrap());
    assert!(store.remove_negative(&PublicKey([2; 32])).unwrap());
    assert!(!store.get_negative(&PublicKey([2; 32]), at(50)).unwrap());
}

#[test]
fn expired_peers_lists_only_expired_ones() {
    let mut store = Store::open_in_memory().unwrap();
    store
        .put_peer(&peer(1), PeerSource::Api, at(0), Duration::from_secs(10))
        .unwrap();
    store
        .put_peer(&peer(2), PeerSource::Api, at(0), Duration::from_secs(100))
        .unwrap();
    assert_eq!(
        store.expired_peers(at(50)).unwrap(),
        vec![PublicKey([1; 32])]
    );
}

#[test]
fn all_peers_and_removal() {
    let mut store = Store::open_in_memory().unwrap();
    let peers: Vec<_> = (1..=5).map(peer).collect();
    store
        .put_peers(&peers, PeerSource::Push, at(0), Duration::MAX)
        .unwrap();
    assert_eq!(store.all_peers().unwrap(), peers);
    assert_eq!(store.peer_count().unwrap(), 5);
    assert!(store.remove_peer(&PublicKey([3; 32])).unwrap());
    assert!(!store.remove_peer(&PublicKey([3; 32])).unwrap());
    assert_eq!(store.peer_count().unwrap(), 4);
}

#[test]
fn replay_guard_accepts_only_strictly_newer() {
    let mut store = Store::open_in_memory().unwrap();
    let k = PublicKey([4; 32]);
    let other = PublicKey([5; 32]);
    assert_eq!(
        store.check_and_record_timestamp(&k, ts(10)).unwrap(),
        ReplayVerdict::Fresh
    );
    assert_eq!(
        store.check_and_record_timestamp(&k, ts(10)).unwrap(),
        ReplayVerdict::Replay
    );
    assert_eq!(
        store.check_and_record_timestamp(&k, ts(9)).unwrap(),
        ReplayVerdict::Replay
    );
    assert_eq!(
        store.check_and_record_timestamp(&other, ts(9)).unwrap(),
        ReplayVerdict::Fresh
    );
    assert_eq!(
        store.check_and_record_timestamp(&k, ts(11)).unwrap(),
        ReplayVerdict::Fresh
    );
    // A replay must not have lowered the stored newest value.
    assert_eq!(
        store.check_and_record_timestamp(&k, ts(10)).unwrap(),
        ReplayVerdict::Replay
    );
}

#[test]
fn file_database_persists_and_passes_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("peers.db");
    {
        let mut store = Store::open(&path).unwrap();
        store
            .put_peer(&peer(7), PeerSource::Api, at(0), Duration::from_secs(60))
            .unwrap();
        store
            .check_and_record_timestamp(&PublicKey([7; 32]), ts(5))
            .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    store.integrity_check().unwrap();
    assert_eq!(store.all_peers().unwrap(), vec![peer(7)]);
    assert_eq!(
        store
            .check_and_record_timestamp(&PublicKey([7; 32]), ts(5))
            .unwrap(),
        ReplayVerdict::Replay
    );
    let mode = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, len)| IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), len).unwrap())),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, len)| IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(a), len).unwrap())),
    ]
}

proptest! {
    #[test]
    fn peer_round_trips_through_the_store(
        key in any::<[u8; 32]>(),
        ips in proptest::collection::vec(arb_net(), 0..5),
        psk in proptest::option::of(any::<[u8; 32]>()),
        push in any::<bool>(),
        now_ms in 0u64..(1u64 << 45),
        ttl_ms in any::<u64>(),
    ) {
        let mut store = Store::open_in_memory().unwrap();
        let config = PeerConfig { public_key: PublicKey(key), allowed_ips: ips, preshared_key: psk };
        let source = if push { PeerSource::Push } else { PeerSource::Api };
        let now = UNIX_EPOCH + Duration::from_millis(now_ms);
        store.put_peer(&config, source, now, Duration::from_millis(ttl_ms)).unwrap();
        let got = store.get_peer(&config.public_key).unwrap().unwrap();
        prop_assert_eq!(&got.config, &config);
        prop_assert_eq!(got.source, source);
        prop_assert_eq!(got.fetched_at, now);
        prop_assert_eq!(store.all_peers().unwrap(), vec![config]);
    }

    #[test]
    fn replay_guard_in_store_agrees_with_pure_judge(
        stamps in proptest::collection::vec(0u64..20, 1..30),
    ) {
        let mut store = Store::open_in_memory().unwrap();
        let key = PublicKey([1; 32]);
        let mut newest = None;
        for s in stamps {
            let expected = replay::judge(newest, ts(s));
            if expected == ReplayVerdict::Fresh {
                newest = Some(ts(s));
            }
            prop_assert_eq!(store.check_and_record_timestamp(&key, ts(s)).unwrap(), expected);
        }
    }
}

#[test]
fn purge_negative_drops_expired_rows_then_the_soonest_beyond_the_cap() {
    let mut store = Store::open_in_memory().unwrap();
    for n in 0..10u8 {
        // Key n expires at 100 + n seconds.
        store
            .put_negative(
                &PublicKey([n; 32]),
                at(100),
                Duration::from_secs(u64::from(n)),
            )
            .unwrap();
    }
    // At 103 s keys 0..=3 have expired; a cap of 4 then drops 4 and 5.
    assert_eq!(store.purge_negative(at(103), 4).unwrap(), 6);
    assert_eq!(store.negative_count().unwrap(), 4);
    for n in 6..10u8 {
        assert!(store.get_negative(&PublicKey([n; 32]), at(103)).unwrap());
    }
    assert_eq!(store.purge_negative(at(103), 100).unwrap(), 0);
}

#[test]
fn orphan_replay_rows_are_purged_and_known_keys_keep_theirs() {
    let mut store = Store::open_in_memory().unwrap();
    store
        .put_peer(&peer(1), PeerSource::Api, at(0), Duration::from_secs(60))
        .unwrap();
    for n in 1..=5u8 {
        store
            .check_and_record_timestamp(&PublicKey([n; 32]), ts(10))
            .unwrap();
    }
    assert_eq!(store.purge_orphan_replay(2).unwrap(), 2);
    assert_eq!(store.purge_orphan_replay(100).unwrap(), 2);
    assert_eq!(store.replay_count().unwrap(), 1);
    assert_eq!(
        store
            .check_and_record_timestamp(&PublicKey([1; 32]), ts(10))
            .unwrap(),
        ReplayVerdict::Replay
    );
}
