//! Causal self-attention with RoPE as one op: q, k, v straight from the projections
//! (b, t, heads * head_dim), output ready for o_proj (b, t, heads * head_dim). No
//! (b, heads, t, t) tensor exists: each (batch, kv-head) task works through query blocks of
//! [`BLOCK`] rows against the keys they may see, with a block-sized score scratch, and the
//! backward recomputes the probabilities the same way (flash-attention's trade). Grouped
//! query attention is native: a task owns one kv head and its query heads, so the key and
//! value gradients of the group accumulate without races.
//!
//! Backward, per block with P = softmax(scale * Qr Kr^T) (causal):
//! dV += P^T dY; dP = dY V^T; dS = P * (dP - rowsum(dY * Y)) * scale; dQr = dS Kr;
//! dKr += dS^T Qr; then dQ, dK are dQr, dKr rotated back (RoPE is a rotation).

use super::op::{FusedOp, Grads, Input, KernelOp};
use super::{grad_like, sgemm, with_data, SharedMut};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Query rows per block: bounds the score scratch to BLOCK x t per task.
const BLOCK: usize = 64;

/// RoPE angles for positions 0..t: cos and sin, each (t, head_dim / 2) row-major.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub t: usize,
    pub half: usize,
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
}

impl RopeTables {
    /// Tables from inverse frequencies, as transformers computes them: f32 (pos * inv_freq),
    /// its cos and sin times `scale` (YaRN's attention factor; 1 otherwise).
    pub fn new(inv_freq: &[f32], scale: f32, t: usize) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos() * scale);
                sin.push(a.sin() * scale);
            }
        }
        RopeTables {
            t,
            half,
            cos: Arc::new(cos),
            sin: Arc::new(sin),
        }
    }
}

/// The model's attention heads: `n_heads` query heads sharing `n_kv` key/value heads, and
/// the RoPE tables of the sequence length.
#[derive(Clone, Copy)]
pub struct Heads<'a> {
    pub n_heads: usize,
    pub n_kv: usize,
    pub rope: &'a RopeTables,
}

/// Causal attention of `q` (b, t, n_heads * hd) over `k`, `v` (b, t, n_kv * hd) with RoPE
/// applied to q and k inside; returns (b, t, n_heads * hd).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: Heads<'_>) -> Result<Tensor> {
    let op = attention_op(q, k, v, heads)?;
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The op [`causal_attention`] applies, after checking that the shapes fit it.
pub(crate) fn attention_op(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads<'_>,
) -> Result<KernelOp<FusedAttention>> {
    let Heads {
        n_heads,
        n_kv,
        rope,
    } = heads;
    let (_, t, qd) = q.dims3()?;
    let hd = qd / n_heads.max(1);
    if n_heads == 0 || n_kv == 0 || !n_heads.is_multiple_of(n_kv) || qd != n_heads * hd {
        candle_core::bail!(
            "fused attention: {n_heads} heads / {n_kv} kv heads do not fit q width {qd}"
        );
    }
    if k.dims3()?.2 != n_kv * hd || v.dims3()? != k.dims3()? || rope.t < t || 2 * rope.half != hd {
        candle_core::bail!(
            "fused attention: shapes q {:?} k {:?} v {:?} do not match (head_dim {hd}, rope for {} positions)",
            q.dims(),
            k.dims(),
            v.dims(),
            rope.t
        );
    }
    Ok(KernelOp(FusedAttention {
        n_heads,
        n_kv,
        hd,
        scale: (1.0 / (hd as f64).sqrt()) as f32,
        rope: rope.clone(),
    }))
}

pub(crate) struct FusedAttention {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    scale: f32,
    rope: RopeTables,
}

/// Geometry of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    hd: usize,
    /// Row strides of q / y and of k / v, in elements.
    row_q: usize,
    row_kv: usize,
    n_rep: usize,
}

impl FusedAttention {
    fn dims(&self, b: usize, t: usize) -> Dims {
        Dims {
            b,
            t,
            hd: self.hd,
            row_q: self.n_heads * self.hd,
            row_kv: self.n_kv * self.hd,
            n_rep: self.n_heads / self.n_kv,
        }
    }

