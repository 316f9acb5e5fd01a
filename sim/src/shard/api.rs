//! The gateway's shard API, beside the control plane's: what a fleet needs to join a sharded
//! run. `GET /v1/shards` (the run: scenario, seed, shard count, and the common start time once
//! every shard is ready), `GET /v1/time` (the gateway's clock, for offset estimation),
//! `POST /v1/shards/{i}/ready` (shard `i` has registered its keys) and
//! `POST /v1/shards/{i}/results` (its results file, stored under `OUT/shards/<i>/`). When the
//! scenario secures the control plane, the shard API is secured the same way: HTTPS with the
//! control plane's certificate (the run's CA) and the same bearer token on every route, since a
//! results POST or a ready mark from anyone else would corrupt the run.
//! [`GatewayClient`] is the fleet's side; it talks to the one address it is given, trusts only
//! the run's CA when given one, and uses no proxy, whatever the environment says.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// Where the shard API listens, on the gateway's address.
pub const SHARD_API_PORT: u16 = 8081;
/// A shard's results list every client: far beyond axum's 2 MB default.
const BODY_LIMIT: usize = 512 * 1024 * 1024;

/// The run a fleet joins, as the gateway serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDescription {
    pub scenario_name: String,
    pub seed: u64,
    /// The scenario after overrides: a fleet with other `--set`s is refused before it starts.
    pub resolved_scenario: serde_json::Value,
    pub shards: u32,
    /// The gateway's WireGuard public key, hex.
    pub gateway_public_key: String,
    /// The echo target inside the tunnel.
    pub gateway_tunnel_ip: std::net::Ipv4Addr,
    /// The common start (the gateway's Unix ms); `None` until every shard is ready.
    pub start_at_unix_ms: Option<f64>,
    /// The first reboot or daemon restart, once it happened: shards measure their clients'
    /// recovery from it.
    #[serde(default)]
    pub reboot: Option<RebootMark>,
}

/// When the gateway's first reboot (or daemon restart) began and when its daemon was started
/// again, ms after the common start: `run::tracker::RecoveryWatch`'s `reboot_ms` and `back_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RebootMark {
    pub reboot_start_ms: f64,
    pub back_ms: f64,
}

/// `GET /v1/time`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TimeReply {
    pub unix_ms: f64,
}

/// Unix time in ms.
pub fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What the gateway knows of its shards.
#[derive(Debug)]
struct Board {
    run: RunDescription,
    ready: BTreeSet<u32>,
    received: BTreeSet<u32>,
}

/// The API's state, shared with the gateway's loop.
pub struct ShardBoard {
    board: Mutex<Board>,
    /// Received results go to `out/shards/<i>/results.json`.
    out: PathBuf,
    /// How far after the last shard's ready the common start lies: time for every shard to
    /// hear of it on its next poll.
    lead: Duration,
    /// The control plane's bearer token, required on every route when set.
    token: Option<String>,
}

fn lock(m: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ShardBoard {
    /// `token`: the bearer token every request must carry (`None`: anyone may ask).
    pub fn new(
        run: RunDescription,
        out: PathBuf,
        lead: Duration,
        token: Option<String>,
    ) -> Arc<ShardBoard> {
        Arc::new(ShardBoard {
            board: Mutex::new(Board {
                run,
                ready: BTreeSet::new(),
                received: BTreeSet::new(),
            }),
            out,
            lead,
            token,
        })
    }

    /// Whether `headers` carry the run's bearer token (always true without one).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        crate::controlplane::carries_bearer(self.token.as_deref(), headers)
    }

    /// Records the first reboot's marks (ms into the run), for the shards' recovery figures.
    pub fn set_reboot(&self, mark: RebootMark) {
        let mut b = lock(&self.board);
        if b.run.reboot.is_none() {
            b.run.reboot = Some(mark);
        }
    }

    /// The common start, once set.
    pub fn start_at_unix_ms(&self) -> Option<f64> {
        lock(&self.board).run.start_at_unix_ms
    }

    /// Shards whose results arrived.
    pub fn received(&self) -> BTreeSet<u32> {
        lock(&self.board).received.clone()
    }

    /// Where shard `i`'s results are stored.
    pub fn shard_dir(&self, i: u32) -> PathBuf {
        self.out.join("shards").join(i.to_string())
    }

    fn ready(&self, i: u32, now: SystemTime) -> Result<RunDescription, String> {
        let mut b = lock(&self.board);
        if i >= b.run.shards {
            return Err(format!(
                "shard {i} is out of range for {} shards",
                b.run.shards
            ));
        }
        b.ready.insert(i);
        if b.ready.len() as u32 == b.run.shards && b.run.start_at_unix_ms.is_none() {
            b.run.start_at_unix_ms = Some(unix_ms(now + self.lead));
            tracing::info!(
                shards = b.run.shards,
                "every shard is ready: start time set"
            );
        }
        Ok(b.run.clone())
    }

    fn accept(&self, i: u32, body: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
        let results = jitwg_reports::Results::from_json(text)
            .map_err(|e| format!("not a results file: {:#}", anyhow::Error::new(e)))?;
        {
            let b = lock(&self.board);
            let info = results.run.shards.first().ok_or("no run.shards entry")?;
            if info.index != i || info.count != b.run.shards {
                return Err(format!(
                    "results of shard {}/{} posted as {i}/{}",
                    info.index, info.count, b.run.shards
                ));
            }
            if results.run.scenario_name != b.run.scenario_name || results.run.seed != b.run.seed {
                return Err(format!(
                    "results of scenario {} seed {}, but this gateway runs {} seed {}",
                    results.run.scenario_name, results.run.seed, b.run.scenario_name, b.run.seed
                ));
            }
        }
        let dir = self.shard_dir(i);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join("results.json");
        std::fs::write(&path, body).map_err(|e| format!("writing {}: {e}", path.display()))?;
        lock(&self.board).received.insert(i);
        tracing::info!(shard = i, path = %path.display(), "shard results received");
        Ok(())
    }
}

