//! Asking Slurm where the tasks of a run are, and combining that with the run directory's
//! files into one state per cell.
//!
//! The scheduler is asked with `sacct`, which also knows tasks that ended, and how
//! (`TIMEOUT`, `OUT_OF_MEMORY`, `CANCELLED`), and with `squeue`, the controller's live list
//! of pending and running tasks. Where accounting is disabled `sacct` fails and `squeue`
//! alone answers. Either way the files decide
//! whether a cell is done: `result.json` is written last and atomically by the task. A cell
//! whose task left the queue without a result failed (or was cancelled, when its job was
//! cancelled with `elastica cancel`); the reason comes from the cell's `error.txt`, from
//! `sacct`, or from the `slurmstepd` line at the end of its log. When the scheduler cannot be
//! asked at all (no `squeue` on PATH), a submitted cell without a result or an error is
//! `Unknown`, never failed.

use super::record::JobRecord;
use super::script::log_path;
use crate::grid::rundir::{CellStatus, Grid};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

/// What the scheduler says about one array task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    /// Waiting; the scheduler's reason (`Dependency`, `Priority`, `Resources`, ...).
    Pending(String),
    /// Running (or completing, or requeued and about to run again).
    Running,
    /// Left the queue; the final state as `sacct` reports it (`COMPLETED`, `TIMEOUT`, ...).
    Ended(String),
}

/// Which commands answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// `squeue` and `sacct`.
    Sacct,
    /// `squeue` alone (accounting disabled).
    Squeue,
}

/// The scheduler's view of the run's jobs: (array job id, task index) -> state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub source: Source,
    pub tasks: HashMap<(String, usize), TaskState>,
}

impl Snapshot {
    pub fn get(&self, job: &str, index: usize) -> Option<&TaskState> {
        self.tasks.get(&(job.to_string(), index))
    }

    /// Pending or running.
    pub fn is_active(&self, job: &str, index: usize) -> bool {
        matches!(
            self.get(job, index),
            Some(TaskState::Pending(_) | TaskState::Running)
        )
    }
}

/// Ask the scheduler about the array jobs `job_ids`: `squeue` for the tasks still pending
/// or running (always; it is the scheduler's live view), then `sacct`, when accounting is
/// enabled, for how the other tasks ended. Tasks that `sacct` lists as active but `squeue`
/// does not are taken as ended (the accounting database lags behind the controller).
pub fn query(job_ids: &[String]) -> Result<Snapshot> {
    if job_ids.is_empty() {
        return Ok(Snapshot {
            source: Source::Squeue,
            tasks: HashMap::new(),
        });
    }
    let out = Command::new("squeue")
        .args(["--me", "-h", "-r", "-o", "%F|%K|%T|%r"])
        .output()
        .context("cannot run squeue (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        bail!(
            "squeue failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut tasks = parse_squeue(&String::from_utf8_lossy(&out.stdout));
    tasks.retain(|(job, _), _| job_ids.contains(job));
    let Some(text) = sacct(job_ids) else {
        return Ok(Snapshot {
            source: Source::Squeue,
            tasks,
        });
    };
    for (key, st) in parse_sacct(&text) {
        if let TaskState::Ended(_) = st {
            tasks.entry(key).or_insert(st);
        }
    }
    Ok(Snapshot {
        source: Source::Sacct,
        tasks,
    })
}

/// `sacct`'s answer, or `None` when accounting is disabled or sacct is missing or fails.
fn sacct(job_ids: &[String]) -> Option<String> {
    let out = Command::new("sacct")
        .args(["-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j"])
        .arg(job_ids.join(","))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("disabled") || text.contains("accounting storage is disabled") {
        return None;
    }
    Some(text)
}

/// A `|`-separated line of `squeue` or `sacct` as (array job id, its task ids, their state),
/// or None for a line that names no array task.
type TaskLine = Option<(String, Vec<usize>, TaskState)>;

/// Each array task's state in `text`, its lines read by `line`.
fn task_states(
    text: &str,
    line: impl Fn(&[&str]) -> TaskLine,
) -> HashMap<(String, usize), TaskState> {
    let mut out = HashMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.trim().split('|').collect();
        if let Some((job, idx, state)) = line(&f) {
            for i in idx {
                out.insert((job.clone(), i), state.clone());
            }
        }
    }
    out
}

/// Parse `squeue -h -r -o '%F|%K|%T|%r'` lines: array job id, task id, state, reason.
pub fn parse_squeue(text: &str) -> HashMap<(String, usize), TaskState> {
    task_states(text, |f| {
        if f.len() < 3 {
            return None;
        }
        let idx = super::script::parse_indices(f[1])?;
        let state = classify(f[2], f.get(3).copied().unwrap_or(""));
        Some((f[0].to_string(), idx, state))
    })
}

