//! The simulated path between one client and the gateway: one-way delay, uniform jitter and
//! loss in each direction, drawn from a seeded generator so a run's seed reproduces every
//! drop. Pure: it only decides; the fleet's delay line (`delay.rs`) applies the decisions
//! (there is no netem here).

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::scenario::resolve::Link;

/// Whether `link` adds nothing (no delay, jitter or loss).
pub fn is_transparent(link: &Link) -> bool {
    link.delay.is_zero() && link.jitter.is_zero() && link.loss <= 0.0
}

/// Which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to gateway.
    Up,
    /// Gateway to client.
    Down,
}

/// One client's link: independent random streams per direction, so the pattern of one
/// direction does not depend on how many packets went the other way.
#[derive(Debug, Clone)]
pub struct LinkModel {
    link: Link,
    up: ChaCha20Rng,
    down: ChaCha20Rng,
}

impl LinkModel {
    pub fn new(link: Link, seed: u64) -> Self {
        let mut up = ChaCha20Rng::seed_from_u64(seed);
        up.set_stream(1);
        let mut down = ChaCha20Rng::seed_from_u64(seed);
        down.set_stream(2);
        Self { link, up, down }
    }

    /// Whether the link adds nothing (no delay, jitter or loss): packets can go straight out.
    pub fn is_transparent(&self) -> bool {
        is_transparent(&self.link)
    }

    /// The fate of the next packet in `direction`: `None` if lost, else how long it travels.
    pub fn transit(&mut self, direction: Direction) -> Option<Duration> {
        let rng = match direction {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        };
        // Draw both values every time so each packet consumes the same amount of randomness.
        let lost = rng.gen::<f64>() < self.link.loss;
        let jitter_fraction = rng.gen::<f64>();
        if lost {
            return None;
        }
        Some(self.link.delay + self.link.jitter.mul_f64(jitter_fraction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(delay_ms: u64, jitter_ms: u64, loss: f64) -> Link {
        Link {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            loss,
        }
    }

    #[test]
    fn perfect_link_delivers_everything_at_the_delay() {
        let mut model = LinkModel::new(link(30, 0, 0.0), 1);
        for _ in 0..100 {
            assert_eq!(
                model.transit(Direction::Up),
                Some(Duration::from_millis(30))
            );
            assert_eq!(
                model.transit(Direction::Down),
                Some(Duration::from_millis(30))
            );
        }
        assert!(!model.is_transparent());
        assert!(LinkModel::new(link(0, 0, 0.0), 1).is_transparent());
    }

    #[test]
    fn full_loss_drops_everything() {
        let mut model = LinkModel::new(link(0, 0, 1.0), 9);
        assert!((0..100).all(|_| model.transit(Direction::Up).is_none()));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut model = LinkModel::new(link(10, 20, 0.0), 3);
        let delays: Vec<Duration> = (0..1000)
            .filter_map(|_| model.transit(Direction::Down))
            .collect();
        assert_eq!(delays.len(), 1000);
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_millis(30)));
        // Uniform: both halves of the range are used.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(15)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(25)));
    }

    #[test]
    fn loss_rate_is_roughly_the_configured_one() {
        let mut model = LinkModel::new(link(0, 0, 0.25), 5);
        let lost = (0..10_000)
            .filter(|_| model.transit(Direction::Up).is_none())
            .count();
        assert!((2_000..3_000).contains(&lost), "lost {lost} of 10000");
    }

    #[test]
    fn same_seed_same_fate_and_directions_are_independent() {
        let fates = |seed: u64, interleave_down: bool| {
            let mut model = LinkModel::new(link(5, 10, 0.3), seed);
            (0..200)
                .map(|_| {
                    if interleave_down {
                        model.transit(Direction::Down);
                    }
                    model.transit(Direction::Up)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fates(42, false), fates(42, false));
        assert_eq!(fates(42, false), fates(42, true));
        assert_ne!(fates(42, false), fates(43, false));
    }
}
