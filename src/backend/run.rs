//! The commands' work on any [`LanguageModel`]: held-out loss and generation from text.
//! Same tokenization, masking and batching as `train::eval` and `model::generate`.

use super::LanguageModel;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::generate::GenConfig;
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
    let batches = EvalBatches {
        tokenizer: model.tokenizer(),
        device: &Device::Cpu,
        template,
        max_length,
        batch_size,
        progress: false,
    };
    batches.eval_loss(records, |b| model.nll_sum(b))
}

/// Responses (decoded, special tokens skipped) to `prompts` under `template`.
pub fn generate_texts(
    model: &dyn LanguageModel,
    prompts: &[String],
    template: Template,
    cfg: &GenConfig,
) -> Result<Vec<String>> {
    let tok = model.tokenizer();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| template.encode_prompt(p, tok))
        .collect::<Result<_>>()?;
    model
        .generate(&ids, cfg)?
        .iter()
        .map(|o| tok.decode(o, true))
        .collect()
}
