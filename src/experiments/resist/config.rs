//! The resistance experiment's configuration (`resist.toml`): what to split into slices, how
//! the checkpoints generate, which seeds to replicate, and the fine-tuning hyper-parameters.
//! Every key has a default except `model` and `[data]`; [`ResistConfig::validate`] checks the
//! values that serde cannot (ratios, counts) before any work starts.
//!
//! ```toml
//! model = "meta-llama/Llama-2-7b-hf"   # base model theta_0: a directory or an HF cache id
//! slices = 3                           # S: theta_1 .. theta_S
//! slice_ratios = [1, 1, 1]             # relative slice sizes (default: equal)
//! include_base = false                 # also compare against theta_0
//! eval_prompts = 64                    # held-out prompts every checkpoint answers
//! pair_samples = 64                    # samples per forward/inverse fine-tune (<= eval_prompts)
//! seeds = [42]                         # one replicate of the whole pipeline per seed
//!
//! [data]                               # the SFT data set that is sliced (data::schemas)
//! path = "tatsu-lab/alpaca"
//! schema = "alpaca"
//!
//! [generate]                           # the authors' sampling settings are the defaults
//! max_new_tokens = 128
//!
//! [train]                              # slice fine-tunes (train::TrainConfig; PAPER.md §5)
//! [align]                              # how the slice fine-tunes train: method = "sft" | "dpo",
//!                                      # DPO keys, lora = { rank, alpha } (experiments::align)
//! [pair_train]                         # forward/inverse fine-tunes (default: same as [train])
//! [pair_train.lora]                    # forward/inverse fine-tunes as LoRA adapters
//! [capability]                         # optional held-out general text (capability kept)
//! [measures]                           # KL by position, weight space (see [`ResistMeasures`])
//! [executor]                           # who runs the cells (default: kind = "local", jobs = 1)
//! [slurm]                              # per-cell resources with kind = "slurm" (docs/slurm.md)
//! ```

use crate::data::schemas::DataSpec;
use crate::experiments::align::AlignSpec;
use crate::grid::config::ExecutorSpec;
use crate::grid::slurm::SlurmConfig;
use crate::model::generate::GenConfig;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Instruments beyond the losses (issue 22).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResistMeasures {
    /// In every generation cell: KL(θk || θ0) by response position on θk's answers, and
    /// their coherence (NLL under θ0). Cost: θ0 beside θk and one forward per answer.
    /// Default true.
    pub kl_by_position: bool,
    /// In every pair cell: how far the fine-tune moved the start checkpoint toward the one
    /// whose answers it trained on, in weight space. Cost: one streaming read of three
    /// checkpoints. Default true.
    pub weight_space: bool,
    /// Records of `[capability]` used (its first n). Default 200.
    pub capability_n: usize,
}

impl Default for ResistMeasures {
    fn default() -> Self {
        ResistMeasures {
            kl_by_position: true,
            weight_space: true,
            capability_n: 200,
        }
    }
}

