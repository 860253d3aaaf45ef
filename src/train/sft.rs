//! The SFT loop. In order, each optimizer step: lr -> micro-batches (forward, token-weighted
//! loss, backward, accumulate) -> clip -> AdamW -> log -> checkpoint. The data order of every
//! step is a pure function of (seed, step), so a run resumed from a checkpoint replays exactly
//! what the uninterrupted run would have done and ends on bit-identical weights.

use super::batch::{collate, loss_tokens, tokenize, Batch, Example};
use super::loss::nll_sum;
use super::optim::{AdamW, AdamWConfig, Grads};
use super::schedule::{lr_at, warmup_steps, Schedule};
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::checkpoint::{save_model, save_params};
use crate::model::{Llama, LoadedModel};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every training hyper-parameter, with the paper's values (PAPER.md §5) as defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub template: Template,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    /// Records per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (0 = run the epochs).
    pub max_steps: usize,
    pub max_length: usize,
    /// Global gradient-norm clip (0 = off).
    pub clip: f64,
    pub seed: u64,
    pub shuffle: bool,
    /// Write a resumable checkpoint every N optimizer steps (0 = only at the end).
    pub save_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
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
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.grad_accum == 0 {
            bail!("batch_size and grad_accum must be at least 1");
        }
        if self.epochs == 0 && self.max_steps == 0 {
            bail!("set epochs >= 1 or max_steps >= 1");
        }
        if self.lr.is_nan()
            || self.lr < 0.0
            || !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
        {
            bail!("invalid optimizer settings: lr must be >= 0 and betas in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            bail!("warmup_ratio must be in [0, 1]");
        }
        if self.max_length < 2 {
            bail!("max_length must be at least 2");
        }
        Ok(())
    }
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

/// Fine-tune `lm` on `records`, writing `train_log.jsonl`, checkpoints and the final model
/// into `out`. With `resume`, continues from the newest complete checkpoint in `out`.
pub fn train(
    lm: &LoadedModel,
    records: &[Record],
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    mut hook: Option<&mut StepHook<'_>>,
    progress: bool,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if records.is_empty() {
        bail!("no training records");
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    let (examples, truncated) = tokenize(records, &lm.tokenizer, cfg.template, cfg.max_length)?;
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} of {} records were longer than max_length = {} tokens and were truncated",
            examples.len(),
            cfg.max_length
        );
    }
    if examples.iter().all(|e| loss_tokens(e) == 0) {
        bail!("no record has a token the loss can count (are all responses empty or cut by max_length?)");
    }
    let per_step = cfg.batch_size * cfg.grad_accum;
    let steps_per_epoch = examples.len().div_ceil(per_step);
    let total = if cfg.max_steps > 0 {
        cfg.max_steps
    } else {
        cfg.epochs * steps_per_epoch
    };
    let warmup = warmup_steps(cfg.warmup_ratio, total);
    let mut opt = AdamW::new(AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    });
    let log_path = out.join("train_log.jsonl");
    let mut log: Vec<StepLog> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    if resume {
        if let Some((step, dir)) = latest_checkpoint(out)? {
            restore(lm, &mut opt, &dir, step)?;
            log = read_log(&log_path)?
                .into_iter()
                .filter(|l| l.step <= step)
                .collect();
            start = step;
            resumed_from = Some(step);
        }
    }
    rewrite_log(&log_path, &log)?;
    let pb = crate::util::progress::bar(total as u64, "train");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_position(start as u64);
    let dev = lm.model.device().clone();
    for step in start..total {
        let lr = lr_at(cfg.schedule, cfg.lr, step, warmup, total);
        let batch_idx = step_indices(examples.len(), cfg, step, steps_per_epoch);
        let step_examples: Vec<&Example> = batch_idx.iter().map(|&i| &examples[i]).collect();
        let n_step: usize = step_examples.iter().map(|e| loss_tokens(e)).sum();
        let micro: Vec<Batch> = step_examples
            .chunks(cfg.batch_size)
            .map(|m| collate(m, lm.tokenizer.pad_id(), &dev))
            .collect::<Result<_>>()?;
        let (nll_total, grad_norm) = optimizer_step(&lm.model, &micro, &mut opt, lr, cfg.clip)?;
        let entry = StepLog {
            step: step + 1,
            loss: if n_step > 0 {
                nll_total / n_step as f64
            } else {
                0.0
            },
            lr,
            tokens: n_step,
            grad_norm,
        };
        append_log(&log_path, &entry)?;
        if let Some(h) = hook.as_deref_mut() {
            h(lm, &entry)?;
        }
        pb.set_message(format!("loss {:.4}", entry.loss));
        pb.inc(1);
        log.push(entry);
        let done = step + 1;
        if cfg.save_every > 0 && done % cfg.save_every == 0 && done < total {
            write_checkpoint(lm, &opt, out, done)?;
        }
    }
    pb.finish_and_clear();
    save_model(&lm.model, &lm.dir, out, None)?;
    crate::util::fsx::atomic_write(
        &out.join("train_config.toml"),
        toml::to_string(cfg)?.as_bytes(),
    )?;
    remove_checkpoints(out)?;
    let mean_loss = if log.is_empty() {
        0.0
    } else {
        log.iter().map(|l| l.loss).sum::<f64>() / log.len() as f64
    };
    Ok(TrainSummary {
        steps: total,
        records: examples.len(),
        truncated,
        mean_loss,
        resumed_from,
        log,
    })
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
    let params = &model.params;
    let n_step: usize = micro.iter().map(|b| b.n_targets).sum();
    if n_step == 0 {
        return Ok((0.0, 0.0));
    }
    let mut grads: Option<Grads> = None;
    let mut nll_total = 0.0;
    let by_hand = crate::train::backprop::usable(model);
    for b in micro.iter().filter(|b| b.n_targets > 0) {
        let g = if by_hand {
            let (nll, g) = crate::train::backprop::nll_and_grads(
                model,
                &b.ids,
                &b.targets,
                1.0 / n_step as f64,
            )?;
            nll_total += nll;
            g
        } else {
            let logits = model.forward(&b.ids)?;
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
    let mut grad_norm = 0.0;
    if let Some(mut g) = grads {
        grad_norm = g.clip(clip);
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
    let per = cfg.batch_size * cfg.grad_accum;
    order[k * per..((k + 1) * per).min(n)].to_vec()
}

fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The newest complete checkpoint (`checkpoints/step-N`), if any. Incomplete ones cannot
/// exist: a checkpoint is written under a temporary name and renamed when finished.
pub fn latest_checkpoint(out: &Path) -> Result<Option<(usize, PathBuf)>> {
    let root = checkpoint_root(out);
    if !root.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(&root).with_context(|| format!("cannot list {}", root.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, e.path()));
            }
        }
    }
    Ok(best)
}

