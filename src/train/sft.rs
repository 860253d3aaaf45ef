//! SFT, and the run machinery every method shares: settings ([`TrainConfig`]), the resolved
//! run ([`RunSettings`], [`prepare_run`]), resume points, checkpoints and the step log. The
//! loop itself is `train::driver`'s; SFT's step ([`SftStep`]) is: micro-batches (forward,
//! token-weighted loss, backward, accumulate) -> clip -> AdamW. The data order of every
//! step is a pure function of (seed, step), so a run resumed from a checkpoint replays exactly
//! what the uninterrupted run would have done and ends on bit-identical weights.
//!
//! What a run can rely on:
//! - settings are checked before the first step (finite, in range, counts that do not
//!   overflow, a dtype the result can be saved in);
//! - a non-finite loss or gradient norm stops the run at that step, before the update, and
//!   non-finite weights are never saved (model::checkpoint refuses them);
//! - a checkpoint directory counts only when its completion marker exists: the marker is
//!   written last and deleted first, so a kill while writing or removing one leaves a
//!   directory that is skipped (and cleaned) instead of one that breaks every resume;
//! - each checkpoint, and the finished run's `train_config.toml`, carries the resolved
//!   settings and fingerprints of the starting weights and the tokenized data
//!   ([`RunSettings`]); a resume with another model, other settings or data is refused, naming what changed, and a resume of a finished run with
//!   the same settings does nothing.
//!
//! The caller must hold exclusive use of the output directory (`elastica train` locks it;
//! a grid cell holds its cell's lock).

use super::batch::{collate, loss_tokens, tokenize, Batch, Example};
use super::driver::{adamw_config, drive, AfterStep, Fused, Method, Outcome, Plan, Run, Trainee};
use super::loss::nll_sum;
use super::objective::DpoConfig;
use super::optim::{AdamW, Grads};
use super::schedule::Schedule;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::checkpoint::{dtype_from_name, save_model, save_params};
use crate::model::lora::LoraConfig;
use crate::model::{Llama, LoadedModel};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every training hyper-parameter, with the paper's values (PAPER.md §5) as defaults. The one
/// declaration of each setting: serde reads it from a TOML `[train]` table (the keys are the
/// field names) and clap flattens it into `elastica train`'s flags (`--lr`, `--grad-accum`,
/// ...), so each field's doc line below is both its `--help` text and its TOML doc. Two
/// settings are spelled differently on the command line, in `cli::train`: `--betas B1,B2`
/// sets `beta1` and `beta2`, and `--template` defaults by the data's schema.
/// (A stage's own settings, such as DPO's or LoRA's, join as one flattened field each.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Prompt template the records are rendered with.
    #[arg(skip = TrainConfig::DEFAULT.template)]
    pub template: Template,
    /// Peak learning rate (paper: 1e-5).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.lr)]
    pub lr: f64,
    /// AdamW beta1, in [0, 1) (paper: 0.9).
    #[arg(skip = TrainConfig::DEFAULT.beta1)]
    pub beta1: f64,
    /// AdamW beta2, in [0, 1) (paper: 0.95).
    #[arg(skip = TrainConfig::DEFAULT.beta2)]
    pub beta2: f64,
    /// AdamW epsilon.
    #[arg(long, default_value_t = TrainConfig::DEFAULT.eps)]
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only; paper: 0).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.weight_decay)]
    pub weight_decay: f64,
    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum, default_value_t = TrainConfig::DEFAULT.schedule)]
    pub schedule: Schedule,
    /// Fraction of steps spent warming up linearly from 0.
    #[arg(long, default_value_t = TrainConfig::DEFAULT.warmup_ratio)]
    pub warmup_ratio: f64,
    /// Records per micro-batch.
    #[arg(long, default_value_t = TrainConfig::DEFAULT.batch_size)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch-size x grad-accum; paper: 32).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.grad_accum)]
    pub grad_accum: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = TrainConfig::DEFAULT.epochs)]
    pub epochs: usize,
    /// Stop after this many optimizer steps (0 = run the epochs).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.max_steps)]
    pub max_steps: usize,
    /// Longest sequence in tokens; longer records are truncated (and counted).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.max_length)]
    pub max_length: usize,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.clip)]
    pub clip: f64,
    /// Seed of the data order (and, with --init, of the random weights).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.seed)]
    pub seed: u64,
    /// Shuffle the records each epoch; `--no-shuffle` (TOML: `shuffle = false`) keeps the
    /// file order.
    #[arg(long = "no-shuffle", action = clap::ArgAction::SetFalse)]
    pub shuffle: bool,
    /// Write a resumable checkpoint every N optimizer steps (0 = none; the final model is
    /// always saved).
    #[arg(long, default_value_t = TrainConfig::DEFAULT.save_every)]
    pub save_every: usize,
    /// Weight dtype of the saved model: float32, bfloat16 or float16 (default: the input
    /// checkpoint's). Keep float32 for a model you will train further: bf16 rounds small
    /// updates away. (Resumable checkpoints are always float32.)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save_dtype: Option<String>,
    /// The objective (sft or dpo) and DPO's settings (`train::dpo`). Left out of saved
    /// settings when it is plain SFT, so SFT runs compare with those written before it.
    #[command(flatten)]
    #[serde(skip_serializing_if = "DpoConfig::is_default")]
    pub dpo: DpoConfig,
    /// LoRA: train a low-rank adapter with the base frozen (`[train.lora]`, rank 0 = full
    /// fine-tune). Left out of saved settings when off, so older runs compare equal.
    #[command(flatten)]
    #[serde(skip_serializing_if = "LoraConfig::is_off")]
    pub lora: LoraConfig,
}

