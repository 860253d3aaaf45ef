//! Running one cell, and the interface every cell kind implements.
//!
//! [`run_cell`] is the only way a cell runs, whichever executor calls it (the local
//! executor's worker threads, or `elastica cell run --manifest M --index I` in a Slurm array
//! task). In order it: skips a cell that is already done; checks that the dependencies are
//! done (a cell whose dependency is not done is skipped, not failed: it writes nothing);
//! takes the cell's lock and counts the attempt; checks that the inputs exist (and still
//! have their planned hashes); runs the kind (a panic counts as a failure); and writes
//! `result.json` atomically, last. Every failure of an attempt, the input checks included,
//! writes `error.txt` instead and leaves every partial output in place, so the next attempt
//! can resume (training resumes from its last checkpoint, finished stages are skipped by the
//! kind).
//!
//! Adding a cell kind: implement [`CellKind`] on a unit struct and list it in its
//! experiment's kinds (`grid::registry::Experiment::kinds`); whoever runs cells passes the
//! kinds in, so this layer knows no experiment.
//!
//! Two processes never run one cell at once: the attempt holds an exclusive lock on
//! `cells/<id>/.lock` (a second task of the same cell, e.g. a cell submitted twice, stops
//! with an error instead of writing the same files).
//!
//! Fault injection (for tests of the resume path): with `ELASTICA_INJECT_FAULT=<id>@<point>`
//! (several comma-separated), the cell `<id>` fails at `<point>`: `start` (before the kind
//! runs) or any point a kind checks with [`CellContext::fault_point`] (the rebound kinds
//! check `train-step-N` after optimizer step N). `<id>@<point>:sleep=<seconds>` makes the
//! cell hang there instead (for tests that kill a running cell, e.g. with `scancel`).

use super::device::CellDevice;
use super::manifest::{resolve, sha256_file, CellSpec};
use super::rundir::{
    CellResult, CellStatus, Grid, ATTEMPTS_FILE, ERROR_FILE, LOCK_FILE, RESULT_FILE,
};
use crate::util::fsx::{atomic_write, atomic_write_json};
use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Environment variable naming injected faults (`<cell-id>@<point>`, comma-separated).
pub const FAULT_ENV: &str = "ELASTICA_INJECT_FAULT";

/// Tries, 50 ms apart, to take a cell's lock before it counts as held by another process.
const LOCK_TRIES: usize = 10;

/// A kind of cell: how to run it. Implementations are unit structs listed in their
/// experiment's `kinds` (see `grid::registry`).
pub trait CellKind: Send + Sync {
    /// The name written in manifests, `<experiment>.<step>` (e.g. `rebound.align`).
    fn name(&self) -> &'static str;
    /// One line for listings.
    fn about(&self) -> &'static str;
    /// Do the work, writing files into `ctx.dir`; the returned JSON becomes the result's
    /// `output`. Must be safe to call again after an interrupted attempt.
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value>;
    /// Peak memory the cell needs, in bytes, if the kind can estimate it. The local
    /// executor runs cells side by side only while their estimates fit in free memory.
    fn memory_bytes(&self, _grid: &Grid, _index: usize) -> Option<u64> {
        None
    }
    /// Clean-up after `result.json` is written (e.g. deleting weights no cell needs).
    fn after_result(&self, _ctx: &CellContext<'_>) -> Result<()> {
        Ok(())
    }
}

/// The cell kinds a grid may hold; whoever runs cells passes them in.
pub type Kinds = [&'static dyn CellKind];

/// The kind named `name` among `kinds`.
pub fn find(kinds: &Kinds, name: &str) -> Result<&'static dyn CellKind> {
    if let Some(k) = kinds.iter().find(|k| k.name() == name) {
        return Ok(*k);
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    bail!(
        "unknown cell kind \"{name}\"; this elastica knows: {}",
        names.join(", ")
    )
}

/// What a running cell sees.
pub struct CellContext<'a> {
    pub grid: &'a Grid,
    pub index: usize,
    pub cell: &'a CellSpec,
    /// `cells/<id>/`, created before the kind runs.
    pub dir: PathBuf,
    /// Whether the cell may draw progress bars (off when cells run side by side).
    pub progress: bool,
    /// Where the cell computes (`experiments::device` resolves it to a backend).
    pub device: CellDevice,
}

