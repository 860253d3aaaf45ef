//! The gated MLP's activation, silu(g) * u, in one pass; backward
//! du = dy * silu(g), dg = dy * u * s * (1 + g * (1 - s)) with s = sigmoid(g).

use super::op::{FusedOp, Grads, Input, KernelOp};
use super::vexp::{multiversion, sigmoid};
use super::{grad_like, with_data, Kernel, SERIAL_MAX};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// silu(g) * u, fused when the kernel is on and the tensors allow it.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if super::usable(Kernel::SwiGlu, &[g, u]) && g.shape() == u.shape() {
        g.contiguous()?
            .apply_op2(&u.contiguous()?, KernelOp(SwiGlu))
    } else {
        swiglu_reference(g, u)
    }
}

/// The slow, differentiable reference.
pub fn swiglu_reference(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.silu()? * u
}

pub(crate) struct SwiGlu;

multiversion! {
    /// y = silu(g) * u over one chunk, silu(x) = x * sigmoid(x) (candle divides instead: the
    /// two agree to rounding).
    pub fn fwd_chunk(y: &mut [f32], g: &[f32], u: &[f32]) {
        for ((o, &gv), &uv) in y.iter_mut().zip(g).zip(u) {
            *o = gv * sigmoid(gv) * uv;
        }
    }
}

multiversion! {
    /// dg, du of one chunk from g, u and the output gradient dy.
    pub fn bwd_chunk(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32]) {
        let n = g.len().min(u.len()).min(dy.len()).min(dg.len()).min(du.len());
        for i in 0..n {
            let s = sigmoid(g[i]);
            du[i] = dy[i] * g[i] * s;
            dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        }
    }
}

/// silu(g) * u of two equal-length slices, on rayon's threads when large.
pub(crate) fn forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.len()];
    let f = |(yc, (gc, uc)): (&mut [f32], (&[f32], &[f32]))| fwd_chunk(yc, gc, uc);
    if g.len() <= SERIAL_MAX {
        y.chunks_mut(CHUNK)
            .zip(g.chunks(CHUNK).zip(u.chunks(CHUNK)))
            .for_each(f);
    } else {
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(f);
    }
    y
}

impl FusedOp<2> for SwiGlu {
    const NAME: &'static str = "fused-swiglu";

    fn cpu_fwd(&self, [g, u]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        Ok((forward(g.data, u.data), g.layout.shape().clone()))
    }

    fn bwd(&self, [g, u]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Grads<2> {
        let n = g.elem_count();
        let mut dg = vec![0f32; n];
        let mut du = vec![0f32; n];
        with_data(g, |g| {
            with_data(u, |u| {
                with_data(grad, |dy| {
                    if n <= SERIAL_MAX {
                        dg.chunks_mut(CHUNK)
                            .zip(du.chunks_mut(CHUNK))
                            .zip(g.chunks(CHUNK).zip(u.chunks(CHUNK)))
                            .zip(dy.chunks(CHUNK))
                            .for_each(|(((dg, du), (g, u)), dy)| bwd_chunk(dg, du, g, u, dy));
                    } else {
                        dg.par_chunks_mut(CHUNK)
                            .zip(du.par_chunks_mut(CHUNK))
                            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
                            .zip(dy.par_chunks(CHUNK))
                            .for_each(|(((dg, du), (g, u)), dy)| bwd_chunk(dg, du, g, u, dy));
                    }
                    Ok(())
                })
            })
        })?;
        Ok([grad_like(dg, g)?, grad_like(du, u)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_op2, randn};
    use super::*;

    #[test]
    fn matches_reference_and_finite_differences() {
        let g = (randn(&[4, 7, 9], 1) * 4.0).unwrap();
        let u = randn(&[4, 7, 9], 2);
        let w = randn(&[4, 7, 9], 3);
        let fused = |t: &[Tensor]| t[0].apply_op2(&t[1], KernelOp(SwiGlu)).unwrap();
        let reference = |t: &[Tensor]| swiglu_reference(&t[0], &t[1]).unwrap();
        check_op2(&g, &u, &w, &fused, &reference, (1e-5, 1e-5));
    }
}
