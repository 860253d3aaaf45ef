//! Executors: what runs a grid's cells. [`Executor`] is the interface and [`GridReport`]
//! (`status.json`) what an execution did. `grid::local::LocalExecutor` runs cells on this
//! machine; `grid::slurm::SlurmExecutor` submits `elastica cell run --manifest M --index I`
//! per cell (one job array per wave of dependent cells), then reads the cells' status from
//! the run directory like everyone else. `grid::launch` picks one from a config.

use super::config::SLURM;
use super::rundir::{Grid, STATUS_FILE};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Runs the cells of a grid.
pub trait Executor: Send + Sync {
    /// Name for logs and `status.json` (`grid::config::LOCAL`, `SLURM`).
    fn name(&self) -> &'static str;
    /// Run every cell that is not done yet, and say what happened to each. An executor that
    /// hands cells to a scheduler without waiting lists them in `GridReport::submitted`.
    fn execute(&self, grid: &Grid) -> Result<GridReport>;
}

/// A cell that failed, with its error's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCell {
    pub id: String,
    pub error: String,
}

/// A cell not run because a dependency failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedCell {
    pub id: String,
    /// The failed (or skipped) dependency.
    pub because: String,
}

/// What one execution did (`status.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridReport {
    pub executor: String,
    pub total: usize,
    /// Done before this execution started.
    pub already_done: Vec<String>,
    /// Ran and finished now.
    pub finished: Vec<String>,
    pub failed: Vec<FailedCell>,
    pub skipped: Vec<SkippedCell>,
    /// Handed to a scheduler and not finished when the executor returned (`--no-wait`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub submitted: Vec<String>,
    pub seconds: f64,
}

impl GridReport {
    /// Cells are still with a scheduler: the grid was submitted, not run to the end.
    pub fn detached(&self) -> bool {
        !self.submitted.is_empty()
    }

    /// Every cell is done.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
            && self.skipped.is_empty()
            && self.already_done.len() + self.finished.len() == self.total
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} cells: {} already done, {} finished now, {} failed, {} skipped ({:.1} s)",
            self.total,
            self.already_done.len(),
            self.finished.len(),
            self.failed.len(),
            self.skipped.len(),
            self.seconds
        );
        if !self.submitted.is_empty() {
            s += &format!("; {} submitted and not finished yet", self.submitted.len());
        }
        for f in self.failed.iter().take(5) {
            s += &format!("\n  failed: {}: {}", f.id, f.error);
        }
        if self.failed.len() > 5 {
            s += &format!("\n  ... and {} more failures", self.failed.len() - 5);
        }
        s
    }

    /// Write `status.json` into the run directory.
    pub fn write(&self, grid: &Grid) -> Result<()> {
        crate::util::fsx::atomic_write_json(&grid.run_dir().join(STATUS_FILE), self)
    }

    /// An error naming the failed cells and where their errors are, if any failed.
    pub fn ensure_complete(&self, grid: &Grid) -> Result<()> {
        if self.complete() {
            return Ok(());
        }
        if self.executor == SLURM {
            bail!(
                "the grid did not finish: {}\nerrors are in {1}/cells/<id>/error.txt and the \
                 task logs in {1}/logs/; `elastica resubmit {1}` submits the failed and missing \
                 cells again (finished cells are kept)",
                self.summary(),
                grid.run_dir().display()
            )
        }
        bail!(
            "the grid did not finish: {}\nerrors are in {}/cells/<id>/error.txt; rerun the same \
             command to retry the failed cells (finished cells are kept)",
            self.summary(),
            grid.run_dir().display()
        )
    }
}
