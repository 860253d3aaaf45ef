//! Incremental decoding kernels on raw f32 buffers (forward only: training never goes
//! through the cache): RoPE at arbitrary per-row positions, the KV cache written in place,
//! and attention of the new queries over the cache with a key-padding mask. The fused
//! decoding forward (`Llama::forward_cached`) strings them together with the projections.

use super::vexp::{self, add_weighted_rows};
use super::{sgemm, SharedMut, SERIAL_MAX};
use candle_core::Result;
use rayon::prelude::*;

/// Fewest positions a cache makes room for.
const MIN_CAPACITY: usize = 64;

/// Per-call decoding context: the positions of the new tokens and which keys are real.
#[derive(Debug, Clone)]
pub struct DecodeCtx {
    pub b: usize,
    /// New tokens per row.
    pub t: usize,
    /// Cached positions before this call.
    pub past: usize,
    /// (b * t, half) cos / sin of each new token's position.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    /// (b, past + t): 1 for real keys, 0 for padding.
    key_mask: Vec<u32>,
}

impl DecodeCtx {
    /// `positions` (b * t), `key_mask` (b * (past + t)), inverse frequencies of the rope and
    /// the factor of its cos and sin (YaRN's attention factor; 1 otherwise).
    pub fn new(
        inv_freq: &[f32],
        scale: f32,
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
                cos.push(a.cos() * scale);
                sin.push(a.sin() * scale);
            }
        }
        Ok(DecodeCtx {
            b,
            t,
            past,
            cos,
            sin,
            half,
            key_mask,
        })
    }

    /// Head size the rope tables are for.
    pub fn head_dim(&self) -> usize {
        2 * self.half
    }
}

/// Rotates, in place, the `n` heads of each of the b * t rows of `x` (the rotate-half RoPE
/// of Llama, at each row's own position).
pub fn rope_in_place(x: &mut [f32], n: usize, ctx: &DecodeCtx) -> Result<()> {
    let (half, hd) = (ctx.half, ctx.head_dim());
    if x.len() != ctx.b * ctx.t * n * hd {
        candle_core::bail!(
            "decoding rope: {} values are not {} rows of {n} heads of {hd}",
            x.len(),
            ctx.b * ctx.t
        );
    }
    for (r, row) in x.chunks_exact_mut(n * hd).enumerate() {
        let (c, s) = (
            &ctx.cos[r * half..(r + 1) * half],
            &ctx.sin[r * half..(r + 1) * half],
        );
        for head in row.chunks_exact_mut(hd) {
            let (lo, hi) = head.split_at_mut(half);
            super::vexp::rotate_halves(lo, hi, c, s);
        }
    }
    Ok(())
}

/// One layer's cached keys (rotated) and values, each (b, n_kv, capacity, hd) row-major, of
/// which the first `len` positions of every head are filled. New positions are written in
/// place and the buffers double when full (concatenating copied the whole cache every step).
#[derive(Debug, Default)]
pub struct KvBuffers {
    k: Vec<f32>,
    v: Vec<f32>,
    b: usize,
    n_kv: usize,
    hd: usize,
    capacity: usize,
    len: usize,
}

impl KvBuffers {
    /// Filled positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions there is room for before the buffers grow.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Writes the new keys `k` and values `v` (b * t rows of n_kv * hd, keys already
    /// rotated) at positions len..len + t.
    pub fn append(&mut self, k: &[f32], v: &[f32], b: usize, n_kv: usize, hd: usize) -> Result<()> {
        let width = n_kv * hd;
        if b == 0 || width == 0 || k.len() != v.len() || !k.len().is_multiple_of(b * width) {
            candle_core::bail!(
                "decoding cache: {} keys and {} values are not {b} rows of {n_kv} heads of {hd}",
                k.len(),
                v.len()
            );
        }
        if self.len > 0 && (b, n_kv, hd) != (self.b, self.n_kv, self.hd) {
            candle_core::bail!(
                "decoding cache holds {} rows of {} heads of {}, not {b} of {n_kv} of {hd}",
                self.b,
                self.n_kv,
                self.hd
            );
        }
        let t = k.len() / (b * width);
        let need = self.len + t;
        if self.len == 0 || need > self.capacity {
            self.grow(b, n_kv, hd, need);
        }
        let cap = self.capacity;
        for bi in 0..b {
            for p in 0..t {
                let src = (bi * t + p) * width;
                for g in 0..n_kv {
                    let dst = ((bi * n_kv + g) * cap + self.len + p) * hd;
                    self.k[dst..dst + hd].copy_from_slice(&k[src + g * hd..src + (g + 1) * hd]);
                    self.v[dst..dst + hd].copy_from_slice(&v[src + g * hd..src + (g + 1) * hd]);
                }
            }
        }
        self.len = need;
        Ok(())
    }