impl TrainConfig {
    /// The defaults, as a constant so that clap's `--help` shows the same values.
    pub const DEFAULT: TrainConfig = TrainConfig {
        template: Template::SafeRlhf,
        lr: 1e-5,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        schedule: Schedule::Constant,
        warmup_ratio: 0.0,
        batch_size: 4,
        grad_accum: 8,
        epochs: 1,
        max_steps: 0,
        max_length: 2048,
        clip: 1.0,
        seed: 42,
        shuffle: true,
        save_every: 0,
        save_dtype: None,
        dpo: DpoConfig::DEFAULT,
        lora: LoraConfig::DEFAULT,
    };
}

impl Default for TrainConfig {
    fn default() -> Self {
        // DEFAULT, with LoRA's target list (a constant cannot hold it).
        let mut c = TrainConfig::DEFAULT;
        c.lora = LoraConfig::default();
        c
    }
}

impl TrainConfig {
    /// Refuse settings that cannot train: every number finite and in range, counts whose
    /// products fit, a known save dtype. Messages name the setting as the CLI spells it.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.grad_accum == 0 {
            bail!("batch_size and grad_accum must be at least 1");
        }
        self.records_per_step()?;
        if self.epochs == 0 && self.max_steps == 0 {
            bail!("set epochs >= 1 or max_steps >= 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("lr (--lr) must be a finite number > 0, got {}", self.lr);
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            bail!("eps (--eps) must be a finite number > 0, got {}", self.eps);
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("{name} (--betas) must be in [0, 1), got {b}");
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "weight_decay (--weight-decay) must be a finite number >= 0, got {}",
                self.weight_decay
            );
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            bail!(
                "clip (--clip) must be a finite number >= 0 (0 = off), got {}",
                self.clip
            );
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!(
                "warmup_ratio (--warmup-ratio) must be in [0, 1], got {}",
                self.warmup_ratio
            );
        }
        if self.max_length < 2 {
            bail!("max_length must be at least 2");
        }
        if let Some(d) = &self.save_dtype {
            dtype_from_name(d).context("save_dtype (--save-dtype)")?;
        }
        self.lora.validate()?;
        Ok(())
    }

    /// Records per optimizer step (batch_size x grad_accum), refused when it overflows.
    pub fn records_per_step(&self) -> Result<usize> {
        self.batch_size
            .checked_mul(self.grad_accum)
            .with_context(|| {
                format!(
                    "batch_size x grad_accum = {} x {} does not fit in a {}-bit count",
                    self.batch_size,
                    self.grad_accum,
                    usize::BITS
                )
            })
    }

    /// Optimizer steps of a run over `n` examples: max_steps, or epochs x steps per epoch.
    pub fn total_steps(&self, n: usize) -> Result<usize> {
        if self.max_steps > 0 {
            return Ok(self.max_steps);
        }
        let per_epoch = n.div_ceil(self.records_per_step()?);
        self.epochs.checked_mul(per_epoch).with_context(|| {
            format!(
                "epochs x steps per epoch = {} x {per_epoch} does not fit in a {}-bit count; \
                 lower --epochs or set --max-steps",
                self.epochs,
                usize::BITS
            )
        })
    }
}

