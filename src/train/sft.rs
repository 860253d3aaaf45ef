//! SFT: the resolved run ([`prepare_run`]) and SFT's step. The settings live in
//! `train::config`, the run directory (settings and fingerprints, resume points, checkpoints,
//! the step log) in `train::run_dir` (re-exported here), the fused path's step in
//! `train::fused`. The loop itself is `train::driver`'s; SFT's step ([`SftStep`]) is: micro-batches (forward,
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
//!   ([`RunSettings`]); a resume with another model, other settings or data is refused, naming what
//!   changed, and a resume of a finished run with the same settings does nothing.
//!
//! The caller must hold exclusive use of the output directory (`elastica train` locks it;
//! a grid cell holds its cell's lock).

use super::batch::{collate, loss_tokens, tokenize, Batch, Example};
pub use super::config::TrainConfig;
use super::driver::{step_settings, Method, Outcome, Plan, Trainee};
pub(crate) use super::fused::drive_fused;
pub use super::fused::{optimizer_step, StepHook, TrainRun};
pub use super::run_dir::{
    data_fingerprint, latest_checkpoint, params_fingerprint, read_log, read_log_as,
    remove_checkpoints, resume_point_of, step_indices, weights_fingerprint, write_checkpoint_with,
    ResumePoint, RunSettings, StepLog, COMPLETE_MARKER, FINISHED_SETTINGS,
};
use crate::data::records::Record;
use crate::model::checkpoint::dtype_from_name;
use crate::model::LoadedModel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub records: usize,
    pub truncated: usize,
    pub mean_loss: f64,
    pub resumed_from: Option<usize>,
    pub log: Vec<StepLog>,
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
    prepare(lm, records, cfg)?.run(cfg, |m, plan| drive_fused(lm, m, plan, run))
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
        let (nll_total, grad_norm) = model.sft_step(&micro, &step_settings(self.cfg, lr))?;
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

    /// SFT on this run: `drive` runs the loop with the method and plan (on whatever runs the
    /// model); the summary of what it did.
    pub fn run(
        &self,
        cfg: &TrainConfig,
        drive: impl FnOnce(&mut SftStep<'_>, &Plan<'_>) -> Result<Outcome<StepLog>>,
    ) -> Result<TrainSummary> {
        self.warn_truncated("records");
        let mut method = SftStep {
            examples: &self.examples,
            cfg,
        };
        let o = drive(&mut method, &self.plan())?;
        Ok(summarize(
            self.total,
            self.examples.len(),
            self.truncated,
            o.resumed_from,
            o.log,
        ))
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
    let save_dtype = save_dtype_of(cfg, torch_dtype, Some(source))?;
    let (examples, truncated) = tokenize(records, tokenizer, cfg.template, cfg.max_length)?;
    if examples.iter().all(|e| loss_tokens(e) == 0) {
        bail!("no record has a token the loss can count (are all responses empty or cut by max_length?)");
    }
    let (steps_per_epoch, total, settings) =
        schedule_of(cfg, examples.len(), start_sha256, &examples)?;
    Ok(Prepared {
        examples,
        truncated,
        total,
        steps_per_epoch,
        settings,
        save_dtype,
    })
}

/// The dtype a run saves its model in: `save_dtype`, else the input checkpoint's
/// (`torch_dtype`, read from `source` where given); refused before the first step when the
/// final save could not write it.
pub(crate) fn save_dtype_of(
    cfg: &TrainConfig,
    torch_dtype: &str,
    source: Option<&str>,
) -> Result<String> {
    let save_dtype = cfg
        .save_dtype
        .clone()
        .unwrap_or_else(|| torch_dtype.to_string());
    let whence = source.map(|s| format!(" ({s})")).unwrap_or_default();
    dtype_from_name(&save_dtype).with_context(|| {
        format!(
            "the trained model would be saved in the input checkpoint's dtype \"{save_dtype}\"\
             {whence}; set save_dtype (--save-dtype) to float32, bfloat16 or float16"
        )
    })?;
    Ok(save_dtype)
}

/// A run's schedule over `n` examples (or pairs) and the settings its checkpoints store,
/// `data` fingerprinted: (steps per epoch, total steps, settings).
pub(crate) fn schedule_of(
    cfg: &TrainConfig,
    n: usize,
    start_sha256: String,
    data: &[Example],
) -> Result<(usize, usize, RunSettings)> {
    let steps_per_epoch = n.div_ceil(cfg.records_per_step()?);
    let total = cfg.total_steps(n)?;
    let settings = RunSettings {
        start_sha256,
        data_sha256: data_fingerprint(data),
        examples: n,
        train: cfg.clone(),
    };
    Ok((steps_per_epoch, total, settings))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::Schedule;
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