    /// Room for at least `need` positions (a power of two), keeping the filled ones.
    fn grow(&mut self, b: usize, n_kv: usize, hd: usize, need: usize) {
        let cap = need.next_power_of_two().max(MIN_CAPACITY);
        let mut k = vec![0f32; b * n_kv * cap * hd];
        let mut v = vec![0f32; b * n_kv * cap * hd];
        let filled = self.len * hd;
        for head in 0..b * n_kv {
            let (src, dst) = (head * self.capacity * hd, head * cap * hd);
            k[dst..dst + filled].copy_from_slice(&self.k[src..src + filled]);
            v[dst..dst + filled].copy_from_slice(&self.v[src..src + filled]);
        }
        (self.k, self.v) = (k, v);
        (self.b, self.n_kv, self.hd, self.capacity) = (b, n_kv, hd, cap);
    }

    /// The filled keys or values of row `bi`'s kv head `g` (len rows of hd).
    #[cfg(test)]
    pub fn head(&self, values: bool, bi: usize, g: usize) -> &[f32] {
        let start = (bi * self.n_kv + g) * self.capacity * self.hd;
        let buf = if values { &self.v } else { &self.k };
        &buf[start..start + self.len * self.hd]
    }
}

/// Attention of the rotated queries `q` (b * t rows of n_heads * hd) over `cache`, which
/// already holds this call's keys and values: query i of a row sees the keys up to past + i
/// that the mask marks real. Returns (b * t rows of n_heads * hd), ready for o_proj.
pub fn attend(q: &[f32], cache: &KvBuffers, n_heads: usize, ctx: &DecodeCtx) -> Result<Vec<f32>> {
    let (b, t, past, hd) = (ctx.b, ctx.t, ctx.past, ctx.head_dim());
    let (nkv, capacity) = (cache.n_kv, cache.capacity);
    let total = past + t;
    if nkv == 0
        || !n_heads.is_multiple_of(nkv)
        || cache.len != total
        || cache.b != b
        || cache.hd != hd
        || q.len() != b * t * n_heads * hd
    {
        candle_core::bail!(
            "decoding attention: {} query values for {b} rows of {t} x {n_heads} heads of {hd} \
             do not fit a cache of {} positions ({} rows, {nkv} heads of {}) after {past}",
            q.len(),
            cache.len,
            cache.b,
            cache.hd
        );
    }
    let n_rep = n_heads / nkv;
    let scale = (1.0 / (hd as f64).sqrt()) as f32;
    let row_y = n_heads * hd;
    let mut y = vec![0f32; q.len()];
    let yp = SharedMut(y.as_mut_ptr());
    let (k, v) = (&cache.k, &cache.v);
    let task = |idx: usize| {
        let (bi, h) = (idx / n_heads, idx % n_heads);
        let kv0 = (bi * nkv + h / n_rep) * capacity * hd;
        let (kh, vh) = (&k[kv0..kv0 + total * hd], &v[kv0..kv0 + total * hd]);
        let q0 = bi * t * row_y + h * hd;
        let mask = &ctx.key_mask[bi * total..(bi + 1) * total];
        let mut s = if t == 1 {
            // One query (a decoding step): the few-row product kernel, not a gemm set-up.
            let mut s = super::linear::product(1, total, hd, &q[q0..q0 + hd], (hd, 1), kh, (1, hd));
            s.iter_mut().for_each(|x| *x *= scale);
            s
        } else {
            let mut s = vec![0f32; t * total];
            // SAFETY: q's rows of this head and the filled keys are in bounds (checked above).
            unsafe {
                sgemm(
                    t,
                    total,
                    hd,
                    s.as_mut_ptr(),
                    total,
                    false,
                    q.as_ptr().add(q0),
                    (row_y, 1),
                    kh.as_ptr(),
                    (1, hd),
                    scale,
                );
            }
            s
        };
        for (i, row) in s.chunks_exact_mut(total).enumerate() {
            let sees = |j: usize| j <= past + i && mask[j] != 0;
            for (j, x) in row.iter_mut().enumerate() {
                if !sees(j) {
                    *x = f32::NEG_INFINITY;
                }
            }
            let m = vexp::max(row);
            if m == f32::NEG_INFINITY {
                // No real key (a padding query): the reference's all-f32::MIN row is a
                // uniform average; its output is never read.
                row.iter_mut().for_each(|x| *x = 1.0 / total as f32);
                continue;
            }
            let sum = vexp::exp_shifted_sum(row, m);
            row.iter_mut().for_each(|x| *x /= sum);
        }
        if t == 1 {
            // SAFETY: this task alone writes y[bi, 0, h, :].
            let out = unsafe { std::slice::from_raw_parts_mut(yp.ptr().add(q0), hd) };
            add_weighted_rows(out, &s, vh);
            return;
        }
        // SAFETY: this task alone writes y[bi, :, h, :].
        unsafe {
            sgemm(
                t,
                hd,
                total,
                yp.ptr().add(q0),
                row_y,
                false,
                s.as_ptr(),
                (total, 1),
                vh.as_ptr(),
                (hd, 1),
                1.0,
            );
        }
    };
    if t == 1 || b * n_heads * t * total * hd <= SERIAL_MAX * 8 {
        (0..b * n_heads).for_each(task);
    } else {
        (0..b * n_heads).into_par_iter().for_each(task);
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::super::attention::{causal_attention, Heads, RopeTables};
    use super::super::testing::randn;
    use super::*;
    use candle_core::Tensor;

    fn data(x: &Tensor) -> Vec<f32> {
        x.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// A prefill into an empty cache, all keys real, equals the training kernel; a padded key
    /// changes the rows that can see it and no others; one token after a cache of the
    /// first t - 1 (the dot-product path) equals the last row of the prefill.
    #[test]
    fn prefill_equals_the_training_kernel_and_the_mask_hides_keys() {
        let (b, t, nh, nkv, hd) = (2, 7, 4, 2, 8);
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
            .collect();
        let (qt, kt, vt) = (
            randn(&[b, t, nh * hd], 1),
            randn(&[b, t, nkv * hd], 2),
            randn(&[b, t, nkv * hd], 3),
        );
        let (q, k, v) = (data(&qt), data(&kt), data(&vt));
        let pos: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        let run = |mask: Vec<u32>| {
            let ctx = DecodeCtx::new(&inv, 1.0, b, t, 0, &pos, mask).unwrap();
            let (mut q, mut k) = (q.clone(), k.clone());
            rope_in_place(&mut q, nh, &ctx).unwrap();
            rope_in_place(&mut k, nkv, &ctx).unwrap();
            let mut cache = KvBuffers::default();
            cache.append(&k, &v, b, nkv, hd).unwrap();
            (attend(&q, &cache, nh, &ctx).unwrap(), cache)
        };
        let (y, cache) = run(vec![1; b * t]);
        let heads = Heads {
            n_heads: nh,
            n_kv: nkv,
            rope: &RopeTables::new(&inv, 1.0, t),
        };
        let want = causal_attention(&qt, &kt, &vt, heads).unwrap();
        assert!(max_diff(&y, &data(&want)) < 1e-5);
        // Mask key 3 of row 0: queries 0..3 of row 0 and all of row 1 are unchanged.
        let mut mask = vec![1u32; b * t];
        mask[3] = 0;
        let (y2, _) = run(mask);
        let w = nh * hd;
        assert!(max_diff(&y2[..3 * w], &y[..3 * w]) < 1e-6);
        assert!(max_diff(&y2[t * w..], &y[t * w..]) < 1e-6);
        assert!(max_diff(&y2[3 * w..t * w], &y[3 * w..t * w]) > 1e-4);
        // The last token alone, over a cache of the first t - 1 positions.
        let first: Vec<usize> = (0..b)
            .flat_map(|r| (0..t - 1).map(move |p| r * t + p))
            .collect();
        let rows = |x: &[f32], width: usize, which: &[usize]| -> Vec<f32> {
            which
                .iter()
                .flat_map(|&r| x[r * width..(r + 1) * width].to_vec())
                .collect()
        };
        let pos0: Vec<u32> = (0..b).flat_map(|_| 0..(t - 1) as u32).collect();
        let ctx0 = DecodeCtx::new(&inv, 1.0, b, t - 1, 0, &pos0, vec![1; b * (t - 1)]).unwrap();
        let mut k0 = rows(&k, nkv * hd, &first);
        rope_in_place(&mut k0, nkv, &ctx0).unwrap();
        let mut cache1 = KvBuffers::default();
        cache1
            .append(&k0, &rows(&v, nkv * hd, &first), b, nkv, hd)
            .unwrap();
        let last: Vec<usize> = (0..b).map(|r| r * t + t - 1).collect();
        let ctx1 = DecodeCtx::new(
            &inv,
            1.0,
            b,
            1,
            t - 1,
            &vec![(t - 1) as u32; b],
            vec![1; b * t],
        )
        .unwrap();
        let (mut q1, mut k1) = (rows(&q, nh * hd, &last), rows(&k, nkv * hd, &last));
        rope_in_place(&mut q1, nh, &ctx1).unwrap();
        rope_in_place(&mut k1, nkv, &ctx1).unwrap();
        cache1
            .append(&k1, &rows(&v, nkv * hd, &last), b, nkv, hd)
            .unwrap();
        let y1 = attend(&q1, &cache1, nh, &ctx1).unwrap();
        assert!(max_diff(&y1, &rows(&y, nh * hd, &last)) < 1e-5);
        // Both caches hold the same rotated keys and values.
        for (bi, g) in [(0, 0), (1, 1)] {
            for values in [false, true] {
                assert!(max_diff(cache1.head(values, bi, g), cache.head(values, bi, g)) < 1e-6);
            }
        }
    }

    /// Appending across growth keeps every filled position: 60 + 1 + 10 + 70 positions fill
    /// the first 64-position buffer, then grow it twice.
    #[test]
    fn appends_keep_every_position_across_growth() {
        let (b, nkv, hd) = (2, 3, 4);
        let mut cache = KvBuffers::default();
        let mut want_k: Vec<Vec<f32>> = vec![Vec::new(); b * nkv];
        let mut want_v: Vec<Vec<f32>> = vec![Vec::new(); b * nkv];
        for (step, t) in [60usize, 1, 10, 70].into_iter().enumerate() {
            let k = data(&randn(&[b, t, nkv * hd], step as u64));
            let v: Vec<f32> = k.iter().map(|x| x + step as f32).collect();
            cache.append(&k, &v, b, nkv, hd).unwrap();
            for bi in 0..b {
                for p in 0..t {
                    for g in 0..nkv {
                        let s = ((bi * t + p) * nkv + g) * hd;
                        want_k[bi * nkv + g].extend_from_slice(&k[s..s + hd]);
                        want_v[bi * nkv + g].extend_from_slice(&v[s..s + hd]);
                    }
                }
            }
            assert!(cache.capacity() >= cache.len());
            for bi in 0..b {
                for g in 0..nkv {
                    assert_eq!(cache.head(false, bi, g), &want_k[bi * nkv + g][..]);
                    assert_eq!(cache.head(true, bi, g), &want_v[bi * nkv + g][..]);
                }
            }
        }
        assert_eq!((cache.len(), cache.capacity()), (141, 256));
        assert!(cache.append(&[0.0; 8], &[0.0; 8], 1, 2, 4).is_err());
    }
}
