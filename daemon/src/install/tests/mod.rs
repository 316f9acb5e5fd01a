//! The install scheduler and worker against a fake data plane that records every plan
//! and fails on request: no root, no interface.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::refusals::REFUSAL_RETRY_DELAY;
use super::*;
use crate::peer::PeerConfig;

/// Records plans; installs of `bad` keys fail the whole call; removal calls can be held
/// at a gate.
#[derive(Default)]
struct FakeDataPlane {
    plans: Mutex<Vec<Plan>>,
    peers: Mutex<Vec<InstalledPeer>>,
    bad: Mutex<HashSet<PublicKey>>,
    fail_removals: std::sync::atomic::AtomicBool,
    /// (entered, release): a removal call signals `entered`, then waits on `release`.
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    /// The same for calls that install peers.
    install_gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    /// How long a call that installs peers takes (the real one takes ~0.5 ms a peer).
    install_delay: Mutex<Duration>,
}

fn failure() -> DataPlaneError {
    DataPlaneError::Apply {
        name: "fake0".into(),
        source: std::io::Error::other("refused by the fake"),
    }
}

impl Backend for FakeDataPlane {
    fn apply(&self, plan: &Plan) -> Result<(), DataPlaneError> {
        let removal = plan.0.iter().any(|c| matches!(c, PeerChange::Remove(_)));
        if removal {
            if let Some((entered, release)) = self.gate.lock().unwrap().as_ref() {
                entered.send(()).unwrap();
                release.recv().unwrap();
            }
        }
        let installs = plan
            .0
            .iter()
            .any(|c| matches!(c, PeerChange::Install { .. }));
        if installs {
            std::thread::sleep(*self.install_delay.lock().unwrap());
            if let Some((entered, release)) = self.install_gate.lock().unwrap().as_ref() {
                entered.send(()).unwrap();
                release.recv().unwrap();
            }
        }
        self.plans.lock().unwrap().push(plan.clone());
        let bad = self.bad.lock().unwrap();
        let refused = plan.0.iter().any(|c| match c {
            PeerChange::Install { write, .. } => bad.contains(&write.config.public_key),
            _ => false,
        });
        if refused || (removal && self.fail_removals.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(failure());
        }
        let mut peers = self.peers.lock().unwrap();
        for change in &plan.0 {
            match change {
                PeerChange::Install { write, .. } => {
                    peers.retain(|p| p.public_key != write.config.public_key);
                    peers.push(installed(write.config.public_key, None));
                }
                PeerChange::Remove(k) => peers.retain(|p| p.public_key != *k),
                PeerChange::Initiate(_) | PeerChange::ClearKeepalive(_) => {}
            }
        }
        Ok(())
    }

    fn peers(&self) -> Result<Vec<InstalledPeer>, DataPlaneError> {
        Ok(self.peers.lock().unwrap().clone())
    }
}

impl FakeDataPlane {
    fn plans(&self) -> Vec<Plan> {
        self.plans.lock().unwrap().clone()
    }
}

fn key(n: u16) -> PublicKey {
    let mut k = [0u8; 32];
    k[..2].copy_from_slice(&n.to_be_bytes());
    PublicKey(k)
}

fn write(n: u16) -> PeerWrite {
    PeerWrite {
        config: PeerConfig {
            public_key: key(n),
            allowed_ips: vec!["100.64.0.2/32".parse().unwrap()],
            preshared_key: None,
        },
        endpoint: Some("198.18.0.2:51820".parse().unwrap()),
    }
}

fn installed(k: PublicKey, handshake: Option<SystemTime>) -> InstalledPeer {
    InstalledPeer {
        public_key: k,
        last_handshake: handshake,
        endpoint: None,
    }
}

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
}

fn settings(initiate: bool) -> InstallSettings {
    InstallSettings {
        initiate,
        initiate_rate: 0,
        initiate_feedback: None,
        sweep_chunk: 256,
        sweep_budget: Duration::from_millis(50),
    }
}

fn scheduler(initiate: bool) -> Scheduler<u32> {
    Scheduler::new(settings(initiate), Metrics::new(), &[], at(0))
}

