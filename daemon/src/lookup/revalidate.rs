//! Revocation: installed peers whose cached config has expired are asked about again;
//! a 404 removes them (and the negative entry keeps them out).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Lookup, Revalidation};
use crate::errors::Causes;
use crate::install::{InstallError, InstallQueue, RemovalReason};

/// Every `every`, revalidate the installed peers whose cache entry expired.
pub async fn revalidate_loop(
    lookup: Arc<Lookup>,
    queue: InstallQueue,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticks = super::Every::new(every);
    while ticks.tick(&cancel).await {
        let now = SystemTime::now();
        let expired = match lookup.expired(now).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %Causes(&e), "listing expired cache entries failed");
                continue;
            }
        };
        for key in expired.into_iter().filter(|k| queue.is_installed(k)) {
            if cancel.is_cancelled() {
                return;
            }
            match lookup.revalidate(key, now).await {
                Revalidation::Revoked => {
                    tracing::info!(peer = %key, "peer revoked by the control plane; removing");
                    match queue.remove(vec![key], RemovalReason::Revoked).await {
                        Ok(_) => {}
                        Err(InstallError::WorkerGone) => return,
                        Err(e) => {
                            tracing::warn!(peer = %key, error = %Causes(&e), "removing a revoked peer failed")
                        }
                    }
                }
                Revalidation::StillValid(_) => {}
                Revalidation::Unknown => {
                    tracing::debug!(peer = %key, "revalidation inconclusive; keeping peer")
                }
            }
        }
    }
}
