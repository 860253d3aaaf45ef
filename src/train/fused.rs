//! The fused CPU path as the training loop's [`Trainee`]: SFT's optimizer step (micro-batches:
//! forward, token-weighted loss, backward, accumulate -> clip -> AdamW) and DPO's weighted
//! step on the hand-written backward (autograd where it does not apply), with the LoRA
//! dropout masks of the step.

use super::batch::Batch;
use super::driver::{drive, AfterStep, Checkpointed, Method, Outcome, Plan, Run, Trainee, Weigh};
use super::loss::nll_sum;
use super::optim::{AdamW, AdamWConfig, Grads, StepSettings};
use super::run_dir::{
    load_final, load_state, save_state, save_trained, saved_adam_step, write_checkpoint,
    RunSettings, StepLog,
};
use crate::model::llama::backward::SeqWeigh;
use crate::model::lora::LoraDropout;
use crate::model::{Llama, LoadedModel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::borrow::Borrow;
use std::path::Path;

/// Called after every optimizer step with the model and the step's log (for rate tracking).
pub type StepHook<'a> = dyn FnMut(&LoadedModel, &StepLog) -> Result<()> + 'a;

/// Where a fused-path run (`train::train`) writes and how it runs (everything
/// but the model, data and hyper-parameters): the loop's [`Run`] with a hook that also sees
/// the model.
pub type TrainRun<'a, 'h> = Run<'a, StepHook<'h>>;

/// The fused CPU path as a [`Trainee`]: a loaded model (trained in place through its
/// variables; owned or borrowed) and its AdamW state, made at the first step.
pub struct Fused<L> {
    pub lm: L,
    opt: Option<AdamW>,
}

impl<L: Borrow<LoadedModel>> Fused<L> {
    pub fn new(lm: L) -> Self {
        Fused { lm, opt: None }
    }

    /// AdamW updates done so far.
    pub fn adam_step(&self) -> u64 {
        self.opt.as_ref().map_or(0, |o| o.step)
    }

    /// Write the train state's files (f32 weights, AdamW moments) into `dir`.
    pub fn save_train_state(&self, dir: &Path) -> Result<()> {
        save_state(self.lm.borrow(), self.opt.as_ref(), dir)
    }

    /// Restore what [`Fused::save_train_state`] wrote, after `adam_step` updates.
    pub fn load_train_state(
        &mut self,
        dir: &Path,
        opt: &AdamWConfig,
        adam_step: u64,
    ) -> Result<()> {
        let adam = self.opt.insert(AdamW::new(*opt));
        load_state(self.lm.borrow(), adam, dir, adam_step)
    }
}

impl<L: Borrow<LoadedModel>> Trainee for Fused<L> {
    fn pad_id(&self) -> u32 {
        self.lm.borrow().tokenizer.pad_id()
    }
    fn sft_step(&mut self, micro: &[Batch], s: &StepSettings) -> Result<(f64, f64)> {
        let adam = self.opt.get_or_insert_with(|| AdamW::new(s.adamw));
        optimizer_step(&self.lm.borrow().model, micro, adam, s.lr, s.clip)
    }
    fn seq_nll(&self, batch: &Batch) -> Result<Vec<f64>> {
        seq_nll(&self.lm.borrow().model, batch)
    }
    fn weighted_step(
        &mut self,
        micro: &[Batch],
        weigh: &mut Weigh<'_>,
        s: &StepSettings,
    ) -> Result<f64> {
        let adam = self.opt.get_or_insert_with(|| AdamW::new(s.adamw));
        weighted_optimizer_step(&self.lm.borrow().model, micro, weigh, adam, s.lr, s.clip)
    }
}

impl<L: Borrow<LoadedModel>> Checkpointed for Fused<L> {
    fn trainee(&mut self) -> &mut dyn Trainee {
        self
    }
    fn restore(&mut self, dir: &Path, step: usize, opt: &AdamWConfig) -> Result<()> {
        let adam_step = saved_adam_step(dir, step)?;
        self.load_train_state(dir, opt, adam_step)
    }
    fn checkpoint(&self, out: &Path, step: usize, settings: &RunSettings) -> Result<()> {
        let adam = self
            .opt
            .as_ref()
            .context("a checkpoint before the first step")?;
        write_checkpoint(self.lm.borrow(), adam, out, step, settings)
    }
    fn save_final(&self, out: &Path, save_dtype: &str) -> Result<()> {
        save_trained(self.lm.borrow(), out, save_dtype)
    }
    fn load_final(&mut self, out: &Path) -> Result<()> {
        load_final(self.lm.borrow(), out)
    }
}

/// [`drive`] on the fused path, the caller's hook seeing `lm`.
pub(crate) fn drive_fused<M: Method>(
    lm: &LoadedModel,
    method: &mut M,
    plan: &Plan<'_>,
    mut run: TrainRun<'_, '_>,
) -> Result<Outcome<M::Log>> {
    let mut hook = run.hook.take().map(|h| move |l: &StepLog| h(lm, l));
    let run = run.with_hook(hook.as_mut().map(|h| h as &mut AfterStep<'_>));
    drive(&mut Fused::new(lm), method, plan, run)
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

/// Summed NLL of each sequence of `b`, without a gradient (the fused path).
pub(crate) fn seq_nll(model: &Llama, b: &Batch) -> Result<Vec<f64>> {
    let logits = crate::train::backprop::scoring_logits(model, &b.ids)?;
    (0..b.ids.dim(0)?)
        .map(|s| {
            let nll = nll_sum(&logits.narrow(0, s, 1)?, &b.targets.narrow(0, s, 1)?)?;
            Ok(nll.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        })
        .collect()
}

/// The per-sequence NLLs of `b` and the gradient of sum_s w_s NLL_s (w from `weigh`): the
/// hand-written backward where it applies, else autograd on `Llama::forward_train`; with
/// the LoRA dropout `drop` of a training step if given.
pub fn weighted_grads(
    model: &Llama,
    b: &Batch,
    drop: Option<&LoraDropout>,
    weigh: &mut SeqWeigh<'_>,
) -> Result<(Vec<f64>, Grads)> {
    if crate::train::backprop::usable(model) {
        return crate::train::backprop::seq_nll_and_weighted_grads(
            model, &b.ids, &b.targets, drop, weigh,
        );
    }
    autograd_weighted_grads(model, &b.ids, &b.targets, drop, weigh)
}

/// [`weighted_grads`] through candle's autograd.
pub fn autograd_weighted_grads(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    drop: Option<&LoraDropout>,
    weigh: &mut SeqWeigh<'_>,
) -> Result<(Vec<f64>, Grads)> {
    let logits = model.forward_train(ids, drop)?;
    let per: Vec<Tensor> = (0..ids.dim(0)?)
        .map(|s| nll_sum(&logits.narrow(0, s, 1)?, &targets.narrow(0, s, 1)?))
        .collect::<Result<_>>()?;
    let vals: Vec<f64> = per
        .iter()
        .map(|x| Ok(x.to_dtype(DType::F64)?.to_scalar::<f64>()?))
        .collect::<Result<_>>()?;
    let w = weigh(&vals)?;
    anyhow::ensure!(
        w.len() == per.len(),
        "{} weights for {} sequences",
        w.len(),
        per.len()
    );
    let mut total: Option<Tensor> = None;
    for (x, &w) in per.iter().zip(&w) {
        let term = (x * w)?;
        total = Some(match total {
            Some(t) => (t + term)?,
            None => term,
        });
    }
    let total = total.context("an empty batch")?;
    let store = total.backward()?;
    Ok((vals, Grads::from_store(model.trainable(), &store)?))
}

/// One optimizer step on the fused path over `micro`: per micro-batch one forward and one
/// weighted backward (weights from `weigh`), accumulated; then clip and AdamW. Returns the
/// gradient norm before clipping; a non-finite one is refused before the update.
pub(crate) fn weighted_optimizer_step(
    model: &Llama,
    micro: &[Batch],
    weigh: &mut Weigh<'_>,
    opt: &mut AdamW,
    lr: f64,
    clip: f64,
) -> Result<f64> {
    let mut grads: Option<Grads> = None;
    for (m, b) in micro.iter().enumerate() {
        // LoRA dropout masks keyed by the update count, which a resumed run restores.
        let drop = model.lora_dropout(opt.step, m as u64);
        let (_, g) = weighted_grads(model, b, drop.as_ref(), &mut |nll| weigh(m, nll))?;
        match grads.as_mut() {
            Some(acc) => acc.add(g),
            None => grads = Some(g),
        }
    }
    let mut g = grads.context("a step without sequences")?;
    let grad_norm = g.clip(clip);
    if !grad_norm.is_finite() {
        bail!(
            "the gradient norm is {grad_norm} (not finite); lower the learning rate or set --clip"
        );
    }
    opt.update(model.trainable(), &g, lr)?;
    Ok(grad_norm)
}
