//! Lookup + install throughput for keys that are already identified (no DH): the real
//! `Lookup` over a real SQLite `Store` (WAL file in a tempdir) asking a control-plane
//! stand-in over loopback HTTP, then the real install worker (`InstallQueue`). The data
//! plane is a fake `Backend` that only records how many peers it was given, so this
//! measures jitwgd's own path, not the cost of wireguard-go or kernel WireGuard. Every
//! iteration looks up `KEYS_PER_ITERATION` keys never seen before, all in flight at once
//! (the pipeline spawns one task per identified key), so each is a cache miss, one API
//! call, one cache write and one install. Throughput is reported as installs per second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use criterion::{Criterion, Throughput};
use jitwgd::api::ApiClient;
use jitwgd::dataplane::{DataPlaneError, InstalledPeer};
use jitwgd::install::{Backend, InstallSettings, InstallWorker, PeerChange, Plan};
use jitwgd::lookup::{Lookup, LookupConfig, LookupOutcome};
use jitwgd::metrics::Metrics;
use jitwgd::peer::PublicKey;
use jitwgd::store::{SharedStore, Store};

const KEYS_PER_ITERATION: u64 = 2_000;

/// Counts installed peers; never fails. Stands in for the data plane (see module docs).
#[derive(Default)]
struct CountingBackend {
    installed: AtomicUsize,
}

impl Backend for CountingBackend {
    fn apply(&self, plan: &Plan) -> Result<(), DataPlaneError> {
        let installs = plan
            .0
            .iter()
            .filter(|c| matches!(c, PeerChange::Install { .. }))
            .count();
        self.installed.fetch_add(installs, Ordering::Relaxed);
        Ok(())
    }

    fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
        Ok(Vec::new())
    }
}

/// The key numbered `n`: distinct for every n, so no iteration hits the cache.
fn key(n: u64) -> PublicKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&n.to_be_bytes());
    k[31] = 0x5a;
    PublicKey(k)
}

/// The API contract's answer for `GET /v1/peers/{hex}`: every well-formed key is known,
/// with a /32 in 100.64.0.0/10 derived from its number.
async fn peer(Path(hex): Path<String>) -> Result<Json<serde_json::Value>, StatusCode> {
    let key = PublicKey::from_hex(&hex).map_err(|_| StatusCode::BAD_REQUEST)?;
    let n = u64::from_be_bytes(key.0[..8].try_into().map_err(|_| StatusCode::BAD_REQUEST)?);
    let host = n % (1 << 22);
    let ip = format!(
        "100.{}.{}.{}/32",
        64 + (host >> 16),
        (host >> 8) & 0xff,
        host & 0xff
    );
    Ok(Json(serde_json::json!({
        "public_key": key.to_base64(),
        "allowed_ips": [ip],
        "preshared_key": null,
    })))
}

async fn serve_control_plane() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let app = Router::new().route("/v1/peers/{key}", get(peer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Lookup and install `count` fresh keys starting at `first`, all in flight at once, as
/// the pipeline does; returns how long until the last install was acknowledged.
async fn storm(
    lookup: &Arc<Lookup>,
    queue: &jitwgd::install::InstallQueue,
    first: u64,
    count: u64,
) -> Duration {
    let started = Instant::now();
    let endpoint: SocketAddr = "198.18.0.2:51820".parse().expect("endpoint");
    let tasks: Vec<_> = (first..first + count)
        .map(|n| {
            let lookup = lookup.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let captured_at = Instant::now();
                match lookup.lookup(key(n), SystemTime::now()).await {
                    LookupOutcome::ApiFound { config, .. } => queue
                        .install(config, endpoint, captured_at)
                        .await
                        .expect("install"),
                    other => panic!("key {n}: expected an API answer, got {other:?}"),
                };
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("storm task");
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(CountingBackend::default());
    let (lookup, worker, queue) = runtime.block_on(async {
        let addr = serve_control_plane().await;
        let store = SharedStore::new(Store::open(dir.path().join("peers.db")).expect("store"));
        let api = ApiClient::new(&format!("http://{addr}"), Duration::from_secs(5)).expect("api");
        let lookup = Arc::new(Lookup::new(store, Some(api), LookupConfig::default()));
        let settings = InstallSettings {
            initiate: true,
            initiate_rate: 1_500,
            initiate_feedback: None,
            sweep_chunk: 256,
            sweep_budget: Duration::from_millis(50),
        };
        let (worker, queue) =
            InstallWorker::start(backend.clone(), Vec::new(), settings, Metrics::new())
                .expect("worker");
        (lookup, worker, queue)
    });
    let next = AtomicU64::new(0);

    let mut group = c.benchmark_group("install_path");
    group.throughput(Throughput::Elements(KEYS_PER_ITERATION));
    group.sample_size(10);
    group.bench_function("lookup_api_install_2000_fresh_keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let first = next.fetch_add(KEYS_PER_ITERATION, Ordering::Relaxed);
                total += runtime.block_on(storm(&lookup, &queue, first, KEYS_PER_ITERATION));
            }
            total
        })
    });
    group.finish();
    let keys = next.load(Ordering::Relaxed) as usize;
    assert_eq!(
        backend.installed.load(Ordering::Relaxed),
        keys,
        "every key installed once"
    );
    println!("{keys} keys looked up and installed in total");
    drop(worker);
}

criterion::criterion_group!(benches, bench);
criterion::criterion_main!(benches);
