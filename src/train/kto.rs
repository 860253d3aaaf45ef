//! KTO (Ethayarajh et al. 2024) on unpaired feedback (`data::feedback`): TRL's `KTOTrainer`
//! with `loss_type = "kto"`, as a step ([`KtoStep`]) of the one training loop, with SFT's and
//! DPO's data order, AdamW, clipping, checkpoints, exact resume and settings checks.
//!
//! Each example is a prompt x with one completion y, desirable or not. With r = log pi(y|x) -
//! log pi_ref(y|x) (the completion's counted tokens summed, EOS included, as DPO counts them;
//! pi_ref the starting model) and the reference point z0, an example's loss is
//! - w_D (1 - sigmoid(beta (r - z0))) for a desirable completion,
//! - w_U (1 - sigmoid(beta (z0 - r))) for an undesirable one,
//!
//! (w_D, w_U: `--kto-desirable-weight`, `--kto-undesirable-weight`, TRL's default 1) and the
//! step's loss is their mean over the step's examples (TRL's mean over the batch's desirable
//! and undesirable losses together). z0 estimates KL(pi || pi_ref) on mismatched sequences,
//! example i's prompt ids joined to example i-1's completion ids (the last example's for the
//! first), as TRL's KTO collator joins them (`batch::mismatched`): at
//! each step's start the mean over the step's examples of their log pi - log pi_ref, floored
//! at 0 and held constant in the backward (TRL's `detach`). As in `dpo`'s paired KTO, z0 is
//! estimated per optimizer step (TRL: per micro-batch) and the shift runs over the whole data
//! set (TRL 1.x cycles within each training batch), so neither depends on how a step is
//! split into micro-batches. Rewards are beta r.
//!
//! The gradient is the SFT gradient of each completion times dloss/dNLL, so the hand-written
//! backward serves it through the weighted step, as it serves DPO. The reference log-probs of
//! the completions and of the mismatched sequences are computed once and cached in the run
//! directory ([`REFERENCE_FILE`], tied to the starting weights, the data and the labels).

use super::batch::{collate, loss_tokens, mismatched, tokenize, Batch, Example};
use super::dpo::{kto_z0, sigmoid};
use super::driver::{log_line_with_base, step_settings, Outcome, Trainee};
use super::objective::{DpoConfig, DpoLoss, Method as Objective};
use super::recipe::{Recipe, Resolved, Start, TrainData};
use super::reference::{
    cached_or_computed, AgainstReference, MicroBatches, ReferenceCache, ReferenceRunSummary,
    ReferenceStep,
};
use super::sft::{StepLog, TrainConfig};
use crate::data::feedback::FeedbackRecord;
use crate::data::records::Record;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// One example's loss, reward and the loss's derivative with respect to its completion's
/// summed NLL (the weight of its SFT gradient), from r = log pi - log pi_ref and z0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExampleTerms {
    pub loss: f64,
    pub reward: f64,
    pub d_nll: f64,
}

/// [`ExampleTerms`] of a desirable (or undesirable) completion.
pub fn example_terms(cfg: &DpoConfig, r: f64, z0: f64, desirable: bool) -> ExampleTerms {
    let beta = cfg.dpo_beta;
    // 1 - sigmoid(x) = sigmoid(-x); d sigmoid(x)/dx = s (1 - s). r = -NLL + const.
    let (w, x) = if desirable {
        (cfg.kto_desirable_weight, beta * (z0 - r))
    } else {
        (cfg.kto_undesirable_weight, beta * (r - z0))
    };
    let s = sigmoid(x);
    // dloss/dr = w s (1 - s) dx/dr, dx/dr = -beta (desirable) or beta; dNLL = -dr.
    let d_r = w * s * (1.0 - s) * if desirable { -beta } else { beta };
    ExampleTerms {
        loss: w * s,
        reward: beta * r,
        d_nll: -d_r,
    }
}

/// One line of a KTO run's `train_log.jsonl`: the SFT fields (`loss` the mean over the step's
/// examples, `tokens` their counted completion tokens), the mean rewards of the step's
/// desirable and undesirable examples (none where the step has none), and z0 (`kl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KtoStepLog {
    #[serde(flatten)]
    pub base: StepLog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desirable_reward: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undesirable_reward: Option<f64>,
    pub kl: f64,
}

log_line_with_base!(KtoStepLog);

/// What a KTO run did (examples as `records`).
pub type KtoSummary = ReferenceRunSummary<KtoStepLog>;

