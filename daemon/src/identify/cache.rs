//! The static-static Diffie-Hellman result per known initiator, so a repeat initiation
//! from a key the daemon already knows costs one X25519 (the ephemeral one, which
//! depends on the packet) instead of two.
//!
//! Bounded and shared: identify workers on several threads read it at once, so it is
//! split into independently locked shards, each evicting with CLOCK (one "referenced"
//! bit per entry, a hand sweeping past recently used entries). Pure: no IO, no clock.
//! Entries are filled only for keys the caller vouches for (`remember`), never by
//! identify itself, so a flood of first-contact or unknown keys cannot push known keys
//! out. A cached secret cannot let a wrong key through: identify still authenticates it
//! with the AEAD on the timestamp, exactly as it would a freshly computed one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use x25519_dalek::{PublicKey as DhPublic, SharedSecret};

use super::{Identified, ResponderKeys};
use crate::peer::PublicKey;

/// A static-static secret identify computed for one initiator against one responder key,
/// on its way to the cache: it remembers for which keys it was computed, so it can never
/// be filed under another initiator. Opaque: only the cache reads the secret.
#[derive(Clone)]
pub struct FreshStaticStatic {
    responder: [u8; 32],
    initiator: PublicKey,
    secret: Arc<SharedSecret>,
}

impl FreshStaticStatic {
    pub(super) fn new(keys: &ResponderKeys, initiator: PublicKey, secret: SharedSecret) -> Self {
        FreshStaticStatic {
            responder: keys.public,
            initiator,
            secret: Arc::new(secret),
        }
    }
}

/// Independently locked parts; a power of two so a key byte picks one cheaply.
const SHARDS: usize = 16;

/// X25519(responder static, initiator static) for up to `capacity` initiator keys,
/// bound to one responder key.
pub struct StaticStaticCache {
    /// The responder public key every entry was computed with: a cache built for
    /// another interface key is never consulted (it would only cause false rejections,
    /// but those are bugs too).
    responder: [u8; 32],
    capacity: usize,
    shards: Box<[Mutex<Shard>]>,
}

/// One shard: a slot array swept by the CLOCK hand, and an index into it.
struct Shard {
    capacity: usize,
    index: HashMap<[u8; 32], usize>,
    slots: Vec<Slot>,
    hand: usize,
}

struct Slot {
    initiator: [u8; 32],
    /// Shared so a reader can use it after releasing the lock; x25519-dalek zeroizes
    /// the secret when the last holder drops it (eviction, `forget`, or the reader).
    secret: Arc<SharedSecret>,
    /// Set on every hit; the CLOCK hand clears it once before evicting.
    referenced: bool,
}

