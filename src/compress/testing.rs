//! Stand-ins for a real language model, for tests and measurements of the coder itself:
//! [`ToyTokenizer`] (greedy longest match over ASCII characters and common English
//! fragments, with an unknown token for everything else, so it does *not* round-trip
//! non-ASCII text) and [`NgramPredictor`] (an adaptive interpolated bigram model whose counts
//! restart with each chunk). Neither is a language model of the paper; they make the coder's
//! overhead and round trip measurable without weights.

use super::predictor::{TokenPredictor, Tokenization};
use anyhow::{bail, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Fragments the toy tokenizer knows besides single characters.
const FRAGMENTS: &[&str] = &[
    " the", " and", " of", " to", " in", " a", " is", " that", " for", " with", " as", " was",
    " on", " he", " be", " it", " by", " at", " or", " from", " this", " which", " not", "th",
    "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "ed", "is", "it",
    "al", "ar", "st", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de", "hi",
    "ri", "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur",
    "ing", "ion", "tion", "ent", "ter", "the", "and", " s", " c", " w", " b", " p", " f", " m",
    " d", " t", " h", " o", " i", " e", ". ", ", ", "\n\n", "    ",
];

/// Token id of the unknown token; it decodes to U+FFFD, so text containing it never
/// round-trips.
pub const UNK: u32 = 0;
/// Token id of the end-of-sequence token; it decodes to nothing.
pub const EOS: u32 = 1;

/// Greedy longest-match tokenizer over printable ASCII, `\t\n\r` and [`FRAGMENTS`].
#[derive(Debug, Clone)]
pub struct ToyTokenizer {
    pieces: Vec<String>,
    ids: HashMap<String, u32>,
    longest: usize,
}

impl Default for ToyTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ToyTokenizer {
    pub fn new() -> Self {
        let mut pieces = vec!["\u{FFFD}".to_string(), String::new()];
        pieces.extend(['\t', '\n', '\r'].iter().map(|c| c.to_string()));
        pieces.extend((0x20u8..=0x7e).map(|b| (b as char).to_string()));
        for f in FRAGMENTS {
            if !pieces.iter().any(|p| p == f) {
                pieces.push(f.to_string());
            }
        }
        let ids = pieces
            .iter()
            .enumerate()
            .skip(2)
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        let longest = pieces.iter().map(|p| p.len()).max().unwrap_or(1);
        ToyTokenizer {
            pieces,
            ids,
            longest,
        }
    }

    /// Number of ids the tokenizer uses (a predictor's vocabulary may be larger).
    pub fn vocab_len(&self) -> usize {
        self.pieces.len()
    }
}

impl Tokenization for ToyTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 2);
        let mut rest = text;
        while !rest.is_empty() {
            let mut found = None;
            for len in (1..=self.longest.min(rest.len())).rev() {
                if !rest.is_char_boundary(len) {
                    continue;
                }
                if let Some(&id) = self.ids.get(&rest[..len]) {
                    found = Some((id, len));
                    break;
                }
            }
            let (id, len) = found.unwrap_or_else(|| {
                let c = rest.chars().next().map_or(1, char::len_utf8);
                (UNK, c)
            });
            out.push(id);
            rest = &rest[len..];
        }
        Ok(out)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut s = String::new();
        for &id in ids {
            match self.pieces.get(id as usize) {
                Some(p) => s.push_str(p),
                None => bail!("token id {id} is outside the toy vocabulary"),
            }
        }
        Ok(s)
    }

    fn eos_id(&self) -> Option<u32> {
        Some(EOS)
    }
}

/// Adaptive bigram predictor: `p(t | prev) = (c(prev, t) + K * u(t)) / (c(prev) + K)` with
/// `u(t) = (c(t) + A * b(t)) / (N + A)`, counts taken over the chunk so far, and a fixed
/// base `b` that gives the ids beyond the tokenizer's vocabulary a thousandth of the weight
/// of real ones (a real model also spends a little mass on tokens that never occur).
/// Its outputs are a deterministic function of the calls since [`TokenPredictor::start`].
#[derive(Debug, Clone)]
pub struct NgramPredictor<T: Tokenization = ToyTokenizer> {
    tok: T,
    tokenizer_id: [u8; 32],
    vocab_size: usize,
    max_context: usize,
    base: Vec<f64>,
    ln_base: Vec<f64>,
    seen: Vec<u32>,
    unigram: Vec<u32>,
    bigram: HashMap<u32, HashMap<u32, u32>>,
    total: u32,
    last: Option<u32>,
    calls: Option<usize>,
}

const K: f64 = 2.0;
const A: f64 = 8.0;

