//! Lookup: who is this key? The SQLite cache answers first (positive entries with a TTL,
//! negative entries for 404s with their own TTL); on a miss the control-plane API is asked,
//! at most once at a time per key, at most once per `api_min_interval` per key, with
//! retries and backoff for transport errors. API errors never mean "revoked", and a cached
//! positive entry keeps working while the API is down. Every answer is validated before use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::api::{ApiAnswer, ApiClient};
use crate::config::defaults;
use crate::peer::{PeerConfig, PublicKey};
use crate::store::{PeerSource, Store};

/// How the lookup stage behaves.
#[derive(Clone, Debug)]
pub struct LookupConfig {
    /// How long a control-plane answer "this key exists" is trusted before revalidation.
    pub positive_ttl: Duration,
    /// How long a 404 is remembered: no API call for the key until it passes.
    pub negative_ttl: Duration,
    /// At most one API call per key per this interval, whatever the traffic.
    pub api_min_interval: Duration,
    /// Extra attempts after a transport error or a 5xx (not after a 404).
    pub api_retries: u32,
    /// First retry delay; doubled per attempt, capped at `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Every allowed IP of an answer must lie inside this prefix.
    pub tunnel_prefix: IpNet,
}

impl Default for LookupConfig {
    fn default() -> Self {
        // The settings a user can change come from the one place jitwgd keeps defaults.
        LookupConfig {
            positive_ttl: defaults::POSITIVE_TTL,
            negative_ttl: defaults::NEGATIVE_TTL,
            api_min_interval: defaults::API_MIN_INTERVAL,
            api_retries: defaults::API_RETRIES,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            tunnel_prefix: defaults::ALLOWED_PREFIX,
        }
    }
}

/// The answer of one lookup, with where it came from (the daemon counts each kind).
#[derive(Debug)]
pub enum LookupOutcome {
    /// A cached positive entry (fresh, or expired while the API could not be asked).
    CacheHit(PeerConfig),
    /// A live negative entry: the control plane said 404 recently.
    NegativeHit,
    /// The control plane answered 200 and the answer passed validation (now cached).
    ApiFound {
        config: PeerConfig,
        latency: Duration,
    },
    /// The control plane answered 404 (now cached negatively).
    ApiNotFound { latency: Duration },
    /// The control plane could not be asked or answered badly; nothing was cached.
    ApiError {
        error: String,
        latency: Option<Duration>,
    },
    /// The control plane answered 200 with a document we must not install.
    Refused { reason: String },
    /// The key was looked up too recently; try again on a later initiation.
    RateLimited,
}

/// The verdict of revalidating an installed peer whose positive entry expired.
#[derive(Debug)]
pub enum Revalidation {
    /// Still known (entry refreshed).
    StillValid(PeerConfig),
    /// The control plane now answers 404: remove the peer (negative entry stored).
    Revoked,
    /// No verdict (API error, rate limit, or an answer that failed validation): keep the peer.
    Unknown,
}

/// The lookup stage. Shared by all capture tasks.
pub struct Lookup {
    store: Arc<Mutex<Store>>,
    api: Option<ApiClient>,
    config: LookupConfig,
    /// One async lock per key with a lookup in progress: the single-flight guarantee.
    in_flight: Mutex<HashMap<PublicKey, Arc<tokio::sync::Mutex<()>>>>,
    /// When each key last went to the API (entries older than `api_min_interval` are pruned).
    last_call: Mutex<HashMap<PublicKey, Instant>>,
}

/// What the cache says about a key.
enum Cached {
    Negative,
    Fresh(PeerConfig),
    Stale(PeerConfig),
    Missing,
}

impl Lookup {
    pub fn new(store: Arc<Mutex<Store>>, api: Option<ApiClient>, config: LookupConfig) -> Self {
        Lookup {
            store,
            api,
            config,
            in_flight: Mutex::new(HashMap::new()),
            last_call: Mutex::new(HashMap::new()),
        }
    }

