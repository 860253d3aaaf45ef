//! The causal-LM loss over the vocabulary in one pass per row: sum over counted rows of
//! logsumexp(x) - x[target] (targets of -100 do not count), without materialising the
//! log-probabilities. Backward: d x = g * (softmax(x) - onehot(target)) on counted rows.

use super::op::{FusedOp, Grads, Input, KernelOp};
use super::{grad_like, vexp, with_data, SERIAL_MAX};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 4;

/// Summed NLL (a scalar tensor) of `logits` (n, vocab) at `targets` (n values, -100 = skip).
pub fn nll_sum(logits: &Tensor, targets: Vec<i64>) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(loss_op(logits, targets)?)
}

/// The op [`nll_sum`] applies, after checking the targets against `logits` (n, vocab).
pub(crate) fn loss_op(logits: &Tensor, targets: Vec<i64>) -> Result<KernelOp<CrossEntropy>> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!("cross entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(t) = targets.iter().find(|&&t| t >= v as i64) {
        candle_core::bail!("cross entropy: target {t} is outside the vocabulary of {v}");
    }
    Ok(KernelOp(CrossEntropy {
        targets: Arc::new(targets),
        lse: Mutex::new(Vec::new()),
    }))
}

pub(crate) struct CrossEntropy {
    targets: Arc<Vec<i64>>,
    /// Per-row logsumexp saved by the forward for the backward.
    lse: Mutex<Vec<f32>>,
}

fn logsumexp(row: &[f32]) -> f32 {
    let m = vexp::max(row);
    m + vexp::sum_exp_shifted(row, m).ln()
}

impl FusedOp<1> for CrossEntropy {
    const NAME: &'static str = "fused-cross-entropy";

    fn cpu_fwd(&self, [logits]: [Input<'_>; 1]) -> Result<(Vec<f32>, Shape)> {
        let (x, v) = (logits.data, logits.dims()[1]);
        let lse: Vec<f32> = if x.len() <= SERIAL_MAX {
            x.chunks(v).map(logsumexp).collect()
        } else {
            x.par_chunks(v).map(logsumexp).collect()
        };
        // Summed in f64, in row order (deterministic and exact enough for any batch).
        let total: f64 = lse
            .iter()
            .zip(self.targets.iter())
            .enumerate()
            .filter(|(_, (_, &t))| t >= 0)
            .map(|(r, (&z, &t))| (z - x[r * v + t as usize]) as f64)
            .sum();
        if let Ok(mut slot) = self.lse.lock() {
            *slot = lse;
        }
        Ok((vec![total as f32], Shape::from(())))
    }

    fn bwd(&self, [x]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Grads<1> {
        let g = grad.to_scalar::<f32>()?;
        let (_, v) = x.dims2()?;
        let saved = self.lse.lock().map(|l| l.clone()).unwrap_or_default();
        let dx = with_data(x, |x| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(v * ROWS_PER_TASK)
                .zip(x.par_chunks(v * ROWS_PER_TASK))
                .enumerate()
                .for_each(|(c, (dc, xc))| {
                    for (i, (dr, xr)) in dc.chunks_mut(v).zip(xc.chunks(v)).enumerate() {
                        let r = c * ROWS_PER_TASK + i;
                        let t = self.targets[r];
                        if t < 0 {
                            continue;
                        }
                        let z = saved.get(r).copied().unwrap_or_else(|| logsumexp(xr));
                        vexp::scaled_exp_shifted(dr, xr, z, g);
                        dr[t as usize] -= g;
                    }
                });
            Ok(dx)
        })?;
        Ok([grad_like(dx, x)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_fd, grads, max_abs_diff, randn};
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_reference_and_finite_differences() {
        let logits = (randn(&[6, 11], 1) * 3.0).unwrap();
        let targets = vec![3i64, -100, 0, 10, 5, -100];
        let t = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let one = Tensor::new(1f32, &Device::Cpu).unwrap();
        let tg = targets.clone();
        let fused = move |x: &[Tensor]| nll_sum(&x[0], tg.clone()).unwrap();
        let reference = |x: &[Tensor]| {
            crate::train::loss::nll_sum_reference(
                &x[0].unsqueeze(0).unwrap(),
                &t.unsqueeze(0).unwrap(),
            )
            .unwrap()
        };
        let (yf, gf) = grads(std::slice::from_ref(&logits), &one, &fused);
        let (yr, gr) = grads(std::slice::from_ref(&logits), &one, &reference);
        assert!(max_abs_diff(&yf, &yr) < 1e-4);
        assert!(max_abs_diff(&gf[0], &gr[0]) < 1e-5);
        let loss = |x: &[Tensor]| fused(x).to_scalar::<f32>().unwrap() as f64;
        check_fd(&[logits], 0, &gf[0], &loss, 2e-2);
    }

    #[test]
    fn rejects_targets_outside_the_vocabulary() {
        let logits = randn(&[2, 4], 1);
        let err = nll_sum(&logits, vec![1, 4]).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary"), "{err}");
    }
}
