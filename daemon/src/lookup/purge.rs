//! Keeps the negative cache and the replay table bounded: every `every`, expired
//! negative entries are deleted, then the soonest-expiring ones beyond `cap`, and a
//! bounded batch of replay rows whose key has no positive entry (rows older versions
//! wrote for every initiation, or left by revoked keys). Failures are counted and
//! retried at the next tick: a full or locked disk must not stop the daemon.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::errors::Causes;
use crate::metrics::{self, Metrics};
use crate::store::SharedStore;

/// Replay rows deleted per tick at most, so one tick holds the store lock briefly.
const ORPHAN_REPLAY_BATCH: usize = 10_000;

/// Purge every `every` until cancelled.
pub async fn purge_loop(
    store: SharedStore,
    every: Duration,
    cap: usize,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut ticks = super::Every::new(every);
    while ticks.tick(&cancel).await {
        let now = SystemTime::now();
        let purged = store
            .call(move |s| {
                let negative = s.purge_negative(now, cap)?;
                let replay = s.purge_orphan_replay(ORPHAN_REPLAY_BATCH)?;
                Ok((negative, replay))
            })
            .await;
        match purged {
            Ok((negative, replay)) => {
                metrics.negative_purged.inc_by(negative as u64);
                if negative + replay > 0 {
                    tracing::debug!(negative, replay, "purged expired cache rows");
                }
            }
            Err(e) => {
                metrics::count_store_error(&metrics, "purge");
                tracing::warn!(error = %Causes(&e), "purging the negative cache failed; retrying next tick");
            }
        }
    }
}
