//! Direct preference optimisation (DPO, Rafailov et al. 2023) as a step ([`DpoStep`]) of the
//! one training loop (`train::driver`): the same data order, AdamW, clipping, checkpoints,
//! exact resume and [`RunSettings`] checks as SFT, on the fused path or any backend.
//!
//! For a pair (prompt x, chosen y+, rejected y-), with log pi(y|x) the sum of the response
//! tokens' log-probs (prompt masked, EOS counted, as SFT counts them) and pi_ref the starting
//! model, let h = [log pi(y+) - log pi_ref(y+)] - [log pi(y-) - log pi_ref(y-)]. The loss is
//! - `sigmoid` (standard DPO): -log sigmoid(beta h);
//! - `ipo` (Azar et al. 2023): (h - 1/(2 beta))^2, here on summed (not length-averaged)
//!   log-probs, like the sigmoid loss;
//! - `simpo` (Meng et al. 2024): -log sigmoid(beta (a+ - a-) - gamma), where a is an answer's
//!   mean log-prob per counted token and there is no reference model (none is computed or
//!   cached; rewards are beta a). This is TRL's `loss_type = "simpo"` with `simpo_gamma`;
//! - `kto` (Ethayarajh et al. 2024): each pair's chosen answer is a desirable example and its
//!   rejected answer an undesirable one, each scored alone against a reference point z0:
//!   1 - sigmoid(beta (r+ - z0)) and 1 - sigmoid(beta (z0 - r-)), r = log pi - log pi_ref,
//!   averaged (so the step's loss is the mean over its answers, TRL's `KTOTrainer` on a
//!   preference set it unpairs, with desirable and undesirable weights 1). z0 estimates
//!   KL(pi || pi_ref) on mismatched sequences: pair i's prompt with pair i-1's two answers
//!   (the last pair's for the first; TRL's `_get_kl_dataset` shift). At each step's start the
//!   policy's log-probs of the step's mismatched sequences, minus the reference's, are
//!   averaged and floored at 0; z0 is held constant in the backward (as TRL's `detach`).
//!   TRL estimates z0 per micro-batch; here it is per optimizer step, so it does not depend
//!   on how the step is split into micro-batches.
//!
//! The step's loss is the mean over its pairs. Its gradient is the SFT gradient of each
//! sequence times a per-pair scalar (dloss/dNLL: beta sigmoid(-beta h) for y+ and its negative
//! for y- under `sigmoid`), so the hand-written backward serves it with per-sequence weights
//! (`backprop::seq_nll_and_weighted_grads`) and no second backward.
//!
//! The reference log-probs are computed once, before the first step, and cached in the run
//! directory ([`REFERENCE_FILE`], tied to the starting weights and data by their sha256), so a
//! resumed run reads them instead of recomputing. Rewards are beta x (log pi - log pi_ref).

use super::batch::{collate, loss_tokens, mismatched, share_prompt, tokenize, Batch, Example};
use super::driver::{log_line_with_base, step_settings, Outcome, Trainee};
pub(crate) use super::fused::seq_nll;
pub use super::fused::{autograd_weighted_grads, weighted_grads};
use super::objective::{DpoConfig, DpoLoss, Method as Objective};
use super::recipe::{Recipe, Resolved, Start, TrainData};
use super::reference::{
    cached_or_computed, AgainstReference, MicroBatches, ReferenceCache, ReferenceRunSummary,
    ReferenceStep,
};
use super::sft::{StepLog, TrainConfig};
use crate::data::prefs::PrefRecord;
use crate::data::records::Record;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One pair's loss, rewards and the loss's derivatives with respect to the two sequences'
/// summed NLLs (the weights of their SFT gradients).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairTerms {
    pub loss: f64,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
    pub d_nll_chosen: f64,
    pub d_nll_rejected: f64,
}

