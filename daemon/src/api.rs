//! Control-plane HTTP client: `GET {base}/v1/peers/{64 lowercase hex}`. Sorts every answer
//! into found / not found / unavailable, and is careful that only a real 404 ever means
//! "not found": timeouts, connection errors, other statuses and bad bodies are
//! "unavailable", so an outage is never mistaken for a revocation.
//! HTTPS or HTTP; how the channel is secured (roots, token, client certificate) is
//! `channel`'s business.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use reqwest::StatusCode;

use crate::channel::{self, ChannelError, ChannelSecurity};
use crate::metrics::{OutcomeLabel, API_REQUEST_OUTCOMES};
use crate::peer::{PeerDocument, PublicKey};

/// A peer document is a few hundred bytes; anything past this is a broken control plane.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why the control plane could not be asked, or gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("control-plane URL {url:?} is not usable: {reason}")]
    BadBaseUrl { url: String, reason: String },
    #[error("cannot set up the control-plane channel")]
    Channel(#[source] ChannelError),
    #[error("request timed out")]
    Timeout,
    #[error("cannot connect to control plane")]
    Connect(#[source] reqwest::Error),
    #[error("control plane answered status {0}")]
    Status(u16),
    /// 401 or 403: the channel works but our credentials do not (token, client certificate).
    #[error("control plane refused our credentials (status {0}); check --api-token-file and --api-client-cert")]
    Unauthorized(u16),
    #[error("control-plane answer is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("control-plane answer is not a peer document")]
    BadBody(#[source] serde_json::Error),
    #[error("request to control plane failed")]
    Transport(#[source] reqwest::Error),
}

impl ApiError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ApiError::Timeout
        } else if e.is_connect() {
            ApiError::Connect(e)
        } else {
            ApiError::Transport(e)
        }
    }
}

/// What the control plane said about one key.
#[derive(Debug)]
pub enum ApiAnswer {
    /// 200 with a parseable document (not yet validated: see `PeerDocument::validate`).
    Found(PeerDocument),
    /// 404: the control plane does not know this key.
    NotFound,
    /// Anything else. Never a reason to forget a peer.
    Unavailable(ApiError),
}

impl ApiAnswer {
    /// The `outcome` label of `jitwgd_api_requests_total` for this answer.
    pub fn request_outcome(&self) -> &'static str {
        match self {
            ApiAnswer::Found(_) => "ok",
            ApiAnswer::NotFound => "not_found",
            ApiAnswer::Unavailable(ApiError::Timeout) => "timeout",
            ApiAnswer::Unavailable(_) => "error",
        }
    }
}

/// An answer plus how long the call took (request sent to body read).
#[derive(Debug)]
pub struct TimedAnswer {
    pub answer: ApiAnswer,
    pub latency: Duration,
}

/// Client for the control-plane API. Cheap to clone (reqwest pools connections inside).
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    /// Base URL without trailing `/`.
    base: String,
    /// `jitwgd_api_requests_total`, when the daemon counts: every request this client sends
    /// (so retries too) ends in one of its outcomes.
    requests: Option<Family<OutcomeLabel, Counter>>,
}

