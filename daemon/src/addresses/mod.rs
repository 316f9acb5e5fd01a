//! Who holds which tunnel address: an index of the installed peers' allowed IPs, so a
//! newcomer whose allowed IPs overlap another installed peer's is caught before
//! WireGuard silently moves the address to it (a data plane gives an allowed IP to the
//! peer configured last). The install worker, the single writer to the data plane,
//! owns the index and checks each install against it in the same step that installs, so
//! two newcomers racing for one address cannot both pass. Pure; `claim` is the async
//! part that asks the control plane whether a holder still owns its address.

pub mod claim;

use std::collections::{BTreeSet, HashMap};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::peer::{PeerConfig, PublicKey};

/// The installed peers' allowed IPs, searchable by overlap. Allowed IPs are prefixes, and
/// two prefixes overlap exactly when one contains the other, so an overlap with `net` is
/// either a stored prefix whose network address lies inside `net` (one range scan) or a
/// stored prefix containing `net` (one probe per shorter length): O(log n) per address
/// for host routes, whatever the number of peers.
#[derive(Debug, Default, Clone)]
pub struct AddressIndex {
    by_net: BTreeSet<(IpNet, PublicKey)>,
    by_key: HashMap<PublicKey, Vec<IpNet>>,
}

const KEY_MIN: PublicKey = PublicKey([0; 32]);
const KEY_MAX: PublicKey = PublicKey([0xff; 32]);

impl AddressIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Peers in the index.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Records `config`'s allowed IPs as held by its key (replacing what the key held).
    pub fn insert(&mut self, config: &PeerConfig) {
        self.remove(&config.public_key);
        let nets: Vec<IpNet> = config.allowed_ips.iter().map(IpNet::trunc).collect();
        for net in &nets {
            self.by_net.insert((*net, config.public_key));
        }
        self.by_key.insert(config.public_key, nets);
    }

    /// Forgets what `key` held.
    pub fn remove(&mut self, key: &PublicKey) {
        if let Some(nets) = self.by_key.remove(key) {
            for net in nets {
                self.by_net.remove(&(net, *key));
            }
        }
    }

    /// Keeps only the keys `keep` accepts (after a sweep resynchronised the installed set).
    pub fn retain(&mut self, mut keep: impl FnMut(&PublicKey) -> bool) {
        let gone: Vec<PublicKey> = self.by_key.keys().filter(|k| !keep(k)).copied().collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Other keys holding an address that overlaps one of `config`'s allowed IPs, sorted,
    /// without duplicates. Empty: the config may be installed.
    pub fn holders(&self, config: &PeerConfig) -> Vec<PublicKey> {
        let mut found = BTreeSet::new();
        for net in &config.allowed_ips {
            self.overlapping(&net.trunc(), &mut |key| {
                if key != config.public_key {
                    found.insert(key);
                }
            });
        }
        found.into_iter().collect()
    }

    fn overlapping(&self, net: &IpNet, found: &mut impl FnMut(PublicKey)) {
        // Stored prefixes inside `net` (or equal to it): their network address is in it.
        let (low, high) = bounds(net);
        for (_, key) in self.by_net.range((low, KEY_MIN)..=(high, KEY_MAX)) {
            found(*key);
        }
        // Stored prefixes strictly containing `net`: `net` truncated to a shorter length.
        for len in 0..net.prefix_len() {
            let Some(wider) = truncated(net, len) else {
                continue;
            };
            for (_, key) in self.by_net.range((wider, KEY_MIN)..=(wider, KEY_MAX)) {
                found(*key);
            }
        }
    }
}

/// The smallest and largest prefixes (in `IpNet` order: address, then length) whose
/// network address lies inside `net`.
fn bounds(net: &IpNet) -> (IpNet, IpNet) {
    match net {
        IpNet::V4(n) => (
            IpNet::V4(Ipv4Net::new_assert(n.network(), 0)),
            IpNet::V4(Ipv4Net::new_assert(n.broadcast(), 32)),
        ),
        IpNet::V6(n) => (
            IpNet::V6(Ipv6Net::new_assert(n.network(), 0)),
            IpNet::V6(Ipv6Net::new_assert(n.broadcast(), 128)),
        ),
    }
}

/// `net` cut to `len` bits, host bits cleared.
fn truncated(net: &IpNet, len: u8) -> Option<IpNet> {
    let wider = match net {
        IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.network(), len).ok()?),
        IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.network(), len).ok()?),
    };
    Some(wider.trunc())
}

/// For each config of one batch, in order, the keys it would take an address from: those
/// in `index` and those earlier in the batch that were admitted (first come, first served
/// within a batch). Admitted configs (empty list) are added to `index` by the caller only
/// once they are installed.
pub fn check_batch<'a>(
    index: &AddressIndex,
    configs: impl IntoIterator<Item = &'a PeerConfig>,
) -> Vec<Vec<PublicKey>> {
    // The batch's own admitted configs sit in a small index of their own: cloning the
    // installed set's index per batch would cost O(installed) on the install path.
    let mut admitted = AddressIndex::new();
    configs
        .into_iter()
        .map(|config| {
            let mut holders = index.holders(config);
            holders.extend(admitted.holders(config));
            holders.sort();
            holders.dedup();
            if holders.is_empty() {
                admitted.insert(config);
            }
            holders
        })
        .collect()
}

/// Splits `items` into those whose config may be installed and those that would take an
/// installed peer's address (with the holders), in order (`check_batch`).
pub fn partition<T>(
    index: &AddressIndex,
    items: Vec<T>,
    config: impl Fn(&T) -> &PeerConfig,
) -> (Vec<T>, Vec<(T, Vec<PublicKey>)>) {
    let verdicts = check_batch(index, items.iter().map(&config));
    let mut free = Vec::with_capacity(items.len());
    let mut taken = Vec::new();
    for (item, holders) in items.into_iter().zip(verdicts) {
        if holders.is_empty() {
            free.push(item);
        } else {
            taken.push((item, holders));
        }
    }
    (free, taken)
}

#[cfg(test)]
mod tests;
