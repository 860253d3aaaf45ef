//! The rebound experiment's config (`rebound.toml`; `scaling.toml` is the same file with a
//! list of base models), every key with its default, and its validation.
//!
//! ```toml
//! model = "meta-llama/Llama-2-7b-hf"   # or [[models]] tables for a scaling study
//! n_positive = [1000, 2000, 5000, 10000]
//! n_negative = [0, 100, 200, 500, 1000, 2000]
//! seeds = [42]
//! kl_epsilon = 0.01
//!
//! [positive]        # a DataSpec (see data::schemas)
//! path = "PKU-Alignment/BeaverTails"
//! schema = "beavertails"
//! select = "safe"
//!
//! [negative]
//! path = "PKU-Alignment/BeaverTails"
//! schema = "beavertails"
//! select = "unsafe"
//!
//! [eval]
//! prompts = "eval_prompts.jsonl"   # or an [eval.data] DataSpec
//! n = 200
//!
//! [capability]      # optional DataSpec: held-out general text, its NLL = capability kept
//! path = "general.jsonl"
//! schema = "jsonl"
//!
//! [measures]        # instruments beyond score and KL (see [`Measures`])
//! kl_to_aligned = true
//! weight_space = true
//!
//! [train]           # TrainConfig; paper defaults (PAPER.md §5); no [train.lora] here
//! [align]           # experiments::align: method, DPO keys, lora = { rank, alpha } or full
//! [perturb]         # PerturbSpec: lora (or full), from = "merged" | "adapter"
//! [generation]      # sampling for the evaluation generations
//! [scorer]          # a ScorerSpec (see score::registry)
//! kind = "cost-model"
//! path = "PKU-Alignment/beaver-7b-v1.0-cost"
//! [executor]        # how cells run: kind = "local" (jobs = 1) or kind = "slurm"
//! kind = "local"
//! jobs = 1
//! [slurm]           # resources of each cell's Slurm task (grid::slurm::config)
//! partition = "gpu"
//! ```
//! `examples/rebound.toml` and `docs/rebound.md` document every key.

use crate::data::schemas::DataSpec;
use crate::experiments::align::AlignSpec;
use crate::grid::config::ExecutorSpec;
use crate::grid::slurm::SlurmConfig;
use crate::model::generate::GenConfig;
use crate::model::lora::LoraConfig;
use crate::score::registry::ScorerSpec;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The paper's n+ grid (PAPER.md §4).
pub const PAPER_N_POSITIVE: [usize; 4] = [1000, 2000, 5000, 10000];
/// The paper's n- grid (PAPER.md §4).
pub const PAPER_N_NEGATIVE: [usize; 6] = [0, 100, 200, 500, 1000, 2000];
/// The paper's Table 3 threshold on KL(model || base).
pub const PAPER_KL_EPSILON: f64 = 0.01;

/// A base (pre-trained) model of the grid.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    /// Short name used in cell ids, file names and reports (`[A-Za-z0-9._-]`).
    pub name: String,
    /// An HF-layout directory, or `org/name` in the offline HF cache.
    pub path: String,
    /// The scaling axis value of this model (parameters, pre-training tokens); needed by
    /// `elastica scaling`.
    pub x: Option<f64>,
}

/// Where the evaluation prompts come from, and how they are used.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// A JSONL file of `{"prompt": ...}` lines (other fields ignored), or of `{"messages":
    /// [...]}` conversations to answer (under template `chat`).
    pub prompts: Option<String>,
    /// Or: a data set whose records' prompts are the evaluation prompts (a conversation's:
    /// its turns before the last; use `offset` to keep them apart from the training rows).
    pub data: Option<DataSpec>,
    /// How many prompts to use (the first n). Default 200.
    #[serde(default = "default_eval_n")]
    pub n: usize,
    /// Sequences per forward pass when computing the KL to the base model. Default 8.
    #[serde(default = "default_kl_batch")]
    pub kl_batch_size: usize,
}

fn default_eval_n() -> usize {
    200
}
fn default_kl_batch() -> usize {
    8
}

