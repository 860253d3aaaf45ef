//! The training loop (`train::driver`) on any [`LanguageModel`]: SFT, DPO and KTO with the
//! schedule, data order, log (`train_log.jsonl`), atomic checkpoints and exact resume that
//! the fused path has, the steps left to the backend. `elastica train` runs the fused
//! path's own entry point (`train::train`: its hook sees the candle model) on the default
//! CPU backend and this one on any other; both resolve a run with `train::recipe`, so a
//! resume with other settings, data or starting weights is refused here exactly as there,
//! and a finished run is not redone.

use super::LanguageModel;
use crate::train::driver::{drive, Checkpointed, Run, Trainee};
use crate::train::optim::AdamWConfig;
use crate::train::recipe::{save_dtype_of, Recipe, Start, SummaryOf, TrainData};
use crate::train::run_dir::saved_adam_step;
use crate::train::sft::{write_checkpoint_with, RunSettings, StepLog};
use crate::train::TrainConfig;
use anyhow::Result;
use std::path::Path;

/// Fine-tune `model` on `records` with their method (SFT on records, DPO on pairs, KTO on
/// feedback; `train::recipe`) into `run.out` (final model, `train_log.jsonl`, checkpoints
/// every `save_every` steps, DPO's and KTO's cached reference log-probs); with `run.resume`,
/// continue from the newest complete checkpoint (refused when it was written with other
/// settings, data or starting weights). A finished run with the same settings is not redone:
/// its summary is returned and `model` keeps the weights it was given (the trained ones are
/// in `out`).
pub fn train<T: TrainData, H: FnMut(&StepLog) -> Result<()> + ?Sized>(
    model: &mut dyn LanguageModel,
    records: &[T],
    cfg: &TrainConfig,
    run: Run<'_, H>,
) -> Result<SummaryOf<T>> {
    let r = prepare(model, records, cfg)?;
    train_prepared(model, &r, run)
}

/// The run of `records` on `model`: every refusal of the settings, the adapter and the data
/// comes here, before anything is written.
pub fn prepare<T: TrainData>(
    model: &dyn LanguageModel,
    records: &[T],
    cfg: &TrainConfig,
) -> Result<T::Recipe> {
    // Settings first: fingerprinting the weights is a pass over all of them.
    check_settings(model, cfg)?;
    let torch_dtype = &model.config().torch_dtype;
    let start = Start {
        tokenizer: model.tokenizer(),
        save_dtype: save_dtype_of(cfg, torch_dtype, "the model's config.json")?,
        sha256: model.weights_sha256()?,
    };
    T::Recipe::prepare(start, records, cfg)
}

/// [`train`] of a run [`prepare`] resolved.
pub fn train_prepared<R: Recipe, H: FnMut(&StepLog) -> Result<()> + ?Sized>(
    model: &mut dyn LanguageModel,
    r: &R,
    run: Run<'_, H>,
) -> Result<R::Summary> {
    let mut step = r.step();
    let o = drive(&mut OnBackend(model), &mut step, &r.resolved().plan(), run)?;
    Ok(r.summary(&step, o))
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
