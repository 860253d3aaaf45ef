//! LoRA adapters (Hu et al. 2021) in PEFT's on-disk format. A projection W (out, in) with an
//! adapter computes x W^T + b + s * x A^T B^T, A (r, in), B (out, r), s = alpha / r (or
//! alpha / sqrt(r) with rsLoRA). The base stays frozen; only A and B train. In training,
//! PEFT's lora_dropout masks the adapter's input x (not the frozen path's); the masks are
//! drawn by [`LoraDropout`], keyed by where the forward sits in its run.
//!
//! On disk (what `peft.PeftModel.from_pretrained(base, dir)` reads): `adapter_config.json`
//! and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (PEFT also wrote
//! `.lora_A.default.weight` in some versions; both are read). Inside elastica the adapter's
//! tensors are named without the `base_model.model.` prefix, next to the weight they adapt.
//! `layers_to_transform` and the per-module `rank_pattern` / `alpha_pattern` ([`PeftLayout`])
//! are read and written back. An adapter with more than LoRA on the projections (DoRA,
//! LoRA on the embedding or LM head, `modules_to_save`, trained biases: [`FoldedAdapter`]) is
//! read for evaluation and merging only: it is folded into the base weights, which is exactly
//! PEFT's forward outside training. What PEFT can express beyond that is refused by name.

use super::config::ModelConfig;
use super::params::{proj_module, proj_shape, Params};
use super::tensor_file::save_tensors;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The projections an adapter may sit on (every projection of a layer).
pub use super::params::PROJECTIONS;

/// The adapter's file names inside its directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The prefix PEFT puts before the base model's own tensor names.
const PEFT_PREFIX: &str = "base_model.model.";

fn default_targets() -> Vec<String> {
    PROJECTIONS.iter().map(|(_, p)| p.to_string()).collect()
}

/// LoRA settings of a training run (`train --lora-rank ..`, `[train.lora]` in experiment
/// configs). rank 0 means a full fine-tune (no adapter).
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// LoRA rank r: train a rank-r adapter on each target projection with the base frozen
    /// (0 = full fine-tune, which refuses the other LoRA flags). Saved in PEFT's format (adapter_config.json,
    /// adapter_model.safetensors).
    #[arg(long = "lora-rank", id = "lora_rank", default_value_t = 0)]
    pub rank: usize,
    /// LoRA alpha: the adapter's output is scaled by alpha / r (alpha / sqrt(r) with
    /// --lora-rslora).
    #[arg(long = "lora-alpha", id = "lora_alpha", default_value_t = 16.0)]
    pub alpha: f64,
    /// Dropout on the adapter's input (PEFT's lora_dropout): in training each adapter's
    /// input x is masked (kept entries scaled by 1 / (1 - p)), the frozen path sees x
    /// unchanged; off in evaluation and generation. Masks are drawn from (seed, step,
    /// micro-batch, layer, projection), so a resumed run draws the same ones.
    #[arg(long = "lora-dropout", id = "lora_dropout", default_value_t = 0.0)]
    pub dropout: f64,
    /// Projections that get an adapter, comma-separated, or all-linear (every projection
    /// below, not the LM head): q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(
        long = "lora-targets",
        id = "lora_targets",
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub targets: Vec<String>,
    /// rsLoRA: scale by alpha / sqrt(r) instead of alpha / r (PEFT's use_rslora).
    #[arg(long = "lora-rslora", id = "lora_rslora")]
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            targets: default_targets(),
            ..LoraConfig::DEFAULT
        }
    }
}

impl LoraConfig {
    /// The defaults a constant can hold (`TrainConfig::DEFAULT`): no adapter. Its empty
    /// `targets` is never used, since rank 0 trains no adapter; [`Default`] fills in the
    /// seven projections.
    pub const DEFAULT: LoraConfig = LoraConfig {
        rank: 0,
        alpha: 16.0,
        dropout: 0.0,
        targets: Vec::new(),
        rslora: false,
    };

    /// Whether this run trains an adapter (rank > 0).
    pub fn enabled(&self) -> bool {
        self.rank > 0
    }

    /// Whether the settings are the defaults of a full fine-tune (left out of saved
    /// settings, so runs from before LoRA existed compare equal).
    pub fn is_off(&self) -> bool {
        *self == LoraConfig::default()
    }

    /// The adapter's output scale: alpha / r, or alpha / sqrt(r) for rsLoRA.
    pub fn scale(&self) -> f64 {
        self.scale_with(self.rank, self.alpha)
    }

    /// The scale of a module whose rank and alpha PEFT's patterns set (rsLoRA as configured).
    fn scale_with(&self, rank: usize, alpha: f64) -> f64 {
        if self.rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }

    /// The target projections resolved ("all-linear" = every projection), each checked.
    pub fn resolved_targets(&self) -> Result<Vec<String>> {
        if self.targets.iter().any(|t| t == "all-linear") {
            return Ok(default_targets());
        }
        let mut out = Vec::new();
        for t in &self.targets {
            let t = t.trim();
            if !PROJECTIONS.iter().any(|(_, p)| *p == t) {
                bail!(
                    "lora targets (--lora-targets): \"{t}\" is not a projection; use some of \
                     q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear"
                );
            }
            if !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
        if out.is_empty() {
            bail!("lora targets (--lora-targets) is empty");
        }
        Ok(out)
    }

    /// The adapter's parameter count on `model`: r·(in + out) for every target projection of
    /// every layer (0 when off).
    pub fn num_params(&self, model: &ModelConfig) -> Result<usize> {
        if !self.enabled() {
            return Ok(0);
        }
        let per_layer: usize = self
            .resolved_targets()?
            .iter()
            .map(|t| {
                let (out, inp) = proj_shape(model, t);
                self.rank * (out + inp)
            })
            .sum();
        Ok(per_layer * model.num_hidden_layers)
    }

    /// Refuse settings that cannot train (only checked when [`Self::enabled`]).
    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        self.validate_enabled()
    }

    /// [`validate`](Self::validate) for an experiment stage's `lora` table, where rank 0
    /// with other keys set would silently drop them: refused, naming the way out.
    pub fn validate_stage(&self) -> Result<()> {
        if !self.enabled() && !self.is_off() {
            bail!(
                "rank = 0 means a full fine-tune, so the table's other keys (alpha, dropout, \
                 targets, rslora) would be ignored: set rank to 1 or more for a LoRA adapter, \
                 or leave lora out for a full fine-tune"
            );
        }
        self.validate()
    }

