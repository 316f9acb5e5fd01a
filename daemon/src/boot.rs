//! Boot policy: `jit` starts empty and is ready at once; `preload` installs every
//! stored peer before reporting ready (the legacy behaviour whose reload cost the
//! testbed measures).

use std::time::{Duration, Instant};

use crate::install::{InstallError, InstallQueue};
use crate::store::{SharedStore, StoreCallError};

/// What boot did, for the log line and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    pub peers_installed: usize,
    pub took: Duration,
}

/// What failed during boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("reading stored peers failed")]
    Store(#[source] StoreCallError),
    #[error("installing stored peers failed")]
    Install(#[source] InstallError),
}

/// Install every peer stored in the database (preload boot).
pub async fn preload(store: &SharedStore, queue: &InstallQueue) -> Result<BootReport, BootError> {
    let start = Instant::now();
    let peers = store
        .call(|store| store.all_peers())
        .await
        .map_err(BootError::Store)?;
    let count = peers.len();
    if count > 0 {
        queue
            .install_many(peers)
            .await
            .map_err(BootError::Install)?;
    }
    Ok(BootReport {
        peers_installed: count,
        took: start.elapsed(),
    })
}
