//! The commands' work on any [`LanguageModel`]: held-out loss and generation from text.
//! Same tokenization, masking and batching as `train::eval` and `model::generate`.

use super::LanguageModel;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::generate::GenConfig;
use crate::train::batch::{collate, tokenize, Example};
use crate::train::eval::EvalLoss;
use anyhow::{bail, Result};
use candle_core::Device;

/// `train::eval::eval_loss` on any backend.
pub fn eval_loss(
    model: &dyn LanguageModel,
    records: &[Record],
    template: Template,
    max_length: usize,
    batch_size: usize,
) -> Result<EvalLoss> {
    if batch_size == 0 {
        bail!("batch size must be at least 1");
    }
    let (examples, _) = tokenize(records, model.tokenizer(), template, max_length)?;
    let (mut total_nll, mut tokens) = (0.0, 0);
    let bytes: usize = examples.iter().map(|e| e.scored_bytes).sum();
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = collate(&refs, model.tokenizer().pad_id(), &Device::Cpu)?;
        if b.n_targets > 0 {
            total_nll += model.nll_sum(&b)?;
            tokens += b.n_targets;
        }
    }
    EvalLoss::from_totals(examples.len(), tokens, bytes, total_nll)
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
