//! What a run directory remembers about its Slurm submissions: `slurm/jobs.json` (one entry
//! per submitted array: job id, the manifest indices it covers, its dependency),
//! `slurm/slurm.toml` (the `[slurm]` settings used, so `elastica resubmit` asks for the same
//! resources) and `slurm/cancelled.json` (the jobs `elastica cancel` cancelled, so `status`
//! can say "cancelled" rather than "failed"). The first two are written atomically by the
//! submitting process only, the third by `cancel` only; tasks never write them.

use super::config::SlurmConfig;
use crate::util::fsx::{atomic_write, atomic_write_json};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const JOBS_FILE: &str = "slurm/jobs.json";
pub const CONFIG_FILE: &str = "slurm/slurm.toml";
pub const CANCELLED_FILE: &str = "slurm/cancelled.json";

/// One `sbatch` call: a job array over some cells.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The array's job id (`sbatch --parsable`, without a cluster suffix).
    pub job_id: String,
    /// Manifest indices = array task ids.
    pub indices: Vec<usize>,
    /// The `--array` value submitted.
    pub array: String,
    /// The job this array waits for (`--dependency=afterany:<id>`), if any.
    pub after: Option<String>,
    /// The manifest hash the tasks check.
    pub manifest_hash: String,
    pub submitted_unix: u64,
}

/// `slurm/jobs.json`: every submission of the run, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub submissions: Vec<Submission>,
    /// Jobs cancelled with `elastica cancel` (from `slurm/cancelled.json`, not jobs.json:
    /// the two files have different writers).
    #[serde(skip)]
    pub cancelled: Vec<Cancellation>,
}

/// One `elastica cancel`: the jobs it cancelled and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancellation {
    pub job_ids: Vec<String>,
    pub cancelled_unix: u64,
}

impl JobRecord {
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(JOBS_FILE)
    }

    /// The record of `run_dir`, empty if nothing was submitted yet.
    pub fn read(run_dir: &Path) -> Result<JobRecord> {
        let p = Self::path(run_dir);
        if !p.exists() {
            return Ok(JobRecord::default());
        }
        let mut record: JobRecord = read_json(&p)?;
        let c = run_dir.join(CANCELLED_FILE);
        if c.exists() {
            record.cancelled = read_json(&c)?;
        }
        Ok(record)
    }

    /// Whether job `job_id` was cancelled with `elastica cancel`.
    pub fn is_cancelled(&self, job_id: &str) -> bool {
        self.cancelled
            .iter()
            .any(|c| c.job_ids.iter().any(|j| j == job_id))
    }

    /// Record that `job_ids` were cancelled (rewrites `slurm/cancelled.json`).
    pub fn push_cancelled(&mut self, run_dir: &Path, job_ids: Vec<String>) -> Result<()> {
        self.cancelled.push(Cancellation {
            job_ids,
            cancelled_unix: now_unix(),
        });
        atomic_write_json(&run_dir.join(CANCELLED_FILE), &self.cancelled)
    }

    /// Append a submission and rewrite the file.
    pub fn push(&mut self, run_dir: &Path, s: Submission) -> Result<()> {
        self.submissions.push(s);
        atomic_write_json(&Self::path(run_dir), self)
    }

    pub fn is_empty(&self) -> bool {
        self.submissions.is_empty()
    }

    /// Every job id, oldest first.
    pub fn job_ids(&self) -> Vec<String> {
        self.submissions.iter().map(|s| s.job_id.clone()).collect()
    }

    /// The job of the newest submission that covered cell `index` of the manifest with hash
    /// `manifest_hash`. Submissions for another manifest (the run was re-planned since, and
    /// indices may have moved) are ignored; their tasks refuse to run anyway.
    pub fn latest_job(&self, index: usize, manifest_hash: &str) -> Option<&str> {
        self.submissions
            .iter()
            .rev()
            .find(|s| s.manifest_hash == manifest_hash && s.indices.contains(&index))
            .map(|s| s.job_id.as_str())
    }
}

/// Save the settings used for a submission.
pub fn write_config(run_dir: &Path, cfg: &SlurmConfig) -> Result<()> {
    let text = toml::to_string(cfg).context("cannot serialise the [slurm] settings")?;
    atomic_write(&run_dir.join(CONFIG_FILE), text.as_bytes())
}

/// The settings of the last submission of `run_dir`.
pub fn read_config(run_dir: &Path) -> Result<SlurmConfig> {
    let p = run_dir.join(CONFIG_FILE);
    if !p.exists() {
        bail!(
            "{} was never submitted to Slurm ({} is missing); run the experiment with \
             --executor slurm first",
            run_dir.display(),
            CONFIG_FILE
        );
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let cfg: SlurmConfig = toml::from_str(&text).with_context(|| format!("in {}", p.display()))?;
    cfg.validate()
        .with_context(|| format!("in {}", p.display()))?;
    Ok(cfg)
}

/// A JSON file that elastica wrote, with an error naming it.
fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an elastica Slurm record; it is written by elastica, do not edit it",
            p.display()
        )
    })
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_finds_the_latest_job() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = JobRecord::read(dir.path()).unwrap();
        assert!(r.is_empty());
        let sub = |id: &str, idx: &[usize]| Submission {
            job_id: id.into(),
            indices: idx.to_vec(),
            array: String::new(),
            after: None,
            manifest_hash: "h".into(),
            submitted_unix: 1,
        };
        r.push(dir.path(), sub("10", &[0, 1, 4])).unwrap();
        r.push(dir.path(), sub("11", &[2, 3])).unwrap();
        r.push(dir.path(), sub("12", &[4])).unwrap();
        let back = JobRecord::read(dir.path()).unwrap();
        assert_eq!(back, r);
        assert!(!back.is_cancelled("11"));
        let mut c = back.clone();
        c.push_cancelled(dir.path(), vec!["11".into(), "12".into()])
            .unwrap();
        let back = JobRecord::read(dir.path()).unwrap();
        assert!(back.is_cancelled("11") && back.is_cancelled("12") && !back.is_cancelled("10"));
        assert_eq!(back.submissions, r.submissions);
        assert_eq!(back.latest_job(4, "h"), Some("12"));
        assert_eq!(back.latest_job(0, "h"), Some("10"));
        assert_eq!(back.latest_job(9, "h"), None);
        // A re-planned manifest does not inherit the old jobs.
        assert_eq!(back.latest_job(4, "other"), None);
        let e = format!("{:#}", read_config(dir.path()).unwrap_err());
        assert!(e.contains("never submitted"), "{e}");
        let cfg = SlurmConfig {
            partition: Some("gpu".into()),
            ..SlurmConfig::default()
        };
        write_config(dir.path(), &cfg).unwrap();
        assert_eq!(read_config(dir.path()).unwrap(), cfg);
    }
}
