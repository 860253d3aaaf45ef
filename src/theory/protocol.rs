//! The compression protocol (paper §2): a model that represents the token tree down to
//! depth d compresses a response by Huffman-coding the pruned tree's leaves under the
//! model's leaf distribution. This module builds that code and measures data sets with it:
//! the exact expected Huffman code length of a data set under the model's code, and the
//! ideal (cross-entropy) length `-sum_x p_D(x) log2 p_model(x)` an arithmetic coder would
//! approach. Lengths are in bits per response (per leaf).
//!
//! Huffman's algorithm runs as the two-queue method on sorted weights: O(M log M) for the
//! sort, then linear, with no recursion; ties break by leaf index so the code is
//! deterministic.

use super::mixture::first_invalid_weight;
use super::token_tree::TokenTree;
use anyhow::{bail, Result};

/// A binary prefix code for the leaves of a token tree, given by its code lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HuffmanCode {
    lengths: Vec<u32>,
}

impl HuffmanCode {
    /// The Huffman code of the model's leaf distribution.
    pub fn for_model(model: &TokenTree) -> Result<Self> {
        Ok(HuffmanCode {
            lengths: huffman_code_lengths(model.leaves())?,
        })
    }

    /// Code length in bits of every leaf, in leaf order.
    pub fn lengths(&self) -> &[u32] {
        &self.lengths
    }

    /// Exact expected code length (bits per response) of data drawn from `data`'s leaf
    /// distribution, coded with this code.
    pub fn expected_length(&self, data: &[f64]) -> f64 {
        data.iter()
            .zip(&self.lengths)
            .map(|(p, &len)| p * len as f64)
            .sum()
    }

    /// Kraft equality `sum_x 2^-len(x) = 1`, checked exactly in integer arithmetic (the
    /// code of a full binary tree, as Huffman's always is, meets it with equality).
    pub fn kraft_equality(&self) -> bool {
        let max = self.lengths.iter().copied().max().unwrap_or(0) as usize;
        let mut count = vec![0u128; max + 1];
        for &l in &self.lengths {
            count[l as usize] += 1;
        }
        // Pair codewords level by level from the deepest: each level must pair up exactly
        // and leave a single node at the root.
        let mut carry = 0u128;
        for l in (1..=max).rev() {
            let n = count[l] + carry;
            if !n.is_multiple_of(2) {
                return false;
            }
            carry = n / 2;
        }
        count[0] + carry == 1
    }
}

/// Huffman code lengths for `weights` (non-negative, finite, at least two of them).
pub fn huffman_code_lengths(weights: &[f64]) -> Result<Vec<u32>> {
    let m = weights.len();
    if m < 2 {
        bail!("a Huffman code needs at least 2 symbols, got {m}");
    }
    if let Some((i, w)) = first_invalid_weight(weights) {
        bail!("symbol {i} has weight {w}; Huffman weights must be finite and non-negative");
    }
    let (order, sorted) = ascending_order(weights);
    // Work in rank space: node r < m is the leaf of rank r (sorted[r] its weight), node
    // m + j the j-th internal node. Internal nodes are created with non-decreasing weight,
    // so they form the second sorted queue of the two-queue method.
    let total = 2 * m - 1;
    let mut parent = vec![0u32; total];
    let mut internal_weight: Vec<f64> = Vec::with_capacity(m - 1);
    let (mut li, mut qi) = (0usize, 0usize);
    for j in 0..m - 1 {
        let mut take = || {
            // On equal weights take the leaf: deterministic, and keeps the code shallow.
            let use_leaf =
                li < m && (qi >= internal_weight.len() || sorted[li] <= internal_weight[qi]);
            if use_leaf {
                li += 1;
                (li - 1, sorted[li - 1])
            } else {
                qi += 1;
                (m + qi - 1, internal_weight[qi - 1])
            }
        };
        // Two nodes always remain: m - 1 - j merges left means m - j >= 2 nodes unmerged.
        let (a, wa) = take();
        let (b, wb) = take();
        parent[a] = (m + j) as u32;
        parent[b] = (m + j) as u32;
        internal_weight.push(wa + wb);
    }
    // Depths top-down: the root is the last node, and parents come after their children.
    let mut depth = vec![0u32; total];
    for n in (0..total - 1).rev() {
        depth[n] = depth[parent[n] as usize] + 1;
    }
    let mut lengths = vec![0u32; m];
    for (r, &leaf) in order.iter().enumerate() {
        lengths[leaf as usize] = depth[r];
    }
    Ok(lengths)
}

/// Leaf indices sorted by ascending weight (ties by ascending index), and the weights in
/// that order. Sorting contiguous (bit pattern, index) pairs is much faster than sorting
/// indices through a comparator that chases into the weights; non-negative doubles order
/// like their bit patterns as u64.
fn ascending_order(weights: &[f64]) -> (Vec<u32>, Vec<f64>) {
    // `+ 0.0` turns -0.0 into +0.0, whose bit pattern is the smallest.
    let mut pairs: Vec<(u64, u32)> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| ((w + 0.0).to_bits(), i as u32))
        .collect();
    pairs.sort_unstable();
    pairs
        .into_iter()
        .map(|(k, i)| (i, f64::from_bits(k)))
        .unzip()
}