/// Parse `sacct -n -P -X -o JobID,State,ExitCode` lines (`12_3|COMPLETED|0:0`,
/// `12_[4-6%2]|PENDING|0:0`). Lines of plain jobs (no `_`) are ignored.
pub fn parse_sacct(text: &str) -> HashMap<(String, usize), TaskState> {
    task_states(text, |f| {
        if f.len() < 2 {
            return None;
        }
        let (job, tasks) = f[0].split_once('_')?;
        let idx = super::script::parse_indices(tasks)?;
        Some((job.to_string(), idx, classify(f[1], "")))
    })
}

/// A Slurm job state (`squeue %T` / `sacct State`) as a [`TaskState`].
fn classify(state: &str, reason: &str) -> TaskState {
    let s = state.trim();
    let word = s.split_whitespace().next().unwrap_or("");
    match word {
        "PENDING" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SUSPENDED" | "RESV_DEL_HOLD" => {
            TaskState::Pending(if reason.is_empty() || reason == "None" {
                word.to_lowercase()
            } else {
                reason.trim().to_string()
            })
        }
        "RUNNING" | "COMPLETING" | "CONFIGURING" | "REQUEUED" | "RESIZING" | "SIGNALING"
        | "STAGE_OUT" | "STOPPED" => TaskState::Running,
        _ => TaskState::Ended(s.to_string()),
    }
}

/// A cell's state, from the files and the scheduler together.
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    /// `result.json` is there.
    Done,
    /// Submitted and waiting in the queue (the scheduler's reason).
    Queued(String),
    Running,
    /// Its task (or the process that ran it) ended without a result.
    Failed {
        reason: String,
        /// The Slurm task's log; none for a cell never submitted to Slurm.
        log: Option<PathBuf>,
    },
    /// Not done because a dependency is not done.
    Skipped {
        because: String,
    },
    /// Never submitted (and not done).
    NotSubmitted,
    /// `result.json` belongs to another definition of the cell.
    Stale,
    /// `result.json` cannot be read: the error naming the file, and what to do.
    Unreadable(String),
    /// Its job was cancelled with `elastica cancel` before the cell finished.
    Cancelled {
        log: PathBuf,
    },
    /// Submitted, no result and no error, and the scheduler could not be asked: it may be
    /// pending, running, or have ended.
    Unknown,
}

impl CellState {
    pub fn label(&self) -> &'static str {
        match self {
            CellState::Done => "done",
            CellState::Queued(_) => "pending",
            CellState::Running => "running",
            CellState::Failed { .. } => "failed",
            CellState::Skipped { .. } => "skipped",
            CellState::NotSubmitted => "not submitted",
            CellState::Stale => "stale",
            CellState::Unreadable(_) => "unreadable",
            CellState::Cancelled { .. } => "cancelled",
            CellState::Unknown => "unknown",
        }
    }

    /// Queued or running: a task will still do something.
    pub fn is_active(&self) -> bool {
        matches!(self, CellState::Queued(_) | CellState::Running)
    }
}