/// What makes two runs the same run: the resolved settings and the data, as tokenized. Stored
/// in every checkpoint's `trainer_state.json` and, once finished, as `train_config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// sha256 of the starting weights (names and f32 values, in order).
    pub start_sha256: String,
    /// sha256 of the tokenized examples (ids and loss labels), in order.
    pub data_sha256: String,
    /// Examples the run trains on.
    pub examples: usize,
    pub train: TrainConfig,
}

impl RunSettings {
    /// The fields of `self` (stored) that differ from `now`, as `name: stored -> now`.
    /// `save_every` is left out: it changes when checkpoints are written, not the weights.
    pub fn changes(&self, now: &RunSettings) -> Vec<String> {
        let mut out = Vec::new();
        if self.start_sha256 != now.start_sha256 {
            out.push(format!(
                "starting weights (--model / --init): sha256 {} -> {}",
                short(&self.start_sha256),
                short(&now.start_sha256)
            ));
        }
        if self.data_sha256 != now.data_sha256 || self.examples != now.examples {
            out.push(format!(
                "data: {} examples (sha256 {}) -> {} examples (sha256 {})",
                self.examples,
                short(&self.data_sha256),
                now.examples,
                short(&now.data_sha256)
            ));
        }
        let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (old, new) = (as_map(&self.train), as_map(&now.train));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if k == "save_every" {
                continue;
            }
            let (a, b) = (old.get(k), new.get(k));
            if a != b {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or("(default)".to_string(), |v| v.to_string())
                };
                out.push(format!("{k}: {} -> {}", show(a), show(b)));
            }
        }
        out
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// sha256 over the parameters' names and f32 values: which model a run starts from,
/// wherever it was loaded from (one pass over the weights).
pub fn weights_fingerprint(lm: &LoadedModel) -> Result<String> {
    let adapter = lm.model.adapter().map(|a| &a.params);
    fingerprint(
        lm.model
            .params
            .iter()
            .chain(adapter.iter().flat_map(|p| p.iter())),
    )
}

/// [`weights_fingerprint`] of a parameter set (what any backend hands back as host weights).
pub fn params_fingerprint(params: &crate::model::Params) -> Result<String> {
    fingerprint(params.iter())
}

