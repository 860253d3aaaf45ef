//! The `[slurm]` section of an experiment config: the resources every cell's array task asks
//! for, and how the submitting process waits. Every key is optional; an empty section asks
//! the cluster for its defaults (default partition, one CPU, its default time and memory).
//!
//! ```toml
//! [slurm]
//! partition = "gpu"            # --partition
//! account = "my-lab"           # --account
//! qos = "normal"               # --qos
//! time = "04:00:00"            # --time per cell (a cell that runs out is listed as failed)
//! cpus_per_task = 8            # --cpus-per-task; also the cell's tensor threads
//! mem = "64G"                  # --mem
//! gpus = 1                     # --gres=gpu:1 (gpu_type = "a100" gives --gres=gpu:a100:1)
//! max_parallel = 16            # --array=...%16: at most 16 cells of a wave at once
//! extra = ["--constraint=a100", "--mail-type=FAIL"]   # more #SBATCH lines
//! setup = ["module load cuda/12.4", "source ~/venv/bin/activate"]   # shell lines before the cell
//! elastica = "/shared/bin/elastica"   # the binary the nodes run (default: this one)
//! poll_seconds = 30            # how often the waiting process asks the scheduler
//! ```
//!
//! Cells of different kinds need different resources (an align cell trains longest, a
//! perturb cell holds the model, its base and the scorer). `[executor.resources.<kind>]`
//! (kind: the part after the dot of a cell kind, `align`, `perturb`, `base`, `theta`,
//! `generate`, `pair`) sets `time`, `mem`, `cpus` and `gpus` for that kind's cells; what it
//! leaves out comes from `[slurm]`. Such cells are submitted with their own script,
//! `slurm/cells-<kind>.sbatch`. The experiment copies the table into
//! [`SlurmConfig::resources`], so `slurm/slurm.toml` records it for `resubmit`.

use crate::grid::cell::Kinds;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Resources of one kind of cell (`[executor.resources.<kind>]`); unset keys fall back to
/// the `[slurm]` section.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindResources {
    /// `--time` of one cell of this kind.
    pub time: Option<String>,
    /// `--mem` per cell of this kind.
    pub mem: Option<String>,
    /// `--cpus-per-task` (and the cell's tensor threads).
    pub cpus: Option<usize>,
    /// GPUs per cell (`--gres=gpu:N`, with `[slurm] gpu_type` when set); 0 = none.
    pub gpus: Option<usize>,
}

/// The short name of a cell kind, as `[executor.resources.<kind>]` spells it
/// (`rebound.align` -> `align`).
pub fn short_kind(kind: &str) -> &str {
    kind.rsplit('.').next().unwrap_or(kind)
}

/// `#SBATCH` options elastica sets itself; `extra` may not repeat them.
pub const RESERVED_OPTIONS: &[&str] = &[
    "--array",
    "-a",
    "--output",
    "-o",
    "--error",
    "-e",
    "--dependency",
    "-d",
    "--chdir",
    "-D",
    "--parsable",
    "--open-mode",
    "--job-name",
    "-J",
];

