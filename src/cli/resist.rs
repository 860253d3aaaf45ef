//! `elastica resist`: the resistance experiment (forward vs inverse alignment, PAPER.md §3)
//! from a `resist.toml` (see `experiments::resist::config` for every key). Rerunning with the
//! same `--out` resumes: finished fine-tunes and generations are not redone.

use crate::experiments::resist::{self, ResistConfig};
use crate::grid::config::{ExecutorKind, RunOptions};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ResistArgs {
    /// The experiment's TOML config (model, [data], slices, seeds, [generate], [train], ...).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (default: runs/resist-<UTC time>). An existing one is resumed.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Who runs the cells (overrides the config's [executor] kind).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// With --executor slurm: return once the cells are submitted (`elastica status`,
    /// `elastica collect` later).
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(a: ResistArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    let mut cfg = ResistConfig::from_file(&a.config)?;
    if let Some(k) = a.executor {
        cfg.executor = cfg.executor.with_kind(k);
    }
    let out = a
        .out
        .unwrap_or_else(|| crate::report::default_run_dir("resist"));
    let opts = RunOptions {
        no_wait: a.no_wait,
        progress: true,
    };
    let Some(res) = resist::run_with(&cfg, &out, opts)? else {
        return Ok(());
    };
    println!("{}", resist::markdown_summary(&res));
    println!("{}", resist::results::pair_table(&res)?.to_markdown());
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}
