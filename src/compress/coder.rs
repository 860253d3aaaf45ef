//! The code stream: range coding of a segmented input with the predictor's distributions,
//! and its exact inverse.
//!
//! Stream grammar (`D` = the token distribution of the current step, see
//! [`super::symbols`]):
//! ```text
//! stream  := event* ESC End
//! event   := token                      coded with D, then the model advances by it
//!          | ESC Raw gamma(len) byte^len raw bytes; D stays the same
//!          | ESC Break                  ends the current text piece; D stays the same
//! ```
//! Both directions walk the stream through one [`Steps`] value, which owns the only calls to
//! the predictor: `start()` before the first token step and again after every `chunk_tokens`
//! token steps (each chunk starts from an empty context), `next_log_probs(prev)` once per
//! token step. Encoder and decoder therefore make the identical call sequence, which is what
//! makes their probabilities bit-identical.
//!
//! Chunk overhead: the first tokens of every chunk are predicted without the previous
//! chunk's context, and a chunk boundary may fall inside a piece (the tokenizer is not
//! affected, only the model's context).

use super::predictor::TokenPredictor;
use super::segment::Segment;
use super::symbols::{
    bit_model, byte_model, control_model, elias_gamma_bits, Control, TokenDist, ESCAPE_BITS,
};
use anyhow::{anyhow, bail, Context, Result};
use constriction::stream::queue::{DefaultRangeDecoder, DefaultRangeEncoder};
use constriction::stream::{Decode, Encode};
use indicatif::ProgressBar;
use serde::Serialize;
use thiserror::Error;

/// The payload does not decode consistently under the predictor: a symbol the stream cannot
/// hold, more tokens or bytes than the header promises, data after the end symbol. Either
/// the payload is damaged or the predictor's probabilities differ from the encoder's; the
/// caller, which knows whether the payload's hash matched, says which.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct Inconsistent(pub String);

/// What [`encode`] produced.
pub struct Encoded {
    pub words: Vec<u32>,
    pub stats: StreamStats,
    /// Ideal code length in bits of each segment, in order (a text piece's includes the
    /// break before it; a raw run's its escape and length).
    pub segment_bits: Vec<f64>,
}

/// Counts and ideal code lengths of one stream, the same whether measured while encoding or
/// decoding.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamStats {
    pub tokens: u64,
    /// Number of times the predictor was (re)started.
    pub chunks: u64,
    /// Text pieces (each decoded by the tokenizer on its own).
    pub pieces: u64,
    pub raw_runs: u64,
    pub raw_bytes: u64,
    /// Sum over the coded tokens of `-log2 p(token)` under the model's own probabilities.
    pub ideal_token_bits: f64,
    /// Ideal cost of everything else: escapes, control symbols, run lengths, raw bytes.
    pub ideal_side_bits: f64,
}

impl StreamStats {
    pub fn ideal_bits(&self) -> f64 {
        self.ideal_token_bits + self.ideal_side_bits
    }
}

/// The predictor walked one token step at a time, with chunk restarts.
struct Steps<'a> {
    pred: &'a mut dyn TokenPredictor,
    chunk_tokens: usize,
    vocab_size: usize,
    calls_in_chunk: usize,
    started: bool,
    prev: Option<u32>,
    dist: Option<TokenDist>,
}

impl<'a> Steps<'a> {
    fn new(pred: &'a mut dyn TokenPredictor, chunk_tokens: usize) -> Result<Self> {
        if chunk_tokens == 0 || chunk_tokens > pred.max_context() {
            bail!(
                "chunk length {chunk_tokens} is not between 1 and the model's context ({})",
                pred.max_context()
            );
        }
        let vocab_size = pred.vocab_size();
        if vocab_size < 2 {
            bail!("the model's vocabulary has {vocab_size} entries; at least 2 are needed");
        }
        Ok(Steps {
            pred,
            chunk_tokens,
            vocab_size,
            calls_in_chunk: 0,
            started: false,
            prev: None,
            dist: None,
        })
    }

    /// The distribution of the current token step.
    fn dist(&mut self, stats: &mut StreamStats) -> Result<&TokenDist> {
        if self.dist.is_none() {
            if !self.started || self.calls_in_chunk == self.chunk_tokens {
                self.pred
                    .start()
                    .context("the model failed to start a chunk")?;
                self.started = true;
                self.calls_in_chunk = 0;
                self.prev = None;
                stats.chunks += 1;
            }
            let lp = self
                .pred
                .next_log_probs(self.prev)
                .context("the model failed to predict the next token")?;
            self.calls_in_chunk += 1;
            self.dist = Some(TokenDist::new(lp, self.vocab_size)?);
        }
        self.dist
            .as_ref()
            .ok_or_else(|| anyhow!("internal error: no distribution"))
    }

