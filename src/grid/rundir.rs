//! A grid: a run directory plus its manifest, and the on-disk state of every cell (the file
//! names below and [`CellResult`], the `result.json` every cell ends with).
//!
//! Layout of a run directory:
//! ```text
//! <run>/manifest.json          the cells (see `manifest`)
//! <run>/status.json            the last executor's summary (done / failed / skipped)
//! <run>/device.json            where the cells compute (see `device`)
//! <run>/cells/<id>/            everything one cell writes
//! <run>/cells/<id>/result.json written atomically LAST: its presence means "done"
//! <run>/cells/<id>/error.txt   the error of the last failed attempt
//! <run>/cells/<id>/attempts    how many times the cell was started
//! <run>/cells/<id>/.lock       locked (flock) by the process running the cell
//! <run>/.local-run.lock        locked (shared) by every local executor running the grid
//! ```
//! A cell's status is read from these files alone, so any process (a local executor, a Slurm
//! array task, `elastica cell status`) sees the same state. The locks tell a cell (or a
//! local grid) that a live process is running from one whose process died: a lock ends with
//! its process.

use super::device::CellDevice;
use super::manifest::{Manifest, MANIFEST_FILE};
use crate::report::Table;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Directory holding one sub-directory per cell.
pub const CELLS_DIR: &str = "cells";
/// The executor's summary of the last run.
pub const STATUS_FILE: &str = "status.json";
/// A cell's done marker and output ([`CellResult`]).
pub const RESULT_FILE: &str = "result.json";
/// The error of a cell's last failed attempt.
pub const ERROR_FILE: &str = "error.txt";
/// How many times a cell was started.
pub const ATTEMPTS_FILE: &str = "attempts";
/// Held (flock) by the process running the cell.
pub const LOCK_FILE: &str = ".lock";
/// Held (shared flock) by a local executor while it runs the grid, so that `status` can tell
/// a cell waiting in a live local run from one that nobody will run.
pub const RUN_LOCK_FILE: &str = ".local-run.lock";

/// `cells/<id>/result.json`: the done marker and the cell's output.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub id: String,
    pub kind: String,
    /// Hash of the cell definition this result belongs to (see `CellSpec::hash`).
    pub cell_hash: String,
    /// Times the cell was started, the successful attempt included.
    pub attempts: u32,
    /// Wall-clock seconds of the successful attempt.
    pub seconds: f64,
    /// Unix time (seconds) when it finished.
    pub finished_unix: u64,
    /// What the kind returned.
    pub output: serde_json::Value,
    /// Where the cell ran (absent in results written before devices were recorded).
    pub device: Option<CellDevice>,
}

impl CellResult {
    pub fn read(path: &Path) -> Result<CellResult> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid cell result", path.display()))
    }

    /// The output, deserialised into the kind's output type.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.output.clone()).with_context(|| {
            format!(
                "the result of cell {} does not have the layout of a {} output",
                self.id, self.kind
            )
        })
    }
}

/// What the files of a cell say about it.
#[derive(Debug, Clone, PartialEq)]
pub enum CellStatus {
    /// `result.json` exists and belongs to this exact cell.
    Done,
    /// The last attempt failed; the first line of `error.txt`.
    Failed(String),
    /// Started (its directory exists) but neither finished nor failed: killed, or running now.
    Started,
    /// Never started.
    Pending,
    /// `result.json` belongs to a different definition of the cell (another manifest).
    Stale,
    /// `result.json` exists but cannot be read as a result (truncated, edited, unreadable):
    /// the error, naming the file.
    Unreadable(String),
}

impl CellStatus {
    pub fn label(&self) -> &'static str {
        match self {
            CellStatus::Done => "done",
            CellStatus::Failed(_) => "failed",
            CellStatus::Started => "started",
            CellStatus::Pending => "pending",
            CellStatus::Stale => "stale",
            CellStatus::Unreadable(_) => "unreadable",
        }
    }
}

/// A run directory and its manifest.
#[derive(Debug, Clone)]
pub struct Grid {
    run_dir: PathBuf,
    manifest: Manifest,
}

