//! The sbatch script of a run directory (`slurm/cells.sbatch`) and the `--array` index
//! lists. Array task ids are manifest indices, so task `I` runs
//! `elastica cell run --manifest <run>/manifest.json --index I` and logs to
//! `logs/cell-I.out`; one script serves every wave and every resubmission, which pass their
//! own `--array` (and `--dependency`) on the sbatch command line.
//!
//! Every path in the script is absolute: the tasks start on other nodes, in another working
//! directory, and see the run directory only through a shared file system.
//!
//! The cells run with the run's device settings (`grid::device`); a script whose tasks ask
//! for GPUs (`gpus >= 1`) runs them with `--device cuda`: each job sees the GPUs it was
//! given, the first as `cuda:0`.
//!
//! A kind of cell with resources of its own (`[executor.resources.<kind>]`) gets its own
//! script, `slurm/cells-<kind>.sbatch`, the same but for its `#SBATCH` resource lines and
//! `--threads`.

use super::config::SlurmConfig;
use anyhow::{bail, Result};
use std::path::Path;

/// The script, relative to the run directory.
pub const SCRIPT_FILE: &str = "slurm/cells.sbatch";

/// The script of the cells of `kind` (short name) when that kind has resources of its own
/// (`[executor.resources.<kind>]`), else the common one; relative to the run directory.
pub fn script_file(kind: Option<&str>) -> String {
    match kind {
        Some(k) => format!("slurm/cells-{k}.sbatch"),
        None => SCRIPT_FILE.to_string(),
    }
}
/// Task logs, relative to the run directory (`%a` is the array index = manifest index).
pub const LOG_PATTERN: &str = "logs/cell-%a.out";

/// The log of cell `index` (what `%a` in [`LOG_PATTERN`] becomes).
pub fn log_path(run_dir: &Path, index: usize) -> std::path::PathBuf {
    run_dir.join(LOG_PATTERN.replace("%a", &index.to_string()))
}

/// What the script needs to know about the grid.
pub struct ScriptSpec<'a> {
    /// Absolute run directory.
    pub run_dir: &'a Path,
    /// Absolute path of the elastica binary on the nodes.
    pub elastica: &'a Path,
    /// The experiment (`rebound`, ...), for the default job name.
    pub experiment: &'a str,
    /// The manifest hash the tasks insist on.
    pub manifest_hash: &'a str,
    /// Number of cells (the default `--array` covers them all).
    pub cells: usize,
    /// Where the cells compute: `cell run`'s `--device` (and `--backend`, `--dtype`) flags.
    pub device: &'a [String],
}