    fn validate_enabled(&self) -> Result<()> {
        // The scale multiplies float32 weights: past float32's range it is inf.
        if !((self.alpha as f32).is_finite() && self.alpha > 0.0) {
            bail!(
                "lora alpha (--lora-alpha) must be a finite number > 0 within float32's range, \
                 got {}",
                self.alpha
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!(
                "lora dropout (--lora-dropout) must be in [0, 1), got {}",
                self.dropout
            );
        }
        self.resolved_targets()?;
        Ok(())
    }
}

/// A LoRA adapter: its settings and its A / B tensors (trainable variables).
#[derive(Clone)]
pub struct Adapter {
    /// rank, alpha, dropout, rsLoRA and the projections that carry an adapter.
    pub cfg: LoraConfig,
    /// `model.layers.{l}.{block}.{proj}.lora_A.weight` (r, in) and `...lora_B.weight`
    /// (out, r), in layer then [`PROJECTIONS`] order.
    pub params: Params,
    /// PEFT's `base_model_name_or_path`: the base model the adapter was trained on.
    pub base_model: String,
    /// What PEFT's config says beyond one rank and alpha: the layers and per-module ranks
    /// and alphas. Written back on save, so PEFT builds the same modules.
    pub layout: PeftLayout,
    /// The training run's seed, which draws the dropout masks (see [`LoraDropout`]); set by
    /// `adapted::for_training`, unused outside training.
    pub seed: u64,
}

/// The LoRA dropout of one training forward: the probability p and where the forward sits
/// in its run (the run's seed, the optimizer step, the micro-batch within the step). With
/// a layer and a projection it fixes that adapter's mask, so a killed and resumed run draws
/// the same masks, and the forward and the backward of one micro-batch see the same one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    pub p: f64,
    pub seed: u64,
    /// AdamW's update count before this step (restored on resume).
    pub step: u64,
    /// The micro-batch's index within the step.
    pub micro: u64,
}

impl LoraDropout {
    /// The dropout of micro-batch `micro` of the optimizer step that follows `step` AdamW
    /// updates of a run seeded `seed`, or None where `cfg` has none (p = 0).
    pub fn of(cfg: &LoraConfig, seed: u64, step: u64, micro: u64) -> Option<Self> {
        (cfg.dropout > 0.0).then_some(LoraDropout {
            p: cfg.dropout,
            seed,
            step,
            micro,
        })
    }

    /// The inverted-dropout multipliers of the `n` (rows x in, row-major) inputs of
    /// projection `proj` (index in [`PROJECTIONS`]) of layer `layer`: 0 with probability p,
    /// else 1 / (1 - p) (PyTorch's `F.dropout` in training). One ChaCha8 stream per
    /// (seed, step, micro-batch, layer, projection): each adapter draws its own mask, as
    /// PEFT gives each its own dropout module.
    pub fn mask(&self, layer: usize, proj: usize, n: usize) -> Vec<f32> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&self.step.to_le_bytes());
        key[16..24].copy_from_slice(&self.micro.to_le_bytes());
        key[24..28].copy_from_slice(&(layer as u32).to_le_bytes());
        key[28..30].copy_from_slice(&(proj as u16).to_le_bytes());
        key[30..32].copy_from_slice(b"Ld"); // apart from every other seeded stream
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
        // Drop where a uniform 32-bit draw falls below p * 2^32.
        let below = (self.p * 4294967296.0) as u64;
        let keep = (1.0 / (1.0 - self.p)) as f32;
        (0..n)
            .map(|_| {
                if (rng.next_u32() as u64) < below {
                    0.0
                } else {
                    keep
                }
            })
            .collect()
    }
}

/// The internal names of one projection's A and B.
pub fn lora_names(module: &str) -> (String, String) {
    (
        format!("{module}.lora_A.weight"),
        format!("{module}.lora_B.weight"),
    )
}

impl Adapter {
    /// A fresh adapter as PEFT initialises one (init_lora_weights = True): A from
    /// kaiming_uniform(a = sqrt 5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B zero, so the adapted
    /// model starts equal to the base. Seeded, so a resumed run starts from the same A.
    pub fn init(
        model: &ModelConfig,
        cfg: &LoraConfig,
        seed: u64,
        base_model: &str,
    ) -> Result<Adapter> {
        cfg.validate()?;
        let targets = cfg.resolved_targets()?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        // Its own stream: the same seed also orders the data.
        rng.set_stream(0x10_4a);
        let r = cfg.rank;
        let mut entries = Vec::new();
        for l in 0..model.num_hidden_layers {
            for (j, (_, proj)) in PROJECTIONS.into_iter().enumerate() {
                if !targets.iter().any(|t| t == proj) {
                    continue;
                }
                let (out, inp) = proj_shape(model, proj);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..r * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let (na, nb) = lora_names(&proj_module(l, j));
                let a = Tensor::from_vec(a, (r, inp), &Device::Cpu)?;
                entries.push((na, Var::from_tensor(&a)?));
                entries.push((nb, Var::zeros((out, r), DType::F32, &Device::Cpu)?));
            }
        }
        Ok(Adapter {
            cfg: LoraConfig {
                targets,
                ..cfg.clone()
            },
            params: Params::new(entries),
            base_model: base_model.to_string(),
            layout: PeftLayout::default(),
            seed,
        })
    }

    /// The output scale s of `module`'s `x A^T B^T`: alpha / r (alpha / sqrt r with rsLoRA),
    /// with PEFT's `rank_pattern` / `alpha_pattern` where they name the module.
    pub fn scale_of(&self, module: &str) -> Result<f64> {
        let (rank, alpha) = self.layout.rank_alpha(&self.cfg, module)?;
        Ok(self.cfg.scale_with(rank, alpha))
    }

    /// A (r, in) and B (out, r) of `module` (`model.layers.0.self_attn.q_proj`), if adapted.
    pub fn pair(&self, module: &str) -> Result<Option<(Tensor, Tensor)>> {
        let (na, nb) = lora_names(module);
        if !self.params.contains(&na) {
            return Ok(None);
        }
        Ok(Some((self.params.tensor(&na)?, self.params.tensor(&nb)?)))
    }

    /// Check every A / B against the model's projection shapes (rank r).
    pub fn check_fits(&self, model: &ModelConfig, source: &Path) -> Result<()> {
        for (name, var) in self.params.iter() {
            let (module, which) = split_name(name)
                .with_context(|| format!("{}: unexpected tensor \"{name}\"", source.display()))?;
            let layer = module
                .strip_prefix("model.layers.")
                .and_then(|s| s.split('.').next())
                .and_then(|s| s.parse::<usize>().ok());
            let proj = module.rsplit('.').next().unwrap_or("");
            match layer {
                Some(l) if l < model.num_hidden_layers => {}
                _ => bail!(
                    "{}: tensor \"{name}\" is for a layer the base model (with {} layers) lacks",
                    source.display(),
                    model.num_hidden_layers
                ),
            }
            let (out, inp) = proj_shape(model, proj);
            let (rank, _) = self
                .layout
                .rank_alpha(&self.cfg, module)
                .with_context(|| source.display().to_string())?;
            let want = if which == 'A' {
                vec![rank, inp]
            } else {
                vec![out, rank]
            };
            if var.dims() != want.as_slice() {
                bail!(
                    "{}: tensor \"{name}\" has shape {:?}, expected {want:?} (r = {rank} on this \
                     base model); is the adapter for another base model?",
                    source.display(),
                    var.dims(),
                );
            }
        }
        Ok(())
    }

    /// Read a LoRA adapter directory PEFT (or elastica) wrote, checked against `model`, to
    /// apply on the fly or train further. A DoRA adapter is refused here, with where it loads.
    pub fn load(dir: &Path, model: &ModelConfig) -> Result<Adapter> {
        match PeftAdapter::load(dir, model)? {
            PeftAdapter::Lora(a) => Ok(a),
            PeftAdapter::Folded(f) => bail!(
                "{} holds {}: elastica evaluates such an adapter folded into the base weights \
                 (--adapter in eval-loss, generate, compress and rates; elastica merge), but \
                 does not train one or apply it on the fly; merge it first (elastica merge) and \
                 use the merged model",
                dir.join(CONFIG_FILE).display(),
                f.features().join(", ")
            ),
        }
    }
}

