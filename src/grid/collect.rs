//! `elastica collect DIR`: the experiment's report from the cells' per-cell results, for a
//! grid whose cells ran somewhere else (Slurm tasks, `elastica cell run` by hand). Nothing
//! is planned or run; the experiment named in the manifest is looked up in the registry and
//! writes its report from the run directory. Cells write only their own
//! `cells/<id>/result.json`; this is the one place (besides a waiting experiment command)
//! that merges them into `results.*` and `report.md`.

use super::device::{CellDevice, DEVICE_FILE};
use super::manifest::MANIFEST_FILE;
use super::registry::Registry;
use super::rundir::Grid;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What `collect` wrote.
#[derive(Debug, Clone)]
pub struct Collected {
    pub experiment: String,
    pub report: PathBuf,
    /// Cells without a result (the report covers the others, where the experiment allows).
    pub missing: Vec<String>,
}

/// Write the report of the run in `run_dir`, by the experiment in `registry` that planned it.
pub fn collect(run_dir: &Path, registry: &Registry) -> Result<Collected> {
    let grid = Grid::open(&run_dir.join(MANIFEST_FILE))?;
    // A damaged result is not a missing cell: reporting without it would replace a complete
    // report with a partial one.
    grid.check_results()?;
    let missing: Vec<String> = (0..grid.len())
        .filter(|&i| !grid.is_done(i))
        .map(|i| grid.manifest().cells[i].id.clone())
        .collect();
    check_precisions(&grid)?;
    let experiment = grid.manifest().experiment.clone();
    let e = registry.experiment(&experiment).with_context(|| {
        format!(
            "{} was planned by experiment {experiment:?}, which has no report to collect",
            run_dir.display()
        )
    })?;
    e.collect(&grid, &missing)?;
    Ok(Collected {
        experiment,
        report: grid.run_dir().join("report.md"),
        missing,
    })
}

/// Refuse to merge a result computed in another precision than the run's (`device.json`):
/// a cell run, resume or executor refuses that before computing, but a result copied in from
/// another run (or written by an older elastica) is seen only here. Nothing is written.
fn check_precisions(grid: &Grid) -> Result<()> {
    let run = CellDevice::read(grid.run_dir())?.precision();
    for (i, r) in grid.results()?.iter().enumerate() {
        let Some(d) = r.as_ref().and_then(|r| r.device.as_ref()) else {
            continue;
        };
        if d.precision() != run {
            bail!(
                "{}: cell {} was computed in dtype = \"{}\", but this run computes in dtype = \
                 \"{run}\" ({}); a report must not mix precisions: delete that cell's directory \
                 and run it again, or collect it with its own run",
                grid.cell_dir(i).join("result.json").display(),
                grid.manifest().cells[i].id,
                d.precision(),
                grid.run_dir().join(DEVICE_FILE).display()
            );
        }
    }
    Ok(())
}

/// The first few ids, for messages.
pub fn preview(ids: &[String]) -> String {
    let mut s = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        s += &format!(", ... ({} more)", ids.len() - 5);
    }
    s
}
