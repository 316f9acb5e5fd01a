//! Lookup: who is this key? The SQLite cache answers first (positive entries with a TTL,
//! negative entries for 404s with their own TTL); on a miss the control-plane API is asked,
//! at most once at a time per key, at most once per `api_min_interval` per key, with
//! retries and backoff for transport errors. API errors never mean "revoked", and a cached
//! positive entry keeps working while the API is down. Every answer is validated before use.
//!
//! A key with no cache entry at all (a first contact) passes admission control first
//! (`admission`: per-source 404 penalties, the global first-contact budget), and at most
//! `api_concurrency` requests are in flight. A cache that cannot be read is not a reason
//! to give up: the lookup goes on as a first contact and the failure is counted
//! (`jitwgd_store_errors_total{operation="cache_read"}`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::admission::{Admission, AdmissionSettings, Answer, Refusal};
use crate::api::{ApiAnswer, ApiClient, ApiError};
use crate::config::defaults;
use crate::errors::Causes;
use crate::metrics::{self, Metrics};
use crate::peer::{AddressPolicy, PeerConfig, PeerRejected, PublicKey};
use crate::store::{PeerSource, SharedStore, StoreCallError};

mod purge;
mod revalidate;

#[cfg(test)]
mod tests;

pub use purge::purge_loop;
pub use revalidate::revalidate_loop;

/// The timer of the lookup stage's background loops (`revalidate_loop`, `purge_loop`): a tick
/// every `every`, the first at once; a late tick delays the next instead of bunching them.
struct Every {
    tick: tokio::time::Interval,
}

impl Every {
    fn new(every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { tick }
    }

    /// Waits for the next tick; `false` once `cancel` fires (the loop then returns).
    async fn tick(&mut self, cancel: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}

/// Why a lookup found no answer to act on.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no control-plane API is configured")]
    NoApi,
    #[error("the control plane could not be asked")]
    Api(#[source] ApiError),
}

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
    /// Which allowed IPs an answer may carry (tunnel prefix, host routes unless widened);
    /// cached entries are checked against it again on every use.
    pub addresses: AddressPolicy,
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
            addresses: AddressPolicy::host_routes(defaults::ALLOWED_PREFIX),
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
        error: LookupError,
        latency: Option<Duration>,
    },
    /// The control plane answered 200 with a document we must not install.
    Refused { reason: PeerRejected },
    /// The key was looked up too recently; try again on a later initiation.
    RateLimited,
    /// A first contact refused by admission control (nothing was asked).
    Throttled { refusal: Refusal },
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
    store: SharedStore,
    api: Option<ApiClient>,
    config: LookupConfig,
    /// One async lock per key with a lookup in progress: the single-flight guarantee.
    in_flight: Mutex<Pruned<Arc<tokio::sync::Mutex<()>>>>,
    /// When each key last went to the API (entries older than `api_min_interval` are pruned).
    last_call: Mutex<Pruned<Instant>>,
    /// Admission control for first contacts (`None`: every first contact is asked about).
    admission: Option<Mutex<Admission>>,
    /// Caps control-plane requests in flight (`None`: no cap).
    api_slots: Option<Semaphore>,
    /// Where store errors and in-flight requests are counted (`None` in some tests).
    metrics: Option<Arc<Metrics>>,
    /// Woken when admission control may have judged a new source (a refusal, a 404), so
    /// the kernel shield follows within milliseconds instead of its next tick.
    judged_changed: Arc<tokio::sync::Notify>,
}

/// A per-key map pruned only when it has doubled since the last pruning (at least
/// `PRUNE_FLOOR` entries), so a storm of thousands of keys in flight costs amortised O(1)
/// per lookup instead of a scan of the whole map on every call.
struct Pruned<V> {
    map: HashMap<PublicKey, V>,
    prune_at: usize,
}

/// Maps smaller than this are never pruned.
const PRUNE_FLOOR: usize = 4096;

impl<V> Pruned<V> {
    fn new() -> Self {
        Pruned {
            map: HashMap::new(),
            prune_at: PRUNE_FLOOR,
        }
    }

    /// Drops the entries `keep` rejects when the map has grown past the threshold.
    fn prune_if_grown(&mut self, keep: impl FnMut(&PublicKey, &mut V) -> bool) {
        if self.map.len() >= self.prune_at {
            self.map.retain(keep);
            self.prune_at = (self.map.len() * 2).max(PRUNE_FLOOR);
        }
    }
}

/// Counts one request in `api_in_flight` while it lives.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(m: &'a Metrics) -> Self {
        m.api_in_flight.inc();
        InFlight(m)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.api_in_flight.dec();
    }
}

