//! SFT: the resolved run ([`Prepared`], a [`Recipe`]) and SFT's step. The settings live in
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
use super::driver::{step_settings, Method, Outcome, Trainee};
pub use super::fused::{optimizer_step, StepHook, TrainRun};
use super::recipe::{Recipe, Resolved, Start, TrainData};
pub use super::run_dir::{
    check_state_finite, data_fingerprint, latest_checkpoint, params_fingerprint, read_log,
    read_log_as, remove_checkpoints, resume_point_of, step_indices, weights_fingerprint,
    write_checkpoint_with, ResumePoint, RunSettings, StepLog, COMPLETE_MARKER, FINISHED_SETTINGS,
    LOG_FILE,
};
use crate::data::records::Record;
use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub records: usize,
    pub truncated: usize,
    pub mean_loss: f64,
    pub resumed_from: Option<usize>,
    pub log: Vec<StepLog>,
}

/// SFT's step: the step's examples in micro-batches of `batch_size`, token-weighted NLL.
pub struct SftStep<'a> {
    pub examples: &'a [Example],
    pub cfg: &'a TrainConfig,
}

impl TrainData for Record {
    type Recipe = Prepared;
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
    pub resolved: Resolved,
}

impl Recipe for Prepared {
    type Record = Record;
    type Step<'a> = SftStep<'a>;
    type Summary = TrainSummary;

    fn prepare(start: Start<'_>, records: &[Record], cfg: &TrainConfig) -> Result<Prepared> {
        if records.is_empty() {
            bail!("no training records");
        }
        let (examples, truncated) =
            tokenize(records, start.tokenizer, cfg.template, cfg.max_length)?;
        if examples.iter().all(|e| loss_tokens(e) == 0) {
            bail!("no record has a token the loss can count (are all responses empty or cut by max_length?)");
        }
        let n = examples.len();
        let resolved = Resolved::new(cfg, n, start, &examples, truncated)?;
        Ok(Prepared { examples, resolved })
    }

    fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    fn step(&self) -> SftStep<'_> {
        self.resolved.warn_truncated(self.examples.len(), "records");
        SftStep {
            examples: &self.examples,
            cfg: &self.resolved.settings.train,
        }
    }

    fn summary(&self, _: &SftStep<'_>, o: Outcome<StepLog>) -> TrainSummary {
        let r = &self.resolved;
        summarize(
            r.total,
            self.examples.len(),
            r.truncated,
            o.resumed_from,
            o.log,
        )
    }
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