impl StaticStaticCache {
    /// An empty cache for `keys`' responder key holding at most `capacity` initiator
    /// keys (rounded up to a multiple of the shard count; 0 disables caching).
    pub fn new(keys: &ResponderKeys, capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    capacity: per_shard,
                    index: HashMap::new(),
                    slots: Vec::new(),
                    hand: 0,
                })
            })
            .collect();
        Self {
            responder: keys.public,
            capacity: per_shard * SHARDS,
            shards,
        }
    }

    /// How many initiator keys the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many initiator keys it holds now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `initiator`'s static-static secret is cached (does not count as a use).
    pub fn contains(&self, initiator: &PublicKey) -> bool {
        lock(self.shard(&initiator.0))
            .index
            .contains_key(&initiator.0)
    }

    /// Cache the static-static secret for `initiator`, a key the caller knows is
    /// authorised. Costs one X25519 unless it is already cached (then it only marks
    /// the entry used). Does nothing for a cache built for another responder key or for
    /// a low-order initiator key (whose DH identify rejects anyway). Returns whether
    /// the key is cached afterwards.
    pub fn remember(&self, keys: &ResponderKeys, initiator: PublicKey) -> bool {
        if keys.public != self.responder || self.capacity == 0 {
            return false;
        }
        if self.get(keys, &initiator).is_some() {
            return true;
        }
        // The DH runs outside the lock: other workers keep reading this shard.
        let secret = keys.private.diffie_hellman(&DhPublic::from(initiator.0));
        if !secret.was_contributory() {
            return false;
        }
        lock(self.shard(&initiator.0)).insert(initiator.0, Arc::new(secret));
        true
    }

    /// `remember` for a key identify has just identified: the secret identify computed on
    /// its cache miss is filed as it is, so vouching for a first contact costs no X25519.
    /// Falls back to `remember` when identify took the secret from the cache (it is there
    /// already, or was evicted since) or when the secret belongs to another key pair.
    pub fn remember_identified(&self, keys: &ResponderKeys, identified: &Identified) -> bool {
        let initiator = identified.initiator();
        match identified.fresh_secret() {
            Some(fresh)
                if fresh.initiator == initiator
                    && fresh.responder == keys.public
                    && keys.public == self.responder
                    && self.capacity > 0 =>
            {
                if self.get(keys, &initiator).is_none() {
                    lock(self.shard(&initiator.0)).insert(initiator.0, fresh.secret.clone());
                }
                true
            }
            _ => self.remember(keys, initiator),
        }
    }

    /// Drop `initiator`'s entry (its secret is zeroized once no reader holds it).
    pub fn forget(&self, initiator: &PublicKey) {
        lock(self.shard(&initiator.0)).remove(&initiator.0);
    }

    /// The cached secret for `initiator`, marking it used; None on a miss or when
    /// `keys` is not the responder key the cache was built for.
    pub(super) fn get(
        &self,
        keys: &ResponderKeys,
        initiator: &PublicKey,
    ) -> Option<Arc<SharedSecret>> {
        if keys.public != self.responder {
            return None;
        }
        let mut shard = lock(self.shard(&initiator.0));
        let slot = *shard.index.get(&initiator.0)?;
        let entry = shard.slots.get_mut(slot)?;
        entry.referenced = true;
        Some(Arc::clone(&entry.secret))
    }

    fn shard(&self, initiator: &[u8; 32]) -> &Mutex<Shard> {
        // Public keys are uniformly distributed and only vouched-for keys are
        // inserted, so one byte spreads them evenly enough.
        &self.shards[usize::from(initiator[0]) % SHARDS]
    }
}

