//! The control plane's HTTP surface (axum): the lookup the gateway calls, plus the registration,
//! fault and stats endpoints the driver and tests use.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::faults::{FaultConfig, FaultState, Verdict};
use super::publish::Publisher;
use super::stats::{Stats, StatsSnapshot};
use super::store::{is_key_hex, PeerDoc, PeerStore, StoreError};
use super::ControlPlaneError;

/// Bulk registrations carry thousands of documents; axum's 2 MB default is too small.
const BODY_LIMIT: usize = 256 * 1024 * 1024;

/// Everything the handlers share.
pub(crate) struct AppState {
    /// std Mutex: only locked inside `spawn_blocking`, never across an await.
    pub(crate) store: Arc<Mutex<PeerStore>>,
    pub(crate) faults: Mutex<FaultState>,
    /// Seeded so a run's latency and error draws are reproducible (given the same request order).
    pub(crate) rng: Mutex<ChaCha8Rng>,
    pub(crate) stats: Stats,
    pub(crate) publisher: Option<Publisher>,
    /// Origin for scheduled outage windows.
    pub(crate) started: tokio::time::Instant,
    /// When set, every request must carry `Authorization: Bearer <token>` (else 401).
    pub(crate) token: Option<String>,
}

/// Whether `headers` carry `Authorization: Bearer <token>` (always true when no token is
/// required). The control plane and the shard API guard their routes with the same rule.
pub(crate) fn carries_bearer(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(token) = token else {
        return true;
    };
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| given.as_bytes() == token.as_bytes())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a handler panicked; the data is still consistent enough for a testbed.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppState {
    /// Whether `headers` carry this control plane's bearer token (always, without one).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        carries_bearer(self.token.as_deref(), headers)
    }

    fn verdict(&self) -> Verdict {
        let now = self.started.elapsed();
        let faults = lock(&self.faults);
        let mut rng = lock(&self.rng);
        faults.decide(now, &mut *rng)
    }

    pub(crate) async fn with_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut PeerStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, ControlPlaneError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&store)))
            .await
            .map_err(|_| ControlPlaneError::StoreTaskPanicked)?
            .map_err(ControlPlaneError::Store)
    }

    pub(crate) async fn register(&self, docs: Vec<PeerDoc>) -> Result<usize, ControlPlaneError> {
        let n = docs.len();
        let changed = self.with_store(move |s| s.upsert_many(&docs)).await?;
        if let Some(p) = &self.publisher {
            p.publish_all(&changed, &self.stats).await;
        }
        Ok(n)
    }

    pub(crate) fn set_faults(&self, cfg: FaultConfig) {
        lock(&self.faults).config = cfg;
    }

    pub(crate) fn start_outage(&self, len: Duration) {
        lock(&self.faults).manual_outage_until = Some(self.started.elapsed() + len);
    }

    pub(crate) fn end_outage(&self) {
        lock(&self.faults).manual_outage_until = None;
    }

    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    // The gateway's lookup checks the token itself, so a refused lookup is still counted.
    let admin = Router::new()
        .route("/v1/peers/{key}", axum::routing::delete(delete_peer))
        .route("/v1/peers", post(register_one))
        .route("/v1/peers/bulk", post(register_bulk))
        .route("/v1/faults", put(put_faults))
        .route("/v1/outage", post(start_outage).delete(end_outage))
        .route("/v1/stats", get(get_stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/v1/peers/{key}", get(get_peer))
        .merge(admin)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn require_token(State(st): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if st.authorized(request.headers()) {
        next.run(request).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

fn error_response(e: ControlPlaneError) -> Response {
    match e {
        ControlPlaneError::Store(StoreError::BadKey(k)) => {
            (StatusCode::BAD_REQUEST, format!("bad key {k:?}")).into_response()
        }
        other => {
            tracing::error!(error = %other, "control plane request failed");
            (StatusCode::INTERNAL_SERVER_ERROR, other.to_string()).into_response()
        }
    }
}

async fn get_peer(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let well_formed = is_key_hex(&key);
    // Counted now, before any injected delay: a request its caller gives up on is still a call.
    // If axum drops this future (the client closed the connection), the guard records "aborted".
    let in_flight = st.stats.arrived(well_formed.then_some(key.as_str()));
    let response = if !st.authorized(&headers) {
        StatusCode::UNAUTHORIZED.into_response()
    } else if well_formed {
        answer_lookup(&st, key.clone()).await
    } else {
        (StatusCode::BAD_REQUEST, "key must be 64 lowercase hex").into_response()
    };
    in_flight.answered(response.status().as_u16());
    response
}

/// The answer to a well-formed lookup, after whatever the fault injection decides.
async fn answer_lookup(st: &AppState, key: String) -> Response {
    match st.verdict() {
        Verdict::Hang { until } => {
            tokio::time::sleep_until(st.started + until).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Verdict::Unavailable { delay } => {
            tokio::time::sleep(delay).await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Verdict::Serve { delay } => {
            tokio::time::sleep(delay).await;
            match st.with_store(move |s| s.get(&key)).await {
                Ok(Some(doc)) => Json(doc).into_response(),
                Ok(None) => StatusCode::NOT_FOUND.into_response(),
                Err(e) => error_response(e),
            }
        }
    }
}

async fn delete_peer(State(st): State<Arc<AppState>>, Path(key): Path<String>) -> Response {
    if !is_key_hex(&key) {
        return (StatusCode::BAD_REQUEST, "key must be 64 lowercase hex").into_response();
    }
    match st.with_store(move |s| s.delete(&key)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => error_response(e),
    }
}

async fn register_one(State(st): State<Arc<AppState>>, Json(doc): Json<PeerDoc>) -> Response {
    registered(st.register(vec![doc]).await)
}

async fn register_bulk(
    State(st): State<Arc<AppState>>,
    Json(docs): Json<Vec<PeerDoc>>,
) -> Response {
    registered(st.register(docs).await)
}

fn registered(r: Result<usize, ControlPlaneError>) -> Response {
    match r {
        Ok(n) => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "registered": n })),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

async fn put_faults(State(st): State<Arc<AppState>>, Json(cfg): Json<FaultConfig>) -> StatusCode {
    st.set_faults(cfg);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct OutageRequest {
    seconds: f64,
}

async fn start_outage(State(st): State<Arc<AppState>>, Json(req): Json<OutageRequest>) -> Response {
    match Duration::try_from_secs_f64(req.seconds) {
        Ok(len) => {
            st.start_outage(len);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(_) => (StatusCode::BAD_REQUEST, "seconds must be finite and >= 0").into_response(),
    }
}

async fn end_outage(State(st): State<Arc<AppState>>) -> StatusCode {
    st.end_outage();
    StatusCode::NO_CONTENT
}

async fn get_stats(State(st): State<Arc<AppState>>) -> Json<StatsSnapshot> {
    Json(st.stats())
}
