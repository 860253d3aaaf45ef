//! The probability source of the compressor: a language model seen as a next-token
//! predictor ([`TokenPredictor`]) together with its tokenizer ([`Tokenization`]).
//!
//! Arithmetic coding is exact only if the encoder and the decoder compute *bit-identical*
//! probabilities. The contract below is written so that one compute path (an incremental
//! forward with a KV cache) serves both directions: the coder makes exactly the same sequence
//! of calls when compressing and when decompressing, and the predictor must answer an
//! identical call sequence with identical floats.

use crate::model::TextTokenizer;
use anyhow::{bail, Result};

/// Turns text into token ids and back (for a real model: a Hugging Face tokenizer).
///
/// The compressor never trusts the tokenizer to be lossless: it keeps a piece of text as
/// tokens only after checking `decode(encode(piece)) == piece` byte for byte, and codes
/// everything else as raw bytes (see [`crate::compress::segment`]).
pub trait Tokenization {
    /// Token ids of `text`, *without* special tokens (no BOS/EOS added): the predictor's
    /// [`TokenPredictor::start`] supplies the start-of-sequence state itself.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;

    /// Text of `ids`; a pure function of `ids` (the decompressor relies on it).
    fn decode(&self, ids: &[u32]) -> Result<String>;

    /// The end-of-sequence token, if the model has one. Only compression *rates* use it
    /// (a response's EOS counts in the loss, as in training); the compressor does not.
    fn eos_id(&self) -> Option<u32>;

    /// Whether `text` already ends with the EOS token's text (then rates score no second EOS
    /// after it, as training adds none).
    fn ends_with_eos(&self, _text: &str) -> bool {
        false
    }

    /// The model's own tokenizer, where this is one: rates then tokenize records under a
    /// template exactly as training does (specials, chat templates, conversations).
    fn text_tokenizer(&self) -> Option<&TextTokenizer> {
        None
    }
}

/// A causal language model queried one token at a time.
///
/// # Contract
/// - A *chunk* begins with [`start`](Self::start). The first call of
///   [`next_log_probs`](Self::next_log_probs) after it gets `prev = None` and returns the
///   distribution of the chunk's first token given the start-of-sequence state (for
///   Llama-family models: after BOS, if the tokenizer adds one). Every further call passes
///   the token that was just coded, `prev = Some(id)`, and returns the distribution of the
///   token after it.
/// - At most [`max_context`](Self::max_context) calls of `next_log_probs` happen between two
///   calls of `start`; the coder starts a new chunk before exceeding it.
/// - The returned vector has exactly [`vocab_size`](Self::vocab_size) entries, natural-log
///   probabilities (log-softmax of the logits). Entries may be `-inf`; NaN and `+inf` are
///   errors. They need not sum to exactly one: the coder renormalises.
/// - **Determinism**: the same sequence of calls (from a fresh `start`) must produce
///   bit-identical floats, whether the process is compressing or decompressing, and
///   whatever happened before `start`. Use the same kernels, thread count and batch shape
///   both ways; never a full-sequence forward one way and a cached one the other.
/// - [`fingerprint`](Self::fingerprint) identifies everything that influences the floats:
///   SHA-256 over the weights, the tokenizer file and the model config. A compressed file
///   records it, and decompression refuses a predictor with a different fingerprint.
pub trait TokenPredictor {
    /// Number of entries of every distribution (the model's vocabulary, i.e. the rows of
    /// the output head, which can exceed the tokenizer's vocabulary).
    fn vocab_size(&self) -> usize;

    /// Most `next_log_probs` calls allowed between two `start` calls.
    fn max_context(&self) -> usize;

    /// SHA-256 identifying the weights, tokenizer and config (see the contract above).
    fn fingerprint(&self) -> [u8; 32];

    /// The tokenizer that goes with the model.
    fn tokenization(&self) -> &dyn Tokenization;

    /// Begin a new chunk: forget all context (clear the KV cache).
    fn start(&mut self) -> Result<()>;

    /// As [`start`](Self::start), but without the start-of-sequence tokens: the chunk's
    /// first token gets the uniform distribution. Rates use it for a sequence that writes its
    /// own start (a chat template with no BOS where the tokenizer adds one); the compressor
    /// never does.
    fn start_empty(&mut self) -> Result<()> {
        bail!("this predictor cannot start a sequence without its start-of-sequence state")
    }

    /// Distribution of the next token given the chunk so far, after appending `prev`
    /// (`None` only on the first call of a chunk).
    fn next_log_probs(&mut self, prev: Option<u32>) -> Result<Vec<f32>>;
}
