//! `elastica resubmit DIR`: submit the failed and missing cells of a Slurm run again, with
//! the resources recorded at its first submission (optionally a longer time or more
//! memory). Finished cells are never submitted again; cells still queued or running are
//! left to their tasks. Waiting (without `--no-wait`), it writes the report when every cell
//! is done, as `elastica collect` does.

use crate::experiments::registry::registry;
use crate::grid::collect::collect;
use crate::grid::slurm;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ResubmitArgs {
    /// The run directory (holding manifest.json and slurm/).
    pub dir: PathBuf,
    /// A new `--time` per cell (for cells that ran out of time), e.g. "08:00:00".
    #[arg(long)]
    pub time: Option<String>,
    /// A new `--mem` per cell (for cells that ran out of memory), e.g. "64G".
    #[arg(long)]
    pub mem: Option<String>,
    /// Return once the cells are submitted.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(a: ResubmitArgs) -> Result<()> {
    let kinds = registry().kinds();
    let (grid, report) = slurm::resubmit(&a.dir, &kinds, a.time, a.mem, !a.no_wait, true)?;
    eprintln!("{}", report.summary());
    if report.detached() {
        return Ok(());
    }
    report.ensure_complete(&grid)?;
    let c = collect(&a.dir, &registry())?;
    eprintln!("every cell is done; report: {}", c.report.display());
    Ok(())
}
