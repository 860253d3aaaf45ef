//! The Slurm executor: a grid's cells run as Slurm job arrays, one array task per cell
//! (`elastica cell run --manifest M --index $SLURM_ARRAY_TASK_ID`), and the submitting
//! process waits with a progress bar, or returns at once (`--no-wait`) and leaves
//! `elastica status`, `elastica resubmit` and `elastica collect` to later.
//!
//! - [`config`]: the `[slurm]` section (resources, setup lines, polling);
//! - [`script`]: the sbatch script and `--array` index lists;
//! - [`submit`]: path checks, waves of dependent cells, `sbatch`;
//! - [`record`]: `slurm/jobs.json` and `slurm/slurm.toml` in the run directory;
//! - [`poll`]: `squeue`/`sacct` and the state of every cell;
//! - [`cancel`]: `scancel` of a run's jobs that still hold tasks.
//!
//! Safety rules, shared with the local executor: a cell writes only into `cells/<id>/`, its
//! `result.json` is written last and atomically, a finished cell is never run again, and
//! `cell run` holds a lock on the cell so two tasks of one cell cannot both run it. Only the
//! submitting process writes `status.json` and `slurm/`; only `collect` (or the waiting
//! experiment command) merges the cells' results into the report.

pub mod cancel;
pub mod config;
pub mod poll;
pub mod record;
pub mod script;
pub mod submit;

pub use config::SlurmConfig;

use super::cell::Kinds;
use super::config::SLURM;
use super::executor::{Executor, FailedCell, GridReport, SkippedCell};
use super::manifest::MANIFEST_FILE;
use super::rundir::Grid;
use anyhow::{bail, Result};
use poll::{cell_states, CellState, Counts};
use record::JobRecord;
use std::collections::BTreeSet;
use std::path::Path;

/// Consecutive failed scheduler queries after which waiting gives up.
const MAX_POLL_FAILURES: usize = 10;

