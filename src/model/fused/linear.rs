//! The projection y = x W^T as one gemm call on the layouts the checkpoint stores (W is
//! (out, in), row-major), with the backward dx = dy W and dW = dy^T x written straight into
//! W's own layout (no transposed gradient to copy later). Small products (one decoding
//! step) run on the calling thread: the thread-pool hand-off costs more than they do.

use super::{slice, with_data, Kernel};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Products with 1 to this many rows (a decoding step's batch) take [`few_rows_product`].
const FEW_ROWS: usize = 16;

/// Weight rows per parallel task of [`few_rows_product`].
const FEW_ROWS_BLOCK: usize = 64;

/// Multiply-adds below which a product is not worth splitting across threads.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// x (.., in) times W^T (out, in): (.., out). Fused when the kernel is on and the tensors
/// allow it; otherwise candle's matmul (the reference).
pub fn linear_no_bias(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let last = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, last))?; // (rows, in)
    let y = if super::usable(Kernel::Linear, &[x, w]) && w.rank() == 2 {
        x2.contiguous()?.apply_op2(&w.contiguous()?, Linear)?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out_dims = dims;
    let n = out_dims.len();
    out_dims[n - 1] = w.dim(0)?;
    y.reshape(out_dims)
}

struct Linear;

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if m * n * k >= PARALLEL_MIN_MACS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// A fresh (m x n) row-major product of a (m x k, strides a) and b (k x n, strides b).
fn product(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
) -> Vec<f32> {
    if k == 0 {
        return vec![0f32; m * n];
    }
    #[cfg(target_arch = "x86_64")]
    if (1..=FEW_ROWS).contains(&m)
        && a_strides == (k, 1)
        && b_strides == (1, k)
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        return few_rows_product(m, n, k, a, b);
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: gemm writes every element of the m x n destination (read_dst = false) before
    // the length is set; a and b are in bounds for the given shapes and strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_strides.1 as isize,
            a_strides.0 as isize,
            b.as_ptr(),
            b_strides.1 as isize,
            b_strides.0 as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(m, n, k),
        );
        out.set_len(m * n);
    }
    out
}

/// x (m, k) times W^T for a weight W (n, k), when m is a decoding step's few rows, on an
/// AVX-512 CPU. gemm's AVX-512 tiles are 64 rows tall, so at m = 16 most of each tile is
/// padding and the product ran at half the speed of gemm's AVX2 kernel (15-31 against 33-56
/// GFLOP/s); here each weight row is read once and dotted with every input row (37-39 GFLOP/s
/// on one thread). Other CPUs keep gemm, whose AVX2 tiles are 16 rows tall.
#[cfg(target_arch = "x86_64")]
fn few_rows_product(m: usize, n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    // The kernel reads x through raw pointers.
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "few-row product: short operands"
    );
    // Computed transposed, (n, m), so parallel tasks own contiguous blocks.
    let mut ct = vec![0f32; n * m];
    // SAFETY: the caller checked AVX-512F; blocks hold whole rows (n rows of m and of k).
    let task = |(cb, wb): (&mut [f32], &[f32])| unsafe { dot_rows_avx512(cb, wb, x, m, k) };
    if m * n * k >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1 {
        ct.par_chunks_mut(FEW_ROWS_BLOCK * m)
            .zip(w.par_chunks(FEW_ROWS_BLOCK * k))
            .for_each(task);
    } else {
        ct.chunks_mut(FEW_ROWS_BLOCK * m)
            .zip(w.chunks(FEW_ROWS_BLOCK * k))
            .for_each(task);
    }
    let mut out = vec![0f32; m * n];
    for (j, c) in ct.chunks_exact(m).enumerate() {
        for (i, &v) in c.iter().enumerate() {
            out[i * n + j] = v;
        }
    }
    out
}