/// A PEFT adapter that elastica applies by folding it into the base weights (evaluation and
/// `elastica merge`; it is not trained or applied on the fly). Beyond LoRA's A and B on the
/// projections it holds any of:
/// - DoRA's magnitudes (Liu et al. 2024; `use_dora = true`): a learned m per output row of each
///   adapted projection. Outside training PEFT computes `m / ||W + s B A||_row * (W + s B A) x`
///   (each row's norm held constant), which folds exactly into the weight;
/// - LoRA on the embedding (`embed_tokens += s (B A)^T`, before Gemma's scaling, as PEFT adds
///   it) or on the LM head (`lm_head += s B A`);
/// - whole tensors: the modules PEFT trains and saves entire (`modules_to_save`) and the biases
///   trained under `bias = "all"` / `"lora_only"`; they replace the base's.
///
/// On a model whose LM head is tied to its embedding, PEFT changes the one it wraps and leaves
/// the other on the base tensor, so the folded model is untied (`tie_word_embeddings = false`).
#[derive(Clone)]
pub struct FoldedAdapter {
    /// The projections' low-rank update (A, B, scales, layout), as a LoRA adapter.
    pub lora: Adapter,
    /// `model.layers.{l}.{block}.{proj}` -> m, shape (out,).
    pub magnitudes: BTreeMap<String, Tensor>,
    /// `model.embed_tokens` -> (A (r, vocab), B (hidden, r)); `lm_head` -> (A (r, hidden),
    /// B (vocab, r)).
    pub outer: BTreeMap<String, (Tensor, Tensor)>,
    /// Checkpoint name (`lm_head.weight`, `model.layers.0.self_attn.q_proj.bias`) -> tensor.
    pub whole: BTreeMap<String, Tensor>,
}

impl FoldedAdapter {
    /// What this adapter holds beyond LoRA on the projections, for messages.
    pub fn features(&self) -> Vec<String> {
        let mut f = Vec::new();
        if !self.magnitudes.is_empty() {
            f.push("DoRA magnitudes (use_dora = true)".to_string());
        }
        for m in self.outer.keys() {
            f.push(format!("LoRA on {m}"));
        }
        let (biases, modules): (Vec<&String>, Vec<&String>) =
            self.whole.keys().partition(|k| k.ends_with(".bias"));
        if !biases.is_empty() {
            f.push(format!(
                "{} trained biases (bias = all / lora_only)",
                biases.len()
            ));
        }
        if !modules.is_empty() {
            f.push(format!("whole tensors (modules_to_save): {modules:?}"));
        }
        f
    }

    /// The base model (`cfg`, `base`) with the adapter folded in: its configuration (untied
    /// where the adapter changes one of a tied embedding and LM head) and weights (new
    /// variables; the base is not changed).
    pub fn merged(&self, cfg: &ModelConfig, base: &Params) -> Result<(ModelConfig, Params)> {
        let mut entries = Vec::new();
        for (name, var) in base.iter() {
            entries.push((
                name.clone(),
                Var::from_tensor(&self.folded(name, var.as_tensor())?)?,
            ));
        }
        let mut cfg = cfg.clone();
        let touches =
            |m: &str| self.outer.contains_key(m) || self.whole.contains_key(&format!("{m}.weight"));
        if cfg.tie_word_embeddings && (touches(EMBED) || touches(HEAD)) {
            // The head keeps the base embedding, with its own change if it has one.
            let embed = base.tensor(&format!("{EMBED}.weight"))?;
            let head = self.folded(&format!("{HEAD}.weight"), &embed)?;
            entries.push((format!("{HEAD}.weight"), Var::from_tensor(&head)?));
            cfg.tie_word_embeddings = false;
            if let Some(raw) = cfg.raw.as_object_mut() {
                raw.insert("tie_word_embeddings".into(), false.into());
            }
        }
        Ok((cfg, Params::new(entries)))
    }

    /// Base tensor `name` (`w`) with this adapter's change to it.
    fn folded(&self, name: &str, w: &Tensor) -> Result<Tensor> {
        // A whole tensor replaces the base's; LoRA on its module (PEFT saves the base layer of
        // an adapted embedding or head whole) adds to it.
        let w = self.whole.get(name).unwrap_or(w);
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if let Some((a, b)) = self.outer.get(module) {
            let s = self.lora.scale_of(module)?;
            let delta = (b.matmul(a)? * s)?;
            // The embedding's B A is (hidden, vocab): PEFT looks a token up in A's column.
            let delta = if module == EMBED { delta.t()? } else { delta };
            return Ok((w + delta)?);
        }
        let Some((a, b)) = self.lora.pair(module)? else {
            return Ok(w.copy()?);
        };
        let w = (w + (b.matmul(&a)? * self.lora.scale_of(module)?)?)?;
        let Some(m) = self.magnitudes.get(module) else {
            return Ok(w);
        };
        let norm = w.sqr()?.sum_keepdim(1)?.sqrt()?;
        let scale = m.unsqueeze(1)?.broadcast_div(&norm)?;
        // A zero row of W + s B A has no direction to scale.
        if let Some(x) = super::tensor_file::non_finite(&scale)? {
            bail!(
                "DoRA on \"{module}\": m / ||W + s B A|| is {x} (a row of W + s B A is zero or \
                 overflows)"
            );
        }
        Ok(w.broadcast_mul(&scale)?)
    }
}

/// An adapter directory as PEFT wrote it: plain LoRA, or one that only folds.
#[derive(Clone)]
pub enum PeftAdapter {
    Lora(Adapter),
    Folded(FoldedAdapter),
}

impl PeftAdapter {
    /// The base model (`cfg`, `base`) with the adapter merged in: W + s B A for LoRA, the
    /// fold of [`FoldedAdapter::merged`] otherwise.
    pub fn merged(&self, cfg: &ModelConfig, base: &Params) -> Result<(ModelConfig, Params)> {
        match self {
            PeftAdapter::Lora(a) => Ok((cfg.clone(), a.merged(base)?)),
            PeftAdapter::Folded(f) => f.merged(cfg, base),
        }
    }