/// The state of every cell of `grid`, in manifest order. A cell whose lock a live process
/// holds is running, whoever runs it (a Slurm task, a local executor, `cell run` by hand);
/// while a local executor runs the grid, the cells it has still to run are pending.
pub fn cell_states(grid: &Grid, record: &JobRecord, snap: Option<&Snapshot>) -> Vec<CellState> {
    let n = grid.len();
    let deps = grid.manifest().dep_indices();
    let local = grid.local_run_active();
    let mut out: Vec<CellState> = Vec::with_capacity(n);
    for (i, deps_i) in deps.iter().enumerate() {
        // The lock before the files: a cell that ends in between then reads as done, not
        // as a cell nobody runs.
        let locked = grid.is_running(i);
        let files = grid.status(i);
        let job = record.latest_job(i, &grid.manifest().hash);
        let sched = match (job, snap) {
            (Some(j), Some(s)) => s.get(j, i).cloned(),
            _ => None,
        };
        let own_error = matches!(files, CellStatus::Failed(_));
        let st = match (&files, &sched) {
            (CellStatus::Done, _) => CellState::Done,
            (CellStatus::Stale, _) => CellState::Stale,
            (CellStatus::Unreadable(e), _) => CellState::Unreadable(grid.unreadable_hint(i, e)),
            _ if locked => CellState::Running,
            (_, Some(TaskState::Pending(r))) => CellState::Queued(r.clone()),
            (_, Some(TaskState::Running)) => CellState::Running,
            // error.txt says how the cell itself failed, whatever happened to its job since.
            _ if !own_error && job.is_some_and(|j| record.is_cancelled(j)) => {
                CellState::Cancelled {
                    log: log_path(grid.run_dir(), i),
                }
            }
            // Without the scheduler's answer a submitted cell with no result and no error
            // may still be queued or running: calling it failed would invite a resubmit of
            // a cell that is about to run.
            _ if !own_error && job.is_some() && snap.is_none() => CellState::Unknown,
            _ => {
                // Dependencies come first, so their states are known.
                let blocked = deps_i.iter().find(|&&d| out[d] != CellState::Done).copied();
                let dep_id = |d: usize| grid.manifest().cells[d].id.clone();
                match (blocked, &files) {
                    (Some(d), CellStatus::Pending) if local && out[d].is_active() => {
                        CellState::Queued(format!("a live local run runs it after {}", dep_id(d)))
                    }
                    (Some(d), CellStatus::Pending) => CellState::Skipped { because: dep_id(d) },
                    // The live local run runs every cell not done (a killed one again).
                    _ if local && !own_error => {
                        CellState::Queued("a live local run will run it".into())
                    }
                    _ if job.is_none() && files == CellStatus::Pending => CellState::NotSubmitted,
                    _ => CellState::Failed {
                        reason: failure_reason(grid, i, &files, sched.as_ref(), job.is_some()),
                        log: job.map(|_| log_path(grid.run_dir(), i)),
                    },
                }
            }
        };
        out.push(st);
    }
    out
}

/// Why cell `i` ended without a result, as well as the files and the scheduler can tell
/// (`submitted`: the cell was handed to Slurm, which may know more).
fn failure_reason(
    grid: &Grid,
    i: usize,
    files: &CellStatus,
    sched: Option<&TaskState>,
    submitted: bool,
) -> String {
    if let CellStatus::Failed(e) = files {
        return e.clone();
    }
    if !submitted {
        return "the process that ran it ended without a result or an error (killed, or its \
                machine went down)"
            .to_string();
    }
    if let Some(TaskState::Ended(s)) = sched {
        if !s.starts_with("COMPLETED") {
            return format!("the task ended {s} without a result");
        }
    }
    if let Some(line) = stepd_line(&log_path(grid.run_dir(), i)) {
        return line;
    }
    "the task ended without a result (cancelled, out of time or memory, or its node \
     failed)"
        .to_string()
}

/// The last `slurmstepd: error: *** ... ***` line of a task log (cancellation, time limit,
/// out-of-memory kills are reported there).
pub fn stepd_line(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .take(50)
        .find(|l| l.contains("slurmstepd") && (l.contains("***") || l.contains("oom")))
        .map(|l| {
            l.trim()
                .trim_start_matches("slurmstepd: error:")
                .trim()
                .to_string()
        })
}

/// Counts of the states, for progress lines.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub done: usize,
    pub pending: usize,
    pub running: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub unknown: usize,
    /// Cells whose `result.json` cannot be read.
    pub unreadable: usize,
    pub other: usize,
}

impl Counts {
    pub fn of(states: &[CellState]) -> Counts {
        let mut c = Counts::default();
        for s in states {
            match s {
                CellState::Done => c.done += 1,
                CellState::Queued(_) => c.pending += 1,
                CellState::Running => c.running += 1,
                CellState::Failed { .. } => c.failed += 1,
                CellState::Skipped { .. } => c.skipped += 1,
                CellState::Cancelled { .. } => c.cancelled += 1,
                CellState::Unknown => c.unknown += 1,
                CellState::Unreadable(_) => c.unreadable += 1,
                CellState::NotSubmitted | CellState::Stale => c.other += 1,
            }
        }
        c
    }

