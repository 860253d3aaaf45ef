//! Submitting cells: the checks that the run can work on a cluster at all (absolute paths,
//! inputs visible, a shared-looking file system), the split of the cells into waves, and
//! one `sbatch --parsable` per wave.
//!
//! Dependencies: one job array per wave of `Manifest::stages` (restricted to the cells being
//! submitted), each wave after the first submitted with `--dependency=afterany:<previous
//! wave>`. Why `afterany` and not `aftercorr` or `afterok`:
//! - `aftercorr` pairs task I of one array with task I of the other; a cell's dependencies
//!   are other indices (and several n- cells share one n+ cell), so it cannot express the
//!   grid;
//! - `afterok` would leave the whole next wave pending forever (`DependencyNeverSatisfied`)
//!   when one cell of a wave fails, although most of its cells could run;
//! - with `afterany` the next wave starts when the previous one has ended, and `cell run`
//!   checks each cell's own dependencies before it loads anything: a cell whose dependency
//!   failed exits at once with that reason, is reported as skipped, and `elastica resubmit`
//!   submits it again together with its dependency.
//!
//! The price is a barrier between waves (an n- cell waits for every n+ cell, not only its
//! own), which costs little when the cells of a wave take similar time, as in the paper's
//! grids. The alternative, one array whose tasks wait for their inputs, would hold nodes
//! (and GPUs) idle while waiting.
//!
//! Within a wave, the cells of a kind with resources of its own (`[executor.resources]`) form
//! their own array with their own script; the next wave waits for every array of the
//! previous one (`afterany:<job>:<job>`).

use super::config::short_kind;
use super::config::SlurmConfig;
use super::record::{now_unix, write_config, JobRecord, Submission};
use super::script::{array_spec, render, script_file, ScriptSpec, SCRIPT_FILE};
use crate::grid::device::CellDevice;
use crate::grid::manifest::{resolve, Manifest};
use crate::grid::rundir::Grid;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cells `todo` (manifest indices) in waves: wave 0 needs none of the other cells in
/// `todo`, wave k only cells of earlier waves. Dependencies outside `todo` are taken as done.
pub fn waves(manifest: &Manifest, todo: &[usize]) -> Vec<Vec<usize>> {
    let deps = manifest.dep_indices();
    let n = manifest.len();
    let mut in_todo = vec![false; n];
    for &i in todo {
        if i < n {
            in_todo[i] = true;
        }
    }
    let mut level = vec![0usize; n];
    let mut out: Vec<Vec<usize>> = Vec::new();
    for i in 0..n {
        if !in_todo[i] {
            continue;
        }
        // Dependencies come earlier in the manifest, so their levels are final.
        level[i] = deps[i]
            .iter()
            .filter(|&&d| in_todo[d])
            .map(|&d| level[d] + 1)
            .max()
            .unwrap_or(0);
        if out.len() <= level[i] {
            out.resize(level[i] + 1, Vec::new());
        }
        out[level[i]].push(i);
    }
    out
}

/// The absolute run directory of `grid`, after checking that Slurm tasks on other nodes
/// can find everything the cells read.
pub fn check_paths(grid: &Grid) -> Result<PathBuf> {
    let run_dir = grid.run_dir().canonicalize().with_context(|| {
        format!(
            "cannot resolve the run directory {}",
            grid.run_dir().display()
        )
    })?;
    for c in &grid.manifest().cells {
        for (name, inp) in &c.inputs {
            let p = resolve(&run_dir, &inp.path);
            if !p.exists() {
                bail!(
                    "cell {}: input \"{name}\" ({}) does not exist; every input must exist \
                     before the grid is submitted",
                    c.id,
                    p.display()
                );
            }
        }
    }
    if let Some(fs) = local_only_fs(&run_dir) {
        eprintln!(
            "warning: the run directory {} is on a {fs} file system, which the other nodes \
             of a cluster cannot see; Slurm tasks there would not find the manifest. Use a \
             directory on a shared file system (home, project or scratch space).",
            run_dir.display()
        );
    }
    Ok(run_dir)
}

/// The type of the file system holding `path` when it is node-local memory (`tmpfs`,
/// `ramfs`), from /proc/mounts; `None` when shared or unknown.
fn local_only_fs(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mp = Path::new(f[1]);
        if path.starts_with(mp) {
            let len = f[1].len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, f[2].to_string()));
            }
        }
    }
    let (_, fs) = best?;
    matches!(fs.as_str(), "tmpfs" | "ramfs").then_some(fs)
}

/// The elastica binary the tasks will run: `[slurm] elastica`, or this process's own.
pub fn elastica_binary(cfg: &SlurmConfig) -> Result<PathBuf> {
    let p = match &cfg.elastica {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()
            .context("cannot find this elastica binary; set [slurm] elastica = \"/path\"")?,
    };
    if !p.is_absolute() || !p.is_file() {
        bail!(
            "the elastica binary {} does not exist; set [slurm] elastica to the absolute path \
             of a binary every node can run",
            p.display()
        );
    }
    Ok(p)
}

