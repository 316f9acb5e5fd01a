//! The lookup stage against a real HTTP server on loopback whose answers and
//! call counts the tests control.
use super::*;
use crate::peer::PeerDocument;
use crate::store::Store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::collections::HashMap as Map;

#[derive(Default)]
struct Api {
    docs: Mutex<Map<String, PeerDocument>>,
    calls: Mutex<Map<String, u32>>,
    /// Answer 503 to everything.
    failing: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
}

impl Api {
    fn calls(&self, key: PublicKey) -> u32 {
        self.calls
            .lock()
            .unwrap()
            .get(&key.to_hex())
            .copied()
            .unwrap_or(0)
    }
    fn register(&self, key: PublicKey, allowed: &str) {
        self.docs.lock().unwrap().insert(
            key.to_hex(),
            PeerDocument {
                public_key: key.to_base64(),
                allowed_ips: vec![allowed.into()],
                preshared_key: None,
            },
        );
    }
}

async fn answer(State(api): State<Arc<Api>>, Path(key): Path<String>) -> Response {
    *api.calls.lock().unwrap().entry(key.clone()).or_default() += 1;
    let delay = api.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    if api.failing.load(std::sync::atomic::Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let doc = api.docs.lock().unwrap().get(&key).cloned();
    match doc {
        Some(doc) => Json(doc).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve() -> (Arc<Api>, String) {
    let api = Arc::new(Api::default());
    let router = Router::new()
        .route("/v1/peers/{key}", get(answer))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (api, url)
}

fn lookup_with(url: &str, config: LookupConfig) -> Lookup {
    let store = SharedStore::new(Store::open_in_memory().unwrap());
    let api = ApiClient::new(url, Duration::from_secs(2)).unwrap();
    Lookup::new(store, Some(api), config)
}

fn quick() -> LookupConfig {
    LookupConfig {
        api_min_interval: Duration::ZERO,
        backoff: Duration::from_millis(1),
        ..LookupConfig::default()
    }
}

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

#[tokio::test]
async fn found_then_cached() {
    let (api, url) = serve().await;
    api.register(key(1), "100.64.0.2/32");
    let lookup = lookup_with(&url, quick());
    let now = SystemTime::now();
    assert!(matches!(
        lookup.lookup(key(1), now).await,
        LookupOutcome::ApiFound { .. }
    ));
    assert!(matches!(
        lookup.lookup(key(1), now).await,
        LookupOutcome::CacheHit(_)
    ));
    assert_eq!(api.calls(key(1)), 1);
}

#[tokio::test]
async fn many_concurrent_initiations_make_one_request() {
    let (api, url) = serve().await;
    api.register(key(2), "100.64.0.3/32");
    api.delay_ms.store(100, std::sync::atomic::Ordering::SeqCst);
    let lookup = Arc::new(lookup_with(&url, quick()));
    let now = SystemTime::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let l = lookup.clone();
            tokio::spawn(async move { l.lookup(key(2), now).await })
        })
        .collect();
    for t in tasks {
        let outcome = t.await.unwrap();
        assert!(matches!(
            outcome,
            LookupOutcome::ApiFound { .. } | LookupOutcome::CacheHit(_)
        ));
    }
    assert_eq!(api.calls(key(2)), 1);
}

#[tokio::test]
async fn not_found_is_cached_negatively_until_its_ttl() {
    let (api, url) = serve().await;
    let config = LookupConfig {
        negative_ttl: Duration::from_secs(60),
        ..quick()
    };
    let lookup = lookup_with(&url, config);
    let now = SystemTime::now();
    assert!(matches!(
        lookup.lookup(key(3), now).await,
        LookupOutcome::ApiNotFound { .. }
    ));
    for _ in 0..10 {
        assert!(matches!(
            lookup.lookup(key(3), now).await,
            LookupOutcome::NegativeHit
        ));
    }
    assert_eq!(api.calls(key(3)), 1);
    // After the TTL the API is asked again.
    let later = now + Duration::from_secs(61);
    assert!(matches!(
        lookup.lookup(key(3), later).await,
        LookupOutcome::ApiNotFound { .. }
    ));
    assert_eq!(api.calls(key(3)), 2);
}

#[tokio::test]
async fn api_errors_are_retried_and_never_mean_revoked() {
    let (api, url) = serve().await;
    api.register(key(4), "100.64.0.4/32");
    let config = quick();
    let retries = config.api_retries;
    let lookup = lookup_with(&url, config);
    let now = SystemTime::now();
    assert!(matches!(
        lookup.lookup(key(4), now).await,
        LookupOutcome::ApiFound { .. }
    ));
    api.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    // Expired entry, API down: the cached config is still used...
    let later = now + Duration::from_secs(3600);
    assert!(matches!(
        lookup.lookup(key(4), later).await,
        LookupOutcome::CacheHit(_)
    ));
    // ...each lookup tried 1 + api_retries times...
    assert_eq!(api.calls(key(4)), 1 + (1 + retries));
    // ...and revalidation during the outage keeps the peer.
    assert!(matches!(
        lookup.revalidate(key(4), later).await,
        Revalidation::Unknown
    ));
    // An unknown key during the outage is an error, not a negative entry.
    assert!(matches!(
        lookup.lookup(key(5), now).await,
        LookupOutcome::ApiError { .. }
    ));
    api.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        lookup.lookup(key(5), now).await,
        LookupOutcome::ApiNotFound { .. }
    ));
}

