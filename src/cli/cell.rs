//! `elastica cell`: run or inspect single cells of a planned grid. `cell run --manifest M
//! --index I` is what a cluster job array calls for each task; it computes where the run
//! directory records (`grid::device`), or where `--device`, `--backend`, `--dtype` say.
//! `cell status` prints every cell's state.

use crate::backend::{BackendKind, Precision};
use crate::experiments::registry::registry;
use crate::grid::cell::{run_cell_on, CellRun};
use crate::grid::device::CellDevice;
use crate::grid::rundir::Grid;
use anyhow::{bail, Context, Result};
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
        /// Run on this device (cpu, cuda, cuda:N) instead of the one the run directory
        /// records (its config's `device`).
        #[arg(long)]
        device: Option<String>,
        /// Run on this backend (fused, torch) instead of the recorded one.
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        /// Compute in this precision (f32, bf16) instead of the recorded one.
        #[arg(long, value_enum)]
        dtype: Option<Precision>,
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
            device,
            backend,
            dtype,
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
            let mut on = CellDevice::read(grid.run_dir())?;
            if let Some(d) = device {
                on.device = d;
            }
            if let Some(b) = backend {
                on.backend = Some(value_name(b));
            }
            if let Some(t) = dtype {
                on.dtype = Some(value_name(t));
                on.check_precision(grid.run_dir())
                    .with_context(|| format!("cell {index} ({id}): --dtype"))?;
            }
            // Refused here, before the cell counts an attempt, when this build cannot run it.
            crate::experiments::device::choice(&on)
                .with_context(|| format!("cell {index} ({id}) on {}", on.label()))?;
            eprintln!("cell {index} ({id}) on {}", on.label());
            match run_cell_on(&grid, &registry().kinds(), index, true, &on)? {
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

/// A flag value as the command line spells it (`torch`, `bf16`).
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}
