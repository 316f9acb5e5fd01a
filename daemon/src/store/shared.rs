//! The one async handle on the peer database. SQLite calls block, so every async caller
//! goes through `SharedStore::call`, which runs the closure on the blocking pool under
//! the store's lock; the lock and the task are dealt with here once, not at each caller.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Recovered, Store, StoreError};
use crate::config::DbCorruption;

/// What failed while using the store from async code.
#[derive(Debug, thiserror::Error)]
pub enum StoreCallError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A thread panicked while holding the store; its state is no longer trusted.
    #[error("peer database lock is poisoned (a thread panicked while using it)")]
    Poisoned,
    #[error("peer database task did not complete")]
    Task(#[source] tokio::task::JoinError),
}

/// Cheap, cloneable async handle on the store.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<Mutex<Store>>,
}

impl SharedStore {
    pub fn new(store: Store) -> Self {
        SharedStore {
            inner: Arc::new(Mutex::new(store)),
        }
    }

    /// Open (or create) the database at `path` on the blocking pool.
    pub async fn open(path: PathBuf) -> Result<Self, StoreCallError> {
        let store = tokio::task::spawn_blocking(move || Store::open(Path::new(&path)))
            .await
            .map_err(StoreCallError::Task)??;
        Ok(SharedStore::new(store))
    }

    /// `open`, answering a failed integrity check with `policy` (`store::open_checked`).
    pub async fn open_checked(
        path: PathBuf,
        policy: DbCorruption,
    ) -> Result<(Self, Recovered), StoreCallError> {
        let (store, how) =
            tokio::task::spawn_blocking(move || super::open_checked(Path::new(&path), policy))
                .await
                .map_err(StoreCallError::Task)??;
        Ok((SharedStore::new(store), how))
    }

    /// Runs `f` on the blocking pool with the store locked.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreCallError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().map_err(|_| StoreCallError::Poisoned)?;
            Ok(f(&mut guard)?)
        })
        .await
        .map_err(StoreCallError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::PublicKey;

    #[tokio::test]
    async fn call_runs_on_the_store_and_passes_its_errors_up_typed() {
        let store = SharedStore::new(Store::open_in_memory().unwrap());
        let count = store.call(|s| s.peer_count()).await.unwrap();
        assert_eq!(count, 0);
        let err = store
            .call(|_| -> Result<(), StoreError> { Err(StoreError::BadRow("x".into())) })
            .await
            .unwrap_err();
        assert!(matches!(err, StoreCallError::Store(StoreError::BadRow(_))));
        assert_eq!(err.to_string(), StoreError::BadRow("x".into()).to_string());
        assert!(!store
            .call(move |s| s.remove_peer(&PublicKey([1; 32])))
            .await
            .unwrap());
    }
}