fn write_checkpoint(lm: &LoadedModel, opt: &AdamW, out: &Path, step: usize) -> Result<()> {
    let root = checkpoint_root(out);
    std::fs::create_dir_all(&root)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-step-")
        .tempdir_in(&root)?;
    save_params(
        &lm.model.params,
        DType::F32,
        &tmp.path().join("model.safetensors"),
    )?;
    crate::model::checkpoint::save_tensors(
        &opt.state_tensors(&lm.model.params)?,
        &tmp.path().join("optimizer.safetensors"),
    )?;
    let state = serde_json::json!({ "step": step, "adam_step": opt.step });
    crate::util::fsx::atomic_write_json(&tmp.path().join("trainer_state.json"), &state)?;
    let final_dir = root.join(format!("step-{step}"));
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &final_dir).with_context(|| {
        format!(
            "cannot move checkpoint into place at {}",
            final_dir.display()
        )
    })?;
    // Older checkpoints are superseded.
    for e in std::fs::read_dir(&root)?.flatten() {
        let p = e.path();
        if p != final_dir && e.file_name().to_string_lossy().starts_with("step-") {
            std::fs::remove_dir_all(&p).ok();
        }
    }
    Ok(())
}

fn restore(lm: &LoadedModel, opt: &mut AdamW, dir: &Path, step: usize) -> Result<()> {
    let dev = lm.model.device();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), dev)
        .with_context(|| format!("cannot read checkpoint {}", dir.display()))?;
    for (name, var) in lm.model.params.iter() {
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
    opt.load_state(&lm.model.params, &moments, adam_step)
}

fn remove_checkpoints(out: &Path) -> Result<()> {
    let root = checkpoint_root(out);
    if root.is_dir() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove {}", root.display()))?;
    }
    Ok(())
}

pub fn read_log(path: &Path) -> Result<Vec<StepLog>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(l) => out.push(l),
            // A line cut by a kill is dropped; the steps after the checkpoint are redone.
            Err(_) if i + 1 == text.lines().count() => {}
            Err(e) => bail!("{}: line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

fn rewrite_log(path: &Path, log: &[StepLog]) -> Result<()> {
    crate::util::fsx::atomic_write_with(path, |w| {
        for l in log {
            serde_json::to_writer(&mut *w, l)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn append_log(path: &Path, entry: &StepLog) -> Result<()> {
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
