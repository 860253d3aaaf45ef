//! The training loop (`train::driver`) on any [`LanguageModel`]: SFT and DPO with the
//! schedule, data order, log (`train_log.jsonl`), atomic checkpoints and exact resume that
//! the fused path has, the steps left to the backend. `elastica train` runs the fused
//! path's own entry points (`train::sft::train`, `train::dpo::train`: their hooks see the
//! candle model) on the default CPU backend and these on any other; both resolve a run the
//! same way, so a resume with other settings, data or starting weights is refused here
//! exactly as there, and a finished run is not redone.

use super::LanguageModel;
use crate::data::prefs::PrefRecord;
use crate::data::records::Record;
use crate::train::driver::{drive, Checkpointed, Run, Trainee};
use crate::train::optim::AdamWConfig;
use crate::train::run_dir::saved_adam_step;
use crate::train::sft::{prepare_run, write_checkpoint_with, RunSettings, StepLog, TrainSummary};
use crate::train::TrainConfig;
use anyhow::Result;
use std::path::Path;

/// Fine-tune `model` on `records` into `run.out` (final model, `train_log.jsonl`,
/// checkpoints every `save_every` steps); with `run.resume`, continue from the newest
/// complete checkpoint (refused when it was written with other settings, data or starting
/// weights). A finished run with the same settings is not redone: its summary is returned
/// and `model` keeps the weights it was given (the trained ones are in `out`).
pub fn train<H: FnMut(&StepLog) -> Result<()> + ?Sized>(
    model: &mut dyn LanguageModel,
    records: &[Record],
    cfg: &TrainConfig,
    run: Run<'_, H>,
) -> Result<TrainSummary> {
    // Settings first: fingerprinting the weights is a pass over all of them.
    check_settings(model, cfg)?;
    let p = prepare_run(
        model.tokenizer(),
        &model.config().torch_dtype,
        "the model's config.json",
        model.weights_sha256()?,
        records,
        cfg,
    )?;
    p.run(cfg, |m, plan| drive(&mut OnBackend(model), m, plan, run))
}

/// Train `model` with DPO on `pairs` into `run.out`, as `train::dpo::train` does on the
/// fused path (the reference log-probs cached in the run, resume, refusals).
pub fn train_dpo<H: FnMut(&StepLog) -> Result<()> + ?Sized>(
    model: &mut dyn LanguageModel,
    pairs: &[PrefRecord],
    cfg: &TrainConfig,
    run: Run<'_, H>,
) -> Result<crate::train::dpo::DpoSummary> {
    check_settings(model, cfg)?;
    let p = crate::train::dpo::prepare_pairs(
        model.tokenizer(),
        &model.config().torch_dtype,
        model.weights_sha256()?,
        pairs,
        cfg,
    )?;
    let mut method = crate::train::dpo::DpoStep::new(&p);
    let o = drive(&mut OnBackend(model), &mut method, &p.plan(), run)?;
    Ok(method.summary(o))
}

/// Train `model` with KTO on unpaired `examples` into `run.out`, as `train::kto::train` does
/// on the fused path.
pub fn train_kto<H: FnMut(&StepLog) -> Result<()> + ?Sized>(
    model: &mut dyn LanguageModel,
    examples: &[crate::data::feedback::FeedbackRecord],
    cfg: &TrainConfig,
    run: Run<'_, H>,
) -> Result<crate::train::kto::KtoSummary> {
    check_settings(model, cfg)?;
    let p = crate::train::kto::prepare_feedback(
        model.tokenizer(),
        &model.config().torch_dtype,
        model.weights_sha256()?,
        examples,
        cfg,
    )?;
    let mut method = crate::train::kto::KtoStep::new(&p);
    let o = drive(&mut OnBackend(model), &mut method, &p.plan(), run)?;
    Ok(method.summary(o))
}

/// The settings, and the LoRA settings against the model's adapter, checked as the fused
/// path's `train::sft` checks them (the same refusals, word for word).
fn check_settings(model: &dyn LanguageModel, cfg: &TrainConfig) -> Result<()> {
    cfg.validate()?;
    crate::model::adapted::check_adapter_for_training(model.adapter_config(), &cfg.lora)
}

/// Any backend as the loop's [`Checkpointed`] model.
pub struct OnBackend<'a>(pub &'a mut dyn LanguageModel);

impl Checkpointed for OnBackend<'_> {
    fn trainee(&mut self) -> &mut dyn Trainee {
        self.0
    }
    fn restore(&mut self, dir: &Path, step: usize, opt: &AdamWConfig) -> Result<()> {
        let adam_step = saved_adam_step(dir, step)?;
        self.0.load_train_state(dir, opt, adam_step)
    }
    /// `checkpoints/step-N` in the layout `train::sft` writes and reads.
    fn checkpoint(&self, out: &Path, step: usize, settings: &RunSettings) -> Result<()> {
        let state = serde_json::json!({
            "step": step, "adam_step": self.0.adam_step(), "settings": settings,
        });
        write_checkpoint_with(out, step, &state, |dir| self.0.save_train_state(dir))
    }
    fn save_final(&self, out: &Path, save_dtype: &str) -> Result<()> {
        self.0.save(out, Some(save_dtype))
    }
    /// The model keeps the weights it was given: the finished run's are in `out`.
    fn load_final(&mut self, _out: &Path) -> Result<()> {
        Ok(())
    }
}
