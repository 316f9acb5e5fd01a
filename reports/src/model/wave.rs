//! One population's arrivals as the cost model sees them (how many, how fast, how long each
//! peer stays installed), and the run quantities that follow from the waves: the clients left
//! queued at a gateway that sets peers up at a drain rate (setup latency's input), the arrivals
//! that find it idle and are set up alone (each pays the install batch's fixed cost), and the
//! installed peer-seconds up to the run's end (what the eviction sweep and the testbed's
//! once-a-second listing of the data plane cost in proportion to).

use serde::Serialize;

use super::batch::{BatchLaw, Batching};
use super::scenario::Planned;

/// One population's arrivals: `count` clients at `rate` per second (infinite for a burst).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Wave {
    pub count: f64,
    pub rate: f64,
    /// Connections over the run (`count` times each client's connections).
    pub arrivals: f64,
    /// Peers it installs (a returning client held across its gaps installs once).
    pub keys: f64,
    /// Seconds each of them stays installed: active, held across gaps, then `evict_after` and
    /// half a sweep period (not cut at the run's end).
    pub residence_s: f64,
    /// Seconds each client keeps sending after it connected (0 for connect-once clients):
    /// the gateway's handshake retries to a departed client start this long after arrival
    /// plus [`RETRY_AFTER_S`].
    pub active_s: f64,
}

/// WireGuard's timers (wireguard-go's `device/constants.go` and `timers.go`, the protocol's
/// own): a peer that sent data (the gateway's echo reply to a client's last packet) and heard
/// nothing back for 15 s (KeepaliveTimeout + RekeyTimeout) starts a new handshake, retries it
/// every 5 s (RekeyTimeout) and gives up after 90 s (RekeyAttemptTime). Keepalives do not arm
/// that timer. (The calibration cannot tell a 15 s start from 20 or 25 s: R² 0.983, 0.983,
/// 0.982; BENCHMARKS.md, capacity planning, fifth round.)
pub const RETRY_AFTER_S: f64 = 15.0;
pub const RETRY_EVERY_S: f64 = 5.0;
pub const RETRY_FOR_S: f64 = 90.0;

impl Wave {
    /// A wave of `count` connect-once clients whose peers stay `residence_s`.
    pub fn new(count: f64, rate: f64, residence_s: f64) -> Self {
        Wave {
            count,
            rate,
            arrivals: count,
            keys: count,
            residence_s,
            active_s: 0.0,
        }
    }

    /// Clients left waiting when the wave has arrived, if the gateway sets peers up at
    /// `drain_per_s` and the wave arrives at a steady `rate` (a fluid queue): it grows at
    /// `rate - drain` for `count / rate` seconds, so `count × (1 - drain / rate)`, and 0 when
    /// the gateway keeps up.
    pub fn queued(&self, drain_per_s: f64) -> f64 {
        if self.rate.is_infinite() {
            return self.count;
        }
        (self.count * (1.0 - drain_per_s.max(0.0) / self.rate)).max(0.0)
    }

    /// Arrivals that find a gateway setting up `drain_per_s` peers idle: `1 - rate / drain` of
    /// them (the share of time a server with that load is idle), none when the wave comes
    /// faster than the drain or as a burst, and none at a drain of 0 (not fitted). jitwgd sets
    /// up whatever arrived while it was busy in one batch (one data-plane write, one database
    /// transaction), so a lone arrival pays a batch's fixed cost by itself: at 10/s a run
    /// installs 299 batches for 300 clients, at 2,500/s 13.
    pub fn lone(&self, drain_per_s: f64) -> f64 {
        if !self.rate.is_finite() || drain_per_s <= 0.0 {
            return 0.0;
        }
        self.arrivals * (1.0 - self.rate / drain_per_s).max(0.0)
    }

    /// Install batches the wave's arrivals make under `law` (a returning client's later
    /// connections batch as its first did).
    pub fn batches(&self, law: &BatchLaw) -> f64 {
        if self.count <= 0.0 {
            return 0.0;
        }
        law.batches(self.count, self.rate) * self.arrivals / self.count
    }

