//! The one training loop. Every run, whatever its method (SFT, DPO) and whatever runs the
//! model (the fused CPU path, a `backend`), has the same shape: resolve the resume point
//! (refusing a checkpoint or finished run with other settings or data), restore, then per
//! optimizer step: lr -> the method's step -> log line -> hook -> checkpoint; at the end the
//! final save, `train_config.toml` (which marks the run finished) and the checkpoints
//! removed. Two seams: [`Method`] is the per-method step (`sft::SftStep`, `dpo::DpoStep`)
//! and [`Trainee`] the per-backend model's steps (`fused::Fused`, every
//! `backend::LanguageModel`), which [`Checkpointed`] pairs with the run directory's files
//! (`fused::Fused`, `backend::train::OnBackend`). Keeping the loop in one place is what makes every method resume
//! bit-identically on every backend.

use super::batch::Batch;
use super::optim::{AdamWConfig, StepSettings};
use super::run_dir::{
    append_log, clear_previous_run, read_log_as, remove_checkpoints, resume_point_of, rewrite_log,
    step_indices, sync_file, ResumePoint, RunSettings, StepLog, FINISHED_SETTINGS, LOG_FILE,
};
use super::schedule::{lr_at, warmup_steps};
use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// The per-micro-batch weighing of a weighted step: given the index of the micro-batch and
/// its sequences' summed NLLs, the weight of each sequence's NLL in the loss.
pub type Weigh<'a> = dyn FnMut(usize, &[f64]) -> Result<Vec<f64>> + 'a;

/// The optimizer steps a training method takes on a model: what every backend implements
/// (`backend::LanguageModel` extends it). Every step refuses a non-finite loss or gradient
/// norm before it updates the weights.
pub trait Trainee {
    /// The token id right-padded batches are filled with.
    fn pad_id(&self) -> u32;
    /// One SFT optimizer step over `micro` (loss normalised by the step's target count):
    /// (summed NLL, gradient norm before clipping).
    fn sft_step(&mut self, micro: &[Batch], s: &StepSettings) -> Result<(f64, f64)>;
    /// Summed NLL of each sequence of `batch`, without a gradient (DPO's reference).
    fn seq_nll(&self, batch: &Batch) -> Result<Vec<f64>>;
    /// One optimizer step on the gradient of sum_s w_s NLL_s over `micro` (DPO's step), the
    /// weights of each micro-batch's sequences from `weigh(index, their NLLs)`; returns the
    /// gradient norm before clipping.
    fn weighted_step(
        &mut self,
        micro: &[Batch],
        weigh: &mut Weigh<'_>,
        s: &StepSettings,
    ) -> Result<f64>;
}

/// A [`Trainee`] with its run directory's files: what [`drive`] trains.
pub trait Checkpointed {
    /// The model the method steps.
    fn trainee(&mut self) -> &mut dyn Trainee;
    /// Restore the weights and AdamW state of checkpoint `dir` (at `step`).
    fn restore(&mut self, dir: &Path, step: usize, opt: &AdamWConfig) -> Result<()>;
    /// Write `checkpoints/step-N` (weights, AdamW state, `settings`).
    fn checkpoint(&self, out: &Path, step: usize, settings: &RunSettings) -> Result<()>;
    /// Save what the run trained (the model in `save_dtype`, or a LoRA run's adapter).
    fn save_final(&self, out: &Path, save_dtype: &str) -> Result<()>;
    /// Load a finished run's saved weights (a resume of a finished run).
    fn load_final(&mut self, out: &Path) -> Result<()>;
}

/// A training method: its log line and its optimizer step.
pub trait Method {
    /// One line of `train_log.jsonl`.
    type Log: LogLine;
    /// The progress bar's label.
    const LABEL: &'static str;
    /// Called once before any checkpoint is restored (the model holds its starting weights).
    fn begin(&mut self, _model: &mut dyn Trainee, _out: &Path) -> Result<()> {
        Ok(())
    }
    /// One optimizer step over the examples `idx` at learning rate `lr`; the log line's
    /// `step` is set by the loop.
    fn step(&mut self, model: &mut dyn Trainee, idx: &[usize], lr: f64) -> Result<Self::Log>;
}