/// Everything `elastica resist` needs.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResistConfig {
    /// The base model theta_0: an HF-layout directory or `org/name` in the offline HF cache.
    pub model: String,
    /// The SFT data set split into slices.
    pub data: DataSpec,
    /// Where the held-out generation prompts come from. Unset: the last `eval_prompts`
    /// records of `data`, which the slices then do not use.
    pub prompts: Option<DataSpec>,
    /// Number of slices S (checkpoints theta_1 .. theta_S).
    #[serde(default = "default_slices")]
    pub slices: usize,
    /// Relative slice sizes, one per slice; empty means equal slices.
    #[serde(default)]
    pub slice_ratios: Vec<f64>,
    /// Also use the base model theta_0 as a checkpoint (adds the pairs (0, l)).
    #[serde(default)]
    pub include_base: bool,
    /// Held-out prompts each checkpoint answers (the size of every gen_k.jsonl).
    #[serde(default = "default_eval_prompts")]
    pub eval_prompts: usize,
    /// Samples in each forward and inverse fine-tune (unset: all `eval_prompts`).
    pub pair_samples: Option<usize>,
    /// One replicate of the whole pipeline per seed: it seeds the slice fine-tunes'
    /// data order, the sampling, and the pair fine-tunes (overriding `train.seed`).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// How every checkpoint answers the held-out prompts: `GenConfig`'s keys but `seed`
    /// (each replicate samples with its own), defaults in [`SAMPLING`].
    #[serde(
        default = "default_generate",
        deserialize_with = "read_generate",
        serialize_with = "crate::experiments::sampling::write"
    )]
    pub generate: GenConfig,
    /// Hyper-parameters of the sequential slice fine-tunes.
    #[serde(default)]
    pub train: TrainConfig,
    /// How each slice fine-tune trains: SFT (default) or DPO on the slice's preference pairs
    /// (then `[data]` holds pairs; each stage's reference is its own starting model), as a
    /// full fine-tune or a LoRA adapter merged into θk. The pair fine-tunes stay SFT.
    #[serde(default)]
    pub align: AlignSpec,
    /// Hyper-parameters of the forward and inverse fine-tunes (unset: `train`). Both
    /// directions of a pair always use these same values.
    pub pair_train: Option<TrainConfig>,
    /// Keep the weights of the forward/inverse fine-tunes (only their losses are needed).
    #[serde(default)]
    pub keep_pair_models: bool,
    /// Write TensorBoard event files of every fine-tune into `<log_dir>/<cell id>`
    /// (`tensorboard --logdir <log_dir>`). Unset: none.
    pub log_dir: Option<String>,
    /// Held-out general text whose mean NLL every checkpoint θk gets (capability kept).
    /// Unset: not measured.
    pub capability: Option<DataSpec>,
    #[serde(default)]
    pub measures: ResistMeasures,
    /// What runs the cells (default: this machine, one cell at a time).
    #[serde(default)]
    pub executor: ExecutorSpec,
    /// Resources of each cell's task when the executor is Slurm (docs/slurm.md).
    #[serde(default)]
    pub slurm: SlurmConfig,
    /// Where the cells train: "cpu" (default), "cuda" or "cuda:N"; see `experiments::device`.
    #[serde(default = "crate::experiments::device::default_device")]
    pub device: String,
    /// "fused" or "torch" (default: fused on the CPU, torch on CUDA).
    pub backend: Option<String>,
    /// "f32" (default) or "bf16" (mixed precision, torch backend).
    pub dtype: Option<String>,
}

fn default_slices() -> usize {
    3
}
fn default_eval_prompts() -> usize {
    64
}
fn default_seeds() -> Vec<u64> {
    vec![42]
}

/// Default sampling of the held-out answers (`[generate]`; a key left out takes its value
/// here): the authors' temperature 0.05 and top-p 0.95 (PAPER.md §3), up to 128 new tokens,
/// 16 prompts decoded together (does not change the results). The seed is each replicate's.
pub const SAMPLING: GenConfig = crate::experiments::sampling::defaults(128, 0.05, 0.95);

fn default_generate() -> GenConfig {
    SAMPLING
}
fn read_generate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<GenConfig, D::Error> {
    crate::experiments::sampling::read(&SAMPLING, d)
}

impl ResistConfig {
    /// A config with every optional key at its default.
    pub fn new(model: impl Into<String>, data: DataSpec) -> Self {
        ResistConfig {
            model: model.into(),
            data,
            prompts: None,
            slices: default_slices(),
            slice_ratios: Vec::new(),
            include_base: false,
            eval_prompts: default_eval_prompts(),
            pair_samples: None,
            seeds: default_seeds(),
            generate: SAMPLING,
            train: TrainConfig::default(),
            align: AlignSpec::default(),
            pair_train: None,
            keep_pair_models: false,
            log_dir: None,
            capability: None,
            measures: ResistMeasures::default(),
            executor: ExecutorSpec::default(),
            slurm: SlurmConfig::default(),
            device: crate::experiments::device::default_device(),
            backend: None,
            dtype: None,
        }
    }

    /// A small preset for `elastica demo` on a synthetic-world model: 3 slices of
    /// `slice_records` alignment records, 24 held-out prompts answered in up to 32 tokens, 3
    /// seeds, and settings the world's tiny models train well with (raw template, lr 1e-3,
    /// batches of 8). `data` is a world JSONL file such as
    /// `reviews_positive.jsonl`. Measured on the 2-core box with a tiny world model and
    /// `slice_records = 64`: about 30 s for the whole run.
    pub fn demo(model: impl Into<String>, data: impl Into<String>, slice_records: usize) -> Self {
        let mut data = DataSpec::new(data, "jsonl");
        let eval_prompts = 24;
        data.limit = Some(3 * slice_records + eval_prompts);
        let mut cfg = ResistConfig::new(model, data);
        cfg.eval_prompts = eval_prompts;
        cfg.seeds = vec![1, 2, 3];
        cfg.generate.max_new_tokens = 32;
        cfg.train = TrainConfig {
            template: crate::data::template::Template::Raw,
            lr: 1e-3,
            batch_size: 8,
            grad_accum: 1,
            max_length: 128,
            ..TrainConfig::default()
        };
        cfg
    }

