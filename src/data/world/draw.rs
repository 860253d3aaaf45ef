//! Seeded random draws. Every set of the world has its own ChaCha8 stream derived from the
//! user's seed, so the sets are reproducible bit for bit on every platform, and drawing more
//! of one set never shifts another. Only integer and `f64` draws are used (both portable).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The independent random streams of a world, one per set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    TokenizerCorpus = 1,
    ReviewsEval = 2,
    DialogueEval = 3,
    ReviewsPositive = 4,
    ReviewsNegative = 5,
    DialogueSafe = 6,
    DialogueUnsafe = 7,
    Pretrain = 8,
}

pub fn stream(seed: u64, s: Stream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(s as u64);
    rng
}

/// A uniform index below `n` (`n > 0`; the lexicon's lists are never empty).
pub fn index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    debug_assert!(n > 0);
    rng.random_range(0..n.max(1) as u32) as usize
}

pub fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[index(rng, items.len())]
}

/// A uniform word or phrase of a lexicon list.
pub fn one(rng: &mut ChaCha8Rng, items: &[&'static str]) -> &'static str {
    items[index(rng, items.len())]
}

/// True with probability `p`.
pub fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

/// `k` distinct items in random order (all of them when `k >= items.len()`).
pub fn distinct<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], k: usize) -> Vec<&'a T> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let k = k.min(items.len());
    // Partial Fisher-Yates: the first k slots end up a uniform k-permutation.
    for i in 0..k {
        let j = i + index(rng, idx.len() - i);
        idx.swap(i, j);
    }
    idx[..k].iter().map(|&i| &items[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a: Vec<u32> = (0..8)
            .map(|_| stream(7, Stream::Pretrain).random())
            .collect();
        let mut r = stream(7, Stream::Pretrain);
        let b: Vec<u32> = (0..8).map(|_| r.random()).collect();
        assert_eq!(a[0], b[0]);
        let mut r2 = stream(7, Stream::ReviewsEval);
        let c: Vec<u32> = (0..8).map(|_| r2.random()).collect();
        assert_ne!(b, c);
        let mut r3 = stream(8, Stream::Pretrain);
        let d: Vec<u32> = (0..8).map(|_| r3.random()).collect();
        assert_ne!(b, d);
    }

    #[test]
    fn distinct_draws_have_no_repeats() {
        let mut r = stream(1, Stream::Pretrain);
        let items = [1, 2, 3, 4, 5];
        for _ in 0..100 {
            let mut d: Vec<i32> = distinct(&mut r, &items, 3).into_iter().copied().collect();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
        assert_eq!(distinct(&mut r, &items, 9).len(), 5);
    }
}