impl CellContext<'_> {
    /// The cell's parameters as the kind's type; errors name the cell.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.cell.params.clone()).with_context(|| {
            format!(
                "cell {} ({}): its params do not fit the kind (was the manifest written by \
                 another elastica version?)",
                self.cell.id, self.cell.kind
            )
        })
    }

    /// The path of input `name`, resolved against the run directory.
    pub fn input(&self, name: &str) -> Result<PathBuf> {
        let inp = self.cell.inputs.get(name).ok_or_else(|| {
            anyhow!(
                "cell {} has no input named \"{name}\" (inputs: {})",
                self.cell.id,
                self.cell
                    .inputs
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(resolve(self.grid.run_dir(), &inp.path))
    }

    /// The directory of dependency `id`.
    pub fn dep_dir(&self, id: &str) -> PathBuf {
        self.grid.cell_dir_by_id(id)
    }

    /// The output of dependency `id` (which must be done).
    pub fn dep_output<T: DeserializeOwned>(&self, id: &str) -> Result<T> {
        let i = self
            .grid
            .manifest()
            .index_of(id)
            .ok_or_else(|| anyhow!("cell {} depends on unknown cell {id}", self.cell.id))?;
        match self.grid.result(i)? {
            Some(r) => r.output_as(),
            None => bail!("cell {id} has not finished"),
        }
    }

    /// Fail here if a fault was injected at `point` for this cell (see the module doc).
    pub fn fault_point(&self, point: &str) -> Result<()> {
        check_fault(&self.cell.id, point)
    }
}

fn check_fault(id: &str, point: &str) -> Result<()> {
    match std::env::var(FAULT_ENV) {
        Ok(spec) => fault_in(&spec, id, point),
        Err(_) => Ok(()),
    }
}

/// Apply the fault spec `spec` (the value of [`FAULT_ENV`]) at `point` of cell `id`.
fn fault_in(spec: &str, id: &str, point: &str) -> Result<()> {
    {
        let want = format!("{id}@{point}");
        for entry in spec.split(',').map(str::trim) {
            if entry == want {
                bail!("injected fault at {point} ({FAULT_ENV}={spec})");
            }
            let secs = entry
                .strip_prefix(want.as_str())
                .and_then(|rest| rest.strip_prefix(":sleep="))
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(secs) = secs {
                eprintln!("injected hang at {point}: sleeping {secs} s ({FAULT_ENV})");
                std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.0)));
            }
        }
    }
    Ok(())
}

/// How [`run_cell`] ended without error.
#[derive(Debug, Clone, PartialEq)]
pub enum CellRun {
    /// `result.json` was already there; nothing ran.
    AlreadyDone,
    /// The cell ran and finished.
    Finished(CellResult),
}

/// Run cell `index` of `grid`, its kind looked up in `kinds` (see the module doc), on the
/// device the run directory records (`grid::device`). The error of a failed cell is also
/// written to `cells/<id>/error.txt`.
pub fn run_cell(grid: &Grid, kinds: &Kinds, index: usize, progress: bool) -> Result<CellRun> {
    let device = CellDevice::read(grid.run_dir())?;
    run_cell_on(grid, kinds, index, progress, &device)
}

/// [`run_cell`] on `device` (the local executor's device for this cell, or `cell run
/// --device`).
pub fn run_cell_on(
    grid: &Grid,
    kinds: &Kinds,
    index: usize,
    progress: bool,
    device: &CellDevice,
) -> Result<CellRun> {
    let n = grid.len();
    if index >= n {
        bail!(
            "cell index {index} is out of range: {} has {n} cells (indices 0 to {})",
            grid.manifest_path().display(),
            n.saturating_sub(1)
        );
    }
    let cell = &grid.manifest().cells[index];
    match grid.status(index) {
        CellStatus::Done => return Ok(CellRun::AlreadyDone),
        CellStatus::Stale => bail!(
            "cell {} has a result.json from a different definition of the cell; delete {} to \
             redo it",
            cell.id,
            grid.cell_dir(index).display()
        ),
        CellStatus::Unreadable(e) => bail!("{}", grid.unreadable_hint(index, &e)),
        _ => {}
    }
    let kind = find(kinds, &cell.kind)?;
    for d in &cell.deps {
        let j = grid
            .manifest()
            .index_of(d)
            .ok_or_else(|| anyhow!("cell {} depends on unknown cell {d}", cell.id))?;
        let st = grid.status(j);
        if st != CellStatus::Done {
            bail!(
                "cell {} (index {index}) needs cell {d} (index {j}) to finish first; its status \
                 is {}",
                cell.id,
                st.label()
            );
        }
    }
    let dir = grid.cell_dir(index);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the cell directory {}", dir.display()))?;
    let _lock = lock_cell(&dir, &cell.id)?;
    // Another process may have finished the cell while this one waited for the lock.
    if grid.status(index) == CellStatus::Done {
        return Ok(CellRun::AlreadyDone);
    }
    let err_path = dir.join(ERROR_FILE);
    if err_path.exists() {
        std::fs::remove_file(&err_path)
            .with_context(|| format!("cannot remove {}", err_path.display()))?;
    }
    let attempts = grid.attempts(index) + 1;
    atomic_write(&dir.join(ATTEMPTS_FILE), format!("{attempts}\n").as_bytes())?;

    let ctx = CellContext {
        grid,
        index,
        cell,
        dir: dir.clone(),
        progress,
        device: device.clone(),
    };
    let started = std::time::Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Inside the attempt, so that an input the node cannot see (a path that is not
        // mounted there, the likeliest cluster failure) is counted and lands in error.txt,
        // where `status` shows it, instead of only in the task's log.
        check_inputs(grid, cell)?;
        check_fault(&cell.id, "start")?;
        kind.run(&ctx)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".to_string());
        Err(anyhow!("the cell panicked: {msg}"))
    });
    let output = match outcome {
        Ok(o) => o,
        Err(e) => {
            let e = e.context(format!("cell {} ({}) failed", cell.id, cell.kind));
            let text = format!("{e:#}\n\n{e:?}\n");
            atomic_write(&err_path, text.as_bytes()).ok();
            return Err(e);
        }
    };
    let result = CellResult {
        id: cell.id.clone(),
        kind: cell.kind.clone(),
        cell_hash: cell.hash(),
        attempts,
        seconds: started.elapsed().as_secs_f64(),
        finished_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        output,
        device: Some(device.clone()),
    };
    atomic_write_json(&dir.join(RESULT_FILE), &result)?;
    if let Err(e) = kind.after_result(&ctx) {
        eprintln!("warning: clean-up after cell {} failed: {e:#}", cell.id);
    }
    Ok(CellRun::Finished(result))
}