    /// Handshake initiations the gateway sends to the wave's departed clients up to
    /// `run_end_s`: each key's retry phase runs from [`RETRY_AFTER_S`] after its client's
    /// last packet (`active_s` after arrival) until it is evicted, the run ends or WireGuard
    /// gives up, one initiation per [`RETRY_EVERY_S`]. Each costs the data plane a new
    /// ephemeral key and two X25519 operations, whoever the peer was.
    pub fn gateway_retries(&self, run_end_s: f64) -> f64 {
        let start = self.active_s.max(0.0) + RETRY_AFTER_S;
        let phase = self.residence_s.min(start + RETRY_FOR_S) - start;
        if phase <= 0.0 {
            return 0.0;
        }
        // The retry phases are the peer-seconds of the same keys arriving `start` later and
        // staying `phase`.
        let retrying = Wave {
            residence_s: phase,
            ..*self
        };
        retrying.peer_seconds(run_end_s - start) / RETRY_EVERY_S
    }

    /// Installed peer-seconds of the wave's keys up to `run_end_s`: the keys arrive evenly
    /// over `count / rate` seconds (returning clients' later installs are taken as arriving
    /// with the first) and each stays `residence_s` or until the run ends, whichever is first.
    pub fn peer_seconds(&self, run_end_s: f64) -> f64 {
        let end = run_end_s.max(0.0);
        let stay = self.residence_s.max(0.0);
        let window = if self.rate.is_finite() && self.rate > 0.0 {
            self.count / self.rate
        } else {
            0.0
        };
        if window <= 0.0 {
            return self.keys * stay.min(end);
        }
        // ∫ over arrival times t in [0, min(window, end)] of min(stay, end - t), per second of
        // window: the first `cut` seconds' arrivals stay in full, later ones until the end.
        let w = window.min(end);
        let cut = (end - stay).clamp(0.0, w);
        let integral = stay * cut + end * (w - cut) - (w * w - cut * cut) / 2.0;
        self.keys / window * integral
    }
}

impl Planned {
    /// The largest backlog any population's arrivals leave at a gateway that sets peers up at
    /// `drain_per_s`: the setup-latency model's input. At a drain of 0 it is the largest wave.
    pub fn queued(&self, drain_per_s: f64) -> f64 {
        self.waves
            .iter()
            .map(|w| w.queued(drain_per_s))
            .fold(0.0, f64::max)
    }

    /// Arrivals set up alone at a gateway draining `drain_per_s` (see [`Wave::lone`]).
    pub fn lone_arrivals(&self, drain_per_s: f64) -> f64 {
        self.waves.iter().map(|w| w.lone(drain_per_s)).sum()
    }

    /// Install batches the run's arrivals make: the CPU models' `install_batches` (each pays a
    /// batch's fixed cost).
    pub fn install_batches(&self, batching: &Batching) -> f64 {
        match batching {
            Batching::Law(law) => self.waves.iter().map(|w| w.batches(law)).sum(),
            Batching::Drain { per_s } => self.lone_arrivals(*per_s),
        }
    }

    /// Handshake initiations the gateway sends to departed clients over a run that ends at
    /// `run_end_s` (see [`Wave::gateway_retries`]); pushed peers are never handshaken.
    pub fn gateway_retries(&self, run_end_s: f64) -> f64 {
        if self.mode == "push" {
            return 0.0;
        }
        self.waves
            .iter()
            .map(|w| w.gateway_retries(run_end_s))
            .sum()
    }