#[tokio::test]
async fn per_key_rate_limit_bounds_api_calls() {
    let (api, url) = serve().await;
    let config = LookupConfig {
        api_min_interval: Duration::from_secs(60),
        negative_ttl: Duration::ZERO,
        ..quick()
    };
    let lookup = lookup_with(&url, config);
    let now = SystemTime::now();
    assert!(matches!(
        lookup.lookup(key(6), now).await,
        LookupOutcome::ApiNotFound { .. }
    ));
    for _ in 0..5 {
        assert!(matches!(
            lookup.lookup(key(6), now).await,
            LookupOutcome::RateLimited
        ));
    }
    assert_eq!(api.calls(key(6)), 1);
}

#[tokio::test]
async fn answers_outside_the_prefix_or_for_another_key_are_refused() {
    let (api, url) = serve().await;
    api.register(key(7), "100.128.0.1/32");
    // The server answers key 8's URL with key 9's document.
    api.docs.lock().unwrap().insert(
        key(8).to_hex(),
        PeerDocument {
            public_key: key(9).to_base64(),
            allowed_ips: vec!["100.64.0.9/32".into()],
            preshared_key: None,
        },
    );
    let lookup = lookup_with(&url, quick());
    let now = SystemTime::now();
    assert!(matches!(
        lookup.lookup(key(7), now).await,
        LookupOutcome::Refused { .. }
    ));
    assert!(matches!(
        lookup.lookup(key(8), now).await,
        LookupOutcome::Refused { .. }
    ));
    // Nothing refused was cached.
    assert!(lookup
        .store
        .call(|s| s.get_peer(&key(7)))
        .await
        .unwrap()
        .is_none());
    assert!(lookup
        .store
        .call(|s| s.get_peer(&key(8)))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn revocation_is_detected_and_blocks_reinstall() {
    let (api, url) = serve().await;
    api.register(key(10), "100.64.0.10/32");
    let lookup = lookup_with(&url, quick());
    let now = SystemTime::now();
    assert!(matches!(
        lookup.lookup(key(10), now).await,
        LookupOutcome::ApiFound { .. }
    ));
    assert!(matches!(
        lookup.revalidate(key(10), now).await,
        Revalidation::StillValid(_)
    ));
    api.docs.lock().unwrap().clear();
    assert!(matches!(
        lookup.revalidate(key(10), now).await,
        Revalidation::Revoked
    ));
    let calls = api.calls(key(10));
    assert!(matches!(
        lookup.lookup(key(10), now).await,
        LookupOutcome::NegativeHit
    ));
    assert_eq!(api.calls(key(10)), calls);
}

#[test]
fn per_key_maps_are_pruned_only_after_doubling() {
    let mut pruned: Pruned<bool> = Pruned::new();
    let key = |n: usize| {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(n as u64).to_be_bytes());
        PublicKey(k)
    };
    // Below the floor nothing is dropped, whatever `keep` says.
    for n in 0..PRUNE_FLOOR - 1 {
        pruned.map.insert(key(n), n % 2 == 0);
        pruned.prune_if_grown(|_, keep| *keep);
    }
    assert_eq!(pruned.map.len(), PRUNE_FLOOR - 1);
    // At the floor the rejected half goes; the next pruning waits for the floor again.
    pruned.map.insert(key(PRUNE_FLOOR - 1), false);
    pruned.prune_if_grown(|_, keep| *keep);
    assert_eq!(pruned.map.len(), PRUNE_FLOOR / 2);
    assert_eq!(pruned.prune_at, PRUNE_FLOOR);
    // All kept: each pruning (at 4,096, then 8,192) sets the threshold to twice the size.
    for n in PRUNE_FLOOR..3 * PRUNE_FLOOR {
        pruned.map.insert(key(n), true);
        pruned.prune_if_grown(|_, keep| *keep);
    }
    assert_eq!(pruned.prune_at, 4 * PRUNE_FLOOR);
    assert_eq!(pruned.map.len(), PRUNE_FLOOR / 2 + 2 * PRUNE_FLOOR);
}

#[tokio::test]
async fn a_cached_config_the_current_settings_refuse_is_asked_about_again() {
    let (api, url) = serve().await;
    api.register(key(30), "100.64.3.0/24");
    let store = SharedStore::new(Store::open_in_memory().unwrap());
    let client = ApiClient::new(&url, Duration::from_secs(2)).unwrap();
    let now = SystemTime::now();
    // Cached under settings that allowed /24s.
    let widened = LookupConfig {
        addresses: AddressPolicy {
            min_len_v4: 24,
            ..AddressPolicy::host_routes(defaults::ALLOWED_PREFIX)
        },
        ..quick()
    };
    let before = Lookup::new(store.clone(), Some(client.clone()), widened);
    assert!(matches!(
        before.lookup(key(30), now).await,
        LookupOutcome::ApiFound { .. }
    ));
    // Restarted with host routes only: the fresh cache entry is not used, the control
    // plane is asked, and its (unchanged) answer refused.
    let after = Lookup::new(store, Some(client), quick());
    assert!(matches!(
        after.lookup(key(30), now).await,
        LookupOutcome::Refused {
            reason: PeerRejected::TooWide { .. }
        }
    ));
    assert_eq!(api.calls(key(30)), 2);
    // Once the control plane answers with a host route, that is what is used.
    api.register(key(30), "100.64.3.7/32");
    match after.lookup(key(30), now).await {
        LookupOutcome::ApiFound { config, .. } => {
            assert_eq!(
                config.allowed_ips,
                vec!["100.64.3.7/32".parse::<ipnet::IpNet>().unwrap()]
            )
        }
        other => panic!("{other:?}"),
    }
}

fn admission(burst: u32, budget: u32) -> crate::admission::AdmissionSettings {
    use crate::admission::{BudgetSettings, PenaltySettings};
    crate::admission::AdmissionSettings {
        penalties: PenaltySettings {
            burst,
            forgive_every: Duration::from_secs(60),
            max_sources: 1024,
        },
        budget: BudgetSettings {
            rate: 0.001,
            floor_rate: 0.001,
            burst: budget,
            share_window: crate::admission::SHARE_WINDOW,
        },
        addresses: crate::admission::AddressSettings::off(),
    }
}

/// A fresh-key flood from one /24 is cut off after its penalty burst; a new client from
/// another /24 still gets through, and a known key is never asked about admission.
#[tokio::test]
async fn a_404_flood_is_cut_off_by_source_while_other_sources_resolve() {
    let (api, url) = serve().await;
    api.register(key(200), "100.64.0.2/32");
    api.register(key(201), "100.64.0.3/32");
    let metrics = Metrics::new();
    let lookup = lookup_with(&url, quick())
        .with_admission(admission(3, 100))
        .with_api_concurrency(4)
        .counting_in(metrics.clone());
    let now = SystemTime::now();
    // The known key first, so it is cached.
    assert!(matches!(
        lookup
            .lookup_from(key(200), "198.18.9.1".parse().unwrap(), now)
            .await,
        LookupOutcome::ApiFound { .. }
    ));
    let flood: IpAddr = "198.18.1.7".parse().unwrap();
    let mut not_found = 0;
    let mut throttled = 0;
    for n in 0..50u8 {
        match lookup.lookup_from(key(n), flood, now).await {
            LookupOutcome::ApiNotFound { .. } => not_found += 1,
            LookupOutcome::Throttled {
                refusal: Refusal::SourcePenalised,
            } => throttled += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((not_found, throttled), (3, 47));
    assert!(matches!(
        lookup
            .lookup_from(key(201), "198.18.2.7".parse().unwrap(), now)
            .await,
        LookupOutcome::ApiFound { .. }
    ));
    // A known key from the penalised network is served from the cache.
    assert!(matches!(
        lookup.lookup_from(key(200), flood, now).await,
        LookupOutcome::CacheHit(_)
    ));
    assert!(metrics.unknown_not_found_share.get() > 0.5);
    assert_eq!(metrics.api_in_flight.get(), 0);
}

/// Keys that resolve give their token back: a storm of them is never throttled by a
/// budget far smaller than the storm.
#[tokio::test]
async fn a_storm_of_resolving_keys_is_never_throttled() {
    let (api, url) = serve().await;
    for n in 0..100u8 {
        api.register(key(n), &format!("100.64.1.{n}/32"));
    }
    let lookup = lookup_with(&url, quick()).with_admission(admission(1, 2));
    let now = SystemTime::now();
    for n in 0..100u8 {
        let src: IpAddr = "198.18.1.7".parse().unwrap();
        assert!(matches!(
            lookup.lookup_from(key(n), src, now).await,
            LookupOutcome::ApiFound { .. }
        ));
    }
}

/// A store that fails (here: its lock poisoned by a panicking call) does not stop
/// lookups: they go to the API and the failure is counted as `store_error`.
#[tokio::test]
async fn a_failing_cache_falls_through_to_the_api_and_is_counted() {
    let (api, url) = serve().await;
    api.register(key(7), "100.64.0.7/32");
    let store = SharedStore::new(Store::open_in_memory().unwrap());
    let poisoned = store
        .call(|_| -> Result<(), crate::store::StoreError> { panic!("poison the store lock") })
        .await;
    assert!(poisoned.is_err());
    let metrics = Metrics::new();
    let api_client = ApiClient::new(&url, Duration::from_secs(2)).unwrap();
    let lookup = Lookup::new(store, Some(api_client), quick()).counting_in(metrics.clone());
    assert!(matches!(
        lookup.lookup(key(7), SystemTime::now()).await,
        LookupOutcome::ApiFound { .. }
    ));
    assert_eq!(api.calls(key(7)), 1);
    let text = metrics.encode();
    assert!(
        text.contains("jitwgd_store_errors_total{operation=\"cache_read\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("jitwgd_store_errors_total{operation=\"cache_write\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_background_timer_ticks_at_once_then_every_period_until_cancelled() {
    let period = Duration::from_secs(1);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut ticks = Every::new(period);
    let start = tokio::time::Instant::now();
    assert!(ticks.tick(&cancel).await);
    assert!(start.elapsed() < period, "the first tick is at once");
    assert!(ticks.tick(&cancel).await);
    assert!(start.elapsed() >= period);
    cancel.cancel();
    assert!(!ticks.tick(&cancel).await, "a cancelled loop stops");
}

/// The second level: inside a /24 penalised for a flooder's 404s, the flooder's address
/// is shed and refused, while a quiet neighbour screened through on a newcomer pass is
/// still looked up; without a pass the network's penalty refuses as before.
#[tokio::test]
async fn a_quiet_neighbour_of_a_flooder_gets_in_on_a_newcomer_pass() {
    use crate::admission::AddressSettings;
    let (api, url) = serve().await;
    api.register(key(200), "100.64.0.2/32");
    let mut settings = admission(3, 100);
    settings.addresses = AddressSettings {
        quiet_gap: Duration::from_secs(1),
        hold: Duration::from_secs(60),
        capacity: 64,
        newcomer_burst: 2,
        newcomer_rate: 0.001,
    };
    let lookup = lookup_with(&url, quick()).with_admission(settings);
    let now = SystemTime::now();
    let flood: IpAddr = "198.18.1.7".parse().unwrap();
    for n in 0..3u8 {
        assert_eq!(lookup.sheds_source(flood, Instant::now()), None);
        assert!(matches!(
            lookup.lookup_from(key(n), flood, now).await,
            LookupOutcome::ApiNotFound { .. }
        ));
    }
    assert_eq!(
        lookup.sheds_source(flood, Instant::now()),
        Some(Refusal::AddressPenalised)
    );
    assert!(matches!(
        lookup.lookup_from(key(50), flood, now).await,
        LookupOutcome::Throttled {
            refusal: Refusal::AddressPenalised
        }
    ));
    let neighbour: IpAddr = "198.18.1.99".parse().unwrap();
    assert_eq!(lookup.sheds_source(neighbour, Instant::now()), None);
    assert!(matches!(
        lookup.lookup_from(key(200), neighbour, now).await,
        LookupOutcome::ApiFound { .. }
    ));
    assert!(matches!(
        lookup
            .lookup_from(key(201), "198.18.1.98".parse().unwrap(), now)
            .await,
        LookupOutcome::Throttled {
            refusal: Refusal::SourcePenalised
        }
    ));
}
