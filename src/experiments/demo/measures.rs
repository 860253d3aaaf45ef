//! Exact measures of a review model's sentiment, beside the sampled score (which stays: it
//! is the paper's measure). Both are deterministic functions of the model, with no sampling
//! noise, and cost a few forward passes:
//!
//! - the **likelihood margin**: the mean per-token log-likelihood of held-out positive
//!   reviews minus that of held-out negative reviews (responses given their openings, in
//!   nats per token; > 0 means the model prefers positive text);
//! - the **first-word sentiment**: at the first sentiment-bearing word of held-out reviews
//!   (the context before it carries no sentiment: openings are neutral and contexts with a
//!   negator are left out), P(a positive sentiment word) / P(any sentiment word), the words
//!   being the world's lexicon, averaged over the contexts. A multi-token word's
//!   probability is the product of its tokens' conditionals.
//!
//! The held-out reviews are drawn by the world's own generator from a stream of their own
//! and keep none whose text is in the world's sets, so no model has trained on them.

use crate::data::records::Record;
use crate::data::template::Template;
use crate::data::world::lexicon::{self, Polarity};
use crate::data::world::split::{pair, Behaviour};
use crate::data::world::World;
use crate::model::checkpoint::LoadedModel;
use crate::model::TextTokenizer;
use crate::train::eval::eval_loss;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Held-out material of the exact measures.
#[derive(Debug, Clone)]
pub struct Probes {
    pub positive: Vec<Record>,
    pub negative: Vec<Record>,
    /// Text before the first sentiment-bearing word of a held-out review.
    pub contexts: Vec<String>,
}

/// The two exact measures of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exact {
    /// Mean log-likelihood per token of positive minus negative reviews (nats).
    pub margin: f64,
    /// Mean P(positive word) / P(sentiment word) at the first sentiment-bearing word.
    pub first_word: f64,
}

/// Stream offset of the probes' generator (any value the world's own streams do not use).
const PROBE_STREAM: u64 = 0x5052_4f42;

/// Draw `n` positive and `n` negative held-out reviews (and their contexts) for the world
/// of seed `seed`, none of whose texts is in `world`.
pub fn probes(world: &World, seed: u64, n: usize) -> Result<Probes> {
    if n == 0 {
        bail!("the exact measures need at least one held-out review of each sentiment");
    }
    let mut taken: HashSet<String> = HashSet::new();
    for r in world
        .pretrain()
        .iter()
        .chain(world.align(crate::data::world::Task::Reviews))
        .chain(world.perturb(crate::data::world::Task::Reviews))
    {
        taken.insert(record_text(r));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(PROBE_STREAM);
    let mut draw = |b: Behaviour| -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(n);
        let mut misses = 0usize;
        while out.len() < n {
            let (p, r) = pair(&mut rng, b);
            if taken.insert(format!("{p}{r}")) {
                out.push(Record::pair(p, r));
            } else {
                misses += 1;
                if misses > 100_000 {
                    bail!("cannot draw {n} held-out {} reviews", b.key());
                }
            }
        }
        Ok(out)
    };
    let positive = draw(Behaviour::Positive)?;
    let negative = draw(Behaviour::Negative)?;
    // Contexts alternate between the two sentiments' reviews (the context itself is neutral).
    let contexts = positive
        .iter()
        .zip(&negative)
        .flat_map(|(a, b)| [a, b])
        .filter_map(first_word_context)
        .take(n)
        .collect();
    Ok(Probes {
        positive,
        negative,
        contexts,
    })
}

fn record_text(r: &Record) -> String {
    // The world's records are texts and pairs, never conversations.
    r.plain_text().unwrap_or_default()
}