    /// Installed peer-seconds of a run that ends at `run_end_s`: every wave's, plus the
    /// resident peers' (installed throughout). In push mode the waves are in the residents.
    pub fn peer_seconds(&self, run_end_s: f64) -> f64 {
        let waves: f64 = if self.mode == "push" {
            0.0
        } else {
            self.waves.iter().map(|w| w.peer_seconds(run_end_s)).sum()
        };
        waves + self.resident_peers * run_end_s.max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wave_queues_only_what_arrives_faster_than_the_gateway_drains() {
        // 300 at 2,500/s against 500/s drained: 300 × (1 - 0.2) = 240 waiting.
        let storm = Wave::new(300.0, 2500.0, 200.0);
        assert!((storm.queued(500.0) - 240.0).abs() < 1e-9);
        let burst = Wave::new(300.0, f64::INFINITY, 200.0);
        assert_eq!(burst.queued(1e6), 300.0);
    }

    #[test]
    fn only_arrivals_slower_than_the_drain_are_set_up_alone() {
        let slow = Wave::new(300.0, 200.0, 10.0);
        assert!((slow.lone(800.0) - 225.0).abs() < 1e-9);
        assert_eq!(Wave::new(300.0, 2500.0, 10.0).lone(800.0), 0.0);
        assert_eq!(Wave::new(300.0, f64::INFINITY, 10.0).lone(800.0), 0.0);
        assert_eq!(
            slow.lone(0.0),
            0.0,
            "no drain fitted: nothing is known to be alone"
        );
    }

    #[test]
    fn the_gateway_retries_departed_clients_from_15_s_until_eviction() {
        // 600 connect-once clients at 10/s, each evicted 47.5 s after arrival, a 60 s run:
        // retry phase 15..47.5 s after arrival, cut by the run's end for the last 12.5 s of
        // arrivals. Shifted by 15 s: 32.5 s phases of keys arriving over 60 s, run end 45 s.
        let churn = Wave::new(600.0, 10.0, 47.5);
        let shifted = Wave::new(600.0, 10.0, 32.5).peer_seconds(45.0);
        assert!((churn.gateway_retries(60.0) - shifted / 5.0).abs() < 1e-9);
        // Arrivals in the first 12.5 s get the full 32.5 s phase (6.5 retries each, 125 of
        // them); those at 12.5-45 s retry from t + 15 s until the run ends at 60 s (45 - t
        // seconds); later ones never start: 812.5 + 10 × ∫12.5..45 (45 - t) dt / 5 = 812.5
        // + 1056.25.
        assert!((churn.gateway_retries(60.0) - 1868.75).abs() < 1e-9);
        // Evicted before the retries start (evict_after 10 s): none.
        assert_eq!(Wave::new(600.0, 10.0, 12.5).gateway_retries(60.0), 0.0);
        // Clients that keep sending for 15 s, then leave: retries from 30 s after arrival.
        let stay = Wave {
            active_s: 15.0,
            ..Wave::new(100.0, f64::INFINITY, 200.0)
        };
        assert!((stay.gateway_retries(60.0) - 100.0 * 30.0 / 5.0).abs() < 1e-9);
        // WireGuard gives up after 90 s of retries: 18 each at most.
        let long = Wave::new(10.0, f64::INFINITY, 1000.0);
        assert!((long.gateway_retries(1000.0) - 10.0 * 18.0).abs() < 1e-9);
    }

    #[test]
    fn peer_seconds_stop_at_the_run_end() {
        // 300 at 10/s over 30 s, each installed 187.5 s, the run over at 33.8 s: nobody is
        // evicted, so peer-seconds = 10/s × ∫0..30 (33.8 - t) dt = 10 × (1014 - 450).
        let w = Wave::new(300.0, 10.0, 187.5);
        assert!((w.peer_seconds(33.8) - 5640.0).abs() < 1e-6);
        // The same keys in a burst: 300 × 33.8.
        let burst = Wave::new(300.0, f64::INFINITY, 187.5);
        assert!((burst.peer_seconds(33.8) - 300.0 * 33.8).abs() < 1e-6);
        // Short residences end before the run: every key stays its 5 s in full.
        let short = Wave::new(100.0, 10.0, 5.0);
        assert!((short.peer_seconds(60.0) - 500.0).abs() < 1e-6);
        // Cut in the middle: arrivals after t = 15 s stay until 20 s.
        let cut = Wave::new(100.0, 5.0, 5.0);
        // ∫0..15 5 dt + ∫15..20 (20 - t) dt = 75 + 12.5, times 5/s.
        assert!((cut.peer_seconds(20.0) - 437.5).abs() < 1e-6);
        assert_eq!(w.peer_seconds(0.0), 0.0);
    }
}
