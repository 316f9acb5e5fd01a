//! End-to-end tests of the control plane over real HTTP on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::*;

/// A running control plane on an ephemeral loopback port; dropping it shuts the server down.
struct Running {
    base: String,
    handle: ControlPlaneHandle,
    http: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start(faults: FaultConfig, nats: Option<(String, String)>) -> Running {
    start_with(faults, nats, Access::default()).await
}

/// [`start`] with `access` (HTTPS when it has a TLS config).
async fn start_with(
    faults: FaultConfig,
    nats: Option<(String, String)>,
    access: Access,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let cp = ControlPlane::open(ControlPlaneConfig {
        db: dir.path().join("cp.db"),
        nats,
        faults,
        seed: 1,
        access,
    })
    .await
    .unwrap();
    let handle = cp.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(cp.serve(listener, async {
        let _ = rx.await;
    }));
    Running {
        base,
        handle,
        http: reqwest::Client::new(),
        _shutdown: tx,
        _dir: dir,
    }
}

/// An HTTPS client that trusts only the CA in `ca_pem` (no system roots, no proxy).
fn trusting_only(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

fn doc(i: u32) -> PeerDoc {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[31] = 1;
    PeerDoc::new(
        &key,
        vec![format!("100.64.{}.{}/32", i / 256, i % 256)],
        None,
    )
}

/// Sends a request the test cannot do without.
async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.unwrap()
}

impl Running {
    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        send(
            self.http
                .request(method, format!("{}{path}", self.base))
                .json(body),
        )
        .await
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        send(self.http.delete(format!("{}{path}", self.base))).await
    }

    async fn get(&self, key: &str) -> reqwest::Response {
        send(self.http.get(format!("{}/v1/peers/{key}", self.base))).await
    }
    async fn register(&self, d: &PeerDoc) -> u16 {
        send(self.http.post(format!("{}/v1/peers", self.base)).json(d))
            .await
            .status()
            .as_u16()
    }
    async fn stats(&self) -> StatsSnapshot {
        send(self.http.get(format!("{}/v1/stats", self.base)))
            .await
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn register_then_get_returns_exact_contract_json() {
    let cp = start(FaultConfig::default(), None).await;
    let psk = [9u8; 32];
    let d = PeerDoc::new(&[3u8; 32], vec!["100.64.0.2/32".into()], Some(&psk));
    assert_eq!(cp.register(&d).await, 201);
    let resp = cp.get(&hex::encode([3u8; 32])).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "public_key": "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=",
            "allowed_ips": ["100.64.0.2/32"],
            "preshared_key": "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=",
        })
    );
    // Without a preshared key the field is an explicit null.
    let d2 = doc(1);
    cp.register(&d2).await;
    let body: serde_json::Value = cp.get(&d2.key_hex().unwrap()).await.json().await.unwrap();
    assert_eq!(body["preshared_key"], serde_json::Value::Null);
}

#[tokio::test]
async fn unknown_is_404_malformed_is_400_revoked_is_404() {
    let cp = start(FaultConfig::default(), None).await;
    assert_eq!(cp.get(&"ab".repeat(32)).await.status(), 404);
    assert_eq!(cp.get("xyz").await.status(), 400);
    assert_eq!(cp.get(&"AB".repeat(32)).await.status(), 400);
    let d = doc(5);
    cp.register(&d).await;
    let key = d.key_hex().unwrap();
    assert_eq!(cp.get(&key).await.status(), 200);
    let del = cp.delete(&format!("/v1/peers/{key}")).await;
    assert_eq!(del.status(), 204);
    assert_eq!(cp.get(&key).await.status(), 404);
    // Bad allowed IPs are accepted on purpose; a bad public key is not.
    let odd = PeerDoc::new(&[8u8; 32], vec!["10.0.0.0/8".into(), "junk".into()], None);
    assert_eq!(cp.register(&odd).await, 201);
    let bad = PeerDoc {
        public_key: "nope".into(),
        allowed_ips: vec![],
        preshared_key: None,
    };
    assert_eq!(cp.register(&bad).await, 400);
}

