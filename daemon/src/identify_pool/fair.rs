//! The unknown lane's queue, fair across source networks: one sub-queue per network
//! (/24, /64), served round robin, with a bound per network and a bound on the total.
//! Without it a flood from a few networks fills the lane and a new network's first
//! contact (a legitimate client's first initiation comes from an address the gateway
//! has never seen) is dropped with the flood. With it:
//!
//! - service: every network with something waiting gets one initiation identified per
//!   round, so a first contact waits behind at most one initiation per other active
//!   network, however deep their queues are (deficit round robin with a quantum of one:
//!   every initiation in this lane costs the same two X25519, so plain round robin is
//!   the deficit form);
//! - room: a network may hold at most `per_source` waiting initiations, and when the
//!   total is full a newcomer from a network holding fewer than the longest queue
//!   displaces the oldest initiation of the longest queue instead of being dropped;
//! - age: an initiation that waited longer than `max_wait` is handed back as expired
//!   (by then its client has sent a newer one), never identified.
//!
//! Pure: no locks, no clock (every call takes the time), no knowledge of what is queued.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairSettings {
    /// Items waiting at most, over all networks (at least 1).
    pub total: usize,
    /// Items one network may have waiting at most (at least 1).
    pub per_source: usize,
    /// Items older than this are handed back as expired instead of served.
    pub max_wait: Duration,
}

/// What `push` did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued; nothing else moved.
    Queued,
    /// Queued, and to make room this (the oldest item of the longest queue) was dropped.
    Displaced(T),
    /// Not queued: its network already has `per_source` waiting, or the queue is full and
    /// no network holds more than this one would.
    Refused(T),
}

/// What `pop` hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Serve this one.
    Ready(T),
    /// This one waited longer than `max_wait`: drop it (and call `pop` again).
    Expired(T),
}

/// Per-network FIFO sub-queues served round robin.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    settings: FairSettings,
    queues: HashMap<K, VecDeque<(Instant, T)>>,
    /// Networks with something waiting, in serving order (each appears once).
    turn: VecDeque<K>,
    len: usize,
}

