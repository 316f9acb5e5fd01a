//! The install worker's side of the storm guard: `Scheduler::initiate_again` for installed
//! peers whose own initiation the guard dropped.

use super::*;

#[test]
fn an_installed_peer_the_guard_kept_out_gets_a_fresh_peer_at_its_new_endpoint() {
    let dp = FakeDataPlane::default();
    let mut s = paced(1000);
    let t = Instant::now();
    let w = write_at(1);
    s.install_batch(&dp, std::slice::from_ref(&w), at(1), t);
    let _ = s.next_initiations(t);
    let moved = PeerWrite {
        endpoint: Some("198.18.9.9:40001".parse().unwrap()),
        ..w
    };
    // Installed at at(1); its own initiation is still under way for DETOUR_MIN_AGE.
    let later = t + Duration::from_millis(100);
    assert!(!s.initiate_again(moved.clone(), at(3), later));
    let old = at(1) + DETOUR_MIN_AGE;
    assert!(s.initiate_again(moved.clone(), old, later));
    assert!(!s.initiate_again(moved.clone(), old, later));
    assert!(!s.initiate_again(write_at(2), old, later));
    assert_eq!(s.metrics_for_tests().shield.storm_guard_detours.get(), 1);
    let round = s.next_initiations(later).unwrap();
    assert_eq!(
        round.initiate.0,
        vec![
            PeerChange::Remove(key(1)),
            PeerChange::Install {
                write: moved,
                keepalive: Some(ROLE_INVERSION_KEEPALIVE),
            }
        ],
        "queued once, only when old enough; a peer not installed is not created"
    );
    assert_eq!(keys_of(&round.clear), vec![key(1)]);
    assert!(s.next_initiations(later + Duration::from_secs(1)).is_none());
}

#[test]
fn without_role_inversion_nothing_is_initiated_again() {
    let dp = FakeDataPlane::default();
    let mut s = scheduler(false);
    let w = write(1);
    s.install_batch(&dp, std::slice::from_ref(&w), at(1), Instant::now());
    assert!(!s.initiate_again(w, at(100), Instant::now()));
    assert!(s.next_initiations(Instant::now()).is_none());
}
