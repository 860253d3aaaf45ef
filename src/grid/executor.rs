//! Executors: what runs a grid's cells. [`Executor`] is the interface; [`LocalExecutor`]
//! runs cells on this machine, several at once when `jobs` and free memory allow. The
//! cluster executor (`experiments::slurm::SlurmExecutor`) implements the same trait by
//! submitting `elastica cell run --manifest M --index I` per cell (one job array per wave of
//! dependent cells), then reads the cells' status from the run directory like everyone
//! else.
//!
//! The local executor's rules: cells run in manifest order as soon as their dependencies
//! are done; finished cells are skipped; a failed cell is reported (its error is in
//! `cells/<id>/error.txt`) and every cell that depends on it is skipped, while all other
//! cells still run. The summary goes to `status.json` in the run directory.

use super::cell::{run_cell, CellRun};
use super::grid::{Grid, STATUS_FILE};
use super::slurm::config::KindResources;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};

/// Runs the cells of a grid.
pub trait Executor: Send + Sync {
    /// Name for logs and `status.json` (`local`, `slurm`).
    fn name(&self) -> &'static str;
    /// Run every cell that is not done yet, and say what happened to each. An executor that
    /// hands cells to a scheduler without waiting lists them in `GridReport::submitted`.
    fn execute(&self, grid: &Grid) -> Result<GridReport>;
}

/// Per-kind Slurm resources, `[executor.resources.<kind>]` (see `experiments::slurm::config`).
pub type Resources = BTreeMap<String, KindResources>;

/// Which executor to use, as written in experiment configs (`[executor]` table). Both kinds
/// accept both kinds' keys, so that `--executor` can switch a config between them: a local
/// executor ignores `resources`, Slurm ignores `jobs` (with a warning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExecutorSpec {
    /// Run cells on this machine.
    Local {
        /// Cells run at the same time (at most; free memory may allow fewer). Each cell's
        /// tensor code already uses every core, so more than 1 helps only with many cores.
        #[serde(default = "one")]
        jobs: usize,
        /// Used when `--executor slurm` switches the run to Slurm.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        resources: Resources,
    },
    /// Submit cells to Slurm as job arrays; resources come from the config's `[slurm]`
    /// section, per kind of cell from `resources` (see `experiments::slurm::config`).
    Slurm {
        /// Accepted so that a config switched from `local` still loads; Slurm ignores it
        /// (`[slurm] max_parallel` limits the cells running at once).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jobs: Option<usize>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        resources: Resources,
    },
}

fn one() -> usize {
    1
}

impl Default for ExecutorSpec {
    fn default() -> Self {
        ExecutorSpec::Local {
            jobs: 1,
            resources: BTreeMap::new(),
        }
    }
}

/// Every executor kind, as written in `kind = "..."`.
pub const EXECUTOR_KINDS: &[&str] = &["local", "slurm"];

/// Which executor runs the cells, as chosen on the command line (`--executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

impl ExecutorSpec {
    /// This spec with its kind replaced by `kind`; the resources are kept, and a local
    /// spec keeps its `jobs` (which a switch to Slurm drops without a warning: the user
    /// chose Slurm on the command line).
    pub fn with_kind(&self, kind: ExecutorKind) -> ExecutorSpec {
        match (kind, self) {
            (ExecutorKind::Local, ExecutorSpec::Local { .. }) => self.clone(),
            (ExecutorKind::Local, ExecutorSpec::Slurm { resources, .. }) => ExecutorSpec::Local {
                jobs: 1,
                resources: resources.clone(),
            },
            (ExecutorKind::Slurm, ExecutorSpec::Slurm { .. }) => self.clone(),
            (ExecutorKind::Slurm, ExecutorSpec::Local { resources, .. }) => ExecutorSpec::Slurm {
                jobs: None,
                resources: resources.clone(),
            },
        }
    }

    /// Whether the cells go to Slurm.
    pub fn is_slurm(&self) -> bool {
        matches!(self, ExecutorSpec::Slurm { .. })
    }
}

/// How the command line asks an experiment to run its grid.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Return once the cells are submitted (Slurm only).
    pub no_wait: bool,
    /// Draw progress bars.
    pub progress: bool,
}

impl RunOptions {
    /// Wait for the cells, with or without progress bars.
    pub fn waiting(progress: bool) -> Self {
        RunOptions {
            no_wait: false,
            progress,
        }
    }
}

