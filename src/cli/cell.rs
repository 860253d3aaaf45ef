//! `elastica cell`: run or inspect single cells of a planned grid. `cell run --manifest M
//! --index I` is what a cluster job array calls for each task; `cell status` prints every
//! cell's state.

use crate::experiments::registry::registry;
use crate::grid::cell::{run_cell, CellRun};
use crate::grid::rundir::Grid;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CellArgs {
    #[command(subcommand)]
    pub action: CellAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum CellAction {
    /// Run one cell of a grid (skipped if already done; its dependencies must be done).
    Run {
        /// The run's manifest.json (its directory is the run directory).
        #[arg(long)]
        manifest: PathBuf,
        /// Index of the cell in the manifest (0-based; e.g. $SLURM_ARRAY_TASK_ID).
        #[arg(long)]
        index: usize,
        /// Worker threads (0 = all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Refuse to run unless the manifest's hash is this one (the hash the job was
        /// submitted for; a run re-planned since then must be resubmitted).
        #[arg(long)]
        manifest_hash: Option<String>,
    },
    /// Print the status of every cell of a grid as a Markdown table.
    Status {
        /// The run's manifest.json.
        #[arg(long)]
        manifest: PathBuf,
    },
}

pub fn run(a: CellArgs) -> Result<()> {
    match a.action {
        CellAction::Run {
            manifest,
            index,
            threads,
            manifest_hash,
        } => {
            crate::util::threads::set_threads(threads);
            let grid = Grid::open(&manifest)?;
            if let Some(want) = manifest_hash {
                if grid.manifest().hash != want {
                    bail!(
                        "{} has hash {} but this task was submitted for {want}: the run was \
                         re-planned after the job was submitted. Resubmit the grid (`elastica \
                         resubmit {}`) instead of running old tasks against the new manifest",
                        manifest.display(),
                        grid.manifest().hash,
                        grid.run_dir().display()
                    );
                }
            }
            let id = grid
                .manifest()
                .cells
                .get(index)
                .map(|c| c.id.clone())
                .unwrap_or_default();
            match run_cell(&grid, &registry().kinds(), index, true)? {
                CellRun::AlreadyDone => eprintln!("cell {index} ({id}) is already done"),
                CellRun::Finished(r) => {
                    eprintln!("cell {index} ({id}) done in {:.1} s", r.seconds)
                }
            }
            Ok(())
        }
        CellAction::Status { manifest } => {
            let grid = Grid::open(&manifest)?;
            print!("{}", grid.status_table().to_markdown());
            Ok(())
        }
    }
}