/// Runs a grid's cells as Slurm job arrays.
#[derive(Debug, Clone)]
pub struct SlurmExecutor {
    pub cfg: SlurmConfig,
    /// Wait until every submitted task has ended (false: `--no-wait`).
    pub wait: bool,
    pub progress: bool,
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        SLURM
    }

    /// Submit every cell that is neither done nor still queued or running (those of an
    /// earlier submission are left to their tasks), then wait unless `--no-wait`.
    fn execute(&self, grid: &Grid) -> Result<GridReport> {
        let started = std::time::Instant::now();
        self.cfg.validate()?;
        let run_dir = submit::check_paths(grid)?;
        let grid = &Grid::open(&run_dir.join(MANIFEST_FILE))?;
        grid.check_results()?;
        let record = JobRecord::read(&run_dir)?;
        let snap = if record.is_empty() {
            None
        } else {
            Some(poll::query(&record.job_ids())?)
        };
        if let Some(snap) = &snap {
            warn_old_plans(grid, &record, snap);
        }
        let before = cell_states(grid, &record, snap.as_ref());
        let already: Vec<usize> = (0..grid.len())
            .filter(|&i| before[i] == CellState::Done)
            .collect();
        let todo: Vec<usize> = (0..grid.len())
            .filter(|&i| {
                !matches!(
                    before[i],
                    CellState::Done | CellState::Stale | CellState::Unreadable(_)
                ) && !before[i].is_active()
            })
            .collect();
        // Jobs that still hold tasks: new cells may depend on those tasks' cells.
        let busy: BTreeSet<String> = (0..grid.len())
            .filter(|&i| before[i].is_active())
            .filter_map(|i| {
                record
                    .latest_job(i, &grid.manifest().hash)
                    .map(str::to_string)
            })
            .collect();
        if !busy.is_empty() {
            eprintln!(
                "{} cell(s) are still queued or running from an earlier submission (jobs {}); \
                 they are not submitted again",
                before.iter().filter(|s| s.is_active()).count(),
                busy.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if todo.is_empty() && busy.is_empty() {
            eprintln!("nothing to submit: {}", Counts::of(&before).line());
        } else if !todo.is_empty() {
            eprintln!(
                "submitting {} of {} cells ({} already done) to Slurm",
                todo.len(),
                grid.len(),
                already.len()
            );
            let busy: Vec<String> = busy.into_iter().collect();
            submit::submit(grid, &self.cfg, &todo, &busy)?;
        }
        let states = if self.wait {
            wait(grid, self.cfg.poll_seconds, self.progress)?
        } else {
            let record = JobRecord::read(&run_dir)?;
            let snap = poll::query(&record.job_ids())?;
            cell_states(grid, &record, Some(&snap))
        };
        let report = report_of(grid, &already, &states, started.elapsed().as_secs_f64());
        report.write(grid)?;
        if !self.wait && !report.submitted.is_empty() {
            eprintln!(
                "submitted; follow it with `elastica status {0}`, build the report with \
                 `elastica collect {0}` when it is done, and submit failed cells again with \
                 `elastica resubmit {0}`",
                run_dir.display()
            );
        }
        Ok(report)
    }
}

/// Warn about jobs of an earlier plan of this run that still hold tasks: those tasks refuse
/// to start (their `--manifest-hash` no longer matches) and running ones may hold cells.
fn warn_old_plans(grid: &Grid, record: &JobRecord, snap: &poll::Snapshot) {
    let hash = &grid.manifest().hash;
    let old: BTreeSet<&str> = record
        .submissions
        .iter()
        .filter(|s| &s.manifest_hash != hash)
        .filter(|s| s.indices.iter().any(|&i| snap.is_active(&s.job_id, i)))
        .map(|s| s.job_id.as_str())
        .collect();
    if !old.is_empty() {
        let ids: Vec<&str> = old.into_iter().collect();
        eprintln!(
            "warning: jobs {} were submitted for an earlier plan of this run and still hold \
             tasks; those tasks refuse to start against the new manifest. Cancel them \
             (scancel {}) so they do not hold cells the new jobs need",
            ids.join(", "),
            ids.join(" ")
        );
    }
}

/// The executor summary of the cell states `states`.
fn report_of(grid: &Grid, already: &[usize], states: &[CellState], seconds: f64) -> GridReport {
    let cells = &grid.manifest().cells;
    let mut r = GridReport {
        executor: SLURM.to_string(),
        total: grid.len(),
        already_done: already.iter().map(|&i| cells[i].id.clone()).collect(),
        finished: Vec::new(),
        failed: Vec::new(),
        skipped: Vec::new(),
        submitted: Vec::new(),
        seconds,
    };
    for (i, st) in states.iter().enumerate() {
        let id = cells[i].id.clone();
        match st {
            CellState::Done if !already.contains(&i) => r.finished.push(id),
            CellState::Done => {}
            CellState::Queued(_) | CellState::Running | CellState::Unknown => r.submitted.push(id),
            CellState::Cancelled { log } => r.failed.push(FailedCell {
                id,
                error: format!("cancelled with `elastica cancel` (log: {})", log.display()),
            }),
            CellState::Failed { reason, log } => r.failed.push(FailedCell {
                id,
                error: match log {
                    Some(log) => format!("{reason} (log: {})", log.display()),
                    None => reason.clone(),
                },
            }),
            CellState::Skipped { because } => r.skipped.push(SkippedCell {
                id,
                because: because.clone(),
            }),
            CellState::NotSubmitted => r.failed.push(FailedCell {
                id,
                error: "never submitted; run `elastica resubmit` on the run directory".into(),
            }),
            CellState::Stale => r.failed.push(FailedCell {
                error: format!(
                    "its result.json belongs to another definition of the cell; delete {} to \
                     redo it",
                    grid.cell_dir(i).display()
                ),
                id,
            }),
            CellState::Unreadable(hint) => r.failed.push(FailedCell {
                id,
                error: hint.clone(),
            }),
        }
    }
    r
}

/// Poll the scheduler until no task of the run is queued or running, showing a progress bar
/// (or, when stderr is not a terminal, a line each time the counts change).
pub fn wait(grid: &Grid, poll_seconds: f64, progress: bool) -> Result<Vec<CellState>> {
    let record = JobRecord::read(grid.run_dir())?;
    let pb = crate::util::progress::bar(grid.len() as u64, "cells");
    let lines = !progress || pb.is_hidden();
    let mut last = String::new();
    let mut failures = 0;
    loop {
        // Ask the scheduler before reading the files: a task that ends in between is then
        // seen as running (and done at the next poll), never as ended without a result.
        let snap = match poll::query(&record.job_ids()) {
            Ok(s) => {
                failures = 0;
                s
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_POLL_FAILURES {
                    pb.finish_and_clear();
                    bail!(
                        "the scheduler did not answer {failures} times in a row ({e:#}); the \
                         jobs may still run: check later with `elastica status {}`",
                        grid.run_dir().display()
                    );
                }
                eprintln!("warning: cannot query Slurm ({e:#}); retrying");
                std::thread::sleep(std::time::Duration::from_secs_f64(poll_seconds));
                continue;
            }
        };
        let states = cell_states(grid, &record, Some(&snap));
        let c = Counts::of(&states);
        let line = c.line();
        pb.set_position(c.done as u64);
        pb.set_message(line.clone());
        if lines && line != last {
            eprintln!("[slurm] {line}");
        }
        last = line;
        if !states.iter().any(CellState::is_active) {
            pb.finish_and_clear();
            return Ok(states);
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(poll_seconds));
    }
}

/// The state of every cell of the run in `run_dir`, asking Slurm when the run was submitted
/// there (a run of the local executor is read from its files alone).
pub fn status(run_dir: &Path) -> Result<(Grid, Vec<CellState>, JobRecord)> {
    let grid = Grid::open(&run_dir.join(MANIFEST_FILE))?;
    let record = JobRecord::read(run_dir)?;
    let snap = if record.is_empty() {
        None
    } else {
        match poll::query(&record.job_ids()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!(
                    "warning: cannot ask Slurm about jobs {} ({e:#}); the states below come \
                     from the run directory's files alone, and a submitted cell with neither \
                     a result nor an error is listed as unknown: it may be pending, running \
                     or have ended. Run `elastica status` where squeue works (a login node)",
                    record.job_ids().join(", ")
                );
                None
            }
        }
    };
    let states = cell_states(&grid, &record, snap.as_ref());
    Ok((grid, states, record))
}