impl ApiClient {
    /// `base_url` like `http://198.18.0.1:8080` (a trailing `/` is fine); `timeout` bounds
    /// each whole request, connect to last body byte. System roots, no credentials.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ApiError> {
        Self::secured(base_url, timeout, &ChannelSecurity::default())
    }

    /// `new` with the channel secured by `security` (CA file, bearer token, client
    /// certificate). Logs a warning for plain http:// outside loopback and the lab ranges.
    pub fn secured(
        base_url: &str,
        timeout: Duration,
        security: &ChannelSecurity,
    ) -> Result<Self, ApiError> {
        let parsed = reqwest::Url::parse(base_url).map_err(|e| ApiError::BadBaseUrl {
            url: base_url.to_owned(),
            reason: e.to_string(),
        })?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(ApiError::BadBaseUrl {
                url: base_url.to_owned(),
                reason: "only https:// and http:// are supported".into(),
            });
        }
        if let Some(warning) = channel::plain_http_warning(&parsed, security) {
            tracing::warn!(url = %base_url, "{warning}");
        }
        let http = channel::build_client(security, timeout).map_err(ApiError::Channel)?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            requests: None,
        })
    }

    /// Counts every request this client sends in `requests` by outcome
    /// (`metrics::API_REQUEST_OUTCOMES`).
    pub fn counting_requests_in(mut self, requests: Family<OutcomeLabel, Counter>) -> Self {
        self.requests = Some(requests);
        self
    }

    /// The URL asked for `key`.
    pub fn peer_url(&self, key: &PublicKey) -> String {
        format!("{}/v1/peers/{}", self.base, key.to_hex())
    }

    /// Ask the control plane about `key`.
    pub async fn fetch(&self, key: &PublicKey) -> ApiAnswer {
        self.fetch_timed(key).await.answer
    }

    /// `fetch`, plus the call's latency (also logged at debug level).
    pub async fn fetch_timed(&self, key: &PublicKey) -> TimedAnswer {
        let started = Instant::now();
        let answer = self.ask(key).await;
        let latency = started.elapsed();
        let outcome = answer.request_outcome();
        debug_assert!(API_REQUEST_OUTCOMES.contains(&outcome));
        if let Some(requests) = &self.requests {
            requests.get_or_create(&OutcomeLabel { outcome }).inc();
        }
        tracing::debug!(peer = %key, outcome, latency_us = latency.as_micros() as u64, "control-plane call");
        TimedAnswer { answer, latency }
    }

    async fn ask(&self, key: &PublicKey) -> ApiAnswer {
        let mut response = match self.http.get(self.peer_url(key)).send().await {
            Ok(r) => r,
            Err(e) => return ApiAnswer::Unavailable(ApiError::from_reqwest(e)),
        };
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return ApiAnswer::NotFound,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return ApiAnswer::Unavailable(ApiError::Unauthorized(response.status().as_u16()))
            }
            other => return ApiAnswer::Unavailable(ApiError::Status(other.as_u16())),
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return ApiAnswer::Unavailable(ApiError::BodyTooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return ApiAnswer::Unavailable(ApiError::from_reqwest(e)),
            }
        }
        match serde_json::from_slice::<PeerDocument>(&body) {
            Ok(doc) => ApiAnswer::Found(doc),
            Err(e) => ApiAnswer::Unavailable(ApiError::BadBody(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{extract::Path, http::StatusCode as AxumStatus, routing::get, Router};

    /// A control plane whose answer depends on the first byte of the requested key.
    async fn serve() -> String {
        async fn peer(Path(hex): Path<String>) -> (AxumStatus, String) {
            let key = PublicKey::from_hex(&hex).unwrap();
            match key.0[0] {
                1 => (
                    AxumStatus::OK,
                    serde_json::to_string(&PeerDocument {
                        public_key: key.to_base64(),
                        allowed_ips: vec!["100.64.0.2/32".into()],
                        preshared_key: None,
                    })
                    .unwrap(),
                ),
                2 => (AxumStatus::NOT_FOUND, String::new()),
                3 => (AxumStatus::INTERNAL_SERVER_ERROR, String::new()),
                4 => (AxumStatus::OK, "not json".into()),
                5 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    (AxumStatus::OK, String::new())
                }
                6 => (AxumStatus::OK, "x".repeat(MAX_BODY_BYTES + 1)),
                7 => (AxumStatus::UNAUTHORIZED, String::new()),
                _ => (AxumStatus::SERVICE_UNAVAILABLE, String::new()),
            }
        }
        let app = Router::new().route("/v1/peers/{key}", get(peer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }

    async fn ask(byte: u8) -> ApiAnswer {
        let base = serve().await;
        let client = ApiClient::new(&base, Duration::from_millis(300)).unwrap();
        client.fetch(&PublicKey([byte; 32])).await
    }

    #[tokio::test]
    async fn ok_with_document_is_found() {
        match ask(1).await {
            ApiAnswer::Found(doc) => assert_eq!(doc.public_key, PublicKey([1; 32]).to_base64()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn status_404_is_not_found() {
        assert!(matches!(ask(2).await, ApiAnswer::NotFound));
    }

    #[tokio::test]
    async fn status_500_is_unavailable_not_not_found() {
        assert!(matches!(
            ask(3).await,
            ApiAnswer::Unavailable(ApiError::Status(500))
        ));
    }

    #[tokio::test]
    async fn bad_json_is_unavailable() {
        assert!(matches!(
            ask(4).await,
            ApiAnswer::Unavailable(ApiError::BadBody(_))
        ));
    }

    #[tokio::test]
    async fn slow_answer_times_out_as_unavailable() {
        assert!(matches!(
            ask(5).await,
            ApiAnswer::Unavailable(ApiError::Timeout)
        ));
    }

    #[tokio::test]
    async fn oversized_body_is_unavailable() {
        assert!(matches!(
            ask(6).await,
            ApiAnswer::Unavailable(ApiError::BodyTooLarge)
        ));
    }

    #[tokio::test]
    async fn refused_credentials_are_unavailable_and_say_so() {
        match ask(7).await {
            ApiAnswer::Unavailable(e @ ApiError::Unauthorized(401)) => {
                assert!(e.to_string().contains("credentials"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client =
            ApiClient::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(1)).unwrap();
        assert!(matches!(
            client.fetch(&PublicKey([1; 32])).await,
            ApiAnswer::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn every_request_is_counted_by_outcome() {
        let base = serve().await;
        let metrics = crate::metrics::Metrics::new();
        let client = ApiClient::new(&base, Duration::from_millis(300))
            .unwrap()
            .counting_requests_in(metrics.api_requests.clone());
        for byte in [1, 1, 2, 3, 4, 5] {
            let _ = client.fetch(&PublicKey([byte; 32])).await;
        }
        let count = |outcome| {
            metrics
                .api_requests
                .get_or_create(&OutcomeLabel { outcome })
                .get()
        };
        assert_eq!(count("ok"), 2);
        assert_eq!(count("not_found"), 1);
        assert_eq!(count("error"), 2);
        assert_eq!(count("timeout"), 1);
    }

    #[test]
    fn url_uses_lowercase_hex_and_trims_slash() {
        let client = ApiClient::new("http://127.0.0.1:9/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            client.peer_url(&PublicKey([0xab; 32])),
            format!("http://127.0.0.1:9/v1/peers/{}", "ab".repeat(32))
        );
    }

    #[test]
    fn https_is_accepted_and_garbage_urls_are_refused() {
        assert!(ApiClient::new("https://127.0.0.1", Duration::from_secs(1)).is_ok());
        assert!(ApiClient::new("ftp://127.0.0.1", Duration::from_secs(1)).is_err());
        assert!(ApiClient::new("not a url", Duration::from_secs(1)).is_err());
    }
}
