//! `elastica cancel DIR`: cancel a Slurm run's queued and running cells (one `scancel` of
//! the jobs the run recorded); `elastica status` then lists them as cancelled and
//! `elastica resubmit` submits them again.

use crate::grid::slurm::cancel::{cancel, Cancelled};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The run directory (holding manifest.json and slurm/jobs.json).
    pub dir: PathBuf,
}

pub fn run(a: CancelArgs) -> Result<()> {
    let d = a.dir.display();
    match cancel(&a.dir)? {
        Cancelled::Nothing { jobs } => println!(
            "nothing to cancel: no task of jobs {} is pending or running any more; see \
             `elastica status {d}`",
            jobs.join(", ")
        ),
        Cancelled::Jobs { jobs, tasks } => {
            let what = if tasks > 0 {
                format!(" ({tasks} pending or running task(s))")
            } else {
                String::new()
            };
            println!(
                "cancelled jobs {}{what}; `elastica status {d}` lists their unfinished cells \
                 as cancelled, `elastica resubmit {d}` submits them again (finished cells are \
                 kept, training resumes from its last checkpoint)",
                jobs.join(", ")
            );
        }
    }
    Ok(())
}