    /// Read an adapter directory PEFT (or elastica) wrote, checked against `model`.
    pub fn load(dir: &Path, model: &ModelConfig) -> Result<PeftAdapter> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).with_context(|| {
            format!(
                "cannot read {} (an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE})",
                cfg_path.display()
            )
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
        let peft = PeftConfig::from_json(&json).with_context(|| cfg_path.display().to_string())?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.is_file() {
            if dir.join("adapter_model.bin").exists() {
                bail!(
                    "{} holds only adapter_model.bin (a pickle); elastica refuses pickles because \
                     loading one can run arbitrary code. Re-save it with safe_serialization=True",
                    dir.display()
                );
            }
            bail!("{} is missing", weights.display());
        }
        let mut read = PeftTensors::read(&weights)?;
        if let Some(l) = peft
            .layout
            .layers
            .iter()
            .flatten()
            .find(|&&l| l >= model.num_hidden_layers)
        {
            bail!(
                "{}: layers_to_transform names layer {l}, but the base model has {} layers",
                cfg_path.display(),
                model.num_hidden_layers
            );
        }
        match (peft.dora, read.magnitudes.is_empty()) {
            (true, true) => bail!(
                "{}: use_dora = true, but {} holds no lora_magnitude_vector",
                cfg_path.display(),
                weights.display()
            ),
            (false, false) => bail!(
                "{} holds DoRA magnitudes (lora_magnitude_vector), but {} does not set \
                 use_dora = true",
                weights.display(),
                cfg_path.display()
            ),
            _ => {}
        }
        let paths = (cfg_path.as_path(), weights.as_path());
        peft.check_targets_exist(model, &cfg_path)?;
        let mut unused = Vec::new();
        let (entries, targets) =
            projection_pairs(&mut read.lora, &peft, model, &weights, &mut unused)?;
        let outer = outer_pairs(read.outer, &peft, model, paths, &mut unused)?;
        for m in &unused {
            read.magnitudes.remove(m);
        }
        peft.warn_unused(&unused, paths);
        check_whole(&read.whole, &outer, &peft, model, paths)?;
        if entries.is_empty() && outer.is_empty() && read.whole.is_empty() {
            bail!("{} holds no LoRA tensors", weights.display());
        }
        let adapter = Adapter {
            cfg: LoraConfig {
                rank: peft.r,
                alpha: peft.alpha,
                dropout: peft.dropout,
                targets: PROJECTIONS
                    .iter()
                    .filter(|(_, p)| targets.contains(p))
                    .map(|(_, p)| p.to_string())
                    .collect(),
                rslora: peft.rslora,
            },
            params: Params::new(entries),
            base_model: peft.base_model,
            layout: peft.layout,
            seed: 0,
        };
        adapter.check_fits(model, &weights)?;
        check_magnitudes(&adapter, &read.magnitudes, model, &weights)?;
        if read.magnitudes.is_empty() && outer.is_empty() && read.whole.is_empty() {
            return Ok(PeftAdapter::Lora(adapter));
        }
        if peft.ensure_weight_tying && model.tie_word_embeddings {
            let tied = [EMBED, HEAD];
            if tied
                .iter()
                .any(|m| outer.contains_key(*m) || read.whole.contains_key(&format!("{m}.weight")))
            {
                bail!(
                    "{}: ensure_weight_tying = true on a model with a tied LM head, and the \
                     adapter changes the embedding or the head; elastica does not fold that \
                     (PEFT's tying rules differ across versions)",
                    cfg_path.display()
                );
            }
        }
        Ok(PeftAdapter::Folded(FoldedAdapter {
            lora: adapter,
            magnitudes: read.magnitudes,
            outer,
            whole: read.whole,
        }))
    }
}

/// An adapter file's tensors, sorted by what they are ([`PeftTensor`]).
#[derive(Default)]
struct PeftTensors {
    lora: BTreeMap<String, Tensor>,
    magnitudes: BTreeMap<String, Tensor>,
    outer: BTreeMap<(String, char), Tensor>,
    whole: BTreeMap<String, Tensor>,
}

impl PeftTensors {
    /// The tensors of an adapter file, as f32, sorted; unknown, non-finite or repeated ones
    /// are refused naming the file and tensor.
    fn read(weights: &Path) -> Result<PeftTensors> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .with_context(|| format!("cannot read {}", weights.display()))?;
        let mut read = PeftTensors::default();
        for (key, t) in tensors {
            let what = internal_name(&key).with_context(|| {
                format!("{}: tensor \"{key}\" is not supported", weights.display())
            })?;
            let t = t.to_dtype(DType::F32)?;
            if let Some(x) = super::tensor_file::non_finite(&t)? {
                bail!(
                    "{}: tensor \"{key}\" holds a non-finite value ({x})",
                    weights.display()
                );
            }
            if let Some(name) = read.insert(what, t) {
                bail!("{}: tensor \"{name}\" appears twice", weights.display());
            }
        }
        Ok(read)
    }

    /// File `t` as `what`; returns its name if one of that name was filed already.
    fn insert(&mut self, what: PeftTensor, t: Tensor) -> Option<String> {
        let (name, old) = match what {
            PeftTensor::Lora(n) => (n.clone(), self.lora.insert(n, t)),
            PeftTensor::Magnitude(m) => (format!("{m}{MAGNITUDE}"), self.magnitudes.insert(m, t)),
            PeftTensor::Outer(m, w) => (format!("{m} lora_{w}"), self.outer.insert((m, w), t)),
            PeftTensor::Whole(n) => (n.clone(), self.whole.insert(n, t)),
        };
        old.map(|_| name)
    }
}

/// Named A / B variables in order, and the projections that carry them.
type ProjectionPairs = (Vec<(String, Var)>, BTreeSet<&'static str>);

/// The projections' A / B in order (layer, then projection, A before B), each with its
/// partner, only on the layers `layers_to_transform` lists; and the projections adapted.
/// Removes them from `lora`; a tensor left over is on no projection of the model.
fn projection_pairs(
    lora: &mut BTreeMap<String, Tensor>,
    peft: &PeftConfig,
    model: &ModelConfig,
    weights: &Path,
    unused: &mut Vec<String>,
) -> Result<ProjectionPairs> {
    let mut entries = Vec::new();
    let mut targets = BTreeSet::new();
    for l in 0..model.num_hidden_layers {
        for (j, (_, proj)) in PROJECTIONS.into_iter().enumerate() {
            let module = proj_module(l, j);
            let (na, nb) = lora_names(&module);
            match (lora.remove(&na), lora.remove(&nb)) {
                // PEFT builds no LoRA layer there and leaves the tensors unused.
                (Some(_), _) | (_, Some(_)) if !peft.adapts(&module, true, Some(l)) => {
                    unused.push(module);
                }
                (Some(a), Some(b)) => {
                    targets.insert(proj);
                    entries.push((na, Var::from_tensor(&a)?));
                    entries.push((nb, Var::from_tensor(&b)?));
                }
                (None, None) => {}
                (Some(_), None) => bail!("{}: \"{na}\" has no lora_B", weights.display()),
                (None, Some(_)) => bail!("{}: \"{nb}\" has no lora_A", weights.display()),
            }
        }
    }
    if let Some(name) = lora.keys().next() {
        bail!(
            "{}: tensor \"{name}\" is not on a projection of the base model's {} layers",
            weights.display(),
            model.num_hidden_layers
        );
    }
    Ok((entries, targets))
}

/// LoRA's (A, B) on the embedding and the LM head, each pair complete and of the shapes its
/// module's rank (PEFT's `rank_pattern` applies) gives.
fn outer_pairs(
    mut outer: BTreeMap<(String, char), Tensor>,
    peft: &PeftConfig,
    model: &ModelConfig,
    (cfg_path, weights): (&Path, &Path),
    unused: &mut Vec<String>,
) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    let lora_cfg = LoraConfig {
        rank: peft.r,
        alpha: peft.alpha,
        ..LoraConfig::DEFAULT
    };
    let mut pairs = BTreeMap::new();
    for module in [EMBED, HEAD] {
        let a = outer.remove(&(module.to_string(), 'A'));
        let b = outer.remove(&(module.to_string(), 'B'));
        let (a, b) = match (a, b) {
            (None, None) => continue,
            _ if !peft.adapts(module, module == HEAD, None) => {
                unused.push(module.to_string());
                continue;
            }
            (Some(a), Some(b)) => (a, b),
            _ => bail!(
                "{}: LoRA on {module} has only one of A and B",
                weights.display()
            ),
        };
        let (r, _) = peft
            .layout
            .rank_alpha(&lora_cfg, module)
            .with_context(|| cfg_path.display().to_string())?;
        let (v, h) = (model.vocab_size, model.hidden_size);
        let want = if module == EMBED {
            ([r, v], [h, r])
        } else {
            ([r, h], [v, r])
        };
        if a.dims() != want.0 || b.dims() != want.1 {
            bail!(
                "{}: LoRA on {module} has A {:?} and B {:?}, expected {:?} and {:?} (r = {r}, \
                 vocabulary {v}, hidden size {h}); is the adapter for another base model, or \
                 one with a resized vocabulary?",
                weights.display(),
                a.dims(),
                b.dims(),
                want.0,
                want.1
            );
        }
        pairs.insert(module.to_string(), (a, b));
    }
    Ok(pairs)
}

