//! The local executor: a grid's cells on this machine, several at once when `jobs` and free
//! memory allow, scheduled by `util::parallel::schedule` (the crate's one scheduler).
//!
//! Its rules: cells run in manifest order as soon as their dependencies are done; finished
//! cells are skipped; a failed cell is reported (its error is in `cells/<id>/error.txt`) and
//! every cell that depends on it is skipped, while all other cells still run. The summary
//! goes to `status.json` in the run directory.
//!
//! Devices: every cell computes on the device the run directory records (`grid::device`),
//! unless `devices` lists several (`--devices cuda:0,cuda:1`): then as many cells run at once
//! as there are devices, each holding one of them until it ends, so no two running cells share
//! a device. Data parallelism inside one cell is not done.

use super::cell::{find, run_cell_on, CellKind, Kinds};
use super::config::LOCAL;
use super::device::{CellDevice, DevicePool};
use super::executor::{Executor, FailedCell, GridReport, SkippedCell};
use super::rundir::{Grid, RUN_LOCK_FILE};
use crate::util::parallel::{schedule, Limits, Outcome};
use anyhow::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs cells on this machine with up to `jobs` worker threads.
#[derive(Clone)]
pub struct LocalExecutor {
    pub jobs: usize,
    /// Draw per-cell progress bars (only when one cell runs at a time).
    pub progress: bool,
    /// Bytes the running cells' memory estimates may add up to; `None` = free memory now
    /// (`MemAvailable`), or unlimited where that is unknown.
    pub memory_budget: Option<u64>,
    /// The kinds of cell it can run.
    pub kinds: Vec<&'static dyn CellKind>,
    /// One running cell per device (`jobs` is then their number); empty = every cell on the
    /// recorded device.
    pub devices: Vec<String>,
}

impl LocalExecutor {
    pub fn new(jobs: usize, kinds: &Kinds) -> Self {
        LocalExecutor {
            jobs: jobs.max(1),
            progress: false,
            memory_budget: None,
            kinds: kinds.to_vec(),
            devices: Vec::new(),
        }
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

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        LOCAL
    }

    fn execute(&self, grid: &Grid) -> Result<GridReport> {
        let started = std::time::Instant::now();
        grid.check_results()?;
        // Held until the grid ends, so that `status` lists the cells still to run as pending
        // (not as failed or never submitted) while this process lives.
        let _running = crate::util::fsx::lock_shared(&grid.run_dir().join(RUN_LOCK_FILE))?;
        let n = grid.len();
        let cells = &grid.manifest().cells;
        let Pending {
            todo,
            deps,
            already_done,
        } = Pending::of(grid);
        let cost = self.memory_costs(grid, &todo);
        let budget = self
            .memory_budget
            .or_else(available_memory)
            .unwrap_or(u64::MAX);
        let base = CellDevice::read(grid.run_dir())?;
        let pool = DevicePool::new(&self.devices);
        let jobs = match self.devices.len() {
            0 => self.jobs.max(1),
            n => n,
        };
        // Without progress (the demo, tests) the grid runs quietly: no per-cell lines either.
        let show = Show {
            bars: self.progress && jobs == 1,
            lines: self.progress,
        };
        if !todo.is_empty() && show.lines {
            let on = match self.devices.is_empty() {
                true => base.label(),
                false => self.devices.join(", "),
            };
            eprintln!(
                "running {} of {n} cells ({} already done) with {jobs} job(s) on {on}",
                todo.len(),
                already_done.len()
            );
        }
        // Finished and failed cells in the order they ended.
        let finished = Mutex::new(Vec::new());
        let failed = Mutex::new(Vec::new());
        let count = AtomicUsize::new(0);
        let limits = Limits {
            workers: jobs,
            // Each cell's tensor code uses every core.
            one_thread_each: false,
            cost,
            budget,
        };
        let outcomes = schedule(todo.clone(), deps, &limits, |_, i, _: &[&()]| {
            let t0 = std::time::Instant::now();
            let id = &cells[i].id;
            let held = match self.devices.is_empty() {
                true => None,
                false => Some(pool.take()?),
            };
            let device = held.as_ref().map_or(base.clone(), |h| base.on(&h.device));
            match run_cell_on(grid, &self.kinds, i, show.bars, &device) {
                Ok(_) => {
                    let k = count.fetch_add(1, Ordering::Relaxed) + 1;
                    if show.lines {
                        let secs = t0.elapsed().as_secs_f64();
                        let on = device.label();
                        eprintln!("[{k}/{}] {id} done in {secs:.1} s on {on}", todo.len());
                    }
                    lock(&finished).push(id.clone());
                    Ok(())
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    eprintln!("[failed] {id}: {msg}");
                    lock(&failed).push(FailedCell {
                        id: id.clone(),
                        error: msg,
                    });
                    Err(e)
                }
            }
        })?;
        let skipped = skipped_cells(grid, &todo, &outcomes);
        let report = GridReport {
            executor: self.name().to_string(),
            total: n,
            already_done,
            finished: into_inner(finished),
            failed: into_inner(failed),
            skipped,
            submitted: Vec::new(),
            seconds: started.elapsed().as_secs_f64(),
        };
        report.write(grid)?;
        Ok(report)
    }
}

