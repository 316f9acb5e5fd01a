//! The overlap index against its definition (two prefixes overlap when one contains the
//! other), checked by hand on the cases that matter and by brute force on random sets.

use super::*;
use proptest::prelude::*;

fn peer(byte: u8, ips: &[&str]) -> PeerConfig {
    PeerConfig {
        public_key: PublicKey([byte; 32]),
        allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        preshared_key: None,
    }
}

fn bytes(keys: &[PublicKey]) -> Vec<u8> {
    keys.iter().map(|k| k.0[0]).collect()
}

#[test]
fn the_same_host_route_is_held_by_its_installer() {
    let mut index = AddressIndex::new();
    index.insert(&peer(1, &["100.64.0.2/32"]));
    assert_eq!(bytes(&index.holders(&peer(2, &["100.64.0.2/32"]))), [1]);
    assert!(index.holders(&peer(2, &["100.64.0.3/32"])).is_empty());
    // A peer re-installed with its own address does not conflict with itself.
    assert!(index.holders(&peer(1, &["100.64.0.2/32"])).is_empty());
}

#[test]
fn overlap_is_found_in_both_directions() {
    let mut index = AddressIndex::new();
    index.insert(&peer(1, &["100.64.1.0/24"]));
    index.insert(&peer(2, &["100.64.2.7/32"]));
    // Inside a stored prefix.
    assert_eq!(bytes(&index.holders(&peer(3, &["100.64.1.9/32"]))), [1]);
    // Containing stored prefixes.
    assert_eq!(bytes(&index.holders(&peer(3, &["100.64.0.0/16"]))), [1, 2]);
    // Adjacent, not overlapping.
    assert!(index.holders(&peer(3, &["100.64.0.0/24"])).is_empty());
}

#[test]
fn ipv6_and_ipv4_never_overlap() {
    let mut index = AddressIndex::new();
    index.insert(&peer(1, &["2001:2::5/128", "100.64.0.5/32"]));
    assert_eq!(bytes(&index.holders(&peer(2, &["2001:2::/64"]))), [1]);
    assert!(index.holders(&peer(2, &["2001:2:0:1::5/128"])).is_empty());
    assert!(index.holders(&peer(2, &["::/0"])).len() == 1);
}

#[test]
fn removal_and_replacement_free_the_old_addresses() {
    let mut index = AddressIndex::new();
    index.insert(&peer(1, &["100.64.0.2/32"]));
    index.insert(&peer(1, &["100.64.0.3/32"]));
    assert!(index.holders(&peer(2, &["100.64.0.2/32"])).is_empty());
    assert_eq!(index.len(), 1);
    index.remove(&PublicKey([1; 32]));
    assert!(index.holders(&peer(2, &["100.64.0.3/32"])).is_empty());
    assert!(index.is_empty());
}

#[test]
fn retain_forgets_peers_that_left_the_data_plane() {
    let mut index = AddressIndex::new();
    index.insert(&peer(1, &["100.64.0.1/32"]));
    index.insert(&peer(2, &["100.64.0.2/32"]));
    index.retain(|k| k.0[0] == 2);
    assert!(index.holders(&peer(9, &["100.64.0.1/32"])).is_empty());
    assert_eq!(bytes(&index.holders(&peer(9, &["100.64.0.2/32"]))), [2]);
}

#[test]
fn within_one_batch_the_first_claim_wins() {
    let mut index = AddressIndex::new();
    index.insert(&peer(1, &["100.64.0.1/32"]));
    let batch = [
        peer(2, &["100.64.0.2/32"]),
        peer(3, &["100.64.0.2/32"]),
        peer(4, &["100.64.0.1/32"]),
        peer(5, &["100.64.0.5/32"]),
    ];
    let verdicts = check_batch(&index, &batch);
    let verdicts: Vec<Vec<u8>> = verdicts.iter().map(|h| bytes(h)).collect();
    assert_eq!(verdicts, vec![vec![], vec![2], vec![1], vec![]]);
    // Checking does not install: the index is unchanged.
    assert_eq!(index.len(), 1);
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// A small IPv4 space so random prefixes collide often.
fn small_net() -> impl Strategy<Value = IpNet> {
    (0u32..64, 26u8..=32).prop_map(|(host, len)| {
        IpNet::V4(Ipv4Net::new((0x6440_0000u32 + host).into(), len).unwrap()).trunc()
    })
}

proptest! {
    /// `holders` finds exactly the other keys with an overlapping prefix, after any
    /// sequence of inserts and removals.
    #[test]
    fn holders_match_brute_force(
        ops in proptest::collection::vec((0u8..12, proptest::collection::vec(small_net(), 0..3), any::<bool>()), 0..40),
        probe in proptest::collection::vec(small_net(), 1..3),
    ) {
        let mut index = AddressIndex::new();
        let mut model: HashMap<PublicKey, Vec<IpNet>> = HashMap::new();
        for (byte, nets, remove) in ops {
            let key = PublicKey([byte; 32]);
            if remove {
                index.remove(&key);
                model.remove(&key);
            } else {
                let config = PeerConfig { public_key: key, allowed_ips: nets.clone(), preshared_key: None };
                index.insert(&config);
                model.insert(key, nets);
            }
        }
        let newcomer = PeerConfig { public_key: PublicKey([200; 32]), allowed_ips: probe.clone(), preshared_key: None };
        let mut expected: Vec<PublicKey> = model
            .iter()
            .filter(|(_, nets)| nets.iter().any(|n| probe.iter().any(|p| overlaps(n, p))))
            .map(|(k, _)| *k)
            .collect();
        expected.sort();
        prop_assert_eq!(index.holders(&newcomer), expected);
        prop_assert_eq!(index.len(), model.len());
    }
}
