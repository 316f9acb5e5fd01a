//! Boot policy: `jit` starts empty and is ready at once; `preload` installs every
//! stored peer before reporting ready (the legacy behaviour whose reload cost the
//! testbed measures).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::install::InstallQueue;
use crate::store::Store;

/// What boot did, for the log line and the metrics.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    pub peers_installed: usize,
    pub took: Duration,
}

/// What failed during boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("reading stored peers failed: {0}")]
    Store(String),
    #[error("installing stored peers failed: {0}")]
    Install(String),
    #[error("the install worker stopped during boot")]
    WorkerGone,
}

/// Install every peer stored in the database (preload boot).
pub async fn preload(
    store: Arc<Mutex<Store>>,
    queue: &InstallQueue,
) -> Result<BootReport, BootError> {
    let start = Instant::now();
    let peers = tokio::task::spawn_blocking(move || {
        let store = store
            .lock()
            .map_err(|_| BootError::Store("store lock poisoned".into()))?;
        store
            .all_peers()
            .map_err(|e| BootError::Store(e.to_string()))
    })
    .await
    .map_err(|e| BootError::Store(e.to_string()))??;
    let count = peers.len();
    if count > 0 {
        queue
            .install_many(peers)
            .await
            .map_err(|_| BootError::WorkerGone)?
            .map_err(BootError::Install)?;
    }
    Ok(BootReport {
        peers_installed: count,
        took: start.elapsed(),
    })
}