/// The cells still to run, in manifest order, as the scheduler sees them: `deps[j]` are the
/// positions in `todo` of the unfinished dependencies of cell `todo[j]` (dependencies on
/// finished cells are met).
struct Pending {
    todo: Vec<usize>,
    deps: Vec<Vec<usize>>,
    /// The ids of the cells finished before this run.
    already_done: Vec<String>,
}

impl Pending {
    fn of(grid: &Grid) -> Self {
        let n = grid.len();
        let cells = &grid.manifest().cells;
        let done: Vec<bool> = (0..n).map(|i| grid.is_done(i)).collect();
        let already_done = (0..n)
            .filter(|&i| done[i])
            .map(|i| cells[i].id.clone())
            .collect();
        let todo: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        let mut slot = vec![usize::MAX; n];
        for (j, &i) in todo.iter().enumerate() {
            slot[i] = j;
        }
        let all_deps = grid.manifest().dep_indices();
        let deps = todo
            .iter()
            .map(|&i| {
                all_deps[i]
                    .iter()
                    .filter(|&&d| !done[d])
                    .map(|&d| slot[d])
                    .collect()
            })
            .collect();
        Pending {
            todo,
            deps,
            already_done,
        }
    }
}

impl LocalExecutor {
    /// Each pending cell's memory estimate in bytes (0 where its kind gives none).
    fn memory_costs(&self, grid: &Grid, todo: &[usize]) -> Vec<u64> {
        let cells = &grid.manifest().cells;
        todo.iter()
            .map(|&i| {
                find(&self.kinds, &cells[i].kind)
                    .ok()
                    .and_then(|k| k.memory_bytes(grid, i))
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// The cells that never ran because a dependency failed or was skipped, each reported.
fn skipped_cells<T>(grid: &Grid, todo: &[usize], outcomes: &[Outcome<T>]) -> Vec<SkippedCell> {
    let cells = &grid.manifest().cells;
    let mut skipped = Vec::new();
    for (j, o) in outcomes.iter().enumerate() {
        if let Outcome::NotRun { because } = o {
            let (id, dep) = (&cells[todo[j]].id, &cells[todo[*because]].id);
            eprintln!("[skipped] {id}: its dependency {dep} did not finish");
            skipped.push(SkippedCell {
                id: id.clone(),
                because: dep.clone(),
            });
        }
    }
    skipped
}

/// A list's lock; a panic elsewhere (caught per cell) cannot leave it half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn into_inner<T>(m: Mutex<T>) -> T {
    m.into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `MemAvailable` from /proc/meminfo, in bytes (Linux); `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    crate::util::sysmem::available_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::cell::{run_cell, CellRun};
    use crate::grid::manifest::Manifest;
    use crate::grid::registry::testing::{echo, echo_reading, TEST_KINDS};
    use crate::grid::rundir::{CellStatus, ERROR_FILE, STATUS_FILE};

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
            let r = LocalExecutor::new(jobs, TEST_KINDS).execute(&g).unwrap();
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
            let r2 = LocalExecutor::new(jobs, TEST_KINDS).execute(&g).unwrap();
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
    fn devices_run_one_cell_each_at_once_and_results_say_where() {
        let dir = tempfile::tempdir().unwrap();
        // c0 and c1 each wait until both run: they pass only side by side. c2 runs after c0.
        let cells = vec![
            echo("c0", &[], serde_json::json!({"value": 0, "meet": 2})),
            echo("c1", &[], serde_json::json!({"value": 1, "meet": 2})),
            echo("c2", &["c0"], serde_json::json!({"value": 2})),
        ];
        let g = Grid::plan(dir.path(), Manifest::new("test", cells).unwrap()).unwrap();
        // The recorded backend and precision travel with each cell's own device. The test
        // kind computes nothing, so GPU names serve on any machine.
        let base = CellDevice {
            device: "cpu".into(),
            backend: Some("torch".into()),
            dtype: None,
        };
        base.write(dir.path()).unwrap();
        let ex = LocalExecutor {
            devices: vec!["cuda:0".into(), "cuda:1".into()],
            ..LocalExecutor::new(1, TEST_KINDS)
        };
        let r = ex.execute(&g).unwrap();
        assert!(r.complete(), "{}", r.summary());
        let on = |i: usize| g.result(i).unwrap().unwrap().device.unwrap();
        let mut first: Vec<String> = vec![on(0).device, on(1).device];
        first.sort();
        assert_eq!(
            first,
            ["cuda:0", "cuda:1"],
            "two cells at once never share a device"
        );
        assert!(on(2).device.starts_with("cuda:"));
        assert_eq!(on(2).backend.as_deref(), Some("torch"));
        // Without devices a cell runs on the recorded device.
        let d2 = tempfile::tempdir().unwrap();
        let g2 = Grid::plan(
            d2.path(),
            Manifest::new("test", vec![echo("a", &[], serde_json::json!({}))]).unwrap(),
        )
        .unwrap();
        LocalExecutor::new(1, TEST_KINDS).execute(&g2).unwrap();
        assert_eq!(
            g2.result(0).unwrap().unwrap().device,
            Some(CellDevice::default())
        );
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
            kinds: TEST_KINDS.to_vec(),
            devices: Vec::new(),
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
        run_cell(&g, TEST_KINDS, 0, false).unwrap();
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
        let cells = vec![
            echo("a", &[], serde_json::json!({"value": 1})),
            echo("b", &["a"], serde_json::json!({})),
            echo_reading("x", "missing.jsonl"),
        ];
        let g = Grid::plan(dir.path(), Manifest::new("test", cells).unwrap()).unwrap();
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 3, false).unwrap_err());
        assert!(e.contains("out of range") && e.contains("0 to 2"), "{e}");
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 1, false).unwrap_err());
        assert!(e.contains("needs cell a") && e.contains("pending"), "{e}");
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 2, false).unwrap_err());
        assert!(
            e.contains("input \"data\"") && e.contains("does not exist"),
            "{e}"
        );
        assert!(matches!(
            run_cell(&g, TEST_KINDS, 0, false).unwrap(),
            CellRun::Finished(_)
        ));
        assert_eq!(
            run_cell(&g, TEST_KINDS, 0, false).unwrap(),
            CellRun::AlreadyDone
        );
        run_cell(&g, TEST_KINDS, 1, false).unwrap();

        // A pinned input edited after planning is refused.
        std::fs::write(dir.path().join("in.txt"), "one").unwrap();
        let mut p = echo("p", &[], serde_json::json!({}));
        p.inputs.insert(
            "f".into(),
            crate::grid::manifest::Input::pinned(dir.path(), "in.txt").unwrap(),
        );
        let g = Grid::plan(
            &dir.path().join("sub"),
            Manifest::new("test", vec![p]).unwrap(),
        );
        // The input path is relative to the run dir ("sub"), where in.txt is not.
        assert!(g.is_ok());
        let g = g.unwrap();
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 0, false).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(dir.path().join("sub/in.txt"), "two").unwrap();
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 0, false).unwrap_err());
        assert!(e.contains("changed since the grid was planned"), "{e}");
    }
}
