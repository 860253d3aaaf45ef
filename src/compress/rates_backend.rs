//! Compression rates on any compute backend (`rates --device/--backend/--dtype`): the code
//! lengths of [`super::rates`] computed from one forward per chunk of a record through
//! [`LanguageModel::logits`] instead of the coder's one-token-at-a-time predictor.
//!
//! The chunks, the start-of-sequence prefix and the first token of a chunk without one are
//! exactly the [`super::model_predictor::ModelPredictor`]'s: each chunk of at most
//! `max_context` tokens restarts from the tokenizer's special prefix (Llama: `<s>`), or from
//! nothing for a sequence that writes its own start; with no prefix (Qwen2) the chunk's first
//! token costs `log2 V` bits (the uniform distribution).
//! The numbers agree with the fused coder's to float rounding (a batched forward adds in
//! another order than the cached one), which is all a rate needs; an arithmetic-coded file
//! needs the coder's bit-identical floats, so `compress` keeps the fused path.

use super::model_predictor::{log_softmax, special_prefix, MAX_CONTEXT_CAP};
use super::predictor::Tokenization;
use super::rates::{RecordCode, RecordScorer, ScoredSequence};
use super::symbols::ideal_bits;
use crate::backend::{BackendChoice, LanguageModel};
use anyhow::{bail, Context, Result};

/// A model on a backend, scoring records for `rates`.
pub struct BackendRates {
    model: Box<dyn LanguageModel>,
    prefix: Vec<u32>,
    max_context: usize,
}

impl BackendRates {
    pub fn new(model: Box<dyn LanguageModel>) -> Result<Self> {
        let prefix = special_prefix(model.tokenizer())?;
        let max_context = model
            .config()
            .max_position_embeddings
            .min(MAX_CONTEXT_CAP)
            .saturating_sub(prefix.len());
        if max_context == 0 {
            bail!("max_position_embeddings leaves no room for tokens");
        }
        Ok(BackendRates {
            model,
            prefix,
            max_context,
        })
    }

    /// Load `spec` (a directory or `org/name` in the offline cache) on `choice`.
    pub fn load(spec: &str, choice: &BackendChoice) -> Result<Self> {
        Self::new(crate::backend::load(spec, choice)?)
    }
}

impl RecordScorer for BackendRates {
    fn tokenization(&self) -> &dyn Tokenization {
        self.model.tokenizer()
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn code_length(&mut self, seq: &ScoredSequence) -> Result<RecordCode> {
        let end = seq.scored_end()?;
        let vocab = self.vocab_size();
        if let Some(&id) = seq.ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("token id {id} is outside the model's vocabulary of {vocab}");
        }
        // A sequence that writes its own start is scored from an empty context.
        let prefix: &[u32] = if seq.from_empty { &[] } else { &self.prefix };
        let p = prefix.len();
        let mut bits = 0.0;
        for start in (0..end).step_by(self.max_context) {
            let stop = (start + self.max_context).min(end);
            let chunk = &seq.ids[start..stop];
            // The model sees the prefix and every chunk token but the last; position
            // p + k - 1 predicts chunk token k.
            let mut input = prefix.to_vec();
            input.extend_from_slice(&chunk[..chunk.len() - 1]);
            let logits = if input.is_empty() {
                Vec::new()
            } else {
                self.model
                    .logits(&input, 1, input.len())
                    .context("the model failed to score a chunk")?
            };
            if logits.len() != input.len() * vocab {
                bail!(
                    "the model returned {} logits for {} positions of a {vocab}-token vocabulary",
                    logits.len(),
                    input.len()
                );
            }
            for (k, (&id, &scored)) in chunk.iter().zip(&seq.scored[start..stop]).enumerate() {
                if !scored {
                    continue;
                }
                bits += if p + k == 0 {
                    (vocab as f64).log2()
                } else {
                    let row = &logits[(p + k - 1) * vocab..(p + k) * vocab];
                    ideal_bits(&log_softmax(row)?, id as usize)?
                };
            }
        }
        Ok(RecordCode {
            bits,
            tokens: seq.scored_tokens(),
            bytes: seq.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fused::FusedModel;
    use crate::compress::model_predictor::ModelPredictor;
    use crate::compress::predictor::TokenPredictor;
    use crate::data::records::Record;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models");

    fn lm(name: &str) -> crate::model::LoadedModel {
        crate::model::load_model(&format!("{FIX}/{name}"), &candle_core::Device::Cpu).unwrap()
    }

    /// The backend's code lengths are the coder's (to float rounding), with and without a
    /// start-of-sequence prefix, in one chunk and across chunk boundaries.
    #[test]
    fn backend_code_lengths_match_the_coder() {
        let rec = Record::Pair {
            prompt: "Which colour is the sky?".into(),
            response: "The sky is blue, and the grass is green. ".repeat(6),
        };
        for name in ["tiny-llama", "tiny-qwen2"] {
            for context in [None, Some(8)] {
                let model = || {
                    let mut m = lm(name);
                    if let Some(c) = context {
                        m.model.cfg.max_position_embeddings = c;
                    }
                    m
                };
                let mut coder = ModelPredictor::new(model()).unwrap();
                let mut on = BackendRates::new(Box::new(FusedModel::new(model()))).unwrap();
                assert_eq!(on.max_context, coder.max_context());
                let seq = ScoredSequence::raw(&rec, coder.tokenization()).unwrap();
                assert!(context.is_none() || seq.ids.len() > 3 * on.max_context);
                // Also from an empty context (a sequence that writes its own start).
                let bare = ScoredSequence {
                    from_empty: true,
                    ..seq.clone()
                };
                let mut bits = Vec::new();
                for s in [&seq, &bare] {
                    let a = crate::compress::rates::code_length(&mut coder, s).unwrap();
                    let b = on.code_length(s).unwrap();
                    assert_eq!((a.tokens, a.bytes), (b.tokens, b.bytes));
                    let rel = (a.bits - b.bits).abs() / a.bits;
                    assert!(
                        rel < 1e-5,
                        "{name}, context {context:?}, from empty {}: coder {} vs backend {} \
                         bits",
                        s.from_empty,
                        a.bits,
                        b.bits
                    );
                    bits.push(a.bits);
                }
                assert_ne!(bits[0], bits[1], "{name}: the start state changes nothing");
            }
        }
    }
}
