//! The rebound experiment (PAPER.md §4): fine-tune a pre-trained model on n+ positive
//! samples, then on n- negative samples, and watch how fast the score falls back toward
//! (and past) the pre-trained level, together with the KL to the base model.
//!
//! - [`config`]: `rebound.toml`, every key with its default;
//! - [`data`]: the data frozen into the run directory;
//! - [`plan`]: config -> checked run directory and grid manifest;
//! - [`cells`]: the cell kinds `rebound.base`, `rebound.align`, `rebound.perturb`;
//! - [`report`]: results files, tables, plots and the rebound-strength definition.
//!
//! `elastica scaling` (`experiments::scaling`) runs the same grid over several base models.

pub mod cells;
pub mod config;
pub mod data;
pub mod plan;
pub mod report;

use crate::experiments::executor::{self, GridReport};
use crate::report::RunDir;
use anyhow::Result;
use config::ReboundConfig;
use plan::Planned;
use report::Analysis;
use std::path::{Path, PathBuf};

/// What a run produced. The grid may be incomplete (see `grid.ensure_complete`); the report
/// then covers the finished cells and lists the missing ones.
pub struct Outcome {
    pub planned: Planned,
    pub grid: GridReport,
    pub analysis: Analysis,
    /// Report files written.
    pub files: Vec<PathBuf>,
}

/// Plan, execute and report a rebound grid in `out`.
pub fn run(cfg: &ReboundConfig, out: &Path, progress: bool) -> Result<Outcome> {
    execute(
        cfg,
        out,
        "rebound",
        "Rebound experiment",
        progress,
        |_, _| Ok(String::new()),
    )
}

/// Plan the grid of `cfg` in `out` without running anything.
pub fn plan_only(cfg: &ReboundConfig, out: &Path, experiment: &str) -> Result<Planned> {
    plan::plan(cfg, out, experiment)
}

/// The shared driver of `rebound` and `scaling`: plan, run the cells with the configured
/// executor, analyse, and write the report with `extra` (given the analysis) appended.
pub(crate) fn execute(
    cfg: &ReboundConfig,
    out: &Path,
    experiment: &str,
    title: &str,
    progress: bool,
    extra: impl FnOnce(&RunDir, &Analysis) -> Result<String>,
) -> Result<Outcome> {
    let planned = plan::plan(cfg, out, experiment)?;
    let ex = executor::build(&cfg.executor, progress)?;
    let grid = ex.execute(&planned.grid)?;
    eprintln!("{}", grid.summary());
    let analysis = report::analyze(cfg, &planned.grid, &planned.models)?;
    let run = RunDir::create(planned.grid.run_dir())?;
    let section = extra(&run, &analysis)?;
    let files = report::write(&run, cfg, &analysis, Some(&planned.data), title, &section)?;
    Ok(Outcome {
        planned,
        grid,
        analysis,
        files,
    })
}