    /// The `device`, `backend` and `dtype` keys, as the cells get them.
    pub fn cell_device(&self) -> crate::grid::device::CellDevice {
        crate::experiments::device::cell_device(&self.device, &self.backend, &self.dtype)
    }

    /// Read and validate a `resist.toml`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read resist config {}", path.display()))?;
        let mut cfg: ResistConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid resist config", path.display()))?;
        // An unset template follows the data's schema (IMDb: raw, as in the paper); the pair
        // fine-tunes use the slices' template unless they set their own.
        let doc: toml::Table = toml::from_str(&text)?;
        let set = |t: &str| doc.get(t).and_then(|t| t.get("template")).is_some();
        if !set("train") {
            cfg.train.template = if cfg.align.is_dpo() {
                crate::data::prefs::default_template(&cfg.data.schema)
            } else {
                crate::data::schemas::default_template(&cfg.data.schema)
            };
        }
        if let Some(p) = cfg.pair_train.as_mut().filter(|_| !set("pair_train")) {
            p.template = cfg.train.template;
        }
        cfg.validate()
            .with_context(|| format!("in resist config {}", path.display()))?;
        Ok(cfg)
    }

    /// The resolved config as TOML (written to the run directory as `config.toml`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("cannot serialise the resist config")
    }

    /// Check everything that does not need the data or the model.
    pub fn validate(&self) -> Result<()> {
        if self.slices < 1 {
            bail!("slices must be at least 1 (theta_1 .. theta_S)");
        }
        if self.checkpoints().len() < 2 {
            bail!(
                "slices = 1 without include_base = true gives one checkpoint and no pair to \
                 compare; use slices >= 2 or include_base = true"
            );
        }
        if !self.slice_ratios.is_empty() {
            if self.slice_ratios.len() != self.slices {
                bail!(
                    "slice_ratios has {} entries but slices = {}; give one ratio per slice (or \
                     none for equal slices)",
                    self.slice_ratios.len(),
                    self.slices
                );
            }
            if let Some((i, r)) = self
                .slice_ratios
                .iter()
                .enumerate()
                .find(|(_, r)| !(r.is_finite() && **r > 0.0))
            {
                bail!("slice_ratios[{i}] = {r}; every ratio must be a positive number");
            }
        }
        if self.eval_prompts == 0 {
            bail!("eval_prompts must be at least 1");
        }
        let samples = self.samples_per_pair();
        if samples == 0 {
            bail!("pair_samples must be at least 1");
        }
        if samples > self.eval_prompts {
            bail!(
                "pair_samples = {samples} but each checkpoint only answers eval_prompts = {} \
                 prompts; lower pair_samples or raise eval_prompts",
                self.eval_prompts
            );
        }
        if self.seeds.is_empty() {
            bail!("seeds is empty; give at least one seed");
        }
        let mut sorted = self.seeds.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            bail!("seed {} is listed twice in seeds", w[0]);
        }
        self.train.validate().context("in [train]")?;
        self.check_stages()?;
        self.generate.validate().context("in [generate]")?;
        if self.capability.is_some() && self.measures.capability_n == 0 {
            bail!("[measures] capability_n must be at least 1 (or remove [capability])");
        }
        self.slurm.validate()?;
        Ok(())
    }

    /// The stage settings [`validate`](Self::validate) checks: the slices' method and LoRA
    /// under `[align]`, the pair fine-tunes' LoRA under `[pair_train.lora]`, each refused
    /// where it would not do what it says.
    fn check_stages(&self) -> Result<()> {
        if self.train.lora.enabled() {
            bail!(
                "[train.lora] is ambiguous in resist (it would apply to the slices and, through \
                 an unset [pair_train], to the pair fine-tunes); set the slices' adapter with \
                 `[align] lora = {{ rank = .., alpha = .. }}` and the pair fine-tunes' with \
                 [pair_train.lora]"
            );
        }
        if !self.train.dpo.is_default() {
            bail!(
                "[train] sets the DPO objective; in resist set `method`, `dpo_beta` and \
                 `dpo_loss` under [align] (the slice fine-tunes), not [train]"
            );
        }
        self.align.check(&self.train)?;
        let pt = self.pair_train();
        pt.validate().context("in [pair_train]")?;
        if !pt.dpo.is_default() {
            bail!(
                "[pair_train] sets the DPO objective, but the forward and inverse fine-tunes \
                 train on one checkpoint's answers (no pairs) and their SFT loss is what resist \
                 compares (PAPER.md §3); set DPO for the slices under [align]"
            );
        }
        if self.align.is_dpo() {
            let schemas = crate::data::prefs::PREF_SCHEMAS;
            if !schemas.contains(&self.data.schema.as_str()) {
                bail!(
                    "[align] method = \"dpo\" reads [data] as preference pairs, but its schema \
                     is \"{}\"; use one of {} (generic jsonl is {{\"prompt\", \"chosen\", \
                     \"rejected\"}})",
                    self.data.schema,
                    schemas.join(", ")
                );
            }
            if (self.data.schema == "pku-saferlhf") != self.align.prefer.is_some() {
                bail!(
                    "[align] prefer = \"safer\" | \"better\" is needed with schema \
                     \"pku-saferlhf\" and only there (schema here: \"{}\")",
                    self.data.schema
                );
            }
        }
        Ok(())
    }

    /// The slice fine-tunes' training settings: `[train]` with `[align]`'s objective and
    /// adapter, seeded for one replicate.
    pub fn slice_train(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            dpo: self.align.dpo_config(),
            lora: self.align.lora.clone(),
            ..self.train.clone()
        }
    }

    /// Indices of the compared checkpoints: 1..=S, with 0 first under `include_base`.
    pub fn checkpoints(&self) -> Vec<usize> {
        let first = if self.include_base { 0 } else { 1 };
        (first..=self.slices).collect()
    }

    /// Samples in each forward and inverse fine-tune.
    pub fn samples_per_pair(&self) -> usize {
        self.pair_samples.unwrap_or(self.eval_prompts)
    }

    /// Hyper-parameters of the forward/inverse fine-tunes (before the seed is applied).
    pub fn pair_train(&self) -> &TrainConfig {
        self.pair_train.as_ref().unwrap_or(&self.train)
    }

    /// Relative slice sizes, defaulting to equal.
    pub fn ratios(&self) -> Vec<f64> {
        if self.slice_ratios.is_empty() {
            vec![1.0; self.slices]
        } else {
            self.slice_ratios.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<ResistConfig> {
        let text =
            format!("model = \"m\"\n{extra}\n[data]\npath = \"d.jsonl\"\nschema = \"jsonl\"\n");
        let cfg: ResistConfig = toml::from_str(&text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn an_unset_template_follows_the_schema() {
        use crate::data::template::Template;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resist.toml");
        let read = |text: &str| {
            std::fs::write(&p, text).unwrap();
            ResistConfig::from_file(&p).unwrap()
        };
        let imdb =
            "model = \"m\"\n[data]\npath = \"d\"\nschema = \"imdb\"\nselect = \"positive\"\n";
        let c = read(imdb);
        assert_eq!(c.train.template, Template::Raw, "IMDb trains on raw text");
        let c = read(&format!("{imdb}[pair_train]\nlr = 1e-4\n"));
        assert_eq!(
            c.pair_train().template,
            Template::Raw,
            "pairs follow the slices"
        );
        let c = read(&format!("{imdb}[train]\ntemplate = \"chat\"\n"));
        assert_eq!(c.train.template, Template::Chat, "a set template wins");
        let c = read("model = \"m\"\n[data]\npath = \"d\"\nschema = \"alpaca\"\n");
        assert_eq!(c.train.template, Template::SafeRlhf);
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = parse("").unwrap();
        assert_eq!(c.slices, 3);
        assert_eq!(c.checkpoints(), vec![1, 2, 3]);
        assert_eq!(c.ratios(), vec![1.0; 3]);
        assert_eq!(c.generate.temperature, 0.05);
        assert_eq!(c.generate.top_p, 0.95);
        assert_eq!(c.train.lr, 1e-5);
        assert_eq!(c.samples_per_pair(), c.eval_prompts);
        // Round trip through the saved config.toml.
        let back: ResistConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn train_lora_is_refused_with_a_pointer_to_the_stages() {
        let e = parse("[train.lora]\nrank = 4\n").unwrap_err().to_string();
        assert!(
            e.contains("[align] lora") && e.contains("[pair_train.lora]"),
            "{e}"
        );
        // Per stage it is accepted, and the slices' settings carry [align]'s adapter.
        let c = parse("[align]\nlora = { rank = 4, alpha = 8 }\n[pair_train.lora]\nrank = 2\n")
            .unwrap();
        assert_eq!(c.slice_train(7).lora.rank, 4);
        assert_eq!(c.slice_train(7).seed, 7);
        assert_eq!(c.pair_train().lora.rank, 2);
        assert!(!c.train.lora.enabled());
    }

    /// A partial `[generate]` table keeps resist's own defaults (the authors' sampling, the
    /// values resist's former `GenSettings` had) for the keys it leaves out; the seed is each
    /// replicate's, never the table's, and the saved config.toml reads back equal.
    #[test]
    fn a_partial_generate_table_keeps_resists_defaults() {
        let c = parse("[generate]\ntop_k = 5").unwrap();
        // The former GenSettings' values: 128 tokens, temperature 0.05, top-p 0.95, top-k 0,
        // batches of 16.
        use crate::experiments::sampling::defaults;
        let want = GenConfig {
            top_k: 5,
            ..defaults(128, 0.05, 0.95)
        };
        assert_eq!(c.generate, want);
        assert_eq!(parse("").unwrap().generate, defaults(128, 0.05, 0.95));
        let back: ResistConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
        let saved: toml::Table = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert!(saved["generate"].get("seed").is_none(), "{saved}");
        assert!(saved["generate"].get("top_k").is_some(), "{saved}");
        let e = |extra: &str| format!("{:#}", parse(extra).unwrap_err());
        assert!(e("[generate]\nseed = 1").contains("`seeds`"));
        assert!(e("[generate]\nmax_new_tokens = 0").contains("in [generate]"));
    }

    #[test]
    fn demo_preset_is_valid() {
        let c = ResistConfig::demo("m", "w/reviews_positive.jsonl", 64);
        c.validate().unwrap();
        assert_eq!(c.data.limit, Some(3 * 64 + 24));
        assert_eq!(c.samples_per_pair(), 24);
    }

    #[test]
    fn bad_values_are_named() {
        let e = |extra: &str| format!("{:#}", parse(extra).unwrap_err());
        assert!(e("slice_ratios = [1, 2]").contains("slice_ratios has 2 entries"));
        assert!(e("slice_ratios = [1, 0, 2]").contains("slice_ratios[1] = 0"));
        assert!(e("slices = 1").contains("include_base"));
        assert!(e("pair_samples = 100\neval_prompts = 10").contains("pair_samples = 100"));
        assert!(e("seeds = []").contains("seeds is empty"));
        assert!(e("seeds = [1, 2, 1]").contains("seed 1 is listed twice"));
        assert!(e("slicez = 3").contains("slicez"));
        assert!(e("[generate]\ntop_p = 0").contains("top_p"));
        assert!(e("[train]\nbatch_size = 0").contains("[train]"));
        let c = parse("slices = 1\ninclude_base = true").unwrap();
        assert_eq!(c.checkpoints(), vec![0, 1]);
    }

    /// examples/resist.toml parses, shows every key at its default (the model and the data
    /// aside), and names every key of the config, [data], [generate], [train] and [align].
    #[test]
    fn the_example_documents_every_key() {
        let text = include_str!("../../../examples/resist.toml");
        let c: ResistConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        let want = ResistConfig::new(
            "meta-llama/Llama-2-7b-hf",
            DataSpec::new("tatsu-lab/alpaca", "alpaca"),
        );
        assert_eq!(c, want);
        let mut full = want.clone();
        full.pair_samples = Some(64);
        full.prompts = Some(DataSpec::new("x", "jsonl"));
        full.pair_train = Some(TrainConfig::default());
        let keys = |v: &toml::Value| -> Vec<String> {
            v.as_table().map_or(vec![], |t| t.keys().cloned().collect())
        };
        let all = toml::Value::try_from(&full).unwrap();
        let mut missing = Vec::new();
        for k in keys(&all) {
            if !text.contains(&format!("{k} =")) && !text.contains(&format!("[{k}]")) {
                missing.push(k.clone());
            }
            for sub in keys(&all[&k]) {
                if !text.contains(&format!("{sub} =")) {
                    missing.push(format!("{k}.{sub}"));
                }
            }
        }
        assert!(missing.is_empty(), "examples/resist.toml lacks {missing:?}");
    }
}