    /// Rotate head columns `src` (t rows of stride `rs`) into `dst` (t x hd, contiguous).
    fn rope(&self, src: &[f32], rs: usize, t: usize, dst: &mut [f32]) {
        let half = self.hd / 2;
        for p in 0..t {
            let x = &src[p * rs..p * rs + self.hd];
            let o = &mut dst[p * self.hd..(p + 1) * self.hd];
            let (c, s) = (
                &self.rope.cos[p * half..(p + 1) * half],
                &self.rope.sin[p * half..(p + 1) * half],
            );
            o.copy_from_slice(x);
            let (lo, hi) = o.split_at_mut(half);
            super::vexp::rotate_halves(lo, hi, c, s);
        }
    }

    /// The transpose of [`Self::rope`]: gradients of the rotated rows back to the inputs,
    /// written to rows of stride `rs` in `dst`.
    unsafe fn unrope(&self, src: &[f32], t: usize, dst: *mut f32, rs: usize) {
        let half = self.hd / 2;
        for p in 0..t {
            let g = &src[p * self.hd..(p + 1) * self.hd];
            let o = std::slice::from_raw_parts_mut(dst.add(p * rs), self.hd);
            let (c, s) = (
                &self.rope.cos[p * half..(p + 1) * half],
                &self.rope.sin[p * half..(p + 1) * half],
            );
            for i in 0..half {
                o[i] = g[i] * c[i] + g[i + half] * s[i];
                o[i + half] = g[i + half] * c[i] - g[i] * s[i];
            }
        }
    }

    /// Scores of query rows r0..r0+nb against keys 0..kend, turned into causal softmax
    /// probabilities in place (row stride kend; keys after the query are 0).
    unsafe fn probs(&self, d: Dims, qr: &[f32], kr: &[f32], r0: usize, nb: usize, s: &mut [f32]) {
        let kend = r0 + nb;
        sgemm(
            nb,
            kend,
            d.hd,
            s.as_mut_ptr(),
            kend,
            false,
            qr.as_ptr().add(r0 * d.hd),
            (d.hd, 1),
            kr.as_ptr(),
            (1, d.hd),
            self.scale,
        );
        for i in 0..nb {
            let row = &mut s[i * kend..(i + 1) * kend];
            let valid = r0 + i + 1;
            let m = super::vexp::max(&row[..valid]);
            let sum = super::vexp::exp_shifted_sum(&mut row[..valid], m);
            for x in row[..valid].iter_mut() {
                *x /= sum;
            }
            row[valid..].iter_mut().for_each(|x| *x = 0.0);
        }
    }
}

impl FusedOp<3> for FusedAttention {
    const NAME: &'static str = "fused-causal-attention";

