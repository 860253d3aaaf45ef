//! KL(model || base) on the model's own generations (the paper's Table 3 quantity).
//!
//! For each generation, both models read prompt + generated tokens in one causal forward.
//! At every position where the model chose a token of its response (and the position where
//! it chose EOS, when the response ended with one), the exact KL over the vocabulary is
//! `sum_v p(v) (log p(v) - log q(v))` with p the model's and q the base's next-token
//! distribution. A cell's KL is the mean over all those positions of all prompts. Because
//! the positions are visited along the model's own samples (at temperature 1), this mean is
//! an estimate of the per-token KL rate between the two models' response distributions.
//!
//! The same model on both sides gives exactly 0: the two log-softmaxes are the same bits.
//! Each model's logits come from wherever it runs ([`Evaluated::scoring_logits`]: the fused
//! CPU path, or libtorch on the cell's device); the KL itself is taken on the CPU in f32.
//!
//! The same pass keeps the KL at each response position (position 1 = the first response
//! token), so [`by_position`] can say where along the response two models differ (Qi et al.
//! 2024: alignment acts mainly on the first tokens), and the base model's NLL of the chosen
//! response tokens (the samples' coherence under the base model). Both come free with the
//! forward passes the total KL already needs.

use super::evaluated::Evaluated;
use crate::train::loss::log_softmax;
use anyhow::{bail, ensure, Result};
use candle_core::{Device, Tensor, D};

/// One generation to measure.
#[derive(Debug, Clone, Copy)]
pub struct Continuation<'a> {
    /// The prompt's token ids, exactly as generation saw them (template applied).
    pub prompt: &'a [u32],
    /// The generated tokens, without the EOS.
    pub tokens: &'a [u32],
    /// Whether generation stopped at an EOS (then its position counts too).
    pub ended: bool,
}

impl Continuation<'_> {
    /// Positions at which the model chose a token.
    pub fn positions(&self) -> usize {
        self.tokens.len() + usize::from(self.ended)
    }
}

/// The KL summed over one generation's positions.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceKl {
    pub sum: f64,
    pub positions: usize,
    /// The KL at each position, in order (`positions` values summing to `sum`).
    pub per_position: Vec<f64>,
    /// −Σ log q(token) over the generated tokens (EOS excluded) under the base model.
    pub base_nll: f64,
}

impl SequenceKl {
    /// Mean per-token KL of this generation.
    pub fn mean(&self) -> f64 {
        if self.positions == 0 {
            0.0
        } else {
            self.sum / self.positions as f64
        }
    }
}

/// Per-generation KL(model || base), `batch_size` sequences per forward (right-padded with
/// `pad_id`, which causal attention never lets a real position see). `on_done` gets the
/// number of sequences finished. Passing the same model twice runs one forward, not two
/// (the KL is then 0 and `base_nll` the model's own NLL of its samples).
pub fn sequence_kl(
    model: &dyn Evaluated,
    base: &dyn Evaluated,
    seqs: &[Continuation<'_>],
    pad_id: u32,
    batch_size: usize,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<SequenceKl>> {
    ensure!(batch_size > 0, "KL batch size must be positive");
    if model.vocab_size() != base.vocab_size() {
        bail!(
            "cannot compare the model with the base model: their vocabularies differ ({} vs {} \
             tokens)",
            model.vocab_size(),
            base.vocab_size()
        );
    }
    // The backends hand logits back on the CPU; the KL is taken there.
    let dev = &Device::Cpu;
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size) {
        let b = chunk.len();
        let t = chunk
            .iter()
            .map(|s| s.prompt.len() + s.tokens.len())
            .max()
            .unwrap_or(0);
        let mut ids = Vec::with_capacity(b * t);
        // Flat (row * t + position) indices of the positions that chose a token.
        let mut rows: Vec<u32> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        // The token chosen at each row (0 at an EOS row, whose NLL is not counted).
        let mut chosen: Vec<u32> = Vec::new();
        for (r, s) in chunk.iter().enumerate() {
            if s.prompt.is_empty() {
                bail!("cannot measure KL after an empty prompt (no tokens)");
            }
            ids.extend_from_slice(s.prompt);
            ids.extend_from_slice(s.tokens);
            ids.extend(std::iter::repeat_n(
                pad_id,
                t - s.prompt.len() - s.tokens.len(),
            ));
            // Position prompt_len - 1 + k predicts the k-th response token (or the EOS).
            let start = s.prompt.len() - 1;
            for k in 0..s.positions() {
                rows.push((r * t + start + k) as u32);
                owner.push(r);
                chosen.push(s.tokens.get(k).copied().unwrap_or(0));
            }
        }
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let idx = Tensor::from_vec(rows, owner.len(), dev)?;
        // One model at a time, keeping only the chosen rows: (n, vocab) each.
        let pick = |m: &dyn Evaluated| -> Result<Tensor> {
            let logits = m.scoring_logits(&ids)?; // (b, t, vocab)
            let v = logits.dim(D::Minus1)?;
            Ok(log_softmax(
                &logits.reshape((b * t, v))?.index_select(&idx, 0)?,
            )?)
        };
        let lp = pick(model)?;
        let lq = if std::ptr::addr_eq(model, base) {
            lp.clone()
        } else {
            pick(base)?
        };
        let kl: Vec<f32> = (lp.exp()? * (&lp - &lq)?)?.sum(D::Minus1)?.to_vec1()?;
        let n = chosen.len();
        let at = Tensor::from_vec(chosen, (n, 1), dev)?;
        let lq_chosen: Vec<f32> = lq.gather(&at, 1)?.flatten_all()?.to_vec1()?;
        let mut acc = vec![
            SequenceKl {
                sum: 0.0,
                positions: 0,
                per_position: Vec::new(),
                base_nll: 0.0,
            };
            b
        ];
        for ((k, r), q) in kl.into_iter().zip(owner).zip(lq_chosen) {
            let a = &mut acc[r];
            if a.positions < chunk[r].tokens.len() {
                a.base_nll -= q as f64;
            }
            a.sum += k as f64;
            a.positions += 1;
            a.per_position.push(k as f64);
        }
        out.extend(acc);
        on_done(b);
    }
    Ok(out)
}

/// Token-weighted mean over generations: the KL of a cell.
pub fn pooled_mean(kls: &[SequenceKl]) -> f64 {
    let positions: usize = kls.iter().map(|k| k.positions).sum();
    if positions == 0 {
        return 0.0;
    }
    kls.iter().map(|k| k.sum).sum::<f64>() / positions as f64
}

/// The mean KL at one response position over the generations that reach it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PositionKl {
    /// 1 = the first response token.
    pub position: usize,
    pub mean: f64,
    /// Generations long enough to have this position.
    pub sequences: usize,
}