/// What the cache says about a key.
enum Cached {
    Negative,
    Fresh(PeerConfig),
    Stale(PeerConfig),
    Missing,
}

impl Lookup {
    pub fn new(store: SharedStore, api: Option<ApiClient>, config: LookupConfig) -> Self {
        Lookup {
            store,
            api,
            config,
            in_flight: Mutex::new(Pruned::new()),
            last_call: Mutex::new(Pruned::new()),
            admission: None,
            api_slots: None,
            metrics: None,
            judged_changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Apply admission control to first contacts.
    pub fn with_admission(mut self, settings: AdmissionSettings) -> Self {
        self.admission = Some(Mutex::new(Admission::new(settings, Instant::now())));
        self
    }

    /// At most `slots` control-plane requests in flight.
    pub fn with_api_concurrency(mut self, slots: usize) -> Self {
        self.api_slots = Some(Semaphore::new(slots.max(1)));
        self
    }

    /// Count store errors and in-flight requests in `metrics`.
    pub fn counting_in(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Who is `key`? See the module docs for the order of sources. No source address:
    /// admission control applies only its global budget.
    pub async fn lookup(&self, key: PublicKey, now: SystemTime) -> LookupOutcome {
        self.lookup_from(key, IpAddr::V4(Ipv4Addr::UNSPECIFIED), now)
            .await
    }

    /// `lookup` for an initiation that came from `src` (judged by its /24 or /64 if the
    /// key turns out to be a first contact).
    pub async fn lookup_from(&self, key: PublicKey, src: IpAddr, now: SystemTime) -> LookupOutcome {
        let _flight = self.single_flight(key).await;
        // Re-read the cache under the key's lock: a concurrent lookup may just have filled it.
        let cached = match self.read_cache(key, now).await {
            Ok(c) => c,
            Err(error) => {
                self.count_store_error("cache_read");
                tracing::warn!(peer = %key, error = %Causes(&error), "reading the peer cache failed; asking the control plane");
                Cached::Missing
            }
        };
        let stale = match self.recheck(key, cached) {
            Cached::Negative => {
                if let Some(admission) = &self.admission {
                    admission
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .negative_hit(src, Instant::now());
                }
                return LookupOutcome::NegativeHit;
            }
            Cached::Fresh(config) => return LookupOutcome::CacheHit(config),
            Cached::Stale(config) => Some(config),
            Cached::Missing => None,
        };
        let Some(api) = &self.api else {
            return match stale {
                Some(config) => LookupOutcome::CacheHit(config),
                None => LookupOutcome::ApiError {
                    error: LookupError::NoApi,
                    latency: None,
                },
            };
        };
        // Known keys (a stale entry) never wait for admission; first contacts do.
        let ticket = match (&stale, &self.admission) {
            (None, Some(admission)) => {
                let admitted = admission
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .admit(src, Instant::now());
                match admitted {
                    Ok(ticket) => Some(ticket),
                    Err(refusal) => return LookupOutcome::Throttled { refusal },
                }
            }
            _ => None,
        };
        if !self.take_api_slot(key) {
            // The token was never used: give it back as an unanswered lookup.
            self.answered(ticket, Answer::Unavailable);
            return match stale {
                Some(config) => LookupOutcome::CacheHit(config),
                None => LookupOutcome::RateLimited,
            };
        }
        let (answer, latency) = self.ask_with_retries(api, key).await;
        let admission_answer = match &answer {
            ApiAnswer::Found(_) => Answer::Found,
            ApiAnswer::NotFound => Answer::NotFound,
            ApiAnswer::Unavailable(_) => Answer::Unavailable,
        };
        self.answered(ticket, admission_answer);
        match answer {
            ApiAnswer::Found(doc) => match doc.validate(Some(key), &self.config.addresses) {
                Ok(config) => {
                    if let Err(e) = self.store_positive(&config, now).await {
                        self.count_store_error("cache_write");
                        tracing::warn!(peer = %key, error = %Causes(&e), "caching the peer failed");
                    }
                    LookupOutcome::ApiFound { config, latency }
                }
                Err(reason) => LookupOutcome::Refused { reason },
            },
            ApiAnswer::NotFound => {
                if let Err(e) = self.store_negative(key, now).await {
                    self.count_store_error("cache_write");
                    tracing::warn!(peer = %key, error = %Causes(&e), "caching the 404 failed");
                }
                LookupOutcome::ApiNotFound { latency }
            }
            ApiAnswer::Unavailable(error) => match stale {
                // The API being down is never a reason to stop serving a known peer.
                Some(config) => LookupOutcome::CacheHit(config),
                None => LookupOutcome::ApiError {
                    error: LookupError::Api(error),
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
            ApiAnswer::Found(doc) => match doc.validate(Some(key), &self.config.addresses) {
                Ok(config) => {
                    if let Err(e) = self.store_positive(&config, now).await {
                        tracing::warn!(peer = %key, error = %Causes(&e), "refreshing the cache entry failed");
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
                    tracing::warn!(peer = %key, error = %Causes(&e), "storing the revocation failed");
                }
                Revalidation::Revoked
            }
            ApiAnswer::Unavailable(_) => Revalidation::Unknown,
        }
    }

    /// A cached config is used only if it passes the current address settings (it was
    /// validated under the settings of the day it was stored); otherwise it counts as
    /// missing, so the control plane is asked again.
    fn recheck(&self, key: PublicKey, cached: Cached) -> Cached {
        let (Cached::Fresh(config) | Cached::Stale(config)) = &cached else {
            return cached;
        };
        match self.config.addresses.check_config(config) {
            Ok(()) => cached,
            Err(reason) => {
                tracing::warn!(peer = %key, reason = %reason, "cached config fails the current address settings; asking the control plane");
                Cached::Missing
            }
        }
    }

    /// Whether an initiation from `src` that is not known to come from a resolved key
    /// should be shed before identification (`Admission::screen`: its source network is
    /// penalised for 404s and its address offended or got no newcomer pass), and why.
    /// Never without admission control.
    pub fn sheds_source(&self, src: IpAddr, now: Instant) -> Option<Refusal> {
        let refusal = self.admission.as_ref().and_then(|admission| {
            admission
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .screen(src, now)
                .err()
        });
        if refusal.is_some() {
            self.judged_changed.notify_one();
        }
        refusal
    }

    /// Woken when a source may have been judged (see `judged_sources`).
    pub fn judged_changed(&self) -> Arc<tokio::sync::Notify> {
        self.judged_changed.clone()
    }

    /// The sources admission control judges at `now`, for the kernel shield (`None`:
    /// no admission control).
    pub fn judged_sources(&self, now: Instant) -> Option<crate::admission::Judged> {
        self.admission.as_ref().map(|admission| {
            admission
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .judged(now)
        })
    }

    /// Hand a first contact's admission ticket back with its answer.
    fn answered(&self, ticket: Option<crate::admission::Ticket>, answer: Answer) {
        let (Some(ticket), Some(admission)) = (ticket, &self.admission) else {
            return;
        };
        let mut admission = admission
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        admission.answered(ticket, answer, Instant::now());
        if answer == Answer::NotFound {
            self.judged_changed.notify_one();
        }
        if let Some(m) = &self.metrics {
            m.unknown_not_found_share.set(admission.not_found_share());
        }
    }

    fn count_store_error(&self, operation: &'static str) {
        if let Some(m) = &self.metrics {
            metrics::count_store_error(m, operation);
        }
    }

    async fn single_flight(&self, key: PublicKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self
                .in_flight
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Forget locks nobody holds or waits for, so the map stays small.
            map.prune_if_grown(|_, l| Arc::strong_count(l) > 1);
            map.map.entry(key).or_default().clone()
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
        map.prune_if_grown(|_, at| now.duration_since(*at) < interval);
        match map.map.get(&key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                map.map.insert(key, now);
                true
            }
        }
    }

    async fn ask_with_retries(&self, api: &ApiClient, key: PublicKey) -> (ApiAnswer, Duration) {
        // Waiting here is bounded: the callers are bounded by `--max-pending`.
        let _slot = match &self.api_slots {
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        let _in_flight = self.metrics.as_deref().map(InFlight::new);
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

    async fn read_cache(&self, key: PublicKey, now: SystemTime) -> Result<Cached, StoreCallError> {
        self.store
            .call(move |store| {
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

    async fn store_positive(
        &self,
        config: &PeerConfig,
        now: SystemTime,
    ) -> Result<(), StoreCallError> {
        let config = config.clone();
        let ttl = self.config.positive_ttl;
        self.store
            .call(move |store| store.put_peer(&config, PeerSource::Api, now, ttl))
            .await
    }

    async fn store_negative(&self, key: PublicKey, now: SystemTime) -> Result<(), StoreCallError> {
        let ttl = self.config.negative_ttl;
        self.store
            .call(move |store| store.put_negative(&key, now, ttl))
            .await
    }

    /// Keys whose positive cache entry has expired (candidates for revalidation).
    pub async fn expired(&self, now: SystemTime) -> Result<Vec<PublicKey>, StoreCallError> {
        self.store.call(move |store| store.expired_peers(now)).await
    }
}