/// sha256 over (name, f32 values) pairs, in order.
fn fingerprint<'a>(
    params: impl Iterator<Item = (&'a String, &'a candle_core::Var)>,
) -> Result<String> {
    let mut h = Sha256::new();
    for (name, var) in params {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let v: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 over the tokenized examples: what the run trains on, whatever file it came from.
pub fn data_fingerprint(examples: &[Example]) -> String {
    let mut h = Sha256::new();
    for e in examples {
        h.update((e.ids.len() as u64).to_le_bytes());
        for &t in &e.ids {
            h.update(t.to_le_bytes());
        }
        for &l in &e.labels {
            h.update(l.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    /// Mean NLL per counted token over the step's records (before the update).
    pub loss: f64,
    pub lr: f64,
    /// Tokens the loss counted in this step.
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub records: usize,
    pub truncated: usize,
    pub mean_loss: f64,
    pub resumed_from: Option<usize>,
    pub log: Vec<StepLog>,
}

/// Called after every optimizer step with the model and the step's log (for rate tracking).
pub type StepHook<'a> = dyn FnMut(&LoadedModel, &StepLog) -> Result<()> + 'a;

/// Where a [`train`] run writes and how it runs (everything but the model, data and
/// hyper-parameters).
pub struct TrainRun<'a, 'h> {
    /// Final model, `train_log.jsonl` and checkpoints go here.
    pub out: &'a Path,
    /// Continue from the newest complete checkpoint in `out` (refused when it was written
    /// with other settings or data); a finished run with the same settings is not redone.
    pub resume: bool,
    /// Called after every optimizer step with the model and the step's log.
    pub hook: Option<&'a mut StepHook<'h>>,
    /// Show a progress bar (log lines when stderr is not a terminal).
    pub progress: bool,
}

/// Fine-tune `lm` on `records`, writing `train_log.jsonl`, checkpoints and the final model
/// into `run.out`. With `run.resume`, continues from the newest complete checkpoint in `out`
/// (refused when it was written with other settings or data); a finished run with the same
/// settings is not redone: its final weights are loaded into `lm` and its summary is returned.
pub fn train(
    lm: &LoadedModel,
    records: &[Record],
    cfg: &TrainConfig,
    run: TrainRun<'_, '_>,
) -> Result<TrainSummary> {
    let p = prepare(lm, records, cfg)?;
    p.warn_truncated("records");
    let mut method = SftStep {
        examples: &p.examples,
        cfg,
    };
    let o = drive_fused(lm, &mut method, &p.plan(), run)?;
    Ok(summarize(
        p.total,
        p.examples.len(),
        p.truncated,
        o.resumed_from,
        o.log,
    ))
}

/// [`drive`] on the fused path, the caller's hook seeing `lm`.
pub(crate) fn drive_fused<M: Method>(
    lm: &LoadedModel,
    method: &mut M,
    plan: &Plan<'_>,
    run: TrainRun<'_, '_>,
) -> Result<Outcome<M::Log>> {
    let TrainRun {
        out,
        resume,
        hook,
        progress,
    } = run;
    let mut hook = hook.map(|h| move |l: &StepLog| h(lm, l));
    let run = Run {
        out,
        resume,
        progress,
        hook: hook.as_mut().map(|h| h as &mut AfterStep<'_>),
    };
    drive(&mut Fused::new(lm), method, plan, run)
}

/// SFT's step: the step's examples in micro-batches of `batch_size`, token-weighted NLL.
pub struct SftStep<'a> {
    pub examples: &'a [Example],
    pub cfg: &'a TrainConfig,
}

impl Method for SftStep<'_> {
    type Log = StepLog;
    const LABEL: &'static str = "train";
    fn step(&mut self, model: &mut dyn Trainee, idx: &[usize], lr: f64) -> Result<StepLog> {
        let step_examples: Vec<&Example> = idx.iter().map(|&i| &self.examples[i]).collect();
        let n_step: usize = step_examples.iter().map(|e| loss_tokens(e)).sum();
        let pad = model.pad_id();
        let micro: Vec<Batch> = step_examples
            .chunks(self.cfg.batch_size)
            .map(|m| collate(m, pad, &candle_core::Device::Cpu))
            .collect::<Result<_>>()?;
        let opt = adamw_config(self.cfg);
        let (nll_total, grad_norm) = model.sft_step(&micro, &opt, lr, self.cfg.clip)?;
        Ok(StepLog {
            step: 0,
            loss: if n_step > 0 {
                nll_total / n_step as f64
            } else {
                0.0
            },
            lr,
            tokens: n_step,
            grad_norm,
        })
    }
    fn base(log: &StepLog) -> &StepLog {
        log
    }
    fn base_mut(log: &mut StepLog) -> &mut StepLog {
        log
    }
}

/// The final weights of a run in `out`: the adapter of a LoRA run (its marker is
/// adapter_config.json), else the model.
fn final_weights(out: &Path) -> PathBuf {
    match out.join(crate::model::lora::CONFIG_FILE).is_file() {
        true => out.join(crate::model::lora::WEIGHTS_FILE),
        false => out.join("model.safetensors"),
    }
}

/// Save what a run trained into `out`: the adapter (PEFT's format) of a LoRA run, not the
/// frozen base; otherwise the whole model in `save_dtype`.
pub(crate) fn save_trained(lm: &LoadedModel, out: &Path, save_dtype: &str) -> Result<()> {
    match lm.model.adapter() {
        Some(a) => a.save(out),
        None => save_model(&lm.model, &lm.dir, out, Some(save_dtype)),
    }
}

/// The resolved settings of a finished run, written after its final model.
pub const FINISHED_SETTINGS: &str = "train_config.toml";

/// The summary of a run from its step log (mean loss over the logged steps; 0 without any).
pub(crate) fn summarize(
    steps: usize,
    records: usize,
    truncated: usize,
    resumed_from: Option<usize>,
    log: Vec<StepLog>,
) -> TrainSummary {
    let mean_loss = if log.is_empty() {
        0.0
    } else {
        log.iter().map(|l| l.loss).sum::<f64>() / log.len() as f64
    };
    TrainSummary {
        steps,
        records,
        truncated,
        mean_loss,
        resumed_from,
        log,
    }
}

/// A run's data and settings, resolved and checked before anything is written.
pub struct Prepared {
    pub examples: Vec<Example>,
    pub truncated: usize,
    pub total: usize,
    pub steps_per_epoch: usize,
    pub settings: RunSettings,
    /// The dtype the finished model is saved in.
    pub save_dtype: String,
}

impl Prepared {
    /// What the training loop schedules.
    pub fn plan(&self) -> Plan<'_> {
        Plan {
            settings: &self.settings,
            examples: self.examples.len(),
            total: self.total,
            steps_per_epoch: self.steps_per_epoch,
            save_dtype: &self.save_dtype,
        }
    }

    /// Warn when max_length cut some of the `what` (records, answers).
    pub fn warn_truncated(&self, what: &str) {
        warn_truncated(
            self.truncated,
            self.examples.len(),
            what,
            &self.settings.train,
        );
    }
}

/// Warn that `truncated` of `n` `what` were cut to max_length.
pub(crate) fn warn_truncated(truncated: usize, n: usize, what: &str, cfg: &TrainConfig) {
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} of {n} {what} were longer than max_length = {} tokens and \
             were truncated",
            cfg.max_length
        );
    }
}

