//! `elastica rebound --config rebound.toml [--out DIR]`: the rebound experiment as one
//! command (plan the grid, run its cells, write the report). Rerunning the same command on
//! the same `--out` skips finished cells and resumes interrupted ones. The config format is
//! documented in `experiments::rebound::config` and docs/rebound.md.

use crate::experiments::rebound::{self, config::ReboundConfig};
use crate::grid::config::{ExecutorKind, ExecutorSpec, RunOptions};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ReboundArgs {
    /// The experiment config (TOML; see docs/rebound.md and examples/rebound.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (default: runs/rebound-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cells run at the same time (overrides executor.jobs of a local executor).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Worker threads for tensor code (overrides `threads`; 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Only plan: check the config, freeze the data and write manifest.json, run nothing
    /// (for running the cells with `elastica cell run` on a cluster).
    #[arg(long)]
    pub plan_only: bool,
    /// Who runs the cells (overrides the config's [executor] kind; Slurm resources come
    /// from its [slurm] section, see docs/slurm.md).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// With --executor slurm: return once the cells are submitted; follow them with
    /// `elastica status DIR` and write the report with `elastica collect DIR`.
    #[arg(long)]
    pub no_wait: bool,
}

/// Load the config and apply the command-line overrides shared by `rebound` and `scaling`.
pub fn load_config(
    path: &std::path::Path,
    executor: Option<ExecutorKind>,
    jobs: Option<usize>,
    threads: Option<usize>,
) -> Result<ReboundConfig> {
    let mut cfg = ReboundConfig::from_file(path)?;
    if let Some(k) = executor {
        cfg.executor = cfg.executor.with_kind(k);
    }
    if let Some(j) = jobs {
        match &mut cfg.executor {
            ExecutorSpec::Local { jobs, .. } => *jobs = j,
            ExecutorSpec::Slurm { .. } => bail!(
                "--jobs applies to the local executor only; with Slurm, limit the cells \
                 running at once with [slurm] max_parallel"
            ),
        }
    }
    if let Some(t) = threads {
        cfg.threads = t;
    }
    crate::util::threads::set_threads(cfg.threads);
    Ok(cfg)
}

pub fn run(a: ReboundArgs) -> Result<()> {
    let cfg = load_config(&a.config, a.executor, a.jobs, a.threads)?;
    let out = a
        .out
        .unwrap_or_else(|| crate::report::default_run_dir("rebound"));
    if a.plan_only {
        let p = rebound::plan_only(&cfg, &out, "rebound")?;
        println!("{}", p.grid.manifest_path().display());
        return Ok(());
    }
    let opts = RunOptions {
        no_wait: a.no_wait,
        progress: true,
    };
    let Some(o) = rebound::run(&cfg, &out, opts)? else {
        return Ok(());
    };
    eprintln!("report: {}", out.join("report.md").display());
    o.grid.ensure_complete(&o.planned.grid)
}
