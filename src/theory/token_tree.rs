//! The token tree (paper §2): a data set of binary responses seen as a complete binary tree
//! pruned to depth d. Each root-to-leaf path is a response prefix of d binary tokens, and a
//! node's weight is the probability mass of its subtree, so the root weighs 1 and every
//! node weighs the sum of its two children.
//!
//! The tree is stored flat in heap order (node i has children 2i+1 and 2i+2; level l
//! occupies indices 2^l - 1 .. 2^(l+1) - 1), built bottom-up without recursion, so depth 20
//! (a million leaves) is a few flat arrays.

use anyhow::{bail, Result};

/// Deepest tree the simulator accepts: 2^22 leaves is 32 MiB per distribution, and the
/// experiment holds a handful of them per worker.
pub const MAX_DEPTH: u32 = 22;

/// Tolerance on the total mass of a distribution (floating-point sums of millions of terms).
const MASS_TOLERANCE: f64 = 1e-9;

/// Check a pruning depth: at least one token, at most [`MAX_DEPTH`].
pub fn validate_depth(depth: u32) -> Result<()> {
    if depth == 0 {
        bail!("depth must be at least 1 (a tree pruned to depth 0 has a single leaf and codes nothing)");
    }
    if depth > MAX_DEPTH {
        bail!(
            "depth {depth} would need 2^{depth} leaves; the simulator supports depth 1..={MAX_DEPTH}"
        );
    }
    Ok(())
}

/// A probability distribution over the 2^d binary responses of length d, with the masses
/// of all internal nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenTree {
    depth: u32,
    /// Heap-ordered node weights; the last 2^depth entries are the leaves.
    nodes: Vec<f64>,
}

impl TokenTree {
    /// Build the tree from its leaf masses (left-to-right, i.e. responses in binary order).
    /// The masses must be finite, non-negative, 2^depth of them, and sum to 1.
    pub fn from_leaves(depth: u32, leaves: &[f64]) -> Result<Self> {
        validate_depth(depth)?;
        let m = 1usize << depth;
        if leaves.len() != m {
            bail!(
                "a token tree of depth {depth} has {m} leaves, but {} masses were given",
                leaves.len()
            );
        }
        if let Some((i, w)) = leaves
            .iter()
            .enumerate()
            .find(|(_, w)| !w.is_finite() || **w < 0.0)
        {
            bail!("leaf {i} has mass {w}; masses must be finite and non-negative");
        }
        let mut nodes = vec![0.0; 2 * m - 1];
        nodes[m - 1..].copy_from_slice(leaves);
        // Bottom-up: every parent index is smaller than its children's.
        for i in (0..m - 1).rev() {
            nodes[i] = nodes[2 * i + 1] + nodes[2 * i + 2];
        }
        if (nodes[0] - 1.0).abs() > MASS_TOLERANCE {
            bail!(
                "leaf masses sum to {}, not 1; a token tree holds a probability distribution",
                nodes[0]
            );
        }
        Ok(TokenTree { depth, nodes })
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// M, the number of leaves (responses) after pruning.
    pub fn num_leaves(&self) -> usize {
        1usize << self.depth
    }

    /// Leaf masses in binary order of the responses.
    pub fn leaves(&self) -> &[f64] {
        self.level(self.depth)
    }

    /// Node weights on level `l` (0 = root), left to right.
    pub fn level(&self, l: u32) -> &[f64] {
        let l = l.min(self.depth);
        let start = (1usize << l) - 1;
        &self.nodes[start..start + (1usize << l)]
    }

    /// Probability that the token after the prefix at (`level`, `index`) is `bit`: the
    /// child's weight over the parent's (1/2 for a parent of zero mass, by convention).
    pub fn next_token_prob(&self, level: u32, index: usize, bit: bool) -> f64 {
        let parent = self.level(level)[index];
        let child = self.level(level + 1)[2 * index + usize::from(bit)];
        if parent > 0.0 {
            child / parent
        } else {
            0.5
        }
    }

    /// The same data set seen by a model of capacity `depth` (paper §2): the tree cut at
    /// that depth, whose leaves are the subtree masses there.
    pub fn prune(&self, depth: u32) -> Result<TokenTree> {
        validate_depth(depth)?;
        if depth > self.depth {
            bail!(
                "cannot prune a depth-{} tree to the deeper depth {depth}",
                self.depth
            );
        }
        let end = (1usize << (depth + 1)) - 1;
        Ok(TokenTree {
            depth,
            nodes: self.nodes[..end].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_weights_sum_children() {
        let t = TokenTree::from_leaves(2, &[0.1, 0.2, 0.3, 0.4]).unwrap();
        assert_eq!(t.level(0), &[1.0]);
        assert!((t.level(1)[0] - 0.3).abs() < 1e-15 && (t.level(1)[1] - 0.7).abs() < 1e-15);
        assert_eq!(t.leaves(), &[0.1, 0.2, 0.3, 0.4]);
        assert!((t.next_token_prob(1, 1, true) - 0.4 / 0.7).abs() < 1e-15);
        let p = t.prune(1).unwrap();
        assert_eq!(p.num_leaves(), 2);
        assert!((p.leaves()[1] - 0.7).abs() < 1e-15);
    }

    #[test]
    fn chain_rule_over_tokens_gives_leaf_probability() {
        // The per-token conditionals along a path multiply to the leaf mass: this is what
        // makes "code length per token" the leaf code length divided by d.
        let leaves: Vec<f64> = (1..=8).map(|r| r as f64 / 36.0).collect();
        let t = TokenTree::from_leaves(3, &leaves).unwrap();
        for (leaf, &mass) in leaves.iter().enumerate() {
            let mut p = 1.0;
            for l in 0..3 {
                let prefix = leaf >> (3 - l);
                let bit = (leaf >> (2 - l)) & 1 == 1;
                p *= t.next_token_prob(l, prefix, bit);
            }
            assert!((p - mass).abs() < 1e-15);
        }
    }

    #[test]
    fn invalid_trees_are_rejected_with_reasons() {
        let e = |r: Result<TokenTree>| r.unwrap_err().to_string();
        assert!(e(TokenTree::from_leaves(0, &[1.0])).contains("at least 1"));
        assert!(e(TokenTree::from_leaves(30, &[1.0])).contains("1..=22"));
        assert!(e(TokenTree::from_leaves(2, &[0.5, 0.5])).contains("4 leaves"));
        assert!(e(TokenTree::from_leaves(1, &[1.5, -0.5])).contains("leaf 1"));
        assert!(e(TokenTree::from_leaves(1, &[0.5, 0.6])).contains("sum to"));
        let t = TokenTree::from_leaves(1, &[0.5, 0.5]).unwrap();
        assert!(t.prune(2).is_err());
    }
}