/// The reference model's summed log-probs of the completions and the mismatched sequences,
/// cached in the run directory.
pub const REFERENCE_FILE: &str = "kto_reference.json";

/// The reference model's log-probs of a run's examples (the [`REFERENCE_FILE`] cache).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    start_sha256: String,
    data_sha256: String,
    completions: Vec<f64>,
    /// Example i's prompt with example i-1's completion.
    mismatched: Vec<f64>,
}

impl ReferenceCache for Reference {
    fn stamp(&self) -> (&str, &str) {
        (&self.start_sha256, &self.data_sha256)
    }
    fn vectors(&self) -> Vec<&[f64]> {
        vec![&self.completions, &self.mismatched]
    }
}

/// A run's tokenized examples, labels and settings, checked before anything is written.
pub struct FeedbackPlan {
    completions: Vec<Example>,
    desirable: Vec<bool>,
    mismatched: Vec<Example>,
    resolved: Resolved,
}

impl TrainData for FeedbackRecord {
    type Recipe = FeedbackPlan;
}

impl Recipe for FeedbackPlan {
    type Record = FeedbackRecord;
    type Step<'a> = KtoStep<'a>;
    type Summary = KtoSummary;

    fn prepare(
        start: Start<'_>,
        examples: &[FeedbackRecord],
        cfg: &TrainConfig,
    ) -> Result<FeedbackPlan> {
        cfg.dpo.validate()?;
        if cfg.dpo.method != Objective::Dpo || cfg.dpo.dpo_loss != DpoLoss::Kto {
            bail!(
                "unpaired feedback ({{\"prompt\", \"completion\", \"label\"}}) trains with KTO: \
                 --method dpo --dpo-loss kto (the other losses compare two answers to one prompt)"
            );
        }
        let n = examples.len();
        if n < 2 {
            bail!(
                "KTO estimates its reference point on mismatched sequences (each prompt with \
                 another example's completion), so it needs at least 2 examples; the data has {n}"
            );
        }
        let records: Vec<Record> = examples.iter().map(|e| e.record(&e.completion)).collect();
        let tok = |max_length| tokenize(&records, start.tokenizer, cfg.template, max_length);
        let (completions, truncated) = tok(cfg.max_length)?;
        // Example i's prompt with example i - 1's completion. Not trained on: a cut one only
        // shifts z0's estimate, so it goes unreported.
        let mismatched = mismatched(&tok(usize::MAX)?.0, cfg.max_length, start.tokenizer)?;
        for (i, e) in completions.iter().enumerate() {
            if loss_tokens(e) == 0 {
                bail!(
                    "example {}: the completion has no token the loss can count (it is empty, or \
                     its prompt fills max_length = {})",
                    i + 1,
                    cfg.max_length
                );
            }
        }
        let desirable: Vec<bool> = examples.iter().map(|e| e.desirable).collect();
        let mut resolved = Resolved::new(cfg, n, start, &completions, truncated)?;
        // The labels are data too: a run resumed on flipped labels is refused.
        let mut h = Sha256::new();
        h.update(resolved.settings.data_sha256.as_bytes());
        h.update(desirable.iter().map(|&d| u8::from(d)).collect::<Vec<u8>>());
        resolved.settings.data_sha256 = hex::encode(h.finalize());
        Ok(FeedbackPlan {
            completions,
            desirable,
            mismatched,
            resolved,
        })
    }

    fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// `cfg.batch_size` counts examples.
    fn step(&self) -> KtoStep<'_> {
        self.resolved
            .warn_truncated(self.completions.len(), "completions");
        ReferenceStep::new(self)
    }

    fn summary(&self, step: &KtoStep<'_>, o: Outcome<KtoStepLog>) -> KtoSummary {
        step.summary(&self.resolved, self.completions.len(), o)
    }
}

/// `model`'s summed log-probs of the sequences `seqs[idx]`, `batch_size` a forward.
fn logps(
    model: &dyn Trainee,
    seqs: &[Example],
    idx: &[usize],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(idx.len());
    for part in idx.chunks(batch_size) {
        let nll = model.seq_nll(&batch_of(seqs, part, model.pad_id())?)?;
        out.extend(nll.iter().map(|x| -x));
    }
    Ok(out)
}

fn batch_of(seqs: &[Example], idx: &[usize], pad: u32) -> Result<Batch> {
    let picked: Vec<&Example> = idx.iter().map(|&i| &seqs[i]).collect();
    collate(&picked, pad, &candle_core::Device::Cpu)
}