fn prepare(lm: &LoadedModel, records: &[Record], cfg: &TrainConfig) -> Result<Prepared> {
    cfg.validate()?;
    crate::model::adapted::check_for_training(&lm.model, &cfg.lora)?;
    let source = format!("config.json in {}", lm.dir.display());
    let start = weights_fingerprint(lm)?;
    prepare_run(
        &lm.tokenizer,
        &lm.model.cfg.torch_dtype,
        &source,
        start,
        records,
        cfg,
    )
}

/// [`Prepared`] for a model on any backend: its tokenizer, the dtype its checkpoint was
/// stored in (`source` says where that came from, for the error), and the fingerprint of its
/// starting weights. Every training loop resolves its run here, so all of them check and
/// store the same settings.
pub fn prepare_run(
    tokenizer: &crate::model::TextTokenizer,
    torch_dtype: &str,
    source: &str,
    start_sha256: String,
    records: &[Record],
    cfg: &TrainConfig,
) -> Result<Prepared> {
    cfg.validate()?;
    if records.is_empty() {
        bail!("no training records");
    }
    // Refuse before the first step what only the final save would find out.
    let save_dtype = cfg
        .save_dtype
        .clone()
        .unwrap_or_else(|| torch_dtype.to_string());
    dtype_from_name(&save_dtype).with_context(|| {
        format!(
            "the trained model would be saved in the input checkpoint's dtype \"{save_dtype}\" \
             ({source}); set save_dtype (--save-dtype) to float32, bfloat16 or float16"
        )
    })?;
    let (examples, truncated) = tokenize(records, tokenizer, cfg.template, cfg.max_length)?;
    if examples.iter().all(|e| loss_tokens(e) == 0) {
        bail!("no record has a token the loss can count (are all responses empty or cut by max_length?)");
    }
    let steps_per_epoch = examples.len().div_ceil(cfg.records_per_step()?);
    let total = cfg.total_steps(examples.len())?;
    let settings = RunSettings {
        start_sha256,
        data_sha256: data_fingerprint(&examples),
        examples: examples.len(),
        train: cfg.clone(),
    };
    Ok(Prepared {
        examples,
        truncated,
        total,
        steps_per_epoch,
        settings,
        save_dtype,
    })
}

/// Where a resumed run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ResumePoint {
    /// Nothing to resume: train from the start.
    Fresh,
    /// From this complete checkpoint, written with the same settings and data.
    Checkpoint { step: usize, dir: PathBuf },
    /// The run finished with the same settings and data: nothing to do.
    Finished,
}

/// Where `train(.., resume = true, ..)` would start in `out`, refusing what it would refuse
/// (a checkpoint or finished run with other settings or data, a checkpoint past the last
/// step). Lets a caller check before it writes anything of its own. Incomplete checkpoints
/// are cleaned as [`latest_checkpoint`] does.
pub fn resume_point(
    lm: &LoadedModel,
    records: &[Record],
    cfg: &TrainConfig,
    out: &Path,
) -> Result<ResumePoint> {
    let p = prepare(lm, records, cfg)?;
    resume_point_of(out, &p.settings, p.total)
}