/// [`PairTerms`] from the policy's minus the reference's log-probs of the chosen (`dc`) and
/// rejected (`dr`) answers (under SimPO: their mean log-probs per token, no reference), and
/// KTO's reference point `z0` (ignored by the other losses). The derivatives are with
/// respect to `-dc` and `-dr`.
pub fn pair_terms(cfg: &DpoConfig, dc: f64, dr: f64, z0: f64) -> PairTerms {
    let beta = cfg.dpo_beta;
    let h = dc - dr;
    // (loss, dloss/ddc, dloss/ddr); dc = -NLL(y+) + const, so dloss/dNLL(y+) = -dloss/ddc.
    let (loss, d_dc, d_dr) = match cfg.dpo_loss {
        DpoLoss::Sigmoid | DpoLoss::Simpo => {
            // SimPO asks for a margin of gamma (its h is on mean log-probs, no reference).
            let gamma = match cfg.dpo_loss {
                DpoLoss::Simpo => cfg.simpo_gamma,
                _ => 0.0,
            };
            let z = beta * h - gamma;
            // -log sigmoid(z) = softplus(-z), stable for either sign.
            let loss = (-z).max(0.0) + (-z.abs()).exp().ln_1p();
            let dh = -beta * sigmoid(-z);
            (loss, dh, -dh)
        }
        DpoLoss::Ipo => {
            let d = h - 1.0 / (2.0 * beta);
            (d * d, 2.0 * d, -2.0 * d)
        }
        DpoLoss::Kto => {
            // 1 - sigmoid(x) = sigmoid(-x); each answer is half the pair's loss.
            let (sc, sr) = (sigmoid(beta * (dc - z0)), sigmoid(beta * (z0 - dr)));
            let loss = (sigmoid(beta * (z0 - dc)) + sigmoid(beta * (dr - z0))) / 2.0;
            (
                loss,
                -beta * sc * (1.0 - sc) / 2.0,
                beta * sr * (1.0 - sr) / 2.0,
            )
        }
    };
    PairTerms {
        loss,
        chosen_reward: beta * dc,
        rejected_reward: beta * dr,
        d_nll_chosen: -d_dc,
        d_nll_rejected: -d_dr,
    }
}

/// The gradient weights of a micro-batch of pairs (`nll`: its sequences' summed NLLs, every
/// chosen answer then every rejected one) and each pair's terms; `refs` yields the pairs'
/// reference log-probs and `lens` their answers' counted tokens (chosen, rejected) in order,
/// and `n` counts the step's pairs (the loss is their mean); `z0` is KTO's reference point
/// (0 for the other losses). SimPO divides each log-prob by its length (and has no
/// reference: pass zeros); the other losses use the sums.
pub fn pair_weights(
    cfg: &DpoConfig,
    nll: &[f64],
    refs: impl Iterator<Item = (f64, f64)>,
    lens: impl Iterator<Item = (usize, usize)>,
    n: f64,
    z0: f64,
) -> (Vec<f64>, Vec<PairTerms>) {
    let k = nll.len() / 2;
    let mut w = vec![0.0; 2 * k];
    let mut terms = Vec::with_capacity(k);
    for (j, ((ref_c, ref_r), (len_c, len_r))) in refs.zip(lens).take(k).enumerate() {
        let (norm_c, norm_r) = match cfg.dpo_loss {
            DpoLoss::Simpo => (len_c as f64, len_r as f64),
            DpoLoss::Sigmoid | DpoLoss::Ipo | DpoLoss::Kto => (1.0, 1.0),
        };
        let mut t = pair_terms(
            cfg,
            (-nll[j] - ref_c) / norm_c,
            (-nll[k + j] - ref_r) / norm_r,
            z0,
        );
        // The chain rule through the division by the length.
        t.d_nll_chosen /= norm_c;
        t.d_nll_rejected /= norm_r;
        w[j] = t.d_nll_chosen / n;
        w[k + j] = t.d_nll_rejected / n;
        terms.push(t);
    }
    (w, terms)
}

/// The logistic function, stable for either sign.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// One line of a DPO run's `train_log.jsonl`: the SFT fields (`loss` is the mean DPO loss of
/// the step's pairs, `tokens` the counted tokens of both answers) and the means over the
/// step's pairs of the rewards, their margin and the accuracy (chosen reward > rejected);
/// under KTO also the step's reference point z0 (`kl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoStepLog {
    #[serde(flatten)]
    pub base: StepLog,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
    pub margin: f64,
    pub accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
}

log_line_with_base!(DpoStepLog);

/// What a DPO run did.
pub type DpoSummary = ReferenceRunSummary<DpoStepLog>;

/// The reference model's summed response log-probs (and, under KTO, those of the
/// mismatched sequences), cached in the run directory.
pub const REFERENCE_FILE: &str = "dpo_reference.json";

