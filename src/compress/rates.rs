//! Compression rates of data sets under a model (PAPER.md §2): how many bits the model needs
//! per token and per byte of a data set's held-out records, and the normalised rate.
//!
//! A record's code length is the exact sum of `-log2 p` over its *scored* tokens, the same
//! tokens the training loss counts (a response and its EOS, not the prompt; every token of a
//! plain text). So `nats_per_token` of a data set is the mean NLL that `eval-loss` reports for
//! it, and `bits_per_token = nats_per_token / ln 2`. The arithmetic coder realises these
//! lengths to within its measured overhead (see [`super::codec::CompressReport::overhead`]).
//!
//! **Normalised rate.** The paper normalises a data set's rate by subtracting `log M`, the
//! log of the number of leaves of its token tree pruned at depth `d` (the cost of a uniform
//! code over those leaves). An autoregressive model codes one token at a time, so `d = 1`
//! and the leaves are the `M = V` entries of the vocabulary:
//! `normalised = bits_per_token - log2 V`. It is 0 for a model that knows nothing (the
//! uniform code) and negative by the bits per token the model saves; its changes between
//! checkpoints equal the changes of `bits_per_token`, which is what the elasticity theorem is
//! about.
//!
//! **Template.** A data set is tokenized under a template exactly as training and `eval-loss`
//! tokenize it ([`ScoredSequence::templated`]): `rates --template` takes the same values and
//! the same default (by schema), so conversations are coded too.
//!
//! Scoring goes through the same [`TokenPredictor`] calls as the coder. A sequence longer than
//! the model's context is scored in chunks that each restart from an empty context, exactly
//! as the compressor codes it.

use super::model_predictor::special_prefix;
use super::predictor::{TokenPredictor, Tokenization};
use super::symbols::ideal_bits;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::template::common_prefix;
use crate::model::TextTokenizer;
use crate::train::batch::{tokenize, Example, IGNORE};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

/// One record as the model sees it: the token ids after the start-of-sequence state that
/// [`TokenPredictor::start`] sets up (no BOS), which of them count, and how many bytes of
/// text the counted tokens stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSequence {
    pub ids: Vec<u32>,
    pub scored: Vec<bool>,
    pub bytes: u64,
    /// The ids write their own start (a chat template that renders no BOS where the tokenizer
    /// adds one): scored from an empty context ([`TokenPredictor::start_empty`]) rather than
    /// after the start-of-sequence state, as training sees them.
    pub from_empty: bool,
}

impl ScoredSequence {
    /// `context` tokens (not counted) followed by `targets` (counted), which stand for
    /// `target_bytes` bytes.
    pub fn new(context: &[u32], targets: &[u32], target_bytes: u64) -> Self {
        let mut ids = context.to_vec();
        ids.extend_from_slice(targets);
        let mut scored = vec![false; context.len()];
        scored.resize(ids.len(), true);
        ScoredSequence {
            ids,
            scored,
            bytes: target_bytes,
            from_empty: false,
        }
    }

    /// `records` as training tokenizes them under `template` (`train::batch::tokenize`, not
    /// cut): the tokens the loss counts are scored, standing for the bytes `eval-loss` counts.
    /// The tokenizer's start-of-sequence tokens, which the scorer's start supplies, come off
    /// the front; a sequence that does not begin with them starts from an empty context, and
    /// its first token, which training never predicts, is not scored.
    pub fn templated(
        records: &[Record],
        template: Template,
        tok: &TextTokenizer,
    ) -> Result<Vec<Self>> {
        let prefix = special_prefix(tok)?;
        let (examples, _) = tokenize(records, tok, template, usize::MAX)?;
        Ok(examples
            .into_iter()
            .map(|e| Self::after_start(e, &prefix))
            .collect())
    }