/// [`resume_point`] for a run already resolved by [`prepare_run`].
pub fn resume_point_of(out: &Path, settings: &RunSettings, total: usize) -> Result<ResumePoint> {
    if finished_with(out, settings)? {
        return Ok(ResumePoint::Finished);
    }
    let Some((step, dir)) = latest_checkpoint(out)? else {
        return Ok(ResumePoint::Fresh);
    };
    if step > total {
        bail!(
            "the checkpoint in {} is at step {step}, past this run's {total} steps \
             (max_steps = {}); resume with --max-steps {step} or more, or start over \
             without --resume",
            dir.display(),
            settings.train.max_steps
        );
    }
    check_same_run(&dir, settings)?;
    Ok(ResumePoint::Checkpoint { step, dir })
}

/// Whether `out` holds a finished run with these settings. A finished run with other
/// settings is refused: resuming it would train from scratch over it.
fn finished_with(out: &Path, settings: &RunSettings) -> Result<bool> {
    let cfg_path = out.join(FINISHED_SETTINGS);
    if !cfg_path.is_file() || !final_weights(out).is_file() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {}", cfg_path.display()))?;
    // A file from an older elastica (settings only, no data fingerprint) cannot be compared:
    // such a run is trained again, as before.
    let Ok(stored) = toml::from_str::<RunSettings>(&text) else {
        return Ok(false);
    };
    let changes = stored.changes(settings);
    if !changes.is_empty() {
        bail!(
            "{} holds a finished run with other settings or data ({}); --resume would train \
             over it: give another --out, or drop --resume to replace it",
            out.display(),
            changes.join("; ")
        );
    }
    Ok(true)
}

/// Load a finished run's saved weights into `lm`.
pub(crate) fn load_final(lm: &LoadedModel, out: &Path) -> Result<()> {
    let weights = final_weights(out);
    let tensors = candle_core::safetensors::load(&weights, lm.model.device())
        .with_context(|| format!("cannot read {}", weights.display()))?;
    // An adapter's keys carry PEFT's prefix.
    let prefix = match lm.model.adapter() {
        Some(_) => "base_model.model.",
        None => "",
    };
    for (name, var) in lm.model.trainable().iter() {
        let t = tensors
            .get(&format!("{prefix}{name}"))
            .with_context(|| format!("{} lacks tensor \"{name}\"", weights.display()))?;
        var.set(&t.to_dtype(DType::F32)?)
            .with_context(|| format!("tensor \"{name}\" in {}", weights.display()))?;
    }
    Ok(())
}

/// Refuse to resume from a checkpoint written with other settings or data.
fn check_same_run(dir: &Path, now: &RunSettings) -> Result<()> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(stored) = state.get("settings") else {
        eprintln!(
            "warning: {} was written by an older elastica without its settings; they cannot \
             be checked against this run's",
            path.display()
        );
        return Ok(());
    };
    let stored: RunSettings = serde_json::from_value(stored.clone())
        .with_context(|| format!("{}: unreadable \"settings\"", path.display()))?;
    let changes = stored.changes(now);
    if !changes.is_empty() {
        bail!(
            "cannot resume from {}: it was written with other settings or data ({}). Resume \
             with the same settings, or start over without --resume (or in another --out)",
            dir.display(),
            changes.join("; ")
        );
    }
    Ok(())
}

/// One optimizer step over `micro` batches: forward, token-weighted loss, backward and
/// accumulate per micro-batch, then clip and update. Returns (summed NLL, grad norm before
/// clipping). The loss is normalised by the step's total target count, so accumulation over
/// micro-batches equals one big batch.
pub fn optimizer_step(
    model: &Llama,
    micro: &[Batch],
    opt: &mut AdamW,
    lr: f64,
    clip: f64,
) -> Result<(f64, f64)> {
    let params = model.trainable();
    let n_step: usize = micro.iter().map(|b| b.n_targets).sum();
    if n_step == 0 {
        return Ok((0.0, 0.0));
    }
    let mut grads: Option<Grads> = None;
    let mut nll_total = 0.0;
    let by_hand = crate::train::backprop::usable(model);
    for (i, b) in micro.iter().enumerate().filter(|(_, b)| b.n_targets > 0) {
        // LoRA dropout masks keyed by the update count, which a resumed run restores.
        let drop = model.lora_dropout(opt.step, i as u64);
        let g = if by_hand {
            let (nll, g) = crate::train::backprop::nll_and_grads(
                model,
                &b.ids,
                &b.targets,
                1.0 / n_step as f64,
                drop.as_ref(),
            )?;
            nll_total += nll;
            g
        } else {
            let logits = model.forward_train(&b.ids, drop.as_ref())?;
            let nll = nll_sum(&logits, &b.targets)?;
            nll_total += nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let scaled = (nll / n_step as f64)?;
            Grads::from_store(params, &scaled.backward()?)?
        };
        match grads.as_mut() {
            Some(acc) => acc.add(g),
            None => grads = Some(g),
        }
    }
    if !nll_total.is_finite() {
        bail!("the loss is {nll_total} (not finite); lower the learning rate or check the weights and data");
    }
    let mut grad_norm = 0.0;
    if let Some(mut g) = grads {
        grad_norm = g.clip(clip);
        // Checked before the update, so the weights never take a non-finite step.
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm} (not finite); lower the learning rate or set --clip");
        }
        opt.update(params, &g, lr)?;
    }
    Ok((nll_total, grad_norm))
}

