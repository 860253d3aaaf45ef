//! `elastica cancel DIR`: cancel the Slurm jobs of a run that still hold pending or running
//! tasks, with one `scancel` of the job ids the run recorded in `slurm/jobs.json`, and
//! remember the cancellation in `slurm/cancelled.json`, so that `elastica status` lists the
//! cells as cancelled (not failed) and `elastica resubmit` submits them again. Finished cells
//! keep their results; a cancelled cell resumes from its last checkpoint when resubmitted.

use super::poll;
use super::record::{JobRecord, JOBS_FILE};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// Every task of the recorded jobs had already ended.
    Nothing { jobs: Vec<String> },
    /// `scancel` was run on these jobs.
    Jobs { jobs: Vec<String>, tasks: usize },
}

/// Cancel the jobs of the run in `run_dir` that still hold tasks (see the module doc).
pub fn cancel(run_dir: &Path) -> Result<Cancelled> {
    let mut record = JobRecord::read(run_dir)?;
    if record.is_empty() {
        bail!(
            "nothing to cancel: {} has no {JOBS_FILE}, so it was never submitted to Slurm \
             (a run of the local executor is stopped with Ctrl-C)",
            run_dir.display()
        );
    }
    let all = record.job_ids();
    // Ask the scheduler which jobs still hold tasks; without an answer every recorded job is
    // cancelled (scancel ignores jobs that have ended).
    let (jobs, tasks) = match poll::query(&all) {
        Ok(snap) => {
            let mut active: Vec<String> = all
                .iter()
                .filter(|j| {
                    snap.tasks.iter().any(|((job, _), st)| {
                        job == *j
                            && matches!(st, poll::TaskState::Pending(_) | poll::TaskState::Running)
                    })
                })
                .cloned()
                .collect();
            active.dedup();
            let tasks = snap
                .tasks
                .values()
                .filter(|st| matches!(st, poll::TaskState::Pending(_) | poll::TaskState::Running))
                .count();
            if active.is_empty() {
                return Ok(Cancelled::Nothing { jobs: all });
            }
            (active, tasks)
        }
        Err(e) => {
            eprintln!(
                "warning: cannot ask Slurm which jobs still run ({e:#}); cancelling every job \
                 the run recorded"
            );
            (all, 0)
        }
    };
    let out = match Command::new("scancel").args(&jobs).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "scancel is not on PATH: run `elastica cancel` where the Slurm client is installed \
             (a login node), or cancel by hand with `scancel {}`",
            jobs.join(" ")
        ),
        Err(e) => return Err(e).context("cannot run scancel"),
    };
    if !out.status.success() {
        bail!(
            "scancel {} failed ({}): {}",
            jobs.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    record.push_cancelled(run_dir, jobs.clone())?;
    Ok(Cancelled::Jobs { jobs, tasks })
}
