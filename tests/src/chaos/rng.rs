//! A small seeded random number generator (SplitMix64): the whole chaos run
//! (fault schedule, topic choices, which node a client reconnects to) is
//! drawn from one seed, so a failing schedule can be replayed. Each task gets
//! its own generator, split from the run's, so that the draws of one task do
//! not depend on how the others were scheduled.

use std::time::Duration;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to
/// choose faults and nodes.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A new generator for a sub-task named by `stream`, independent of
    /// this one's later draws.
    pub fn split(&self, stream: u64) -> Rng {
        let mut mixed = Rng::new(self.state ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        Rng::new(mixed.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0, "below(0) has no value");
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low + 1)
    }

    /// A duration in `low..=high`, to the millisecond.
    pub fn duration(&mut self, low: Duration, high: Duration) -> Duration {
        Duration::from_millis(self.between(low.as_millis() as u64, high.as_millis() as u64))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// An index in `0..n` other than `not` (any when `n` is 1).
    pub fn other_than(&mut self, n: usize, not: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let pick = self.below(n - 1);
        if pick >= not { pick + 1 } else { pick }
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_numbers() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let draws_a: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let draws_b: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(draws_a, draws_b);
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[test]
    fn bounded_draws_stay_in_bounds() {
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            assert!(rng.below(3) < 3);
            let x = rng.between(5, 9);
            assert!((5..=9).contains(&x));
            let other = rng.other_than(3, 1);
            assert!(other < 3 && other != 1);
        }
    }
}