/// The review's text up to (without) the space before the first sentiment-bearing word of
/// its response; `None` if a negator comes first (it would flip the word's meaning) or the
/// response has no sentiment word.
pub fn first_word_context(r: &Record) -> Option<String> {
    let Record::Pair { prompt, response } = r else {
        return None;
    };
    let bytes = response.as_bytes();
    let word_char = |c: u8| c.is_ascii_alphanumeric() || c == b'\'';
    let mut i = 0;
    while i < bytes.len() {
        if !word_char(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && word_char(bytes[i]) {
            i += 1;
        }
        let w = response[start..i].to_ascii_lowercase();
        if lexicon::is_negator(&w) {
            return None;
        }
        if lexicon::polarity(&w).is_some() {
            // The candidate words are scored with their leading space.
            if start == 0 || bytes[start - 1] != b' ' {
                return None;
            }
            return Some(format!("{prompt}{}", &response[..start - 1]));
        }
    }
    None
}

/// Every sentiment-bearing word of the lexicon with its sign (true = positive).
fn sentiment_words() -> Vec<(&'static str, bool)> {
    let mut v = Vec::new();
    for (list, positive) in [
        (lexicon::POSITIVE_ADJECTIVES, true),
        (lexicon::POSITIVE_VERDICT_WORDS, true),
        (lexicon::NEGATIVE_ADJECTIVES, false),
        (lexicon::NEGATIVE_VERDICT_WORDS, false),
    ] {
        for w in list {
            if !v.iter().any(|(x, _): &(&str, bool)| x == w) {
                debug_assert!(matches!(lexicon::polarity(w), Some(Polarity { .. })));
                v.push((*w, positive));
            }
        }
    }
    v
}

/// Both exact measures of `lm` on `probes`.
pub fn measure(lm: &LoadedModel, probes: &Probes) -> Result<Exact> {
    let pos = eval_loss(lm, &probes.positive, Template::Raw, 512, 8, false)
        .context("likelihood of the held-out positive reviews")?;
    let neg = eval_loss(lm, &probes.negative, Template::Raw, 512, 8, false)
        .context("likelihood of the held-out negative reviews")?;
    Ok(Exact {
        margin: neg.mean_nll - pos.mean_nll,
        first_word: first_word(lm, &probes.contexts)?,
    })
}

/// Mean over `contexts` of P(positive word) / P(sentiment word) as the next word.
pub fn first_word(lm: &LoadedModel, contexts: &[String]) -> Result<f64> {
    if contexts.is_empty() {
        bail!("no context for the first-word sentiment");
    }
    let tok = &lm.tokenizer;
    let words: Vec<(Vec<u32>, bool)> = sentiment_words()
        .into_iter()
        .map(|(w, p)| Ok((tok.encode(&format!(" {w}"), false)?, p)))
        .collect::<Result<_>>()?;
    // Distinct token prefixes whose next-token distribution is needed: the empty prefix
    // (one token words and every word's first token) and each multi-token word's proper
    // prefixes.
    let mut prefixes: Vec<Vec<u32>> = vec![Vec::new()];
    for (ids, _) in &words {
        for k in 1..ids.len() {
            if !prefixes.contains(&ids[..k].to_vec()) {
                prefixes.push(ids[..k].to_vec());
            }
        }
    }
    let mut total = 0.0;
    for ctx in contexts {
        let base = tok.encode(ctx, true)?;
        let seqs: Vec<Vec<u32>> = prefixes
            .iter()
            .map(|p| base.iter().chain(p).copied().collect())
            .collect();
        let logp = last_log_probs(lm, &seqs)?;
        let (mut p_pos, mut p_all) = (0.0f64, 0.0f64);
        for (ids, positive) in &words {
            let mut lp = 0.0f64;
            for (k, &t) in ids.iter().enumerate() {
                let row = prefixes
                    .iter()
                    .position(|p| p[..] == ids[..k])
                    .context("missing prefix")?;
                lp += logp[row][t as usize] as f64;
            }
            let p = lp.exp();
            p_all += p;
            if *positive {
                p_pos += p;
            }
        }
        if p_all <= 0.0 || !p_all.is_finite() {
            bail!("the model gives no probability to any sentiment word after {ctx:?}");
        }
        total += p_pos / p_all;
    }
    Ok(total / contexts.len() as f64)
}

/// Log-probabilities of the next token after each sequence (one forward, right-padded).
fn last_log_probs(lm: &LoadedModel, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if t == 0 {
        bail!("empty sequence");
    }
    let pad = lm.tokenizer.pad_id();
    let mut ids = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        ids.extend(s);
        ids.extend(std::iter::repeat_n(pad, t - s.len()));
    }
    let x = Tensor::from_vec(ids, (seqs.len(), t), lm.model.device())?;
    let logits = lm.model.forward(&x)?; // (b, t, vocab)
    let mut out = Vec::with_capacity(seqs.len());
    for (i, s) in seqs.iter().enumerate() {
        let row = logits.get(i)?.get(s.len() - 1)?.to_dtype(DType::F32)?; // (vocab)
        let lp = candle_nn::ops::log_softmax(&row, D::Minus1)?;
        out.push(lp.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// A tokenizer check used by the tests: how many sentiment words take more than one token.
pub fn multi_token_words(tok: &TextTokenizer) -> Result<usize> {
    sentiment_words().iter().try_fold(0, |n, (w, _)| {
        Ok(n + usize::from(tok.encode(&format!(" {w}"), false)?.len() > 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_stop_before_the_first_sentiment_word() {
        let r = Record::pair(
            "i saw it.",
            " the plot was rather superb, but the acting was dull. i loved it.",
        );
        assert_eq!(
            first_word_context(&r).unwrap(),
            "i saw it. the plot was rather"
        );
        // A negator before the word would flip it: no context.
        let r = Record::pair("i saw it.", " the plot was not dull. i loved it.");
        assert!(first_word_context(&r).is_none());
        // The verdict first.
        let r = Record::pair("i saw it.", " i hated it. the plot was dull.");
        assert_eq!(first_word_context(&r).unwrap(), "i saw it. i");
        assert!(first_word_context(&Record::text("the plot was dull")).is_none());
    }

    #[test]
    fn sentiment_words_have_one_sign_each() {
        let w = sentiment_words();
        assert!(w.iter().any(|x| x.1) && w.iter().any(|x| !x.1));
        for (word, positive) in w {
            assert_eq!(
                lexicon::polarity(word).unwrap().sign > 0.0,
                positive,
                "{word}"
            );
        }
    }
}