    /// Move past `token`: the next step conditions on it.
    fn advance(&mut self, token: u32) {
        self.prev = Some(token);
        self.dist = None;
    }
}

/// Range-code `segments` of `input`; returns the payload words, the stream's statistics and
/// each segment's code length. `progress` counts tokens.
pub fn encode(
    pred: &mut dyn TokenPredictor,
    input: &[u8],
    segments: &[Segment],
    chunk_tokens: usize,
    progress: &ProgressBar,
) -> Result<Encoded> {
    let mut enc = Encoder {
        coder: DefaultRangeEncoder::new(),
        steps: Steps::new(pred, chunk_tokens)?,
        stats: StreamStats::default(),
    };
    let mut prev_was_text = false;
    let mut segment_bits = Vec::with_capacity(segments.len());
    for seg in segments {
        let before = enc.stats.ideal_bits();
        match seg {
            Segment::Text { tokens, .. } => {
                if prev_was_text {
                    enc.escape(Control::Break)?;
                }
                for &t in tokens {
                    enc.token(t)?;
                    progress.inc(1);
                }
                enc.stats.pieces += 1;
                prev_was_text = true;
            }
            Segment::Raw { bytes } => {
                enc.escape(Control::Raw)?;
                let run = &input[bytes.clone()];
                for bit in elias_gamma_bits(run.len() as u64) {
                    enc.side(usize::from(bit), &bit_model(), 1.0)?;
                }
                for &b in run {
                    enc.side(b as usize, &byte_model(), 8.0)?;
                }
                enc.stats.raw_runs += 1;
                enc.stats.raw_bytes += run.len() as u64;
                prev_was_text = false;
            }
        }
        segment_bits.push(enc.stats.ideal_bits() - before);
    }
    enc.escape(Control::End)?;
    let words = enc
        .coder
        .into_compressed()
        .map_err(|e| anyhow!("range coder failed to finish: {e:?}"))?;
    Ok(Encoded {
        words,
        stats: enc.stats,
        segment_bits,
    })
}

struct Encoder<'a> {
    coder: DefaultRangeEncoder,
    steps: Steps<'a>,
    stats: StreamStats,
}

impl Encoder<'_> {
    fn token(&mut self, t: u32) -> Result<()> {
        let dist = self.steps.dist(&mut self.stats)?;
        self.coder
            .encode_symbol(t as usize, &dist.model)
            .map_err(|e| anyhow!("cannot code token {t}: {e:?}"))?;
        self.stats.ideal_token_bits += dist.token_bits(t as usize);
        self.stats.tokens += 1;
        self.steps.advance(t);
        Ok(())
    }

    fn escape(&mut self, c: Control) -> Result<()> {
        let dist = self.steps.dist(&mut self.stats)?;
        self.coder
            .encode_symbol(dist.escape(), &dist.model)
            .map_err(|e| anyhow!("cannot code an escape: {e:?}"))?;
        self.stats.ideal_side_bits += ESCAPE_BITS as f64;
        self.side(c as usize, &control_model(), (Control::COUNT as f64).log2())
    }

    fn side(
        &mut self,
        symbol: usize,
        model: &super::symbols::SideModel,
        ideal_bits: f64,
    ) -> Result<()> {
        self.coder
            .encode_symbol(symbol, model)
            .map_err(|e| anyhow!("cannot code side symbol {symbol}: {e:?}"))?;
        self.stats.ideal_side_bits += ideal_bits;
        Ok(())
    }
}

/// What the decoder must find: the header's promises, checked as it goes.
pub struct Expect {
    pub original_len: u64,
    pub token_count: u64,
}

