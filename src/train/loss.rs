//! The causal-LM loss as transformers computes it with labels = -100: the summed negative
//! log-likelihood over counted targets (the caller divides by the step's token count, so
//! gradient accumulation weights by tokens). On CPU f32 it runs the fused cross-entropy
//! kernel (`model::fused::cross_entropy`); [`nll_sum_reference`] is the op-by-op original.

use crate::model::fused::{self, Kernel};
use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// Sum of -log p(target) over positions whose target is not -100.
/// `logits` (b, t, vocab) f32, `targets` (b, t) i64.
pub fn nll_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if fused::usable(Kernel::CrossEntropy, &[logits]) {
        let v = logits.dim(D::Minus1)?;
        let targets = targets
            .flatten_all()?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        return Ok(fused::cross_entropy::nll_sum(
            &logits.reshape(((), v))?,
            targets,
        )?);
    }
    nll_sum_reference(logits, targets)
}

/// The reference path of [`nll_sum`], from basic differentiable ops.
pub fn nll_sum_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), v))?; // (n, vocab)
    let targets = targets.flatten_all()?;
    let mask = targets.ge(0i64)?.to_dtype(DType::F32)?; // (n)
    let idx = targets.clamp(0i64, (v - 1) as i64)?.to_dtype(DType::U32)?;
    let logp = log_softmax(&logits)?;
    let picked = logp.gather(&idx.unsqueeze(1)?, 1)?.squeeze(1)?; // (n)
    Ok((picked * mask)?.sum_all()?.neg()?)
}

/// log softmax from basic ops (differentiable); the max is detached (shift invariance).
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let s = x.broadcast_sub(&m)?;
    let lse = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    s.broadcast_sub(&lse)
}