/// Example indices of optimizer step `step` (0-based): epoch order is a seeded shuffle of
/// 0..n (or identity), and the step takes its slice of that order.
pub fn step_indices(
    n: usize,
    cfg: &TrainConfig,
    step: usize,
    steps_per_epoch: usize,
) -> Vec<usize> {
    let epoch = step / steps_per_epoch;
    let k = step % steps_per_epoch;
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
    }
    // Callers validated that batch_size x grad_accum fits; k * per < n.
    let per = cfg.batch_size.saturating_mul(cfg.grad_accum);
    order[k * per..(k * per).saturating_add(per).min(n)].to_vec()
}

fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The file that makes a checkpoint directory count: written last, deleted first.
pub const COMPLETE_MARKER: &str = "complete";

/// The newest complete checkpoint (`checkpoints/step-N`), if any. A `step-N` directory
/// without its completion marker was cut short while being removed (or was left by an older
/// elastica): it is skipped with a warning and deleted, as is a temporary directory of a
/// checkpoint whose writing was cut short.
pub fn latest_checkpoint(out: &Path) -> Result<Option<(usize, PathBuf)>> {
    let root = checkpoint_root(out);
    if !root.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(&root).with_context(|| format!("cannot list {}", root.display()))? {
        let e = e.with_context(|| format!("cannot list {}", root.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".tmp-step-") {
            remove_checkpoint_dir(&path)?;
            continue;
        }
        let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if !path.join(COMPLETE_MARKER).is_file() {
            eprintln!(
                "warning: checkpoint {} is incomplete (no \"{COMPLETE_MARKER}\" marker: a kill \
                 while it was being removed?); skipping and deleting it",
                path.display()
            );
            remove_checkpoint_dir(&path)?;
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, path));
        }
    }
    Ok(best)
}

/// Write `checkpoints/step-N` durably: every file in a temporary directory, the completion
/// marker last, then one rename; superseded checkpoints are removed afterwards.
pub(crate) fn write_checkpoint(
    lm: &LoadedModel,
    opt: &AdamW,
    out: &Path,
    step: usize,
    settings: &RunSettings,
) -> Result<()> {
    let state = serde_json::json!({ "step": step, "adam_step": opt.step, "settings": settings });
    write_checkpoint_with(out, step, &state, |dir| {
        save_params(
            lm.model.trainable(),
            DType::F32,
            &dir.join("model.safetensors"),
        )?;
        crate::model::checkpoint::save_tensors(
            &opt.state_tensors(lm.model.trainable())?,
            &dir.join("optimizer.safetensors"),
        )
    })
}