    fn cpu_fwd(&self, [q, k, v]: [Input<'_>; 3]) -> Result<(Vec<f32>, Shape)> {
        let (dims, shape) = (q.dims(), q.layout.shape().clone());
        let (q, k, v) = (q.data, k.data, v.data);
        let d = self.dims(dims[0], dims[1]);
        let mut y = vec![0f32; q.len()];
        let yp = SharedMut(y.as_mut_ptr());
        (0..d.b * self.n_kv).into_par_iter().for_each(|task| {
            let (bi, g) = (task / self.n_kv, task % self.n_kv);
            let (t, hd) = (d.t, d.hd);
            let mut kr = vec![0f32; t * hd];
            self.rope(&k[bi * t * d.row_kv + g * hd..], d.row_kv, t, &mut kr);
            let mut qr = vec![0f32; t * hd];
            let mut s = vec![0f32; BLOCK.min(t) * t];
            for h in g * d.n_rep..(g + 1) * d.n_rep {
                self.rope(&q[bi * t * d.row_q + h * hd..], d.row_q, t, &mut qr);
                for r0 in (0..t).step_by(BLOCK) {
                    let nb = BLOCK.min(t - r0);
                    let kend = r0 + nb;
                    // SAFETY: this task alone writes y[bi, r0..kend, h, :].
                    unsafe {
                        self.probs(d, &qr, &kr, r0, nb, &mut s);
                        sgemm(
                            nb,
                            hd,
                            kend,
                            yp.ptr().add((bi * t + r0) * d.row_q + h * hd),
                            d.row_q,
                            false,
                            s.as_ptr(),
                            (kend, 1),
                            v.as_ptr().add(bi * t * d.row_kv + g * hd),
                            (d.row_kv, 1),
                            1.0,
                        );
                    }
                }
            }
        });
        Ok((y, shape))
    }

    fn bwd(&self, [q, k, v]: [&Tensor; 3], res: &Tensor, grad: &Tensor) -> Grads<3> {
        let (b, t, _) = q.dims3()?;
        let d = self.dims(b, t);
        let mut dq = vec![0f32; q.elem_count()];
        let mut dk = vec![0f32; k.elem_count()];
        let mut dv = vec![0f32; v.elem_count()];
        let (dqp, dkp, dvp) = (
            SharedMut(dq.as_mut_ptr()),
            SharedMut(dk.as_mut_ptr()),
            SharedMut(dv.as_mut_ptr()),
        );
        with_data(q, |q| {
            with_data(k, |k| {
                with_data(v, |v| {
                    with_data(res, |y| {
                        with_data(grad, |dy| {
                            (0..b * self.n_kv).into_par_iter().for_each(|task| {
                                // SAFETY: the task owns rows (bi, :, head group) of dq, dk, dv.
                                unsafe { self.bwd_task(d, task, q, k, v, y, dy, dqp, dkp, dvp) }
                            });
                            Ok(())
                        })
                    })
                })
            })
        })?;
        Ok([grad_like(dq, q)?, grad_like(dk, k)?, grad_like(dv, v)?])
    }
}

impl FusedAttention {
    #[allow(clippy::too_many_arguments)]
    unsafe fn bwd_task(
        &self,
        d: Dims,
        task: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        y: &[f32],
        dy: &[f32],
        dq: SharedMut,
        dk: SharedMut,
        dv: SharedMut,
    ) {
        let (bi, g) = (task / self.n_kv, task % self.n_kv);
        let (t, hd) = (d.t, d.hd);
        let kv_off = bi * t * d.row_kv + g * hd;
        let mut kr = vec![0f32; t * hd];
        self.rope(&k[kv_off..], d.row_kv, t, &mut kr);
        let mut qr = vec![0f32; t * hd];
        let mut dqr = vec![0f32; t * hd];
        let mut dkr = vec![0f32; t * hd];
        let mut p = vec![0f32; BLOCK.min(t) * t];
        let mut dp = vec![0f32; BLOCK.min(t) * t];
        let mut di = vec![0f32; BLOCK];
        for h in g * d.n_rep..(g + 1) * d.n_rep {
            let q_off = bi * t * d.row_q + h * hd;
            self.rope(&q[q_off..], d.row_q, t, &mut qr);
            for r0 in (0..t).step_by(BLOCK) {
                let nb = BLOCK.min(t - r0);
                let kend = r0 + nb;
                self.probs(d, &qr, &kr, r0, nb, &mut p);
                let dy_blk = dy.as_ptr().add(q_off + r0 * d.row_q);
                // dV[0..kend] += P^T dY
                sgemm(
                    kend,
                    hd,
                    nb,
                    dv.ptr().add(kv_off),
                    d.row_kv,
                    true,
                    p.as_ptr(),
                    (1, kend),
                    dy_blk,
                    (d.row_q, 1),
                    1.0,
                );
                // dP = dY V^T
                sgemm(
                    nb,
                    kend,
                    hd,
                    dp.as_mut_ptr(),
                    kend,
                    false,
                    dy_blk,
                    (d.row_q, 1),
                    v.as_ptr().add(kv_off),
                    (1, d.row_kv),
                    1.0,
                );
                for (i, dd) in di.iter_mut().enumerate().take(nb) {
                    let o = q_off + (r0 + i) * d.row_q;
                    *dd = dy[o..o + hd]
                        .iter()
                        .zip(&y[o..o + hd])
                        .map(|(a, b)| a * b)
                        .sum();
                }
                // dS = P * (dP - D) * scale, in place in dp.
                for i in 0..nb {
                    let (pr, dr) = (
                        &p[i * kend..(i + 1) * kend],
                        &mut dp[i * kend..(i + 1) * kend],
                    );
                    for (x, &pv) in dr.iter_mut().zip(pr) {
                        *x = pv * (*x - di[i]) * self.scale;
                    }
                }
                // dQr[r0..kend] = dS Kr
                sgemm(
                    nb,
                    hd,
                    kend,
                    dqr.as_mut_ptr().add(r0 * hd),
                    hd,
                    false,
                    dp.as_ptr(),
                    (kend, 1),
                    kr.as_ptr(),
                    (hd, 1),
                    1.0,
                );
                // dKr[0..kend] += dS^T Qr[r0..kend]
                sgemm(
                    kend,
                    hd,
                    nb,
                    dkr.as_mut_ptr(),
                    hd,
                    true,
                    dp.as_ptr(),
                    (1, kend),
                    qr.as_ptr().add(r0 * hd),
                    (hd, 1),
                    1.0,
                );
            }
            self.unrope(&dqr, t, dq.ptr().add(q_off), d.row_q);
        }
        self.unrope(&dkr, t, dk.ptr().add(kv_off), d.row_kv);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_fd, grads, max_abs_diff, randn};
    use super::*;

