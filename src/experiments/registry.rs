//! Every experiment, described for the grid layer ([`Experiment`]): its name in manifests,
//! its cell kinds, and its report from a finished grid. The binary passes [`registry`] to
//! the commands that run or report on any grid (`cell run`, `collect`, `resubmit`); an
//! experiment's own command passes just its kinds to `grid::launch`.

use crate::grid::cell::Kinds;
use crate::grid::collect::preview;
use crate::grid::registry::{Experiment, Registry};
use crate::grid::rundir::Grid;
use anyhow::{bail, Result};

/// Every experiment this elastica knows.
pub fn registry() -> Registry {
    Registry {
        experiments: vec![&REBOUND, &SCALING, &RESIST],
    }
}

/// One experiment as the grid layer sees it: a row of the registry's table.
struct Listed {
    name: &'static str,
    kinds: &'static Kinds,
    collect: fn(&Grid, &[String]) -> Result<()>,
}

impl Experiment for Listed {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kinds(&self) -> &'static Kinds {
        self.kinds
    }
    fn collect(&self, grid: &Grid, missing: &[String]) -> Result<()> {
        (self.collect)(grid, missing)
    }
}

static REBOUND: Listed = Listed {
    name: "rebound",
    kinds: super::rebound::cells::KINDS,
    collect: |grid, _missing| super::rebound::collect(grid).map(drop),
};

/// The rebound grid over several base models: the rebound kinds, its own report.
static SCALING: Listed = Listed {
    name: "scaling",
    kinds: super::rebound::cells::KINDS,
    collect: |grid, _missing| super::scaling::collect(grid).map(drop),
};

static RESIST: Listed = Listed {
    name: "resist",
    kinds: super::resist::cells::KINDS,
    collect: collect_resist,
};

/// The resist report compares every slice with every other: it needs every cell.
fn collect_resist(grid: &Grid, missing: &[String]) -> Result<()> {
    if !missing.is_empty() {
        bail!(
            "the resist report needs every cell; {} of {} are not done ({}); see \
             `elastica status {}`",
            missing.len(),
            grid.len(),
            preview(missing),
            grid.run_dir().display()
        );
    }
    super::resist::pipeline::collect(grid).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::cell::find;
    use crate::grid::config::{ExecutorKind, ExecutorSpec, RunOptions};
    use crate::grid::launch::launch;
    use crate::grid::slurm::SlurmConfig;

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let kinds = registry().kinds();
        let e = format!("{:#}", find(&kinds, "rebound.nope").err().unwrap());
        assert!(
            e.contains("rebound.align") && e.contains("rebound.perturb"),
            "{e}"
        );
        let e = format!("{:#}", registry().experiment("nope").err().unwrap());
        assert!(e.contains("rebound, scaling, resist"), "{e}");
    }

    #[test]
    fn resources_must_name_a_registered_kind() {
        let bad = |t: &str| {
            let c = SlurmConfig {
                resources: toml::from_str(t).unwrap(),
                ..SlurmConfig::default()
            };
            c.validate()
                .and_then(|_| c.check_kinds(&registry().kinds()))
        };
        let e = format!("{:#}", bad("[algin]\ntime = \"10\"").unwrap_err());
        assert!(
            e.contains("[executor.resources.algin]") && e.contains("align, perturb"),
            "{e}"
        );
        bad("[theta]\ntime = \"10\"").unwrap();
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
        launch(
            &cfg.executor,
            &cfg.slurm,
            RunOptions::default(),
            &registry().kinds(),
        )
        .unwrap();
        // Switching the kind keeps the resources.
        let local = cfg.executor.with_kind(ExecutorKind::Local);
        assert!(
            matches!(&local, ExecutorSpec::Local { jobs: 1, resources, .. } if resources.len() == 2)
        );
        assert!(local.with_kind(ExecutorKind::Slurm).is_slurm());
    }
}