/// The checkpoint layout every training loop shares: `fill` writes the weights and optimizer
/// state into a temporary directory, then `trainer_state.json` (`state`) and the completion
/// marker are written, the directory is renamed to `checkpoints/step-N` in one step, and
/// older checkpoints are removed (marker first).
pub fn write_checkpoint_with(
    out: &Path,
    step: usize,
    state: &serde_json::Value,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let root = checkpoint_root(out);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-step-")
        .tempdir_in(&root)
        .with_context(|| format!("cannot create a temporary directory in {}", root.display()))?;
    fill(tmp.path())?;
    crate::util::fsx::atomic_write_json(&tmp.path().join("trainer_state.json"), state)?;
    crate::util::fsx::atomic_write(&tmp.path().join(COMPLETE_MARKER), b"")?;
    let final_dir = root.join(format!("step-{step}"));
    let tmp_path = tmp.keep();
    crate::util::fsx::durable_rename(&tmp_path, &final_dir)?;
    // Older checkpoints are superseded.
    for e in std::fs::read_dir(&root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .flatten()
    {
        let p = e.path();
        if p != final_dir && e.file_name().to_string_lossy().starts_with("step-") {
            remove_checkpoint_dir(&p)?;
        }
    }
    Ok(())
}

/// Delete a checkpoint directory, its completion marker first (and durably), so a kill
/// part-way leaves a directory that no resume trusts.
fn remove_checkpoint_dir(dir: &Path) -> Result<()> {
    let marker = dir.join(COMPLETE_MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => crate::util::fsx::sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", marker.display())),
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

pub(crate) fn restore(lm: &LoadedModel, opt: &mut AdamW, dir: &Path, step: usize) -> Result<()> {
    let dev = lm.model.device();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), dev)
        .with_context(|| format!("cannot read checkpoint {}", dir.display()))?;
    for (name, var) in lm.model.trainable().iter() {
        let t = weights
            .get(name)
            .with_context(|| format!("checkpoint {} lacks tensor \"{name}\"", dir.display()))?;
        var.set(t)
            .with_context(|| format!("tensor \"{name}\" in checkpoint {}", dir.display()))?;
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("trainer_state.json"))
            .with_context(|| format!("cannot read {}/trainer_state.json", dir.display()))?,
    )?;
    let adam_step = state["adam_step"].as_u64().unwrap_or(step as u64);
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), dev)
        .with_context(|| format!("cannot read optimizer state in {}", dir.display()))?;
    opt.load_state(lm.model.trainable(), &moments, adam_step)
}

/// Remove every checkpoint of a finished run (each marker first).
pub fn remove_checkpoints(out: &Path) -> Result<()> {
    let root = checkpoint_root(out);
    if root.is_dir() {
        for e in std::fs::read_dir(&root)
            .with_context(|| format!("cannot list {}", root.display()))?
            .flatten()
        {
            if e.path().is_dir() {
                remove_checkpoint_dir(&e.path())?;
            }
        }
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove {}", root.display()))?;
    }
    Ok(())
}

/// The step log of a run (an SFT run's lines, or the shared fields of any method's).
pub fn read_log(path: &Path) -> Result<Vec<StepLog>> {
    read_log_as(path)
}

/// The lines of a JSON-lines log; a last line cut by a kill is dropped (the steps after the
/// checkpoint are redone).
pub fn read_log_as<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let n = text.lines().count();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(l) => out.push(l),
            Err(_) if i + 1 == n => {}
            Err(e) => bail!("{}: line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Replace a log with `log`'s lines, atomically.
pub(crate) fn rewrite_log<T: Serialize>(path: &Path, log: &[T]) -> Result<()> {
    crate::util::fsx::atomic_write_with(path, |w| {
        for l in log {
            serde_json::to_writer(&mut *w, l)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// Append one JSON line to a run's `train_log.jsonl`.
pub(crate) fn append_log<T: Serialize>(path: &Path, entry: &T) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    let mut line = serde_json::to_string(entry)?;
    line.push('\n');
    f.write_all(line.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainConfig,
    }

    fn parse(args: &[&str]) -> TrainConfig {
        let argv = std::iter::once("train").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().train
    }

    #[test]
    fn the_flags_default_to_the_toml_defaults() {
        // One declaration: no flag typed gives exactly what an empty [train] table gives.
        let from_toml: TrainConfig = toml::from_str("").unwrap();
        assert_eq!(parse(&[]), from_toml);
        assert_eq!(parse(&[]), TrainConfig::default());
    }

    #[test]
    fn flags_set_the_fields_of_the_same_name() {
        let c = parse(&[
            "--lr",
            "0.003",
            "--grad-accum",
            "2",
            "--schedule",
            "cosine",
            "--no-shuffle",
            "--save-dtype",
            "float32",
        ]);
        let want = TrainConfig {
            lr: 0.003,
            grad_accum: 2,
            schedule: Schedule::Cosine,
            shuffle: false,
            save_dtype: Some("float32".into()),
            ..TrainConfig::default()
        };
        assert_eq!(c, want);
        // The stored spelling of --no-shuffle is `shuffle = false`.
        let t: TrainConfig = toml::from_str("shuffle = false").unwrap();
        assert!(!t.shuffle);
    }
}
