//! The Llama-family model (src/model/) as the compressor's probability source: a
//! [`TokenPredictor`] with an incremental KV-cache forward, and [`Tokenization`] for the
//! model's [`TextTokenizer`].
//!
//! One compute path serves both directions: every call feeds exactly one token through
//! [`Llama::forward_cached`] with shapes (1, 1), so compressing and decompressing run the same
//! kernels on the same shapes in the same order and get bit-identical floats.
//!
//! **Start-of-sequence state.** [`ModelPredictor::start`] feeds the special tokens the
//! tokenizer puts *before* a text when it adds special tokens (Llama: `<s>`), i.e. exactly
//! the prefix `eval-loss` sees, so a data set's rate equals its `eval-loss` figure. A
//! tokenizer that adds no prefix (Qwen2) leaves the model with no context for the first
//! token; the predictor then answers the uniform distribution for it (the compressor codes
//! it so; rates, like `eval-loss`, do not score it: see `super::rates::ScoredSequence`).

use super::format::sha256;
use super::predictor::{TokenPredictor, Tokenization};
use crate::model::checkpoint::LoadedModel;
use crate::model::llama::{KvCache, Llama};
use crate::model::TextTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Longest chunk a model is asked to code, whatever its config allows (cost grows with it).
pub const MAX_CONTEXT_CAP: usize = 2048;

impl Tokenization for TextTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        TextTokenizer::encode(self, text, false)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        TextTokenizer::decode(self, ids, false)
    }

    fn eos_id(&self) -> Option<u32> {
        Some(TextTokenizer::eos_id(self))
    }

    fn ends_with_eos(&self, text: &str) -> bool {
        TextTokenizer::ends_with_eos(self, text)
    }

    fn text_tokenizer(&self) -> Option<&TextTokenizer> {
        Some(self)
    }
}

/// The special tokens `tok` puts before a text when asked to add special tokens (its BOS, if
/// it adds one; empty otherwise).
pub fn special_prefix(tok: &TextTokenizer) -> Result<Vec<u32>> {
    let probe = "a";
    let with = tok.encode(probe, true)?;
    let without = tok.encode(probe, false)?;
    if without.is_empty() {
        return Ok(Vec::new());
    }
    match with.windows(without.len()).position(|w| w == without.as_slice()) {
        Some(p) => Ok(with[..p].to_vec()),
        None => bail!("the tokenizer's special tokens change the text's own tokens; cannot find its start-of-sequence prefix"),
    }
}

/// SHA-256 over the files that determine the model's floats: the weights (single file or
/// every shard, in name order), `tokenizer.json` and `config.json`.
pub fn model_fingerprint(dir: &Path) -> Result<[u8; 32]> {
    let mut weights: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    if weights.is_empty() {
        bail!("{} holds no .safetensors weights", dir.display());
    }
    let mut h = Sha256::new();
    for p in weights
        .iter()
        .cloned()
        .chain([dir.join("tokenizer.json"), dir.join("config.json")])
    {
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        // Length-prefix each file so that moving bytes between files changes the hash.
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(sha256(&bytes));
    }
    Ok(h.finalize().into())
}

/// A loaded model answering next-token distributions one token at a time.
pub struct ModelPredictor {
    model: Llama,
    tokenizer: TextTokenizer,
    fingerprint: [u8; 32],
    prefix: Vec<u32>,
    max_context: usize,
    cache: KvCache,
    /// Logits after the last fed token (None: nothing fed since `start`).
    pending: Option<Vec<f32>>,
    /// Key positions in the cache (= next position).
    pos: usize,
    started: bool,
}

