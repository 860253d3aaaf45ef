//! The rebound experiment (PAPER.md §4): fine-tune a pre-trained model on n+ positive
//! samples, then on n- negative samples, and watch how fast the score falls back toward
//! (and past) the pre-trained level, together with the KL to the base model.
//!
//! - [`config`]: `rebound.toml`, every key with its default;
//! - [`data`]: the data frozen into the run directory;
//! - [`plan`]: config -> checked run directory and grid manifest;
//! - [`cells`]: the cell kinds `rebound.base`, `rebound.align`, `rebound.perturb`;
//! - [`memory`]: each cell's memory estimate, following its stage (full, LoRA, DPO);
//! - [`report`]: results files, tables, plots and the rebound-strength definition;
//! - [`outputs`]: the finished evaluations, found by their own fields;
//! - [`curves`]: a measure against n- per n+, and its table and plot, for the report and
//!   the instruments alike;
//! - [`instruments`]: capability kept, coherence, refusal rate, KL by position and weight
//!   space, aggregated and reported beside the score.
//!
//! `elastica scaling` (`experiments::scaling`) runs the same grid over several base models.

pub mod cells;
pub mod config;
pub mod curves;
pub mod data;
pub mod instruments;
pub mod memory;
pub mod outputs;
pub mod plan;
pub mod report;

use crate::grid::config::RunOptions;
use crate::grid::executor::GridReport;
use crate::grid::launch::launch;
use crate::grid::rundir::Grid;
use crate::report::RunDir;
use anyhow::{Context, Result};
use config::ReboundConfig;
use data::FrozenData;
use plan::{Planned, ResolvedModel};
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

/// Plan, execute and report a rebound grid in `out`. `None` when the cells were submitted
/// to a scheduler without waiting (`elastica collect` writes the report later).
pub fn run(cfg: &ReboundConfig, out: &Path, opts: RunOptions) -> Result<Option<Outcome>> {
    execute(cfg, out, "rebound", TITLE, opts, |_, _| Ok(String::new()))
}

/// The report title of a rebound run.
pub const TITLE: &str = "Rebound experiment";

/// Plan the grid of `cfg` in `out` without running anything.
pub fn plan_only(cfg: &ReboundConfig, out: &Path, experiment: &str) -> Result<Planned> {
    cfg.cell_device().check_precision(out)?;
    let planned = plan::plan(cfg, out, experiment)?;
    cfg.cell_device().write(planned.grid.run_dir())?;
    Ok(planned)
}

/// The shared driver of `rebound` and `scaling`: plan, run the cells with the configured
/// executor, analyse, and write the report with `extra` (given the analysis) appended.
pub(crate) fn execute(
    cfg: &ReboundConfig,
    out: &Path,
    experiment: &str,
    title: &str,
    opts: RunOptions,
    extra: impl FnOnce(&RunDir, &Analysis) -> Result<String>,
) -> Result<Option<Outcome>> {
    let planned = plan_only(cfg, out, experiment)?;
    if cfg.executor.is_slurm() && cfg.train.save_every == 0 {
        eprintln!(
            "warning: train.save_every = 0: a cell that Slurm requeues (preemption, node \
             failure) or that runs out of time restarts its training from the beginning; set \
             save_every to resume from checkpoints"
        );
    }
    let ex = launch(&cfg.executor, &cfg.slurm, opts, cells::KINDS)?;
    let grid = ex.execute(&planned.grid)?;
    eprintln!("{}", grid.summary());
    if grid.detached() {
        return Ok(None);
    }
    let (analysis, files) = write_report(
        cfg,
        &planned.grid,
        &planned.models,
        Some(&planned.data),
        title,
        extra,
    )?;
    Ok(Some(Outcome {
        planned,
        grid,
        analysis,
        files,
    }))
}

/// Analyse the finished cells of `grid` and write the report files.
fn write_report(
    cfg: &ReboundConfig,
    grid: &Grid,
    models: &[ResolvedModel],
    data: Option<&FrozenData>,
    title: &str,
    extra: impl FnOnce(&RunDir, &Analysis) -> Result<String>,
) -> Result<(Analysis, Vec<PathBuf>)> {
    let analysis = report::analyze(cfg, grid, models)?;
    let run = RunDir::create(grid.run_dir())?;
    let section = extra(&run, &analysis)?;
    let files = report::write(&run, cfg, &analysis, data, title, &section)?;
    Ok((analysis, files))
}

/// The report of an already executed grid in `grid`'s run directory (after a Slurm run,
/// `elastica collect`): the resolved config and the models are read back from the run
/// directory; nothing is planned or run.
pub(crate) fn collect_with(
    grid: &Grid,
    title: &str,
    extra: impl FnOnce(&ReboundConfig, &RunDir, &Analysis) -> Result<String>,
) -> Result<(Analysis, Vec<PathBuf>)> {
    let path = grid.run_dir().join(plan::CONFIG_FILE);
    let cfg = ReboundConfig::from_file(&path)
        .with_context(|| format!("the run's resolved config {}", path.display()))?;
    let models = plan::models_of_grid(&cfg, grid)?;
    let data = data::read_frozen(grid.run_dir())?;
    write_report(&cfg, grid, &models, data.as_ref(), title, |run, a| {
        extra(&cfg, run, a)
    })
}

/// `elastica collect` on a rebound run.
pub fn collect(grid: &Grid) -> Result<(Analysis, Vec<PathBuf>)> {
    collect_with(grid, TITLE, |_, _, _| Ok(String::new()))
}
