//! The testbed's control plane: a real HTTP server with its own SQLite database that answers the
//! gateway's peer lookups (the API contract in the brief), with injectable latency, errors and
//! outages, request accounting, and the legacy NATS push. It shares no code with the daemon on
//! purpose: it implements the contract independently, so a contract drift shows up in tests.

mod cli;
mod faults;
mod http;
mod publish;
mod stats;
mod store;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use cli::{run_cli, ControlPlaneArgs};
pub use faults::{FaultConfig, LatencyModel, OutageMode, OutageWindow};
pub(crate) use http::carries_bearer;
pub use publish::NatsConnectError;
pub use stats::{StatsSnapshot, ABORTED, PENDING};
pub use store::{is_key_hex, PeerDoc, StoreError};

use faults::FaultState;
use http::AppState;
use store::PeerStore;

/// How to start a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// SQLite database file (created if missing).
    pub db: PathBuf,
    /// NATS server URL and subject for the legacy push; `None` disables publishing.
    pub nats: Option<(String, String)>,
    pub faults: FaultConfig,
    /// Seeds the latency and error-rate draws.
    pub seed: u64,
    /// TLS and the bearer token; the default serves plain HTTP to anyone.
    pub access: Access,
}

/// Who may talk to the control plane, and over what.
#[derive(Clone, Default)]
pub struct Access {
    /// Serve HTTPS with this configuration (`tls::RunPki::server_config`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require `Authorization: Bearer <token>` on every request (401 otherwise).
    pub token: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Access")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("preparing the HTTPS listener")]
    TlsListener(#[source] std::io::Error),
    #[error("control-plane database")]
    Store(#[source] StoreError),
    #[error("database task panicked")]
    StoreTaskPanicked,
    #[error(transparent)]
    Nats(#[from] NatsConnectError),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
}

/// An opened control plane, not yet serving.
pub struct ControlPlane {
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// In-process access to a running control plane (cheap to clone).
#[derive(Clone)]
pub struct ControlPlaneHandle {
    state: Arc<AppState>,
}

impl ControlPlane {
    /// Opens the database and connects to NATS (if configured).
    pub async fn open(cfg: ControlPlaneConfig) -> Result<Self, ControlPlaneError> {
        let db = cfg.db.clone();
        let store = tokio::task::spawn_blocking(move || PeerStore::open(&db))
            .await
            .map_err(|_| ControlPlaneError::StoreTaskPanicked)?
            .map_err(ControlPlaneError::Store)?;
        let publisher = match &cfg.nats {
            Some((url, subject)) => Some(publish::Publisher::connect(url, subject).await?),
            None => None,
        };
        Ok(ControlPlane {
            state: Arc::new(AppState {
                store: Arc::new(Mutex::new(store)),
                faults: Mutex::new(FaultState::new(cfg.faults)),
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(cfg.seed)),
                stats: Default::default(),
                publisher,
                started: tokio::time::Instant::now(),
                token: cfg.access.token.clone(),
            }),
            tls: cfg.access.tls.clone(),
        })
    }

    pub fn handle(&self) -> ControlPlaneHandle {
        ControlPlaneHandle {
            state: self.state.clone(),
        }
    }

    /// Serves HTTP (HTTPS when configured) on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlPlaneError> {
        let router = http::router(self.state);
        let Some(tls) = self.tls else {
            return axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(ControlPlaneError::Serve);
        };
        let listener = listener
            .into_std()
            .map_err(ControlPlaneError::TlsListener)?;
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.graceful_shutdown(Some(Duration::from_secs(1)));
        });
        axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(tls),
        )
        .handle(handle)
        .serve(router.into_make_service())
        .await
        .map_err(ControlPlaneError::Serve)
    }
}

/// Opens a control plane from `cfg` and serves it on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: ControlPlaneConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlPlaneError> {
    ControlPlane::open(cfg)
        .await?
        .serve(listener, shutdown)
        .await
}

impl ControlPlaneHandle {
    /// Lookup accounting so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.stats()
    }

    /// Registers (or replaces) peers in one transaction and publishes the new ones. Returns how many
    /// documents were accepted.
    pub async fn register_many(&self, docs: &[PeerDoc]) -> Result<usize, ControlPlaneError> {
        self.state.register(docs.to_vec()).await
    }

    /// Revokes a peer by key hex; returns whether it existed.
    pub async fn revoke(&self, key_hex: &str) -> Result<bool, ControlPlaneError> {
        let key = key_hex.to_owned();
        self.state.with_store(move |s| s.delete(&key)).await
    }

    /// Number of registered peers.
    pub async fn peer_count(&self) -> Result<u64, ControlPlaneError> {
        self.state.with_store(|s| s.count()).await
    }

    pub fn set_faults(&self, cfg: FaultConfig) {
        self.state.set_faults(cfg);
    }

    /// Starts an outage now, lasting `len` (replaces any outage started by hand).
    pub fn start_outage(&self, len: Duration) {
        self.state.start_outage(len);
    }

    /// Ends an outage started by hand (scheduled windows are unaffected).
    pub fn end_outage(&self) {
        self.state.end_outage();
    }
}

#[cfg(test)]
mod tests;
