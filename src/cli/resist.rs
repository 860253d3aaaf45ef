//! `elastica resist`: the resistance experiment (forward vs inverse alignment, PAPER.md §3)
//! from a `resist.toml` (see `experiments::resist::config` for every key). Rerunning with the
//! same `--out` resumes: finished fine-tunes and generations are not redone.

use super::grid_args::GridArgs;
use crate::experiments::resist::{self, ResistConfig};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ResistArgs {
    /// The experiment's TOML config (model, [data], slices, seeds, [generate], [train], ...).
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub grid: GridArgs,
}

pub fn run(a: ResistArgs) -> Result<()> {
    // A resist config has no `threads` key: all cores unless --threads says otherwise.
    crate::util::threads::set_threads(a.grid.threads.unwrap_or(0));
    let mut cfg = ResistConfig::from_file(&a.config)?;
    cfg.executor = a.grid.executor(&cfg.executor)?;
    crate::experiments::device::check(&cfg.cell_device(), &cfg.executor, &cfg.slurm, &a.config)?;
    let out = a.grid.out("resist")?;
    let Some(res) = resist::run_with(&cfg, &out, a.grid.run_options())? else {
        return Ok(());
    };
    println!("{}", resist::markdown_summary(&res));
    println!("{}", resist::results::pair_table(&res)?.to_markdown());
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}
