//! Evaluating one model on the evaluation prompts: sample a response to each prompt, score
//! the responses, and (given the base model) measure KL(model || base) on them, in total and
//! by response position. Shared by every experiment cell that judges a model's behaviour.
//! The model and its references are [`Evaluated`]: a cell's run on the cell's backend (its
//! device and dtype); the scorer always reads the responses' text on the CPU.
//!
//! Beside the score, the same pass gives: the samples' coherence (mean NLL of the response
//! tokens under the base model: do the samples still read as language?), KL to the aligned
//! model by position when one is given (how much of a perturbation acts on the first
//! tokens), and the refusal rate by a versioned keyword list when asked (for safety scorers,
//! whose scores alone do not say whether a model refuses or answers harmlessly).

use super::evaluated::Evaluated;
use super::kl::{by_position, pooled_mean, sequence_kl, Continuation, PositionKl, SequenceKl};
use crate::data::prompts::Prompt;
use crate::data::records::Message;
use crate::data::template::Template;
use crate::model::generate::GenConfig;
use crate::report::stats::{mean_ci95, MeanCi};
use crate::score::keywords::KeywordScorer;
use crate::score::{Sample, Scorer};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt: Prompt,
    pub response: String,
    /// The prompt as the model saw it (template applied).
    pub prompt_ids: Vec<u32>,
    /// Generated tokens, EOS excluded.
    pub tokens: Vec<u32>,
    /// Stopped at an EOS (rather than at `max_new_tokens`).
    pub ended: bool,
}

impl Generation {
    /// The prompt (and a conversation's turns) and response text, as a scorer reads them.
    pub fn sample(&self) -> Sample<'_> {
        Sample {
            prompt: self.prompt.text(),
            response: &self.response,
            context: self.prompt.turns(),
        }
    }

    /// The prompt and response tokens, as the KL measures read them.
    pub fn continuation(&self) -> Continuation<'_> {
        Continuation {
            prompt: &self.prompt_ids,
            tokens: &self.tokens,
            ended: self.ended,
        }
    }
}

/// Sample one response per prompt (deterministic for a given `gen.seed`).
pub fn generate_responses(
    lm: &dyn Evaluated,
    prompts: &[Prompt],
    template: Template,
    gen: &GenConfig,
    progress: bool,
) -> Result<Vec<Generation>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            template
                .encode_generation_prompt(p, lm.tokenizer())
                .with_context(|| format!("evaluation prompt {}", i + 1))
        })
        .collect::<Result<_>>()?;
    let pb = crate::util::progress::bar(prompts.len() as u64, "generate");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // One call (generation is seeded by prompt index): the bar moves when it returns.
    let outs = lm.generate(&ids, gen)?;
    pb.inc(prompts.len() as u64);
    pb.finish_and_clear();
    prompts
        .iter()
        .zip(ids)
        .zip(outs)
        .map(|((p, prompt_ids), tokens)| {
            Ok(Generation {
                prompt: p.clone(),
                response: lm.tokenizer().decode(&tokens, true)?,
                ended: tokens.len() < gen.max_new_tokens,
                prompt_ids,
                tokens,
            })
        })
        .collect()
}

/// One line of a cell's `samples.jsonl`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// The prompt, or a conversation's last user turn.
    pub prompt: String,
    /// The conversation's turns, when the prompt is one.
    pub messages: Option<Vec<Message>>,
    pub response: String,
    /// Response tokens (EOS excluded).
    pub tokens: usize,
    pub ended_with_eos: bool,
    pub score: f64,
    /// Mean per-token KL(model || base) of this response, when a base was given.
    pub kl: Option<f64>,
    /// Mean per-token KL(model || aligned model), when an aligned model was given.
    pub kl_aligned: Option<f64>,
    /// Mean NLL of the response tokens under the base model (none for an empty response).
    pub base_nll: Option<f64>,
    /// Whether the response matches the refusal keyword list, when refusals are counted.
    pub refused: Option<bool>,
}

/// What an evaluation measured.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub prompts: usize,
    /// Registry name of the scorer.
    pub scorer: String,
    pub higher_is_aligned: bool,
    /// Mean score over prompts, with its 95% CI over prompts.
    pub score: MeanCi,
    /// Mean per-token KL(model || base) over every response position of every prompt
    /// (token-weighted); 0 for the base model itself.
    pub kl: f64,
    /// Per-prompt mean KL, averaged over prompts with its 95% CI (prompt-weighted).
    pub kl_per_prompt: Option<MeanCi>,
    /// Response positions the KL averages over.
    pub kl_positions: usize,
    pub mean_response_tokens: f64,
    /// Share of responses that ended with EOS before `max_new_tokens`.
    pub eos_fraction: f64,
    /// KL(model || base) at response position 1, 2, ... averaged over the prompts whose
    /// response reaches it (empty for the base model itself).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kl_by_position: Vec<PositionKl>,
    /// KL(model || aligned model), token-weighted, when an aligned model was given.
    pub kl_to_aligned: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kl_to_aligned_by_position: Vec<PositionKl>,
    /// Coherence: mean NLL per response token (EOS excluded) under the base model, over
    /// every response token of every prompt.
    pub coherence_nll: Option<f64>,
    /// Share of responses that refuse (keyword list), with its 95% CI over prompts.
    pub refusal_rate: Option<MeanCi>,
    /// Version of the refusal keyword list (its header), when refusals were counted.
    pub refusal_keywords: Option<String>,
}