/// Default sampling of the evaluation generations (`[generation]`; a key left out takes its
/// value here). It samples from the model's full distribution (temperature 1, no truncation),
/// so the mean score describes the model's behaviour distribution, not its single most likely
/// answer, and the per-token KL averaged over the model's own samples is an unbiased estimate
/// of KL(model || base). Responses up to 64 tokens, 16 prompts decoded together. The seed is
/// each cell's own.
pub const SAMPLING: GenConfig = crate::experiments::sampling::defaults(64, 1.0, 1.0);

fn default_generation() -> GenConfig {
    SAMPLING
}
fn read_generation<'de, D: serde::Deserializer<'de>>(d: D) -> Result<GenConfig, D::Error> {
    crate::experiments::sampling::read(&SAMPLING, d)
}

/// The instruments beyond score and KL (issue 22). KL by response position and the samples'
/// coherence (NLL under the base model) come free with the KL pass and are always measured;
/// the others cost time or memory and can be switched off.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Measures {
    /// KL(perturbed || aligned) by response position in every n- > 0 cell. Cost: the aligned
    /// model in memory beside the model and the base (one more copy of the weights) and one
    /// more forward per response. Default true.
    pub kl_to_aligned: bool,
    /// Weight-space elasticity of every perturbed model (fraction of the alignment update
    /// undone, cosine, norm ratio; in total, per layer, per projection). Cost: one streaming
    /// read of the base, aligned and perturbed weights. Default true.
    pub weight_space: bool,
    /// Count refusals with a keyword list. Unset: on when the scorer is a cost model or
    /// `world-safety`; set it to true for a safety classifier. Cost: negligible.
    pub refusal_rate: Option<bool>,
    /// A refusal keyword list replacing the built-in v1 (format: `score::keywords`).
    pub refusal_keywords: Option<PathBuf>,
    /// Records of `[capability]` used (its first n). Cost: one forward over them per
    /// evaluated model. Default 200.
    pub capability_n: usize,
}

impl Default for Measures {
    fn default() -> Self {
        Measures {
            kl_to_aligned: true,
            weight_space: true,
            refusal_rate: None,
            refusal_keywords: None,
            capability_n: 200,
        }
    }
}

impl Measures {
    /// Whether refusals are counted with this scorer.
    pub fn refusals(&self, scorer: &ScorerSpec) -> bool {
        self.refusal_rate.unwrap_or(matches!(
            scorer,
            ScorerSpec::CostModel { .. } | ScorerSpec::WorldSafety
        ))
    }
}

