//! The model an evaluation reads (generation, logits, tokenizer), whichever way it runs.
//!
//! The cells evaluate a backend model (`backend::LanguageModel`: the fused CPU path, or
//! libtorch on the cell's device and dtype); the demo evaluates the CPU `LoadedModel` it is
//! training, between steps, without handing it over. Both answer [`Evaluated`]. On the fused
//! path the two make the same calls (`model::generate`, `train::backprop::scoring_logits`),
//! so they give the same bits.

use crate::backend::LanguageModel;
use crate::model::generate::GenConfig;
use crate::model::{LoadedModel, TextTokenizer};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// What generating responses and measuring KL on them ask of a model.
pub trait Evaluated {
    fn tokenizer(&self) -> &TextTokenizer;
    fn vocab_size(&self) -> usize;
    /// Logits (b, t, vocab) of `ids` (b, t) u32, causal, as a CPU f32 tensor.
    fn scoring_logits(&self, ids: &Tensor) -> Result<Tensor>;
    /// New tokens of each prompt (EOS not included), as `model::generate` documents. All
    /// prompts in one call: `model::generate` seeds each prompt by its index in the call.
    fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Result<Vec<Vec<u32>>>;
}

impl Evaluated for LoadedModel {
    fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn scoring_logits(&self, ids: &Tensor) -> Result<Tensor> {
        crate::train::backprop::scoring_logits(&self.model, ids)
    }
    fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Result<Vec<Vec<u32>>> {
        LoadedModel::generate(self, prompts, cfg, |_| {})
    }
}

/// A model on a backend (the cells'): the trait's own forward and generation.
impl Evaluated for Box<dyn LanguageModel> {
    fn tokenizer(&self) -> &TextTokenizer {
        LanguageModel::tokenizer(self.as_ref())
    }
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }
    fn scoring_logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let logits = self.logits(&ids.flatten_all()?.to_vec1::<u32>()?, b, t)?;
        Ok(Tensor::from_vec(
            logits,
            (b, t, self.vocab_size()),
            &Device::Cpu,
        )?)
    }
    fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Result<Vec<Vec<u32>>> {
        LanguageModel::generate(self.as_ref(), prompts, cfg)
    }
}
