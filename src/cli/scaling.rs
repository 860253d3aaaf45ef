//! `elastica scaling --config scaling.toml [--out DIR]`: the rebound grid over several base
//! models, with the rebound strength plotted against their size or pre-training tokens.
//! The config is a rebound config with `[[models]]` tables (name, path, x) and `x_label`.

use crate::experiments::scaling;
use crate::grid::config::{ExecutorKind, RunOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ScalingArgs {
    /// The study's config (TOML; see docs/rebound.md and examples/scaling.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (default: runs/scaling-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cells run at the same time (overrides executor.jobs of a local executor).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Worker threads for tensor code (overrides `threads`; 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Only plan: check the config, freeze the data and write manifest.json.
    #[arg(long)]
    pub plan_only: bool,
    /// Who runs the cells (overrides the config's [executor] kind; see docs/slurm.md).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// With --executor slurm: return once the cells are submitted.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(a: ScalingArgs) -> Result<()> {
    let cfg = super::rebound::load_config(&a.config, a.executor, a.jobs, a.threads)?;
    cfg.validate_scaling()?;
    let out = a
        .out
        .unwrap_or_else(|| crate::report::default_run_dir("scaling"));
    if a.plan_only {
        let p = crate::experiments::rebound::plan_only(&cfg, &out, "scaling")?;
        println!("{}", p.grid.manifest_path().display());
        return Ok(());
    }
    let opts = RunOptions {
        no_wait: a.no_wait,
        progress: true,
    };
    let Some(o) = scaling::run(&cfg, &out, opts)? else {
        return Ok(());
    };
    eprintln!("report: {}", out.join("report.md").display());
    o.grid.ensure_complete(&o.planned.grid)
}