/// The `[slurm]` section.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`. Unset: the cluster's default partition.
    pub partition: Option<String>,
    /// `--account` charged for the jobs.
    pub account: Option<String>,
    /// `--qos`.
    pub qos: Option<String>,
    /// `--time` of one cell: `MM`, `HH:MM:SS` or `D-HH:MM:SS`. Unset: the partition's
    /// default.
    pub time: Option<String>,
    /// `--cpus-per-task`, also passed to the cell as `--threads`. Default 1.
    pub cpus_per_task: usize,
    /// `--mem` per cell, e.g. `"16G"`. Unset: the partition's default.
    pub mem: Option<String>,
    /// GPUs per cell (`--gres=gpu:N`); 0 = none. Default 0.
    pub gpus: usize,
    /// GPU type in the gres request (`--gres=gpu:TYPE:N`), e.g. `"a100"`.
    pub gpu_type: Option<String>,
    /// At most this many cells of one array run at once (`%P`); 0 = no limit. Default 0.
    pub max_parallel: usize,
    /// Extra `#SBATCH` options, one per entry (`"--constraint=a100"`).
    pub extra: Vec<String>,
    /// Shell lines run in every task before the cell (`module load ...`).
    pub setup: Vec<String>,
    /// Absolute path of the elastica binary the tasks run; it must be visible on every
    /// node. Default: the binary that submits.
    pub elastica: Option<String>,
    /// Job name (`--job-name`). Default: `elastica-<experiment>`.
    pub job_name: Option<String>,
    /// Seconds between two queries of the scheduler while waiting. Default 30.
    pub poll_seconds: f64,
    /// Per-kind resources, from the config's `[executor.resources.<kind>]` (see the module
    /// doc); empty = every cell asks for the resources above.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, KindResources>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: None,
            account: None,
            qos: None,
            time: None,
            cpus_per_task: 1,
            mem: None,
            gpus: 0,
            gpu_type: None,
            max_parallel: 0,
            extra: Vec::new(),
            setup: Vec::new(),
            elastica: None,
            job_name: None,
            poll_seconds: 30.0,
            resources: BTreeMap::new(),
        }
    }
}

impl SlurmConfig {
    /// Check every value before anything is written or submitted; errors name the key.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("gpu_type", &self.gpu_type),
            ("job_name", &self.job_name),
        ] {
            if let Some(v) = v {
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_graphic() && c != '#') {
                    bail!("[slurm] {key} = {v:?}: use a non-empty name without spaces or '#'");
                }
            }
        }
        check_time("[slurm] time", &self.time)?;
        check_mem("[slurm] mem", &self.mem)?;
        if self.cpus_per_task == 0 {
            bail!("[slurm] cpus_per_task must be at least 1");
        }
        for (kind, r) in &self.resources {
            let at = format!("[executor.resources.{kind}]");
            check_time(&format!("{at} time"), &r.time)?;
            check_mem(&format!("{at} mem"), &r.mem)?;
            if r.cpus == Some(0) {
                bail!("{at} cpus must be at least 1");
            }
        }
        let any_gpus = self.gpus > 0 || self.resources.values().any(|r| r.gpus > Some(0));
        if self.gpu_type.is_some() && !any_gpus {
            bail!("[slurm] gpu_type is set but gpus = 0; set gpus = 1 (or more)");
        }
        if !(self.poll_seconds > 0.0 && self.poll_seconds.is_finite()) {
            bail!(
                "[slurm] poll_seconds must be positive, got {}",
                self.poll_seconds
            );
        }
        for (i, e) in self.extra.iter().enumerate() {
            let opt = extra_option(e);
            if !opt.starts_with('-') || opt.contains(['\n', '\r']) {
                bail!(
                    "[slurm] extra[{i}] = {e:?}: give one sbatch option per entry, like \
                     \"--constraint=a100\""
                );
            }
            let name = opt.split(['=', ' ']).next().unwrap_or("");
            if RESERVED_OPTIONS.contains(&name) {
                bail!(
                    "[slurm] extra[{i}] = {e:?}: elastica sets {name} itself (logs go to \
                     logs/cell-<index>.out, arrays and dependencies are per wave); remove it"
                );
            }
        }
        for (i, s) in self.setup.iter().enumerate() {
            if s.contains('\0') {
                bail!("[slurm] setup[{i}] contains a NUL byte");
            }
        }
        if let Some(b) = &self.elastica {
            if !std::path::Path::new(b).is_absolute() {
                bail!(
                    "[slurm] elastica = {b:?} must be an absolute path on a file system every \
                     node sees"
                );
            }
        }
        Ok(())
    }

    /// Check that every `[executor.resources.<kind>]` names one of `kinds` (by its short
    /// name); the other checks are [`SlurmConfig::validate`]'s.
    pub fn check_kinds(&self, kinds: &Kinds) -> Result<()> {
        let known: Vec<&str> = kinds.iter().map(|k| short_kind(k.name())).collect();
        for kind in self.resources.keys() {
            if !known.contains(&kind.as_str()) {
                bail!(
                    "[executor.resources.{kind}]: there is no cell kind \"{kind}\"; the kinds \
                     are {}",
                    known.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The settings for cells of kind `kind` (short or full name): `[slurm]` with the
    /// kind's `[executor.resources.<kind>]` applied.
    pub fn for_kind(&self, kind: &str) -> SlurmConfig {
        let mut c = self.clone();
        c.resources = BTreeMap::new();
        if let Some(r) = self.resources.get(short_kind(kind)) {
            if r.time.is_some() {
                c.time = r.time.clone();
            }
            if r.mem.is_some() {
                c.mem = r.mem.clone();
            }
            if let Some(n) = r.cpus {
                c.cpus_per_task = n;
            }
            if let Some(n) = r.gpus {
                c.gpus = n;
            }
        }
        c
    }

    /// Whether cells of `kind` have resources of their own.
    pub fn has_own_resources(&self, kind: &str) -> bool {
        self.resources.contains_key(short_kind(kind))
    }

    /// The `#SBATCH` resource options (everything but array, logs and dependencies).
    pub fn resource_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut opt = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{k}={v}"));
            }
        };
        opt("partition", &self.partition);
        opt("account", &self.account);
        opt("qos", &self.qos);
        opt("time", &self.time);
        opt("mem", &self.mem);
        out.push(format!("--cpus-per-task={}", self.cpus_per_task));
        if self.gpus > 0 {
            match &self.gpu_type {
                Some(t) => out.push(format!("--gres=gpu:{t}:{}", self.gpus)),
                None => out.push(format!("--gres=gpu:{}", self.gpus)),
            }
        }
        out.extend(self.extra.iter().map(|e| extra_option(e).to_string()));
        out
    }
}

