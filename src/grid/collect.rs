//! `elastica collect DIR`: the experiment's report from the cells' per-cell results, for a
//! grid whose cells ran somewhere else (Slurm tasks, `elastica cell run` by hand). Nothing
//! is planned or run; the experiment is read from the manifest and its resolved config from
//! the run directory. Cells write only their own `cells/<id>/result.json`; this is the one
//! place (besides a waiting experiment command) that merges them into `results.*` and
//! `report.md`.

use super::grid::Grid;
use super::manifest::MANIFEST_FILE;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Experiments `collect` knows.
pub const EXPERIMENTS: &[&str] = &["rebound", "scaling", "resist"];

/// What `collect` wrote.
#[derive(Debug, Clone)]
pub struct Collected {
    pub experiment: String,
    pub report: PathBuf,
    /// Cells without a result (the report covers the others, where the experiment allows).
    pub missing: Vec<String>,
}

/// Write the report of the run in `run_dir`.
pub fn collect(run_dir: &Path) -> Result<Collected> {
    let grid = Grid::open(&run_dir.join(MANIFEST_FILE))?;
    let missing: Vec<String> = (0..grid.len())
        .filter(|&i| !grid.is_done(i))
        .map(|i| grid.manifest().cells[i].id.clone())
        .collect();
    let experiment = grid.manifest().experiment.clone();
    match experiment.as_str() {
        "rebound" => {
            super::rebound::collect(&grid)?;
        }
        "scaling" => {
            super::scaling::collect(&grid)?;
        }
        "resist" => {
            if !missing.is_empty() {
                bail!(
                    "the resist report needs every cell; {} of {} are not done ({}); see \
                     `elastica status {}`",
                    missing.len(),
                    grid.len(),
                    preview(&missing),
                    run_dir.display()
                );
            }
            super::resist::pipeline::collect(&grid)?;
        }
        other => bail!(
            "{} was planned by experiment {other:?}, which has no report to collect (known: \
             {})",
            run_dir.display(),
            EXPERIMENTS.join(", ")
        ),
    }
    Ok(Collected {
        experiment,
        report: grid.run_dir().join("report.md"),
        missing,
    })
}

/// The first few ids, for messages.
pub fn preview(ids: &[String]) -> String {
    let mut s = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        s += &format!(", ... ({} more)", ids.len() - 5);
    }
    s
}
