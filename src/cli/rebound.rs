//! `elastica rebound --config rebound.toml [--out DIR]`: the rebound experiment as one
//! command (plan the grid, run its cells, write the report). Rerunning the same command on
//! the same `--out` skips finished cells and resumes interrupted ones. The config format is
//! documented in `experiments::rebound::config` and docs/rebound.md.

use super::grid_args::GridArgs;
use crate::experiments::rebound::{self, config::ReboundConfig, Outcome};
use crate::grid::config::RunOptions;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// The arguments of `rebound` and of `scaling` (which runs the same grid over several models).
#[derive(clap::Args, Debug)]
pub struct ReboundArgs {
    /// The experiment config (TOML; see docs/rebound.md, and examples/rebound.toml or, for
    /// `scaling`, examples/scaling.toml).
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub grid: GridArgs,
    /// Only plan: check the config, freeze the data and write manifest.json, run nothing
    /// (for running the cells with `elastica cell run` on a cluster).
    #[arg(long)]
    pub plan_only: bool,
}

/// Load the config and apply the command-line overrides shared by `rebound` and `scaling`.
pub fn load_config(path: &std::path::Path, grid: &GridArgs) -> Result<ReboundConfig> {
    let mut cfg = ReboundConfig::from_file(path)?;
    cfg.executor = grid.executor(&cfg.executor)?;
    crate::experiments::device::check(&cfg.cell_device(), &cfg.executor, &cfg.slurm, path)?;
    if let Some(t) = grid.threads {
        cfg.threads = t;
    }
    crate::util::threads::set_threads(cfg.threads);
    Ok(cfg)
}

pub fn run(a: ReboundArgs) -> Result<()> {
    let cfg = load_config(&a.config, &a.grid)?;
    run_grid(&a, &cfg, "rebound", rebound::run)
}

/// Plan the grid of `rebound` or `scaling` (`kind`: also the run directory's and manifest's
/// name) and, unless `--plan-only`, run it with `run` and check that every cell finished.
pub fn run_grid(
    a: &ReboundArgs,
    cfg: &ReboundConfig,
    kind: &str,
    run: fn(&ReboundConfig, &Path, RunOptions) -> Result<Option<Outcome>>,
) -> Result<()> {
    let out = a.grid.out(kind)?;
    if a.plan_only {
        let p = rebound::plan_only(cfg, &out, kind)?;
        println!("{}", p.grid.manifest_path().display());
        return Ok(());
    }
    let Some(o) = run(cfg, &out, a.grid.run_options())? else {
        return Ok(());
    };
    eprintln!("report: {}", out.join("report.md").display());
    o.grid.ensure_complete(&o.planned.grid)
}
