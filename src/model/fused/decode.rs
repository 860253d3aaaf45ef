//! Incremental decoding kernels (forward only): RoPE at arbitrary per-row positions into the
//! KV-cache layout, and attention of new queries over the cache with a key-padding mask.
//! They replace the ~25 small tensor ops per layer of the reference path, whose per-op cost
//! dominates a decoding step. Backward is deliberately unsupported (candle reports an error
//! instead of silently dropping gradients): training never goes through the cache.

use super::{sgemm, slice, SharedMut, SERIAL_MAX};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Per-call decoding context: the positions of the new tokens and which keys are real.
#[derive(Debug, Clone)]
pub struct DecodeCtx {
    pub b: usize,
    /// New tokens per row.
    pub t: usize,
    /// Cached positions before this call.
    pub past: usize,
    /// (b * t, half) cos / sin of each new token's position.
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    half: usize,
    /// (b, past + t): 1 for real keys, 0 for padding.
    key_mask: Arc<Vec<u32>>,
}

impl DecodeCtx {
    /// `positions` (b * t), `key_mask` (b * (past + t)), inverse frequencies of the rope.
    pub fn new(
        inv_freq: &[f32],
        b: usize,
        t: usize,
        past: usize,
        positions: &[u32],
        key_mask: Vec<u32>,
    ) -> Result<Self> {
        if positions.len() != b * t || key_mask.len() != b * (past + t) {
            candle_core::bail!(
                "decoding: {} positions and a key mask of {} for {b} rows of {t} new tokens after {past}",
                positions.len(),
                key_mask.len()
            );
        }
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for &p in positions {
            for &f in inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(DecodeCtx {
            b,
            t,
            past,
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            half,
            key_mask: Arc::new(key_mask),
        })
    }
}

/// x (b, t, n * hd) from a projection -> RoPE-rotated (b, n, t, hd), the cache layout.
pub fn rope_heads(x: &Tensor, n: usize, ctx: &DecodeCtx) -> Result<Tensor> {
    let (b, t, w) = x.dims3()?;
    if b != ctx.b || t != ctx.t || w != n * 2 * ctx.half {
        candle_core::bail!(
            "decoding rope: {:?} does not fit {n} heads of {}",
            x.dims(),
            2 * ctx.half
        );
    }
    x.contiguous()?.apply_op1(RopeHeads {
        n,
        ctx: ctx.clone(),
    })
}

struct RopeHeads {
    n: usize,
    ctx: DecodeCtx,
}

impl CustomOp1 for RopeHeads {
    fn name(&self) -> &'static str {
        "decode-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (b, t, n, half) = (self.ctx.b, self.ctx.t, self.n, self.ctx.half);
        let hd = 2 * half;
        let mut out = vec![0f32; x.len()];
        for bi in 0..b {
            for p in 0..t {
                let r = bi * t + p;
                let (c, sn) = (
                    &self.ctx.cos[r * half..(r + 1) * half],
                    &self.ctx.sin[r * half..(r + 1) * half],
                );
                for h in 0..n {
                    let src = &x[r * n * hd + h * hd..r * n * hd + (h + 1) * hd];
                    let o0 = ((bi * n + h) * t + p) * hd;
                    let o = &mut out[o0..o0 + hd];
                    for i in 0..half {
                        let (a, bb) = (src[i], src[i + half]);
                        o[i] = a * c[i] + (-bb) * sn[i];
                        o[i + half] = bb * c[i] + a * sn[i];
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, n, t, hd))))
    }
}

/// Attention of rotated queries `q` (b, n_heads, t, hd) over the cache `k`, `v`
/// (b, n_kv, capacity, hd) whose first past + t positions are filled: query i sees keys up
/// to past + i that the mask marks real.
/// Returns (b, t, n_heads * hd), ready for o_proj.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor, ctx: &DecodeCtx) -> Result<Tensor> {
    let (b, nh, t, _) = q.dims4()?;
    let (_, nkv, capacity, _) = k.dims4()?;
    if nkv == 0 || nh % nkv != 0 || v.dims() != k.dims() || capacity < ctx.past + t || b != ctx.b {
        candle_core::bail!(
            "decoding attention: q {:?} k {:?} v {:?} after {} cached positions do not fit",
            q.dims(),
            k.dims(),
            v.dims(),
            ctx.past
        );
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        CachedAttention { ctx: ctx.clone() },
    )
}

