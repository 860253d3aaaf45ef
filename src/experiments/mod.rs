//! Experiments as grids of independent cells.
//!
//! An experiment (rebound, scaling, resist) turns its config into a [`manifest::Manifest`]:
//! a list of cells, each a named unit of work with a kind, parameters, inputs and
//! dependencies. An [`executor::Executor`] runs the cells (locally, or on a cluster through
//! `elastica cell run --manifest M --index I`); each cell writes into `cells/<id>/` of the
//! run directory and finishes by writing `result.json`. The experiment then reads the
//! results back and writes its report. Cells that share a prefix (an aligned checkpoint
//! that several perturbations start from) are separate cells linked by a dependency, so the
//! prefix runs once.
//!
//! - [`align`]: the align stage's method (`[align] method = "sft" | "dpo"`);
//! - [`manifest`]: the cell list, its validation and hashes;
//! - [`grid`]: a run directory and the on-disk status of its cells;
//! - [`cell`]: running one cell, and the [`cell::CellKind`] trait kinds implement;
//! - [`kinds`]: the registry of cell kinds;
//! - [`executor`]: the executor interface and the local executor;
//! - [`slurm`]: the Slurm executor (job arrays, polling, resubmission);
//! - [`collect`]: the report of a grid whose cells ran elsewhere;
//! - [`resist`]: experiment 1, forward vs inverse alignment (PAPER.md §3).
//! - [`evaluate`], [`kl`]: judging a model (generations, scores, KL to the base);
//! - [`rebound`], [`scaling`]: the rebound experiment and its scaling study;
//! - [`weight_space`]: how far a perturbation moves the weights back along the alignment update.

pub mod align;
pub mod cell;
pub mod collect;
pub mod demo;
pub mod evaluate;
pub mod executor;
pub mod grid;
pub mod kinds;
pub mod kl;
pub mod manifest;
pub mod pretrain;
pub mod rebound;
pub mod resist;
pub mod scaling;
pub mod slurm;
pub mod weight_space;