/// ct[j * m + i] = dot(w row j, x row i) for the weight rows in `w`, four input rows at a
/// time so each weight vector loaded feeds four multiply-adds. (Written with intrinsics: the
/// same loop left to LLVM's autovectoriser stayed scalar, at 2 GFLOP/s.)
///
/// # Safety
/// The CPU must have AVX-512F; `x` holds m rows of k, `w` and `ct` whole rows of k and m.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512(ct: &mut [f32], w: &[f32], x: &[f32], m: usize, k: usize) {
    use std::arch::x86_64::*;
    let full = k / 16;
    // The last k % 16 elements go through masked loads (zeros beyond the row).
    let mask: __mmask16 = ((1u32 << (k % 16)) - 1) as u16;
    let xp = x.as_ptr();
    for (c_row, w_row) in ct.chunks_exact_mut(m).zip(w.chunks_exact(k)) {
        let wp = w_row.as_ptr();
        let mut i = 0;
        while i + 4 <= m {
            let r: [*const f32; 4] = std::array::from_fn(|g| xp.add((i + g) * k));
            let mut a = [_mm512_setzero_ps(); 4];
            for l in 0..full {
                let wv = _mm512_loadu_ps(wp.add(l * 16));
                for g in 0..4 {
                    a[g] = _mm512_fmadd_ps(_mm512_loadu_ps(r[g].add(l * 16)), wv, a[g]);
                }
            }
            if mask != 0 {
                let wv = _mm512_maskz_loadu_ps(mask, wp.add(full * 16));
                for g in 0..4 {
                    let xv = _mm512_maskz_loadu_ps(mask, r[g].add(full * 16));
                    a[g] = _mm512_fmadd_ps(xv, wv, a[g]);
                }
            }
            for g in 0..4 {
                c_row[i + g] = _mm512_reduce_add_ps(a[g]);
            }
            i += 4;
        }
        for (i, c) in c_row.iter_mut().enumerate().skip(i) {
            let r = xp.add(i * k);
            let mut a = _mm512_setzero_ps();
            for l in 0..full {
                let (xv, wv) = (
                    _mm512_loadu_ps(r.add(l * 16)),
                    _mm512_loadu_ps(wp.add(l * 16)),
                );
                a = _mm512_fmadd_ps(xv, wv, a);
            }
            if mask != 0 {
                let xv = _mm512_maskz_loadu_ps(mask, r.add(full * 16));
                let wv = _mm512_maskz_loadu_ps(mask, wp.add(full * 16));
                a = _mm512_fmadd_ps(xv, wv, a);
            }
            *c = _mm512_reduce_add_ps(a);
        }
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let (rows, inp) = l1.shape().dims2()?;
        let (out, inw) = l2.shape().dims2()?;
        if inp != inw {
            candle_core::bail!("linear: input width {inp} does not match the weight's {inw}");
        }
        // (rows, in) x (in, out) where W^T's element (i, j) is w[j * in + i].
        let y = product(rows, out, inp, x, (inp, 1), w, (1, inp));
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, inp) = x.dims2()?;
        let out = w.dim(0)?;
        let (dx, dw) = with_data(grad, |dy| {
            let dx = with_data(w, |w| {
                Ok(product(rows, inp, out, dy, (out, 1), w, (inp, 1)))
            })?;
            // dW (out, in) = dy^T (out, rows) x (rows, in)
            let dw = with_data(x, |x| {
                Ok(product(out, inp, rows, dy, (1, out), x, (inp, 1)))
            })?;
            Ok((dx, dw))
        })?;
        Ok((
            Some(Tensor::from_vec(dx, (rows, inp), x.device())?),
            Some(Tensor::from_vec(dw, (out, inp), w.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_op2, randn};
    use super::*;

    #[test]
    fn matches_reference_and_finite_differences() {
        // (96, 64, 48) is gemm's, on threads; the rest are few-row products, (16, 70, 300) on
        // threads, with widths that are not a multiple of the lane count.
        for (rows, inp, out) in [
            (5, 7, 3),
            (96, 64, 48),
            (16, 70, 300),
            (1, 64, 100),
            (6, 33, 65),
        ] {
            let x = randn(&[rows, inp], 1);
            let w = randn(&[out, inp], 2);
            let o = randn(&[rows, out], 3);
            let fused = |t: &[Tensor]| t[0].apply_op2(&t[1], Linear).unwrap();
            let reference = |t: &[Tensor]| t[0].matmul(&t[1].t().unwrap()).unwrap();
            check_op2(&x, &w, &o, &fused, &reference, (1e-4, 1e-4));
        }
    }
}