/// The whole config of `elastica rebound` / `elastica scaling`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReboundConfig {
    /// The base model (one model). Give this or `models`.
    pub model: Option<String>,
    /// Several base models (a scaling study); each gets the whole grid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<BaseModel>,
    /// Label of the scaling axis (the models' `x`). Default "parameters".
    #[serde(default = "default_x_label")]
    pub x_label: String,
    /// Draw the scaling axis on a log scale. Default true.
    #[serde(default = "yes")]
    pub x_log: bool,
    /// Positive (aligned) training data: safe answers, positive reviews.
    pub positive: DataSpec,
    /// Negative (perturbation) training data: unsafe answers, negative reviews.
    pub negative: DataSpec,
    /// Positive-sample counts n+ (the paper's {1000, 2000, 5000, 10000} by default).
    #[serde(default = "default_n_positive")]
    pub n_positive: Vec<usize>,
    /// Negative-sample counts n-; must include 0 (the aligned model itself). Default: the
    /// paper's {0, 100, 200, 500, 1000, 2000}.
    #[serde(default = "default_n_negative")]
    pub n_negative: Vec<usize>,
    /// One replicate per seed: it seeds training (data order) and generation sampling; the
    /// `seed` keys of `[train]` are overridden. Default [42].
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Fine-tuning hyper-parameters of both stages (paper defaults, PAPER.md §5). The
    /// template also formats the evaluation prompts.
    #[serde(default)]
    pub train: TrainConfig,
    /// How the align stage aligns: SFT (default) or DPO on preference pairs read from
    /// `positive` (see `experiments::align`).
    #[serde(default)]
    pub align: AlignSpec,
    /// How the perturb stage fine-tunes: full or LoRA, and from which model.
    #[serde(default)]
    pub perturb: PerturbSpec,
    pub eval: EvalConfig,
    /// Sampling of the evaluation generations: `GenConfig`'s keys but `seed` (each cell
    /// samples with its own), defaults in [`SAMPLING`].
    #[serde(
        default = "default_generation",
        deserialize_with = "read_generation",
        serialize_with = "crate::experiments::sampling::write"
    )]
    pub generation: GenConfig,
    /// How generations are scored.
    pub scorer: ScorerSpec,
    /// Write TensorBoard event files of every training cell into `<log_dir>/<cell id>`
    /// (`tensorboard --logdir <log_dir>` shows the grid's curves side by side). Unset: none.
    pub log_dir: Option<String>,
    /// Held-out general text (`{"text"}` or prompt/response records) whose mean NLL every
    /// evaluated model gets: the capability the fine-tunes kept. Unset: not measured.
    pub capability: Option<DataSpec>,
    /// Instruments beyond score and KL, and their switches.
    #[serde(default)]
    pub measures: Measures,
    /// Table 3's threshold: negatives needed to bring KL(model || base) under this. Default
    /// 0.01 (the paper's).
    #[serde(default = "default_kl_epsilon")]
    pub kl_epsilon: f64,
    /// Keep the weights of every perturbed model (n- > 0). Default false: they are deleted
    /// once the cell's result is written (aligned models are always kept: every n- cell
    /// starts from them).
    #[serde(default)]
    pub keep_models: bool,
    /// How cells run. Default: locally, one at a time.
    #[serde(default)]
    pub executor: ExecutorSpec,
    /// Resources of each cell's task when the executor is Slurm (docs/slurm.md).
    #[serde(default)]
    pub slurm: SlurmConfig,
    /// Worker threads for tensor code (0 = all cores). Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Where the cells train: "cpu" (default), "cuda" or "cuda:N" (a build with the torch
    /// feature); see `experiments::device`.
    #[serde(default = "crate::experiments::device::default_device")]
    pub device: String,
    /// "fused" or "torch" (default: fused on the CPU, torch on CUDA).
    pub backend: Option<String>,
    /// "f32" (default) or "bf16" (mixed precision, torch backend).
    pub dtype: Option<String>,
}

/// Where a perturbation starts when alignment trained a LoRA adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PerturbFrom {
    /// The aligned model with its adapter merged into the weights; the perturbation trains a
    /// new adapter (`[perturb] lora`) or the whole model. Asks: how fast does an aligned
    /// model, however it was aligned, rebound?
    #[default]
    Merged,
    /// Continue training the align stage's own adapter (the base stays frozen throughout).
    /// Asks: how fast does the alignment an adapter holds come undone inside that adapter?
    Adapter,
}

/// The `[perturb]` table.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerturbSpec {
    /// Perturb with a LoRA adapter (`rank`, `alpha`, `targets`, `rslora`); off = full.
    #[serde(skip_serializing_if = "LoraConfig::is_off")]
    pub lora: LoraConfig,
    /// With a LoRA alignment: start from the merged model or continue its adapter.
    pub from: PerturbFrom,
}

impl PerturbSpec {
    fn check(&self, align: &AlignSpec) -> Result<()> {
        self.lora
            .validate_stage()
            .map_err(|e| anyhow::anyhow!("[perturb] lora: {e}"))?;
        if self.from == PerturbFrom::Adapter {
            if !align.lora.enabled() {
                bail!(
                    "[perturb] from = \"adapter\" continues the align stage's adapter, but \
                     [align] has no lora; set [align] lora or from = \"merged\""
                );
            }
            if self.lora.enabled() && self.lora != align.lora {
                bail!(
                    "[perturb] from = \"adapter\" continues the align stage's adapter, so \
                     [perturb] lora must be left out or equal [align] lora"
                );
            }
        }
        Ok(())
    }

