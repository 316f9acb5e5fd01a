//! `Pipeline::handle` end to end without root: real initiations (boringtun), a real
//! lookup over an in-memory store, and the install worker over a data plane fake that
//! counts installs. Pins the two-level replay guard and its fallback to memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};

use super::*;
use crate::dataplane::{DataPlaneError, InstalledPeer};
use crate::identify::Initiation;
use crate::install::{Backend, InstallSettings, InstallWorker, PeerChange, Plan};
use crate::lookup::LookupConfig;
use crate::store::{PeerSource, Store};

#[derive(Default)]
struct CountingPlane {
    installs: AtomicUsize,
}

impl Backend for CountingPlane {
    fn apply(&self, plan: &Plan) -> Result<(), DataPlaneError> {
        let n = plan
            .0
            .iter()
            .filter(|c| matches!(c, PeerChange::Install { .. }))
            .count();
        self.installs.fetch_add(n, Ordering::SeqCst);
        Ok(())
    }
    fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
        Ok(Vec::new())
    }
}

const GATEWAY_PRIVATE: [u8; 32] = [7; 32];

/// An initiation from `client` to the gateway, and the client's public key.
fn initiation(client: [u8; 32]) -> (Initiation, PublicKey) {
    let (packet, public) = initiation_packet(client);
    let keys = ResponderKeys::new(GATEWAY_PRIVATE);
    (identify::identify(&keys, &packet).unwrap(), public)
}

/// An initiation from `client` to the gateway as sent on the wire, and the client's key.
fn initiation_packet(client: [u8; 32]) -> (Vec<u8>, PublicKey) {
    let keys = ResponderKeys::new(GATEWAY_PRIVATE);
    let gateway = boringtun::x25519::PublicKey::from(keys.public_key().0);
    let secret = boringtun::x25519::StaticSecret::from(client);
    let public = PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes());
    let mut tunn = Tunn::new(secret, gateway, None, None, 1, None);
    let mut buf = [0u8; 256];
    let TunnResult::WriteToNetwork(bytes) = tunn.format_handshake_initiation(&mut buf, false)
    else {
        panic!("no initiation");
    };
    (bytes.to_vec(), public)
}

struct Rig {
    pipeline: Arc<Pipeline>,
    plane: Arc<CountingPlane>,
    metrics: Arc<Metrics>,
    _worker: InstallWorker,
}

/// A pipeline whose lookup store knows `known`; `replay_store` holds the durable guard.
async fn rig(known: PublicKey, replay_store: SharedStore) -> Rig {
    rig_with(
        known,
        replay_store,
        false,
        GuardFlag::default(),
        Default::default(),
    )
    .await
}

/// `rig`, with role inversion `initiate`, the storm guard's `flag` and `limits`.
async fn rig_with(
    known: PublicKey,
    replay_store: SharedStore,
    initiate: bool,
    flag: GuardFlag,
    limits: PipelineLimits,
) -> Rig {
    let lookup_store = SharedStore::new(Store::open_in_memory().unwrap());
    let config = PeerConfig {
        public_key: known,
        allowed_ips: vec!["100.64.0.9/32".parse().unwrap()],
        preshared_key: None,
    };
    lookup_store
        .call(move |s| {
            s.put_peer(
                &config,
                PeerSource::Api,
                SystemTime::now(),
                Duration::from_secs(600),
            )
        })
        .await
        .unwrap();
    let metrics = Metrics::new();
    let plane = Arc::new(CountingPlane::default());
    let (worker, queue) = InstallWorker::start(
        plane.clone(),
        Vec::new(),
        InstallSettings {
            initiate,
            initiate_rate: 0,
            sweep_chunk: 16,
            sweep_budget: Duration::from_millis(50),
            initiate_feedback: None,
        },
        metrics.clone(),
    )
    .unwrap();
    let lookup = Arc::new(Lookup::new(lookup_store, None, LookupConfig::default()));
    let pipeline = Arc::new(
        Pipeline::new(
            ResponderKeys::new(GATEWAY_PRIVATE),
            replay_store,
            lookup,
            queue,
            metrics.clone(),
        )
        .with_storm_guard(flag)
        .with_limits(limits),
    );
    Rig {
        pipeline,
        plane,
        metrics,
        _worker: worker,
    }
}

impl Rig {
    async fn handle(&self, init: Initiation) {
        let permit = self.pipeline.handlers.clone().try_acquire_owned().unwrap();
        let src: SocketAddr = "198.18.0.2:51820".parse().unwrap();
        self.pipeline
            .clone()
            .handle(init.into(), src, Instant::now(), permit)
            .await;
    }

    fn installs(&self) -> usize {
        self.plane.installs.load(Ordering::SeqCst)
    }

    fn metric(&self, line: &str) -> bool {
        self.metrics.encode().contains(line)
    }
}

#[tokio::test]
async fn a_replay_is_caught_in_memory_and_after_a_restart_on_disk() {
    let (init, key) = initiation([1; 32]);
    let durable = SharedStore::new(Store::open_in_memory().unwrap());
    let rig1 = rig(key, durable.clone()).await;
    rig1.handle(init).await;
    assert_eq!(rig1.installs(), 1);
    assert!(
        rig1.pipeline.known_keys.contains(&key),
        "a resolved key is remembered"
    );
    // The same bytes from another source: the memory guard.
    rig1.handle(init).await;
    assert!(rig1.metric("jitwgd_initiations_dropped_total{reason=\"replay\"} 1"));

    // A new daemon (empty memory, nothing installed) on the same database.
    let rig2 = rig(key, durable).await;
    rig2.handle(init).await;
    assert_eq!(rig2.installs(), 0, "replayed after a restart and installed");
    assert!(rig2.metric("jitwgd_initiations_dropped_total{reason=\"replay\"} 1"));
}

