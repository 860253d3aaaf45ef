//! The grid manifest (`manifest.json` in a run directory): the complete list of an
//! experiment's cells, each a named unit of work with its kind, parameters, input files and
//! the cells it depends on, plus a content hash.
//!
//! The manifest is the contract between planning (an experiment turning its config into
//! cells) and execution (any executor, local or a cluster scheduler, running cells by index
//! with `elastica cell run --manifest M --index I`). Rules that make this safe:
//! - cell ids are unique and file-name safe (each cell owns `cells/<id>/`);
//! - a cell lists its dependencies by id and they come earlier in the list, so list order is
//!   always a valid execution order and the graph has no cycles;
//! - the `hash` field is the SHA-256 of the canonical JSON of everything else; a manifest
//!   edited by hand no longer matches it and is refused;
//! - every cell has its own hash (of its id, kind, dependencies, inputs and parameters),
//!   stored in its `result.json`, so a result is only reused for the identical cell.
//!
//! Canonical JSON: `serde_json::Value` objects keep their keys sorted (the crate is built
//! without `preserve_order`), and floats print in their shortest round-trip form.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// File name of the manifest inside a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Value of the manifest's `format` field.
pub const FORMAT: &str = "elastica-grid";
/// Manifest layout version; bumped when the meaning of a field changes.
pub const VERSION: u32 = 1;
/// Longest cell id accepted (it becomes a directory name).
const MAX_ID_LEN: usize = 200;

/// A file a cell reads. Relative paths are relative to the run directory.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub path: String,
    /// SHA-256 of the file's bytes when the planner froze it; checked before the cell runs.
    /// Left out for large inputs (model weights) and directories.
    pub sha256: Option<String>,
}

impl Input {
    /// An input checked only for existence.
    pub fn path(path: impl Into<String>) -> Self {
        Input {
            path: path.into(),
            sha256: None,
        }
    }

    /// An input whose content is pinned by the hash of the file at `run_dir`/`path` now.
    pub fn pinned(run_dir: &Path, path: impl Into<String>) -> Result<Self> {
        let path = path.into();
        let sha = sha256_file(&resolve(run_dir, &path))?;
        Ok(Input {
            path,
            sha256: Some(sha),
        })
    }

    /// An input pinned by the hash of `bytes`, the content the planner is about to write
    /// at `path` (planning checks the whole manifest before writing any file).
    pub fn pinned_bytes(path: impl Into<String>, bytes: &[u8]) -> Self {
        Input {
            path: path.into(),
            sha256: Some(sha256_hex(bytes)),
        }
    }
}

/// One cell: a named unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// Unique, file-name safe (`[A-Za-z0-9][A-Za-z0-9._-]*`); the cell writes into
    /// `cells/<id>/`.
    pub id: String,
    /// A cell kind (see `grid::cell::CellKind`), e.g. `rebound.align`.
    pub kind: String,
    /// Ids of cells that must finish first; each must appear earlier in the manifest.
    #[serde(default)]
    pub deps: Vec<String>,
    /// Named input files.
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    /// Kind-specific parameters (a JSON object the kind deserialises).
    #[serde(default)]
    pub params: serde_json::Value,
}

impl CellSpec {
    /// SHA-256 of the cell's canonical JSON.
    pub fn hash(&self) -> String {
        // Serialising a struct of strings, maps and a Value cannot fail.
        let v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        sha256_hex(v.to_string().as_bytes())
    }
}

/// The manifest of one run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The experiment that planned the grid (`rebound`, `scaling`, `resist`, ...).
    pub experiment: String,
    /// SHA-256 of the canonical JSON of every other field.
    pub hash: String,
    pub cells: Vec<CellSpec>,
}

impl Manifest {
    /// A checked manifest with its hash filled in.
    pub fn new(experiment: impl Into<String>, cells: Vec<CellSpec>) -> Result<Self> {
        let mut m = Manifest {
            format: FORMAT.to_string(),
            version: VERSION,
            experiment: experiment.into(),
            hash: String::new(),
            cells,
        };
        m.validate()?;
        m.hash = m.compute_hash();
        Ok(m)
    }

    /// The hash the content should have (ignores the stored `hash` field).
    pub fn compute_hash(&self) -> String {
        let body = serde_json::json!({
            "format": self.format,
            "version": self.version,
            "experiment": self.experiment,
            "cells": self.cells,
        });
        sha256_hex(body.to_string().as_bytes())
    }

