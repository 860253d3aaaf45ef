//! elastica: measure how strongly a language model resists alignment
//! (Ji et al., "Language Models Resist Alignment", arXiv 2406.06144).
//!
//! Data path (one direction): data -> tokenizer -> model -> train -> generate -> score
//! -> experiments -> report. `theory` and `compress` sit beside the path. `backend` puts
//! the model and its training step behind one interface (CPU fused kernels, or libtorch).
//! `grid` runs an experiment's cells (locally or on Slurm) without knowing any experiment;
//! `experiments` plan the grids and register their cell kinds with it. The layers, lowest
//! first, are in `.layers` at the repository root.

pub mod backend;
pub mod cli;
pub mod compress;
pub mod data;
pub mod experiments;
pub mod grid;
pub mod model;
pub mod report;
pub mod score;
pub mod theory;
pub mod train;
pub mod util;