/// The cluster's `MaxArraySize` (array task ids must be below it), if scontrol tells.
fn max_array_size() -> Option<usize> {
    let out = Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.trim_start().starts_with("MaxArraySize"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

/// Write the script and the settings, then submit the cells `todo` wave by wave, recording
/// each job as soon as sbatch accepts it. The first wave waits for the jobs `after_jobs`
/// (tasks of an earlier submission still queued or running). Returns the new submissions.
pub fn submit(
    grid: &Grid,
    cfg: &SlurmConfig,
    todo: &[usize],
    after_jobs: &[String],
) -> Result<Vec<Submission>> {
    cfg.validate()?;
    let run_dir = check_paths(grid)?;
    let elastica = elastica_binary(cfg)?;
    let m = grid.manifest();
    let device = CellDevice::read(&run_dir)?;
    if let (Some(max), Some(&top)) = (max_array_size(), todo.iter().max()) {
        if top >= max {
            bail!(
                "the grid has cell index {top}, but this cluster's MaxArraySize is {max} \
                 (array task ids must be below it); split the grid into smaller runs or ask \
                 the administrators to raise MaxArraySize"
            );
        }
    }
    // One script for the cells with the common resources, one per kind with its own.
    let group_of = |i: usize| -> Option<String> {
        let kind = &m.cells[i].kind;
        cfg.has_own_resources(kind)
            .then(|| short_kind(kind).to_string())
    };
    let mut groups: Vec<Option<String>> = todo.iter().map(|&i| group_of(i)).collect();
    groups.sort();
    groups.dedup();
    let kind_cfg = |g: &Option<String>| match g {
        Some(k) => cfg.for_kind(k),
        None => cfg.clone(),
    };
    // Every group's device is checked before any script is written or job submitted.
    let args: Vec<Vec<String>> = groups
        .iter()
        .map(|g| device_args(&device, &kind_cfg(g), g.as_deref()))
        .collect::<Result<_>>()?;
    for (g, args) in groups.iter().zip(&args) {
        let kcfg = kind_cfg(g);
        let script = render(
            &kcfg,
            &ScriptSpec {
                run_dir: &run_dir,
                elastica: &elastica,
                experiment: &m.experiment,
                manifest_hash: &m.hash,
                cells: m.len(),
                device: args,
            },
        )?;
        let path = run_dir.join(script_file(g.as_deref()));
        crate::util::fsx::atomic_write(&path, script.as_bytes())?;
    }
    write_config(&run_dir, cfg)?;
    std::fs::create_dir_all(run_dir.join("logs"))
        .with_context(|| format!("cannot create {}/logs", run_dir.display()))?;

    let mut record = JobRecord::read(&run_dir)?;
    let mut made = Vec::new();
    let mut after: Option<String> = (!after_jobs.is_empty()).then(|| after_jobs.join(":"));
    for (w, wave) in waves(m, todo).into_iter().enumerate() {
        let mut wave_jobs = Vec::new();
        for g in &groups {
            let part: Vec<usize> = wave
                .iter()
                .copied()
                .filter(|&i| &group_of(i) == g)
                .collect();
            if part.is_empty() {
                continue;
            }
            let script_path = run_dir.join(script_file(g.as_deref()));
            let sub = submit_array(
                &run_dir,
                &script_path,
                (w, &part),
                cfg.max_parallel,
                after.as_deref(),
                &m.hash,
                !made.is_empty(),
            )?;
            record.push(&run_dir, sub.clone())?;
            wave_jobs.push(sub.job_id.clone());
            made.push(sub);
        }
        after = Some(wave_jobs.join(":"));
    }
    Ok(made)
}

/// `cell run`'s device flags for the cells of `group` (a kind with resources of its own, or
/// `None`), whose tasks get `kcfg`'s resources: a task with GPUs runs on `cuda` (its first
/// GPU), one without runs on the run's device, which must then not be a GPU. A GPU needs a
/// build with the torch feature.
fn device_args(
    device: &CellDevice,
    kcfg: &SlurmConfig,
    group: Option<&str>,
) -> Result<Vec<String>> {
    let section = match group {
        Some(k) => format!("[executor.resources.{k}] (or [slurm])"),
        None => "[slurm]".to_string(),
    };
    if kcfg.gpus > 0 {
        if !cfg!(feature = "torch") {
            bail!(
                "{section} gpus = {} asks for GPUs, but {}",
                kcfg.gpus,
                crate::backend::BUILD_HINT
            );
        }
        return Ok(device.on("cuda").args());
    }
    if device.is_gpu() {
        bail!(
            "the cells compute on {} (the config's device), but {section} gpus = 0 gives \
             their tasks no GPU; set gpus = 1",
            device.device
        );
    }
    Ok(device.args())
}

/// One `sbatch --parsable` of `script_path` over the cells `wave.1` (of wave `wave.0`),
/// after the jobs `after` (colon-separated) when given. `earlier`: whether other arrays
/// were submitted before this one (for the error message).
fn submit_array(
    run_dir: &Path,
    script_path: &Path,
    (w, wave): (usize, &[usize]),
    max_parallel: usize,
    after: Option<&str>,
    manifest_hash: &str,
    earlier: bool,
) -> Result<Submission> {
    let array = array_spec(wave, max_parallel);
    let mut cmd = Command::new("sbatch");
    cmd.arg("--parsable").arg(format!("--array={array}"));
    if let Some(j) = after {
        cmd.arg(format!("--dependency=afterany:{j}"));
    }
    cmd.arg(script_path).current_dir(run_dir);
    let out = cmd
        .output()
        .context("cannot run sbatch (is Slurm installed and on PATH?)")?;
    if !out.status.success() {
        let mut msg = format!(
            "sbatch refused wave {w} (cells {array}) of {}: {}",
            run_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if earlier {
            msg += "\nthe earlier waves were submitted; after fixing the cause, `elastica \
                    resubmit` submits the rest";
        }
        bail!("{msg}\n(the script is {})", script_path.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let job_id = stdout
        .trim()
        .split(';')
        .next()
        .filter(|j| !j.is_empty() && j.chars().all(|c| c.is_ascii_digit()))
        .with_context(|| format!("sbatch answered {stdout:?}, not a job id"))?
        .to_string();
    eprintln!(
        "submitted wave {w}: job {job_id}, {} cell(s) (--array={array}{}{})",
        wave.len(),
        after
            .map(|j| format!(", after job {j}"))
            .unwrap_or_default(),
        if script_path.ends_with(SCRIPT_FILE) {
            String::new()
        } else {
            format!(", script {}", script_path.display())
        }
    );
    Ok(Submission {
        job_id,
        indices: wave.to_vec(),
        array,
        after: after.map(str::to_string),
        manifest_hash: manifest_hash.to_string(),
        submitted_unix: now_unix(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::manifest::CellSpec;

    fn cell(id: &str, deps: &[&str]) -> CellSpec {
        crate::grid::registry::testing::echo(id, deps, serde_json::Value::Null)
    }

    #[test]
    fn waves_of_the_rebound_shape_and_of_a_resubmission() {
        // base, align4, perturb4.0, perturb4.4, align8, perturb8.0, perturb8.4
        let m = Manifest::new(
            "t",
            vec![
                cell("base", &[]),
                cell("a4", &[]),
                cell("p4n0", &["a4"]),
                cell("p4n4", &["a4"]),
                cell("a8", &[]),
                cell("p8n0", &["a8"]),
                cell("p8n4", &["a8"]),
            ],
        )
        .unwrap();
        let all: Vec<usize> = (0..7).collect();
        assert_eq!(waves(&m, &all), vec![vec![0, 1, 4], vec![2, 3, 5, 6]]);
        // a4 done: its dependents go in the first wave.
        assert_eq!(waves(&m, &[2, 5, 6, 4]), vec![vec![2, 4], vec![5, 6]]);
        assert!(waves(&m, &[]).is_empty());
    }

    #[test]
    fn tasks_with_gpus_run_on_cuda_and_a_gpu_needs_the_torch_build() {
        let cpu = CellDevice {
            device: "cpu".into(),
            backend: None,
            dtype: Some("f32".into()),
        };
        let none = SlurmConfig::default();
        assert_eq!(
            device_args(&cpu, &none, None).unwrap(),
            ["--device", "cpu", "--dtype", "f32"]
        );
        let gpu = SlurmConfig {
            gpus: 1,
            ..SlurmConfig::default()
        };
        let got = device_args(&cpu.on("cuda:3"), &gpu, Some("align"));
        if cfg!(feature = "torch") {
            // The job's own GPU is its cuda:0, whatever the config named.
            assert_eq!(got.unwrap(), ["--device", "cuda", "--dtype", "f32"]);
        } else {
            let e = got.unwrap_err().to_string();
            assert!(
                e.contains("[executor.resources.align] (or [slurm]) gpus = 1")
                    && e.contains("--features torch"),
                "{e}"
            );
        }
        let e = device_args(&cpu.on("cuda"), &none, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[slurm] gpus = 0") && e.contains("no GPU"),
            "{e}"
        );
    }

    #[test]
    fn missing_inputs_and_binaries_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::grid::registry::testing::echo_reading("x", "/nonexistent/data.jsonl");
        let g = Grid::plan(dir.path(), Manifest::new("t", vec![c]).unwrap()).unwrap();
        let e = format!("{:#}", check_paths(&g).unwrap_err());
        assert!(e.contains("/nonexistent/data.jsonl"), "{e}");
        let cfg = SlurmConfig {
            elastica: Some("/nonexistent/elastica".into()),
            ..SlurmConfig::default()
        };
        let e = format!("{:#}", elastica_binary(&cfg).unwrap_err());
        assert!(e.contains("/nonexistent/elastica"), "{e}");
    }
}
