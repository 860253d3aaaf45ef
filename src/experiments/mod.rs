//! The experiments, each a grid of independent cells run by the `grid` layer.
//!
//! An experiment (rebound, scaling, resist) turns its config into a `grid::manifest::Manifest`
//! (its cells), launches an executor on it (`grid::launch`) with its cell kinds, and writes its
//! report from the cells' results.
//!
//! - [`registry`]: every experiment and its cell kinds, for the binary to pass to the grid;
//! - [`align`]: the align stage's method (`[align] method = "sft" | "dpo"`);
//! - [`device`]: the configs' `device` keys and the training stage on the backend they name;
//! - [`resist`]: experiment 1, forward vs inverse alignment (PAPER.md §3).
//! - [`sampling`]: the experiments' sampling tables (`GenConfig` with per-experiment defaults);
//! - [`evaluate`], [`kl`]: judging a model (generations, scores, KL to the base), on any
//!   model that is [`evaluated::Evaluated`] (a backend's, or the demo's CPU model);
//! - [`rebound`], [`scaling`]: the rebound experiment and its scaling study;
//! - [`weight_space`]: how far a perturbation moves the weights back along the alignment update;
//! - [`log_dir`]: each training cell's TensorBoard directory under the config's `log_dir`.

pub mod align;
pub mod demo;
pub mod device;
pub mod evaluate;
pub mod evaluated;
pub mod kl;
pub mod log_dir;
pub mod pretrain;
pub mod rebound;
pub mod registry;
pub mod renders;
pub mod resist;
pub mod sampling;
pub mod scaling;
pub mod weight_space;