/// The text of the sbatch script.
pub fn render(cfg: &SlurmConfig, spec: &ScriptSpec<'_>) -> Result<String> {
    for (what, p) in [
        ("run directory", spec.run_dir),
        ("elastica binary", spec.elastica),
    ] {
        if !p.is_absolute() {
            bail!(
                "the {what} {} is not an absolute path; Slurm tasks start in another \
                 directory on another node",
                p.display()
            );
        }
        if p.to_string_lossy().contains(['\n', '\r', '\'']) {
            bail!(
                "the {what} {:?} contains a newline or a quote, which the sbatch script \
                 cannot carry; use a plainer path",
                p.display()
            );
        }
    }
    if let Some(a) = spec.device.iter().find(|a| {
        a.is_empty()
            || !a
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.'))
    }) {
        bail!("the device setting {a:?} cannot go on the cell's command line; use cpu, cuda or cuda:N");
    }
    let run = spec.run_dir.display();
    let job_name = cfg
        .job_name
        .clone()
        .unwrap_or_else(|| format!("elastica-{}", spec.experiment));
    let mut s = String::new();
    s += "#!/bin/bash\n";
    s += &format!(
        "# Written by elastica for the grid in {run} (manifest {}).\n",
        spec.manifest_hash
    );
    s += "# Array task ids are manifest indices. elastica submits this script once per wave\n";
    s += "# of dependent cells, with its own --array (and --dependency=afterany:<previous wave>)\n";
    s += "# on the sbatch command line; `elastica resubmit <run dir>` does the same for the\n";
    s += "# cells that are missing.\n";
    s += &format!("#SBATCH --job-name={job_name}\n");
    s += &format!(
        "#SBATCH --array={}\n",
        array_spec(&(0..spec.cells).collect::<Vec<_>>(), cfg.max_parallel)
    );
    s += &format!("#SBATCH --output={run}/{LOG_PATTERN}\n");
    s += "#SBATCH --open-mode=append\n";
    s += &format!("#SBATCH --chdir={run}\n");
    // A task that Slurm requeues (preemption, node failure) runs again and resumes from the
    // cell's last checkpoint.
    s += "#SBATCH --requeue\n";
    for o in cfg.resource_options() {
        s += &format!("#SBATCH {o}\n");
    }
    s += "\nset -euo pipefail\n";
    s += "echo \"[elastica] cell ${SLURM_ARRAY_TASK_ID} on $(hostname) (job ${SLURM_JOB_ID}, \
          restart ${SLURM_RESTART_COUNT:-0}) at $(date -u +%FT%TZ)\"\n";
    for line in &cfg.setup {
        s += line;
        s += "\n";
    }
    s += &format!(
        "exec '{}' cell run --manifest '{run}/manifest.json' --index \"${{SLURM_ARRAY_TASK_ID}}\" \
         --manifest-hash {} --threads {}{}\n",
        spec.elastica.display(),
        spec.manifest_hash,
        cfg.cpus_per_task,
        spec.device
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    Ok(s)
}

/// `--array` value for these indices: ranges joined by commas, then `%P` when `max_parallel`
/// is set. `[0, 1, 2, 5, 7, 8]` -> `0-2,5,7-8`.
pub fn array_spec(indices: &[usize], max_parallel: usize) -> String {
    let mut v = indices.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    let mut s = parts.join(",");
    if max_parallel > 0 {
        s += &format!("%{max_parallel}");
    }
    s
}

/// Parse an array index list as Slurm prints it (`0-2,5`, `[3-6%2]`, `7`) into indices.
pub fn parse_indices(text: &str) -> Option<Vec<usize>> {
    let t = text.trim().trim_start_matches('[').trim_end_matches(']');
    let t = t.split('%').next()?;
    let mut out = Vec::new();
    for part in t.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_specs_round_trip() {
        assert_eq!(array_spec(&[0, 1, 2, 5, 7, 8], 0), "0-2,5,7-8");
        assert_eq!(array_spec(&[4], 2), "4%2");
        assert_eq!(array_spec(&[3, 1, 2, 2], 0), "1-3");
        assert_eq!(parse_indices("0-2,5,7-8").unwrap(), [0, 1, 2, 5, 7, 8]);
        assert_eq!(parse_indices("[3-5%2]").unwrap(), [3, 4, 5]);
        assert_eq!(parse_indices("7").unwrap(), [7]);
        assert!(parse_indices("5-3").is_none());
        assert!(parse_indices("x").is_none());
    }

    #[test]
    fn script_has_absolute_paths_resources_and_the_hash() {
        let cfg: SlurmConfig = toml::from_str(
            "partition = \"gpu\"\ngpus = 1\ncpus_per_task = 4\nmax_parallel = 3\n\
             setup = [\"module load cuda\"]",
        )
        .unwrap();
        let spec = ScriptSpec {
            run_dir: Path::new("/shared/runs/r1"),
            elastica: Path::new("/shared/bin/elastica"),
            experiment: "rebound",
            manifest_hash: "abc123",
            cells: 7,
            device: &["--device".into(), "cuda".into()],
        };
        let s = render(&cfg, &spec).unwrap();
        for want in [
            "#SBATCH --array=0-6%3\n",
            "#SBATCH --output=/shared/runs/r1/logs/cell-%a.out\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --gres=gpu:1\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --requeue\n",
            "#SBATCH --job-name=elastica-rebound\n",
            "module load cuda\nexec '/shared/bin/elastica' cell run --manifest \
             '/shared/runs/r1/manifest.json' --index \"${SLURM_ARRAY_TASK_ID}\" \
             --manifest-hash abc123 --threads 4 --device cuda\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // #SBATCH lines must come before the first command.
        let first_cmd = s.find("set -euo").unwrap();
        assert!(s.rfind("#SBATCH").unwrap() < first_cmd);
        // A kind with resources of its own: its script asks for them and passes its CPUs on.
        let mut own = cfg.clone();
        own.resources.insert(
            "align".into(),
            crate::grid::slurm::config::KindResources {
                time: Some("08:00:00".into()),
                cpus: Some(6),
                ..Default::default()
            },
        );
        let s = render(&own.for_kind("rebound.align"), &spec).unwrap();
        assert!(s.contains("#SBATCH --time=08:00:00\n"), "{s}");
        assert!(s.contains("#SBATCH --cpus-per-task=6\n"), "{s}");
        assert!(s.contains("--threads 6 --device cuda\n"), "{s}");
        assert_eq!(script_file(Some("align")), "slurm/cells-align.sbatch");
        assert_eq!(script_file(None), SCRIPT_FILE);
        let rel = ScriptSpec {
            run_dir: Path::new("runs/r1"),
            ..spec
        };
        let e = format!("{:#}", render(&cfg, &rel).unwrap_err());
        assert!(e.contains("not an absolute path"), "{e}");
        // Device settings are plain tokens: nothing else reaches the shell line.
        let bad = ["--device".to_string(), "cuda; rm -rf /".to_string()];
        let e = format!(
            "{:#}",
            render(
                &cfg,
                &ScriptSpec {
                    device: &bad,
                    ..spec
                }
            )
            .unwrap_err()
        );
        assert!(e.contains("cannot go on the cell's command line"), "{e}");
    }
}