/// Refuse a whole tensor that the base model lacks, has in another shape, or that the
/// adapter's config neither saves (`modules_to_save`) nor trains (`bias`), and that is not the
/// base layer of an adapted embedding or head (which PEFT saves with `save_embedding_layers`).
fn check_whole(
    whole: &BTreeMap<String, Tensor>,
    outer: &BTreeMap<String, (Tensor, Tensor)>,
    peft: &PeftConfig,
    model: &ModelConfig,
    (cfg_path, weights): (&Path, &Path),
) -> Result<()> {
    let specs = super::params::param_specs(model);
    for (name, t) in whole {
        let shape = match specs.iter().find(|s| s.name == *name) {
            Some(s) => s.shape.clone(),
            // A tied model has no head tensor of its own; PEFT's copy of the head unties it.
            None if name == "lm_head.weight" => vec![model.vocab_size, model.hidden_size],
            None => bail!(
                "{}: tensor \"{name}\" is not a tensor of the base model",
                weights.display()
            ),
        };
        if t.dims() != shape.as_slice() {
            bail!(
                "{}: tensor \"{name}\" has shape {:?}, but the base model's is {shape:?}; is the \
                 adapter for another base model, or one with a resized vocabulary?",
                weights.display(),
                t.dims()
            );
        }
        let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
        // PEFT matches modules_to_save as plain suffixes ("norm" saves input_layernorm too).
        let saved = peft
            .modules_to_save
            .iter()
            .any(|m| module.ends_with(m.as_str()));
        let bias = name.ends_with(".bias") && peft.trains_biases;
        if !(saved || bias || outer.contains_key(module)) {
            bail!(
                "{}: tensor \"{name}\" is a whole tensor of the base model, but {} neither lists \
                 its module in modules_to_save, nor trains biases (bias), nor adapts it",
                weights.display(),
                cfg_path.display()
            );
        }
    }
    Ok(())
}

/// Every DoRA magnitude sits beside an A / B pair and has one value per output row, and
/// (when there are magnitudes) every adapted projection has one.
fn check_magnitudes(
    adapter: &Adapter,
    magnitudes: &BTreeMap<String, Tensor>,
    model: &ModelConfig,
    weights: &Path,
) -> Result<()> {
    if magnitudes.is_empty() {
        return Ok(());
    }
    for (module, m) in magnitudes {
        let proj = module.rsplit('.').next().unwrap_or("");
        let (out, _) = proj_shape(model, proj);
        if adapter.pair(module)?.is_none() {
            bail!(
                "{}: \"{module}{MAGNITUDE}\" has no lora_A / lora_B beside it",
                weights.display()
            );
        }
        if m.dims() != [out] {
            bail!(
                "{}: \"{module}{MAGNITUDE}\" has shape {:?}, expected [{out}]",
                weights.display(),
                m.dims()
            );
        }
    }
    let adapted = adapter
        .params
        .iter()
        .filter_map(|(n, _)| split_name(n).map(|(m, _)| m));
    if let Some(m) = adapted.into_iter().find(|m| !magnitudes.contains_key(*m)) {
        bail!(
            "{}: \"{m}\" has lora_A / lora_B but no lora_magnitude_vector (use_dora = true)",
            weights.display()
        );
    }
    Ok(())
}

impl Adapter {
    /// Write the adapter in PEFT's format into `dir` (created if needed): each file atomic
    /// and durable, the config last.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors = Vec::new();
        for (name, var) in self.params.iter() {
            if let Some(x) = super::tensor_file::non_finite(var.as_tensor())? {
                bail!(
                    "refusing to save the adapter in {}: tensor \"{name}\" holds a non-finite \
                     value ({x}); training diverged (lower the learning rate)",
                    dir.display()
                );
            }
            tensors.push((
                format!("{PEFT_PREFIX}{name}"),
                var.as_tensor().contiguous()?,
            ));
        }
        save_tensors(&tensors, &dir.join(WEIGHTS_FILE))?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "r": self.cfg.rank,
            "lora_alpha": self.cfg.alpha,
            "lora_dropout": self.cfg.dropout,
            "target_modules": self.cfg.targets,
            "bias": "none",
            "use_rslora": self.cfg.rslora,
            "use_dora": false,
            "fan_in_fan_out": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "layers_to_transform": self.layout.layers,
            "layers_pattern": null,
            "rank_pattern": serde_json::Map::from_iter(
                self.layout.rank_pattern.iter().map(|(k, r)| (k.clone(), (*r).into()))
            ),
            "alpha_pattern": serde_json::Map::from_iter(
                self.layout.alpha_pattern.iter().map(|(k, a)| (k.clone(), (*a).into()))
            ),
            "inference_mode": true,
            "revision": null,
        });
        crate::util::fsx::atomic_write_json(&dir.join(CONFIG_FILE), &config)
    }

    /// The merged weights W + s * B A for every adapted projection, with every other tensor
    /// of `base` as it is (new variables: the base is not changed).
    pub fn merged(&self, base: &Params) -> Result<Params> {
        let mut entries = Vec::new();
        for (name, var) in base.iter() {
            let module = name.strip_suffix(".weight").unwrap_or(name);
            let t = match self.pair(module)? {
                Some((a, b)) => (var.as_tensor() + (b.matmul(&a)? * self.scale_of(module)?)?)?,
                None => var.as_tensor().copy()?,
            };
            entries.push((name.clone(), Var::from_tensor(&t)?));
        }
        Ok(Params::new(entries))
    }
}

/// `model.layers.0.self_attn.q_proj.lora_A.weight` -> (`model.layers.0.self_attn.q_proj`, 'A').
fn split_name(name: &str) -> Option<(&str, char)> {
    if let Some(m) = name.strip_suffix(".lora_A.weight") {
        return Some((m, 'A'));
    }
    name.strip_suffix(".lora_B.weight").map(|m| (m, 'B'))
}

/// What one tensor of a PEFT adapter file is, named inside elastica.
#[derive(Debug, Clone, PartialEq)]
enum PeftTensor {
    /// A projection's A or B: `model.layers.0.self_attn.q_proj.lora_A.weight`.
    Lora(String),
    /// DoRA's magnitude of a projection, by module (`model.layers.0.self_attn.q_proj`).
    Magnitude(String),
    /// A or B of LoRA on the embedding (`model.embed_tokens`, PEFT's `lora_embedding_A/B`)
    /// or on the LM head (`lm_head`).
    Outer(String, char),
    /// A base model tensor PEFT saves whole (`modules_to_save`, or a bias trained under
    /// `bias = "all"` / `"lora_only"`), by its checkpoint name (`lm_head.weight`).
    Whole(String),
}

/// The modules outside the decoder layers that LoRA can sit on.
const EMBED: &str = "model.embed_tokens";
const HEAD: &str = "lm_head";

