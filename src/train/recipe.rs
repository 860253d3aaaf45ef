//! A method's run, resolved from its data before anything is written: SFT's
//! [`Prepared`](super::sft::Prepared), DPO's [`PairPlan`](super::dpo::PairPlan) and KTO's
//! [`FeedbackPlan`](super::kto::FeedbackPlan). The record type names the method (records
//! train SFT, preference pairs DPO, unpaired feedback KTO), so [`train`] and
//! [`resume_point`] on the fused path, and `backend::train::train` on any backend, check,
//! drive and summarise all three one way.

use super::batch::Example;
use super::driver::{Method, Outcome, Plan};
use super::fused::drive_fused;
use super::run_dir::{
    data_fingerprint, resume_point_of, weights_fingerprint, ResumePoint, RunSettings,
};
use super::{TrainConfig, TrainRun};
use crate::model::checkpoint::dtype_from_name;
use crate::model::{LoadedModel, TextTokenizer};
use anyhow::{Context, Result};
use std::path::Path;

/// The starting model as a run sees it.
pub struct Start<'a> {
    pub tokenizer: &'a TextTokenizer,
    /// The dtype the trained model is saved in ([`save_dtype_of`]).
    pub save_dtype: String,
    /// The fingerprint of its weights, which a resume must find again.
    pub sha256: String,
}

/// What a method resolves before its first step: tokenized data, schedule and settings.
pub trait Recipe: Sized {
    type Record;
    /// The method's step, over this run's data.
    type Step<'a>: Method
    where
        Self: 'a;
    type Summary;
    /// Checks `records` (and the method's own settings; `cfg.validate()` has passed) and
    /// tokenizes them; refusals come here, before anything is written.
    fn prepare(start: Start<'_>, records: &[Self::Record], cfg: &TrainConfig) -> Result<Self>;
    /// What every method resolves alike.
    fn resolved(&self) -> &Resolved;
    /// The step over this run's data (warns when max_length cut some of it).
    fn step(&self) -> Self::Step<'_>;
    /// The run's summary from the loop's outcome.
    fn summary<'a>(
        &'a self,
        step: &Self::Step<'a>,
        o: Outcome<<Self::Step<'a> as Method>::Log>,
    ) -> Self::Summary;
}

/// What every method resolves alike: the schedule over its examples (or pairs), the
/// settings its checkpoints store, the dtype it saves in, and how many were cut.
pub struct Resolved {
    pub total: usize,
    pub steps_per_epoch: usize,
    pub settings: RunSettings,
    pub save_dtype: String,
    /// Examples (or answers) longer than max_length, cut.
    pub truncated: usize,
}

impl Resolved {
    /// The schedule over `n` examples (or pairs) from `start`, `data` fingerprinted.
    pub fn new(
        cfg: &TrainConfig,
        n: usize,
        start: Start<'_>,
        data: &[Example],
        truncated: usize,
    ) -> Result<Self> {
        Ok(Resolved {
            total: cfg.total_steps(n)?,
            steps_per_epoch: n.div_ceil(cfg.records_per_step()?),
            settings: RunSettings {
                start_sha256: start.sha256,
                data_sha256: data_fingerprint(data),
                examples: n,
                train: cfg.clone(),
            },
            save_dtype: start.save_dtype,
            truncated,
        })
    }

    /// What the training loop schedules over `examples` (the settings' count).
    pub fn plan(&self) -> Plan<'_> {
        Plan {
            settings: &self.settings,
            examples: self.settings.examples,
            total: self.total,
            steps_per_epoch: self.steps_per_epoch,
            save_dtype: &self.save_dtype,
        }
    }

    /// Where a run with these settings would start in `out`, refusing what it would refuse
    /// (a checkpoint or finished run with other settings or data, a checkpoint past the last
    /// step). Incomplete checkpoints are cleaned as `run_dir::latest_checkpoint` does.
    pub fn resume_point(&self, out: &Path) -> Result<ResumePoint> {
        resume_point_of(out, &self.settings, self.total)
    }

    /// Warn when max_length cut some of the `n` `what` (records, answers, completions).
    pub fn warn_truncated(&self, n: usize, what: &str) {
        if self.truncated > 0 {
            eprintln!(
                "warning: {} of {n} {what} were longer than max_length = {} tokens and were \
                 truncated",
                self.truncated, self.settings.train.max_length
            );
        }
    }
}

/// The dtype a run saves its model in: `save_dtype`, else the input checkpoint's
/// (`torch_dtype`, read from `source`); refused before the first step when the final save
/// could not write it.
pub fn save_dtype_of(cfg: &TrainConfig, torch_dtype: &str, source: &str) -> Result<String> {
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
    Ok(save_dtype)
}

/// Data a method trains on: the record type names its [`Recipe`].
pub trait TrainData: Sized {
    type Recipe: Recipe<Record = Self>;
}

/// The summary `train` returns on records of type `T`.
pub type SummaryOf<T> = <<T as TrainData>::Recipe as Recipe>::Summary;

/// Fine-tune `lm` on `records` with their method (SFT on records, DPO on pairs, KTO on
/// feedback), writing `train_log.jsonl`, checkpoints and the final model into `run.out`.
/// With `run.resume`, continues from the newest complete checkpoint in `out` (refused when it
/// was written with other settings, data or starting weights); a finished run with the same
/// settings is not redone: its final weights are loaded into `lm` and its summary returned.
pub fn train<T: TrainData>(
    lm: &LoadedModel,
    records: &[T],
    cfg: &TrainConfig,
    run: TrainRun<'_, '_>,
) -> Result<SummaryOf<T>> {
    train_prepared(lm, &prepare::<T>(lm, records, cfg)?, run)
}

/// [`train`] of a run [`prepare`] resolved (so a caller can refuse it before it writes
/// anything of its own).
pub fn train_prepared<R: Recipe>(
    lm: &LoadedModel,
    r: &R,
    run: TrainRun<'_, '_>,
) -> Result<R::Summary> {
    let mut step = r.step();
    let o = drive_fused(lm, &mut step, &r.resolved().plan(), run)?;
    Ok(r.summary(&step, o))
}

/// Where `train(.., resume = true, ..)` would start in `out`, refusing what it would refuse
/// (see [`Resolved::resume_point`]).
pub fn resume_point<T: TrainData>(
    lm: &LoadedModel,
    records: &[T],
    cfg: &TrainConfig,
    out: &Path,
) -> Result<ResumePoint> {
    prepare::<T>(lm, records, cfg)?.resolved().resume_point(out)
}

/// The run of `records` on the fused path's model: every refusal of the settings, the
/// adapter and the data comes here, before anything is written.
pub fn prepare<T: TrainData>(
    lm: &LoadedModel,
    records: &[T],
    cfg: &TrainConfig,
) -> Result<T::Recipe> {
    // Settings first: fingerprinting the weights is a pass over all of them. LoRA settings
    // and the model's adapter must agree, or a run with `lora.rank > 0` on a model without an
    // adapter would train every weight.
    cfg.validate()?;
    crate::model::adapted::check_for_training(&lm.model, &cfg.lora)?;
    let source = format!("config.json in {}", lm.dir.display());
    let start = Start {
        tokenizer: &lm.tokenizer,
        save_dtype: save_dtype_of(cfg, &lm.model.cfg.torch_dtype, &source)?,
        sha256: weights_fingerprint(lm)?,
    };
    T::Recipe::prepare(start, records, cfg)
}
