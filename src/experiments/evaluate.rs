//! Evaluating one model on the evaluation prompts: sample a response to each prompt, score
//! the responses, and (given the base model) measure KL(model || base) on them. Shared by
//! every experiment cell that judges a model's behaviour.

use super::kl::{pooled_mean, sequence_kl, Continuation};
use crate::data::template::Template;
use crate::model::generate::{generate, GenConfig};
use crate::model::LoadedModel;
use crate::report::stats::{mean_ci95, MeanCi};
use crate::score::{Sample, Scorer};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt: String,
    pub response: String,
    /// The prompt as the model saw it (template applied).
    pub prompt_ids: Vec<u32>,
    /// Generated tokens, EOS excluded.
    pub tokens: Vec<u32>,
    /// Stopped at an EOS (rather than at `max_new_tokens`).
    pub ended: bool,
}

/// Sample one response per prompt (deterministic for a given `gen.seed`).
pub fn generate_responses(
    lm: &LoadedModel,
    prompts: &[String],
    template: Template,
    gen: &GenConfig,
    progress: bool,
) -> Result<Vec<Generation>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            template
                .encode_prompt(p, &lm.tokenizer)
                .with_context(|| format!("evaluation prompt {}", i + 1))
        })
        .collect::<Result<_>>()?;
    let pb = crate::util::progress::bar(prompts.len() as u64, "generate");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let outs = generate(
        &lm.model,
        &ids,
        lm.tokenizer.eos_ids(),
        lm.tokenizer.pad_id(),
        gen,
        |n| pb.inc(n as u64),
    )?;
    pb.finish_and_clear();
    prompts
        .iter()
        .zip(ids)
        .zip(outs)
        .map(|((p, prompt_ids), tokens)| {
            Ok(Generation {
                prompt: p.clone(),
                response: lm.tokenizer.decode(&tokens, true)?,
                ended: tokens.len() < gen.max_new_tokens,
                prompt_ids,
                tokens,
            })
        })
        .collect()
}

/// One line of a cell's `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub prompt: String,
    pub response: String,
    /// Response tokens (EOS excluded).
    pub tokens: usize,
    pub ended_with_eos: bool,
    pub score: f64,
    /// Mean per-token KL(model || base) of this response, when a base was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

/// What an evaluation measured.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_per_prompt: Option<MeanCi>,
    /// Response positions the KL averages over.
    pub kl_positions: usize,
    pub mean_response_tokens: f64,
    /// Share of responses that ended with EOS before `max_new_tokens`.
    pub eos_fraction: f64,
}

/// Generate, score and (with `base`) measure KL. `base = None` means the model is the base
/// model, whose KL to itself is 0 by definition.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    lm: &LoadedModel,
    base: Option<&LoadedModel>,
    prompts: &[String],
    template: Template,
    gen: &GenConfig,
    scorer: &dyn Scorer,
    kl_batch_size: usize,
    progress: bool,
) -> Result<(EvalSummary, Vec<SampleRow>)> {
    anyhow::ensure!(!prompts.is_empty(), "no evaluation prompts");
    let gens = generate_responses(lm, prompts, template, gen, progress)?;
    let samples: Vec<Sample<'_>> = gens
        .iter()
        .map(|g| Sample {
            prompt: &g.prompt,
            response: &g.response,
        })
        .collect();
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
    let kls = match base {
        None => None,
        Some(b) => {
            let seqs: Vec<Continuation<'_>> = gens
                .iter()
                .map(|g| Continuation {
                    prompt: &g.prompt_ids,
                    tokens: &g.tokens,
                    ended: g.ended,
                })
                .collect();
            let pb = crate::util::progress::bar(seqs.len() as u64, "KL");
            if !progress {
                pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let k = sequence_kl(
                &lm.model,
                &b.model,
                &seqs,
                lm.tokenizer.pad_id(),
                kl_batch_size,
                |n| pb.inc(n as u64),
            )?;
            pb.finish_and_clear();
            Some(k)
        }
    };
    let rows: Vec<SampleRow> = gens
        .iter()
        .enumerate()
        .map(|(i, g)| SampleRow {
            prompt: g.prompt.clone(),
            response: g.response.clone(),
            tokens: g.tokens.len(),
            ended_with_eos: g.ended,
            score: scores[i],
            kl: kls.as_ref().map(|k| k[i].mean()),
        })
        .collect();
    let n = gens.len() as f64;
    let summary = EvalSummary {
        prompts: gens.len(),
        scorer: scorer.name().to_string(),
        higher_is_aligned: scorer.higher_is_aligned(),
        score: mean_ci95(&scores).context("no scores")?,
        kl: kls.as_deref().map_or(0.0, pooled_mean),
        kl_per_prompt: kls
            .as_ref()
            .and_then(|k| mean_ci95(&k.iter().map(|x| x.mean()).collect::<Vec<_>>())),
        kl_positions: kls
            .as_ref()
            .map_or(0, |k| k.iter().map(|x| x.positions).sum()),
        mean_response_tokens: gens.iter().map(|g| g.tokens.len() as f64).sum::<f64>() / n,
        eos_fraction: gens.iter().filter(|g| g.ended).count() as f64 / n,
    };
    Ok((summary, rows))
}