/// KL by response position, averaged over the generations that reach each position. The
/// token-weighted [`pooled_mean`] is the `sequences`-weighted mean of these.
pub fn by_position(kls: &[SequenceKl]) -> Vec<PositionKl> {
    let longest = kls.iter().map(|k| k.per_position.len()).max().unwrap_or(0);
    (0..longest)
        .map(|i| {
            let xs: Vec<f64> = kls
                .iter()
                .filter_map(|k| k.per_position.get(i))
                .copied()
                .collect();
            PositionKl {
                position: i + 1,
                mean: xs.iter().sum::<f64>() / xs.len() as f64,
                sequences: xs.len(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::load_model;
    use candle_core::Device;

    fn tiny() -> crate::model::LoadedModel {
        let dir = format!(
            "{}/tests/fixtures/models/tiny-llama",
            env!("CARGO_MANIFEST_DIR")
        );
        load_model(&dir, &Device::Cpu).unwrap()
    }

    /// The tiny model with one weight tensor scaled by `factor`, so it differs from [`tiny`].
    fn perturbed(name: &str, factor: f64) -> crate::model::LoadedModel {
        let m = tiny();
        let var = m.model.params.get(name).unwrap();
        var.set(&(var.as_tensor() * factor).unwrap()).unwrap();
        m
    }

    /// (prompt, response tokens, ended with EOS) triples as continuations.
    fn continuations<'a>(list: &[(&'a [u32], &'a [u32], bool)]) -> Vec<Continuation<'a>> {
        list.iter()
            .map(|&(prompt, tokens, ended)| Continuation {
                prompt,
                tokens,
                ended,
            })
            .collect()
    }

    #[test]
    fn kl_of_a_model_to_itself_is_exactly_zero() {
        let a = tiny();
        let b = tiny();
        let p1 = [5u32, 9, 17, 33];
        let t1 = [40u32, 41, 42];
        let p2 = [7u32, 8];
        let t2 = [100u32, 3, 250, 6, 6, 9];
        let seqs = continuations(&[(&p1, &t1, true), (&p2, &t2, false), (&p2, &[], true)]);
        for batch in [1, 3] {
            let same = sequence_kl(&a, &a, &seqs, 2, batch, |_| {}).unwrap();
            let copy = sequence_kl(&a, &b, &seqs, 2, batch, |_| {}).unwrap();
            for k in same.iter().chain(&copy) {
                assert_eq!(k.sum, 0.0);
            }
            let positions: Vec<usize> = same.iter().map(|k| k.positions).collect();
            assert_eq!(positions, [4, 6, 1]);
            assert_eq!(pooled_mean(&same), 0.0);
        }
    }

    #[test]
    fn kl_matches_a_direct_computation_and_is_positive_for_different_models() {
        let a = tiny();
        let b = perturbed("model.layers.0.mlp.up_proj.weight", 3.0);
        let p = [5u32, 9, 17];
        let t = [40u32, 41];
        let seqs = [Continuation {
            prompt: &p,
            tokens: &t,
            ended: true,
        }];
        let got = sequence_kl(&a, &b, &seqs, 2, 4, |_| {}).unwrap()[0].clone();
        assert_eq!(got.positions, 3);
        assert!(got.sum > 0.0);
        // Direct: full-sequence log-probs at positions 2, 3, 4.
        let ids = Tensor::new(&[[5u32, 9, 17, 40, 41]], &Device::Cpu).unwrap();
        let lp: Vec<Vec<f32>> = log_softmax(&a.model.forward(&ids).unwrap().squeeze(0).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap();
        let lq: Vec<Vec<f32>> = log_softmax(&b.model.forward(&ids).unwrap().squeeze(0).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap();
        let mut want = 0.0f64;
        for pos in 2..5 {
            let mut here = 0.0f64;
            for v in 0..lp[pos].len() {
                let (x, y) = (lp[pos][v] as f64, lq[pos][v] as f64);
                here += x.exp() * (x - y);
            }
            let k = got.per_position[pos - 2];
            assert!(
                (k - here).abs() < 1e-4 * here.max(1e-3),
                "position {pos}: {k} vs {here}"
            );
            want += here;
        }
        // The base's NLL of the two chosen tokens (40 at position 2, 41 at 3; not the EOS).
        let nll = -(lq[2][40] as f64) - lq[3][41] as f64;
        assert!(
            (got.base_nll - nll).abs() < 1e-4 * nll,
            "{} vs {nll}",
            got.base_nll
        );
        assert!(
            (got.sum - want).abs() < 1e-4 * want.max(1e-3),
            "{} vs {want}",
            got.sum
        );
    }

    #[test]
    fn kl_by_position_averages_back_to_the_total_kl() {
        let a = tiny();
        let b = perturbed("model.layers.1.self_attn.q_proj.weight", 2.0);
        let (p1, p2) = ([5u32, 9, 17, 33], [7u32, 8]);
        let (t1, t2, t3) = ([40u32, 41, 42], [100u32, 3, 250, 6, 6, 9], [12u32]);
        let seqs = continuations(&[(&p1, &t1, true), (&p2, &t2, false), (&p2, &t3, true)]);
        let one = sequence_kl(&a, &b, &seqs, 2, 1, |_| {}).unwrap();
        let two = sequence_kl(&a, &b, &seqs, 2, 3, |_| {}).unwrap();
        for (x, y) in one.iter().zip(&two) {
            assert_eq!(x.per_position.len(), x.positions);
            let s: f64 = x.per_position.iter().sum();
            assert!((s - x.sum).abs() <= 1e-12 * x.sum.abs().max(1.0));
            // Padding changes the f32 rounding of a batch, not the value.
            for (u, v) in x.per_position.iter().zip(&y.per_position) {
                assert!((u - v).abs() < 1e-4 * u.abs().max(1e-2), "{u} vs {v}");
            }
        }
        let pos = by_position(&one);
        // Positions 1..=6: 3 sequences reach 1 and 2, 2 reach 3 and 4, one reaches 5 and 6.
        let reach: Vec<usize> = pos.iter().map(|p| p.sequences).collect();
        assert_eq!(reach, [3, 3, 2, 2, 1, 1]);
        let weighted: f64 = pos.iter().map(|p| p.mean * p.sequences as f64).sum::<f64>()
            / reach.iter().sum::<usize>() as f64;
        let total = pooled_mean(&one);
        assert!(total > 0.0);
        assert!(
            (weighted - total).abs() < 1e-12 * total,
            "{weighted} vs {total}"
        );
        assert!(
            (pos[1].mean
                - (one[0].per_position[1] + one[1].per_position[1] + one[2].per_position[1]) / 3.0)
                .abs()
                < 1e-15
        );
        // The same model twice: one forward, KL 0, and the NLL is the model's own.
        let own = sequence_kl(&a, &a, &seqs, 2, 3, |_| {}).unwrap();
        let via_copy = sequence_kl(&b, &b, &seqs, 2, 3, |_| {}).unwrap();
        assert!(own.iter().all(|k| k.sum == 0.0 && k.base_nll > 0.0));
        let cross = &two; // base = b: base_nll is b's NLL
        for (c, v) in cross.iter().zip(&via_copy) {
            assert!(
                (c.base_nll - v.base_nll).abs() < 1e-4 * v.base_nll,
                "{} vs {}",
                c.base_nll,
                v.base_nll
            );
        }
    }
}
