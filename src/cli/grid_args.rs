//! The arguments `rebound`, `scaling` and `resist` share (`#[command(flatten)]`): where the
//! run directory is, who runs the cells, how many at once, and whether to wait for them.

use crate::grid::config::{ExecutorKind, ExecutorSpec, RunOptions};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct GridArgs {
    /// Run directory (default: runs/<command>-<UTC time>). An existing one is resumed:
    /// finished cells are kept.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Cells run at the same time (overrides executor.jobs of a local executor).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run one cell per device at once, each on its own (e.g. `cuda:0,cuda:1`; overrides
    /// [executor] devices and the config's `device` of a local executor). Under Slurm each
    /// task gets its GPUs from [slurm] gpus instead.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Worker threads for tensor code (overrides the config's `threads`; 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Who runs the cells (overrides the config's [executor] kind; Slurm resources come
    /// from its [slurm] section, see docs/slurm.md).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// With --executor slurm: return once the cells are submitted; follow them with
    /// `elastica status DIR` and write the report with `elastica collect DIR`.
    #[arg(long)]
    pub no_wait: bool,
}

impl GridArgs {
    /// The config's `[executor]` with `--executor` and `--jobs` applied.
    pub fn executor(&self, spec: &ExecutorSpec) -> Result<ExecutorSpec> {
        let mut spec = match self.executor {
            Some(k) => spec.with_kind(k),
            None => spec.clone(),
        };
        if !self.devices.is_empty() {
            match &mut spec {
                ExecutorSpec::Local { devices, .. } => {
                    devices.clone_from(&self.devices);
                    for d in devices.iter() {
                        crate::experiments::device::check_device_name(d).context("in --devices")?;
                    }
                }
                ExecutorSpec::Slurm { .. } => bail!(
                    "--devices applies to the local executor only; a Slurm task runs on the \
                     GPUs its job asks for ([slurm] gpus = 1 runs each cell with --device cuda)"
                ),
            }
        }
        if let Some(j) = self.jobs {
            match &mut spec {
                ExecutorSpec::Local { jobs, .. } => *jobs = j,
                ExecutorSpec::Slurm { .. } => bail!(
                    "--jobs applies to the local executor only; with Slurm, limit the cells \
                     running at once with [slurm] max_parallel"
                ),
            }
        }
        Ok(spec)
    }

    /// `--out`, or `runs/<command>-<UTC time>`; refused if it holds another command's run
    /// (the grid tells its own experiments apart).
    pub fn out(&self, command: &str) -> anyhow::Result<PathBuf> {
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| crate::report::default_run_dir(command));
        super::out_dir::refuse_foreign(&out, "grid")?;
        Ok(out)
    }

    /// Progress bars on; `--no-wait` as given.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            no_wait: self.no_wait,
            progress: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_and_jobs_override_the_config() {
        let local = ExecutorSpec::default();
        let a = GridArgs {
            jobs: Some(3),
            ..GridArgs::default()
        };
        assert!(matches!(
            a.executor(&local).unwrap(),
            ExecutorSpec::Local { jobs: 3, .. }
        ));
        let a = GridArgs {
            executor: Some(ExecutorKind::Slurm),
            ..GridArgs::default()
        };
        let slurm = a.executor(&local).unwrap();
        assert!(slurm.is_slurm());
        let a = GridArgs {
            jobs: Some(2),
            ..GridArgs::default()
        };
        let e = format!("{:#}", a.executor(&slurm).unwrap_err());
        assert!(
            e.contains("--jobs applies to the local executor only"),
            "{e}"
        );
        assert_eq!(GridArgs::default().executor(&slurm).unwrap(), slurm);
    }
}