/// Build the executor a spec names; `slurm` is the config's `[slurm]` section.
pub fn build(
    spec: &ExecutorSpec,
    slurm: &crate::experiments::slurm::SlurmConfig,
    opts: RunOptions,
) -> Result<Box<dyn Executor>> {
    let progress = opts.progress;
    if opts.no_wait && !spec.is_slurm() {
        bail!("--no-wait needs a scheduler to hand the cells to: use it with --executor slurm");
    }
    Ok(match spec {
        ExecutorSpec::Slurm { jobs, resources } => {
            if let Some(j) = jobs {
                eprintln!(
                    "warning: [executor] jobs = {j} is ignored with kind = \"slurm\": every \
                     cell is its own array task; [slurm] max_parallel limits how many run at \
                     once"
                );
            }
            let mut cfg = slurm.clone();
            cfg.resources.extend(resources.clone());
            cfg.validate()?;
            warn_threads(&cfg);
            Box::new(crate::experiments::slurm::SlurmExecutor {
                cfg,
                wait: !opts.no_wait,
                progress,
            })
        }
        ExecutorSpec::Local { jobs, .. } => {
            if *jobs == 0 {
                bail!("executor.jobs must be at least 1");
            }
            Box::new(LocalExecutor {
                jobs: *jobs,
                progress,
                memory_budget: None,
            })
        }
    })
}