fn keys_of(plan: &Plan) -> Vec<PublicKey> {
    plan.0
        .iter()
        .map(|c| match c {
            PeerChange::Install { write, .. } => write.config.public_key,
            PeerChange::Initiate(k) | PeerChange::ClearKeepalive(k) | PeerChange::Remove(k) => *k,
        })
        .collect()
}

fn is_installed(s: &Scheduler<u32>, k: PublicKey) -> bool {
    s.installed().lock().unwrap().contains(&k)
}

/// Drives every queued removal to completion; returns the finished tickets.
fn drain_removals(s: &mut Scheduler<u32>, dp: &FakeDataPlane) -> Vec<(Option<u32>, usize)> {
    let mut done = Vec::new();
    while let Some(chunk) = s.next_removal() {
        let result = dp.apply(&chunk.plan);
        if let Some(finished) = s.removal_applied(chunk, Duration::from_micros(10), result) {
            done.push(finished);
        }
    }
    done
}

#[test]
fn a_batch_is_one_install_call_then_one_call_clearing_the_keepalive() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(true);
    let results = s.install_batch(&dp, &[write(1), write(2), write(3)], at(1), Instant::now());
    assert!(results.iter().all(Result::is_ok));
    let plans = dp.plans();
    assert_eq!(plans.len(), 2);
    assert!(plans[0].0.iter().all(|c| matches!(
        c,
        PeerChange::Install { keepalive: Some(k), .. } if *k == scheduler::ROLE_INVERSION_KEEPALIVE
    )));
    assert_eq!(keys_of(&plans[0]), vec![key(1), key(2), key(3)]);
    assert!(plans[1]
        .0
        .iter()
        .all(|c| matches!(c, PeerChange::ClearKeepalive(_))));
    assert_eq!(keys_of(&plans[1]), vec![key(1), key(2), key(3)]);
    assert!(is_installed(&s, key(2)));
}

#[test]
fn without_role_inversion_there_is_no_keepalive_and_no_second_call() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    s.install_batch(&dp, &[write(1)], at(1), Instant::now());
    let plans = dp.plans();
    assert_eq!(plans.len(), 1);
    assert!(matches!(
        plans[0].0[0],
        PeerChange::Install {
            keepalive: None,
            ..
        }
    ));
}

fn paced(rate: u32) -> Scheduler<u32> {
    let settings = InstallSettings {
        initiate_rate: rate,
        initiate_feedback: None,
        ..settings(true)
    };
    Scheduler::new(settings, Metrics::new(), &[], at(0))
}

fn initiating(plan: &Plan) -> usize {
    plan.0
        .iter()
        .filter(|c| {
            matches!(
                c,
                PeerChange::Install {
                    keepalive: Some(_),
                    ..
                }
            )
        })
        .count()
}

#[test]
fn a_paced_batch_installs_everyone_but_initiates_only_a_burst() {
    let dp = FakeDataPlane::default();
    let mut s = paced(1000);
    let t = Instant::now();
    let writes: Vec<PeerWrite> = (0..100).map(write).collect();
    let results = s.install_batch(&dp, &writes, at(1), t);
    let initiated = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(initiated, 20);
    assert!(results.iter().all(Result::is_ok));
    let plans = dp.plans();
    assert_eq!(plans[0].0.len(), 100, "everyone installed in one call");
    assert_eq!(initiating(&plans[0]), 20);
    assert_eq!(
        keys_of(&plans[1]).len(),
        20,
        "only the initiators' keepalive cleared"
    );
    assert!(is_installed(&s, key(99)));

    // The rest initiate as the rate allows, oldest first, each followed by its clear.
    assert_eq!(s.initiation_wait(t), Some(Duration::from_millis(1)));
    let round = s.next_initiations(t + Duration::from_millis(10)).unwrap();
    assert_eq!(
        keys_of(&round.initiate),
        (20..30).map(key).collect::<Vec<_>>()
    );
    assert!(round
        .initiate
        .0
        .iter()
        .all(|c| matches!(c, PeerChange::Initiate(_))));
    assert_eq!(keys_of(&round.clear), keys_of(&round.initiate));
    // A new batch does not jump the queue of deferred initiations.
    let more = s.install_batch(&dp, &[write(500)], at(1), t + Duration::from_secs(1));
    assert!(matches!(more[0], Ok(false)));
    let round = s.next_initiations(t + Duration::from_secs(1)).unwrap();
    assert_eq!(
        keys_of(&round.initiate),
        (30..50).map(key).collect::<Vec<_>>()
    );
}

