//! The registry: which experiments (and so which cell kinds) a program knows. This layer
//! knows none itself; the experiments describe themselves with [`Experiment`] and the binary
//! passes their list in (see `experiments::registry`). A run directory's experiment is
//! looked up by the manifest's `experiment` field ([`Registry::experiment`]), a cell's kind
//! by its `kind` field (`cell::find`); an unknown name gets an error listing the valid ones.

use super::cell::{CellKind, Kinds};
use super::rundir::Grid;
use anyhow::{bail, Result};

/// An experiment as the grid layer sees it.
pub trait Experiment: Sync {
    /// The manifest's `experiment` field of its grids (`rebound`, `scaling`, `resist`).
    fn name(&self) -> &'static str;
    /// The kinds of cell its grids hold.
    fn kinds(&self) -> &'static Kinds;
    /// Write the report (`results.*`, `report.md`) from the grid's cell results, for
    /// `elastica collect`; `missing` lists the cells without a result.
    fn collect(&self, grid: &Grid, missing: &[String]) -> Result<()>;
}

/// The experiments a program knows.
#[derive(Clone)]
pub struct Registry {
    pub experiments: Vec<&'static dyn Experiment>,
}

impl Registry {
    /// Every experiment's kinds (a kind shared by two experiments is listed once).
    pub fn kinds(&self) -> Vec<&'static dyn CellKind> {
        let mut v: Vec<&'static dyn CellKind> = Vec::new();
        for k in self.experiments.iter().flat_map(|e| e.kinds().iter()) {
            if !v.iter().any(|have| have.name() == k.name()) {
                v.push(*k);
            }
        }
        v
    }

    /// The experiment named `name`.
    pub fn experiment(&self, name: &str) -> Result<&'static dyn Experiment> {
        if let Some(e) = self.experiments.iter().find(|e| e.name() == name) {
            return Ok(*e);
        }
        let names: Vec<&str> = self.experiments.iter().map(|e| e.name()).collect();
        bail!(
            "unknown experiment \"{name}\"; this elastica knows: {}",
            names.join(", ")
        )
    }
}

/// Test-only kinds for the grid machinery's unit tests.
#[cfg(test)]
pub mod testing {
    use super::super::cell::{CellContext, CellKind, Kinds};
    use super::super::manifest::{CellSpec, Input};
    use anyhow::{bail, Result};

    pub static TEST_KINDS: &Kinds = &[&Echo];

    /// A `test.echo` cell after `deps`, with `params` (the grid tests' one cell builder).
    pub fn echo(id: &str, deps: &[&str], params: serde_json::Value) -> CellSpec {
        CellSpec {
            id: id.into(),
            kind: "test.echo".into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            inputs: std::collections::BTreeMap::new(),
            params,
        }
    }

    /// A `test.echo` cell with no dependencies whose input `data` is the file `path` (which
    /// the tests leave missing).
    pub fn echo_reading(id: &str, path: &str) -> CellSpec {
        let mut c = echo(id, &[], serde_json::json!({}));
        c.inputs.insert("data".into(), Input::path(path));
        c
    }

    /// Writes `out.txt` with its `value` param plus the values of its dependencies' outputs;
    /// fails when `fail = true`; sleeps `sleep_ms` first; with `meet = n`, waits until `n`
    /// cells with `meet` have started (failing after 20 s: they did not run side by side).
    pub struct Echo;

    impl CellKind for Echo {
        fn name(&self) -> &'static str {
            "test.echo"
        }
        fn about(&self) -> &'static str {
            "test kind: echoes its value"
        }
        fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
            let p = &ctx.cell.params;
            if let Some(ms) = p.get("sleep_ms").and_then(|v| v.as_u64()) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            if let Some(n) = p.get("meet").and_then(|v| v.as_u64()) {
                meet(ctx, n as usize)?;
            }
            if p.get("fail").and_then(|v| v.as_bool()) == Some(true) {
                bail!("asked to fail");
            }
            if p.get("panic").and_then(|v| v.as_bool()) == Some(true) {
                panic!("asked to panic");
            }
            let mut total = p.get("value").and_then(|v| v.as_i64()).unwrap_or(0);
            for d in &ctx.cell.deps {
                let o: serde_json::Value = ctx.dep_output(d)?;
                total += o["total"].as_i64().unwrap_or(0);
            }
            std::fs::write(ctx.dir.join("out.txt"), total.to_string())?;
            Ok(serde_json::json!({ "total": total }))
        }
    }

    /// Mark this cell arrived in the run directory and wait for `n` arrivals.
    fn meet(ctx: &CellContext<'_>, n: usize) -> Result<()> {
        let dir = ctx.grid.run_dir().join("arrived");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&ctx.cell.id), "")?;
        let t0 = std::time::Instant::now();
        while std::fs::read_dir(&dir)?.count() < n {
            if t0.elapsed().as_secs() >= 20 {
                bail!(
                    "cell {} waited 20 s for {n} cells to run at once",
                    ctx.cell.id
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TEST_KINDS;

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let e = format!(
            "{:#}",
            crate::grid::cell::find(TEST_KINDS, "test.nope")
                .err()
                .unwrap()
        );
        assert!(
            e.contains("unknown cell kind") && e.contains("test.echo"),
            "{e}"
        );
        assert_eq!(
            crate::grid::cell::find(TEST_KINDS, "test.echo")
                .unwrap()
                .name(),
            "test.echo"
        );
    }
}