/// The reference model's log-probs of a run's pairs (the [`REFERENCE_FILE`] cache).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reference {
    start_sha256: String,
    data_sha256: String,
    chosen: Vec<f64>,
    rejected: Vec<f64>,
    /// KTO's mismatched sequences (pair i's prompt with pair i-1's chosen / rejected answer);
    /// empty under the other losses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    kl_chosen: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    kl_rejected: Vec<f64>,
}

impl ReferenceCache for Reference {
    fn stamp(&self) -> (&str, &str) {
        (&self.start_sha256, &self.data_sha256)
    }
    /// Chosen, rejected, then KTO's mismatched ones.
    fn vectors(&self) -> Vec<&[f64]> {
        vec![
            &self.chosen,
            &self.rejected,
            &self.kl_chosen,
            &self.kl_rejected,
        ]
    }
}

/// A run's tokenized pairs and settings, checked before anything is written.
pub struct PairPlan {
    chosen: Vec<Example>,
    rejected: Vec<Example>,
    /// KTO's mismatched sequences (see [`Reference`]); empty under the other losses.
    kl_chosen: Vec<Example>,
    kl_rejected: Vec<Example>,
    resolved: Resolved,
}

impl TrainData for PrefRecord {
    type Recipe = PairPlan;
}

impl Recipe for PairPlan {
    type Record = PrefRecord;
    type Step<'a> = DpoStep<'a>;
    type Summary = DpoSummary;

    fn prepare(start: Start<'_>, pairs: &[PrefRecord], cfg: &TrainConfig) -> Result<PairPlan> {
        cfg.dpo.validate()?;
        if cfg.dpo.method != Objective::Dpo {
            bail!("preference pairs train with DPO: method = \"dpo\" (--method dpo)");
        }
        if pairs.is_empty() {
            bail!("no preference pairs");
        }
        let kto = cfg.dpo.dpo_loss == DpoLoss::Kto;
        if kto && pairs.len() < 2 {
            bail!(
                "the kto loss estimates its reference point on mismatched pairs (each prompt with \
                 another pair's answers), so it needs at least 2 pairs; the data has 1"
            );
        }
        let side = |answer: fn(&PrefRecord) -> &str| -> Vec<Record> {
            pairs.iter().map(|p| p.record(answer(p))).collect()
        };
        // Each pair's answers, tokenized with the prompt and cut to `max_length` (all of them
        // with `usize::MAX`), starting where both leave the prompt.
        let answers = |max_length: usize| -> Result<(Vec<Example>, Vec<Example>, usize)> {
            let tok = |recs: &[Record]| tokenize(recs, start.tokenizer, cfg.template, max_length);
            let (mut chosen, tc) = tok(&side(|p| &p.chosen))?;
            let (mut rejected, tr) = tok(&side(|p| &p.rejected))?;
            for (c, r) in chosen.iter_mut().zip(&mut rejected) {
                share_prompt(c, r);
            }
            Ok((chosen, rejected, tc + tr))
        };
        let (chosen, rejected, truncated) = answers(cfg.max_length)?;
        let (kl_chosen, kl_rejected) = if kto {
            // Pair i's prompt with the answers of pair i - 1. Not trained on: a cut one only
            // shifts z0's estimate, so it goes unreported.
            let (c, r, _) = answers(usize::MAX)?;
            (
                mismatched(&c, cfg.max_length, start.tokenizer)?,
                mismatched(&r, cfg.max_length, start.tokenizer)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        for (i, (c, r)) in chosen.iter().zip(&rejected).enumerate() {
            for (name, e) in [("chosen", c), ("rejected", r)] {
                if loss_tokens(e) == 0 {
                    bail!(
                        "pair {}: the {name} answer has no token the loss can count (it is empty, \
                         or its prompt fills max_length = {})",
                        i + 1,
                        cfg.max_length
                    );
                }
            }
        }
        let both: Vec<Example> = chosen.iter().chain(&rejected).cloned().collect();
        let n = pairs.len();
        let resolved = Resolved::new(cfg, n, start, &both, truncated)?;
        Ok(PairPlan {
            chosen,
            rejected,
            kl_chosen,
            kl_rejected,
            resolved,
        })
    }

    fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// `cfg.batch_size` counts pairs, so a micro-batch holds twice as many sequences.
    fn step(&self) -> DpoStep<'_> {
        self.resolved
            .warn_truncated(2 * self.chosen.len(), "answers");
        ReferenceStep::new(self)
    }

    fn summary(&self, step: &DpoStep<'_>, o: Outcome<DpoStepLog>) -> DpoSummary {
        step.summary(&self.resolved, self.chosen.len(), o)
    }
}

/// The sequences of a micro-batch of pairs: every chosen answer, then every rejected one
/// (`chosen` and `rejected` are the plan's answers or KTO's mismatched sequences).
fn pair_batch(chosen: &[Example], rejected: &[Example], idx: &[usize], pad: u32) -> Result<Batch> {
    let seqs: Vec<&Example> = idx
        .iter()
        .map(|&i| &chosen[i])
        .chain(idx.iter().map(|&i| &rejected[i]))
        .collect();
    collate(&seqs, pad, &candle_core::Device::Cpu)
}

/// `model`'s summed log-probs of the sequence pairs `idx` (chosen, rejected), `batch_size`
/// pairs a forward.
fn pair_logps(
    model: &dyn Trainee,
    (chosen, rejected): (&[Example], &[Example]),
    idx: &[usize],
    batch_size: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut c, mut r) = (Vec::with_capacity(idx.len()), Vec::with_capacity(idx.len()));
    for part in idx.chunks(batch_size) {
        let nll = model.seq_nll(&pair_batch(chosen, rejected, part, model.pad_id())?)?;
        let k = part.len();
        c.extend(nll[..k].iter().map(|x| -x));
        r.extend(nll[k..].iter().map(|x| -x));
    }
    Ok((c, r))
}