#[test]
fn deferred_initiations_expire_and_skip_removed_peers() {
    let dp = FakeDataPlane::default();
    let mut s = paced(10);
    let t = Instant::now();
    s.install_batch(&dp, &[write(1), write(2), write(3)], at(1), t);
    s.queue_removal(vec![key(2)], RemovalReason::Revoked, None);
    drain_removals(&mut s, &dp);
    let round = s.next_initiations(t + Duration::from_millis(100)).unwrap();
    assert!(
        round.initiate.0.is_empty() && round.expired == 1,
        "{round:?}"
    );
    let round = s.next_initiations(t + Duration::from_millis(200)).unwrap();
    assert_eq!(keys_of(&round.initiate), vec![key(3)]);
    assert_eq!(s.initiation_wait(t), None);

    s.install_batch(
        &dp,
        &[write(4), write(5)],
        at(2),
        t + Duration::from_secs(1),
    );
    let late = t + Duration::from_secs(1) + DEFERRED_INITIATION_MAX_AGE + Duration::from_millis(1);
    let round = s.next_initiations(late).unwrap();
    assert!(round.initiate.0.is_empty());
    assert_eq!(round.expired, 1);
    assert_eq!(s.initiation_wait(late), None);
}

#[test]
fn a_failed_batch_is_split_so_only_the_bad_peer_fails() {
    let dp = FakeDataPlane::default();
    dp.bad.lock().unwrap().insert(key(2));
    let mut s = scheduler(false);
    let results = s.install_batch(&dp, &[write(1), write(2), write(3)], at(1), Instant::now());
    let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
    assert_eq!(ok, vec![true, false, true]);
    // The whole batch, then each peer alone.
    let sizes: Vec<usize> = dp.plans().iter().map(|p| p.0.len()).collect();
    assert_eq!(sizes, vec![3, 1, 1, 1]);
    assert!(is_installed(&s, key(1)) && is_installed(&s, key(3)));
    assert!(!is_installed(&s, key(2)));
}

#[test]
fn bulk_installs_go_in_chunks_and_stop_at_the_first_failed_chunk() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(true);
    let writes: Vec<PeerWrite> = (0..5000).map(write).collect();
    assert_eq!(s.install_many(&dp, &writes, at(1)).unwrap(), 5000);
    let sizes: Vec<usize> = dp.plans().iter().map(|p| p.0.len()).collect();
    assert_eq!(
        sizes,
        vec![
            scheduler::BULK_INSTALL_CHUNK,
            5000 - scheduler::BULK_INSTALL_CHUNK
        ]
    );
    // Bulk installs never carry the role-inversion keepalive (there is no endpoint).
    assert!(dp.plans()[0].0.iter().all(|c| matches!(
        c,
        PeerChange::Install {
            keepalive: None,
            ..
        }
    )));

    let dp = FakeDataPlane::default();
    dp.bad.lock().unwrap().insert(key(4100));
    let mut s = scheduler(false);
    assert!(s.install_many(&dp, &writes, at(1)).is_err());
    assert!(is_installed(&s, key(0)));
    assert!(!is_installed(&s, key(4999)));
}

#[test]
fn removal_chunks_start_small_and_grow_when_removals_are_cheap() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    s.queue_removal((0..1000).map(key).collect(), RemovalReason::Idle, Some(7));
    let first = s.next_removal().unwrap();
    assert_eq!(first.keys.len(), 16);
    let result = dp.apply(&first.plan);
    assert!(s
        .removal_applied(first, Duration::from_micros(160), result)
        .is_none());
    // 10 µs per peer against a 50 ms budget: the configured maximum.
    assert_eq!(s.next_removal().unwrap().keys.len(), 256);
}

#[test]
fn a_removal_job_hands_back_its_ticket_and_count_when_its_last_chunk_is_done() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    s.install_many(&dp, &(0..40).map(write).collect::<Vec<_>>(), at(1))
        .unwrap();
    s.queue_removal((0..40).map(key).collect(), RemovalReason::Idle, Some(7));
    assert_eq!(drain_removals(&mut s, &dp), vec![(Some(7), 40)]);
    assert!(!s.has_removals());
    assert!(s.installed().lock().unwrap().is_empty());
}