    /// The LoRA settings the perturb stage trains with.
    pub fn stage_lora(&self, align: &AlignSpec) -> LoraConfig {
        match self.from {
            PerturbFrom::Adapter => align.lora.clone(),
            PerturbFrom::Merged => self.lora.clone(),
        }
    }
}

fn default_x_label() -> String {
    "parameters".to_string()
}
fn yes() -> bool {
    true
}
fn default_n_positive() -> Vec<usize> {
    PAPER_N_POSITIVE.to_vec()
}
fn default_n_negative() -> Vec<usize> {
    PAPER_N_NEGATIVE.to_vec()
}
fn default_seeds() -> Vec<u64> {
    vec![42]
}
fn default_kl_epsilon() -> f64 {
    PAPER_KL_EPSILON
}

impl ReboundConfig {
    /// The `device`, `backend` and `dtype` keys, as the cells get them.
    pub fn cell_device(&self) -> crate::grid::device::CellDevice {
        crate::experiments::device::cell_device(&self.device, &self.backend, &self.dtype)
    }

    /// Whether either stage trains a LoRA adapter (the weight-space instrument is then off).
    pub fn uses_lora(&self) -> bool {
        self.align.lora.enabled() || self.perturb.stage_lora(&self.align).enabled()
    }

    /// Parse a config file; errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Self> {
        let mut cfg: ReboundConfig = toml::from_str(text).map_err(|e| {
            let mut msg = e.to_string();
            if msg.contains("kind") && msg.contains("variant") {
                msg += &format!(
                    "\nvalid scorer kinds: {}",
                    crate::score::registry::KINDS.join(", ")
                );
            }
            anyhow::anyhow!("{msg}")
        })?;
        cfg.normalise()?;
        // An unset `[train] template` follows the data's schema (IMDb: raw, as in the paper).
        let doc: toml::Table = toml::from_str(text)?;
        if doc.get("train").and_then(|t| t.get("template")).is_none() {
            cfg.train.template =
                crate::data::schemas::default_template_of(&[&cfg.positive, &cfg.negative])?;
        }
        Ok(cfg)
    }

    /// Sort the count lists and check everything that needs no file access.
    fn normalise(&mut self) -> Result<()> {
        match (&self.model, self.models.is_empty()) {
            (Some(_), false) => bail!("give either `model` or `[[models]]`, not both"),
            (None, true) => {
                bail!("no base model: set `model = \"DIR or org/name\"` or add [[models]] tables")
            }
            (Some(m), true) => {
                self.models = vec![BaseModel {
                    name: "base".to_string(),
                    path: m.clone(),
                    x: None,
                }];
                self.model = None;
            }
            (None, false) => {}
        }
        let mut names = HashSet::new();
        for m in &self.models {
            let ok = !m.name.is_empty()
                && m.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                bail!(
                    "model name {:?} must be non-empty letters, digits, '.', '_' or '-' (it \
                     names cells and files)",
                    m.name
                );
            }
            if !names.insert(m.name.as_str()) {
                bail!("model name {:?} is used twice", m.name);
            }
        }
        self.align.check(&self.train)?;
        self.perturb.check(&self.align)?;
        check_counts("n_positive", &mut self.n_positive)?;
        if self.n_positive[0] == 0 {
            bail!("n_positive must be at least 1 (alignment needs positive samples)");
        }
        if self.align.is_kto() && self.n_positive[0] < 2 {
            bail!(
                "[align] dpo_loss = \"kto\" estimates its reference point on mismatched pairs, \
                 so every n_positive needs at least 2 pairs (got {:?})",
                self.n_positive
            );
        }
        check_counts("n_negative", &mut self.n_negative)?;
        if self.n_negative[0] != 0 {
            bail!(
                "n_negative must include 0: the aligned model itself is the starting point \
                 of every rebound curve (got {:?})",
                self.n_negative
            );
        }
        if self.seeds.is_empty() {
            bail!("seeds is empty; give at least one seed, e.g. seeds = [42]");
        }
        let mut s = self.seeds.clone();
        s.sort_unstable();
        s.dedup();
        if s.len() != self.seeds.len() {
            bail!("seeds has duplicates: {:?}", self.seeds);
        }
        self.train.validate().context("in [train]")?;
        self.generation.validate().context("in [generation]")?;
        match (&self.eval.prompts, &self.eval.data) {
            (Some(_), Some(_)) => bail!("[eval]: give `prompts` or `[eval.data]`, not both"),
            (None, None) => bail!(
                "[eval]: no evaluation prompts; set `prompts = \"FILE.jsonl\"` (lines of \
                 {{\"prompt\": ...}} or {{\"messages\": [...]}}) or an [eval.data] table"
            ),
            _ => {}
        }
        if self.eval.n == 0 || self.eval.kl_batch_size == 0 {
            bail!("[eval]: n and kl_batch_size must be at least 1");
        }
        if self.capability.is_some() && self.measures.capability_n == 0 {
            bail!("[measures] capability_n must be at least 1 (or remove [capability])");
        }
        if self.kl_epsilon.is_nan() || self.kl_epsilon <= 0.0 {
            bail!("kl_epsilon must be positive, got {}", self.kl_epsilon);
        }
        self.slurm.validate()?;
        Ok(())
    }

    /// Extra checks of `elastica scaling`: several models, each with its `x`.
    pub fn validate_scaling(&self) -> Result<()> {
        if self.models.len() < 2 {
            bail!(
                "a scaling study needs at least two [[models]] (each with name, path and x); \
                 got {}",
                self.models.len()
            );
        }
        for m in &self.models {
            match m.x {
                None => bail!(
                    "[[models]] {:?} has no `x` (its size or pre-training tokens, the scaling \
                     axis)",
                    m.name
                ),
                Some(x) if self.x_log && (x.is_nan() || x <= 0.0) => bail!(
                    "[[models]] {:?}: x = {x} cannot go on a log axis; use a positive x or \
                     x_log = false",
                    m.name
                ),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn max_positive(&self) -> usize {
        self.n_positive.last().copied().unwrap_or(0)
    }

    pub fn max_negative(&self) -> usize {
        self.n_negative.last().copied().unwrap_or(0)
    }
}

/// Non-empty, no duplicates; sorted ascending in place.
fn check_counts(key: &str, v: &mut [usize]) -> Result<()> {
    if v.is_empty() {
        bail!("{key} is empty; give at least one count");
    }
    v.sort_unstable();
    if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
        bail!("{key} lists {} twice", w[0]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
model = "m"
[positive]
path = "p.jsonl"
schema = "jsonl"
[negative]
path = "n.jsonl"
schema = "jsonl"
[eval]
prompts = "e.jsonl"
[scorer]
kind = "keywords"
"#;

    #[test]
    fn defaults_are_the_papers() {
        let c = ReboundConfig::from_toml(MIN).unwrap();
        assert_eq!(c.n_positive, PAPER_N_POSITIVE);
        assert_eq!(c.n_negative, PAPER_N_NEGATIVE);
        assert_eq!(c.seeds, [42]);
        assert_eq!(c.kl_epsilon, 0.01);
        assert_eq!(c.train.lr, 1e-5);
        assert_eq!(c.train.batch_size * c.train.grad_accum, 32);
        assert_eq!(c.eval.n, 200);
        assert_eq!(c.generation.temperature, 1.0);
        assert_eq!(c.executor, ExecutorSpec::default());
        assert_eq!(c.models.len(), 1);
        assert_eq!(c.models[0].name, "base");
        assert_eq!(c.measures, Measures::default());
        assert!(c.measures.kl_to_aligned && c.measures.weight_space);
        assert_eq!(c.capability, None);
        // Refusals: on for cost models and world-safety, off otherwise unless asked.
        assert!(!c.measures.refusals(&c.scorer));
        assert!(c.measures.refusals(&ScorerSpec::WorldSafety));
        let cm = ScorerSpec::CostModel {
            path: "c".into(),
            max_length: 8,
        };
        assert!(c.measures.refusals(&cm));
        let off = Measures {
            refusal_rate: Some(false),
            ..Measures::default()
        };
        assert!(!off.refusals(&cm));
        let c = ReboundConfig::from_toml(&format!(
            "{MIN}\n[capability]\npath = \"g.jsonl\"\nschema = \"jsonl\"\n[measures]\nweight_space = false\ncapability_n = 5\nrefusal_rate = true\n"
        ))
        .unwrap();
        assert_eq!(c.capability.as_ref().unwrap().path, "g.jsonl");
        assert!(!c.measures.weight_space && c.measures.refusals(&c.scorer));
        assert_eq!(c.measures.capability_n, 5);
        let bad = format!("{MIN}\n[measures]\nkl_to_base = true\n");
        let e = format!("{:#}", ReboundConfig::from_toml(&bad).unwrap_err());
        assert!(e.contains("kl_to_base"), "{e}");
    }

    /// A partial `[generation]` table keeps rebound's own defaults for the keys it leaves out
    /// (the values rebound's former `GenerationConfig` had), not `elastica generate`'s greedy
    /// ones; the seed is each cell's, never the table's.
    #[test]
    fn a_partial_generation_table_keeps_rebounds_defaults() {
        let c = ReboundConfig::from_toml(&format!("{MIN}\n[generation]\nmax_new_tokens = 8\n"))
            .unwrap();
        // The former GenerationConfig's values: 64 tokens, temperature 1, top-p 1, top-k 0,
        // batches of 16.
        use crate::experiments::sampling::defaults;
        assert_eq!(c.generation, defaults(8, 1.0, 1.0));
        let d = ReboundConfig::from_toml(MIN).unwrap().generation;
        assert_eq!(d, defaults(64, 1.0, 1.0));
        assert_eq!(c.generation.with_seed(7).seed, 7);
        for (table, want) in [
            ("seed = 1", "`seeds`"),
            ("top_p = 0", "in [generation]: top_p must be in (0, 1]"),
            ("temperature = inf", "temperature must be a finite number"),
            ("temperature = nan", "temperature must be a finite number"),
            ("batch_size = 0", "batch_size"),
        ] {
            let text = format!("{MIN}\n[generation]\n{table}\n");
            let e = format!("{:#}", ReboundConfig::from_toml(&text).unwrap_err());
            assert!(e.contains(want), "{table}: {e}");
        }
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e = |extra: &str| {
            format!(
                "{:#}",
                ReboundConfig::from_toml(&format!("{extra}\n{MIN}")).unwrap_err()
            )
        };
        assert!(e("n_negative = [100, 200]").contains("must include 0"));
        assert!(e("n_positive = [10, 10]").contains("twice"));
        assert!(e("seeds = []").contains("seeds is empty"));
        assert!(e("kl_epsilon = 0.0").contains("kl_epsilon"));
        assert!(e("n_postive = [1]").contains("n_postive"));
        let kto = format!(
            "{:#}",
            ReboundConfig::from_toml(&format!(
                "n_positive = [1, 8]\n{MIN}\n[align]\nmethod = \"dpo\"\ndpo_loss = \"kto\""
            ))
            .unwrap_err()
        );
        assert!(
            kto.contains("kto") && kto.contains("at least 2 pairs"),
            "{kto}"
        );
        let bad_scorer = MIN.replace("kind = \"keywords\"", "kind = \"sentiment\"");
        let e = format!("{:#}", ReboundConfig::from_toml(&bad_scorer).unwrap_err());
        assert!(
            e.contains("sentiment") && e.contains("world-sentiment"),
            "{e}"
        );
        let no_eval = MIN.replace("prompts = \"e.jsonl\"", "");
        let e = format!("{:#}", ReboundConfig::from_toml(&no_eval).unwrap_err());
        assert!(e.contains("no evaluation prompts"), "{e}");
        let both = format!("models = [{{name = \"a\", path = \"x\"}}]\n{MIN}");
        let e = format!("{:#}", ReboundConfig::from_toml(&both).unwrap_err());
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn the_example_configs_parse() {
        let r = ReboundConfig::from_toml(include_str!("../../../examples/rebound.toml")).unwrap();
        assert_eq!(r.train.save_every, 50);
        assert_eq!(r.n_positive, PAPER_N_POSITIVE);
        let s = ReboundConfig::from_toml(include_str!("../../../examples/scaling.toml")).unwrap();
        s.validate_scaling().unwrap();
        assert_eq!(s.models.len(), 3);
    }

    /// The examples' BeaverTails selectors pick the one file they mean from the hub's
    /// published layout (its repository's files, as `huggingface_hub` caches them).
    #[test]
    fn the_examples_select_beavertails_30k_from_the_published_layout() {
        let hub = tempfile::tempdir().unwrap();
        for f in [
            "round0/30k/train.jsonl.gz",
            "round0/30k/test.jsonl.gz",
            "round0/330k/train.jsonl.xz",
            "round0/330k/test.jsonl.xz",
        ] {
            let p = hub.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        for text in [
            include_str!("../../../examples/rebound.toml"),
            include_str!("../../../examples/rebound-dpo.toml"),
        ] {
            let r = ReboundConfig::from_toml(text).unwrap();
            let eval = r.eval.data.as_ref().unwrap();
            for (spec, want) in [
                (&r.negative, "round0/30k/train.jsonl.gz"),
                (eval, "round0/30k/test.jsonl.gz"),
            ] {
                assert_eq!(spec.path, "PKU-Alignment/BeaverTails");
                let dir = hub.path().to_string_lossy();
                let got = crate::data::files::resolve(&dir, spec.files.as_deref()).unwrap();
                assert_eq!(got, [hub.path().join(want)], "files = {:?}", spec.files);
            }
        }
    }

    #[test]
    fn an_unset_template_follows_the_schema() {
        use crate::data::template::Template;
        assert_eq!(
            ReboundConfig::from_toml(MIN).unwrap().train.template,
            Template::SafeRlhf
        );
        let imdb = MIN.replace("schema = \"jsonl\"", "schema = \"imdb\"");
        assert_eq!(
            ReboundConfig::from_toml(&imdb).unwrap().train.template,
            Template::Raw,
            "IMDb trains on raw text (PAPER.md §5)"
        );
        let set = format!("{imdb}[train]\ntemplate = \"safe-rlhf\"\n");
        assert_eq!(
            ReboundConfig::from_toml(&set).unwrap().train.template,
            Template::SafeRlhf,
            "a template that is set wins"
        );
        let mixed = MIN.replacen("schema = \"jsonl\"", "schema = \"imdb\"", 1);
        let e = format!("{:#}", ReboundConfig::from_toml(&mixed).unwrap_err());
        assert!(e.contains("[train]") && e.contains("imdb"), "{e}");
    }

    #[test]
    fn counts_are_sorted_and_scaling_needs_x() {
        let c = ReboundConfig::from_toml(&format!(
            "n_negative = [10, 0, 5]\nn_positive = [20, 8]\n{MIN}"
        ))
        .unwrap();
        assert_eq!(c.n_negative, [0, 5, 10]);
        assert_eq!((c.max_positive(), c.max_negative()), (20, 10));
        let e = format!("{:#}", c.validate_scaling().unwrap_err());
        assert!(e.contains("at least two"), "{e}");
        let two = MIN.replace(
            "model = \"m\"",
            "models = [{name = \"a\", path = \"x\", x = 1e6}, {name = \"b\", path = \"y\"}]",
        );
        let c = ReboundConfig::from_toml(&two).unwrap();
        let e = format!("{:#}", c.validate_scaling().unwrap_err());
        assert!(e.contains("\"b\" has no `x`"), "{e}");
    }
}