/// Take the cell's lock (released when the file is dropped, or when the process dies).
fn lock_cell(dir: &Path, id: &str) -> Result<std::fs::File> {
    let p = dir.join(LOCK_FILE);
    // `status` probes the lock by taking it for an instant (`fsx::is_locked`); a few short
    // retries keep such a probe from failing a cell that starts at that instant. A cell
    // really run by another process holds the lock far longer.
    for _ in 0..LOCK_TRIES - 1 {
        if let Some(f) = crate::util::fsx::try_lock(&p)? {
            return Ok(f);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    match crate::util::fsx::try_lock(&p)? {
        Some(f) => Ok(f),
        None => bail!(
            "cell {id} is being run by another process (it holds {}); was the cell \
             submitted twice? Wait for that process or stop it",
            p.display()
        ),
    }
}

fn check_inputs(grid: &Grid, cell: &CellSpec) -> Result<()> {
    for (name, inp) in &cell.inputs {
        let p = resolve(grid.run_dir(), &inp.path);
        if !p.exists() {
            bail!(
                "cell {}: input \"{name}\" ({}) does not exist",
                cell.id,
                p.display()
            );
        }
        if let Some(want) = &inp.sha256 {
            let got = sha256_file(&p)?;
            if &got != want {
                bail!(
                    "cell {}: input \"{name}\" ({}) changed since the grid was planned (its \
                     sha256 is {got}, the manifest pins {want}); re-plan the run instead of \
                     editing its inputs",
                    cell.id,
                    p.display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::manifest::Manifest;
    use crate::grid::registry::testing::TEST_KINDS;
    use std::collections::BTreeMap;

    #[test]
    fn a_missing_input_is_a_counted_attempt_with_error_txt() {
        let dir = tempfile::tempdir().unwrap();
        let mut cell = CellSpec {
            id: "a".into(),
            kind: "test.echo".into(),
            deps: vec![],
            inputs: BTreeMap::new(),
            params: serde_json::json!({"value": 1}),
        };
        cell.inputs.insert(
            "model".into(),
            crate::grid::manifest::Input::path("/nonexistent/model"),
        );
        let g = Grid::plan(dir.path(), Manifest::new("t", vec![cell]).unwrap()).unwrap();
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 0, false).unwrap_err());
        assert!(e.contains("/nonexistent/model"), "{e}");
        let text = std::fs::read_to_string(g.cell_dir(0).join(ERROR_FILE)).unwrap();
        assert!(text.contains("input \"model\" (/nonexistent/model) does not exist"));
        assert_eq!(g.attempts(0), 1);
        assert!(matches!(g.status(0), CellStatus::Failed(ref m) if m.contains("/nonexistent")));
    }

    #[test]
    fn a_locked_cell_is_not_run_twice_and_hangs_are_injectable() {
        let dir = tempfile::tempdir().unwrap();
        let cell = CellSpec {
            id: "a".into(),
            kind: "test.echo".into(),
            deps: vec![],
            inputs: BTreeMap::new(),
            params: serde_json::json!({"value": 1}),
        };
        let g = Grid::plan(dir.path(), Manifest::new("t", vec![cell]).unwrap()).unwrap();
        std::fs::create_dir_all(g.cell_dir(0)).unwrap();
        let held = lock_cell(&g.cell_dir(0), "a").unwrap();
        let e = format!("{:#}", run_cell(&g, TEST_KINDS, 0, false).unwrap_err());
        assert!(e.contains("being run by another process"), "{e}");
        assert!(!g.cell_dir(0).join(ERROR_FILE).exists());
        drop(held);
        assert!(matches!(
            run_cell(&g, TEST_KINDS, 0, false).unwrap(),
            CellRun::Finished(_)
        ));

        // A hang entry sleeps and continues; a plain entry fails.
        let spec = "zz@p1:sleep=0.01,zz@p2";
        let t0 = std::time::Instant::now();
        fault_in(spec, "zz", "p1").unwrap();
        assert!(t0.elapsed().as_secs_f64() >= 0.01);
        assert!(fault_in(spec, "zz", "p2").is_err());
        assert!(fault_in(spec, "zz", "p3").is_ok());
        assert!(fault_in(spec, "z", "p2").is_ok());
    }
}
