//! Legacy push mode's input: a NATS core subscription on which the control plane
//! publishes each new peer. Core NATS is at-most-once: a message published while this
//! gateway is down, reconnecting or not yet subscribed is simply lost. That is the
//! baseline's flaw the testbed measures, so there is deliberately no JetStream here.
//! `push_loop` installs and stores what arrives.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::addresses::claim;
use crate::errors::Causes;
use crate::install::{InstallError, InstallQueue};
use crate::lookup::Lookup;
use crate::metrics::{self, Metrics};
use crate::peer::{AddressPolicy, PeerConfig, PeerDocument, PeerRejected, PublicKey};
use crate::store::{PeerSource, SharedStore};

/// One message from the push subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushMessage {
    /// A peer document (not yet validated: the daemon checks it against its prefix).
    Peer(PeerDocument),
    /// The payload is not a peer document; the string says why.
    BadJson(String),
}

/// Why the subscription could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to NATS subject {subject:?}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
    #[error("cannot send the NATS subscription")]
    Flush(#[source] async_nats::client::FlushError),
}

/// A live subscription. async-nats reconnects on its own; messages published while
/// it is disconnected are lost (at-most-once).
pub struct PushSubscriber {
    /// Kept so the connection lives exactly as long as the subscriber.
    _client: async_nats::Client,
    subscriber: async_nats::Subscriber,
}

impl PushSubscriber {
    /// Connect to `url` (e.g. `nats://198.18.0.1:4222`) and subscribe to `subject`.
    /// Fails at once if the server is unreachable, so a misconfigured gateway does not
    /// start.
    pub async fn connect(url: &str, subject: &str) -> Result<PushSubscriber, PushError> {
        let client = async_nats::ConnectOptions::new()
            .name("jitwgd")
            .connect(url)
            .await
            .map_err(|source| PushError::Connect {
                url: url.to_string(),
                source,
            })?;
        let subscriber = client
            .subscribe(subject.to_string())
            .await
            .map_err(|source| PushError::Subscribe {
                subject: subject.to_string(),
                source,
            })?;
        // Put the SUB on the wire now rather than with the next write.
        client.flush().await.map_err(PushError::Flush)?;
        Ok(PushSubscriber {
            _client: client,
            subscriber,
        })
    }

    /// The next message, or `None` once the subscription has ended for good.
    pub async fn next(&mut self) -> Option<PushMessage> {
        let message = self.subscriber.next().await?;
        Some(decode(&message.payload))
    }

    /// Waits for the next message, then takes up to `max - 1` more that have already
    /// arrived, without waiting for them: a burst of publications (a bulk registration)
    /// becomes one store transaction and one data-plane write instead of one each.
    /// `None` once the subscription has ended for good.
    pub async fn next_batch(&mut self, max: usize) -> Option<Vec<PushMessage>> {
        let first = self.next().await?;
        let mut batch = vec![first];
        while batch.len() < max.max(1) {
            match self.subscriber.next().now_or_never() {
                Some(Some(message)) => batch.push(decode(&message.payload)),
                // Ended: hand over what we have; the next call returns `None`.
                Some(None) | None => break,
            }
        }
        Some(batch)
    }
}

/// Decode one payload. Pure, so every malformed input is testable without a server.
pub fn decode(payload: &[u8]) -> PushMessage {
    match serde_json::from_slice::<PeerDocument>(payload) {
        Ok(doc) => PushMessage::Peer(doc),
        Err(e) => PushMessage::BadJson(format!("{} bytes: {e}", payload.len())),
    }
}

/// What the push loop needs besides its subscription.
pub struct PushContext {
    pub store: SharedStore,
    pub queue: InstallQueue,
    pub metrics: Arc<Metrics>,
    /// Which allowed IPs a pushed peer may carry: `--allowed-prefix`, host routes unless
    /// widened. A NATS publisher is trusted no more than the control plane's API.
    pub addresses: AddressPolicy,
    /// Asks the control plane about a peer whose address a pushed peer overlaps (when an
    /// API is configured); without one an overlap is refused.
    pub lookup: Option<Arc<Lookup>>,
}

/// Peers taken from the subscription at most per store transaction and data-plane write.
const PUSH_BATCH: usize = 512;