    fn after_start(e: Example, prefix: &[u32]) -> Self {
        let mut scored: Vec<bool> = e.labels.iter().map(|&l| l != IGNORE).collect();
        let mut ids = e.ids;
        let from_empty = !ids.starts_with(prefix);
        if !from_empty {
            ids.drain(..prefix.len());
            scored.drain(..prefix.len());
        }
        // Training never predicts a sequence's first token: with no start state before it,
        // it is context only.
        if from_empty || prefix.is_empty() {
            if let Some(first) = scored.first_mut() {
                *first = false;
            }
        }
        ScoredSequence {
            ids,
            scored,
            bytes: e.scored_bytes as u64,
            from_empty,
        }
    }

    /// How many leading tokens a code length reads: up to the last scored one (tokens after
    /// it would only be context nobody reads). An error when ids and flags differ in number.
    pub fn scored_end(&self) -> Result<usize> {
        if self.ids.len() != self.scored.len() {
            bail!(
                "a scored sequence has {} ids but {} score flags",
                self.ids.len(),
                self.scored.len()
            );
        }
        Ok(self.scored.iter().rposition(|&s| s).map_or(0, |i| i + 1))
    }

    /// The `raw` template through any [`Tokenization`] (one that is not a model's own
    /// tokenizer, which [`Self::templated`] reads): a pair is `prompt` then `response`
    /// verbatim, tokenized once as training tokenizes it (`Template::encode_pair`), with the
    /// tokens after those it shares with the prompt's own tokenization and an EOS scored; a
    /// text is scored entirely, then EOS. Bytes are those of the response (or the text); EOS
    /// stands for none.
    pub fn raw(record: &Record, tok: &dyn Tokenization) -> Result<Self> {
        let eos: Vec<u32> = tok.eos_id().into_iter().collect();
        let (mut ids, start, target) = match record {
            Record::Pair { prompt, response } => {
                let ids = tok.encode(&format!("{prompt}{response}"))?;
                let start = common_prefix(&tok.encode(prompt)?, &ids);
                (ids, start, response)
            }
            Record::Text { text } => (tok.encode(text)?, 0, text),
            Record::Chat { .. } => bail!(
                "a conversation record has no raw text: compression rates read \
                 {{\"prompt\", \"response\"}} or {{\"text\"}} records"
            ),
        };
        let mut targets = ids.split_off(start);
        // As training: a text that already ends with the EOS text gets no second EOS.
        if !tok.ends_with_eos(target) {
            targets.extend_from_slice(&eos);
        }
        Ok(ScoredSequence::new(&ids, &targets, target.len() as u64))
    }

    pub fn scored_tokens(&self) -> u64 {
        self.scored.iter().filter(|&&s| s).count() as u64
    }
}

/// A data set's records as `rates` scores them under `template`: through the model's own
/// tokenizer where `tok` is one ([`ScoredSequence::templated`]), else the raw template only.
pub fn scored_sequences(
    records: &[Record],
    template: Template,
    tok: &dyn Tokenization,
) -> Result<Vec<ScoredSequence>> {
    match tok.text_tokenizer() {
        Some(t) => ScoredSequence::templated(records, template, t),
        None if template == Template::Raw => records
            .iter()
            .enumerate()
            .map(|(i, r)| ScoredSequence::raw(r, tok).with_context(|| format!("record {}", i + 1)))
            .collect(),
        None => bail!(
            "the {} template needs the model's own tokenizer, and this scorer has none; use \
             --template raw",
            template.name()
        ),
    }
}

/// Exact code length of one record.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecordCode {
    pub bits: f64,
    pub tokens: u64,
    pub bytes: u64,
}

/// Code length of the scored tokens of `seq`.
pub fn code_length(pred: &mut dyn TokenPredictor, seq: &ScoredSequence) -> Result<RecordCode> {
    let end = seq.scored_end()?;
    let vocab = pred.vocab_size();
    let max_context = pred.max_context();
    if max_context == 0 {
        bail!("the model's context is 0 tokens");
    }
    let mut bits = 0.0;
    let mut calls = max_context; // forces a start on the first token
    let mut prev = None;
    for (&id, &scored) in seq.ids[..end].iter().zip(&seq.scored[..end]) {
        if id as usize >= vocab {
            bail!("token id {id} is outside the model's vocabulary of {vocab}");
        }
        if calls == max_context {
            if seq.from_empty {
                pred.start_empty()
            } else {
                pred.start()
            }
            .context("the model failed to start a sequence")?;
            calls = 0;
            prev = None;
        }
        let lp = pred
            .next_log_probs(prev)
            .context("the model failed to predict the next token")?;
        calls += 1;
        if lp.len() != vocab {
            bail!(
                "the model returned {} log-probabilities, its vocab_size is {vocab}",
                lp.len()
            );
        }
        if scored {
            bits += ideal_bits(&lp, id as usize)?;
        }
        prev = Some(id);
    }
    Ok(RecordCode {
        bits,
        tokens: seq.scored_tokens(),
        bytes: seq.bytes,
    })
}