/// KTO's reference point for a step over the pairs `idx`: the mean over their mismatched
/// sequences of log pi - log pi_ref at the current weights, floored at 0.
fn reference_point(
    model: &dyn Trainee,
    p: &PairPlan,
    refs: &Reference,
    idx: &[usize],
    batch_size: usize,
) -> Result<f64> {
    let (c, r) = pair_logps(model, (&p.kl_chosen, &p.kl_rejected), idx, batch_size)?;
    let reference: Vec<f64> = idx
        .iter()
        .map(|&i| refs.kl_chosen[i])
        .chain(idx.iter().map(|&i| refs.kl_rejected[i]))
        .collect();
    kto_z0(&[c, r].concat(), &reference)
}

/// KTO's z0 from the policy's and the reference's log-probs of the same mismatched
/// sequences: their mean difference, floored at 0 (a non-finite mean is an error, not 0).
pub fn kto_z0(policy: &[f64], reference: &[f64]) -> Result<f64> {
    let sum: f64 = policy.iter().zip(reference).map(|(p, r)| p - r).sum();
    let z0 = sum / policy.len() as f64;
    if !z0.is_finite() {
        bail!("KTO's reference point (the KL estimate) is {z0} (not finite); lower the learning rate or check the weights and data");
    }
    Ok(z0.max(0.0))
}

/// DPO's step (see the module doc), with the reference log-probs it computes or reads
/// before the first step.
pub type DpoStep<'a> = ReferenceStep<'a, PairPlan>;

