//! `elastica status DIR`: where every cell of a run stands (done, pending, running, failed
//! with its log, skipped), asking Slurm when the run was submitted there.

use crate::experiments::slurm::{self, poll::Counts};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The run directory (holding manifest.json).
    pub dir: PathBuf,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let (grid, states, record) = slurm::status(&a.dir)?;
    print!(
        "{}",
        slurm::status_table(&grid, &states, &record).to_markdown()
    );
    let c = Counts::of(&states);
    println!("\n{} cells: {}", grid.len(), c.line());
    if !record.is_empty() {
        println!("Slurm jobs: {}", record.job_ids().join(", "));
    }
    if c.failed + c.skipped + c.other > 0 && c.pending + c.running == 0 {
        println!(
            "submit the failed and missing cells again with `elastica resubmit {}`",
            a.dir.display()
        );
    } else if c.done == grid.len() {
        println!(
            "every cell is done; write the report with `elastica collect {}`",
            a.dir.display()
        );
    }
    Ok(())
}
