//! Role-inversion initiations whose answer the data plane refused. Under load, wireguard-go
//! (and the kernel) demand mac2 on every handshake message, so a client that never got a
//! cookie answers the gateway's initiation without one: the data plane sends it a cookie
//! reply and drops the response, and the gateway's own retransmit comes only after
//! WireGuard's REKEY_TIMEOUT, 5 s. But from that cookie reply on the client *has* a cookie,
//! so a second initiation at once is answered with a valid mac2 and passes. This watch sees
//! the cookie replies leaving the data plane (`feedback`), matches them to the endpoints the
//! gateway has just initiated to, and names the peers to initiate to again.
//!
//! The second initiation waits [`REFUSAL_RETRY_DELAY`] so that the cookie reply reaches the
//! client first: sent at once, it left the gateway within a millisecond of the cookie reply,
//! and on a path with 1 ms of jitter the client read it first and answered it without mac2
//! again (storm runs' event logs: the early clients' second responses were refused too, and
//! those clients waited for the 5 s retransmit). A refusal is retried once per initiation.
//!
//! A cookie reply is also what a client's *own* initiation gets under load. Those carry the
//! client's sender index of that initiation as their receiver index; the pipeline hands the
//! install worker each captured initiation's index, so such replies are told apart and do
//! not cause a second initiation (the client's response to ours may still pass).
//!
//! Pure: time is an argument; bounded: entries live `REFUSAL_WINDOW`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dataplane::PeerWrite;

/// How long after the gateway's initiation a cookie reply to its endpoint still counts as
/// the refusal of that client's response: past this the data plane retransmits itself.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(5);

/// How long a refused client's next initiation waits after the cookie reply that refused it,
/// so that the cookie overtakes nothing: longer than a path's jitter, and 1/500 of the 5 s
/// retransmit it saves.
pub const REFUSAL_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Most endpoints remembered at once (initiations sent plus client indices), so a storm
/// far beyond any pacing rate cannot grow the watch without bound.
pub const REFUSAL_WATCH_CAPACITY: usize = 65_536;

/// One initiation the gateway sent.
#[derive(Debug, Clone)]
struct Sent {
    write: PeerWrite,
    at: Instant,
    /// Already queued to be initiated again: a second refusal is left to the data plane's
    /// timers. With its cookie in hand the client's next response passes. Measured with up
    /// to 3 retries (`storm`, 5 pairs): retries go ahead of the deferred initiations, so the
    /// extra ones made fresh clients wait past their 5 s retry, and the share connected
    /// within 5 s fell in 3 of the 5 pairs (BENCHMARKS.md, storm fourth round).
    retried: bool,
}

/// The watch's state.
#[derive(Debug, Default)]
pub struct RefusalWatch {
    sent: HashMap<SocketAddr, Sent>,
    /// The sender index of each endpoint's last captured initiation, with when it came.
    client_index: HashMap<SocketAddr, (u32, Instant)>,
    /// Insertion order of both maps, for expiry (an endpoint may appear more than once).
    order: VecDeque<(Instant, SocketAddr)>,
}

