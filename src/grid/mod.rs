//! The grid runner: an experiment as a grid of independent cells, run locally or on a
//! cluster. It knows no experiment: experiments plan manifests and describe their cell kinds
//! with [`registry::Experiment`]; this layer runs and tracks the cells.
//!
//! A [`manifest::Manifest`] lists the cells, each a named unit of work with a kind,
//! parameters, inputs and dependencies. An [`executor::Executor`] runs them (locally, or on
//! a cluster through `elastica cell run --manifest M --index I`); each cell writes into
//! `cells/<id>/` of the run directory and finishes by writing `result.json`. The experiment
//! then reads the results back and writes its report. Cells that share a prefix (an aligned
//! checkpoint that several perturbations start from) are separate cells linked by a
//! dependency, so the prefix runs once.
//!
//! - [`manifest`]: the cell list, its validation and hashes;
//! - [`rundir`]: [`rundir::Grid`], a run directory and the on-disk status of its cells
//!   (`result.json` and the other cell files);
//! - [`cell`]: running one cell, and the [`cell::CellKind`] trait kinds implement;
//! - [`registry`]: the experiments and cell kinds a program knows (passed in, never imported);
//! - [`config`]: the `[executor]` table, `--executor` and the run options;
//! - [`device`]: where the cells compute (`device.json`, the local executor's devices);
//! - [`executor`]: the executor interface and its report (`status.json`);
//! - [`local`]: the local executor, on `util::parallel`'s scheduler;
//! - [`slurm`]: the Slurm executor (job arrays, polling, resubmission);
//! - [`launch`]: the executor a config names;
//! - [`collect`]: the report of a grid whose cells ran elsewhere.

pub mod cell;
pub mod collect;
pub mod config;
pub mod device;
pub mod executor;
pub mod launch;
pub mod local;
pub mod manifest;
pub mod registry;
pub mod rundir;
pub mod slurm;