/// KTO's step (see the module doc), with the reference log-probs it computes or reads before
/// the first step.
pub type KtoStep<'a> = ReferenceStep<'a, FeedbackPlan>;

impl AgainstReference for FeedbackPlan {
    type Reference = Reference;
    type Log = KtoStepLog;
    const LABEL: &'static str = "kto";
    fn reference(&self, model: &mut dyn Trainee, out: &Path) -> Result<(Reference, bool)> {
        let (p, s) = (self, &self.resolved.settings);
        let (cfg, path) = (&s.train, out.join(REFERENCE_FILE));
        let n = p.completions.len();
        cached_or_computed(&path, s, &[n, n], || {
            let order: Vec<usize> = (0..n).collect();
            Ok(Reference {
                start_sha256: s.start_sha256.clone(),
                data_sha256: s.data_sha256.clone(),
                completions: logps(model, &p.completions, &order, cfg.batch_size)?,
                mismatched: logps(model, &p.mismatched, &order, cfg.batch_size)?,
            })
        })
    }

    /// z0 from the mismatched sequences at the current weights; then per micro-batch of
    /// `batch_size` examples, one forward, the examples' terms, one weighted backward; then
    /// clip and AdamW.
    fn step(
        &self,
        refs: &Reference,
        model: &mut dyn Trainee,
        idx: &[usize],
        lr: f64,
    ) -> Result<KtoStepLog> {
        let (p, cfg) = (self, &self.resolved.settings.train);
        let policy = logps(model, &p.mismatched, idx, cfg.batch_size)?;
        let reference: Vec<f64> = idx.iter().map(|&i| refs.mismatched[i]).collect();
        let z0 = kto_z0(&policy, &reference)?;
        let n = idx.len() as f64;
        let micro = MicroBatches::new(idx, cfg.batch_size, model.pad_id(), |c, pad| {
            batch_of(&p.completions, c, pad)
        })?;
        let loss = |(_, t): &(bool, ExampleTerms)| t.loss;
        let (base, terms) = micro.weighted_step(
            model,
            &step_settings(cfg, lr),
            ("KTO", loss),
            |chunk, nll| {
                let terms: Vec<(bool, ExampleTerms)> = chunk
                    .iter()
                    .zip(nll)
                    .map(|(&i, &nll)| {
                        let r = -nll - refs.completions[i];
                        (
                            p.desirable[i],
                            example_terms(&cfg.dpo, r, z0, p.desirable[i]),
                        )
                    })
                    .collect();
                let w = terms.iter().map(|(_, t)| t.d_nll / n).collect();
                Ok((w, terms))
            },
        )?;
        let mean_reward = |d: bool| {
            let r: Vec<f64> = terms
                .iter()
                .filter(|(x, _)| *x == d)
                .map(|(_, t)| t.reward)
                .collect();
            (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
        };
        Ok(KtoStepLog {
            base,
            desirable_reward: mean_reward(true),
            undesirable_reward: mean_reward(false),
            kl: z0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The terms are TRL's formulas, and their derivatives match finite differences.
    #[test]
    fn example_terms_are_ktos_formula_and_its_derivative() {
        let cfg = DpoConfig {
            method: Objective::Dpo,
            dpo_beta: 0.5,
            dpo_loss: DpoLoss::Kto,
            kto_desirable_weight: 1.5,
            kto_undesirable_weight: 0.75,
            ..DpoConfig::DEFAULT
        };
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (r, z0) = (0.8, 0.3);
        let d = example_terms(&cfg, r, z0, true);
        assert!((d.loss - 1.5 * (1.0 - sig(0.5 * (r - z0)))).abs() < 1e-15);
        assert!((d.reward - 0.4).abs() < 1e-15);
        let u = example_terms(&cfg, r, z0, false);
        assert!((u.loss - 0.75 * (1.0 - sig(0.5 * (z0 - r)))).abs() < 1e-15);
        // r = -NLL + c: dloss/dNLL = -(loss(r + e) - loss(r - e)) / 2e.
        let e = 1e-6;
        for desirable in [true, false] {
            let l = |r: f64| example_terms(&cfg, r, z0, desirable).loss;
            let fd = -(l(r + e) - l(r - e)) / (2.0 * e);
            let got = example_terms(&cfg, r, z0, desirable).d_nll;
            assert!((fd - got).abs() < 1e-8, "{desirable}: {fd} vs {got}");
        }
        // A desirable completion's loss falls as its reward rises; an undesirable one's grows.
        assert!(d.d_nll > 0.0 && u.d_nll < 0.0);
    }
}