/// One row per cell: index, id, kind, state, attempts, Slurm job, detail.
pub fn status_table(grid: &Grid, states: &[CellState], record: &JobRecord) -> crate::report::Table {
    let mut t =
        crate::report::Table::new(["index", "id", "kind", "state", "attempts", "job", "detail"]);
    for (i, st) in states.iter().enumerate() {
        let detail = match st {
            CellState::Queued(r) => r.clone(),
            CellState::Failed {
                reason,
                log: Some(log),
            } => format!("{reason}; log: {}", log.display()),
            CellState::Failed { reason, log: None } => reason.clone(),
            CellState::Unreadable(hint) => hint.clone(),
            CellState::Skipped { because } => format!("{because} is not done"),
            CellState::Stale => "result.json belongs to another definition".into(),
            CellState::Cancelled { log } => {
                format!("cancelled with `elastica cancel`; log: {}", log.display())
            }
            CellState::Unknown => {
                "Slurm could not be asked: pending, running or ended without a result".into()
            }
            _ => String::new(),
        };
        let job = record
            .latest_job(i, &grid.manifest().hash)
            .map(|j| format!("{j}_{i}"))
            .unwrap_or_default();
        // Rows always have the header's width.
        let row = grid.status_columns(i, st.label()).into_iter();
        let _ = t.push_row(row.chain([job, detail]));
    }
    t
}

/// Submit the missing and failed cells of a run submitted before, with its recorded
/// `[slurm]` settings (`time` and `mem` may be raised for cells that ran out), then wait
/// unless `wait` is false. `kinds`: the cell kinds this program knows, which the recorded
/// `[executor.resources.<kind>]` names must be among.
pub fn resubmit(
    run_dir: &Path,
    kinds: &Kinds,
    time: Option<String>,
    mem: Option<String>,
    wait: bool,
    progress: bool,
) -> Result<(Grid, GridReport)> {
    let mut cfg = record::read_config(run_dir)?;
    cfg.check_kinds(kinds)?;
    // A raised limit applies to every cell, whatever its kind asked for before.
    if time.is_some() {
        cfg.time = time;
        cfg.resources.values_mut().for_each(|r| r.time = None);
    }
    if mem.is_some() {
        cfg.mem = mem;
        cfg.resources.values_mut().for_each(|r| r.mem = None);
    }
    let grid = Grid::open(&run_dir.join(MANIFEST_FILE))?;
    let ex = SlurmExecutor {
        cfg,
        wait,
        progress,
    };
    let report = ex.execute(&grid)?;
    Ok((grid, report))
}
