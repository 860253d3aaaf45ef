//! `elastica train`: supervised fine-tuning, or from-scratch training with `--init`. The
//! command holds an exclusive lock on `--out` for its whole run, so two processes never
//! train into one directory.

use super::train_hooks::StepHooks;
use crate::compress::tracking::{load_sets, parse_sets, RateTracker};
use crate::data::source::{load as load_data, template_for, DataArgs};
use crate::data::template::Template;
use crate::model::checkpoint::{init_model, resolve_model_dir, LoadedModel};
use crate::model::ModelConfig;
use crate::train::schedule::Schedule;
use crate::train::sft::{resume_point, ResumePoint, StepLog};
use crate::train::{train, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::PathBuf;

/// The name of `train`'s lock file inside `--out`.
pub const LOCK_FILE: &str = ".train.lock";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Every flag can also be set in a TOML file given as --config FILE \
(keys are the long flag names: lr = 1e-5, no_shuffle = true, betas = [0.9, 0.95]); flags typed \
on the command line win."
)]
pub struct TrainArgs {
    /// Base model: a directory in the HF layout, or `org/name` in the offline HF cache.
    #[arg(long, required_unless_present = "init", conflicts_with = "init")]
    pub model: Option<String>,
    /// A LoRA adapter directory (PEFT's format) on top of --model: training continues this
    /// adapter (the LoRA flags default to its own settings).
    #[arg(long, requires = "model")]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub lora: crate::model::lora::LoraConfig,
    /// Train from scratch from this config.json (random init, seeded by --seed).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With --init: directory holding tokenizer.json (and tokenizer_config.json).
    #[arg(long, requires = "init")]
    pub tokenizer: Option<PathBuf>,
    /// Training data: a file or directory, read with --schema (default: JSONL of
    /// {"prompt","response"} (prompt masked) or {"text"} records).
    #[arg(
        long,
        required_unless_present = "data_config",
        conflicts_with = "data_config"
    )]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Output directory: final model (HF layout), train_log.jsonl, checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Prompt template (default: by schema, raw for imdb, safe-rlhf otherwise).
    #[arg(long, value_enum)]
    pub template: Option<Template>,
    /// Peak learning rate (paper: 1e-5).
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// AdamW betas, "b1,b2" (paper: 0.9,0.95).
    #[arg(long, default_value = "0.9,0.95")]
    pub betas: String,
    /// AdamW epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only; paper: 0).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Learning-rate schedule after warm-up.
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: Schedule,
    /// Fraction of steps spent warming up linearly from 0.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Records per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (effective batch = batch-size x grad-accum; paper: 32).
    #[arg(long, default_value_t = 8)]
    pub grad_accum: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimizer steps (0 = run the epochs).
    #[arg(long, default_value_t = 0)]
    pub max_steps: usize,
    /// Longest sequence in tokens; longer records are truncated (and counted).
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seed for shuffling (and for --init).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the file order instead of shuffling each epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Write a resumable checkpoint every N optimizer steps (0 = none).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Continue from the newest checkpoint in --out (refused if it was written with other
    /// settings or data; a run already finished with these settings is left as it is).
    #[arg(long)]
    pub resume: bool,
    /// Weight dtype of the saved model: float32, bfloat16 or float16 (default: the input
    /// checkpoint's). Keep float32 for a model you will train further.
    #[arg(long)]
    pub save_dtype: Option<String>,
    /// Track compression rates of held-out sets during training: NAME=FILE.jsonl,...
    /// (written to OUT/rates.jsonl and plotted as OUT/rates.png/svg).
    #[arg(long)]
    pub track_rates: Option<String>,
    /// Measure the tracked rates every N optimizer steps (and at the start and the end).
    #[arg(long, default_value_t = 10)]
    pub track_every: usize,
    /// Use at most this many records of each tracked set.
    #[arg(long, default_value_t = 256)]
    pub track_records: usize,
    /// Write TensorBoard event files here (loss, lr, grad_norm, tokens/s, and the tracked
    /// rates): `tensorboard --logdir DIR`.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

pub fn parse_betas(s: &str) -> Result<(f64, f64)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 2 {
        bail!("--betas expects two numbers \"b1,b2\", got \"{s}\"");
    }
    let p = |x: &str| {
        x.parse::<f64>()
            .with_context(|| format!("--betas: \"{x}\" is not a number"))
    };
    Ok((p(parts[0])?, p(parts[1])?))
}