/// Legacy push mode: install every peer published on NATS at once and store it (so
/// a preload boot reinstalls it). Messages published while we were down are lost.
/// Messages that arrived together are handled together: one transaction, one write.
pub async fn push_loop(mut sub: PushSubscriber, ctx: PushContext, cancel: CancellationToken) {
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next_batch(PUSH_BATCH) => match m {
                Some(batch) => batch,
                None => {
                    tracing::error!("NATS subscription ended");
                    return;
                }
            },
        };
        let configs: Vec<PeerConfig> = batch
            .into_iter()
            .filter_map(|msg| accept_pushed(msg, &ctx))
            .collect();
        if configs.is_empty() {
            continue;
        }
        let stored = configs.clone();
        let saved = ctx
            .store
            .call(move |store| {
                store.put_peers(&stored, PeerSource::Push, SystemTime::now(), Duration::MAX)
            })
            .await;
        if let Err(e) = saved {
            tracing::warn!(peers = configs.len(), error = %Causes(&e), "storing pushed peers failed");
        }
        let count = configs.len();
        let keys: Vec<PublicKey> = configs.iter().map(|c| c.public_key).collect();
        let installing =
            claim::install_many(ctx.lookup.as_deref(), &ctx.queue, &ctx.metrics, configs);
        match installing.await {
            Ok(_) => {
                for key in &keys {
                    metrics::count_push(&ctx.metrics, "installed");
                    tracing::debug!(peer = %key, "pushed peer installed");
                }
                tracing::info!(peers = count, "pushed peers installed");
            }
            Err(InstallError::WorkerGone) => return,
            Err(e) => {
                tracing::warn!(peers = count, error = %Causes(&e), "installing pushed peers failed")
            }
        }
    }
}

/// A pushed message's peer, if it is one and passes the address policy (counted and
/// logged otherwise).
fn accept_pushed(msg: PushMessage, ctx: &PushContext) -> Option<PeerConfig> {
    match check_pushed(msg, &ctx.addresses) {
        Ok(config) => Some(config),
        Err(PushRefusal::BadJson(why)) => {
            metrics::count_push(&ctx.metrics, "bad_json");
            tracing::warn!(error = %why, "push message is not a peer document");
            None
        }
        Err(PushRefusal::Refused(e)) => {
            metrics::count_push(&ctx.metrics, "refused");
            tracing::warn!(reason = %e, "pushed peer refused");
            None
        }
    }
}

/// Why a pushed message installs nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum PushRefusal {
    BadJson(String),
    Refused(PeerRejected),
}