struct CachedAttention {
    ctx: DecodeCtx,
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (b, nh, t, hd) = l1.shape().dims4()?;
        // The cache may hold room for later positions: (b, kv, capacity, hd), of which the
        // first past + t rows of each head are filled.
        let (_, nkv, capacity, _) = l2.shape().dims4()?;
        let total = self.ctx.past + t;
        let n_rep = nh / nkv;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let past = self.ctx.past;
        let mut y = vec![0f32; q.len()];
        let yp = SharedMut(y.as_mut_ptr());
        let row_y = nh * hd;
        let task = |idx: usize| {
            let (bi, h) = (idx / nh, idx % nh);
            let g = h / n_rep;
            let qh = &q[(bi * nh + h) * t * hd..(bi * nh + h + 1) * t * hd];
            let kv0 = (bi * nkv + g) * capacity * hd;
            let mask = &self.ctx.key_mask[bi * total..(bi + 1) * total];
            let mut s = vec![0f32; t * total];
            if t == 1 {
                // One query (a decoding step): plain dot products beat a gemm call's set-up.
                let kh = &k[kv0..kv0 + total * hd];
                for (x, kj) in s.iter_mut().zip(kh.chunks(hd)) {
                    *x = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
            } else {
                // SAFETY: shapes checked above.
                unsafe {
                    sgemm(
                        t,
                        total,
                        hd,
                        s.as_mut_ptr(),
                        total,
                        false,
                        qh.as_ptr(),
                        (hd, 1),
                        k.as_ptr().add(kv0),
                        (1, hd),
                        scale,
                    );
                }
            }
            for i in 0..t {
                let row = &mut s[i * total..(i + 1) * total];
                let sees = |j: usize| j <= past + i && mask[j] != 0;
                let m = (0..total)
                    .filter(|&j| sees(j))
                    .map(|j| row[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                if m == f32::NEG_INFINITY {
                    // No real key (a padding query): the reference's all-f32::MIN row is a
                    // uniform average; its output is never read.
                    row.iter_mut().for_each(|x| *x = 1.0 / total as f32);
                    continue;
                }
                let mut sum = 0f32;
                for (j, x) in row.iter_mut().enumerate() {
                    *x = if sees(j) {
                        super::vexp::exp(*x - m)
                    } else {
                        0.0
                    };
                    sum += *x;
                }
                row.iter_mut().for_each(|x| *x /= sum);
            }
            if t == 1 {
                // SAFETY: this task alone writes y[bi, 0, h, :].
                let out = unsafe {
                    std::slice::from_raw_parts_mut(yp.ptr().add(bi * row_y + h * hd), hd)
                };
                for (&p, vj) in s.iter().zip(v[kv0..kv0 + total * hd].chunks(hd)) {
                    if p != 0.0 {
                        out.iter_mut().zip(vj).for_each(|(o, &x)| *o += p * x);
                    }
                }
                return;
            }
            // SAFETY: this task alone writes y[bi, :, h, :].
            unsafe {
                sgemm(
                    t,
                    hd,
                    total,
                    yp.ptr().add(bi * t * row_y + h * hd),
                    row_y,
                    false,
                    s.as_ptr(),
                    (total, 1),
                    v.as_ptr().add(kv0),
                    (hd, 1),
                    1.0,
                );
            }
        };
        if b * nh * t * total * hd <= SERIAL_MAX * 8 {
            (0..b * nh).for_each(task);
        } else {
            (0..b * nh).into_par_iter().for_each(task);
        }
        Ok((CpuStorage::F32(y), Shape::from((b, t, nh * hd))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention::{causal_attention, RopeTables};
    use super::super::testing::{max_abs_diff, randn};
    use super::*;

    /// Prefill from an empty cache, all keys real, equals the training kernel; a padded key
    /// changes the result of rows that can see it only; a one-token step after a cache
    /// (the dot-product path) equals the same row of the full prefill.
    #[test]
    fn prefill_equals_the_training_kernel_and_the_mask_hides_keys() {
        let (b, t, nh, nkv, hd) = (2, 7, 4, 2, 8);
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let q = randn(&[b, t, nh * hd], 1);
        let k = randn(&[b, t, nkv * hd], 2);
        let v = randn(&[b, t, nkv * hd], 3);
        let pos: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let ctx = DecodeCtx::new(&inv, b, t, 0, &pos, vec![1; b * t]).unwrap();
        let heads = |x: &Tensor, n: usize| {
            x.reshape((b, t, n, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let y = cached_attention(
            &rope_heads(&q, nh, &ctx).unwrap(),
            &rope_heads(&k, nkv, &ctx).unwrap(),
            &heads(&v, nkv),
            &ctx,
        )
        .unwrap();
        let want = causal_attention(&q, &k, &v, nh, nkv, &RopeTables::new(&inv, t)).unwrap();
        assert!(max_abs_diff(&y, &want) < 1e-5);
        // Mask key 3 of row 0: queries 0..3 of row 0 and all of row 1 are unchanged.
        let mut mask = vec![1u32; b * t];
        mask[3] = 0;
        let ctx = DecodeCtx::new(&inv, b, t, 0, &pos, mask).unwrap();
        let y2 = cached_attention(
            &rope_heads(&q, nh, &ctx).unwrap(),
            &rope_heads(&k, nkv, &ctx).unwrap(),
            &heads(&v, nkv),
            &ctx,
        )
        .unwrap();
        let same = |a: &Tensor, r: usize, p: std::ops::Range<usize>| {
            a.narrow(0, r, 1)
                .unwrap()
                .narrow(1, p.start, p.len())
                .unwrap()
        };
        assert!(max_abs_diff(&same(&y2, 0, 0..3), &same(&y, 0, 0..3)) < 1e-6);
        assert!(max_abs_diff(&same(&y2, 1, 0..t), &same(&y, 1, 0..t)) < 1e-6);
        assert!(max_abs_diff(&same(&y2, 0, 3..t), &same(&y, 0, 3..t)) > 1e-4);
        // The last token alone, over a cache of the first t - 1.
        let ctx_all = DecodeCtx::new(&inv, b, t, 0, &pos, vec![1; b * t]).unwrap();
        let (kr, vr) = (rope_heads(&k, nkv, &ctx_all).unwrap(), heads(&v, nkv));
        let last: Vec<u32> = vec![(t - 1) as u32; b];
        let ctx1 = DecodeCtx::new(&inv, b, 1, t - 1, &last, vec![1; b * t]).unwrap();
        let q1 = q.narrow(1, t - 1, 1).unwrap();
        let y1 = cached_attention(&rope_heads(&q1, nh, &ctx1).unwrap(), &kr, &vr, &ctx1).unwrap();
        assert!(max_abs_diff(&y1, &y.narrow(1, t - 1, 1).unwrap()) < 1e-5);
    }
}
