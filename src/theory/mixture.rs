//! The mixture model (paper §2): a model trained to convergence on the union of data sets
//! D_1..D_n of sizes |D_i| represents the size-weighted average of their token trees,
//! `p^D = sum_i |D_i| p^{D_i} / sum_i |D_i|`. Each data set counts in proportion to its
//! size; this is the whole mechanism behind elasticity. (It is also the distribution that
//! minimises the total code length `sum_i |D_i| CE(D_i, model)`, which is why the forces in
//! the elasticity experiment balance.)

use super::token_tree::TokenTree;
use anyhow::{bail, Result};

/// The first value (and its index) that cannot weigh anything: not finite, or negative.
pub(super) fn first_invalid_weight(values: &[f64]) -> Option<(usize, f64)> {
    values
        .iter()
        .copied()
        .enumerate()
        .find(|&(_, v)| !v.is_finite() || v < 0.0)
}

/// Mixture weights `w_i = |D_i| / sum_j |D_j|` from data set sizes (finite, non-negative,
/// not all zero).
pub fn mixture_weights(sizes: &[f64]) -> Result<Vec<f64>> {
    if sizes.is_empty() {
        bail!("a mixture needs at least one data set");
    }
    if let Some((i, s)) = first_invalid_weight(sizes) {
        bail!("data set {i} has size {s}; sizes must be finite and non-negative");
    }
    let total: f64 = sizes.iter().sum();
    if total <= 0.0 {
        bail!("all data sets are empty; a mixture needs some data");
    }
    Ok(sizes.iter().map(|s| s / total).collect())
}

/// Leaf masses of the model trained on data sets `(size, tree)`; all trees must share a depth.
pub fn mixture_leaves(parts: &[(f64, &TokenTree)]) -> Result<Vec<f64>> {
    let sizes: Vec<f64> = parts.iter().map(|(s, _)| *s).collect();
    let w = mixture_weights(&sizes)?;
    let depth = parts[0].1.depth();
    if let Some((i, (_, t))) = parts
        .iter()
        .enumerate()
        .find(|(_, (_, t))| t.depth() != depth)
    {
        bail!(
            "data set {i} is a depth-{} tree but data set 0 has depth {depth}; mix trees of one depth",
            t.depth()
        );
    }
    let mut q = vec![0.0; 1usize << depth];
    for (wi, (_, t)) in w.iter().zip(parts) {
        for (qx, px) in q.iter_mut().zip(t.leaves()) {
            *qx += wi * px;
        }
    }
    Ok(q)
}

/// The mixture as a token tree.
pub fn mixture(parts: &[(f64, &TokenTree)]) -> Result<TokenTree> {
    let q = mixture_leaves(parts)?;
    TokenTree::from_leaves(parts[0].1.depth(), &q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::theory::pareto::base_distributions;
    use proptest::prelude::*;

    #[test]
    fn a_size_or_weight_that_weighs_nothing_is_named_by_its_index() {
        assert_eq!(first_invalid_weight(&[0.0, 2.5]), None);
        assert_eq!(
            first_invalid_weight(&[1.0, -2.0, f64::NAN]),
            Some((1, -2.0))
        );
        let e = mixture_weights(&[1.0, f64::INFINITY]).unwrap_err();
        assert!(e.to_string().contains("data set 1 has size inf"), "{e}");
        let e = crate::theory::protocol::huffman_code_lengths(&[1.0, 1.0, -0.5]).unwrap_err();
        assert!(e.to_string().contains("symbol 2 has weight -0.5"), "{e}");
    }

    #[test]
    fn mixture_by_hand() {
        let a = TokenTree::from_leaves(1, &[1.0, 0.0]).unwrap();
        let b = TokenTree::from_leaves(1, &[0.25, 0.75]).unwrap();
        // Sizes 3 and 1: (3 * [1, 0] + [0.25, 0.75]) / 4.
        let m = mixture(&[(3.0, &a), (1.0, &b)]).unwrap();
        assert_eq!(m.leaves(), &[0.8125, 0.1875]);
        assert!(mixture_weights(&[0.0, 0.0]).is_err());
        assert!(mixture_weights(&[1.0, -1.0]).is_err());
        let c = TokenTree::from_leaves(2, &[0.25; 4]).unwrap();
        assert!(mixture(&[(1.0, &a), (1.0, &c)])
            .unwrap_err()
            .to_string()
            .contains("depth"));
    }

    proptest! {
        #[test]
        fn weights_sum_to_one_and_follow_sizes(
            sizes in proptest::collection::vec(0.0f64..1e6, 1..6),
            seed in 0u64..1000,
        ) {
            prop_assume!(sizes.iter().sum::<f64>() > 0.0);
            let w = mixture_weights(&sizes).unwrap();
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            let total: f64 = sizes.iter().sum();
            for (wi, si) in w.iter().zip(&sizes) {
                prop_assert!((wi - si / total).abs() < 1e-15);
            }
            // Leaf by leaf the mixture is the size-weighted average, and it is a distribution.
            let trees = base_distributions(4, 1.2, seed).unwrap();
            let parts: Vec<(f64, &TokenTree)> =
                sizes.iter().zip(trees.iter().cycle()).map(|(s, t)| (*s, t)).collect();
            let m = mixture(&parts).unwrap();
            prop_assert!((m.level(0)[0] - 1.0).abs() < 1e-12);
            for x in 0..16 {
                let want: f64 = parts.iter().map(|(s, t)| s * t.leaves()[x]).sum::<f64>() / total;
                prop_assert!((m.leaves()[x] - want).abs() < 1e-12);
            }
        }
    }
}
