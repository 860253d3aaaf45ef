//! Launching a grid: the executor an [`ExecutorSpec`] names, checked and set up with the
//! config's `[slurm]` section and the kinds of cell the grid holds.

use super::cell::Kinds;
use super::config::{ExecutorSpec, RunOptions};
use super::device::is_gpu;
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
        ExecutorSpec::Local { jobs, devices, .. } => {
            if *jobs == 0 {
                bail!("executor.jobs must be at least 1");
            }
            check_devices(*jobs, devices)?;
            Box::new(LocalExecutor {
                jobs: *jobs,
                progress,
                memory_budget: None,
                kinds: kinds.to_vec(),
                devices: devices.clone(),
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

/// The local executor's device list: one cell per device, so `jobs` (when set above 1) must
/// be their number, and a GPU is listed once (`cuda` is `cuda:0`). The CPU may be listed
/// several times: its cells share its cores, as with `jobs`.
pub fn check_devices(jobs: usize, devices: &[String]) -> Result<()> {
    if devices.is_empty() {
        return Ok(());
    }
    if jobs > 1 && jobs != devices.len() {
        bail!(
            "jobs = {jobs} but {} devices are listed ({}): the local executor runs one cell \
             per device, so leave jobs out or make it the number of devices",
            devices.len(),
            devices.join(",")
        );
    }
    let mut gpus: Vec<String> = devices
        .iter()
        .map(|d| d.trim())
        .filter(|d| is_gpu(d))
        .map(|d| match d {
            "cuda" | "gpu" => "cuda:0".to_string(),
            d => d.to_string(),
        })
        .collect();
    gpus.sort();
    if let Some(w) = gpus.windows(2).find(|w| w[0] == w[1]) {
        bail!(
            "{} is listed twice in the devices ({}): two cells would share one GPU; list \
             each GPU once",
            w[0],
            devices.join(",")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_is_listed_once_and_jobs_match_the_devices() {
        let v = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        check_devices(1, &v("cuda:0,cuda:1")).unwrap();
        check_devices(2, &v("cpu,cpu")).unwrap();
        check_devices(3, &[]).unwrap();
        let e = check_devices(1, &v("cuda,cuda:0")).unwrap_err().to_string();
        assert!(e.contains("cuda:0 is listed twice"), "{e}");
        let e = check_devices(3, &v("cuda:0,cuda:1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs = 3") && e.contains("2 devices"), "{e}");
    }
}