    /// The model's reference path: rope -> repeat_kv -> QK^T -> causal softmax -> AV.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, nh: usize, nkv: usize, inv: &[f32]) -> Tensor {
        let (b, t, qd) = q.dims3().unwrap();
        let hd = qd / nh;
        let dev = q.device();
        let split = |x: &Tensor, n: usize| {
            x.reshape((b, t, n, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(q, nh), split(k, nkv), split(v, nkv));
        let inv_t = Tensor::from_vec(inv.to_vec(), (1, 1, inv.len()), dev).unwrap();
        let pos = Tensor::arange(0u32, t as u32, dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .unsqueeze(2)
            .unwrap();
        let f = pos.broadcast_mul(&inv_t).unwrap();
        let emb = Tensor::cat(&[&f, &f], 2).unwrap().unsqueeze(1).unwrap();
        let (cos, sin) = (emb.cos().unwrap(), emb.sin().unwrap());
        let q = crate::model::rope::apply(&q, &cos, &sin).unwrap();
        let k = crate::model::rope::apply(&k, &cos, &sin).unwrap();
        let rep = |x: Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, nkv, nh / nkv, t, hd))
                .unwrap()
                .reshape((b, nh, t, hd))
                .unwrap()
        };
        let (k, v) = (rep(k), rep(v));
        let mut mask = vec![0f32; t * t];
        for i in 0..t {
            for j in i + 1..t {
                mask[i * t + j] = f32::MIN;
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, t, t), dev).unwrap();
        let att = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt())).unwrap();
        let att = crate::model::llama::softmax_last(&att.broadcast_add(&mask).unwrap()).unwrap();
        att.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, nh * hd))
            .unwrap()
    }

    fn case(b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let tables = RopeTables::new(&inv, 1.0, t);
        let heads = Heads {
            n_heads: nh,
            n_kv: nkv,
            rope: &tables,
        };
        let q = randn(&[b, t, nh * hd], 1);
        let k = randn(&[b, t, nkv * hd], 2);
        let v = randn(&[b, t, nkv * hd], 3);
        let w = randn(&[b, t, nh * hd], 4);
        let ins = [q, k, v];
        let fused = |x: &[Tensor]| causal_attention(&x[0], &x[1], &x[2], heads).unwrap();
        let slow = |x: &[Tensor]| reference(&x[0], &x[1], &x[2], nh, nkv, &inv);
        let (yf, gf) = grads(&ins, &w, &fused);
        let (yr, gr) = grads(&ins, &w, &slow);
        assert!(
            max_abs_diff(&yf, &yr) < 1e-5,
            "output differs: {}",
            max_abs_diff(&yf, &yr)
        );
        for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
            let e = max_abs_diff(a, b);
            assert!(
                e < 1e-4,
                "gradient of input {i} differs from the reference by {e}"
            );
        }
        let loss = |x: &[Tensor]| {
            (fused(x) * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        for (i, g) in gf.iter().enumerate() {
            check_fd(&ins, i, g, &loss, 3e-2);
        }
    }

    #[test]
    fn matches_reference_and_finite_differences() {
        case(2, 9, 2, 2, 8);
    }

    #[test]
    fn grouped_query_heads_and_several_blocks() {
        // t > BLOCK exercises the block loop; 4 query heads share 2 kv heads.
        case(1, BLOCK + 13, 4, 2, 4);
    }
}