#[tokio::test]
async fn unknown_keys_write_no_replay_rows() {
    let (init, _) = initiation([2; 32]);
    let (_, known) = initiation([3; 32]);
    let durable = SharedStore::new(Store::open_in_memory().unwrap());
    let rig = rig(known, durable.clone()).await;
    rig.handle(init).await;
    assert_eq!(rig.installs(), 0);
    assert_eq!(durable.call(|s| s.replay_count()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_failing_durable_guard_falls_back_to_memory() {
    let (init, key) = initiation([4; 32]);
    let broken = SharedStore::new(Store::open_in_memory().unwrap());
    let _ = broken
        .call(|_| -> Result<(), crate::store::StoreError> { panic!("poison the store lock") })
        .await;
    let rig = rig(key, broken).await;
    rig.handle(init).await;
    assert_eq!(
        rig.installs(),
        1,
        "a store failure must not stop a known client"
    );
    assert!(rig.metric("jitwgd_store_errors_total{operation=\"replay\"} 1"));
    rig.handle(init).await;
    assert!(rig.metric("jitwgd_initiations_dropped_total{reason=\"replay\"} 1"));
    assert_eq!(rig.installs(), 1);
}

/// An initiation from the same client a little later (a newer TAI64N timestamp: they are
/// rounded to ~16.8 ms).
fn later_initiation(client: [u8; 32]) -> Initiation {
    std::thread::sleep(Duration::from_millis(40));
    initiation(client).0
}

#[tokio::test]
async fn while_the_storm_guard_is_up_an_installed_peers_initiation_is_detoured() {
    let (init, key) = initiation([5; 32]);
    let flag = GuardFlag::default();
    let durable = SharedStore::new(Store::open_in_memory().unwrap());
    let rig = rig_with(key, durable.clone(), true, flag.clone(), Default::default()).await;
    rig.handle(init).await;
    assert_eq!(rig.installs(), 1);
    // Whether the durable replay guard already holds `init`'s timestamp (recording it).
    let recorded = |init: Initiation| {
        let durable = durable.clone();
        async move {
            durable
                .call(move |s| s.check_and_record_timestamp(&key, init.timestamp))
                .await
                .unwrap()
                == ReplayVerdict::Replay
        }
    };

    // Guard down: the data plane answers an installed peer itself; nothing is written.
    let second = later_initiation([5; 32]);
    rig.handle(second).await;
    assert!(!recorded(second).await);

    // Guard up: the data plane never saw it, so it passes the durable replay guard (it may
    // move the endpoint) and goes to the install worker, which declines here: the peer was
    // installed moments ago and its own initiation is under way (`install::tests::storm`
    // and `tests/tests/storm_e2e.rs` cover the rest).
    flag.set(true);
    let third = later_initiation([5; 32]);
    rig.handle(third).await;
    assert!(
        recorded(third).await,
        "the detour skipped the durable guard"
    );
    assert!(rig.metric("jitwgd_storm_guard_detours_total 0"));

    // A replay of the first initiation is dropped before any detour.
    rig.handle(init).await;
    assert!(rig.metric("jitwgd_initiations_dropped_total{reason=\"replay\"} 1"));
}

/// The identify workers drop a packet sent again before its Diffie-Hellman
/// (`ResentMemory`), even once the in-memory replay guard has forgotten its key: an
/// unknown key's initiation resent reaches lookup once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initiation_sent_again_is_dropped_by_the_identify_workers() {
    let (_, known) = initiation([3; 32]);
    let limits = PipelineLimits {
        replay_memory: 1,
        ..Default::default()
    };
    let store = SharedStore::new(Store::open_in_memory().unwrap());
    let rig = rig_with(known, store, false, GuardFlag::default(), limits).await;
    let settings = PoolSettings {
        workers: 1,
        queue: 16,
        per_source: 16,
        nice: 0,
    };
    let pool = start_identify_pool(rig.pipeline.clone(), settings).unwrap();
    let (resent, _) = initiation_packet([8; 32]);
    let (other, _) = initiation_packet([9; 32]);
    let src: SocketAddr = "198.18.0.2:51820".parse().unwrap();
    let lookups = |rig: &Rig| {
        rig.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("jitwgd_lookups_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let replays = "jitwgd_initiations_dropped_total{reason=\"replay\"} 1";
    // One at a time, each waited for: the second key's initiation makes the replay
    // guard (one key) forget the first key before the first packet comes again.
    for (payload, done) in [(&resent, 1), (&other, 2), (&resent, 3)] {
        let captured = Captured {
            payload: payload.clone(),
            src,
            captured_at: Instant::now(),
        };
        pool.submit(captured, Lane::Unknown).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while lookups(&rig) < done && !rig.metric(replays) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        lookups(&rig),
        2,
        "the packet sent again was looked up again"
    );
    assert!(rig.metric(replays));
    assert!(rig.metric("jitwgd_replays_ignored_total 1"));
    drop(pool);
}