    /// Check ids (unique, file-name safe) and dependencies (known, earlier, not self).
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "format is {:?}, expected {FORMAT:?} (not an elastica grid manifest)",
                self.format
            );
        }
        if self.version != VERSION {
            bail!(
                "manifest version {} but this elastica reads version {VERSION}; re-plan the run \
                 with this elastica",
                self.version
            );
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for (i, c) in self.cells.iter().enumerate() {
            check_id(&c.id).with_context(|| format!("cell {i}"))?;
            if c.kind.is_empty() {
                bail!("cell {i} ({}) has an empty kind", c.id);
            }
            for d in &c.deps {
                if d == &c.id {
                    bail!("cell {i} ({}) depends on itself", c.id);
                }
                if !seen.contains(d.as_str()) {
                    if self.cells.iter().any(|o| &o.id == d) {
                        bail!(
                            "cell {i} ({}) depends on {d}, which comes later in the manifest; \
                             dependencies must be listed first",
                            c.id
                        );
                    }
                    bail!("cell {i} ({}) depends on unknown cell {d}", c.id);
                }
            }
            if !seen.insert(&c.id) {
                bail!("cell id {} is used twice", c.id);
            }
            if !c.params.is_object() && !c.params.is_null() {
                bail!("cell {i} ({}): params must be a JSON object", c.id);
            }
        }
        Ok(())
    }

    /// Read and check a manifest file, refusing one whose content does not match its hash.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the grid manifest {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid grid manifest", path.display()))?;
        m.validate()
            .with_context(|| format!("in manifest {}", path.display()))?;
        let actual = m.compute_hash();
        if actual != m.hash {
            bail!(
                "{}: the content hash is {actual} but the run recorded {}; the manifest was \
                 edited after the grid was planned, and an edited manifest is not run. Restore \
                 it, or plan the run into a new output directory (change the experiment's \
                 config instead of manifest.json)",
                path.display(),
                m.hash
            );
        }
        Ok(m)
    }

    /// Write `manifest.json` into `run_dir` atomically; returns its path.
    pub fn write(&self, run_dir: &Path) -> Result<PathBuf> {
        let p = run_dir.join(MANIFEST_FILE);
        crate::util::fsx::atomic_write_json(&p, self)?;
        Ok(p)
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.cells.iter().position(|c| c.id == id)
    }

    /// Indices of the cells each cell depends on (direct dependencies).
    pub fn dep_indices(&self) -> Vec<Vec<usize>> {
        let pos: HashMap<&str, usize> = self
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i))
            .collect();
        self.cells
            .iter()
            .map(|c| {
                c.deps
                    .iter()
                    .filter_map(|d| pos.get(d.as_str()).copied())
                    .collect()
            })
            .collect()
    }

    /// Cells grouped into waves: wave 0 has no dependencies, wave k depends only on waves
    /// < k. A scheduler without per-task dependencies (a Slurm job array per wave) runs the
    /// waves in order.
    pub fn stages(&self) -> Vec<Vec<usize>> {
        let deps = self.dep_indices();
        let mut level = vec![0usize; self.cells.len()];
        for i in 0..self.cells.len() {
            // Dependencies come earlier, so their levels are final.
            level[i] = deps[i].iter().map(|&d| level[d] + 1).max().unwrap_or(0);
        }
        let n = level.iter().copied().max().map_or(0, |m| m + 1);
        let mut out = vec![Vec::new(); n];
        for (i, l) in level.into_iter().enumerate() {
            out[l].push(i);
        }
        out
    }

    /// Every cell that depends on cell `i`, directly or through others.
    pub fn dependents(&self, i: usize) -> Vec<usize> {
        let deps = self.dep_indices();
        let mut hit = vec![false; self.cells.len()];
        hit[i] = true;
        let mut out = Vec::new();
        for j in i + 1..self.cells.len() {
            if deps[j].iter().any(|&d| hit[d]) {
                hit[j] = true;
                out.push(j);
            }
        }
        out
    }
}

/// `run_dir`/`path`, or `path` itself when absolute.
pub fn resolve(run_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        run_dir.join(p)
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok_first || !ok_rest || id.len() > MAX_ID_LEN {
        bail!(
            "cell id {id:?} is not file-name safe: use letters, digits, '.', '_' and '-', \
             starting with a letter or digit, at most {MAX_ID_LEN} characters"
        );
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of a file's bytes, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open {} to hash it", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(id: &str, deps: &[&str]) -> CellSpec {
        crate::grid::registry::testing::echo(id, deps, serde_json::json!({"x": 1.5, "a": [1, 2]}))
    }

    #[test]
    fn hash_is_stable_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::new("test", vec![cell("a", &[]), cell("b", &["a"])]).unwrap();
        let p = m.write(dir.path()).unwrap();
        let back = Manifest::read(&p).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.compute_hash(), m.hash);
        // Editing a parameter by hand is refused.
        let text = std::fs::read_to_string(&p).unwrap().replace("1.5", "2.5");
        std::fs::write(&p, text).unwrap();
        let e = format!("{:#}", Manifest::read(&p).unwrap_err());
        assert!(e.contains("edited after the grid was planned"), "{e}");
        // A cell's hash changes with its parameters.
        let mut c = cell("a", &[]);
        let h = c.hash();
        c.params["x"] = serde_json::json!(3);
        assert_ne!(h, c.hash());
    }

    #[test]
    fn bad_ids_and_dependencies_are_named() {
        let e = |cells| format!("{:#}", Manifest::new("t", cells).unwrap_err());
        assert!(e(vec![cell("a/b", &[])]).contains("not file-name safe"));
        assert!(e(vec![cell("a", &[]), cell("a", &[])]).contains("used twice"));
        assert!(e(vec![cell("a", &["zz"])]).contains("unknown cell zz"));
        assert!(e(vec![cell("a", &["b"]), cell("b", &[])]).contains("comes later"));
        assert!(e(vec![cell("a", &["a"])]).contains("depends on itself"));
    }

    #[test]
    fn stages_and_dependents() {
        let m = Manifest::new(
            "t",
            vec![
                cell("a", &[]),
                cell("b", &["a"]),
                cell("c", &[]),
                cell("d", &["b", "c"]),
            ],
        )
        .unwrap();
        assert_eq!(m.stages(), vec![vec![0, 2], vec![1], vec![3]]);
        assert_eq!(m.dependents(0), vec![1, 3]);
        assert_eq!(m.dependents(2), vec![3]);
        assert!(m.dependents(3).is_empty());
    }
}