impl RefusalWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// The gateway's data plane was told at `now` to initiate to `write`'s endpoint.
    /// `retry`: this is the second initiation, made because of a refusal.
    pub fn initiated(&mut self, write: &PeerWrite, retry: bool, now: Instant) {
        let Some(endpoint) = write.endpoint else {
            return;
        };
        self.expire(now);
        if self.order.len() >= REFUSAL_WATCH_CAPACITY {
            return;
        }
        self.sent.insert(
            endpoint,
            Sent {
                write: write.clone(),
                at: now,
                retried: retry,
            },
        );
        self.order.push_back((now, endpoint));
    }

    /// The client at `endpoint` sent an initiation with `sender_index` (captured at `now`):
    /// a cookie reply carrying that index answers it, not the gateway's initiation.
    pub fn client_initiation(&mut self, endpoint: SocketAddr, sender_index: u32, now: Instant) {
        self.expire(now);
        if self.order.len() >= REFUSAL_WATCH_CAPACITY {
            return;
        }
        self.client_index.insert(endpoint, (sender_index, now));
        self.order.push_back((now, endpoint));
    }

    /// The data plane sent a cookie reply with `receiver_index` to `endpoint` at `now`.
    /// Returns the peer to initiate to again (after [`REFUSAL_RETRY_DELAY`]), at most once
    /// per initiation.
    pub fn cookie_reply(
        &mut self,
        endpoint: SocketAddr,
        receiver_index: u32,
        now: Instant,
    ) -> Option<PeerWrite> {
        self.expire(now);
        if self
            .client_index
            .get(&endpoint)
            .is_some_and(|(index, _)| *index == receiver_index)
        {
            return None;
        }
        let sent = self.sent.get_mut(&endpoint)?;
        if sent.retried || now.saturating_duration_since(sent.at) > REFUSAL_WINDOW {
            return None;
        }
        sent.retried = true;
        Some(sent.write.clone())
    }

    /// Forget what is older than the window. Amortised O(1): the order queue is in time
    /// order, and an entry is removed from a map only if it is that entry's latest record.
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, endpoint)) = self.order.front() {
            if now.saturating_duration_since(at) <= REFUSAL_WINDOW {
                break;
            }
            self.order.pop_front();
            if self.sent.get(&endpoint).is_some_and(|s| s.at == at) {
                self.sent.remove(&endpoint);
            }
            if self
                .client_index
                .get(&endpoint)
                .is_some_and(|(_, seen)| *seen == at)
            {
                self.client_index.remove(&endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{PeerConfig, PublicKey};
    use proptest::prelude::*;

    fn write(n: u8) -> PeerWrite {
        PeerWrite {
            config: PeerConfig {
                public_key: PublicKey([n; 32]),
                allowed_ips: vec![format!("100.64.0.{n}/32").parse().unwrap()],
                preshared_key: None,
            },
            endpoint: Some(endpoint(n)),
        }
    }

    fn endpoint(n: u8) -> SocketAddr {
        format!("198.18.1.{n}:40000").parse().unwrap()
    }

    #[test]
    fn a_refused_response_is_initiated_again_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = RefusalWatch::new();
        w.client_initiation(endpoint(1), 77, t0);
        w.initiated(&write(1), false, t0);
        // The cookie reply answers the client's response (another index): initiate again.
        let again = w.cookie_reply(endpoint(1), 1234, ms(30));
        assert_eq!(again.map(|w| w.config.public_key), Some(PublicKey([1; 32])));
        // A second cookie before that retry went out queues nothing more.
        assert!(w.cookie_reply(endpoint(1), 1234, ms(31)).is_none());
        w.initiated(&write(1), true, ms(40));
        // A refusal of the retry is left to the data plane's timers...
        assert!(w.cookie_reply(endpoint(1), 1235, ms(1_000)).is_none());
        // ...until the gateway initiates afresh (a new paced initiation may be retried again).
        w.initiated(&write(1), false, ms(2_000));
        assert!(w.cookie_reply(endpoint(1), 1236, ms(2_030)).is_some());
    }

    #[test]
    fn a_cookie_for_the_clients_own_initiation_is_not_a_refusal() {
        let t0 = Instant::now();
        let mut w = RefusalWatch::new();
        w.client_initiation(endpoint(2), 77, t0);
        w.initiated(&write(2), false, t0 + Duration::from_millis(5));
        assert!(w
            .cookie_reply(endpoint(2), 77, t0 + Duration::from_millis(900))
            .is_none());
        // ...and does not use up the one retry.
        assert!(w
            .cookie_reply(endpoint(2), 78, t0 + Duration::from_millis(950))
            .is_some());
    }

    #[test]
    fn cookies_to_endpoints_never_initiated_to_or_too_late_are_ignored() {
        let t0 = Instant::now();
        let mut w = RefusalWatch::new();
        assert!(w.cookie_reply(endpoint(3), 1, t0).is_none());
        w.initiated(&write(3), false, t0);
        assert!(w
            .cookie_reply(
                endpoint(3),
                1,
                t0 + REFUSAL_WINDOW + Duration::from_millis(1)
            )
            .is_none());
        assert!(w.sent.is_empty(), "expired entries are forgotten");
    }

    #[test]
    fn a_retry_the_watch_did_not_queue_is_never_retried() {
        let t0 = Instant::now();
        let mut w = RefusalWatch::new();
        w.initiated(&write(4), true, t0);
        assert!(w.cookie_reply(endpoint(4), 9, t0).is_none());
    }

    #[test]
    fn peers_without_an_endpoint_are_not_watched() {
        let mut w = RefusalWatch::new();
        let mut no_endpoint = write(5);
        no_endpoint.endpoint = None;
        w.initiated(&no_endpoint, false, Instant::now());
        assert!(w.sent.is_empty());
    }

    proptest! {
        /// Whatever the sequence, the watch stays within its capacity, forgets everything
        /// after the window, and never answers a cookie to an endpoint it was not told of.
        #[test]
        fn bounded_and_only_for_known_endpoints(
            events in proptest::collection::vec((0u8..3, 0u8..20, 0u32..4, 0u64..8_000), 0..300)
        ) {
            let t0 = Instant::now();
            let mut w = RefusalWatch::new();
            let mut told = std::collections::HashSet::new();
            let mut now = t0;
            for (kind, n, index, step_ms) in events {
                now += Duration::from_millis(step_ms % 200);
                match kind {
                    0 => { w.initiated(&write(n), false, now); told.insert(endpoint(n)); }
                    1 => w.client_initiation(endpoint(n), index, now),
                    _ => {
                        if let Some(again) = w.cookie_reply(endpoint(n), index, now) {
                            prop_assert!(told.contains(&endpoint(n)));
                            prop_assert_eq!(again.endpoint, Some(endpoint(n)));
                        }
                    }
                }
                prop_assert!(w.order.len() <= REFUSAL_WATCH_CAPACITY);
            }
            w.expire(now + REFUSAL_WINDOW + Duration::from_millis(1));
            prop_assert!(w.sent.is_empty() && w.client_index.is_empty() && w.order.is_empty());
        }
    }
}