/// Decode a payload back into bytes. Any inconsistency (a symbol the stream cannot hold,
/// more tokens or bytes than the header promises, data after the end symbol) is an
/// [`Inconsistent`] error.
pub fn decode(
    pred: &mut dyn TokenPredictor,
    words: Vec<u32>,
    chunk_tokens: usize,
    expect: &Expect,
    progress: &ProgressBar,
) -> Result<(Vec<u8>, StreamStats)> {
    // The header's length is a promise, not a justification: reserve no more than the
    // payload could plausibly hold and let the output grow as bytes are actually decoded.
    let capacity = usize::try_from(expect.original_len)
        .unwrap_or(0)
        .min(words.len().saturating_mul(64).saturating_add(4096));
    let mut out: Vec<u8> = Vec::with_capacity(capacity);
    let mut dec = DefaultRangeDecoder::from_compressed(words)
        .map_err(|e| anyhow!("cannot read the payload: {e:?}"))?;
    let mut stats = StreamStats::default();
    let mut piece: Vec<u32> = Vec::new();
    let mut steps = Steps::new(pred, chunk_tokens)?;
    let vocab = steps.vocab_size;
    let corrupt = |what: String| anyhow::Error::new(Inconsistent(what));

    loop {
        let dist = steps.dist(&mut stats)?;
        let sym = dec
            .decode_symbol(&dist.model)
            .map_err(|e| corrupt(format!("invalid code word ({e:?})")))?;
        if sym < vocab {
            stats.ideal_token_bits += dist.token_bits(sym);
            stats.tokens += 1;
            if stats.tokens > expect.token_count {
                return Err(corrupt(format!(
                    "more tokens than the {} the header announces",
                    expect.token_count
                )));
            }
            piece.push(sym as u32);
            steps.advance(sym as u32);
            progress.inc(1);
            continue;
        }
        // An escape: the current piece (if any) is complete.
        // Accumulate in the encoder's order, so both directions report identical sums.
        stats.ideal_side_bits += ESCAPE_BITS as f64;
        stats.ideal_side_bits += (Control::COUNT as f64).log2();
        let c = dec
            .decode_symbol(control_model())
            .map_err(|e| corrupt(format!("invalid control symbol ({e:?})")))?;
        let control =
            Control::from_index(c).ok_or_else(|| corrupt(format!("control symbol {c}")))?;
        if !piece.is_empty() {
            let text = steps
                .pred
                .tokenization()
                .decode(&piece)
                .context("the tokenizer cannot decode a piece of the stream")?;
            if out.len() as u64 + text.len() as u64 > expect.original_len {
                return Err(corrupt(format!(
                    "more bytes than the {} the header announces",
                    expect.original_len
                )));
            }
            out.extend_from_slice(text.as_bytes());
            stats.pieces += 1;
            piece.clear();
        }
        match control {
            Control::Break => {}
            Control::End => break,
            Control::Raw => {
                let len = decode_gamma(&mut dec, &mut stats).map_err(corrupt)?;
                let room = expect.original_len - out.len() as u64;
                if len > room {
                    return Err(corrupt(format!(
                        "a raw run of {len} bytes where only {room} remain"
                    )));
                }
                for _ in 0..len {
                    let b = dec
                        .decode_symbol(byte_model())
                        .map_err(|e| corrupt(format!("invalid raw byte ({e:?})")))?;
                    out.push(b as u8);
                    stats.ideal_side_bits += 8.0;
                }
                stats.raw_runs += 1;
                stats.raw_bytes += len;
            }
        }
    }
    if out.len() as u64 != expect.original_len {
        return Err(corrupt(format!(
            "the stream ends after {} bytes, the header announces {}",
            out.len(),
            expect.original_len
        )));
    }
    if stats.tokens != expect.token_count {
        return Err(corrupt(format!(
            "the stream holds {} tokens, the header announces {}",
            stats.tokens, expect.token_count
        )));
    }
    if !dec.maybe_exhausted() {
        return Err(corrupt("data after the end of the stream".into()));
    }
    Ok((out, stats))
}

fn decode_gamma(dec: &mut DefaultRangeDecoder, stats: &mut StreamStats) -> Result<u64, String> {
    let mut bit = |stats: &mut StreamStats| -> Result<bool, String> {
        stats.ideal_side_bits += 1.0;
        dec.decode_symbol(bit_model())
            .map(|b| b == 1)
            .map_err(|e| format!("invalid length bit ({e:?})"))
    };
    let mut zeros = 0u32;
    while !bit(stats)? {
        zeros += 1;
        if zeros > 63 {
            return Err("a raw-run length longer than 64 bits".into());
        }
    }
    let mut n = 1u64;
    for _ in 0..zeros {
        n = (n << 1) | u64::from(bit(stats)?);
    }
    Ok(n)
}
