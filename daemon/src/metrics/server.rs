//! The metrics HTTP endpoint: `GET /metrics` (OpenMetrics text) and `GET /ready`
//! (200 once boot finished, else 503). Binding is separate from serving so the daemon
//! fails at start-up on a busy port instead of logging it later.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::Metrics;

/// Content type of `GET /metrics`; Prometheus negotiates OpenMetrics natively.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the metrics endpoint could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint failed")]
    Serve(#[source] std::io::Error),
}

/// A bound, not yet serving, metrics endpoint.
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Arc<Metrics>,
}

impl MetricsServer {
    /// Bind `addr` (port 0 picks a free port; see `local_addr`).
    pub async fn bind(metrics: Arc<Metrics>, addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self { listener, metrics })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, MetricsError> {
        self.listener.local_addr().map_err(MetricsError::Serve)
    }

    /// Serve until `shutdown` completes, then finish in-flight requests and return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetricsError> {
        let app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/ready", get(readiness))
            .with_state(self.metrics);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(MetricsError::Serve)
    }
}

/// Bind and serve in one call, for callers that do not need the bound address early.
pub async fn serve(
    metrics: Arc<Metrics>,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    MetricsServer::bind(metrics, addr)
        .await?
        .run(shutdown)
        .await
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        metrics.encode(),
    )
}

async fn readiness(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.0 request over a real socket: returns (status line, whole response).
    async fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out.lines().next().unwrap_or_default().to_string();
        (status, out)
    }

    #[tokio::test]
    async fn serves_metrics_and_readiness_over_http() {
        let m = Metrics::new();
        let server = MetricsServer::bind(m.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));

        let (status, _) = get(addr, "/ready").await;
        assert!(status.contains("503"), "{status}");

        m.installs.inc_by(2);
        super::super::count_lookup(&m, "cache_hit");
        m.ready.set(1);

        let (status, body) = get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("application/openmetrics-text"), "{body}");
        assert!(body.contains("jitwgd_installs_total 2"), "{body}");
        assert!(
            body.contains("jitwgd_lookups_total{outcome=\"cache_hit\"} 1"),
            "{body}"
        );
        assert!(body.contains("jitwgd_ready 1"), "{body}");

        let (status, _) = get(addr, "/ready").await;
        assert!(status.contains("200"), "{status}");

        let (status, _) = get(addr, "/nothing").await;
        assert!(status.contains("404"), "{status}");

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn busy_port_fails_at_bind() {
        let holder = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = holder.local_addr().unwrap();
        let err = MetricsServer::bind(Metrics::new(), addr)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, MetricsError::Bind { .. }));
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