/// Under Slurm each cell runs with its task's CPUs (`--threads` of the sbatch script is
/// `cpus_per_task`, or the kind's `cpus`); a different thread count asked of the submitting
/// command (`--threads N`, `threads = N`) does not reach the cells, so say so.
fn warn_threads(cfg: &crate::experiments::slurm::SlurmConfig) {
    let asked = crate::util::threads::requested();
    let mut cpus: Vec<usize> = std::iter::once(cfg.cpus_per_task)
        .chain(cfg.resources.values().filter_map(|r| r.cpus))
        .collect();
    cpus.dedup();
    if asked > 0 && cpus.iter().any(|&c| c != asked) {
        eprintln!(
            "warning: --threads / threads = {asked} does not apply to Slurm cells: each cell \
             uses its task's CPUs ([slurm] cpus_per_task = {}, or \
             [executor.resources.<kind>] cpus); set those instead",
            cfg.cpus_per_task
        );
    }
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
        if self.executor == "slurm" {
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

/// Runs cells on this machine with up to `jobs` worker threads.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    pub jobs: usize,
    /// Draw per-cell progress bars (only when one cell runs at a time).
    pub progress: bool,
    /// Bytes the running cells' memory estimates may add up to; `None` = free memory now
    /// (`MemAvailable`), or unlimited where that is unknown.
    pub memory_budget: Option<u64>,
}

impl LocalExecutor {
    pub fn new(jobs: usize) -> Self {
        LocalExecutor {
            jobs: jobs.max(1),
            progress: false,
            memory_budget: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Waiting,
    Running,
    Done,
    Failed,
    Skipped,
}

struct Shared {
    st: Vec<St>,
    running_mem: u64,
    running: usize,
    finished: Vec<String>,
    failed: Vec<FailedCell>,
    skipped: Vec<SkippedCell>,
    done_count: usize,
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn execute(&self, grid: &Grid) -> Result<GridReport> {
        let started = std::time::Instant::now();
        let n = grid.len();
        let deps = grid.manifest().dep_indices();
        let mut st = vec![St::Waiting; n];
        let mut already_done = Vec::new();
        for (i, s) in st.iter_mut().enumerate() {
            if grid.is_done(i) {
                *s = St::Done;
                already_done.push(grid.manifest().cells[i].id.clone());
            }
        }
        let est: Vec<u64> = (0..n)
            .map(|i| {
                super::kinds::kind(&grid.manifest().cells[i].kind)
                    .ok()
                    .and_then(|k| k.memory_bytes(grid, i))
                    .unwrap_or(0)
            })
            .collect();
        let budget = self
            .memory_budget
            .or_else(available_memory)
            .unwrap_or(u64::MAX);
        let jobs = self.jobs.max(1);
        // Without progress (the demo, tests) the grid runs quietly: no per-cell lines either.
        let show = Show {
            bars: self.progress && jobs == 1,
            lines: self.progress,
        };
        let todo = st.iter().filter(|s| **s == St::Waiting).count();
        if todo > 0 && show.lines {
            eprintln!(
                "running {todo} of {n} cells ({} already done) with {jobs} job(s)",
                already_done.len()
            );
        }
        let shared = Mutex::new(Shared {
            st,
            running_mem: 0,
            running: 0,
            finished: Vec::new(),
            failed: Vec::new(),
            skipped: Vec::new(),
            done_count: 0,
        });
        let cv = Condvar::new();
        std::thread::scope(|scope| {
            for _ in 0..jobs.min(todo.max(1)) {
                scope.spawn(|| worker(grid, &deps, &est, budget, show, todo, &shared, &cv));
            }
        });
        let s = shared
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let report = GridReport {
            executor: self.name().to_string(),
            total: n,
            already_done,
            finished: s.finished,
            failed: s.failed,
            skipped: s.skipped,
            submitted: Vec::new(),
            seconds: started.elapsed().as_secs_f64(),
        };
        report.write(grid)?;
        Ok(report)
    }
}

/// What a local grid prints while it runs.
#[derive(Debug, Clone, Copy)]
struct Show {
    /// Per-cell progress bars (one cell at a time only).
    bars: bool,
    /// A line per finished cell.
    lines: bool,
}

/// One worker thread: take the first runnable cell, run it, record the outcome, repeat.
#[allow(clippy::too_many_arguments)]
fn worker(
    grid: &Grid,
    deps: &[Vec<usize>],
    est: &[u64],
    budget: u64,
    show: Show,
    todo: usize,
    shared: &Mutex<Shared>,
    cv: &Condvar,
) {
    let cells = &grid.manifest().cells;
    loop {
        let mut s = match shared.lock() {
            Ok(g) => g,
            Err(_) => return,
        };
        let pick = loop {
            // Cells behind a failed or skipped dependency will never run.
            for i in 0..s.st.len() {
                if s.st[i] != St::Waiting {
                    continue;
                }
                if let Some(&d) = deps[i]
                    .iter()
                    .find(|&&d| matches!(s.st[d], St::Failed | St::Skipped))
                {
                    s.st[i] = St::Skipped;
                    s.skipped.push(SkippedCell {
                        id: cells[i].id.clone(),
                        because: cells[d].id.clone(),
                    });
                    eprintln!(
                        "[skipped] {}: its dependency {} did not finish",
                        cells[i].id, cells[d].id
                    );
                }
            }
            let ready = (0..s.st.len()).find(|&i| {
                s.st[i] == St::Waiting
                    && deps[i].iter().all(|&d| s.st[d] == St::Done)
                    && (s.running == 0 || s.running_mem.saturating_add(est[i]) <= budget)
            });
            if let Some(i) = ready {
                break Some(i);
            }
            let waiting = s.st.contains(&St::Waiting);
            if !waiting || s.running == 0 {
                break None;
            }
            s = match cv.wait(s) {
                Ok(g) => g,
                Err(_) => return,
            };
        };
        let Some(i) = pick else {
            cv.notify_all();
            return;
        };
        s.st[i] = St::Running;
        s.running += 1;
        s.running_mem = s.running_mem.saturating_add(est[i]);
        drop(s);

        let t0 = std::time::Instant::now();
        let outcome = run_cell(grid, i, show.bars);

        let Ok(mut s) = shared.lock() else { return };
        s.running -= 1;
        s.running_mem = s.running_mem.saturating_sub(est[i]);
        match outcome {
            Ok(CellRun::Finished(_)) | Ok(CellRun::AlreadyDone) => {
                s.st[i] = St::Done;
                s.done_count += 1;
                s.finished.push(cells[i].id.clone());
                if show.lines {
                    eprintln!(
                        "[{}/{todo}] {} done in {:.1} s",
                        s.done_count,
                        cells[i].id,
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => {
                s.st[i] = St::Failed;
                let msg = format!("{e:#}");
                eprintln!("[failed] {}: {msg}", cells[i].id);
                s.failed.push(FailedCell {
                    id: cells[i].id.clone(),
                    error: msg,
                });
            }
        }
        drop(s);
        cv.notify_all();
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes (Linux); `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    crate::util::sysmem::available_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::cell::ERROR_FILE;
    use crate::experiments::grid::CellStatus;
    use crate::experiments::manifest::{CellSpec, Manifest};
    use std::collections::BTreeMap;

    fn echo(id: &str, deps: &[&str], params: serde_json::Value) -> CellSpec {
        CellSpec {
            id: id.into(),
            kind: "test.echo".into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            inputs: BTreeMap::new(),
            params,
        }
    }

    fn grid(dir: &std::path::Path) -> Grid {
        let cells = vec![
            echo("a", &[], serde_json::json!({"value": 1})),
            echo("b", &["a"], serde_json::json!({"value": 10})),
            echo("c", &[], serde_json::json!({"fail": true})),
            echo("d", &["c"], serde_json::json!({"value": 5})),
            echo("e", &["d", "a"], serde_json::json!({"value": 7})),
            echo("f", &[], serde_json::json!({"panic": true})),
            echo("g", &["b"], serde_json::json!({"value": 100})),
        ];
        Grid::plan(dir, Manifest::new("test", cells).unwrap()).unwrap()
    }

    #[test]
    fn failures_are_reported_dependents_skipped_and_others_finish() {
        for jobs in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let g = grid(dir.path());
            let r = LocalExecutor::new(jobs).execute(&g).unwrap();
            let mut fin = r.finished.clone();
            fin.sort();
            assert_eq!(fin, ["a", "b", "g"], "jobs {jobs}");
            let failed: Vec<&str> = r.failed.iter().map(|f| f.id.as_str()).collect();
            assert_eq!(failed.len(), 2);
            assert!(failed.contains(&"c") && failed.contains(&"f"));
            let mut skipped: Vec<(String, String)> = r
                .skipped
                .iter()
                .map(|s| (s.id.clone(), s.because.clone()))
                .collect();
            skipped.sort();
            assert_eq!(
                skipped,
                [("d".into(), "c".into()), ("e".into(), "d".into())]
            );
            assert!(!r.complete());
            // b and g saw their dependencies' outputs.
            let out = |id: &str| {
                std::fs::read_to_string(dir.path().join("cells").join(id).join("out.txt")).unwrap()
            };
            assert_eq!(out("b"), "11");
            assert_eq!(out("g"), "111");
            let err = std::fs::read_to_string(dir.path().join("cells/c").join(ERROR_FILE)).unwrap();
            assert!(err.contains("asked to fail"), "{err}");
            let err = std::fs::read_to_string(dir.path().join("cells/f").join(ERROR_FILE)).unwrap();
            assert!(
                err.contains("panicked") && err.contains("asked to panic"),
                "{err}"
            );
            assert!(matches!(g.status(2), CellStatus::Failed(_)));
            assert_eq!(g.status(3), CellStatus::Pending);
            let status: GridReport = serde_json::from_str(
                &std::fs::read_to_string(dir.path().join(STATUS_FILE)).unwrap(),
            )
            .unwrap();
            assert_eq!(status, r);
            let e = format!("{:#}", r.ensure_complete(&g).unwrap_err());
            assert!(e.contains("error.txt"), "{e}");

            // A rerun skips the finished cells and retries the failed ones.
            let r2 = LocalExecutor::new(jobs).execute(&g).unwrap();
            let mut done = r2.already_done.clone();
            done.sort();
            assert_eq!(done, ["a", "b", "g"]);
            assert!(r2.finished.is_empty());
            assert_eq!(r2.failed.len(), 2);
            assert_eq!(g.attempts(0), 1, "a finished cell is not rerun");
            assert_eq!(g.attempts(2), 2, "a failed cell is retried");
        }
    }

    #[test]
    fn memory_budget_still_runs_one_cell_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let cells = (0..4)
            .map(|i| echo(&format!("c{i}"), &[], serde_json::json!({"value": i})))
            .collect();
        let g = Grid::plan(dir.path(), Manifest::new("test", cells).unwrap()).unwrap();
        let ex = LocalExecutor {
            jobs: 4,
            progress: false,
            memory_budget: Some(0),
        };
        let r = ex.execute(&g).unwrap();
        assert!(r.complete(), "{}", r.summary());
    }

    #[test]
    fn replanning_keeps_results_and_refuses_changed_started_cells() {
        let dir = tempfile::tempdir().unwrap();
        let cells = vec![
            echo("a", &[], serde_json::json!({"value": 1})),
            echo("b", &["a"], serde_json::json!({"value": 2})),
        ];
        let g = Grid::plan(dir.path(), Manifest::new("test", cells.clone()).unwrap()).unwrap();
        run_cell(&g, 0, false).unwrap();
        // Adding a cell keeps a's result.
        let mut more = cells.clone();
        more.push(echo("c", &[], serde_json::json!({"value": 3})));
        let g2 = Grid::plan(dir.path(), Manifest::new("test", more).unwrap()).unwrap();
        assert!(g2.is_done(0) && g2.len() == 3);
        // Changing b (not started) is fine; changing a (done) is refused.
        let mut changed_b = cells.clone();
        changed_b[1].params["value"] = serde_json::json!(20);
        Grid::plan(dir.path(), Manifest::new("test", changed_b).unwrap()).unwrap();
        let mut changed_a = cells;
        changed_a[0].params["value"] = serde_json::json!(9);
        let e = format!(
            "{:#}",
            Grid::plan(dir.path(), Manifest::new("test", changed_a).unwrap()).unwrap_err()
        );
        assert!(
            e.contains("different definition") && e.contains(" a"),
            "{e}"
        );
    }

    #[test]
    fn run_cell_checks_index_dependencies_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = echo("x", &[], serde_json::json!({}));
        c.inputs.insert(
            "data".into(),
            crate::experiments::manifest::Input::path("missing.jsonl"),
        );
        let cells = vec![
            echo("a", &[], serde_json::json!({"value": 1})),
            echo("b", &["a"], serde_json::json!({})),
            c,
        ];
        let g = Grid::plan(dir.path(), Manifest::new("test", cells).unwrap()).unwrap();
        let e = format!("{:#}", run_cell(&g, 3, false).unwrap_err());
        assert!(e.contains("out of range") && e.contains("0 to 2"), "{e}");
        let e = format!("{:#}", run_cell(&g, 1, false).unwrap_err());
        assert!(e.contains("needs cell a") && e.contains("pending"), "{e}");
        let e = format!("{:#}", run_cell(&g, 2, false).unwrap_err());
        assert!(
            e.contains("input \"data\"") && e.contains("does not exist"),
            "{e}"
        );
        assert!(matches!(
            run_cell(&g, 0, false).unwrap(),
            CellRun::Finished(_)
        ));
        assert_eq!(run_cell(&g, 0, false).unwrap(), CellRun::AlreadyDone);
        run_cell(&g, 1, false).unwrap();

        // A pinned input edited after planning is refused.
        std::fs::write(dir.path().join("in.txt"), "one").unwrap();
        let mut p = echo("p", &[], serde_json::json!({}));
        p.inputs.insert(
            "f".into(),
            crate::experiments::manifest::Input::pinned(dir.path(), "in.txt").unwrap(),
        );
        let g = Grid::plan(
            &dir.path().join("sub"),
            Manifest::new("test", vec![p]).unwrap(),
        );
        // The input path is relative to the run dir ("sub"), where in.txt is not.
        assert!(g.is_ok());
        let g = g.unwrap();
        let e = format!("{:#}", run_cell(&g, 0, false).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(dir.path().join("sub/in.txt"), "two").unwrap();
        let e = format!("{:#}", run_cell(&g, 0, false).unwrap_err());
        assert!(e.contains("changed since the grid was planned"), "{e}");
    }

    /// examples/rebound.toml's commented Slurm settings, switched on, parse and validate;
    /// `jobs = 1` left under a Slurm executor is accepted.
    #[test]
    fn the_examples_slurm_settings_parse_when_uncommented() {
        let mut on = false;
        let mut text = String::new();
        for line in include_str!("../../examples/rebound.toml").lines() {
            let l = line.replace("kind = \"local\"", "kind = \"slurm\"");
            let block = l.starts_with("# [executor.resources") || l.starts_with("# [slurm]");
            on = block || (on && l.starts_with("# ") && l.contains(" = "));
            text += if on { &l[2..] } else { &l };
            text += "\n";
        }
        let cfg = crate::experiments::rebound::config::ReboundConfig::from_toml(&text).unwrap();
        let ExecutorSpec::Slurm { jobs, resources } = &cfg.executor else {
            panic!("{:?}", cfg.executor)
        };
        assert_eq!(*jobs, Some(1));
        assert_eq!(resources["align"].cpus, Some(8));
        assert_eq!(resources["perturb"].mem.as_deref(), Some("96G"));
        assert_eq!(cfg.slurm.partition.as_deref(), Some("gpu"));
        build(&cfg.executor, &cfg.slurm, RunOptions::default()).unwrap();
        // Switching the kind keeps the resources.
        let local = cfg.executor.with_kind(ExecutorKind::Local);
        assert!(
            matches!(&local, ExecutorSpec::Local { jobs: 1, resources } if resources.len() == 2)
        );
        assert!(local.with_kind(ExecutorKind::Slurm).is_slurm());
    }
}
