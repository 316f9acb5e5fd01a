//! Legacy push: publish each newly registered peer on NATS core (at-most-once, as production did).

use super::stats::Stats;
use super::store::PeerDoc;

/// A connected NATS client and the subject peer documents go to.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    subject: String,
}

#[derive(Debug, thiserror::Error)]
#[error("connecting to NATS at {url}")]
pub struct NatsConnectError {
    url: String,
    #[source]
    source: async_nats::ConnectError,
}

impl Publisher {
    pub async fn connect(url: &str, subject: &str) -> Result<Self, NatsConnectError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|source| NatsConnectError {
                url: url.to_owned(),
                source,
            })?;
        Ok(Publisher {
            client,
            subject: subject.to_owned(),
        })
    }

    /// Publishes every document, counting the ones handed to NATS. Failures are logged and dropped:
    /// that is exactly the at-most-once behaviour the testbed reproduces.
    pub async fn publish_all(&self, docs: &[PeerDoc], stats: &Stats) {
        let mut sent = 0;
        for doc in docs {
            let payload = match serde_json::to_vec(doc) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "serialising peer document");
                    continue;
                }
            };
            match self
                .client
                .publish(self.subject.clone(), payload.into())
                .await
            {
                Ok(()) => sent += 1,
                Err(e) => tracing::warn!(error = %e, "NATS publish failed; message lost"),
            }
        }
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "NATS flush failed");
        }
        stats.record_published(sent);
    }
}