/// The API's routes.
pub fn router(board: Arc<ShardBoard>) -> Router {
    Router::new()
        .route("/v1/shards", get(describe))
        .route("/v1/time", get(time))
        .route("/v1/shards/{i}/ready", post(ready))
        .route("/v1/shards/{i}/results", post(results))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&board),
            require_token,
        ))
        .with_state(board)
}

async fn require_token(
    State(board): State<Arc<ShardBoard>>,
    request: Request,
    next: Next,
) -> Response {
    if board.authorized(request.headers()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "the shard API needs the run's bearer token (jitwg fleet --token-file)",
        )
            .into_response()
    }
}

/// Serves `app` on `listener` (HTTPS with `tls` when given) until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    };
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        stopper.graceful_shutdown(Some(Duration::from_secs(1)));
    });
    axum_server::from_tcp_rustls(
        listener.into_std()?,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .handle(handle)
    .serve(app.into_make_service())
    .await
}

async fn describe(State(board): State<Arc<ShardBoard>>) -> Json<RunDescription> {
    Json(lock(&board.board).run.clone())
}

async fn time() -> Json<TimeReply> {
    Json(TimeReply {
        unix_ms: unix_ms(SystemTime::now()),
    })
}

async fn ready(State(board): State<Arc<ShardBoard>>, Path(i): Path<u32>) -> Response {
    match board.ready(i, SystemTime::now()) {
        Ok(run) => Json(run).into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}

async fn results(
    State(board): State<Arc<ShardBoard>>,
    Path(i): Path<u32>,
    body: Bytes,
) -> Response {
    let store = Arc::clone(&board);
    let outcome = tokio::task::spawn_blocking(move || store.accept(i, &body)).await;
    match outcome {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(message)) => (StatusCode::BAD_REQUEST, message).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Why a request to the gateway failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayApiError {
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the token is not a valid HTTP header value (one line of printable ASCII)")]
    Token,
    #[error("{url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// The fleet's side of the shard API (and of the control plane's registration).
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
}

impl GatewayClient {
    /// A client for `base` (e.g. `https://198.19.255.1:8081`), each request bounded by
    /// `timeout`, presenting `credentials` (the run's CA as its only root, the bearer token on
    /// every request, to the shard API and the control plane alike).
    pub fn new(
        base: String,
        timeout: Duration,
        credentials: &super::secure::FleetCredentials,
    ) -> Result<GatewayClient, GatewayApiError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Only the address given: never an HTTP proxy from the environment.
            .no_proxy();
        if let Some(ca) = &credentials.ca {
            // The run's CA alone: a certificate from any public CA is not the run's gateway.
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca.clone());
        }
        if let Some(token) = &credentials.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| GatewayApiError::Token)?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let http = builder.build().map_err(GatewayApiError::Client)?;
        Ok(GatewayClient { http, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<reqwest::Response, GatewayApiError> {
        let response = request
            .send()
            .await
            .map_err(|source| GatewayApiError::Request {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(GatewayApiError::Status {
            url,
            status: status.as_u16(),
            body,
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
        url: String,
    ) -> Result<T, GatewayApiError> {
        response
            .json()
            .await
            .map_err(|source| GatewayApiError::Request { url, source })
    }

    pub async fn describe(&self) -> Result<RunDescription, GatewayApiError> {
        let url = format!("{}/v1/shards", self.base);
        let r = self.send(self.http.get(&url), url.clone()).await?;
        self.json(r, url).await
    }

    pub async fn time(&self) -> Result<TimeReply, GatewayApiError> {
        let url = format!("{}/v1/time", self.base);
        let r = self.send(self.http.get(&url), url.clone()).await?;
        self.json(r, url).await
    }

    pub async fn ready(&self, shard: u32) -> Result<RunDescription, GatewayApiError> {
        let url = format!("{}/v1/shards/{shard}/ready", self.base);
        let r = self.send(self.http.post(&url), url.clone()).await?;
        self.json(r, url).await
    }

    pub async fn post_results(&self, shard: u32, body: String) -> Result<(), GatewayApiError> {
        let url = format!("{}/v1/shards/{shard}/results", self.base);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        self.send(request, url).await.map(|_| ())
    }

    /// Registers peer documents with the control plane at `control_plane` (its bulk endpoint).
    pub async fn register(
        &self,
        control_plane: &str,
        docs: &[crate::controlplane::PeerDoc],
    ) -> Result<(), GatewayApiError> {
        let url = format!("{}/v1/peers/bulk", control_plane.trim_end_matches('/'));
        self.send(self.http.post(&url).json(docs), url.clone())
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(dir: &std::path::Path) -> Arc<ShardBoard> {
        ShardBoard::new(
            RunDescription {
                scenario_name: "smoke".into(),
                seed: 3,
                resolved_scenario: serde_json::json!({}),
                shards: 2,
                gateway_public_key: "00".repeat(32),
                gateway_tunnel_ip: std::net::Ipv4Addr::new(100, 64, 0, 1),
                start_at_unix_ms: None,
                reboot: None,
            },
            dir.to_path_buf(),
            Duration::from_secs(2),
            Some("secret".into()),
        )
    }

    #[test]
    fn start_is_set_once_every_shard_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(100);
        assert!(b.ready(2, t0).is_err());
        assert_eq!(b.ready(0, t0).unwrap().start_at_unix_ms, None);
        assert_eq!(b.ready(0, t0).unwrap().start_at_unix_ms, None);
        let run = b.ready(1, t0).unwrap();
        assert_eq!(run.start_at_unix_ms, Some(102_000.0));
        // A late repeat does not move it.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(b.ready(1, later).unwrap().start_at_unix_ms, Some(102_000.0));
    }

    /// The shard API over the run's TLS with its token, on loopback: a fleet with the CA and
    /// the token gets in; without the token, with another, or trusting another CA, it does not.
    #[tokio::test]
    async fn the_shard_api_serves_tls_and_requires_the_token() {
        use crate::controlplane::tls::RunPki;
        let dir = tempfile::tempdir().unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let pki = RunPki::generate(&[ip]).unwrap();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let base = format!("https://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router(board(dir.path())),
            Some(pki.server_config(false).unwrap()),
            stop.clone(),
        ));
        let ca = reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap();
        let client = |ca: &reqwest::Certificate, token: Option<&str>| {
            let creds = crate::shard::secure::FleetCredentials {
                ca: Some(ca.clone()),
                token: token.map(str::to_string),
            };
            GatewayClient::new(base.clone(), Duration::from_secs(5), &creds).unwrap()
        };
        let run = client(&ca, Some("secret")).describe().await.unwrap();
        assert_eq!(run.scenario_name, "smoke");
        for token in [None, Some("other")] {
            let refused = client(&ca, token).post_results(1, "{}".into()).await;
            assert!(
                matches!(refused, Err(GatewayApiError::Status { status: 401, .. })),
                "{refused:?}"
            );
        }
        let other = RunPki::generate(&[ip]).unwrap();
        let other_ca = reqwest::Certificate::from_pem(other.ca_pem().as_bytes()).unwrap();
        let untrusted = client(&other_ca, Some("secret")).describe().await;
        assert!(
            matches!(untrusted, Err(GatewayApiError::Request { .. })),
            "{untrusted:?}"
        );
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn results_of_another_shard_or_run_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = board(dir.path());
        let mut r = jitwg_reports::Results::new(jitwg_reports::RunInfo {
            scenario_name: "smoke".into(),
            seed: 3,
            ..Default::default()
        });
        r.run.shards = vec![jitwg_reports::ShardInfo {
            index: 1,
            count: 2,
            ..Default::default()
        }];
        let json = r.to_json().unwrap();
        assert!(b.accept(0, json.as_bytes()).is_err());
        assert!(b.accept(1, b"{").is_err());
        b.accept(1, json.as_bytes()).unwrap();
        assert!(b.shard_dir(1).join("results.json").exists());
        assert_eq!(b.received(), BTreeSet::from([1]));
        r.run.seed = 4;
        let other = r.to_json().unwrap();
        assert!(b.accept(1, other.as_bytes()).unwrap_err().contains("seed"));
    }
}
