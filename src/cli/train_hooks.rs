//! What `elastica train` does after each optimizer step besides training: measure the tracked
//! compression rates (`--track-rates`) and write TensorBoard scalars (`--log-dir`), the rates
//! included, through the trainer's step hook.

use crate::compress::tracking::{plot_rows, RateTracker, TrackedRate};
use crate::model::checkpoint::LoadedModel;
use crate::report::tensorboard::TrainBoard;
use crate::report::RunDir;
use crate::train::sft::StepLog;
use anyhow::Result;
use std::path::Path;

pub struct StepHooks {
    tracker: Option<RateTracker>,
    board: Option<TrainBoard>,
}

impl StepHooks {
    /// `tracker` has measured the run's starting point already (`RateTracker::begin`); those
    /// rates are the board's first point.
    pub fn new(tracker: Option<RateTracker>, log_dir: Option<&Path>) -> Result<Self> {
        let mut board = log_dir.map(TrainBoard::create).transpose()?;
        if let (Some(b), Some(t)) = (board.as_mut(), tracker.as_ref()) {
            if let Some(start) = t.rows().iter().map(|r| r.step).max() {
                log_rates(b, t.rows(), start)?;
            }
        }
        if let Some(b) = board.as_mut() {
            eprintln!("TensorBoard events: {}", b.path().display());
            b.restart_clock();
        }
        Ok(StepHooks { tracker, board })
    }

    pub fn after_step(&mut self, lm: &LoadedModel, log: &StepLog) -> Result<()> {
        if let Some(b) = self.board.as_mut() {
            b.step(log.step as u64, log.loss, log.lr, log.grad_norm, log.tokens)?;
        }
        if let Some(t) = self.tracker.as_mut() {
            let before = t.rows().len();
            t.after_step(lm, log.step)?;
            if let Some(b) = self.board.as_mut().filter(|_| t.rows().len() != before) {
                log_rates(b, t.rows(), log.step)?;
                // The measurement is not training time.
                b.restart_clock();
            }
        }
        Ok(())
    }

    /// After the last step: the tracker's final measurement, its plot, and its scalars.
    pub fn finish(&mut self, lm: &LoadedModel, last_step: usize, out: &Path) -> Result<()> {
        if let Some(t) = self.tracker.as_mut() {
            let before = t.rows().len();
            t.finish(lm, last_step)?;
            plot_rows(&RunDir::create(out)?, t.rows())?;
            if let Some(b) = self.board.as_mut().filter(|_| t.rows().len() != before) {
                log_rates(b, t.rows(), last_step)?;
            }
        }
        Ok(())
    }
}

/// The rows measured at `step` as `rates/<set>/<unit>` scalars.
fn log_rates(board: &mut TrainBoard, rows: &[TrackedRate], step: usize) -> Result<()> {
    let values: Vec<(String, &str, f64)> = rows
        .iter()
        .filter(|r| r.step == step)
        .flat_map(|r| {
            [
                (r.set.clone(), "bits_per_token", r.bits_per_token),
                (r.set.clone(), "bits_per_byte", r.bits_per_byte),
                (r.set.clone(), "normalized", r.normalized),
            ]
        })
        .collect();
    board.rates(step as u64, &values)
}
