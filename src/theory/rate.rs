//! Compression rate gamma(D) of a data set D under a model (paper §2): the expected code
//! length of D's responses under the model's compression protocol, per token. Every
//! response in the pruned tree is d tokens long (one block of the paper's
//! `ceil(|x|/d)` blocks), so the rate is the per-response length divided by d, in bits per
//! token. Two versions are kept:
//! - **Huffman**: the exact expected length of the model's Huffman code (integer code
//!   lengths, so it moves in steps as the model changes);
//! - **ideal**: the cross-entropy `-sum_x p_D(x) log2 p_model(x) / d`, the limit an
//!   arithmetic coder approaches; smooth in the model.
//!
//! **Normalised rate.** Following the appendix convention the paper uses, the normalised
//! rate subtracts log M, the length of the uniform code over the M = 2^d leaves (what a
//! model that knows nothing achieves), from the per-response length. Per token that is
//! `gamma - log2(M) / d`, i.e. gamma minus 1 bit for the complete binary tree; it is
//! negative when the model compresses D better than the uniform code. (This normalisation
//! is inferred, see PAPER.md §2.) It shifts every rate by the same constant, so derivatives
//! in l and their ratios, which the elasticity theorem is about, do not depend on it.

use super::protocol::{ideal_length, HuffmanCode};
use super::token_tree::TokenTree;
use anyhow::{bail, Result};
use serde::Serialize;

/// Rates of one data set under one model, in bits per token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CompressionRate {
    pub huffman: f64,
    pub ideal: f64,
    pub normalized_huffman: f64,
    pub normalized_ideal: f64,
}

/// `rate - log2(M) / d` for a depth-d tree (M = 2^d leaves), see the module doc.
pub fn normalize(rate: f64, depth: u32) -> f64 {
    let log2_m = depth as f64; // log2(2^d)
    rate - log2_m / depth as f64
}

/// Compression rate of `data` under `model`, whose Huffman code is `code`.
pub fn compression_rate(
    data: &TokenTree,
    model: &TokenTree,
    code: &HuffmanCode,
) -> Result<CompressionRate> {
    let d = data.depth();
    if model.depth() != d || code.lengths().len() != data.num_leaves() {
        bail!(
            "data (depth {d}), model (depth {}) and code ({} leaves) must describe the same tree",
            model.depth(),
            code.lengths().len()
        );
    }
    let huffman = code.expected_length(data.leaves()) / d as f64;
    let ideal = ideal_length(data.leaves(), model.leaves()) / d as f64;
    Ok(CompressionRate {
        huffman,
        ideal,
        normalized_huffman: normalize(huffman, d),
        normalized_ideal: normalize(ideal, d),
    })
}

/// Rates of several data sets under one model, taking each leaf's log-probability once.
pub fn compression_rates(
    data: &[&TokenTree],
    model: &TokenTree,
    code: &HuffmanCode,
) -> Result<Vec<CompressionRate>> {
    let d = model.depth();
    if code.lengths().len() != model.num_leaves() {
        bail!(
            "the code has {} lengths but the model has {} leaves",
            code.lengths().len(),
            model.num_leaves()
        );
    }
    if let Some(t) = data.iter().find(|t| t.depth() != d) {
        bail!(
            "a depth-{} data set cannot be coded by a depth-{d} model",
            t.depth()
        );
    }
    let mut huff = vec![0.0; data.len()];
    let mut ideal = vec![0.0; data.len()];
    for (x, (&q, &len)) in model.leaves().iter().zip(code.lengths()).enumerate() {
        let lq = if q > 0.0 { -q.log2() } else { f64::INFINITY };
        for (j, t) in data.iter().enumerate() {
            let p = t.leaves()[x];
            if p > 0.0 {
                huff[j] += p * len as f64;
                ideal[j] += p * lq;
            }
        }
    }
    Ok(huff
        .iter()
        .zip(&ideal)
        .map(|(&h, &i)| {
            let (huffman, ideal) = (h / d as f64, i / d as f64);
            CompressionRate {
                huffman,
                ideal,
                normalized_huffman: normalize(huffman, d),
                normalized_ideal: normalize(ideal, d),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::theory::pareto::base_distributions;
    use crate::theory::protocol::entropy;
    use proptest::prelude::*;

    #[test]
    fn uniform_model_rate_is_one_bit_per_token() {
        let u = TokenTree::from_leaves(3, &[0.125; 8]).unwrap();
        let code = HuffmanCode::for_model(&u).unwrap();
        let r = compression_rate(&u, &u, &code).unwrap();
        assert_eq!((r.huffman, r.ideal, r.normalized_ideal), (1.0, 1.0, 0.0));
    }

    proptest! {
        #[test]
        fn own_rate_is_entropy_per_token(depth in 1u32..9, alpha in 0.2f64..3.0, seed in 0u64..10_000) {
            let [d1, _, _] = base_distributions(depth, alpha, seed).unwrap();
            let code = HuffmanCode::for_model(&d1).unwrap();
            let r = compression_rate(&d1, &d1, &code).unwrap();
            let h = entropy(d1.leaves()) / depth as f64;
            prop_assert!((r.ideal - h).abs() < 1e-12, "ideal {} vs entropy/token {h}", r.ideal);
            // Huffman: within one bit per response of the entropy.
            prop_assert!(r.huffman >= h - 1e-12 && r.huffman < h + 1.0 / depth as f64);
            prop_assert!((r.normalized_ideal - (h - 1.0)).abs() < 1e-12);
            // The batched version agrees with the one-at-a-time one.
            let [a, b, c] = base_distributions(depth, alpha, seed + 1).unwrap();
            let many = compression_rates(&[&a, &b, &d1], &c, &HuffmanCode::for_model(&c).unwrap()).unwrap();
            let code_c = HuffmanCode::for_model(&c).unwrap();
            for (t, got) in [&a, &b, &d1].iter().zip(&many) {
                let one = compression_rate(t, &c, &code_c).unwrap();
                prop_assert!((one.ideal - got.ideal).abs() < 1e-12 && (one.huffman - got.huffman).abs() < 1e-12);
            }
        }
    }
}
