//! The SFT loop over any [`LanguageModel`]: the schedule, data order, token-weighted loss,
//! log (`train_log.jsonl`), atomic checkpoints and exact resume of `train::sft`, whose
//! public pieces it reuses, with the step itself left to the backend. `elastica train`
//! runs `train::sft::train` on the fused path (its rate-tracking hook needs the candle
//! model) and this loop on any other backend; both write the same files.

use super::LanguageModel;
use crate::data::records::Record;
use crate::train::batch::{collate, loss_tokens, tokenize, Batch, Example};
use crate::train::optim::AdamWConfig;
use crate::train::schedule::{lr_at, warmup_steps};
use crate::train::sft::{
    latest_checkpoint, read_log, remove_checkpoints, step_indices, write_checkpoint_with, StepLog,
    TrainSummary,
};
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::Path;

/// Fine-tune `model` on `records` into `out` (final model, `train_log.jsonl`, checkpoints
/// every `save_every` steps); with `resume`, continue from the newest checkpoint in `out`.
pub fn train(
    model: &mut dyn LanguageModel,
    records: &[Record],
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    cfg.validate()?;
    if records.is_empty() {
        bail!("no training records");
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    let (examples, truncated) = tokenize(records, model.tokenizer(), cfg.template, cfg.max_length)?;
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
    let opt = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    };
    let log_path = out.join("train_log.jsonl");
    let mut log: Vec<StepLog> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    if resume {
        if let Some((step, dir)) = latest_checkpoint(out)? {
            let state = read_state(&dir)?;
            let adam_step = state["adam_step"].as_u64().unwrap_or(step as u64);
            model.load_train_state(&dir, &opt, adam_step)?;
            log = read_log(&log_path)?
                .into_iter()
                .filter(|l| l.step <= step)
                .collect();
            start = step;
            resumed_from = Some(step);
        }
    }
    write_log(&log_path, &log, false)?;
    let pb = crate::util::progress::bar(total as u64, "train");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_position(start as u64);
    let pad = model.tokenizer().pad_id();
    for step in start..total {
        let lr = lr_at(cfg.schedule, cfg.lr, step, warmup, total);
        let idx = step_indices(examples.len(), cfg, step, steps_per_epoch);
        let step_examples: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let n_step: usize = step_examples.iter().map(|e| loss_tokens(e)).sum();
        let micro: Vec<Batch> = step_examples
            .chunks(cfg.batch_size)
            .map(|m| collate(m, pad, &Device::Cpu))
            .collect::<Result<_>>()?;
        let (nll, grad_norm) = model.sft_step(&micro, &opt, lr, cfg.clip)?;
        let entry = StepLog {
            step: step + 1,
            loss: if n_step > 0 { nll / n_step as f64 } else { 0.0 },
            lr,
            tokens: n_step,
            grad_norm,
        };
        write_log(&log_path, std::slice::from_ref(&entry), true)?;
        pb.set_message(format!("loss {:.4}", entry.loss));
        pb.inc(1);
        log.push(entry);
        let done = step + 1;
        if cfg.save_every > 0 && done % cfg.save_every == 0 && done < total {
            write_checkpoint(&*model, out, done)?;
        }
    }
    pb.finish_and_clear();
    model.save(out, None)?;
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

fn read_state(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("trainer_state.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// `checkpoints/step-N` in the layout `train::sft` writes and reads (completion marker last,
/// one rename, older checkpoints removed marker first).
fn write_checkpoint(model: &dyn LanguageModel, out: &Path, step: usize) -> Result<()> {
    let state = serde_json::json!({ "step": step, "adam_step": model.adam_step() });
    write_checkpoint_with(out, step, &state, |dir| model.save_train_state(dir))
}

/// Rewrite the log with `entries`, or append them.
fn write_log(path: &Path, entries: &[StepLog], append: bool) -> Result<()> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    if !append {
        return crate::util::fsx::atomic_write(path, text.as_bytes());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}