/// PEFT's key -> what it is inside elastica, or why it is not supported.
fn internal_name(key: &str) -> Result<PeftTensor> {
    let Some(rest) = key.strip_prefix(PEFT_PREFIX) else {
        bail!("expected keys starting with \"{PEFT_PREFIX}\" (PEFT's layout)");
    };
    // Some PEFT versions keep the adapter's name ("default") in the key.
    let rest = rest
        .replace(".lora_A.default.weight", ".lora_A.weight")
        .replace(".lora_B.default.weight", ".lora_B.weight");
    // DoRA's magnitude: `{module}.lora_magnitude_vector` as PEFT saves it, also with
    // `.weight` / `.default.weight` (the parameter's own name in the model).
    if let Some(at) = rest.find(MAGNITUDE) {
        let module = &rest[..at];
        let tail = &rest[at + MAGNITUDE.len()..];
        if !matches!(tail, "" | ".weight" | ".default.weight" | ".default") {
            bail!("unexpected DoRA tensor name");
        }
        projection_module(module)?;
        return Ok(PeftTensor::Magnitude(module.to_string()));
    }
    // LoRA on the embedding: PEFT's parameters `lora_embedding_A` / `_B` (no `.weight`).
    for (which, tag) in [('A', ".lora_embedding_A"), ('B', ".lora_embedding_B")] {
        if let Some(at) = rest.find(tag) {
            let (module, tail) = (&rest[..at], &rest[at + tag.len()..]);
            if module != EMBED || !matches!(tail, "" | ".default" | ".weight") {
                bail!("LoRA on embeddings is supported on {EMBED} only");
            }
            return Ok(PeftTensor::Outer(EMBED.into(), which));
        }
    }
    if let Some((module, which)) = split_name(&rest) {
        if module == HEAD {
            return Ok(PeftTensor::Outer(HEAD.into(), which));
        }
        projection_module(module)?;
        return Ok(PeftTensor::Lora(rest));
    }
    if rest.contains("lora_") {
        bail!("unexpected LoRA tensor name");
    }
    // A whole tensor: PEFT's `modules_to_save` copy (`lm_head.modules_to_save.default.weight`
    // in the model, saved as `lm_head.weight`) or a trained bias (`q_proj.base_layer.bias`).
    let whole: Vec<&str> = rest
        .split('.')
        .filter(|s| !matches!(*s, "modules_to_save" | "default" | "base_layer"))
        .collect();
    match whole.last() {
        Some(&"weight") | Some(&"bias") => Ok(PeftTensor::Whole(whole.join("."))),
        _ => bail!("not a LoRA tensor, nor a weight or bias of the base model"),
    }
}

/// Refuse a module that is not one of the decoder's projections.
fn projection_module(module: &str) -> Result<()> {
    let proj = module.rsplit('.').next().unwrap_or("");
    let block = module.rsplit('.').nth(1).unwrap_or("");
    if !PROJECTIONS.iter().any(|(b, p)| *p == proj && *b == block) {
        bail!("adapters on \"{module}\" are not supported (only the decoder's projections)");
    }
    Ok(())
}

/// The suffix of DoRA's magnitude tensor (inside elastica: `{module}.lora_magnitude_vector`).
const MAGNITUDE: &str = ".lora_magnitude_vector";

/// The fields of PEFT's `adapter_config.json` elastica reads, with what it refuses.
struct PeftConfig {
    /// `use_dora`: the adapter also holds DoRA's magnitudes.
    dora: bool,
    /// `bias` is "all" or "lora_only": the adapter may hold trained biases.
    trains_biases: bool,
    /// `modules_to_save`: modules the adapter holds whole (names or name suffixes).
    modules_to_save: Vec<String>,
    /// `ensure_weight_tying`: PEFT keeps a tied embedding and LM head tied.
    ensure_weight_tying: bool,
    r: usize,
    alpha: f64,
    dropout: f64,
    rslora: bool,
    base_model: String,
    layout: PeftLayout,
    /// `target_modules` (None: not given, every module the file holds counts as targeted).
    targets: Option<Modules>,
    /// `exclude_modules`: modules left out even where `target_modules` names them.
    excluded: Option<Modules>,
}

/// A set of the base model's modules as PEFT's `target_modules` / `exclude_modules` name it:
/// a string is a regular expression the whole module name must match (`re.fullmatch`),
/// except `all-linear` (every linear layer but the LM head); a list holds module names or
/// name suffixes (`q_proj` names `model.layers.0.self_attn.q_proj`).
#[derive(Debug, Clone)]
enum Modules {
    AllLinear,
    Regex(String, regex::Regex),
    Names(Vec<String>),
}

impl Modules {
    fn from_json(v: &serde_json::Value, key: &str) -> Result<Modules> {
        match v {
            serde_json::Value::String(s) if s == "all-linear" => Ok(Modules::AllLinear),
            serde_json::Value::String(s) => {
                let re = regex::Regex::new(&format!("^(?:{s})$")).with_context(|| {
                    format!("\"{key}\" \"{s}\" is not a regular expression elastica reads")
                })?;
                Ok(Modules::Regex(s.clone(), re))
            }
            serde_json::Value::Array(a) => a
                .iter()
                .map(|m| m.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Modules::Names)
                .with_context(|| format!("\"{key}\" must be a string or a list of strings")),
            _ => bail!("\"{key}\" must be a string or a list of strings"),
        }
    }

    /// Whether `module` (a full name; `linear`: a linear layer) is in the set.
    fn contains(&self, module: &str, linear: bool) -> bool {
        match self {
            Modules::AllLinear => linear && module != HEAD,
            Modules::Regex(_, re) => re.is_match(module),
            Modules::Names(names) => names
                .iter()
                .any(|n| module == n || module.ends_with(&format!(".{n}"))),
        }
    }

    fn describe(&self) -> String {
        match self {
            Modules::AllLinear => "\"all-linear\"".into(),
            Modules::Regex(s, _) => format!("{s:?}"),
            Modules::Names(n) => format!("{n:?}"),
        }
    }
}

impl PeftConfig {
    /// Whether PEFT builds a LoRA layer on `module` (a full name; `linear`: a linear layer;
    /// `layer`: its decoder layer, none for the embedding and the head): `target_modules`
    /// names it, `exclude_modules` does not, and `layers_to_transform` (where set) lists its
    /// layer (a module outside the layers is then not adapted, as in PEFT).
    fn adapts(&self, module: &str, linear: bool, layer: Option<usize>) -> bool {
        self.targeted(module, linear)
            && match (&self.layout.layers, layer) {
                (None, _) => true,
                (Some(ls), Some(l)) => ls.contains(&l),
                (Some(_), None) => false,
            }
    }