impl AgainstReference for PairPlan {
    type Reference = Reference;
    type Log = DpoStepLog;
    const LABEL: &'static str = "dpo";
    fn reference(&self, model: &mut dyn Trainee, out: &Path) -> Result<(Reference, bool)> {
        let (p, s) = (self, &self.resolved.settings);
        let (cfg, path) = (&s.train, out.join(REFERENCE_FILE));
        if cfg.dpo.dpo_loss == DpoLoss::Simpo {
            // SimPO has no reference model: zeros, neither computed nor cached.
            let zeros = vec![0.0; p.chosen.len()];
            let r = Reference {
                start_sha256: s.start_sha256.clone(),
                data_sha256: s.data_sha256.clone(),
                chosen: zeros.clone(),
                rejected: zeros,
                kl_chosen: Vec::new(),
                kl_rejected: Vec::new(),
            };
            return Ok((r, false));
        }
        let lens = [
            p.chosen.len(),
            p.rejected.len(),
            p.kl_chosen.len(),
            p.kl_rejected.len(),
        ];
        cached_or_computed(&path, s, &lens, || {
            let order: Vec<usize> = (0..p.chosen.len()).collect();
            let pairs = (&p.chosen[..], &p.rejected[..]);
            let (chosen, rejected) = pair_logps(model, pairs, &order, cfg.batch_size)?;
            let (kl_chosen, kl_rejected) = if p.kl_chosen.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let mismatched = (&p.kl_chosen[..], &p.kl_rejected[..]);
                pair_logps(model, mismatched, &order, cfg.batch_size)?
            };
            Ok(Reference {
                start_sha256: s.start_sha256.clone(),
                data_sha256: s.data_sha256.clone(),
                chosen,
                rejected,
                kl_chosen,
                kl_rejected,
            })
        })
    }

    /// Per micro-batch of `batch_size` pairs, one forward, the pairs' terms, one weighted
    /// backward; then clip and AdamW.
    fn step(
        &self,
        refs: &Reference,
        model: &mut dyn Trainee,
        idx: &[usize],
        lr: f64,
    ) -> Result<DpoStepLog> {
        let (p, cfg) = (self, &self.resolved.settings.train);
        let n = idx.len() as f64;
        // KTO's z0 from the weights before this step's update (no gradient flows through it).
        let kl = match cfg.dpo.dpo_loss {
            DpoLoss::Kto => Some(reference_point(model, p, refs, idx, cfg.batch_size)?),
            _ => None,
        };
        let micro = MicroBatches::new(idx, cfg.batch_size, model.pad_id(), |c, pad| {
            pair_batch(&p.chosen, &p.rejected, c, pad)
        })?;
        let loss = |t: &PairTerms| t.loss;
        let (base, terms) = micro.weighted_step(
            model,
            &step_settings(cfg, lr),
            ("DPO", loss),
            |chunk, nll| {
                let pair_refs = chunk.iter().map(|&i| (refs.chosen[i], refs.rejected[i]));
                let lens = chunk
                    .iter()
                    .map(|&i| (loss_tokens(&p.chosen[i]), loss_tokens(&p.rejected[i])));
                Ok(pair_weights(
                    &cfg.dpo,
                    nll,
                    pair_refs,
                    lens,
                    n,
                    kl.unwrap_or(0.0),
                ))
            },
        )?;
        let mean = |f: fn(&PairTerms) -> f64| terms.iter().map(f).sum::<f64>() / n;
        Ok(DpoStepLog {
            base,
            chosen_reward: mean(|t| t.chosen_reward),
            rejected_reward: mean(|t| t.rejected_reward),
            margin: mean(|t| t.chosen_reward - t.rejected_reward),
            accuracy: mean(|t| f64::from(u8::from(t.chosen_reward > t.rejected_reward))),
            kl,
        })
    }
}