impl ModelPredictor {
    /// With a LoRA adapter applied to the model (`model::adapted::load_model_with`): the
    /// fingerprint also covers the adapter's files, so a file compressed with one adapter is
    /// refused by the base alone or by another adapter rather than decoded into garbage.
    pub fn with_adapter(mut self, dir: &Path) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(self.fingerprint);
        for name in [
            crate::model::lora::CONFIG_FILE,
            crate::model::lora::WEIGHTS_FILE,
        ] {
            let p = dir.join(name);
            let bytes =
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(sha256(&bytes));
        }
        self.fingerprint = h.finalize().into();
        Ok(self)
    }

    pub fn new(lm: LoadedModel) -> Result<Self> {
        let fingerprint = model_fingerprint(&lm.dir)?;
        let prefix = special_prefix(&lm.tokenizer)?;
        let max_context = lm
            .model
            .cfg
            .max_position_embeddings
            .min(MAX_CONTEXT_CAP)
            .saturating_sub(prefix.len());
        if max_context == 0 {
            bail!(
                "{}: max_position_embeddings leaves no room for tokens",
                lm.dir.display()
            );
        }
        let cache = KvCache::new(lm.model.cfg.num_hidden_layers);
        Ok(ModelPredictor {
            model: lm.model,
            tokenizer: lm.tokenizer,
            fingerprint,
            prefix,
            max_context,
            cache,
            pending: None,
            pos: 0,
            started: false,
        })
    }

    /// Feed `ids` one at a time (one shape for every call) and keep the last logits.
    fn feed(&mut self, id: u32) -> Result<()> {
        let dev = self.model.device().clone();
        let ids = Tensor::from_vec(vec![id], (1, 1), &dev)?;
        let positions = Tensor::from_vec(vec![self.pos as u32], (1, 1), &dev)?;
        let mask = Tensor::ones((1, self.pos + 1), DType::U32, &dev)?;
        let logits = self
            .model
            .forward_cached(&ids, &positions, &mask, &mut self.cache)?;
        self.pos += 1;
        let last: Vec<f32> = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()
            .context("cannot read the model's logits")?;
        self.pending = Some(last);
        Ok(())
    }
}

/// Natural-log softmax in f64 accumulation (deterministic: a plain sequential loop); the
/// backend rates path uses it too, so both paths round alike where they can.
pub(super) fn log_softmax(logits: &[f32]) -> Result<Vec<f32>> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        bail!("the model produced non-finite logits (max {max})");
    }
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    Ok(logits.iter().map(|&x| (x as f64 - lse) as f32).collect())
}

impl TokenPredictor for ModelPredictor {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    fn tokenization(&self) -> &dyn Tokenization {
        &self.tokenizer
    }

    fn start(&mut self) -> Result<()> {
        self.start_empty()?;
        for id in self.prefix.clone() {
            self.feed(id)?;
        }
        Ok(())
    }

    fn start_empty(&mut self) -> Result<()> {
        self.cache = KvCache::new(self.model.cfg.num_hidden_layers);
        self.pending = None;
        self.pos = 0;
        self.started = true;
        Ok(())
    }

    fn next_log_probs(&mut self, prev: Option<u32>) -> Result<Vec<f32>> {
        if !self.started {
            bail!("next_log_probs called before start");
        }
        if let Some(id) = prev {
            if id as usize >= self.vocab_size() {
                bail!(
                    "token id {id} is outside the model's vocabulary of {}",
                    self.vocab_size()
                );
            }
            if self.pos >= self.max_context + self.prefix.len() {
                bail!(
                    "the chunk exceeds the model's context of {} tokens",
                    self.max_context
                );
            }
            self.feed(id)?;
        }
        match &self.pending {
            Some(logits) => {
                if logits.len() != self.vocab_size() {
                    bail!(
                        "the model returned {} logits, its vocab_size is {}",
                        logits.len(),
                        self.vocab_size()
                    );
                }
                log_softmax(logits)
            }
            // No start-of-sequence token and nothing coded yet: no context, uniform code.
            None => Ok(vec![-(self.vocab_size() as f32).ln(); self.vocab_size()]),
        }
    }
}