#[test]
fn a_failed_removal_chunk_is_dropped_and_not_counted() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    s.install_many(&dp, &[write(1), write(2)], at(1)).unwrap();
    dp.fail_removals
        .store(true, std::sync::atomic::Ordering::SeqCst);
    s.queue_removal(vec![key(1), key(2)], RemovalReason::Idle, Some(1));
    assert_eq!(drain_removals(&mut s, &dp), vec![(Some(1), 0)]);
    // Still installed as far as anyone knows: the next sweep finds them again.
    assert!(is_installed(&s, key(1)) && is_installed(&s, key(2)));
}

#[test]
fn revocations_jump_ahead_of_queued_idle_evictions() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    s.queue_removal((0..100).map(key).collect(), RemovalReason::Idle, Some(1));
    s.queue_removal(vec![key(500)], RemovalReason::Revoked, Some(2));
    let chunk = s.next_removal().unwrap();
    assert_eq!(chunk.reason, RemovalReason::Revoked);
    assert_eq!(chunk.keys, vec![key(500)]);
    let result = dp.apply(&chunk.plan);
    assert_eq!(
        s.removal_applied(chunk, Duration::ZERO, result),
        Some((Some(2), 1))
    );
    assert_eq!(s.next_removal().unwrap().reason, RemovalReason::Idle);
}

#[test]
fn a_sweep_queues_idle_peers_once_and_keeps_adopted_peers_a_full_period() {
    let adopted = [installed(key(1), Some(at(0))), installed(key(2), None)];
    let mut s: Scheduler<u32> = Scheduler::new(settings(false), Metrics::new(), &adopted, at(100));
    let evict_after = Duration::from_secs(180);
    // Key 1's handshake is old but it was first seen at 100: kept until 280.
    s.begin_sweep();
    let found = s
        .finish_sweep::<()>(Ok(adopted.to_vec()), at(200), evict_after)
        .unwrap();
    assert_eq!((found.installed, found.selected), (2, 0));
    s.begin_sweep();
    let found = s
        .finish_sweep::<()>(Ok(adopted.to_vec()), at(281), evict_after)
        .unwrap();
    assert_eq!(found.selected, 2);
    // A second sweep before the removals ran does not queue them again.
    s.begin_sweep();
    let again = s
        .finish_sweep::<()>(Ok(adopted.to_vec()), at(282), evict_after)
        .unwrap();
    assert_eq!(again.selected, 0);
    let chunk = s.next_removal().unwrap();
    assert_eq!(chunk.keys.len(), 2);
    assert_eq!(chunk.reason, RemovalReason::Idle);
    // A sweep's removals have no requester waiting: no ticket.
    assert_eq!(
        s.removal_applied(chunk, Duration::ZERO, Ok(())),
        Some((None, 2))
    );
    assert!(!s.has_removals());
}

#[test]
fn writes_made_while_a_sweep_reads_are_reconciled_with_the_read() {
    let dp = FakeDataPlane::default();
    let old = [
        installed(key(1), Some(at(0))),
        installed(key(2), Some(at(0))),
    ];
    let mut s: Scheduler<u32> = Scheduler::new(settings(false), Metrics::new(), &old, at(0));
    s.begin_sweep();
    let read = old.to_vec(); // the read, taken before the writes below
                             // Key 1 re-installed and key 3 installed during the read; key 2 removed.
    s.install_batch(&dp, &[write(1), write(3)], at(500), Instant::now());
    s.queue_removal(vec![key(2)], RemovalReason::Revoked, None);
    drain_removals(&mut s, &dp);
    let found = s
        .finish_sweep::<()>(Ok(read), at(1000), Duration::from_secs(180))
        .unwrap();
    // Present: 1 and 3 (2 was removed after the read). Key 1's stale handshake in the
    // read does not get it evicted: it was written after the read.
    assert_eq!(found.installed, 2);
    assert_eq!(found.selected, 0);
    assert!(is_installed(&s, key(3)) && !is_installed(&s, key(2)));
}