impl<K: Copy + Eq + Hash, T> FairQueue<K, T> {
    pub fn new(settings: FairSettings) -> Self {
        FairQueue {
            settings: FairSettings {
                total: settings.total.max(1),
                per_source: settings.per_source.max(1),
                max_wait: settings.max_wait,
            },
            queues: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Networks with something waiting.
    pub fn networks(&self) -> usize {
        self.turn.len()
    }

    /// Items `net` has waiting.
    pub fn waiting(&self, net: &K) -> usize {
        self.queues.get(net).map_or(0, VecDeque::len)
    }

    /// Queue `item` from `net`, captured at `now`.
    pub fn push(&mut self, net: K, item: T, now: Instant) -> Pushed<T> {
        let mine = self.waiting(&net);
        if mine >= self.settings.per_source {
            return Pushed::Refused(item);
        }
        let mut displaced = None;
        if self.len >= self.settings.total {
            // Longest-queue drop: only a network holding at least two more than this one
            // would after the push gives way, so two networks never trade places forever.
            let longest = self
                .queues
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(k, q)| (*k, q.len()));
            match longest {
                Some((victim, n)) if n > mine + 1 => {
                    displaced = self.take_front(victim).map(|(_, t)| t);
                }
                _ => return Pushed::Refused(item),
            }
        }
        let q = self.queues.entry(net).or_default();
        if q.is_empty() {
            self.turn.push_back(net);
        }
        q.push_back((now, item));
        self.len += 1;
        match displaced {
            Some(t) => Pushed::Displaced(t),
            None => Pushed::Queued,
        }
    }

    /// The next item in round-robin order across networks, or `None` if nothing waits.
    pub fn pop(&mut self, now: Instant) -> Option<Next<T>> {
        let net = self.turn.pop_front()?;
        let (queued_at, item) = self.take_front_of_turn(net)?;
        if now.saturating_duration_since(queued_at) > self.settings.max_wait {
            Some(Next::Expired(item))
        } else {
            Some(Next::Ready(item))
        }
    }

    /// Front item of `net`, which has just left `turn`; it rejoins at the back if it
    /// still has items waiting.
    fn take_front_of_turn(&mut self, net: K) -> Option<(Instant, T)> {
        let q = self.queues.get_mut(&net)?;
        let front = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&net);
        } else {
            self.turn.push_back(net);
        }
        if front.is_some() {
            self.len -= 1;
        }
        front
    }

    /// Front item of `net` wherever it is in `turn` (it leaves `turn` if emptied).
    fn take_front(&mut self, net: K) -> Option<(Instant, T)> {
        let q = self.queues.get_mut(&net)?;
        let front = q.pop_front()?;
        self.len -= 1;
        if q.is_empty() {
            self.queues.remove(&net);
            self.turn.retain(|k| *k != net);
        }
        Some(front)
    }

    /// Empty the queue (shutdown), oldest network turn first.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(net) = self.turn.pop_front() {
            if let Some(q) = self.queues.remove(&net) {
                out.extend(q.into_iter().map(|(_, t)| t));
            }
        }
        self.len = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(total: usize, per_source: usize) -> FairSettings {
        FairSettings {
            total,
            per_source,
            max_wait: Duration::from_secs(5),
        }
    }

    fn ready<T>(n: Option<Next<T>>) -> T {
        match n {
            Some(Next::Ready(t)) => t,
            _ => panic!("expected a ready item"),
        }
    }

    #[test]
    fn networks_are_served_in_turn_whatever_their_depth() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(settings(100, 100));
        for i in 0..50 {
            assert_eq!(q.push('f', i, t0), Pushed::Queued);
        }
        assert_eq!(q.push('n', 1000, t0), Pushed::Queued);
        assert_eq!(ready(q.pop(t0)), 0);
        assert_eq!(
            ready(q.pop(t0)),
            1000,
            "the newcomer waits one turn, not 50"
        );
        assert_eq!(ready(q.pop(t0)), 1);
        assert_eq!(q.networks(), 1);
    }

    #[test]
    fn a_network_cannot_hold_more_than_its_share() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(settings(100, 3));
        for i in 0..3 {
            assert_eq!(q.push(1u8, i, t0), Pushed::Queued);
        }
        assert_eq!(q.push(1u8, 3, t0), Pushed::Refused(3));
        assert_eq!(q.push(2u8, 4, t0), Pushed::Queued);
    }

    #[test]
    fn a_full_queue_makes_room_for_a_new_network_from_the_longest() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(settings(4, 4));
        for i in 0..4 {
            q.push(1u8, i, t0);
        }
        assert_eq!(
            q.push(2u8, 10, t0),
            Pushed::Displaced(0),
            "oldest of the longest"
        );
        assert_eq!(q.push(2u8, 11, t0), Pushed::Displaced(1));
        // Now 2 and 2: nobody is longer than the newcomer would be.
        assert_eq!(q.push(2u8, 12, t0), Pushed::Refused(12));
        // Two longest (2 each): the oldest of either goes.
        let displaced = q.push(3u8, 20, t0);
        assert!(
            matches!(displaced, Pushed::Displaced(2) | Pushed::Displaced(10)),
            "{displaced:?}"
        );
        assert_eq!(q.len(), 4);
    }

    #[test]
    fn old_items_come_out_expired() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(settings(10, 10));
        q.push(1u8, 'a', t0);
        q.push(1u8, 'b', t0 + Duration::from_secs(3));
        let later = t0 + Duration::from_secs(6);
        assert_eq!(q.pop(later), Some(Next::Expired('a')));
        assert_eq!(q.pop(later), Some(Next::Ready('b')));
        assert_eq!(q.pop(later), None);
        assert!(q.is_empty());
    }

    #[test]
    fn drain_returns_everything() {
        let t0 = Instant::now();
        let mut q = FairQueue::new(settings(10, 10));
        for i in 0..6u8 {
            q.push(i % 3, i, t0);
        }
        let mut all = q.drain();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        assert!(q.is_empty());
        assert_eq!(q.pop(t0), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(0u8..6).prop_map(Op::Push), Just(Op::Pop)]
    }

    proptest! {
        /// Whatever the sequence: bounds hold, nothing is lost or duplicated (every item
        /// pushed comes out exactly once: served, displaced, refused or drained), and each
        /// network's items come out in order.
        #[test]
        fn bounded_lossless_ordered_and_fair(
            ops in proptest::collection::vec(op(), 0..400),
            total in 1usize..12,
            per_source in 1usize..6,
        ) {
            let t0 = Instant::now();
            let mut q = FairQueue::new(settings(total, per_source));
            let mut next_id = 0u32;
            let mut out = Vec::new();
            let mut last_served: HashMap<u8, u32> = HashMap::new();
            for op in ops {
                match op {
                    Op::Push(net) => {
                        let id = next_id;
                        next_id += 1;
                        match q.push(net, (net, id), t0) {
                            Pushed::Queued => {}
                            Pushed::Displaced(t) | Pushed::Refused(t) => out.push(t),
                        }
                    }
                    Op::Pop => {
                        if let Some(Next::Ready((net, id)) | Next::Expired((net, id))) = q.pop(t0) {
                            if let Some(prev) = last_served.insert(net, id) {
                                prop_assert!(prev < id, "per-network FIFO");
                            }
                            out.push((net, id));
                        }
                    }
                }
                prop_assert!(q.len() <= total);
                prop_assert!(q.networks() <= q.len());
                for net in 0..6u8 {
                    prop_assert!(q.waiting(&net) <= per_source);
                }
            }
            out.extend(q.drain());
            let mut ids: Vec<u32> = out.iter().map(|(_, id)| *id).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (0..next_id).collect::<Vec<_>>());
        }

        /// A network that starts waiting is served within one turn of every network
        /// already waiting, however long their queues (pushes by others in between
        /// included).
        #[test]
        fn a_newcomer_waits_at_most_one_turn_per_active_network(
            depths in proptest::collection::vec(1usize..20, 1..8),
            pops_before in 0usize..10,
        ) {
            let t0 = Instant::now();
            let mut q = FairQueue::new(settings(1000, 1000));
            for (net, &d) in depths.iter().enumerate() {
                for i in 0..d {
                    q.push(net as u8, (net as u8, i), t0);
                }
            }
            for _ in 0..pops_before {
                q.pop(t0);
            }
            let active = q.networks();
            prop_assert_eq!(q.push(99u8, (99, 0), t0), Pushed::Queued);
            let mut waited = 0;
            loop {
                match q.pop(t0) {
                    Some(Next::Ready((99, _))) => break,
                    Some(_) => waited += 1,
                    None => prop_assert!(false, "newcomer lost"),
                }
            }
            prop_assert!(waited <= active, "waited {} with {} active", waited, active);
        }
    }
}