impl std::fmt::Debug for StaticStaticCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("StaticStaticCache")
            .field("responder", &PublicKey(self.responder))
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A shard's state is consistent between statements, so a panic elsewhere while
/// holding the lock leaves nothing half-done: keep using it.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    fn insert(&mut self, initiator: [u8; 32], secret: Arc<SharedSecret>) {
        if let Some(&slot) = self.index.get(&initiator) {
            // Another worker remembered it while we computed: keep theirs.
            if let Some(entry) = self.slots.get_mut(slot) {
                entry.referenced = true;
            }
            return;
        }
        if self.capacity == 0 {
            return;
        }
        let fresh = Slot {
            initiator,
            secret,
            // A new entry starts unreferenced: it survives until the hand comes round,
            // and longer only if it is used by then.
            referenced: false,
        };
        if self.slots.len() < self.capacity {
            self.index.insert(initiator, self.slots.len());
            self.slots.push(fresh);
            return;
        }
        let victim = self.advance_hand();
        if let Some(old) = self.slots.get_mut(victim) {
            self.index.remove(&old.initiator);
            // Dropping the old Arc zeroizes its secret unless a reader still holds it.
            *old = fresh;
            self.index.insert(initiator, victim);
        }
    }

    /// CLOCK: the first slot from the hand whose referenced bit is clear, clearing
    /// bits on the way; the hand ends just past it. Terminates within two sweeps.
    fn advance_hand(&mut self) -> usize {
        loop {
            let slot = self.hand % self.slots.len();
            self.hand = (slot + 1) % self.slots.len();
            match self.slots.get_mut(slot) {
                Some(entry) if entry.referenced => entry.referenced = false,
                _ => return slot,
            }
        }
    }

    fn remove(&mut self, initiator: &[u8; 32]) {
        let Some(slot) = self.index.remove(initiator) else {
            return;
        };
        // Keep slots dense: move the last one into the hole.
        self.slots.swap_remove(slot);
        if let Some(moved) = self.slots.get(slot) {
            self.index.insert(moved.initiator, slot);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initiator(n: u8, shard: u8) -> PublicKey {
        // First byte picks the shard; the rest makes it a distinct (valid) point.
        let mut private = [n; 32];
        private[0] = shard;
        let mut key = DhPublic::from(&x25519_dalek::StaticSecret::from(private)).to_bytes();
        key[0] = shard;
        PublicKey(key)
    }

    /// Keys landing in shard 0, so eviction within one shard is observable.
    fn same_shard(n: u8) -> PublicKey {
        initiator(n, 0)
    }

    #[test]
    fn remembers_and_forgets() {
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 64);
        let k = same_shard(1);
        assert!(!cache.contains(&k));
        assert!(cache.remember(&keys, k));
        assert!(cache.contains(&k));
        assert_eq!(cache.len(), 1);
        assert!(cache.remember(&keys, k), "second remember is a hit");
        assert_eq!(cache.len(), 1);
        cache.forget(&k);
        assert!(!cache.contains(&k));
        assert!(cache.is_empty());
    }

    #[test]
    fn cached_secret_is_the_diffie_hellman() {
        let keys = ResponderKeys::new([2; 32]);
        let cache = StaticStaticCache::new(&keys, 16);
        let k = same_shard(3);
        cache.remember(&keys, k);
        let expected = keys.private.diffie_hellman(&DhPublic::from(k.0));
        let got = cache.get(&keys, &k).expect("cached");
        assert_eq!(got.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn other_responder_key_neither_fills_nor_reads() {
        let keys = ResponderKeys::new([1; 32]);
        let other = ResponderKeys::new([2; 32]);
        let cache = StaticStaticCache::new(&keys, 16);
        let k = same_shard(4);
        assert!(!cache.remember(&other, k));
        assert!(cache.is_empty());
        cache.remember(&keys, k);
        assert!(cache.get(&other, &k).is_none());
    }

    #[test]
    fn low_order_key_is_not_cached() {
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 16);
        assert!(!cache.remember(&keys, PublicKey([0; 32])));
        assert!(cache.is_empty());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 0);
        assert_eq!(cache.capacity(), 0);
        assert!(!cache.remember(&keys, same_shard(1)));
        assert!(cache.is_empty());
    }

    #[test]
    fn clock_evicts_an_unused_entry_before_a_used_one() {
        let keys = ResponderKeys::new([1; 32]);
        // 2 slots per shard.
        let cache = StaticStaticCache::new(&keys, 2 * SHARDS);
        let (a, b, c) = (same_shard(1), same_shard(2), same_shard(3));
        cache.remember(&keys, a);
        cache.remember(&keys, b);
        // a is used, b is not: inserting c evicts b.
        assert!(cache.get(&keys, &a).is_some());
        cache.remember(&keys, c);
        assert!(cache.contains(&a));
        assert!(!cache.contains(&b));
        assert!(cache.contains(&c));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn stays_within_capacity_under_many_keys() {
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 20);
        assert_eq!(cache.capacity(), 32, "rounded up to whole shards");
        for n in 0..40u8 {
            cache.remember(&keys, same_shard(n));
            assert!(cache.len() <= 2, "one shard holds at most 2");
        }
        for n in 0..40u8 {
            cache.remember(&keys, initiator(n, n.wrapping_mul(7)));
        }
        assert!(cache.len() <= cache.capacity());
    }

    #[test]
    fn forget_keeps_the_index_consistent() {
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 4 * SHARDS);
        let ks: Vec<_> = (1..=4).map(same_shard).collect();
        for k in &ks {
            cache.remember(&keys, *k);
        }
        cache.forget(&ks[0]);
        for k in &ks[1..] {
            let expected = keys.private.diffie_hellman(&DhPublic::from(k.0));
            let got = cache.get(&keys, k).expect("still cached");
            assert_eq!(got.as_bytes(), expected.as_bytes());
        }
        cache.remember(&keys, ks[0]);
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn is_shareable_between_threads() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<StaticStaticCache>();
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 64);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let (cache, keys) = (&cache, &keys);
                s.spawn(move || {
                    for n in 0..8u8 {
                        cache.remember(keys, initiator(n, n % 3));
                        let _ = cache.get(keys, &initiator(n, t));
                    }
                });
            }
        });
        assert_eq!(cache.len(), 8);
    }

    #[test]
    fn debug_hides_secrets() {
        let keys = ResponderKeys::new([1; 32]);
        let cache = StaticStaticCache::new(&keys, 16);
        cache.remember(&keys, same_shard(9));
        let shown = format!("{cache:?}");
        assert!(shown.contains("len: 1"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
