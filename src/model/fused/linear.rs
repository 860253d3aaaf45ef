//! The projection y = x W^T as one gemm call on the layouts the checkpoint stores (W is
//! (out, in), row-major), with the backward dx = dy W and dW = dy^T x written straight into
//! W's own layout (no transposed gradient to copy later). Large products go to the system
//! BLAS where there is one ([`super::blas`]), split across rayon's threads here, and to the
//! gemm crate otherwise. Small products (one decoding step) run on the calling thread: the
//! thread-pool hand-off costs more than they do.

use super::{blas, slice, with_data, Kernel, SharedMut};
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

/// y (rows, out) = x (rows, in) W^T for W (out, in).
pub(crate) fn forward(x: &[f32], w: &[f32], rows: usize, inp: usize, out: usize) -> Vec<f32> {
    product(rows, out, inp, x, (inp, 1), w, (1, inp))
}

/// The gradients of y = x W^T: dx (rows, in) = dy W and dW (out, in) = dy^T x.
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    rows: usize,
    inp: usize,
    out: usize,
) -> (Vec<f32>, Vec<f32>) {
    let dx = product(rows, inp, out, dy, (out, 1), w, (inp, 1));
    let dw = product(out, inp, rows, dy, (1, out), x, (inp, 1));
    (dx, dw)
}

fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if m * n * k >= PARALLEL_MIN_MACS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// A fresh (m x n) row-major product of a (m x k, strides a) and b (k x n, strides b).
pub fn product(
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
    if let Some(lib) = blas::get().filter(|_| super::enabled(Kernel::Blas)) {
        if lib.accepts(m, n, k, a_strides, b_strides) {
            blas_product(lib, m, n, k, a, a_strides, b, b_strides, &mut out);
            // SAFETY: blas_product wrote all m x n elements (beta = 0 never reads them).
            unsafe { out.set_len(m * n) };
            return out;
        }
    }
    gemm_product(m, n, k, a, a_strides, b, b_strides, out)
}

/// [`product`] on the gemm crate, into `out`'s spare capacity.
#[allow(clippy::too_many_arguments)]
fn gemm_product(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    mut out: Vec<f32>,
) -> Vec<f32> {
    assert!(out.capacity() >= m * n, "gemm product: short destination");
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

/// Rows or columns per block of a split BLAS product: a multiple of the kernels' tile edge,
/// and at least enough that packing the other operand again per block costs little.
const BLAS_BLOCK_ALIGN: usize = 16;
const BLAS_BLOCK_MIN: usize = 64;

/// Blocks per rayon thread in a split BLAS product.
const BLAS_BLOCKS_PER_THREAD: usize = 4;

/// `out`'s spare capacity (m x n) = A B through the system BLAS, the larger of m and n split
/// into blocks for rayon's threads (the library itself runs single-threaded, see
/// [`blas`]). The caller checked [`blas::Blas::accepts`]; blocks keep the full product's
/// strides, so they are accepted too.
#[allow(clippy::too_many_arguments)]
fn blas_product(
    lib: &blas::Blas,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    out: &mut Vec<f32>,
) {
    assert!(out.capacity() >= m * n, "blas product: short destination");
    // Several blocks per thread, taken by work stealing: with one block each, the product
    // waits for whichever core the host slowed down.
    let parts = if m * n * k >= PARALLEL_MIN_MACS {
        BLAS_BLOCKS_PER_THREAD * rayon::current_num_threads()
    } else {
        1
    };
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let block = len
        .div_ceil(parts)
        .next_multiple_of(BLAS_BLOCK_ALIGN)
        .max(BLAS_BLOCK_MIN);
    let c = SharedMut(out.as_mut_ptr());
    let run = |start: usize| {
        let size = block.min(len - start);
        // SAFETY: each block writes its own rows (or columns) of the m x n destination; the
        // operands' offsets stay inside a and b for the strides the caller gave.
        unsafe {
            let done = if split_rows {
                lib.sgemm(
                    size,
                    n,
                    k,
                    a.as_ptr().add(start * a_strides.0),
                    a_strides,
                    b.as_ptr(),
                    b_strides,
                    c.ptr().add(start * n),
                    n,
                )
            } else {
                lib.sgemm(
                    m,
                    size,
                    k,
                    a.as_ptr(),
                    a_strides,
                    b.as_ptr().add(start * b_strides.1),
                    b_strides,
                    c.ptr().add(start),
                    n,
                )
            };
            assert!(
                done,
                "blas product: a block was refused after the product was accepted"
            );
        }
    };
    let starts: Vec<usize> = (0..len).step_by(block.max(1)).collect();
    if starts.len() > 1 {
        starts.into_par_iter().for_each(run);
    } else {
        starts.into_iter().for_each(run);
    }
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
        let y = forward(x, w, rows, inp, out);
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
            with_data(w, |w| {
                with_data(x, |x| Ok(backward(x, w, dy, rows, inp, out)))
            })
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
    fn system_blas_blocks_match_gemm() {
        let Some(lib) = blas::get() else {
            // .ci/run installs OpenBLAS and sets this, so CI always runs the comparison.
            assert!(
                std::env::var_os("ELASTICA_REQUIRE_BLAS").is_none(),
                "no system BLAS: {}",
                blas::status()
            );
            eprintln!("skipped: {}", blas::status());
            return;
        };
        // Transposed and plain operands, sizes off the block alignment, split by rows (m > n)
        // and by columns, on threads (above PARALLEL_MIN_MACS) and not.
        for (m, n, k) in [(200, 150, 100), (90, 333, 70), (17, 5, 3), (64, 64, 64)] {
            let a = randn(&[m * k], 4)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = randn(&[k * n], 5)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (sa, sb) in [((k, 1), (n, 1)), ((1, m), (1, k)), ((k, 1), (1, k))] {
                let want = gemm_product(m, n, k, &a, sa, &b, sb, Vec::with_capacity(m * n));
                assert!(lib.accepts(m, n, k, sa, sb));
                let mut got = Vec::with_capacity(m * n);
                blas_product(lib, m, n, k, &a, sa, &b, sb, &mut got);
                // SAFETY: blas_product wrote all m x n elements.
                unsafe { got.set_len(m * n) };
                let diff = want
                    .iter()
                    .zip(&got)
                    .fold(0f32, |d, (x, y)| d.max((x - y).abs()));
                assert!(
                    diff < 1e-4,
                    "{m}x{n}x{k} strides {sa:?} {sb:?}: differs by {diff}"
                );
            }
        }
    }

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