/// The lines of a JSON-lines log; a last line cut by a kill is dropped.
pub use super::sft::read_log_as as read_log;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::backprop::tests::{assert_same_grads, tiny};
    use candle_core::Device;
    use candle_core::Tensor;

    #[test]
    fn fused_weighted_gradient_equals_autograd() {
        // Four sequences of unequal length (right-padded), one weight each, of both signs.
        let ids: Vec<u32> = (0..4 * 7).map(|i| (i * 7 + 3) % 50).collect();
        let mut targets: Vec<i64> = (0..4 * 7).map(|i| (i * 5 + 1) % 50).collect();
        for i in [0, 7, 8, 14, 26, 27] {
            targets[i] = -100;
        }
        let ids = Tensor::from_vec(ids, (4, 7), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(targets, (4, 7), &Device::Cpu).unwrap();
        let weights = [0.3, -0.7, 0.05, -0.2];
        for (family, tied) in [("llama", false), ("llama", true), ("qwen2", false)] {
            let model = tiny(family, tied);
            assert!(crate::train::backprop::usable(&model));
            let mut seen = Vec::new();
            let mut weigh = |nll: &[f64]| {
                seen.push(nll.to_vec());
                Ok(weights.to_vec())
            };
            let (na, ga) =
                autograd_weighted_grads(&model, &ids, &targets, None, &mut weigh).unwrap();
            let (nb, gb) = crate::train::backprop::seq_nll_and_weighted_grads(
                &model, &ids, &targets, None, &mut weigh,
            )
            .unwrap();
            // Both paths hand the weighing the NLLs they return.
            assert_eq!(seen, vec![na.clone(), nb.clone()]);
            for (a, b) in na.iter().zip(&nb) {
                assert!(
                    *a > 0.0 && (a - b).abs() < 1e-4 * a,
                    "{family}: nll {a} vs {b}"
                );
            }
            assert_same_grads(&ga, &gb, &format!("{family} tied={tied}"));
        }
    }

    #[test]
    fn weights_equal_uniform_scale_and_sum_per_sequence() {
        // All weights equal to s: the same gradient as nll_and_grads with scale s, and the
        // per-sequence NLLs sum to its total.
        let model = tiny("llama", false);
        let ids = Tensor::from_vec(
            (0..18u32).map(|i| (i * 3) % 50).collect(),
            (2, 9),
            &Device::Cpu,
        )
        .unwrap();
        let targets = Tensor::from_vec(
            (0..18i64).map(|i| (i * 11) % 50).collect(),
            (2, 9),
            &Device::Cpu,
        )
        .unwrap();
        let (total, gu) =
            crate::train::backprop::nll_and_grads(&model, &ids, &targets, 0.5, None).unwrap();
        let (seq, gw) = crate::train::backprop::seq_nll_and_weighted_grads(
            &model,
            &ids,
            &targets,
            None,
            &mut |_| Ok(vec![0.5, 0.5]),
        )
        .unwrap();
        assert!((seq.iter().sum::<f64>() - total).abs() < 1e-4 * total);
        for ((name, a), (_, b)) in gu.0.iter().zip(&gw.0) {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-5 * scale.max(1e-12), "{name}: {diff}");
        }
    }

    #[test]
    fn pair_terms_are_the_dpo_ipo_simpo_and_kto_formulas() {
        let sig = DpoConfig {
            method: Objective::Dpo,
            dpo_beta: 0.5,
            dpo_loss: DpoLoss::Sigmoid,
            simpo_gamma: 0.5,
            ..DpoConfig::DEFAULT
        };
        let t = pair_terms(&sig, 0.0, 0.0, 0.0);
        assert!((t.loss - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((t.d_nll_chosen - 0.25).abs() < 1e-15 && (t.d_nll_rejected + 0.25).abs() < 1e-15);
        // Finite differences of the loss in the two NLLs (dc = -NLL_c + const).
        let (dc, dr) = (1.3, -0.4);
        for cfg in [
            sig.clone(),
            DpoConfig {
                dpo_loss: DpoLoss::Ipo,
                ..sig.clone()
            },
            DpoConfig {
                dpo_loss: DpoLoss::Simpo,
                simpo_gamma: 0.3,
                ..sig.clone()
            },
            DpoConfig {
                dpo_loss: DpoLoss::Kto,
                ..sig.clone()
            },
        ] {
            let z0 = 0.7;
            let terms = |dc: f64, dr: f64| pair_terms(&cfg, dc, dr, z0);
            let t = terms(dc, dr);
            let e = 1e-6;
            let fd_c = (terms(dc - e, dr).loss - terms(dc + e, dr).loss) / (2.0 * e);
            let fd_r = (terms(dc, dr - e).loss - terms(dc, dr + e).loss) / (2.0 * e);
            assert!((fd_c - t.d_nll_chosen).abs() < 1e-6, "{cfg:?}");
            assert!((fd_r - t.d_nll_rejected).abs() < 1e-6, "{cfg:?}");
            assert!(
                (t.chosen_reward - 0.65).abs() < 1e-12 && (t.rejected_reward + 0.2).abs() < 1e-12
            );
        }
        let ipo = pair_terms(
            &DpoConfig {
                dpo_loss: DpoLoss::Ipo,
                ..sig.clone()
            },
            1.0,
            0.0,
            0.0,
        );
        assert!(
            (ipo.loss - 0.0).abs() < 1e-15,
            "h = 1/(2 beta) is IPO's target"
        );
        // Large margins stay finite.
        let far = pair_terms(&sig, -4000.0, 0.0, 0.0);
        assert!(far.loss.is_finite() && (far.loss - 2000.0).abs() < 1e-9);
        // SimPO at equal mean log-probs: -log sigmoid(-gamma).
        let simpo = DpoConfig {
            dpo_loss: DpoLoss::Simpo,
            simpo_gamma: 0.3,
            ..sig.clone()
        };
        let t = pair_terms(&simpo, -2.0, -2.0, 0.0);
        assert!((t.loss - (1.0 + 0.3f64.exp()).ln()).abs() < 1e-15);
        // KTO: at the reference (r = z0 = 0) each answer's loss is 1 - sigmoid(0) = 1/2 and
        // its weight beta/8 (half of beta sigmoid'(0)); the answers are scored alone, so z0
        // moves the two terms in opposite directions and the pair's margin does not decide.
        let kto = DpoConfig {
            dpo_loss: DpoLoss::Kto,
            ..sig.clone()
        };
        let t = pair_terms(&kto, 0.0, 0.0, 0.0);
        assert!((t.loss - 0.5).abs() < 1e-15);
        assert!((t.d_nll_chosen - 0.5 / 8.0).abs() < 1e-15);
        assert!((t.d_nll_rejected + 0.5 / 8.0).abs() < 1e-15);
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let t = pair_terms(&kto, 1.0, 3.0, 2.0);
        let want = ((1.0 - s(0.5 * (1.0 - 2.0))) + (1.0 - s(0.5 * (2.0 - 3.0)))) / 2.0;
        assert!((t.loss - want).abs() < 1e-15, "{} vs {want}", t.loss);
        let far = pair_terms(&kto, -4000.0, 4000.0, 0.0);
        assert!((far.loss - 1.0).abs() < 1e-15 && far.d_nll_chosen == 0.0);
    }

    /// z0 is the mean log-prob gain over the reference, floored at 0; a NaN is refused, not
    /// floored (f64::max would turn it into 0).
    #[test]
    fn kto_z0_is_the_floored_mean_and_refuses_nan() {
        assert_eq!(kto_z0(&[-1.0, -2.0], &[-3.0, -2.0]).unwrap(), 1.0);
        assert_eq!(kto_z0(&[-4.0, -2.0], &[-3.0, -2.0]).unwrap(), 0.0);
        let e = kto_z0(&[f64::NAN, -2.0], &[-3.0, -2.0]).unwrap_err();
        assert!(e.to_string().contains("not finite"), "{e}");
    }

    /// SimPO's weights are the derivatives of the mean loss in each sequence's summed NLL,
    /// through the division by the answer's length; the other losses ignore the lengths.
    #[test]
    fn simpo_weights_follow_the_chain_rule_through_the_length() {
        let cfg = DpoConfig {
            method: Objective::Dpo,
            dpo_beta: 2.0,
            dpo_loss: DpoLoss::Simpo,
            simpo_gamma: 0.5,
            ..DpoConfig::DEFAULT
        };
        let nll = [6.0, 4.0, 9.0, 2.5];
        let lens = [(3, 8), (5, 2)];
        let loss = |nll: &[f64]| {
            let zeros = std::iter::repeat((0.0, 0.0));
            let (_, t) = pair_weights(&cfg, nll, zeros, lens.into_iter(), 2.0, 0.0);
            t.iter().map(|t| t.loss).sum::<f64>() / 2.0
        };
        let (w, _) = pair_weights(
            &cfg,
            &nll,
            std::iter::repeat((0.0, 0.0)),
            lens.into_iter(),
            2.0,
            0.0,
        );
        for i in 0..4 {
            let e = 1e-6;
            let (mut up, mut down) = (nll, nll);
            up[i] += e;
            down[i] -= e;
            let fd = (loss(&up) - loss(&down)) / (2.0 * e);
            assert!((fd - w[i]).abs() < 1e-8, "sequence {i}: {fd} vs {}", w[i]);
        }
        let sig = DpoConfig {
            dpo_loss: DpoLoss::Sigmoid,
            simpo_gamma: 0.5,
            ..cfg
        };
        let ones = pair_weights(
            &sig,
            &nll,
            std::iter::repeat((0.0, 0.0)),
            std::iter::repeat((1, 1)),
            2.0,
            0.0,
        );
        let lens = pair_weights(
            &sig,
            &nll,
            std::iter::repeat((0.0, 0.0)),
            lens.into_iter(),
            2.0,
            0.0,
        );
        assert_eq!(ones, lens);
    }
}
