//! RMSNorm as one pass per row: y = x / sqrt(mean(x^2) + eps) * w (Gemma: * (1 + w)),
//! with the analytic backward dx = (g*w - xn * mean(g*w*xn)) / s and dw = sum_rows(g * xn).

use super::op::{FusedOp, Grads, Input, KernelOp};
use super::{grad_like, with_data, Kernel, SERIAL_MAX};
use candle_core::{Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows per parallel task: enough work to amortise the task, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// The slow, differentiable reference (basic candle ops).
pub fn rms_norm_reference(x: &Tensor, w: &Tensor, eps: f64, gemma: bool) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = x.broadcast_div(&(var + eps)?.sqrt()?)?;
    if gemma {
        xn.broadcast_mul(&(w + 1.0)?)
    } else {
        xn.broadcast_mul(w)
    }
}

/// RMSNorm over the last dim of `x`, fused when the kernel is on and the tensors allow it.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, gemma: bool) -> Result<Tensor> {
    if super::usable(Kernel::RmsNorm, &[x, w]) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, KernelOp(RmsNorm { eps, gemma }))
    } else {
        rms_norm_reference(x, w, eps, gemma)
    }
}

pub(crate) struct RmsNorm {
    pub(crate) eps: f64,
    pub(crate) gemma: bool,
}

impl RmsNorm {
    fn weight(&self, w: &[f32]) -> Vec<f32> {
        w.iter()
            .map(|&v| if self.gemma { v + 1.0 } else { v })
            .collect()
    }

    /// The normed rows of `x` (rows of the weight's length; `dims` only names the shape in
    /// errors), with the checkpoint's weight `w` (Gemma's stored as w - 1).
    pub(crate) fn forward(&self, x: &[f32], w: &[f32], dims: &[usize]) -> Result<Vec<f32>> {
        let w = self.weight(w);
        let h = w.len();
        if h == 0 || !x.len().is_multiple_of(h) || dims.last().is_some_and(|&d| d != h) {
            candle_core::bail!("fused rms norm: weight length {h} does not match {dims:?}");
        }
        let mut y = vec![0f32; x.len()];
        let rows = |(yc, xc): (&mut [f32], &[f32])| {
            for (yr, xr) in yc.chunks_mut(h).zip(xc.chunks(h)) {
                let s = self.denom(xr);
                for ((o, &v), &wv) in yr.iter_mut().zip(xr).zip(&w) {
                    *o = v / s * wv;
                }
            }
        };
        let n = h * ROWS_PER_TASK;
        if x.len() <= SERIAL_MAX {
            y.chunks_mut(n).zip(x.chunks(n)).for_each(rows);
        } else {
            y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(rows);
        }
        Ok(y)
    }

    /// 1 / sqrt(mean(x^2) + eps) of one row, in f32 as the reference computes it.
    fn denom(&self, row: &[f32]) -> f32 {
        let ss = super::vexp::sum_squares(row);
        (ss / row.len() as f32 + self.eps as f32).sqrt()
    }
}

impl FusedOp<2> for RmsNorm {
    const NAME: &'static str = "fused-rms-norm";

    fn cpu_fwd(&self, [x, w]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let y = self.forward(x.data, w.data, x.dims())?;
        Ok((y, x.layout.shape().clone()))
    }

    fn bwd(&self, [x, w]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Grads<2> {
        let h = w.elem_count();
        let wv = with_data(w, |w| Ok(self.weight(w)))?;
        let (dx, dw) = with_data(x, |x| {
            with_data(grad, |g| {
                let mut dx = vec![0f32; x.len()];
                let rows = |((dxc, xc), gc): ((&mut [f32], &[f32]), &[f32])| {
                    let mut dw = vec![0f32; h];
                    for ((dxr, xr), gr) in dxc.chunks_mut(h).zip(xc.chunks(h)).zip(gc.chunks(h)) {
                        let s = self.denom(xr);
                        let inv = 1.0 / s;
                        // sum(g w x_hat), with x_hat = x / s factored out of the sum.
                        let dot = super::vexp::sum_products3(gr, &wv, xr) * inv;
                        for i in 0..h {
                            dw[i] += gr[i] * (xr[i] * inv);
                        }
                        let mean = dot / h as f32;
                        for i in 0..h {
                            dxr[i] = (gr[i] * wv[i] - xr[i] * inv * mean) * inv;
                        }
                    }
                    dw
                };
                let n = h * ROWS_PER_TASK;
                let dw: Vec<Vec<f32>> = if x.len() <= SERIAL_MAX {
                    dx.chunks_mut(n)
                        .zip(x.chunks(n))
                        .zip(g.chunks(n))
                        .map(rows)
                        .collect()
                } else {
                    dx.par_chunks_mut(n)
                        .zip(x.par_chunks(n))
                        .zip(g.par_chunks(n))
                        .map(rows)
                        .collect()
                };
                // Summed in chunk order so the result does not depend on thread timing.
                let mut total = vec![0f32; h];
                for part in dw {
                    total.iter_mut().zip(part).for_each(|(a, b)| *a += b);
                }
                Ok((dx, total))
            })
        })?;
        Ok([grad_like(dx, x)?, grad_like(dw, w)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_op2, randn};
    use super::*;

    #[test]
    fn matches_reference_and_finite_differences() {
        for gemma in [false, true] {
            let x = randn(&[3, 5, 16], 1);
            let w = randn(&[16], 2);
            let out_w = randn(&[3, 5, 16], 3);
            let fused = |t: &[Tensor]| {
                t[0].apply_op2(&t[1], KernelOp(RmsNorm { eps: 1e-6, gemma }))
                    .unwrap()
            };
            let reference = |t: &[Tensor]| rms_norm_reference(&t[0], &t[1], 1e-6, gemma).unwrap();
            check_op2(&x, &w, &out_w, &fused, &reference, (1e-5, 1e-4));
        }
    }
}