    /// Who is `key`? See the module docs for the order of sources.
    pub async fn lookup(&self, key: PublicKey, now: SystemTime) -> LookupOutcome {
        let _flight = self.single_flight(key).await;
        // Re-read the cache under the key's lock: a concurrent lookup may just have filled it.
        let cached = match self.read_cache(key, now).await {
            Ok(c) => c,
            Err(error) => {
                return LookupOutcome::ApiError {
                    error: format!("cache read failed: {error}"),
                    latency: None,
                }
            }
        };
        let stale = match cached {
            Cached::Negative => return LookupOutcome::NegativeHit,
            Cached::Fresh(config) => return LookupOutcome::CacheHit(config),
            Cached::Stale(config) => Some(config),
            Cached::Missing => None,
        };
        let Some(api) = &self.api else {
            return match stale {
                Some(config) => LookupOutcome::CacheHit(config),
                None => LookupOutcome::ApiError {
                    error: "no control-plane API configured".into(),
                    latency: None,
                },
            };
        };
        if !self.take_api_slot(key) {
            return match stale {
                Some(config) => LookupOutcome::CacheHit(config),
                None => LookupOutcome::RateLimited,
            };
        }
        let (answer, latency) = self.ask_with_retries(api, key).await;
        match answer {
            ApiAnswer::Found(doc) => match doc.validate(Some(key), self.config.tunnel_prefix) {
                Ok(config) => {
                    if let Err(e) = self.store_positive(&config, now).await {
                        tracing::warn!(peer = %key, error = %e, "caching the peer failed");
                    }
                    LookupOutcome::ApiFound { config, latency }
                }
                Err(reason) => LookupOutcome::Refused {
                    reason: reason.to_string(),
                },
            },
            ApiAnswer::NotFound => {
                if let Err(e) = self.store_negative(key, now).await {
                    tracing::warn!(peer = %key, error = %e, "caching the 404 failed");
                }
                LookupOutcome::ApiNotFound { latency }
            }
            ApiAnswer::Unavailable(error) => match stale {
                // The API being down is never a reason to stop serving a known peer.
                Some(config) => LookupOutcome::CacheHit(config),
                None => LookupOutcome::ApiError {
                    error: error.to_string(),
                    latency: Some(latency),
                },
            },
        }
    }

    /// Asks the control plane again about an installed peer whose entry expired.
    pub async fn revalidate(&self, key: PublicKey, now: SystemTime) -> Revalidation {
        let Some(api) = &self.api else {
            return Revalidation::Unknown;
        };
        let _flight = self.single_flight(key).await;
        if !self.take_api_slot(key) {
            return Revalidation::Unknown;
        }
        let (answer, _latency) = self.ask_with_retries(api, key).await;
        match answer {
            ApiAnswer::Found(doc) => match doc.validate(Some(key), self.config.tunnel_prefix) {
                Ok(config) => {
                    if let Err(e) = self.store_positive(&config, now).await {
                        tracing::warn!(peer = %key, error = %e, "refreshing the cache entry failed");
                    }
                    Revalidation::StillValid(config)
                }
                Err(reason) => {
                    tracing::warn!(peer = %key, reason = %reason, "revalidation answer refused; keeping the peer");
                    Revalidation::Unknown
                }
            },
            ApiAnswer::NotFound => {
                if let Err(e) = self.store_negative(key, now).await {
                    tracing::warn!(peer = %key, error = %e, "storing the revocation failed");
                }
                Revalidation::Revoked
            }
            ApiAnswer::Unavailable(_) => Revalidation::Unknown,
        }
    }

    async fn single_flight(&self, key: PublicKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Forget locks nobody holds or waits for, so the map stays small.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Whether `key` may go to the API now; records the call when it may.
    fn take_api_slot(&self, key: PublicKey) -> bool {
        let now = Instant::now();
        let interval = self.config.api_min_interval;
        let mut map = self
            .last_call
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if map.len() > 4096 {
            map.retain(|_, at| now.duration_since(*at) < interval);
        }
        match map.get(&key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }

    async fn ask_with_retries(&self, api: &ApiClient, key: PublicKey) -> (ApiAnswer, Duration) {
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            let timed = api.fetch_timed(&key).await;
            let retry = matches!(timed.answer, ApiAnswer::Unavailable(_))
                && attempt < self.config.api_retries;
            if !retry {
                return (timed.answer, timed.latency);
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.config.max_backoff);
        }
    }

    async fn read_cache(&self, key: PublicKey, now: SystemTime) -> Result<Cached, String> {
        self.with_store(move |store| {
            if store.get_negative(&key, now)? {
                return Ok(Cached::Negative);
            }
            Ok(match store.get_peer(&key)? {
                Some(entry) if entry.is_fresh(now) => Cached::Fresh(entry.config),
                Some(entry) => Cached::Stale(entry.config),
                None => Cached::Missing,
            })
        })
        .await
    }

    async fn store_positive(&self, config: &PeerConfig, now: SystemTime) -> Result<(), String> {
        let config = config.clone();
        let ttl = self.config.positive_ttl;
        self.with_store(move |store| store.put_peer(&config, PeerSource::Api, now, ttl))
            .await
    }

    async fn store_negative(&self, key: PublicKey, now: SystemTime) -> Result<(), String> {
        let ttl = self.config.negative_ttl;
        self.with_store(move |store| store.put_negative(&key, now, ttl))
            .await
    }

    /// Runs a store operation on the blocking pool (SQLite calls block).
    async fn with_store<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store
                .lock()
                .map_err(|_| "store lock poisoned".to_string())?;
            f(&mut guard).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("store task failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    //! The lookup stage against a real HTTP server on loopback whose answers and
    //! call counts the tests control.
    use super::*;
    use crate::peer::PeerDocument;
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
        let store = Arc::new(Mutex::new(Store::open_in_memory().unwrap()));
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
            .lock()
            .unwrap()
            .get_peer(&key(7))
            .unwrap()
            .is_none());
        assert!(lookup
            .store
            .lock()
            .unwrap()
            .get_peer(&key(8))
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
}
