//! The trainers' gradient and scoring entry points: the hand-written backward beside the
//! model (`model::llama::backward`) where it applies ([`usable`]), candle's autograd on
//! `Llama::forward` / `forward_train` otherwise (other families, dtypes or devices, kernels
//! switched off). The two paths are checked against each other in the tests below.

pub use crate::model::llama::backward::usable;
use crate::model::llama::backward::{self, Seed, SeqWeigh};
use crate::model::lora::LoraDropout;
use crate::model::Llama;
use crate::train::optim::Grads;
use anyhow::Result;
use candle_core::{DType, Tensor};

/// Logits (b, t, vocab) of `ids` (b, t) for scoring, where no gradient is needed: where
/// [`usable`], the training forward without a graph; otherwise `Llama::forward`.
pub fn scoring_logits(model: &Llama, ids: &Tensor) -> Result<Tensor> {
    if !usable(model) {
        return Ok(model.forward(ids)?.detach());
    }
    backward::scoring_logits(model, ids)
}

/// The summed NLL of `targets` (b, t) i64 (-100 = not counted) after `ids` (b, t) u32, for
/// scoring (eval-loss): where [`usable`], the training forward without a graph over blocks
/// of rows (the full logits never exist at once); otherwise through `Llama::forward`. Equal
/// to `nll_sum` on the full logits.
pub fn scoring_nll(model: &Llama, ids: &Tensor, targets: &Tensor) -> Result<f64> {
    if !usable(model) {
        let nll = crate::train::loss::nll_sum(&model.forward(ids)?, targets)?;
        return Ok(nll.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    }
    backward::scoring_nll(model, ids, targets)
}

/// The summed NLL of `targets` (b, t) i64 (-100 = not counted) after `ids` (b, t) u32, and
/// the gradient of `scale` * NLL for every trainable parameter, in `model.trainable()` order
/// (zeros for a parameter the loss does not reach), with the LoRA dropout `drop` of a
/// training step if given, by hand (the caller checked [`usable`]). Equal, to rounding, to
/// autograd on `Llama::forward_train`.
pub fn nll_and_grads(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    scale: f64,
    drop: Option<&LoraDropout>,
) -> Result<(f64, Grads)> {
    let (nll, _, grads) = backward::nll_and_grads(model, ids, targets, Seed::Uniform(scale), drop)?;
    Ok((nll, Grads(grads)))
}

/// The summed NLL of each sequence (row of `targets`, -100 = not counted) and the gradient of
/// sum_s w_s * NLL_s, where `weigh` turns the forward's per-sequence NLLs into the weights
/// w_s (DPO's per-pair scalars; see `train::dpo`). One forward: the weights scale the rows of
/// the loss's logit gradient before the shared backward. `drop` as in [`nll_and_grads`].
pub fn seq_nll_and_weighted_grads(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    drop: Option<&LoraDropout>,
    weigh: &mut SeqWeigh<'_>,
) -> Result<(Vec<f64>, Grads)> {
    let (_, seq, grads) =
        backward::nll_and_grads(model, ids, targets, Seed::PerSequence(weigh), drop)?;
    Ok((seq, Grads(grads)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::init::init_params;
    use crate::model::ModelConfig;
    use crate::train::loss::nll_sum;
    use candle_core::Device;

    /// A tiny model of `family` with grouped-query heads (4 query, 2 kv).
    pub(crate) fn tiny(family: &str, tied: bool) -> Llama {
        let cfg = ModelConfig::from_json_str(&format!(
            r#"{{"model_type":"{family}","vocab_size":50,"hidden_size":32,"intermediate_size":40,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rms_norm_eps":1e-6,"max_position_embeddings":64,"tie_word_embeddings":{tied},
            "initializer_range":0.2}}"#
        ))
        .unwrap();
        let params = init_params(&cfg, 7, &Device::Cpu).unwrap();
        Llama::new(cfg, params, &Device::Cpu).unwrap()
    }

    /// The gradient through candle's autograd on the same (fused) forward.
    fn autograd(model: &Llama, ids: &Tensor, targets: &Tensor, scale: f64) -> (f64, Grads) {
        let nll = nll_sum(&model.forward(ids).unwrap(), targets).unwrap();
        let total = nll
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let store = (nll * scale).unwrap().backward().unwrap();
        (total, Grads::from_store(&model.params, &store).unwrap())
    }

    #[test]
    fn equals_autograd_and_the_graph_forward_for_llama_and_qwen2_tied_or_not() {
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 + 3) % 50).collect();
        let mut targets: Vec<i64> = (0..2 * 9).map(|i| (i * 5 + 1) % 50).collect();
        targets[0] = -100; // a prompt position, not counted
        targets[10] = -100;
        let ids = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(targets, (2, 9), &Device::Cpu).unwrap();
        for (family, tied) in [("llama", false), ("llama", true), ("qwen2", false)] {
            let model = tiny(family, tied);
            let (nll_a, ga) = autograd(&model, &ids, &targets, 0.25);
            let (nll_b, gb) = nll_and_grads(&model, &ids, &targets, 0.25, None).unwrap();
            let whole = nll_sum(&model.forward(&ids).unwrap(), &targets).unwrap();
            let whole = whole.to_scalar::<f32>().unwrap() as f64;
            let blocks = scoring_nll(&model, &ids, &targets).unwrap();
            assert!(
                (whole - blocks).abs() < 1e-5 * whole.abs(),
                "{family}: scoring nll"
            );
            let want = model.forward(&ids).unwrap();
            let got = scoring_logits(&model, &ids).unwrap();
            assert_eq!(want.dims(), got.dims());
            let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_scalar::<f32>().unwrap() < 1e-5,
                "{family}: logits differ"
            );
            assert!(
                (nll_a - nll_b).abs() < 1e-4 * nll_a.abs(),
                "{family}: nll {nll_a} vs {nll_b}"
            );
            if family == "qwen2" {
                assert!(
                    ga.0.iter().any(|(n, _)| n.ends_with("q_proj.bias")),
                    "qwen2 has biases"
                );
            }
            assert_same_grads(&ga, &gb, &format!("{family} tied={tied}"));
        }
    }

    /// `b` holds the tensors of `a`, in its order, each within 1e-4 of `a`'s largest entry,
    /// and every tensor of `a` has a gradient.
    pub(crate) fn assert_same_grads(a: &Grads, b: &Grads, what: &str) {
        assert_eq!(a.0.len(), b.0.len());
        for ((name, a), (name_b, b)) in a.0.iter().zip(&b.0) {
            assert_eq!(name, name_b);
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{what}: {name} has no gradient");
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "{what}: {name} differs by {diff} (largest entry {scale})"
            );
        }
    }

    #[test]
    fn out_of_vocabulary_ids_are_an_error() {
        let model = tiny("llama", false);
        let ids = Tensor::from_vec(vec![3u32, 77], (1, 2), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(vec![1i64, 2], (1, 2), &Device::Cpu).unwrap();
        let Err(err) = nll_and_grads(&model, &ids, &targets, 1.0, None) else {
            panic!("an id past the vocabulary was accepted");
        };
        assert!(format!("{err:#}").contains("vocabulary"), "{err:#}");
    }
}