impl NgramPredictor {
    /// A predictor over `vocab_size` ids (at least the toy tokenizer's) that allows
    /// `max_context` calls per chunk, with the [`ToyTokenizer`].
    pub fn new(vocab_size: usize, max_context: usize) -> Result<Self> {
        let tok = ToyTokenizer::new();
        let mut h = Sha256::new();
        for p in &tok.pieces {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        let id = h.finalize().into();
        let used = tok.vocab_len();
        NgramPredictor::with_tokenizer(tok, id, used, vocab_size, max_context)
    }
}

impl<T: Tokenization> NgramPredictor<T> {
    /// The same predictor with any tokenizer: `tokenizer_id` identifies it in the
    /// fingerprint (e.g. SHA-256 of its `tokenizer.json`), and ids from `used_vocab` up to
    /// `vocab_size` get the small weight of padding rows.
    pub fn with_tokenizer(
        tok: T,
        tokenizer_id: [u8; 32],
        used_vocab: usize,
        vocab_size: usize,
        max_context: usize,
    ) -> Result<Self> {
        if vocab_size < used_vocab || vocab_size < 2 {
            bail!("vocab_size {vocab_size} is smaller than the tokenizer's {used_vocab} (or 2)");
        }
        if max_context == 0 {
            bail!("max_context must be at least 1");
        }
        let mut base: Vec<f64> = (0..vocab_size)
            .map(|t| {
                if t < used_vocab {
                    1.0 + ((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61) as f64
                } else {
                    1e-3
                }
            })
            .collect();
        let sum: f64 = base.iter().sum();
        base.iter_mut().for_each(|b| *b /= sum);
        let ln_base = base.iter().map(|&b| (A * b).ln()).collect();
        Ok(NgramPredictor {
            tok,
            tokenizer_id,
            vocab_size,
            max_context,
            base,
            ln_base,
            seen: Vec::new(),
            unigram: vec![0; vocab_size],
            bigram: HashMap::new(),
            total: 0,
            last: None,
            calls: None,
        })
    }
}

impl<T: Tokenization> TokenPredictor for NgramPredictor<T> {
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"elastica ngram mock v1");
        h.update((self.vocab_size as u64).to_le_bytes());
        h.update((self.max_context as u64).to_le_bytes());
        h.update(self.tokenizer_id);
        h.finalize().into()
    }

    fn tokenization(&self) -> &dyn Tokenization {
        &self.tok
    }

    fn start(&mut self) -> Result<()> {
        self.unigram.iter_mut().for_each(|c| *c = 0);
        self.bigram.clear();
        self.seen.clear();
        self.total = 0;
        self.last = None;
        self.calls = Some(0);
        Ok(())
    }

    /// Its start state holds no token, so an empty start is the same.
    fn start_empty(&mut self) -> Result<()> {
        self.start()
    }

    fn next_log_probs(&mut self, prev: Option<u32>) -> Result<Vec<f32>> {
        let Some(calls) = self.calls else {
            bail!("next_log_probs called before start");
        };
        match (calls, prev) {
            (0, Some(_)) => bail!("the first call of a chunk must pass prev = None"),
            (c, None) if c > 0 => bail!("prev = None is only allowed on the first call of a chunk"),
            _ => {}
        }
        if calls >= self.max_context {
            bail!(
                "more than max_context = {} calls in one chunk",
                self.max_context
            );
        }
        self.calls = Some(calls + 1);
        if let Some(t) = prev {
            if t as usize >= self.vocab_size {
                bail!("token {t} is outside the vocabulary of {}", self.vocab_size);
            }
            if self.unigram[t as usize] == 0 {
                self.seen.push(t);
            }
            self.unigram[t as usize] += 1;
            self.total += 1;
            if let Some(l) = self.last {
                *self.bigram.entry(l).or_default().entry(t).or_insert(0) += 1;
            }
            self.last = Some(t);
        }
        // Unseen tokens share the closed form ln(A b(t)) - ln(N + A) + ln(K / denom): only
        // an addition each. Seen tokens (few) are computed in full.
        let n = self.total as f64;
        let row = self.last.and_then(|l| self.bigram.get(&l));
        let (denom, backoff) = match row {
            Some(row) => {
                let d = row.values().sum::<u32>() as f64 + K;
                (d, K / d)
            }
            None => (1.0, 1.0),
        };
        let shift = backoff.ln() - (n + A).ln();
        let mut out: Vec<f32> = self.ln_base.iter().map(|&lb| (lb + shift) as f32).collect();
        for &t in &self.seen {
            let uni = (self.unigram[t as usize] as f64 + A * self.base[t as usize]) / (n + A);
            let pair = row
                .and_then(|r| r.get(&t))
                .map_or(0.0, |&c| c as f64 / denom);
            out[t as usize] = (uni * backoff + pair).ln() as f32;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_tokenizer_round_trips_ascii_and_not_other_text() {
        let t = ToyTokenizer::new();
        let s = "the cat\tsat on the mat.\n\n  ing";
        let ids = t.encode(s).unwrap();
        assert!(ids.len() < s.len());
        assert_eq!(t.decode(&ids).unwrap(), s);
        let ids = t.encode("café").unwrap();
        assert_eq!(ids.last(), Some(&UNK));
        assert_ne!(t.decode(&ids).unwrap(), "café");
    }

    #[test]
    fn ngram_outputs_are_normalised_deterministic_and_adaptive() {
        let mut a = NgramPredictor::new(1000, 64).unwrap();
        let mut b = a.clone();
        a.start().unwrap();
        b.start().unwrap();
        let seq = [None, Some(40), Some(41), Some(40), Some(41), Some(40)];
        let mut last = Vec::new();
        for &p in &seq {
            let x = a.next_log_probs(p).unwrap();
            let y = b.next_log_probs(p).unwrap();
            assert_eq!(x, y);
            let total: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
            assert!((total - 1.0).abs() < 1e-4, "{total}");
            last = x;
        }
        // After "40 41 40 41 40" the bigram makes 41 the most likely next token.
        let best = (0..last.len())
            .max_by(|&i, &j| last[i].total_cmp(&last[j]))
            .unwrap();
        assert_eq!(best, 41);
    }

    #[test]
    fn ngram_enforces_the_call_contract() {
        let mut a = NgramPredictor::new(200, 2).unwrap();
        assert!(a.next_log_probs(None).is_err());
        a.start().unwrap();
        assert!(a.next_log_probs(Some(3)).is_err());
        a.next_log_probs(None).unwrap();
        assert!(a.next_log_probs(None).is_err());
        a.next_log_probs(Some(3)).unwrap();
        assert!(a.next_log_probs(Some(3)).is_err(), "max_context exceeded");
    }
}