/// The models a generation is compared with.
#[derive(Clone, Copy, Default)]
pub struct References<'a> {
    /// The base model; `None` means the evaluated model is the base model.
    pub base: Option<&'a dyn Evaluated>,
    /// The aligned model this one was perturbed from (KL to it by position).
    pub aligned: Option<&'a dyn Evaluated>,
    /// Count refusals with this keyword list.
    pub refusal: Option<&'a KeywordScorer>,
}

/// Generate, score and measure KL to the references. `refs.base = None` means the model is
/// the base model, whose KL to itself is 0 by definition (its coherence is then its own NLL
/// of its samples).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    lm: &dyn Evaluated,
    refs: References<'_>,
    prompts: &[Prompt],
    template: Template,
    gen: &GenConfig,
    scorer: &dyn Scorer,
    kl_batch_size: usize,
    progress: bool,
) -> Result<(EvalSummary, Vec<SampleRow>)> {
    anyhow::ensure!(!prompts.is_empty(), "no evaluation prompts");
    let gens = generate_responses(lm, prompts, template, gen, progress)?;
    let samples: Vec<Sample<'_>> = gens.iter().map(Generation::sample).collect();
    let scores = scorer
        .score_batch(&samples)
        .with_context(|| format!("scoring with {}", scorer.name()))?;
    anyhow::ensure!(
        scores.len() == gens.len(),
        "scorer {} returned {} scores for {} responses",
        scorer.name(),
        scores.len(),
        gens.len()
    );
    let seqs: Vec<Continuation<'_>> = gens.iter().map(Generation::continuation).collect();
    let measure = |reference: &dyn Evaluated, what: &str| -> Result<Vec<SequenceKl>> {
        let pb = crate::util::progress::bar(seqs.len() as u64, what);
        if !progress {
            pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let k = sequence_kl(
            lm,
            reference,
            &seqs,
            lm.tokenizer().pad_id(),
            kl_batch_size,
            |n| pb.inc(n as u64),
        )?;
        pb.finish_and_clear();
        Ok(k)
    };
    // Against the base model, or (for the base model) against itself: one forward, KL 0,
    // and the NLL the coherence needs.
    let to_base = measure(refs.base.unwrap_or(lm), "KL")?;
    let kls = refs.base.map(|_| &to_base);
    let to_aligned = refs
        .aligned
        .map(|a| measure(a, "KL to aligned"))
        .transpose()?;
    let refused: Option<Vec<bool>> = refs
        .refusal
        .map(|k| gens.iter().map(|g| k.refuses(&g.response)).collect());
    let rows: Vec<SampleRow> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| SampleRow {
            prompt: g.prompt.text().to_string(),
            messages: g.prompt.turns().map(<[Message]>::to_vec),
            response: g.response.clone(),
            tokens: g.tokens.len(),
            ended_with_eos: g.ended,
            score: scores[i],
            kl: kls.map(|k| k[i].mean()),
            kl_aligned: to_aligned.as_ref().map(|k| k[i].mean()),
            base_nll: (!g.tokens.is_empty()).then(|| to_base[i].base_nll / g.tokens.len() as f64),
            refused: refused.as_ref().map(|r| r[i]),
        })
        .collect();
    let n = gens.len() as f64;
    let summary = EvalSummary {
        prompts: gens.len(),
        scorer: scorer.name().to_string(),
        higher_is_aligned: scorer.higher_is_aligned(),
        score: mean_ci95(&scores).context("no scores")?,
        kl: kls.map_or(0.0, |k| pooled_mean(k)),
        kl_per_prompt: kls.and_then(|k| mean_ci95(&k.iter().map(|x| x.mean()).collect::<Vec<_>>())),
        kl_positions: kls.map_or(0, |k| k.iter().map(|x| x.positions).sum()),
        mean_response_tokens: gens.iter().map(|g| g.tokens.len() as f64).sum::<f64>() / n,
        eos_fraction: gens.iter().filter(|g| g.ended).count() as f64 / n,
        kl_by_position: kls.map(|k| by_position(k)).unwrap_or_default(),
        kl_to_aligned: to_aligned.as_deref().map(pooled_mean),
        kl_to_aligned_by_position: to_aligned.as_deref().map(by_position).unwrap_or_default(),
        coherence_nll: coherence(&to_base, &gens),
        refusal_rate: refused.as_ref().and_then(|r| {
            mean_ci95(
                &r.iter()
                    .map(|&x| f64::from(u8::from(x)))
                    .collect::<Vec<_>>(),
            )
        }),
        refusal_keywords: refs.refusal.map(|k| k.version().to_string()),
    };
    Ok((summary, rows))
}

/// Token-weighted mean NLL of the generated tokens under the base model; `None` when no
/// response has a token.
pub fn coherence(kls: &[SequenceKl], gens: &[Generation]) -> Option<f64> {
    let tokens: usize = gens.iter().map(|g| g.tokens.len()).sum();
    (tokens > 0).then(|| kls.iter().map(|k| k.base_nll).sum::<f64>() / tokens as f64)
}
