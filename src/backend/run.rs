//! The commands' work on any [`LanguageModel`]: held-out loss. Same tokenization, masking
//! and batching as `train::eval`.

use super::LanguageModel;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::train::eval::{EvalBatches, EvalLoss};
use anyhow::Result;
use candle_core::Device;

/// `train::eval::eval_loss` on any backend.
pub fn eval_loss(
    model: &dyn LanguageModel,
    records: &[Record],
    template: Template,
    max_length: usize,
    batch_size: usize,
) -> Result<EvalLoss> {
    let mut batches = EvalBatches::new(model.tokenizer(), &Device::Cpu, template, max_length);
    batches.batch_size = batch_size;
    batches.eval_loss(records, |b| model.nll_sum(b))
}