    pub fn line(&self) -> String {
        let mut s = format!(
            "pending {}, running {}, done {}, failed {}",
            self.pending, self.running, self.done, self.failed
        );
        if self.skipped > 0 {
            s += &format!(", skipped {}", self.skipped);
        }
        if self.cancelled > 0 {
            s += &format!(", cancelled {}", self.cancelled);
        }
        if self.unknown > 0 {
            s += &format!(", state unknown {}", self.unknown);
        }
        if self.unreadable > 0 {
            s += &format!(", unreadable result {}", self.unreadable);
        }
        if self.other > 0 {
            s += &format!(", not submitted or stale {}", self.other);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::manifest::{CellSpec, Manifest};
    use crate::grid::registry::testing::TEST_KINDS;
    use crate::grid::slurm::record::Submission;

    #[test]
    fn squeue_and_sacct_lines_parse() {
        let q = parse_squeue(
            "5|2|PENDING|JobArrayTaskLimit\n8|5|PENDING|Dependency\n5|0|RUNNING|None\n\
             5|1|COMPLETING|None\ngarbage\n",
        );
        assert_eq!(
            q[&("5".into(), 2)],
            TaskState::Pending("JobArrayTaskLimit".into())
        );
        assert_eq!(q[&("8".into(), 5)], TaskState::Pending("Dependency".into()));
        assert_eq!(q[&("5".into(), 0)], TaskState::Running);
        assert_eq!(q[&("5".into(), 1)], TaskState::Running);
        assert_eq!(q.len(), 4);
        let a = parse_sacct(
            "12_0|COMPLETED|0:0\n12_1|CANCELLED by 0|0:15\n12_2|TIMEOUT|0:0\n\
             12_[3-5%2]|PENDING|0:0\n12_6|RUNNING|0:0\n13|COMPLETED|0:0\n",
        );
        assert_eq!(a[&("12".into(), 0)], TaskState::Ended("COMPLETED".into()));
        assert_eq!(
            a[&("12".into(), 1)],
            TaskState::Ended("CANCELLED by 0".into())
        );
        assert_eq!(a[&("12".into(), 4)], TaskState::Pending("pending".into()));
        assert_eq!(a[&("12".into(), 6)], TaskState::Running);
        assert_eq!(a.len(), 7);
    }

    fn echo(id: &str, deps: &[&str]) -> CellSpec {
        crate::grid::registry::testing::echo(id, deps, serde_json::json!({"value": 1}))
    }

    #[test]
    fn states_combine_files_and_scheduler() {
        let dir = tempfile::tempdir().unwrap();
        let cells = vec![
            echo("a", &[]),
            echo("b", &["a"]),
            echo("c", &[]),
            echo("d", &["c"]),
            echo("e", &[]),
            echo("f", &[]),
            echo("g", &[]),
        ];
        let g = Grid::plan(dir.path(), Manifest::new("t", cells).unwrap()).unwrap();
        crate::grid::cell::run_cell(&g, TEST_KINDS, 0, false).unwrap();
        crate::grid::cell::run_cell(&g, TEST_KINDS, 1, false).unwrap();
        // c was killed mid-run: its directory exists, no result, no error.
        std::fs::create_dir_all(g.cell_dir(2)).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(
            log_path(dir.path(), 2),
            "[elastica] cell 2\nslurmstepd: error: *** JOB 14 ON n1 CANCELLED AT 2026 ***\n",
        )
        .unwrap();
        let rec = JobRecord {
            submissions: vec![Submission {
                job_id: "7".into(),
                indices: vec![0, 1, 2, 3, 4, 5],
                array: "0-5".into(),
                after: None,
                manifest_hash: g.manifest().hash.clone(),
                submitted_unix: 0,
            }],
            cancelled: Vec::new(),
        };
        let mut tasks = HashMap::new();
        tasks.insert(("7".to_string(), 4), TaskState::Running);
        tasks.insert(("7".to_string(), 5), TaskState::Pending("Priority".into()));
        let snap = Snapshot {
            source: Source::Squeue,
            tasks,
        };
        let s = cell_states(&g, &rec, Some(&snap));
        assert_eq!(s[0], CellState::Done);
        assert_eq!(s[1], CellState::Done);
        match &s[2] {
            CellState::Failed { reason, log } => {
                assert!(reason.contains("CANCELLED"), "{reason}");
                assert!(log.as_ref().unwrap().ends_with("logs/cell-2.out"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s[3],
            CellState::Skipped {
                because: "c".into()
            }
        );
        assert_eq!(s[4], CellState::Running);
        assert_eq!(s[5], CellState::Queued("Priority".into()));
        assert_eq!(s[6], CellState::NotSubmitted);
        let c = Counts::of(&s);
        assert_eq!(
            (c.done, c.failed, c.skipped, c.running, c.pending, c.other),
            (2, 1, 1, 1, 1, 1)
        );
        // Accounting knows the final state of a task that never wrote anything.
        let mut tasks = HashMap::new();
        tasks.insert(("7".to_string(), 4), TaskState::Ended("TIMEOUT".into()));
        let snap = Snapshot {
            source: Source::Sacct,
            tasks,
        };
        std::fs::create_dir_all(g.cell_dir(4)).unwrap();
        let s = cell_states(&g, &rec, Some(&snap));
        match &s[4] {
            CellState::Failed { reason, .. } => assert!(reason.contains("TIMEOUT"), "{reason}"),
            other => panic!("{other:?}"),
        }

        // Without the scheduler's answer, submitted cells with no result and no error are
        // unknown (not failed); a cell with error.txt failed whatever the scheduler says;
        // a never-submitted cell is still "not submitted".
        std::fs::create_dir_all(g.cell_dir(3)).unwrap();
        std::fs::write(
            g.cell_dir(3).join(crate::grid::rundir::ERROR_FILE),
            "boom\n",
        )
        .unwrap();
        let s = cell_states(&g, &rec, None);
        assert_eq!(s[0], CellState::Done);
        assert_eq!(s[2], CellState::Unknown);
        assert_eq!(s[4], CellState::Unknown);
        assert_eq!(s[5], CellState::Unknown);
        assert!(matches!(&s[3], CellState::Failed { reason, .. } if reason == "boom"));
        assert_eq!(s[6], CellState::NotSubmitted);
        assert!(Counts::of(&s).line().contains("state unknown 3"));

        // Cells of a job cancelled with `elastica cancel` are cancelled, not failed.
        let mut rec = rec;
        rec.cancelled.push(super::super::record::Cancellation {
            job_ids: vec!["7".into()],
            cancelled_unix: 0,
        });
        let s = cell_states(&g, &rec, Some(&snap));
        assert!(matches!(s[2], CellState::Cancelled { .. }), "{:?}", s[2]);
        assert!(matches!(s[4], CellState::Cancelled { .. }), "{:?}", s[4]);
        assert!(matches!(s[3], CellState::Failed { .. }), "{:?}", s[3]);
        assert_eq!(Counts::of(&s).cancelled, 3);
    }

    /// A local run has no Slurm record: its cells' locks say which run now, the run's lock
    /// which cells are still to run, and a damaged result.json is named, not called stale.
    #[test]
    fn local_runs_are_read_from_their_locks() {
        use crate::grid::rundir::{LOCK_FILE, RESULT_FILE, RUN_LOCK_FILE};
        use crate::util::fsx::{lock_shared, try_lock};
        let dir = tempfile::tempdir().unwrap();
        let cells = vec![echo("a", &[]), echo("b", &["a"]), echo("c", &[])];
        let g = Grid::plan(dir.path(), Manifest::new("t", cells).unwrap()).unwrap();
        let rec = JobRecord::default();
        // a is being run (its lock held), b waits for it, c was never started.
        std::fs::create_dir_all(g.cell_dir(0)).unwrap();
        let cell_lock = try_lock(&g.cell_dir(0).join(LOCK_FILE)).unwrap().unwrap();
        let run_lock = lock_shared(&dir.path().join(RUN_LOCK_FILE)).unwrap();
        let s = cell_states(&g, &rec, None);
        assert_eq!(s[0], CellState::Running);
        assert!(
            matches!(&s[1], CellState::Queued(r) if r.contains("after a")),
            "{s:?}"
        );
        assert!(matches!(&s[2], CellState::Queued(_)), "{s:?}");
        assert_eq!((Counts::of(&s).running, Counts::of(&s).pending), (1, 2));

        // The process died: its locks are gone, and a is a failed cell with no Slurm log.
        drop((cell_lock, run_lock));
        let s = cell_states(&g, &rec, None);
        match &s[0] {
            CellState::Failed { reason, log } => {
                assert!(reason.contains("the process that ran it ended"), "{reason}");
                assert!(log.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s[1], CellState::Skipped { .. }), "{s:?}");
        assert_eq!(s[2], CellState::NotSubmitted);

        // A truncated result.json is unreadable, named, and refused before any run.
        crate::grid::cell::run_cell(&g, TEST_KINDS, 2, false).unwrap();
        let result = g.cell_dir(2).join(RESULT_FILE);
        let text = std::fs::read_to_string(&result).unwrap();
        std::fs::write(&result, &text[..text.len() / 2]).unwrap();
        let s = cell_states(&g, &rec, None);
        match &s[2] {
            CellState::Unreadable(e) => {
                assert!(e.contains(&result.display().to_string()), "{e}");
                assert!(e.contains("not a valid cell result"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Counts::of(&s).unreadable, 1);
        let e = format!("{:#}", g.check_results().unwrap_err());
        assert!(e.contains(&result.display().to_string()), "{e}");
        let e = format!(
            "{:#}",
            crate::grid::cell::run_cell(&g, TEST_KINDS, 2, false).unwrap_err()
        );
        assert!(e.contains("not a valid cell result"), "{e}");
        assert_eq!(g.attempts(2), 1, "a refused cell counted an attempt");
    }
}
