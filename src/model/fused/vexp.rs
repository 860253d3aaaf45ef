//! Vectorised `exp` for the kernels' softmaxes and sigmoids, and the float reductions they
//! and the norms need (max, sums), which a plain loop keeps scalar. libm's scalar `expf` was
//! 8.7% of a training step's CPU samples (the softmax over a 4096-word vocabulary alone is 4M
//! calls a step); this one is Cephes' single-precision polynomial (relative error < 2e-7),
//! written branch-free so LLVM vectorises it, and compiled three times (AVX-512, AVX2,
//! baseline) with the widest one this CPU has picked at run time. RoPE's rotation lives here
//! too, for the same reason: outside these multiversioned functions the crate compiles for
//! the baseline instruction set.
//!
//! The arithmetic is plain IEEE mul/add (no FMA contraction), and the reductions keep
//! [`LANES`] partial sums in a fixed order, so every variant returns bit-identical results:
//! the choice of instruction set never changes a number, only how fast it comes.

/// Partial sums kept by the reductions (one AVX-512 register of f32).
const LANES: usize = 16;

/// Below this, exp underflows to 0 (true exp(-87.3) is the smallest normal f32).
const LO: f32 = -87.0;
/// Above this, exp is +inf (the true overflow is at 88.72; nothing here comes close).
const HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 * 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;
/// 2^23 + 127: see the scale in [`exp`].
const EXP_BIAS: f32 = 8_388_735.0;
/// ln 2 split in two so n * C1 is exact (Cephes).
const C1: f32 = 0.693_359_4;
const C2: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// exp(x), branch-free. NaN stays NaN, -inf and anything below -87 give 0, +inf gives +inf.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Comparisons, not min/max: a NaN must fall through to the result.
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * C1) - n * C2;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let y = p * (r * r) + r + 1.0;
    // 2^n from its exponent bits; n is a whole number in [-126, 127] after the clamp. Adding
    // 2^23 + 127 puts n + 127 in the mantissa's low bits, and the shift moves them into the
    // exponent (and the rest out). `n as i32` computed the same, but Rust's saturating cast
    // kept LLVM from vectorising it: 16 scalar conversions per vector.
    let scale = f32::from_bits((n + EXP_BIAS).to_bits() << 23);
    let v = y * scale;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        v
    }
}

/// Defines `pub fn $name` that runs `$body` compiled for AVX-512, for AVX2, or for the
/// baseline, whichever is the widest this CPU supports.
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { v3($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Sum of the lanes in a fixed order.
#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    let mut w = acc;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            w[i] += w[i + n];
        }
    }
    w[0]
}

multiversion! {
    /// The largest element (NaNs are skipped, as `f32::max` does); -inf for an empty slice.
    pub fn max(xs: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        for (i, &x) in rest.iter().enumerate() {
            acc[i] = if x > acc[i] { x } else { acc[i] };
        }
        acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }
}

multiversion! {
    /// Sum of xs[i]^2 (an RMSNorm's denominator). A plain `.sum()` adds in sequence, which
    /// LLVM may not reorder, so it ran one scalar add at a time.
    pub fn sum_squares(xs: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += c[i] * c[i];
            }
        }
        for (i, &x) in rest.iter().enumerate() {
            acc[i] += x * x;
        }
        reduce(acc)
    }
}

multiversion! {
    /// Sum of a[i] * b[i] * c[i] over the shortest of the three.
    pub fn sum_products3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
        let n = a.len().min(b.len()).min(c.len());
        let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
        let mut acc = [0f32; LANES];
        let full = n - n % LANES;
        for j in (0..full).step_by(LANES) {
            for i in 0..LANES {
                acc[i] += a[j + i] * b[j + i] * c[j + i];
            }
        }
        for (i, j) in (full..n).enumerate() {
            acc[i] += a[j] * b[j] * c[j];
        }
        reduce(acc)
    }
}

multiversion! {
    /// RoPE's rotation of one head in place, its halves `lo` and `hi` turned by the angles
    /// whose cosines and sines are `c` and `s`: (a, b) -> (a c - b s, b c + a s).
    pub fn rotate_halves(lo: &mut [f32], hi: &mut [f32], c: &[f32], s: &[f32]) {
        for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
            let (x, y) = (*a, *b);
            *a = x * c + (-y) * s;
            *b = y * c + x * s;
        }
    }
}

multiversion! {
    /// xs[i] = exp(xs[i] - m), and returns their sum (a softmax's numerators).
    pub fn exp_shifted_sum(xs: &mut [f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let mut chunks = xs.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                c[i] = exp(c[i] - m);
                acc[i] += c[i];
            }
        }
        for (i, x) in chunks.into_remainder().iter_mut().enumerate() {
            *x = exp(*x - m);
            acc[i] += *x;
        }
        reduce(acc)
    }
}

