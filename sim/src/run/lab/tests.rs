//! Unit tests of the lab's pure choices.

use super::dataplane_go_max_procs;

#[test]
fn wireguard_go_gets_two_slots_only_when_the_split_leaves_it_one_cpu() {
    assert_eq!(dataplane_go_max_procs(Some(1), false), Some(2));
    // The operator's own GOMAXPROCS wins.
    assert_eq!(dataplane_go_max_procs(Some(1), true), None);
    // More CPUs, or no split: Go's own choice already has more than one slot.
    assert_eq!(dataplane_go_max_procs(Some(2), false), None);
    assert_eq!(dataplane_go_max_procs(None, false), None);
}