/// A data set's compression rate under one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    pub records: u64,
    pub tokens: u64,
    pub bytes: u64,
    /// Total exact code length of the scored tokens.
    pub bits: f64,
    pub vocab_size: u64,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
    /// Mean NLL per scored token in nats: the `eval-loss` figure.
    pub nats_per_token: f64,
    /// `bits_per_token - log2(vocab_size)` (see the module doc).
    pub normalized: f64,
}

impl Rate {
    /// Pool records: totals of bits over totals of tokens and bytes (a token-weighted
    /// mean, as the loss is).
    pub fn from_codes(codes: &[RecordCode], vocab_size: usize) -> Result<Rate> {
        let tokens: u64 = codes.iter().map(|c| c.tokens).sum();
        let bytes: u64 = codes.iter().map(|c| c.bytes).sum();
        let bits: f64 = codes.iter().map(|c| c.bits).sum();
        Self::from_totals(codes.len() as u64, tokens, bytes, bits, vocab_size)
    }

    /// A rate from pooled totals: `bits` is the summed code length of `tokens` scored tokens
    /// standing for `bytes` bytes of `records` records.
    pub fn from_totals(
        records: u64,
        tokens: u64,
        bytes: u64,
        bits: f64,
        vocab_size: usize,
    ) -> Result<Rate> {
        if tokens == 0 {
            bail!("no scored tokens: a rate needs at least one record with a response or text");
        }
        let bits_per_token = bits / tokens as f64;
        Ok(Rate {
            records,
            tokens,
            bytes,
            bits,
            vocab_size: vocab_size as u64,
            bits_per_token,
            bits_per_byte: if bytes == 0 {
                f64::NAN
            } else {
                bits / bytes as f64
            },
            nats_per_token: bits_per_token * std::f64::consts::LN_2,
            normalized: bits_per_token - (vocab_size as f64).log2(),
        })
    }
}

/// What `rates` scores records with: the coder's predictor ([`Coder`]), or a model on a
/// compute backend (`super::rates_backend`).
pub trait RecordScorer {
    fn tokenization(&self) -> &dyn Tokenization;
    fn vocab_size(&self) -> usize;
    /// The exact code length of `seq`'s scored tokens (see [`code_length`]).
    fn code_length(&mut self, seq: &ScoredSequence) -> Result<RecordCode>;
}

/// The compressor's [`TokenPredictor`] as a [`RecordScorer`]: rates bit-identical to what
/// `compress` codes.
pub struct Coder(pub Box<dyn TokenPredictor>);

