//! `elastica status DIR`: where every cell of a run stands (done, pending, running, failed
//! with its error or log, skipped, cancelled), asking Slurm when the run was submitted there.
//!
//! A cell is running while a live process holds its lock (a Slurm task, a local executor,
//! `cell run`); while a local executor runs the grid, the cells it has still to run are
//! pending.
//!
//! The exit status is for scripts: 0 when no cell failed (every cell is done, or still
//! pending or running); 1 when a cell failed, was cancelled, is skipped behind one that did
//! not finish, was never submitted, or has a stale or unreadable result (`elastica
//! resubmit`, or the experiment command again for a local run, is the next step); 3 when
//! none failed but Slurm could not be asked about some submitted cells (no `squeue` on
//! PATH), so their state is unknown.

use crate::grid::slurm::{self, poll::Counts};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Exit status when some cells' state is unknown and none failed.
pub const UNKNOWN_EXIT: i32 = 3;

/// The error `status` ends with when Slurm could not be asked (exit status [`UNKNOWN_EXIT`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateUnknown(pub String);

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
    let d = a.dir.display();
    let unfinished = c.failed + c.skipped + c.cancelled + c.unreadable + c.other;
    if unfinished > 0 {
        // A run never submitted to Slurm has nothing to resubmit: its command runs it again.
        let again = match record.is_empty() {
            true => "rerunning the experiment command (same --config and --out) runs them again"
                .to_string(),
            false => format!("`elastica resubmit {d}` submits them again"),
        };
        let mut next = match c.pending + c.running + c.unknown {
            0 => again,
            _ => format!("once the other cells have ended, {again}"),
        };
        if c.unreadable > 0 {
            // A damaged result blocks every run and report of the grid until it is gone.
            next += " (first delete the directory of each cell with an unreadable result.json)";
        }
        bail!(
            "{unfinished} of {} cells did not finish ({}); errors are in the detail column \
             (each failed cell's error.txt or task log); {next}",
            grid.len(),
            c.line()
        );
    }
    if c.unknown > 0 {
        return Err(StateUnknown(format!(
            "the state of {} submitted cell(s) is unknown: Slurm could not be asked (is squeue \
             on PATH?); none has failed so far",
            c.unknown
        ))
        .into());
    }
    if c.done == grid.len() {
        println!("every cell is done; write the report with `elastica collect {d}`");
    }
    Ok(())
}