pub fn run(a: TrainArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    let (beta1, beta2) = parse_betas(&a.betas)?;
    let spec = a.data_args.spec(a.data.as_deref())?;
    let cfg = TrainConfig {
        template: template_for(a.template, &spec),
        lr: a.lr,
        beta1,
        beta2,
        eps: a.eps,
        weight_decay: a.weight_decay,
        schedule: a.schedule,
        warmup_ratio: a.warmup_ratio,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        epochs: a.epochs,
        max_steps: a.max_steps,
        max_length: a.max_length,
        clip: a.clip,
        seed: a.seed,
        shuffle: !a.no_shuffle,
        save_every: a.save_every,
        save_dtype: a.save_dtype.clone(),
        lora: a.lora.clone(),
    };
    cfg.validate()?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create output directory {}", a.out.display()))?;
    let lock_path = a.out.join(LOCK_FILE);
    let Some(_lock) = crate::util::fsx::try_lock(&lock_path)? else {
        bail!(
            "another elastica process is training into {} (it holds {}); wait for it to \
             finish or stop it, or give another --out",
            a.out.display(),
            lock_path.display()
        );
    };
    let data = load_data(&spec)?;
    eprintln!("data: {}", data.summary());
    let records = data.records;
    if !a.device.choice()?.is_default_cpu() {
        if cfg.lora.enabled() || a.adapter.is_some() {
            bail!("LoRA training (--lora-rank, --adapter) runs on the fused CPU path only for now; use --device cpu --backend fused");
        }
        return on_backend(&a, &cfg, &records);
    }
    let dev = Device::Cpu;
    let lm = match (&a.model, &a.init) {
        (Some(m), _) => {
            let dir = resolve_model_dir(m)?;
            let config = dir.join("config.json");
            ModelConfig::from_file(&config)?.check_training_fits(&config)?;
            crate::model::lora::load_model_with(m, a.adapter.as_deref(), &dev)?
        }
        (None, Some(init)) => {
            let Some(tok) = &a.tokenizer else {
                bail!("--init needs --tokenizer DIR (a directory with tokenizer.json)");
            };
            init_model(init, tok, a.seed, &dev)?
        }
        (None, None) => bail!("give --model or --init"),
    };
    let base_name = a.model.clone().unwrap_or_default();
    let (lm, lora) = crate::model::lora::for_training(lm, &cfg.lora, a.seed, &base_name)?;
    let cfg = TrainConfig { lora, ..cfg };
    // Resume's checks (and "already finished") come before anything is written into --out.
    let resume_at = if a.resume {
        Some(resume_point(&lm, &records, &cfg, &a.out)?)
    } else {
        None
    };
    let finished = resume_at == Some(ResumePoint::Finished);
    let tracker = match &a.track_rates {
        Some(_) if finished => None,
        Some(spec) => {
            let sets = load_sets(&parse_sets(spec)?, Some(a.track_records))?;
            let mut t =
                RateTracker::new(sets, cfg.template, cfg.max_length, a.track_every, &a.out)?;
            let start = match &resume_at {
                Some(ResumePoint::Checkpoint { step, .. }) => *step,
                _ => 0,
            };
            t.begin(&lm, start)?;
            Some(t)
        }
        None => None,
    };
    // A finished run is left as it is: no new event file either.
    let log_dir = a.log_dir.as_deref().filter(|_| !finished);
    let mut hooks = StepHooks::new(tracker, log_dir)?;
    let mut hook = |m: &LoadedModel, l: &StepLog| hooks.after_step(m, l);
    let s = train(&lm, &records, &cfg, &a.out, a.resume, Some(&mut hook), true)?;
    hooks.finish(&lm, s.steps, &a.out)?;
    println!(
        "{}",
        serde_json::json!({
            "out": a.out, "steps": s.steps, "records": s.records, "truncated": s.truncated,
            "mean_loss": s.mean_loss, "final_loss": s.log.last().map(|l| l.loss),
            "resumed_from": s.resumed_from,
        })
    );
    Ok(())
}

/// `elastica train` on the chosen backend (the loop of `backend::sft`).
fn on_backend(
    a: &TrainArgs,
    cfg: &crate::train::TrainConfig,
    records: &[crate::data::records::Record],
) -> Result<()> {
    let choice = a.device.choice()?;
    if a.track_rates.is_some() {
        anyhow::bail!(
            "--track-rates runs on the fused CPU path only for now; drop it or use --device cpu --backend fused"
        );
    }
    let cpu = candle_core::Device::Cpu;
    let lm = match (&a.model, &a.init) {
        (Some(m), _) => crate::model::load_model(m, &cpu)?,
        (None, Some(init)) => {
            let Some(tok) = &a.tokenizer else {
                anyhow::bail!("--init needs --tokenizer DIR (a directory with tokenizer.json)");
            };
            crate::model::checkpoint::init_model(init, tok, a.seed, &cpu)?
        }
        (None, None) => anyhow::bail!("give --model or --init"),
    };
    let mut model = crate::backend::from_loaded(lm, &choice)?;
    let s = crate::backend::sft::train(&mut *model, records, cfg, &a.out, a.resume, true)?;
    println!(
        "{}",
        serde_json::json!({
            "out": a.out, "steps": s.steps, "records": s.records, "truncated": s.truncated,
            "mean_loss": s.mean_loss, "final_loss": s.log.last().map(|l| l.loss),
            "resumed_from": s.resumed_from, "backend": model.backend_name(),
            "device": model.device_name(),
        })
    );
    Ok(())
}