impl RecordScorer for Coder {
    fn tokenization(&self) -> &dyn Tokenization {
        self.0.tokenization()
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn code_length(&mut self, seq: &ScoredSequence) -> Result<RecordCode> {
        code_length(self.0.as_mut(), seq)
    }
}

/// Code lengths of every sequence by `scorer`, in order; `progress` counts records.
pub fn code_lengths(
    scorer: &mut dyn RecordScorer,
    seqs: &[ScoredSequence],
    progress: &ProgressBar,
) -> Result<Vec<RecordCode>> {
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let c = scorer
                .code_length(s)
                .with_context(|| format!("record {}", i + 1))?;
            progress.inc(1);
            Ok(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testing::{NgramPredictor, EOS};

    #[test]
    fn a_code_length_reads_up_to_the_last_scored_token_and_refuses_unmatched_flags() {
        let seq = ScoredSequence {
            ids: vec![5, 6, 7, 8],
            scored: vec![false, true, false, false],
            bytes: 1,
            from_empty: false,
        };
        assert_eq!(seq.scored_end().unwrap(), 2);
        assert_eq!(
            ScoredSequence::new(&[1, 2], &[], 0).scored_end().unwrap(),
            0
        );
        let bad = ScoredSequence {
            scored: vec![true],
            ..seq
        };
        let e = bad.scored_end().unwrap_err().to_string();
        assert!(e.contains("4 ids but 1 score flags"), "{e}");
        let mut pred = NgramPredictor::new(300, 8).unwrap();
        let e = code_length(&mut pred, &bad).unwrap_err().to_string();
        assert!(e.contains("4 ids but 1 score flags"), "{e}");
    }

    /// Reference: score by hand through the predictor, without chunking logic.
    fn direct_bits(pred: &mut NgramPredictor, ids: &[u32], from: usize) -> f64 {
        pred.start().unwrap();
        let mut prev = None;
        let mut bits = 0.0;
        for (j, &t) in ids.iter().enumerate() {
            let lp = pred.next_log_probs(prev).unwrap();
            if j >= from {
                let z: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
                bits += -((lp[t as usize] as f64).exp() / z).log2();
            }
            prev = Some(t);
        }
        bits
    }

    #[test]
    fn code_length_counts_only_scored_tokens_and_matches_the_definition() {
        let mut pred = NgramPredictor::new(500, 1000).unwrap();
        let rec = Record::pair("the cat sat", " on the mat");
        let seq = ScoredSequence::raw(&rec, pred.tokenization()).unwrap();
        assert_eq!(seq.ids.last(), Some(&EOS));
        assert_eq!(seq.bytes, " on the mat".len() as u64);
        let context = seq.scored.iter().filter(|&&s| !s).count();
        assert!(context > 0);
        let code = code_length(&mut pred, &seq).unwrap();
        let want = direct_bits(&mut pred, &seq.ids, context);
        assert!(
            (code.bits - want).abs() < 1e-6 * want,
            "{} vs {want}",
            code.bits
        );
        assert_eq!(code.tokens, (seq.ids.len() - context) as u64);
    }

    #[test]
    fn rates_pool_by_tokens_and_normalise_by_the_vocabulary() {
        let pred = NgramPredictor::new(512, 1000).unwrap();
        let recs = [
            Record::text("the end of the world"),
            Record::pair("q", "an answer"),
        ];
        let seqs: Vec<_> = recs
            .iter()
            .map(|r| ScoredSequence::raw(r, pred.tokenization()).unwrap())
            .collect();
        let mut coder = Coder(Box::new(pred));
        let codes = code_lengths(&mut coder, &seqs, &ProgressBar::hidden()).unwrap();
        let r = Rate::from_codes(&codes, 512).unwrap();
        let bits = codes[0].bits + codes[1].bits;
        let tokens = codes[0].tokens + codes[1].tokens;
        assert!((r.bits_per_token - bits / tokens as f64).abs() < 1e-12);
        assert!((r.bits_per_byte - bits / 29.0).abs() < 1e-12);
        assert!((r.normalized - (r.bits_per_token - 9.0)).abs() < 1e-12);
        assert!((r.nats_per_token / std::f64::consts::LN_2 - r.bits_per_token).abs() < 1e-12);
        assert!(Rate::from_codes(&[], 512).is_err());
    }

    #[test]
    fn long_sequences_restart_the_model_every_max_context_tokens() {
        let mut small = NgramPredictor::new(300, 4).unwrap();
        let ids: Vec<u32> = (0..10).map(|i| 40 + (i % 3)).collect();
        let seq = ScoredSequence::new(&[], &ids, 10);
        let chunked = code_length(&mut small, &seq).unwrap().bits;
        let mut big = NgramPredictor::new(300, 4).unwrap();
        let want: f64 = [&ids[0..4], &ids[4..8], &ids[8..10]]
            .iter()
            .map(|c| direct_bits(&mut big, c, 0))
            .sum();
        assert!((chunked - want).abs() < 1e-9 * want);
    }
}
