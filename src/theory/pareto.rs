//! Pareto (Zipf) leaf masses and the three base distributions D1, D2, D3.
//!
//! The paper's theorem assumes Pareto-distributed masses. Here the r-th heaviest of M
//! leaves weighs `r^(-alpha) / sum_j j^(-alpha)` (the discrete Pareto, or Zipf, law with
//! exponent alpha). Every base distribution uses the same mass profile but places it on the
//! leaves in its own order, a seeded uniform permutation: the data sets are equally
//! "peaked" and differ only in which responses they favour.
//!
//! The permutation is a Fisher-Yates shuffle driven directly by ChaCha8's 64-bit output
//! (multiply-shift range reduction), so a seed gives the same trees whatever the `rand`
//! version.

use super::token_tree::{validate_depth, TokenTree};
use anyhow::{bail, Result};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Check a Pareto exponent: finite and positive.
pub fn validate_alpha(alpha: f64) -> Result<()> {
    if !(alpha.is_finite() && alpha > 0.0) {
        bail!("alpha = {alpha}: the Pareto exponent must be a finite number greater than 0");
    }
    Ok(())
}

/// Zipf masses for `m` leaves, heaviest first, summing to 1.
pub fn zipf_masses(m: usize, alpha: f64) -> Result<Vec<f64>> {
    validate_alpha(alpha)?;
    if m == 0 {
        bail!("cannot spread mass over 0 leaves");
    }
    let mut w: Vec<f64> = (1..=m).map(|r| (r as f64).powf(-alpha)).collect();
    // Sum smallest first for accuracy.
    let total: f64 = w.iter().rev().sum();
    for x in &mut w {
        *x /= total;
    }
    Ok(w)
}

/// Uniform random permutation of `v` in place (Fisher-Yates).
fn shuffle(v: &mut [f64], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        // j uniform in 0..=i; the multiply-shift bias is below (i+1)/2^64.
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
}

/// The base distributions D1, D2, D3 for one seed: Zipf(alpha) masses over the 2^depth
/// responses, each placed in its own seeded order.
pub fn base_distributions(depth: u32, alpha: f64, seed: u64) -> Result<[TokenTree; 3]> {
    validate_depth(depth)?;
    let masses = zipf_masses(1usize << depth, alpha)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut make = || {
        let mut leaves = masses.clone();
        shuffle(&mut leaves, &mut rng);
        TokenTree::from_leaves(depth, &leaves)
    };
    Ok([make()?, make()?, make()?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_by_hand() {
        // alpha = 1, m = 3: 1, 1/2, 1/3 over 11/6.
        let w = zipf_masses(3, 1.0).unwrap();
        for (got, want) in w.iter().zip([6.0 / 11.0, 3.0 / 11.0, 2.0 / 11.0]) {
            assert!((got - want).abs() < 1e-15);
        }
    }

    #[test]
    fn base_distributions_are_seeded_permutations_of_one_profile() {
        let [a, b, c] = base_distributions(6, 1.5, 7).unwrap();
        let sorted = |t: &TokenTree| {
            let mut v = t.leaves().to_vec();
            v.sort_by(|x, y| y.total_cmp(x));
            v
        };
        let profile = zipf_masses(64, 1.5).unwrap();
        for t in [&a, &b, &c] {
            assert_eq!(sorted(t), profile);
        }
        assert_ne!(a.leaves(), b.leaves());
        assert_ne!(b.leaves(), c.leaves());
        let again = base_distributions(6, 1.5, 7).unwrap();
        assert_eq!(again[1], b);
        assert_ne!(base_distributions(6, 1.5, 8).unwrap()[0], a);
    }

    #[test]
    fn bad_alpha_is_rejected() {
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = base_distributions(3, alpha, 0).unwrap_err().to_string();
            assert!(e.contains("alpha"), "{e}");
        }
    }
}