#[test]
fn a_failed_sweep_read_ends_the_journal_and_changes_nothing() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    s.install_batch(&dp, &[write(1)], at(1), Instant::now());
    s.begin_sweep();
    assert_eq!(
        s.finish_sweep(Err("read failed"), at(1000), Duration::from_secs(1)),
        Err("read failed")
    );
    assert!(is_installed(&s, key(1)));
    assert!(!s.has_removals());
}

/// `write(n)` with an endpoint of its own.
fn write_at(n: u16) -> PeerWrite {
    PeerWrite {
        endpoint: Some(std::net::SocketAddr::new(
            std::net::Ipv4Addr::new(198, 18, 1, n as u8).into(),
            40_000,
        )),
        ..write(n)
    }
}

#[test]
fn a_refused_response_gets_a_fresh_peer_that_initiates_ahead_of_the_deferred() {
    let dp = FakeDataPlane::default();
    let mut s = paced(1000);
    let t = Instant::now();
    let writes: Vec<PeerWrite> = (0..30).map(write_at).collect();
    for w in &writes {
        s.client_initiation(w.endpoint.unwrap(), 77, t);
    }
    s.install_batch(&dp, &writes, at(1), t);
    // A cookie answering client 3's own initiation (its index) is no refusal...
    s.cookie_reply(
        writes[3].endpoint.unwrap(),
        77,
        t + Duration::from_millis(5),
    );
    // ...one answering client 5's response to our initiation is; and client 25, whose
    // initiation is still deferred, was not initiated to yet.
    s.cookie_reply(
        writes[5].endpoint.unwrap(),
        4242,
        t + Duration::from_millis(5),
    );
    s.cookie_reply(
        writes[25].endpoint.unwrap(),
        4242,
        t + Duration::from_millis(5),
    );

    // The retry waits for the cookie reply to reach the client first: at 10 ms only the
    // deferred initiations the pacer admits go out.
    let round = s.next_initiations(t + Duration::from_millis(10)).unwrap();
    assert!(!round.initiate.0.contains(&PeerChange::Remove(key(5))));
    let due = t + Duration::from_millis(5) + REFUSAL_RETRY_DELAY;
    let round = s.next_initiations(due).unwrap();
    assert_eq!(round.initiate.0[0], PeerChange::Remove(key(5)));
    assert_eq!(
        round.initiate.0[1],
        PeerChange::Install {
            write: writes[5].clone(),
            keepalive: Some(ROLE_INVERSION_KEEPALIVE),
        }
    );
    assert!(round.initiate.0[2..]
        .iter()
        .all(|c| matches!(c, PeerChange::Initiate(_))));
    assert_eq!(keys_of(&round.clear)[0], key(5));
    assert_eq!(
        keys_of(&round.clear).len(),
        1 + (round.initiate.0.len() - 2),
        "one clear per peer initiated"
    );
    assert_eq!(s.metrics_for_tests().role_inversion_retries.get(), 1);
    assert!(is_installed(&s, key(5)));

    // The retry is not retried again.
    let now = due + Duration::from_millis(100);
    s.cookie_reply(writes[5].endpoint.unwrap(), 4243, now);
    let round = s.next_initiations(now + REFUSAL_RETRY_DELAY);
    assert!(!round.is_some_and(|r| r.initiate.0.contains(&PeerChange::Remove(key(5)))));
    assert_eq!(s.metrics_for_tests().role_inversion_retries.get(), 1);
}

#[test]
fn the_worker_wakes_when_a_refused_peer_is_due_and_not_before() {
    let dp = FakeDataPlane::default();
    let mut s = paced(1000);
    let t = Instant::now();
    let w = write_at(1);
    s.install_batch(&dp, std::slice::from_ref(&w), at(1), t);
    assert_eq!(s.initiation_wait(t), None, "nothing deferred");
    s.cookie_reply(w.endpoint.unwrap(), 4242, t);
    assert_eq!(s.initiation_wait(t), Some(REFUSAL_RETRY_DELAY));
    assert!(s.next_initiations(t).is_none(), "not due yet");
    let round = s.next_initiations(t + REFUSAL_RETRY_DELAY).unwrap();
    assert_eq!(round.initiate.0[0], PeerChange::Remove(w.config.public_key));
    assert_eq!(s.initiation_wait(t + REFUSAL_RETRY_DELAY), None);
}

mod storm;
mod worker;
