//! The elasticity theorem as running code: an exact token-tree simulator (paper §2).
//!
//! No neural network is involved. A data set is a distribution over binary responses held as
//! a token tree ([`token_tree`]) with Pareto/Zipf leaf masses ([`pareto`]); a model trained on
//! a union of data sets is their size-weighted mixture ([`mixture`]); it compresses by
//! Huffman-coding the pruned tree's leaves ([`protocol`]), which gives compression rates
//! ([`rate`]). [`elasticity`] runs the paper's experiment: how the rates of the pre-training
//! and alignment sets move as a small perturbation set grows, for a range of
//! k = |D_p| / |D_a|. [`output`] turns the results into tables, a report and plots.
//!
//! Library entry point for other commands (e.g. `elastica demo`):
//! ```no_run
//! use elastica::theory::{run_experiment, TheoryConfig};
//! # fn main() -> anyhow::Result<()> {
//! let results = run_experiment(&TheoryConfig { depth: 10, seeds: 3, ..Default::default() })?;
//! println!("{}", results.summary_markdown());
//! results.write(std::path::Path::new("runs/theory"))?;
//! # Ok(()) }
//! ```

pub mod elasticity;
pub mod mixture;
pub mod output;
pub mod pareto;
pub mod protocol;
pub mod rate;
pub mod token_tree;

pub use elasticity::{run_experiment, run_experiment_with_progress, TheoryConfig, TheoryResults};