/// Validates one pushed message against `policy`. Pure.
pub fn check_pushed(msg: PushMessage, policy: &AddressPolicy) -> Result<PeerConfig, PushRefusal> {
    match msg {
        PushMessage::Peer(doc) => doc.validate(None, policy).map_err(PushRefusal::Refused),
        PushMessage::BadJson(why) => Err(PushRefusal::BadJson(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    fn doc(n: u8) -> PeerDocument {
        PeerDocument {
            public_key: crate::peer::PublicKey([n; 32]).to_base64(),
            allowed_ips: vec![format!("100.64.0.{n}/32")],
            preshared_key: None,
        }
    }

    #[test]
    fn decodes_a_peer_document() {
        let json = serde_json::to_vec(&doc(2)).unwrap();
        assert_eq!(decode(&json), PushMessage::Peer(doc(2)));
    }

    #[test]
    fn pushed_peers_are_held_to_the_allowed_prefix_and_host_routes() {
        let policy = AddressPolicy::host_routes("100.64.0.0/10".parse().unwrap());
        let with = |ips: &[&str]| {
            let doc = PeerDocument {
                allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
                ..doc(2)
            };
            check_pushed(PushMessage::Peer(doc), &policy)
        };
        assert!(with(&["100.64.0.2/32"]).is_ok());
        assert!(matches!(
            with(&["10.0.0.2/32"]),
            Err(PushRefusal::Refused(PeerRejected::OutsidePrefix { .. }))
        ));
        assert!(matches!(
            with(&["100.64.0.0/10"]),
            Err(PushRefusal::Refused(PeerRejected::TooWide { .. }))
        ));
        assert!(matches!(
            check_pushed(decode(b"{"), &policy),
            Err(PushRefusal::BadJson(_))
        ));
    }

    #[test]
    fn preshared_key_may_be_absent() {
        let json = br#"{"public_key":"k","allowed_ips":["100.64.0.2/32"]}"#;
        assert!(matches!(decode(json), PushMessage::Peer(d) if d.preshared_key.is_none()));
    }

    #[test]
    fn junk_is_bad_json_with_a_reason() {
        for junk in [
            &b"not json"[..],
            b"{}",
            b"{\"public_key\":1}",
            b"",
            b"\xff\xfe",
        ] {
            match decode(junk) {
                PushMessage::BadJson(why) => assert!(!why.is_empty()),
                other => panic!("{junk:?} decoded as {other:?}"),
            }
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }

    /// A `nats-server` on a free loopback port, killed on drop.
    struct NatsServer {
        child: Child,
        url: String,
    }

    impl NatsServer {
        /// `None` when nats-server is not installed (a failure in CI).
        fn start() -> Option<NatsServer> {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let spawned = Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    jitwg_testsupport::require(&["nats-server"]);
                    return None;
                }
                Err(e) => panic!("cannot start nats-server: {e}"),
            };
            let server = NatsServer {
                child,
                url: format!("nats://127.0.0.1:{port}"),
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "nats-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(server)
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn next_within(sub: &mut PushSubscriber, d: Duration) -> Option<PushMessage> {
        tokio::time::timeout(d, sub.next()).await.ok().flatten()
    }

    /// The server may register our SUB a moment after connect returns: publish `body`
    /// until a copy arrives, and return that copy.
    async fn publish_until_received(
        publisher: &async_nats::Client,
        subject: &'static str,
        sub: &mut PushSubscriber,
        body: Vec<u8>,
    ) -> PushMessage {
        loop {
            publisher
                .publish(subject, body.clone().into())
                .await
                .unwrap();
            publisher.flush().await.unwrap();
            if let Some(m) = next_within(sub, Duration::from_millis(200)).await {
                return m;
            }
        }
    }

    #[tokio::test]
    async fn receives_published_peers_and_flags_junk() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let subject = "jitwg.test.peers";
        let publisher = async_nats::connect(server.url.as_str()).await.unwrap();

        // Published before anyone listens: lost for good (at-most-once). The publisher
        // waits for its own copy so the server has surely handled it.
        let mut own = publisher.subscribe(subject).await.unwrap();
        let lost = serde_json::to_vec(&doc(1)).unwrap();
        publisher.publish(subject, lost.into()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), own.next())
            .await
            .unwrap()
            .unwrap();

        let mut sub = PushSubscriber::connect(&server.url, subject).await.unwrap();

        let wanted = serde_json::to_vec(&doc(2)).unwrap();
        let first = publish_until_received(&publisher, subject, &mut sub, wanted).await;
        assert_eq!(first, PushMessage::Peer(doc(2)), "message 1 must be lost");

        // Drain any extra copies of doc 2, then junk must come through as BadJson.
        publisher
            .publish(subject, "certainly not json".into())
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        let junk = loop {
            match next_within(&mut sub, Duration::from_secs(5)).await {
                Some(PushMessage::Peer(d)) => assert_eq!(d, doc(2)),
                other => break other,
            }
        };
        assert!(matches!(junk, Some(PushMessage::BadJson(_))), "{junk:?}");
    }

    #[tokio::test]
    async fn a_burst_arrives_in_bounded_batches_in_order() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let subject = "jitwg.test.batch";
        let publisher = async_nats::connect(server.url.as_str()).await.unwrap();
        let mut sub = PushSubscriber::connect(&server.url, subject).await.unwrap();
        // Wait until our SUB is live (a probe comes back).
        let probe = serde_json::to_vec(&doc(0)).unwrap();
        publish_until_received(&publisher, subject, &mut sub, probe).await;
        // Drain stray probe copies.
        while next_within(&mut sub, Duration::from_millis(200))
            .await
            .is_some()
        {}

        for n in 1..=50u8 {
            let body = serde_json::to_vec(&doc(n)).unwrap();
            publisher.publish(subject, body.into()).await.unwrap();
        }
        publisher.flush().await.unwrap();
        // Let the burst reach our buffer, so batching has something to take.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut got = Vec::new();
        let mut largest = 0;
        while got.len() < 50 {
            let batch = tokio::time::timeout(Duration::from_secs(5), sub.next_batch(16))
                .await
                .expect("burst delivered")
                .expect("subscription alive");
            assert!((1..=16).contains(&batch.len()), "{}", batch.len());
            largest = largest.max(batch.len());
            got.extend(batch);
        }
        let want: Vec<PushMessage> = (1..=50u8).map(|n| PushMessage::Peer(doc(n))).collect();
        assert_eq!(got, want);
        assert_eq!(
            largest, 16,
            "messages already buffered must be taken together"
        );
    }

    #[tokio::test]
    async fn unreachable_server_fails_at_connect() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("nats://127.0.0.1:{port}");
        let err = PushSubscriber::connect(&url, "jitwg.peers")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(&url), "{err}");
    }
}