/// One line of `train_log.jsonl`: a method's own fields around the fields every method logs.
pub trait LogLine: Serialize + DeserializeOwned {
    fn base(&self) -> &StepLog;
    fn base_mut(&mut self) -> &mut StepLog;
}

impl LogLine for StepLog {
    fn base(&self) -> &StepLog {
        self
    }
    fn base_mut(&mut self) -> &mut StepLog {
        self
    }
}

/// [`LogLine`] for a log line type whose common fields are its `base` field.
macro_rules! log_line_with_base {
    ($t:ty) => {
        impl $crate::train::driver::LogLine for $t {
            fn base(&self) -> &$crate::train::run_dir::StepLog {
                &self.base
            }
            fn base_mut(&mut self) -> &mut $crate::train::run_dir::StepLog {
                &mut self.base
            }
        }
    };
}
pub(crate) use log_line_with_base;

/// A run resolved by a `train::recipe::Recipe`: what the loop schedules.
pub struct Plan<'a> {
    /// The settings and data fingerprints (stored in checkpoints and `train_config.toml`).
    pub settings: &'a RunSettings,
    /// Examples (or pairs) the data order draws from.
    pub examples: usize,
    pub total: usize,
    pub steps_per_epoch: usize,
    pub save_dtype: &'a str,
}

/// A hook the loop calls after every step with its log line.
pub type AfterStep<'a> = dyn FnMut(&StepLog) -> Result<()> + 'a;

/// Where the loop writes and how it reports. `H` is the hook's type: [`drive`] calls any
/// `FnMut(&StepLog)` (an [`AfterStep`] by default); the fused path's `TrainRun` hook also
/// sees the model.
pub struct Run<'a, H: ?Sized + 'a = AfterStep<'a>> {
    /// Final model, `train_log.jsonl` and checkpoints go here.
    pub out: &'a Path,
    /// Continue from the newest complete checkpoint in `out` (refused when it was written
    /// with other settings or data); a finished run with the same settings is not redone.
    pub resume: bool,
    /// Show a progress bar (log lines when stderr is not a terminal).
    pub progress: bool,
    /// Called after every optimizer step with its log line.
    pub hook: Option<&'a mut H>,
}

impl<'a, H: ?Sized + 'a> Run<'a, H> {
    /// A run from the start into `out`, silent and without a hook (as an experiment's cells
    /// train); struct update syntax sets the rest.
    pub fn fresh(out: &'a Path) -> Self {
        Run {
            out,
            resume: false,
            progress: false,
            hook: None,
        }
    }
}

impl<'a, H: ?Sized> Run<'a, H> {
    /// The same run with another hook.
    pub fn with_hook<G: ?Sized>(self, hook: Option<&'a mut G>) -> Run<'a, G> {
        Run {
            out: self.out,
            resume: self.resume,
            progress: self.progress,
            hook,
        }
    }
}

/// What the loop did.
pub struct Outcome<L> {
    /// Every step's log line, the resumed ones included.
    pub log: Vec<L>,
    pub resumed_from: Option<usize>,
    /// The run was already finished in `out`: nothing was trained.
    pub finished_before: bool,
}

/// The AdamW settings of a run.
pub fn adamw_config(cfg: &super::config::TrainConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    }
}

/// The settings of one optimizer update of a run at learning rate `lr`.
pub fn step_settings(cfg: &super::config::TrainConfig, lr: f64) -> StepSettings {
    StepSettings {
        adamw: adamw_config(cfg),
        lr,
        clip: cfg.clip,
    }
}

