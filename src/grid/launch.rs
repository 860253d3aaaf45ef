//! Launching a grid: the executor an [`ExecutorSpec`] names, checked and set up with the
//! config's `[slurm]` section and the kinds of cell the grid holds.

use super::cell::Kinds;
use super::config::{ExecutorSpec, RunOptions};
use super::executor::Executor;
use super::local::LocalExecutor;
use super::slurm::{SlurmConfig, SlurmExecutor};
use anyhow::{bail, Result};

/// Build the executor a spec names; `slurm` is the config's `[slurm]` section, `kinds` the
/// kinds of cell the grid holds (for the local executor to run, and for the names of
/// `[executor.resources.<kind>]` to be checked against).
pub fn launch(
    spec: &ExecutorSpec,
    slurm: &SlurmConfig,
    opts: RunOptions,
    kinds: &Kinds,
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
            cfg.check_kinds(kinds)?;
            warn_threads(&cfg);
            Box::new(SlurmExecutor {
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
                kinds: kinds.to_vec(),
            })
        }
    })
}

/// Under Slurm each cell runs with its task's CPUs (`--threads` of the sbatch script is
/// `cpus_per_task`, or the kind's `cpus`); a different thread count asked of the submitting
/// command (`--threads N`, `threads = N`) does not reach the cells, so say so.
fn warn_threads(cfg: &SlurmConfig) {
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
