//! Fuzzes scenario files: any text must resolve into a scenario or be refused with an error,
//! never panic, hang or allocate without bound (client counts and durations are validated
//! before anything is expanded), and a resolved scenario gives every registered peer its
//! own tunnel address.
//!
//! Resolving derives an X25519 key pair for every client, extra registered peer, stored peer
//! and flood key. The seeds (the shipped scenarios) ask for thousands, which held the target
//! at ~76 execs/s, nearly all of it in key derivation. So an input whose counts the resolver
//! would accept is resolved with each of those counts lowered to `KEYS_PER_COUNT`, through
//! the same `--set` overrides `jitwg` applies (whose path is fuzzed with it); parsing,
//! every check and the expansion code still run on it. An input the resolver refuses for
//! its size (over `MAX_PEERS` in all, or a key pool too large) is resolved as written: the
//! refusal comes before any key is derived, so it stays cheap and covered.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use jitwg::scenario::attack::{DEFAULT_KEY_POOL, MAX_KEY_POOL};
use jitwg::scenario::file::{BehaviourFile, FloodKeys, Mac1, ScenarioFile};
use jitwg::scenario::resolve::MAX_PEERS;
use jitwg::scenario::{parse, Adjustments, Override};
use libfuzzer_sys::fuzz_target;

/// The most keys one count may derive (clients of a population, extra registered peers,
/// stored peers, a flood's key pool), and the most preinstalled peers.
const KEYS_PER_COUNT: u32 = 4;

/// Overrides that lower every key-deriving count above `KEYS_PER_COUNT` to it; none when
/// the resolver refuses the input's size anyway.
fn lowered_counts(file: &ScenarioFile) -> Vec<Override> {
    // The total exactly as `resolve` sums it before expanding anything.
    let mut total = u64::from(file.control_plane.extra_registered)
        + u64::from(file.preinstalled_peers)
        + u64::from(file.stored_peers);
    for p in &file.populations {
        total += u64::from(match &p.behaviour {
            BehaviourFile::Flood(f) if f.keys == FloodKeys::Registered && f.mac1 == Mac1::Valid => {
                f.key_pool.unwrap_or(DEFAULT_KEY_POOL)
            }
            BehaviourFile::Flood(_) | BehaviourFile::Replay(_) => 0,
            _ => p.count,
        });
    }
    if total > u64::from(MAX_PEERS) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut lower = |path: String, value: u32| {
        if value > KEYS_PER_COUNT {
            out.push(Override {
                path: path.split('.').map(str::to_owned).collect(),
                value: toml::Value::Integer(i64::from(KEYS_PER_COUNT)),
            });
        }
    };
    lower(
        "control_plane.extra_registered".into(),
        file.control_plane.extra_registered,
    );
    lower("preinstalled_peers".into(), file.preinstalled_peers);
    lower("stored_peers".into(), file.stored_peers);
    for (i, p) in file.populations.iter().enumerate() {
        match &p.behaviour {
            // Only registered and unregistered floods with a valid mac1 have a key pool
            // (others must not set one); a pool over the limit is refused before expansion.
            BehaviourFile::Flood(f)
                if f.keys != FloodKeys::Fresh
                    && f.mac1 == Mac1::Valid
                    && f.key_pool.unwrap_or(DEFAULT_KEY_POOL) <= MAX_KEY_POOL =>
            {
                lower(
                    format!("population.{i}.behaviour.key_pool"),
                    f.key_pool.unwrap_or(DEFAULT_KEY_POOL),
                );
            }
            // An attack's count is packets, built at run time, not at resolve.
            BehaviourFile::Flood(_) | BehaviourFile::Replay(_) => {}
            _ => lower(format!("population.{i}.count"), p.count),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same typed parse `parse` starts with; what fails it fails `parse` the same way.
    let file = match toml::from_str::<ScenarioFile>(text) {
        Ok(file) => file,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let adjust = Adjustments {
        overrides: lowered_counts(&file),
        seed: None,
    };
    let scenario = match parse(Path::new("fuzz.toml"), text, &adjust) {
        Ok(scenario) => scenario,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // Clients start in order, and no two peers the control plane knows share a tunnel
    // address or a key.
    assert!(scenario
        .clients
        .windows(2)
        .all(|w| (w[0].start, w[0].id) <= (w[1].start, w[1].id)));
    let mut addresses = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for peer in scenario.registered_peers() {
        assert!(
            addresses.insert(peer.tunnel_ip),
            "{} given twice",
            peer.tunnel_ip
        );
        assert!(keys.insert(peer.public_key), "a key registered twice");
    }
});