impl Grid {
    /// Record `manifest` in `run_dir` (created if needed). An existing manifest there is
    /// replaced only when no started cell changes definition: adding cells (more seeds, a
    /// longer n- list) or dropping cells keeps every finished result; changing a cell that
    /// already has output is refused, naming the cells, so results of two different setups
    /// never mix. A planner that writes other files (frozen data, the resolved config) calls
    /// [`Grid::check_replan`] before writing them, so that a refusal leaves the run
    /// directory untouched.
    pub fn plan(run_dir: &Path, manifest: Manifest) -> Result<Grid> {
        Grid::check_replan(run_dir, &manifest)?;
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create the run directory {}", run_dir.display()))?;
        let path = run_dir.join(MANIFEST_FILE);
        let unchanged = path.exists() && Manifest::read(&path)?.hash == manifest.hash;
        if !unchanged {
            manifest.write(run_dir)?;
        }
        Ok(Grid {
            run_dir: run_dir.to_path_buf(),
            manifest,
        })
    }

    /// Whether `manifest` may replace the one in `run_dir` (see [`Grid::plan`]); reads only,
    /// writes nothing. A run directory without a manifest accepts any.
    pub fn check_replan(run_dir: &Path, manifest: &Manifest) -> Result<()> {
        let path = run_dir.join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(());
        }
        let old = Manifest::read(&path)?;
        if old.experiment != manifest.experiment {
            bail!(
                "{} holds a {} run; a {} run needs its own output directory. Nothing was written",
                run_dir.display(),
                old.experiment,
                manifest.experiment
            );
        }
        if old.hash == manifest.hash {
            return Ok(());
        }
        let grid_old = Grid {
            run_dir: run_dir.to_path_buf(),
            manifest: old,
        };
        let mut changed = Vec::new();
        for c in &manifest.cells {
            if let Some(j) = grid_old.manifest.index_of(&c.id) {
                let same = grid_old.manifest.cells[j].hash() == c.hash();
                if !same && grid_old.cell_dir(j).exists() {
                    changed.push(c.id.clone());
                }
            }
        }
        if !changed.is_empty() {
            let shown: Vec<&str> = changed.iter().take(5).map(String::as_str).collect();
            bail!(
                "{} was planned with a different definition of {} cell(s) that already \
                 have output ({}{}); the config changed something those cells depend on. \
                 Nothing was written. Use a new output directory, or delete those \
                 cells/<id> directories to redo them",
                run_dir.display(),
                changed.len(),
                shown.join(", "),
                if changed.len() > 5 { ", ..." } else { "" }
            );
        }
        Ok(())
    }

    /// Open the grid of an existing manifest file; the run directory is its parent.
    pub fn open(manifest_path: &Path) -> Result<Grid> {
        let manifest = Manifest::read(manifest_path)?;
        let run_dir = match manifest_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Grid { run_dir, manifest })
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.run_dir.join(MANIFEST_FILE)
    }

    pub fn len(&self) -> usize {
        self.manifest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.is_empty()
    }

    /// `cells/<id>` of cell `i`.
    pub fn cell_dir(&self, i: usize) -> PathBuf {
        self.run_dir
            .join(CELLS_DIR)
            .join(&self.manifest.cells[i].id)
    }

    /// The directory of the cell named `id`.
    pub fn cell_dir_by_id(&self, id: &str) -> PathBuf {
        self.run_dir.join(CELLS_DIR).join(id)
    }

    pub fn status(&self, i: usize) -> CellStatus {
        let dir = self.cell_dir(i);
        let result = dir.join(RESULT_FILE);
        if result.exists() {
            return match CellResult::read(&result) {
                Ok(r) if r.cell_hash == self.manifest.cells[i].hash() => CellStatus::Done,
                Ok(_) => CellStatus::Stale,
                Err(e) => CellStatus::Unreadable(format!("{e:#}")),
            };
        }
        let err = dir.join(ERROR_FILE);
        if err.exists() {
            let first = std::fs::read_to_string(&err)
                .ok()
                .and_then(|t| t.lines().next().map(str::to_string))
                .unwrap_or_default();
            return CellStatus::Failed(first);
        }
        if dir.exists() {
            CellStatus::Started
        } else {
            CellStatus::Pending
        }
    }

    pub fn is_done(&self, i: usize) -> bool {
        self.status(i) == CellStatus::Done
    }

    /// A live process holds cell `i`'s lock: it is running the cell now.
    pub fn is_running(&self, i: usize) -> bool {
        crate::util::fsx::is_locked(&self.cell_dir(i).join(LOCK_FILE))
    }

    /// A local executor is running this grid now (it holds [`RUN_LOCK_FILE`]).
    pub fn local_run_active(&self) -> bool {
        crate::util::fsx::is_locked(&self.run_dir.join(RUN_LOCK_FILE))
    }

    /// What to do about cell `i`'s unreadable `result.json` (`error` names the file).
    pub fn unreadable_hint(&self, i: usize, error: &str) -> String {
        format!(
            "{error}; results are written atomically, so the file was damaged after the cell \
             finished (a copy, an edit, the disk): delete {} to run cell {} again",
            self.cell_dir(i).display(),
            self.manifest.cells[i].id
        )
    }

    /// Refuse a grid with an unreadable `result.json`: running or reporting it would leave
    /// a finished cell out of the report, or replace a complete report with a partial one.
    /// Executors and `collect` call this before they run or write anything.
    pub fn check_results(&self) -> Result<()> {
        let bad: Vec<(usize, String)> = (0..self.len())
            .filter_map(|i| match self.status(i) {
                CellStatus::Unreadable(e) => Some((i, e)),
                _ => None,
            })
            .collect();
        let Some((i, e)) = bad.first() else {
            return Ok(());
        };
        let others = match bad.len() {
            1 => String::new(),
            n => format!(
                " ({} other cell(s) have an unreadable result.json too)",
                n - 1
            ),
        };
        bail!(
            "{}{others}. No cell was run and no report written; `elastica status {}` lists them",
            self.unreadable_hint(*i, e),
            self.run_dir.display()
        )
    }

    /// The result of cell `i` if it is done (and belongs to this cell).
    pub fn result(&self, i: usize) -> Result<Option<CellResult>> {
        if !self.is_done(i) {
            return Ok(None);
        }
        CellResult::read(&self.cell_dir(i).join(RESULT_FILE)).map(Some)
    }

    /// The results of every finished cell, by manifest index.
    pub fn results(&self) -> Result<Vec<Option<CellResult>>> {
        (0..self.len()).map(|i| self.result(i)).collect()
    }

    /// Times cell `i` was started (0 if never).
    pub fn attempts(&self, i: usize) -> u32 {
        std::fs::read_to_string(self.cell_dir(i).join(ATTEMPTS_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// One row per cell: index, id, kind, status, attempts, and the error if it failed.
    pub fn status_table(&self) -> Table {
        let mut t = Table::new(["index", "id", "kind", "status", "attempts", "detail"]);
        for i in 0..self.len() {
            let st = self.status(i);
            let detail = match &st {
                CellStatus::Failed(e) => e.clone(),
                CellStatus::Stale => "result belongs to another manifest".to_string(),
                CellStatus::Unreadable(e) => e.clone(),
                _ => String::new(),
            };
            // Rows always have the header's width.
            let _ = t.push_row(
                self.status_columns(i, st.label())
                    .into_iter()
                    .chain([detail]),
            );
        }
        t
    }

    /// The columns every status table starts a cell's row with: index, id, kind, its state
    /// `label` and attempts.
    pub fn status_columns(&self, i: usize, label: &str) -> [String; 5] {
        let c = &self.manifest.cells[i];
        [
            i.to_string(),
            c.id.clone(),
            c.kind.clone(),
            label.to_string(),
            self.attempts(i).to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::registry::testing::echo;

    /// A run directory holds one experiment's run: planning another into it is refused with
    /// nothing written.
    #[test]
    fn another_experiment_is_not_planned_into_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let cells = || vec![echo("a", &[], serde_json::json!({}))];
        Grid::plan(dir.path(), Manifest::new("resist", cells()).unwrap()).unwrap();
        let before = std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap();
        let e = Grid::plan(dir.path(), Manifest::new("rebound", cells()).unwrap()).err();
        let e = format!("{:#}", e.unwrap());
        assert!(
            e.contains("holds a resist run; a rebound run needs its own"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap(),
            before
        );
        // The same experiment re-planned is fine.
        Grid::plan(dir.path(), Manifest::new("resist", cells()).unwrap()).unwrap();
    }
}
