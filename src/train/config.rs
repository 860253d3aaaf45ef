//! [`TrainConfig`]: every training hyper-parameter, declared once (serde for the TOML
//! `[train]` tables, clap for `elastica train`'s flags), with its checks.

use super::objective::DpoConfig;
use super::schedule::Schedule;
use crate::data::template::Template;
use crate::model::checkpoint::dtype_from_name;
use crate::model::lora::LoraConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

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
        // A rank-0 run trains the full model (or, with --adapter, the adapter with its own
        // settings): LoRA flags given beside it would be dropped without a word.
        if !self.lora.enabled() && !self.lora.is_off() {
            bail!(
                "--lora-alpha, --lora-dropout, --lora-targets or --lora-rslora was given \
                 without --lora-rank, so a full fine-tune (or, with --adapter, the adapter's own \
                 settings) would ignore it: give --lora-rank for a LoRA run (with --adapter, the \
                 adapter's own rank), or drop the LoRA flags"
            );
        }
        self.lora.validate()?;
        Ok(())
    }

    /// These settings, saving the trained model in f32: for a model that later stages train
    /// from, so that none of their updates is rounded away.
    pub fn saving_f32(&self) -> TrainConfig {
        TrainConfig {
            save_dtype: Some("float32".into()),
            ..self.clone()
        }
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
