//! Held-out loss: the mean NLL of a data set under a model, with the same masking as
//! training, and its compression reading (bits per token, bits per byte).

use super::batch::{collate, tokenize, Batch, Example};
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::{LoadedModel, TextTokenizer};
use anyhow::{bail, Result};
use candle_core::Device;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct EvalLoss {
    /// Records scored.
    pub records: usize,
    /// Tokens the loss counted.
    pub tokens: usize,
    /// UTF-8 bytes of the scored text.
    pub bytes: usize,
    pub mean_nll: f64,
    pub bits_per_token: f64,
    /// Total bits over the UTF-8 bytes of the scored text (responses, or whole texts).
    pub bits_per_byte: f64,
}

impl EvalLoss {
    /// The scores of `records` records whose `tokens` counted tokens (over `bytes` UTF-8
    /// bytes) summed to `total_nll` nats; every backend's eval-loss ends here.
    pub fn from_totals(
        records: usize,
        tokens: usize,
        bytes: usize,
        total_nll: f64,
    ) -> Result<Self> {
        if tokens == 0 {
            bail!("the data has no token to score");
        }
        let ln2 = std::f64::consts::LN_2;
        Ok(EvalLoss {
            records,
            tokens,
            bytes,
            mean_nll: total_nll / tokens as f64,
            bits_per_token: total_nll / tokens as f64 / ln2,
            bits_per_byte: if bytes > 0 {
                total_nll / ln2 / bytes as f64
            } else {
                f64::NAN
            },
        })
    }
}

/// The held-out loss of `records` under `lm` (the fused CPU model).
pub fn eval_loss(
    lm: &LoadedModel,
    records: &[Record],
    template: Template,
    max_length: usize,
    batch_size: usize,
    progress: bool,
) -> Result<EvalLoss> {
    let mut batches = EvalBatches::new(&lm.tokenizer, lm.model.device(), template, max_length);
    batches.batch_size = batch_size;
    batches.progress = progress;
    batches.fused(lm, records)
}

/// How a data set is cut into the batches its held-out loss is summed over: the same
/// tokenization and masking as training, whatever model computes each batch's NLL.
pub struct EvalBatches<'a> {
    pub tokenizer: &'a TextTokenizer,
    /// Where the batches' tensors live.
    pub device: &'a Device,
    pub template: Template,
    pub max_length: usize,
    pub batch_size: usize,
    pub progress: bool,
    /// Warn on stderr when records are cut to `max_length` (off where the same set is
    /// measured again and again, as `--track-rates` does).
    pub warn_cuts: bool,
}

impl<'a> EvalBatches<'a> {
    /// Batches of 8, no progress bar, cut records reported.
    pub fn new(
        tokenizer: &'a TextTokenizer,
        device: &'a Device,
        template: Template,
        max_length: usize,
    ) -> Self {
        EvalBatches {
            tokenizer,
            device,
            template,
            max_length,
            batch_size: 8,
            progress: false,
            warn_cuts: true,
        }
    }

    /// The held-out loss under the fused CPU model `lm`.
    pub fn fused(&self, lm: &LoadedModel, records: &[Record]) -> Result<EvalLoss> {
        self.eval_loss(records, |b| {
            crate::train::backprop::scoring_nll(&lm.model, &b.ids, &b.targets)
        })
    }

    /// Sum `nll_sum` (summed NLL of a batch's counted tokens) over the batches of `records`.
    pub fn eval_loss(
        &self,
        records: &[Record],
        mut nll_sum: impl FnMut(&Batch) -> Result<f64>,
    ) -> Result<EvalLoss> {
        if self.batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if self.max_length < 2 {
            // A sequence scores each token after its first: one token scores nothing.
            bail!(
                "max_length must be at least 2 tokens, got {}",
                self.max_length
            );
        }
        let (examples, truncated) =
            tokenize(records, self.tokenizer, self.template, self.max_length)?;
        if truncated > 0 && self.warn_cuts {
            eprintln!(
                "warning: {truncated} of {} records were longer than max_length = {} tokens and \
                 were cut; only their kept tokens (and the bytes those stand for) are scored",
                examples.len(),
                self.max_length
            );
        }
        let pb = crate::util::progress::bar(examples.len() as u64, "eval");
        if !self.progress {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut total_nll = 0.0;
        let mut tokens = 0;
        let bytes: usize = examples.iter().map(|e| e.scored_bytes).sum();
        for (i, chunk) in examples.chunks(self.batch_size).enumerate() {
            let refs: Vec<&Example> = chunk.iter().collect();
            let b = collate(&refs, self.tokenizer.pad_id(), self.device)?;
            if b.n_targets > 0 {
                let nll = nll_sum(&b)?;
                if !nll.is_finite() {
                    let first = i * self.batch_size + 1;
                    bail!(
                        "the model's NLL of records {first}..{} is {nll}: its forward overflows \
                         (diverged or damaged weights, or an adapter's scale)",
                        first + chunk.len() - 1
                    );
                }
                total_nll += nll;
                tokens += b.n_targets;
            }
            pb.inc(chunk.len() as u64);
        }
        pb.finish_and_clear();
        if tokens == 0 && truncated > 0 {
            bail!(
                "no token to score: the counted tokens of the {truncated} cut records all fall \
                 past max_length = {} (raise --max-length)",
                self.max_length
            );
        }
        EvalLoss::from_totals(examples.len(), tokens, bytes, total_nll)
    }
}