/// Shannon entropy in bits of a distribution.
pub fn entropy(p: &[f64]) -> f64 {
    p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.log2()).sum()
}

/// Ideal code length in bits per response: the cross-entropy `-sum p log2 q` of data `p`
/// under model `q`; infinite if the data puts mass where the model has none.
pub fn ideal_length(data: &[f64], model: &[f64]) -> f64 {
    data.iter()
        .zip(model)
        .filter(|(p, _)| **p > 0.0)
        .map(|(&p, &q)| {
            if q > 0.0 {
                -p * q.log2()
            } else {
                f64::INFINITY
            }
        })
        .sum()
}

/// KL divergence `KL(p || q)` in bits.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    ideal_length(p, q) - entropy(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn huffman_by_hand() {
        // Classic example: 0.4, 0.2, 0.2, 0.1, 0.1 -> expected length 2.2 bits.
        let w = [0.4, 0.2, 0.2, 0.1, 0.1];
        let lens = huffman_code_lengths(&w).unwrap();
        let code = HuffmanCode { lengths: lens };
        assert!((code.expected_length(&w) - 2.2).abs() < 1e-12);
        assert!(code.kraft_equality());
        // Dyadic weights get exactly -log2 p.
        let lens = huffman_code_lengths(&[0.5, 0.25, 0.125, 0.125]).unwrap();
        assert_eq!(lens, vec![1, 2, 3, 3]);
        assert!(huffman_code_lengths(&[1.0]).is_err());
        assert!(huffman_code_lengths(&[0.5, f64::NAN]).is_err());
    }

    #[test]
    fn kraft_check_detects_incomplete_codes() {
        assert!(!HuffmanCode {
            lengths: vec![1, 2]
        }
        .kraft_equality());
        assert!(!HuffmanCode {
            lengths: vec![1, 1, 1]
        }
        .kraft_equality());
        assert!(HuffmanCode {
            lengths: vec![2, 2, 2, 2]
        }
        .kraft_equality());
    }

    #[test]
    fn a_million_leaves_is_fast() {
        let m = 1 << 20;
        let w: Vec<f64> = (1..=m).map(|r| (r as f64).powf(-1.5)).collect();
        let t = std::time::Instant::now();
        let lens = huffman_code_lengths(&w).unwrap();
        assert!(t.elapsed().as_secs_f64() < 5.0);
        assert!(HuffmanCode { lengths: lens }.kraft_equality());
    }

    #[test]
    fn pair_order_matches_comparison_sort() {
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Many ties, zeros (including -0.0) and a wide range of magnitudes.
        let w: Vec<f64> = (0..20_000)
            .map(|i| match next() % 5 {
                0 => 0.0,
                1 => -0.0,
                2 => (next() % 7) as f64,
                _ => (next() % 1_000_000) as f64 * 10f64.powi(-(i % 30)),
            })
            .collect();
        let mut want: Vec<u32> = (0..w.len() as u32).collect();
        want.sort_by(|&a, &b| {
            (w[a as usize] + 0.0)
                .total_cmp(&(w[b as usize] + 0.0))
                .then(a.cmp(&b))
        });
        let (order, sorted) = ascending_order(&w);
        assert_eq!(order, want);
        assert!(sorted
            .iter()
            .zip(&want)
            .all(|(s, &i)| *s == w[i as usize] + 0.0));
    }

    proptest! {
        #[test]
        fn huffman_length_within_one_bit_of_entropy(
            raw in proptest::collection::vec(0.0f64..1.0, 2..300),
        ) {
            let total: f64 = raw.iter().sum();
            prop_assume!(total > 1e-9);
            let p: Vec<f64> = raw.iter().map(|x| x / total).collect();
            let code = HuffmanCode { lengths: huffman_code_lengths(&p).unwrap() };
            let h = entropy(&p);
            let len = code.expected_length(&p);
            prop_assert!(len >= h - 1e-9, "length {len} below entropy {h}");
            prop_assert!(len < h + 1.0, "length {len} not below entropy + 1 = {}", h + 1.0);
            prop_assert!(code.kraft_equality());
        }

        #[test]
        fn cross_entropy_is_at_least_entropy(
            a in proptest::collection::vec(0.01f64..1.0, 8),
            b in proptest::collection::vec(0.01f64..1.0, 8),
        ) {
            let n = |v: &Vec<f64>| { let s: f64 = v.iter().sum(); v.iter().map(|x| x / s).collect::<Vec<_>>() };
            let (p, q) = (n(&a), n(&b));
            prop_assert!(kl_divergence(&p, &q) >= -1e-12);
            prop_assert!(kl_divergence(&p, &p).abs() < 1e-12);
        }
    }
}