/// `value` is a Slurm time limit (or unset); errors name `key`.
fn check_time(key: &str, value: &Option<String>) -> Result<()> {
    if let Some(t) = value {
        let ok = !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
            && t.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !ok {
            bail!(
                "{key} = {t:?} is not a Slurm time limit; write minutes (\"90\"), \"HH:MM:SS\" \
                 or \"D-HH:MM:SS\""
            );
        }
    }
    Ok(())
}

/// `value` is a Slurm memory size (or unset); errors name `key`.
fn check_mem(key: &str, value: &Option<String>) -> Result<()> {
    if let Some(m) = value {
        let digits = m.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
        if digits.is_empty()
            || !digits.chars().all(|c| c.is_ascii_digit())
            || m.len() > digits.len() + 1
        {
            bail!("{key} = {m:?} is not a Slurm memory size; write e.g. \"16G\" or \"4000M\"");
        }
    }
    Ok(())
}

/// An `extra` entry without a leading `#SBATCH`.
fn extra_option(e: &str) -> &str {
    e.trim().trim_start_matches("#SBATCH").trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SlurmConfig> {
        let c: SlurmConfig = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_a_gpu_section() {
        let c = parse("").unwrap();
        assert_eq!(c, SlurmConfig::default());
        assert_eq!(c.resource_options(), ["--cpus-per-task=1"]);
        let c = parse(
            "partition = \"gpu\"\naccount = \"lab\"\ntime = \"1-02:00:00\"\ncpus_per_task = 8\n\
             mem = \"64G\"\ngpus = 2\ngpu_type = \"a100\"\nextra = [\"#SBATCH --constraint=x\"]",
        )
        .unwrap();
        assert_eq!(
            c.resource_options(),
            [
                "--partition=gpu",
                "--account=lab",
                "--time=1-02:00:00",
                "--mem=64G",
                "--cpus-per-task=8",
                "--gres=gpu:a100:2",
                "--constraint=x"
            ]
        );
    }

    #[test]
    fn the_documented_gpu_section_parses() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Doc {
            executor: crate::grid::config::ExecutorSpec,
            slurm: SlurmConfig,
        }
        let doc = include_str!("../../../docs/slurm.md");
        let block = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .unwrap();
        let d: Doc = toml::from_str(block).unwrap();
        d.slurm.validate().unwrap();
        assert_eq!(d.slurm.gpus, 1);
        assert!(d
            .slurm
            .resource_options()
            .contains(&"--gres=gpu:a100:1".to_string()));
    }

    #[test]
    fn per_kind_resources_fall_back_to_the_slurm_section() {
        #[derive(Deserialize)]
        struct Doc {
            executor: crate::grid::config::ExecutorSpec,
            slurm: SlurmConfig,
        }
        let d: Doc = toml::from_str(
            "[executor]\nkind = \"slurm\"\njobs = 1\n\
             [executor.resources.align]\ntime = \"08:00:00\"\ncpus = 8\ngpus = 1\n\
             [executor.resources.perturb]\nmem = \"96G\"\n\
             [slurm]\ntime = \"01:00:00\"\nmem = \"32G\"\ncpus_per_task = 2\n\
             gpu_type = \"a100\"",
        )
        .unwrap();
        let crate::grid::config::ExecutorSpec::Slurm { jobs, resources } = d.executor else {
            panic!("not slurm")
        };
        assert_eq!(jobs, Some(1));
        let mut c = d.slurm;
        c.resources = resources;
        // gpu_type with gpus = 0 at top level is fine when a kind asks for GPUs.
        c.validate().unwrap();
        let opts = |k: &str| c.for_kind(k).resource_options();
        assert_eq!(
            opts("rebound.align"),
            [
                "--time=08:00:00",
                "--mem=32G",
                "--cpus-per-task=8",
                "--gres=gpu:a100:1"
            ]
        );
        assert_eq!(
            opts("perturb"),
            ["--time=01:00:00", "--mem=96G", "--cpus-per-task=2"]
        );
        assert_eq!(
            opts("rebound.base"),
            ["--time=01:00:00", "--mem=32G", "--cpus-per-task=2"]
        );
        assert!(c.has_own_resources("rebound.align") && !c.has_own_resources("rebound.base"));
        // Recorded in slurm.toml and read back for resubmit.
        let back: SlurmConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);

        let bad = |t: &str| {
            let c = SlurmConfig {
                resources: toml::from_str(t).unwrap(),
                ..SlurmConfig::default()
            };
            format!("{:#}", c.validate().unwrap_err())
        };
        let e = bad("[align]\ntime = \"2 hours\"");
        assert!(e.contains("[executor.resources.align] time"), "{e}");
        let e = bad("[pair]\ncpus = 0");
        assert!(e.contains("cpus must be at least 1"), "{e}");
        assert!(toml::from_str::<KindResources>("memory = \"1G\"").is_err());
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = |t: &str| format!("{:#}", parse(t).unwrap_err());
        assert!(e("time = \"2 hours\"").contains("time = \"2 hours\""));
        assert!(e("mem = \"lots\"").contains("mem"));
        assert!(e("mem = \"16GB\"").contains("mem"));
        assert!(e("partition = \"a b\"").contains("partition"));
        assert!(e("cpus_per_task = 0").contains("cpus_per_task"));
        assert!(e("gpu_type = \"a100\"").contains("gpus = 0"));
        assert!(e("extra = [\"--array=0-3\"]").contains("sets --array itself"));
        assert!(e("extra = [\"-o x\"]").contains("sets -o itself"));
        assert!(e("extra = [\"constraint=x\"]").contains("one sbatch option"));
        assert!(e("elastica = \"bin/elastica\"").contains("absolute"));
        assert!(e("poll_seconds = 0").contains("poll_seconds"));
        assert!(e("partiton = \"x\"").contains("partiton"));
    }
}
