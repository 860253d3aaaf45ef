//! How an experiment config asks for its cells to be run: the `[executor]` table
//! ([`ExecutorSpec`]), the command line's `--executor` ([`ExecutorKind`]) and run options
//! ([`RunOptions`]). Experiment configs embed these types; `grid::launch` turns them into an
//! executor.

use super::slurm::config::KindResources;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Name of the local executor (in `status.json` and logs).
pub const LOCAL: &str = "local";
/// Name of the Slurm executor.
pub const SLURM: &str = "slurm";

/// Per-kind Slurm resources, `[executor.resources.<kind>]` (see `grid::slurm::config`).
pub type Resources = BTreeMap<String, KindResources>;

/// Which executor to use, as written in experiment configs (`[executor]` table). Both kinds
/// accept both kinds' keys, so that `--executor` can switch a config between them: a local
/// executor ignores `resources`, Slurm ignores `jobs` (with a warning).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExecutorSpec {
    /// Run cells on this machine.
    Local {
        /// Cells run at the same time (at most; free memory may allow fewer). Each cell's
        /// tensor code already uses every core, so more than 1 helps only with many cores.
        #[serde(default = "one")]
        jobs: usize,
        /// One cell per device at a time (`["cuda:0", "cuda:1"]`, or `--devices`): as many
        /// cells run at once as devices are listed, each on its own. Empty = every cell on
        /// the config's `device`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        devices: Vec<String>,
        /// Used when `--executor slurm` switches the run to Slurm.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        resources: Resources,
    },
    /// Submit cells to Slurm as job arrays; resources come from the config's `[slurm]`
    /// section, per kind of cell from `resources` (see `grid::slurm::config`).
    Slurm {
        /// Accepted so that a config switched from `local` still loads; Slurm ignores it
        /// (`[slurm] max_parallel` limits the cells running at once).
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
            devices: Vec::new(),
            resources: BTreeMap::new(),
        }
    }
}

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
                devices: Vec::new(),
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