#[tokio::test]
async fn bulk_of_ten_thousand_in_one_call_and_stats() {
    let cp = start(FaultConfig::default(), None).await;
    let docs: Vec<PeerDoc> = (0..10_000).map(doc).collect();
    let resp = cp
        .http
        .post(format!("{}/v1/peers/bulk", cp.base))
        .json(&docs)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    for i in [0, 4_999, 9_999] {
        assert_eq!(cp.get(&docs[i].key_hex().unwrap()).await.status(), 200);
    }
    let k0 = docs[0].key_hex().unwrap();
    cp.get(&k0).await;
    cp.get(&"cd".repeat(32)).await;
    cp.get("bad").await;
    let stats = cp.stats().await;
    assert_eq!(stats.requests_total, 6);
    assert_eq!(stats.by_status["200"], 4);
    assert_eq!(stats.by_status["404"], 1);
    assert_eq!(stats.by_status["400"], 1);
    assert_eq!(stats.per_key[&k0], 2);
    assert_eq!(stats.duplicate_lookups(), 1);
    assert_eq!(stats.published, 0);
    assert_eq!(cp.handle.stats(), stats);
    // In-process registration is visible over HTTP.
    cp.handle.register_many(&[doc(20_000)]).await.unwrap();
    assert_eq!(cp.get(&doc(20_000).key_hex().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn error_rate_one_answers_all_503_and_can_be_changed_at_run_time() {
    let cp = start(
        FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        },
        None,
    )
    .await;
    let d = doc(1);
    cp.register(&d).await;
    let key = d.key_hex().unwrap();
    for _ in 0..20 {
        assert_eq!(cp.get(&key).await.status(), 503);
    }
    let put = cp
        .send_json(
            reqwest::Method::PUT,
            "/v1/faults",
            &json!({ "error_rate": 0.0 }),
        )
        .await;
    assert_eq!(put.status(), 204);
    assert_eq!(cp.get(&key).await.status(), 200);
    assert_eq!(cp.stats().await.by_status["503"], 20);
}

#[tokio::test]
async fn outage_on_and_off() {
    let cp = start(FaultConfig::default(), None).await;
    let d = doc(1);
    cp.register(&d).await;
    let key = d.key_hex().unwrap();
    let on = cp
        .send_json(
            reqwest::Method::POST,
            "/v1/outage",
            &json!({ "seconds": 600.0 }),
        )
        .await;
    assert_eq!(on.status(), 204);
    assert_eq!(cp.get(&key).await.status(), 503);
    let off = cp.delete("/v1/outage").await;
    assert_eq!(off.status(), 204);
    assert_eq!(cp.get(&key).await.status(), 200);
    // A short outage ends by itself.
    cp.handle.start_outage(Duration::from_millis(100));
    assert_eq!(cp.get(&key).await.status(), 503);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(cp.get(&key).await.status(), 200);
}

#[tokio::test]
async fn hang_mode_holds_until_the_outage_ends() {
    let cp = hanging_in_outages().await;
    cp.handle.start_outage(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(cp.get(&"ab".repeat(32)).await.status(), 503);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

/// A control plane whose outages hold requests open instead of answering 503.
async fn hanging_in_outages() -> Running {
    let outage_mode = OutageMode::Hang;
    start(
        FaultConfig {
            outage_mode,
            ..Default::default()
        },
        None,
    )
    .await
}

/// A control plane that answers every request after a fixed `delay`.
async fn with_latency(delay: Duration) -> Running {
    let latency = Some(LatencyModel::Fixed { delay });
    start(
        FaultConfig {
            latency,
            ..Default::default()
        },
        None,
    )
    .await
}

#[tokio::test]
async fn latency_is_applied() {
    let cp = with_latency(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(cp.get(&"ab".repeat(32)).await.status(), 404);
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}

/// Polls the stats until `done` holds (the server learns of a closed connection asynchronously).
async fn stats_when(cp: &Running, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = cp.handle.stats();
        if done(&stats) || Instant::now() >= deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_times_out_against_latency_is_counted_as_aborted() {
    let cp = with_latency(Duration::from_secs(5)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let key = "ab".repeat(32);
    let err = impatient
        .get(format!("{}/v1/peers/{key}", cp.base))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Counted on arrival, while the handler still sleeps.
    let stats = stats_when(&cp, |s| s.by_status.contains_key(ABORTED)).await;
    assert_eq!(stats.requests_total, 1);
    assert_eq!(stats.per_key[&key], 1);
    assert_eq!(stats.by_status.get(ABORTED), Some(&1), "{stats:?}");
    assert!(!stats.by_status.contains_key(PENDING), "{stats:?}");
    assert_eq!(stats.by_status.values().sum::<u64>(), stats.requests_total);
}

#[tokio::test]
async fn a_request_hanging_in_an_outage_is_pending_then_aborted() {
    let cp = hanging_in_outages().await;
    cp.handle.start_outage(Duration::from_secs(600));
    let url = format!("{}/v1/peers/{}", cp.base, "cd".repeat(32));
    let hanging = tokio::spawn(reqwest::Client::new().get(url).send());
    let stats = stats_when(&cp, |s| s.requests_total == 1).await;
    assert_eq!(stats.requests_total, 1);
    assert_eq!(stats.by_status.get(PENDING), Some(&1), "{stats:?}");
    // The caller goes away (a killed daemon): the hang ends as aborted, not as a 503.
    hanging.abort();
    let stats = stats_when(&cp, |s| !s.by_status.contains_key(PENDING)).await;
    assert_eq!(stats.by_status.get(ABORTED), Some(&1), "{stats:?}");
    assert!(!stats.by_status.contains_key("503"), "{stats:?}");
}

/// A `nats-server` child on a free loopback port, killed on drop.
struct NatsServer {
    child: std::process::Child,
    url: String,
}

impl NatsServer {
    fn start() -> Option<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => Some(NatsServer {
                child,
                url: format!("nats://127.0.0.1:{port}"),
            }),
            Err(e) => {
                jitwg_testsupport::require(&[format!("a runnable nats-server ({e})")]);
                None
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn registration_publishes_new_peers_on_nats() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let mut sub_client = None;
    for _ in 0..100 {
        if let Ok(c) = async_nats::connect(&nats.url).await {
            sub_client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sub_client = sub_client.expect("nats-server did not come up");
    let mut sub = sub_client.subscribe("jitwg.test.peers").await.unwrap();
    sub_client.flush().await.unwrap();

    let cp = start(
        FaultConfig::default(),
        Some((nats.url.clone(), "jitwg.test.peers".into())),
    )
    .await;
    let docs: Vec<PeerDoc> = (0..3).map(doc).collect();
    cp.handle.register_many(&docs).await.unwrap();
    // Unchanged re-registration publishes nothing.
    cp.handle.register_many(&docs[..1]).await.unwrap();
    for want in &docs {
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        let got: PeerDoc = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(&got, want);
    }
    assert_eq!(cp.stats().await.published, 3);
}

#[tokio::test]
async fn tls_with_the_run_ca_and_the_bearer_token_are_enforced() {
    let pki = super::tls::RunPki::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let access = Access {
        tls: Some(pki.server_config(false).unwrap()),
        token: Some("t0ken".into()),
    };
    let cp = start_with(FaultConfig::default(), None, access).await;
    let base = &cp.base;
    let trusting = trusting_only(pki.ca_pem());
    let url = format!("{base}/v1/peers/{}", "ab".repeat(32));
    let status = |token: Option<&'static str>| {
        let mut request = trusting.get(&url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(Some("t0ken")).await, 404, "right token: an answer");
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("wrong")).await, 401);
    // The registration endpoints want the token too.
    let register = trusting
        .post(format!("{base}/v1/peers"))
        .json(&serde_json::json!({}));
    assert_eq!(register.send().await.unwrap().status().as_u16(), 401);
    // Refused lookups are still counted as arrivals.
    assert_eq!(cp.handle.stats().requests_total, 3);
    // A client that does not trust the run's CA fails the handshake.
    let other = super::tls::RunPki::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let untrusting = trusting_only(other.ca_pem());
    let err = untrusting
        .get(&url)
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

/// jitwgd's own channel (`jitwgd::channel`, as `--api-ca-file`, `--api-token-file`,
/// `--api-client-cert`/`--api-client-key` configure it) against a control plane that
/// requires the run's client certificate and token.
#[tokio::test]
async fn jitwgd_presents_its_client_certificate_and_token() {
    use jitwgd::api::{ApiAnswer, ApiClient};
    use jitwgd::channel::ChannelSecurity;
    use jitwgd::peer::PublicKey;

    let dir = tempfile::tempdir().unwrap();
    let pki = super::tls::RunPki::generate(&["127.0.0.1".parse().unwrap()]).unwrap();
    let files = pki.write(dir.path()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let access = Access {
        tls: Some(pki.server_config(true).unwrap()),
        token: Some("t0ken".into()),
    };
    let cp = start_with(FaultConfig::default(), None, access).await;
    let base = cp.base.clone();
    let full = ChannelSecurity {
        ca_file: Some(files.ca.clone()),
        token_file: Some(token_file.clone()),
        client_cert: Some((files.client_cert.clone(), files.client_key.clone())),
    };
    let ask = |security: ChannelSecurity| {
        let base = base.clone();
        async move {
            let client = ApiClient::secured(&base, Duration::from_secs(5), &security).unwrap();
            client.fetch(&PublicKey([7; 32])).await
        }
    };
    assert!(matches!(ask(full.clone()).await, ApiAnswer::NotFound));
    let without_cert = ChannelSecurity {
        client_cert: None,
        ..full.clone()
    };
    assert!(matches!(ask(without_cert).await, ApiAnswer::Unavailable(_)));
    let without_token = ChannelSecurity {
        token_file: None,
        ..full
    };
    match ask(without_token).await {
        ApiAnswer::Unavailable(e) => assert!(e.to_string().contains("credentials"), "{e}"),
        other => panic!("{other:?}"),
    }
}