    /// Whether `target_modules` (unset: every module) names `module` and `exclude_modules`
    /// does not.
    fn targeted(&self, module: &str, linear: bool) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|t| t.contains(module, linear))
            && !self
                .excluded
                .as_ref()
                .is_some_and(|e| e.contains(module, linear))
    }

    /// Say which LoRA tensors of the file PEFT leaves unused (it builds no LoRA layer on
    /// their modules, and loads the file without a word), as elastica leaves them too.
    fn warn_unused(&self, unused: &[String], (cfg_path, weights): (&Path, &Path)) {
        if let Some(first) = unused.first() {
            eprintln!(
                "warning: {}: LoRA tensors on {} module(s) ({first}{}) are left unused, as PEFT \
                 leaves them: {} does not adapt them (target_modules {}, exclude_modules {}, \
                 layers_to_transform {:?})",
                weights.display(),
                unused.len(),
                if unused.len() > 1 { ", ..." } else { "" },
                cfg_path.display(),
                self.targets
                    .as_ref()
                    .map_or("unset".into(), Modules::describe),
                self.excluded
                    .as_ref()
                    .map_or("unset".into(), Modules::describe),
                self.layout.layers
            );
        }
    }

    /// Refuse a `target_modules` that names none of the model's modules (PEFT raises then).
    fn check_targets_exist(&self, model: &ModelConfig, cfg_path: &Path) -> Result<()> {
        let projections = (0..model.num_hidden_layers)
            .flat_map(|l| (0..PROJECTIONS.len()).map(move |j| proj_module(l, j)));
        let mut modules = projections
            .map(|m| (m, true))
            .chain([(EMBED.to_string(), false), (HEAD.to_string(), true)]);
        if self.targets.is_some() && !modules.any(|(m, linear)| self.targeted(&m, linear)) {
            bail!(
                "{}: target_modules {} matches no module of the base model (PEFT refuses it too)",
                cfg_path.display(),
                self.targets
                    .as_ref()
                    .map(Modules::describe)
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// What PEFT's `adapter_config.json` can say beyond one rank and alpha that elastica computes:
/// `layers_to_transform`, and the per-module `rank_pattern` / `alpha_pattern`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeftLayout {
    /// The only layers that carry adapters, sorted (None: every layer).
    pub layers: Option<Vec<usize>>,
    /// (pattern, rank): PEFT gives a module the rank of the pattern it matches as a regex
    /// `(.*\.)?(pattern)$` on its name (`model.layers.0.self_attn.q_proj`), else `r`.
    pub rank_pattern: Vec<(String, usize)>,
    /// (pattern, alpha), matched as `rank_pattern`; else `lora_alpha`.
    pub alpha_pattern: Vec<(String, f64)>,
}

impl PeftLayout {
    /// The rank and alpha PEFT gives `module`.
    pub fn rank_alpha(&self, cfg: &LoraConfig, module: &str) -> Result<(usize, f64)> {
        let rank = matching(&self.rank_pattern, "rank_pattern", module)?.unwrap_or(cfg.rank);
        let alpha = matching(&self.alpha_pattern, "alpha_pattern", module)?.unwrap_or(cfg.alpha);
        Ok((rank, alpha))
    }
}

/// The value of the one `pattern` key that matches `module` as PEFT matches it. PEFT takes
/// the first match in the file's key order; the JSON reader does not keep that order, so a
/// module two keys match is refused rather than guessed.
fn matching<T: Copy>(pattern: &[(String, T)], what: &str, module: &str) -> Result<Option<T>> {
    let mut found: Option<(&str, T)> = None;
    for (key, v) in pattern {
        let re = regex::Regex::new(&format!("^(?:.*\\.)?(?:{key})$")).with_context(|| {
            format!("{what} key \"{key}\" is not a regular expression elastica reads")
        })?;
        if !re.is_match(module) {
            continue;
        }
        if let Some((first, _)) = found {
            bail!(
                "{what} keys \"{first}\" and \"{key}\" both match {module}; PEFT would take the \
                 one listed first, an order elastica does not keep: make the keys disjoint"
            );
        }
        found = Some((key, *v));
    }
    Ok(found.map(|(_, v)| v))
}

impl PeftConfig {
    /// Refuse what PEFT's config can ask that elastica does not compute: another adapter or
    /// task type, and the options that change what the adapter computes or where.
    fn refuse_unsupported(v: &serde_json::Value) -> Result<()> {
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        let peft_type = get("peft_type").and_then(|x| x.as_str()).unwrap_or("");
        if peft_type != "LORA" {
            bail!("peft_type is \"{peft_type}\"; only LORA adapters are supported");
        }
        if let Some(t) = get("task_type").and_then(|x| x.as_str()) {
            if t != "CAUSAL_LM" {
                bail!("task_type is \"{t}\"; only CAUSAL_LM adapters are supported");
            }
        }
        for k in ["fan_in_fan_out", "lora_bias", "use_qalora"] {
            if get(k).and_then(|x| x.as_bool()).unwrap_or(false) {
                bail!("{k} = true is not supported");
            }
        }
        let nonempty = |k: &str| match get(k) {
            None => false,
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(serde_json::Value::Object(o)) => !o.is_empty(),
            Some(serde_json::Value::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        for k in [
            "target_parameters",
            "trainable_token_indices",
            "layer_replication",
        ] {
            if nonempty(k) {
                bail!("{k} is set; elastica does not read it");
            }
        }
        Ok(())
    }

    fn from_json(v: &serde_json::Value) -> Result<PeftConfig> {
        Self::refuse_unsupported(v)?;
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        let flag = |k: &str| get(k).and_then(|x| x.as_bool()).unwrap_or(false);
        let trains_biases = match get("bias").and_then(|x| x.as_str()).unwrap_or("none") {
            "none" => false,
            "all" | "lora_only" => true,
            b => bail!("bias = \"{b}\" is not one of PEFT's \"none\", \"all\", \"lora_only\""),
        };
        let modules_to_save = match get("modules_to_save") {
            None => Vec::new(),
            Some(serde_json::Value::String(m)) => vec![m.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|m| m.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .context("\"modules_to_save\" must be a list of module names")?,
            Some(_) => bail!("\"modules_to_save\" must be a list of module names"),
        };
        let pattern = |k: &str, read: &dyn Fn(&serde_json::Value) -> Option<f64>| {
            let Some(m) = get(k) else {
                return Ok(Vec::new());
            };
            let m = m
                .as_object()
                .with_context(|| format!("\"{k}\" must be an object of module patterns"))?;
            m.iter()
                .map(|(key, v)| match read(v) {
                    Some(x) => Ok((key.clone(), x)),
                    None => bail!("\"{k}\": the value of \"{key}\" is not valid ({v})"),
                })
                .collect::<Result<Vec<_>>>()
        };
        let positive_int = |v: &serde_json::Value| v.as_u64().filter(|&r| r > 0).map(|r| r as f64);
        // Scales multiply float32 weights: past float32's range they are inf.
        fn finite(v: &serde_json::Value) -> Option<f64> {
            v.as_f64().filter(|&a| (a as f32).is_finite())
        }
        let rank_pattern = pattern("rank_pattern", &positive_int)?
            .into_iter()
            .map(|(k, r)| (k, r as usize))
            .collect();
        let alpha_pattern = pattern("alpha_pattern", &finite)?;
        let r = get("r")
            .and_then(|x| x.as_u64())
            .filter(|&r| r > 0)
            .context("\"r\" must be a positive integer")? as usize;
        let alpha = get("lora_alpha")
            .and_then(finite)
            .context("\"lora_alpha\" must be a finite number within float32's range")?;
        let dropout = get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0);
        let layer = |x: &serde_json::Value| x.as_u64().map(|l| l as usize);
        let layers = match get("layers_to_transform") {
            None => None,
            Some(serde_json::Value::Array(a)) => {
                let mut ls: Option<Vec<usize>> = a.iter().map(layer).collect();
                if let Some(ls) = &mut ls {
                    ls.sort_unstable();
                    ls.dedup();
                }
                Some(ls.filter(|ls| !ls.is_empty()))
            }
            Some(x) => Some(layer(x).map(|l| vec![l])),
        }
        .map(|ls| {
            ls.context("\"layers_to_transform\" must be a layer index or a non-empty list of them")
        })
        .transpose()?;
        Ok(PeftConfig {
            dora: flag("use_dora"),
            trains_biases,
            modules_to_save,
            ensure_weight_tying: flag("ensure_weight_tying"),
            r,
            alpha,
            dropout,
            rslora: flag("use_rslora"),
            base_model: get("base_model_name_or_path")
                .and_then(|x| x.as_str())
                .unwrap_or("")
                .to_string(),
            layout: PeftLayout {
                layers,
                rank_pattern,
                alpha_pattern,
            },
            targets: get("target_modules")
                .map(|v| Modules::from_json(v, "target_modules"))
                .transpose()?,
            excluded: get("exclude_modules")
                .map(|v| Modules::from_json(v, "exclude_modules"))
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_keys_map_with_or_without_the_adapter_name() {
        use PeftTensor::*;
        let p = |k: &str| internal_name(&format!("base_model.model.{k}")).unwrap();
        let lora = |n: &str| Lora(n.to_string());
        assert_eq!(
            p("model.layers.3.mlp.down_proj.lora_B.default.weight"),
            lora("model.layers.3.mlp.down_proj.lora_B.weight")
        );
        assert_eq!(
            p("model.layers.0.self_attn.q_proj.lora_A.weight"),
            lora("model.layers.0.self_attn.q_proj.lora_A.weight")
        );
        // DoRA's magnitude, in each of the names PEFT has used.
        for tail in ["", ".weight", ".default.weight"] {
            assert_eq!(
                p(&format!(
                    "model.layers.1.mlp.up_proj.lora_magnitude_vector{tail}"
                )),
                Magnitude("model.layers.1.mlp.up_proj".into())
            );
        }
        // LoRA on the embedding (PEFT's parameter names) and on the head.
        for tail in ["", ".default"] {
            assert_eq!(
                p(&format!("model.embed_tokens.lora_embedding_B{tail}")),
                Outer(EMBED.into(), 'B')
            );
        }
        assert_eq!(p("lm_head.lora_A.weight"), Outer(HEAD.into(), 'A'));
        // Whole tensors: a modules_to_save copy and a trained bias, as saved and as in the model.
        for k in ["lm_head.weight", "lm_head.modules_to_save.default.weight"] {
            assert_eq!(p(k), Whole("lm_head.weight".into()));
        }
        for k in [
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.q_proj.base_layer.bias",
        ] {
            assert_eq!(p(k), Whole("model.layers.0.self_attn.q_proj.bias".into()));
        }
        for (k, why) in [
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.x",
                "unexpected DoRA tensor",
            ),
            (
                "base_model.model.model.embed_tokens.lora_magnitude_vector",
                "not supported",
            ),
            (
                "base_model.model.model.layers.0.mlp.lora_embedding_A",
                "embed_tokens only",
            ),
            (
                "base_model.model.model.layers.0.self_attn.q_proj.lora_C",
                "unexpected LoRA",
            ),
            ("base_model.model.model.norm.scale", "weight or bias"),
            (
                "model.layers.0.self_attn.q_proj.lora_A.weight",
                "PEFT's layout",
            ),
        ] {
            let e = format!("{:#}", internal_name(k).unwrap_err());
            assert!(e.contains(why), "{k}: {e}");
        }
    }

    #[test]
    fn peft_configs_that_elastica_cannot_compute_are_refused_by_name() {
        let base = serde_json::json!({"peft_type":"LORA","r":4,"lora_alpha":8,"bias":"none",
            "target_modules":"all-linear","task_type":"CAUSAL_LM"});
        let ok = PeftConfig::from_json(&base).unwrap();
        assert_eq!((ok.r, ok.alpha, ok.rslora), (4, 8.0, false));
        assert!(!ok.dora);
        let mut dora = base.clone();
        dora["use_dora"] = true.into();
        assert!(PeftConfig::from_json(&dora).unwrap().dora);
        let mut extras = base.clone();
        extras["bias"] = "lora_only".into();
        extras["modules_to_save"] = serde_json::json!(["lm_head", "embed_tokens"]);
        let extras = PeftConfig::from_json(&extras).unwrap();
        assert!(extras.trains_biases);
        assert_eq!(extras.modules_to_save, ["lm_head", "embed_tokens"]);
        for (k, v) in [
            ("fan_in_fan_out", serde_json::json!(true)),
            ("bias", serde_json::json!("some")),
            ("modules_to_save", serde_json::json!([1])),
            ("trainable_token_indices", serde_json::json!([3, 4])),
            ("rank_pattern", serde_json::json!({"q_proj": 0})),
            ("lora_alpha", serde_json::json!(1e39)),
            ("alpha_pattern", serde_json::json!({"q_proj": 1e39})),
            ("layer_replication", serde_json::json!([[0, 1], [0, 1]])),
            ("peft_type", serde_json::json!("IA3")),
        ] {
            let mut c = base.clone();
            c[k] = v;
            let e = format!("{:#}", PeftConfig::from_json(&c).err().unwrap());
            assert!(e.contains(k) || e.contains("IA3"), "{k}: {e}");
        }
    }

    /// PEFT's pattern keys match a module's name as the regex `(.*\.)?(key)$`; a module two
    /// keys match, and a key that is no regex, are refused naming them.
    #[test]
    fn rank_and_alpha_patterns_match_as_peft_matches_them() {
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            ..LoraConfig::default()
        };
        let layout = PeftLayout {
            layers: None,
            rank_pattern: vec![("q_proj".into(), 4), (r"layers\.1\.mlp\..*".into(), 3)],
            alpha_pattern: vec![("proj".into(), 9.0), ("v_proj".into(), 2.5)],
        };
        let ra = |m: &str| layout.rank_alpha(&cfg, m).unwrap();
        assert_eq!(ra("model.layers.0.self_attn.q_proj"), (4, 4.0));
        assert_eq!(ra("model.layers.0.self_attn.v_proj"), (2, 2.5));
        assert_eq!(ra("model.layers.1.mlp.down_proj"), (3, 4.0));
        assert_eq!(
            ra("model.layers.0.mlp.down_proj"),
            (2, 4.0),
            "\"proj\" is a whole name"
        );
        let both = PeftLayout {
            rank_pattern: vec![("q_proj".into(), 4), ("self_attn.q_proj".into(), 8)],
            ..layout.clone()
        };
        let e = format!(
            "{:#}",
            both.rank_alpha(&cfg, "model.layers.0.self_attn.q_proj")
                .unwrap_err()
        );
        assert!(
            e.contains("\"q_proj\" and \"self_attn.q_proj\" both match"),
            "{e}"
        );
        let bad = PeftLayout {
            alpha_pattern: vec![("q_proj(".into(), 1.0)],
            ..layout
        };
        let e = format!(
            "{:#}",
            bad.rank_alpha(&cfg, "model.layers.0.self_attn.q_proj")
                .unwrap_err()
        );
        assert!(e.contains("alpha_pattern key \"q_proj(\""), "{e}");
    }

    #[test]
    fn scale_is_alpha_over_r_or_over_sqrt_r() {
        let mut c = LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        assert_eq!(c.scale(), 2.0);
        c.rslora = true;
        assert_eq!(c.scale(), 4.0);
    }
}