/// Run `method` on `model` as `plan` says, into `run.out` (see the module doc).
pub fn drive<M: Method, H: FnMut(&StepLog) -> Result<()> + ?Sized>(
    model: &mut dyn Checkpointed,
    method: &mut M,
    plan: &Plan<'_>,
    run: Run<'_, H>,
) -> Result<Outcome<M::Log>> {
    let Run {
        out,
        resume,
        progress,
        mut hook,
    } = run;
    let (cfg, total) = (&plan.settings.train, plan.total);
    // Resume's checks come before anything is written into `out`.
    let point = match resume {
        true => resume_point_of(out, plan.settings, total)?,
        false => ResumePoint::Fresh,
    };
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    // What a killed run's writes left half-done (its caller holds `out`'s lock).
    crate::util::fsx::remove_stale_temps(out)?;
    let log_path = out.join(LOG_FILE);
    let opt = adamw_config(cfg);
    let (mut log, mut start, mut resumed_from) = (Vec::new(), 0, None);
    match point {
        ResumePoint::Finished => {
            eprintln!(
                "{} already holds this run, finished ({total} steps, same settings and data); \
                 nothing to do",
                out.display()
            );
            model.load_final(out)?;
            // A kill between the finished marker and the clean-up left checkpoints behind.
            remove_checkpoints(out)?;
            let log = read_log_as(&log_path)?;
            return Ok(Outcome {
                log,
                resumed_from: Some(total),
                finished_before: true,
            });
        }
        ResumePoint::Checkpoint { step, dir } => {
            method.begin(model.trainee(), out)?;
            model.restore(&dir, step, &opt)?;
            log = read_log_as::<M::Log>(&log_path)?
                .into_iter()
                .filter(|l| l.base().step <= step)
                .collect();
            (start, resumed_from) = (step, Some(step));
        }
        ResumePoint::Fresh => {
            clear_previous_run(out)?;
            method.begin(model.trainee(), out)?
        }
    }
    rewrite_log(&log_path, &log)?;
    let mut bar = Progress::new(M::LABEL, total, start, progress);
    let warmup = warmup_steps(cfg.warmup_ratio, total);
    for step in start..total {
        let lr = lr_at(cfg.schedule, cfg.lr, step, warmup, total);
        let idx = step_indices(plan.examples, cfg, step, plan.steps_per_epoch);
        let stopped = || {
            format!(
                "training stopped at step {} of {total} (lr {lr:e}): the step was not applied \
                 and nothing was saved for it",
                step + 1
            )
        };
        let mut entry = method
            .step(model.trainee(), &idx, lr)
            .with_context(stopped)?;
        entry.base_mut().step = step + 1;
        let base = entry.base().clone();
        check_finite(&base).with_context(stopped)?;
        append_log(&log_path, &entry)?;
        if let Some(h) = hook.as_deref_mut() {
            h(&base)?;
        }
        bar.step(&base);
        log.push(entry);
        let done = step + 1;
        if cfg.save_every > 0 && done % cfg.save_every == 0 && done < total {
            // The log lines up to this step must survive whatever the checkpoint survives.
            sync_file(&log_path)?;
            model.checkpoint(out, done, plan.settings)?;
        }
    }
    bar.finish();
    model.save_final(out, plan.save_dtype)?;
    // Written after the model: its presence (with equal settings) marks the run finished.
    crate::util::fsx::atomic_write(
        &out.join(FINISHED_SETTINGS),
        toml::to_string(plan.settings)?.as_bytes(),
    )?;
    remove_checkpoints(out)?;
    Ok(Outcome {
        log,
        resumed_from,
        finished_before: false,
    })
}

/// A safety net behind the steps' own checks: a non-finite loss or norm is never logged.
fn check_finite(l: &StepLog) -> Result<()> {
    if !l.loss.is_finite() {
        bail!(
            "the loss is {} (not finite); lower the learning rate or check the weights and data",
            l.loss
        );
    }
    if !l.grad_norm.is_finite() {
        bail!(
            "the gradient norm is {} (not finite); lower the learning rate or set --clip",
            l.grad_norm
        );
    }
    Ok(())
}

/// A progress bar on a terminal, log lines otherwise, nothing when `show` is off.
struct Progress {
    bar: indicatif::ProgressBar,
    lines: Option<crate::util::progress::LogLines>,
}

impl Progress {
    fn new(label: &str, total: usize, start: usize, show: bool) -> Self {
        let bar = crate::util::progress::bar(total as u64, label);
        let mut lines = None;
        if !show {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        } else if !crate::util::progress::stderr_is_terminal() {
            lines = Some(crate::util::progress::LogLines::new(label, total, start));
        }
        bar.set_position(start as u64);
        Progress { bar, lines }
    }

    fn step(&mut self, l: &StepLog) {
        self.bar.set_message(format!("loss {:.4}", l.loss));
        self.bar.inc(1);
        if let Some(lines) = self.lines.as_mut() {
            lines.step(l.step, l.loss, l.tokens);
        }
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
        if let Some(lines) = self.lines.as_mut() {
            lines.finish();
        }
    }
}