multiversion! {
    /// Sum of exp(xs[i] - m), leaving xs alone (a logsumexp's inner sum).
    pub fn sum_exp_shifted(xs: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = xs.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += exp(c[i] - m);
            }
        }
        for (i, &x) in rest.iter().enumerate() {
            acc[i] += exp(x - m);
        }
        reduce(acc)
    }
}

multiversion! {
    /// out[i] = g * exp(xs[i] - z) (a softmax's gradient before the target's -g).
    pub fn scaled_exp_shifted(out: &mut [f32], xs: &[f32], z: f32, g: f32) {
        for (o, &x) in out.iter_mut().zip(xs) {
            *o = g * exp(x - z);
        }
    }
}

multiversion! {
    /// out += sum_j p[j] * row j of `rows` (rows of out's length; one query's attention
    /// output from its probabilities and a head's values). Zero weights are skipped.
    pub fn add_weighted_rows(out: &mut [f32], p: &[f32], rows: &[f32]) {
        for (&pj, r) in p.iter().zip(rows.chunks_exact(out.len().max(1))) {
            if pj != 0.0 {
                for (o, &x) in out.iter_mut().zip(r) {
                    *o += pj * x;
                }
            }
        }
    }
}

/// Logistic sigmoid 1 / (1 + exp(-x)), the form candle's silu uses.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_scale_of_f64_over_its_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_edges() {
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(sigmoid(f32::NAN).is_nan());
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(sigmoid(-200.0), 0.0);
    }

    /// The scalar loop each variant compiles from, for comparing bit patterns.
    fn shifted_sum_plain(xs: &mut [f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        for (i, x) in xs.iter_mut().enumerate() {
            *x = exp(*x - m);
            acc[i % LANES] += *x;
        }
        reduce(acc)
    }

    #[test]
    fn weighted_rows_match_a_plain_loop() {
        for n in [1usize, 16, 17, 64, 100] {
            let q: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let rows: Vec<f32> = (0..3 * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut out = q.clone();
            add_weighted_rows(&mut out, &[0.5, 0.0, 2.0], &rows);
            for (i, o) in out.iter().enumerate() {
                assert_eq!(*o, q[i] + 0.5 * rows[i] + 2.0 * rows[2 * n + i]);
            }
        }
    }

    #[test]
    fn vector_variants_give_the_scalar_bits() {
        // Lengths around the lane count, and a vocabulary-sized row.
        for n in [0usize, 1, 15, 16, 17, 33, 4096 + 7] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
                .collect();
            let m = max(&xs);
            let want_m = xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(m.to_bits(), want_m.to_bits());
            let (mut a, mut b) = (xs.clone(), xs.clone());
            let s = exp_shifted_sum(&mut a, m);
            let t = shifted_sum_plain(&mut b, m);
            assert_eq!(s.to_bits(), t.to_bits(), "n {n}");
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert_eq!(sum_exp_shifted(&xs, m).to_bits(), t.to_bits());
            let mut out = vec![0f32; n];
            scaled_exp_shifted(&mut out, &xs, m, 0.5);
            assert!(out
                .iter()
                .zip(&b)
                .all(|(o, e)| o.to_bits() == (0.5 * e).to_bits()));
            // The reductions against a plain loop in the same lane order (bit for bit), and
            // against f64.
            let ys: Vec<f32> = xs.iter().map(|x| 0.5 - x * 0.01).collect();
            let zs: Vec<f32> = xs.iter().map(|x| x.sin()).collect();
            let (mut sq, mut pr) = ([0f32; LANES], [0f32; LANES]);
            for i in 0..n {
                sq[i % LANES] += xs[i] * xs[i];
                pr[i % LANES] += xs[i] * ys[i] * zs[i];
            }
            assert_eq!(sum_squares(&xs).to_bits(), reduce(sq).to_bits(), "n {n}");
            assert_eq!(
                sum_products3(&xs, &ys, &zs).to_bits(),
                reduce(pr).to_bits(),
                "n {n}"
            );
            let exact: f64 = xs.iter().map(|&x| x as f64 * x as f64).sum();
            assert!((sum_squares(&xs) as f64 - exact).abs() <= 1e-6 * exact.max(1.0));
            if n > 0 {
                let lse = m + s.ln();
                let exact =
                    (xs.iter().map(|&x| (x as f64 - m as f64).exp()).sum::<f64>()).ln() + m as f64;
                assert!((lse as f64 - exact).abs() < 1e-5 * exact.abs().max(1.0));
            }
        }
    }
}
