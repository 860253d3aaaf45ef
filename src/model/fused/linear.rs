//! The projection y = x W^T as one gemm call on the layouts the checkpoint stores (W is
//! (out, in), row-major), with the backward dx = dy W and dW = dy^T x written straight into
//! W's own layout (no transposed gradient to copy later). Large products go to the system
//! BLAS where there is one ([`super::blas`]), split across rayon's threads here, and to the
//! gemm crate otherwise. Small products (one decoding step) run on the calling thread: the
//! thread-pool hand-off costs more than they do.

use super::op::{FusedOp, Grads, Input, KernelOp};
use super::{blas, with_data, Kernel, SharedMut};
use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

/// Products with 1 to this many rows (a decoding step's batch) take [`few_rows_product`].
const FEW_ROWS: usize = 16;

/// Multiply-adds from which [`few_rows_product`] splits across threads.
const FEW_ROWS_PARALLEL_MACS: usize = 1 << 20;

/// Weight size from which [`few_rows_product`] splits across threads whatever the rows: a
/// product that streams this much from memory goes faster on two cores' bandwidth.
const FEW_ROWS_PARALLEL_WEIGHT: usize = 1 << 16;

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
        x2.contiguous()?
            .apply_op2(&w.contiguous()?, KernelOp(Linear))?
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
    if let Some(lib) = system_blas(m, n, k, a_strides, b_strides) {
        // SAFETY: out has room for m x n; beta = 0 never reads it, and blas_product writes
        // every element before the length is set.
        unsafe {
            blas_product(
                lib,
                (m, n, k),
                a,
                a_strides,
                b,
                b_strides,
                0.0,
                SharedMut(out.as_mut_ptr()),
            );
            out.set_len(m * n);
        }
        return out;
    }
    gemm_product((m, n, k), a, a_strides, b, b_strides, out)
}

/// acc (rows, out) += x (rows, in) W^T for W (out, in): a projection added onto the
/// residual stream. On the system BLAS the sum is the product's own accumulator (beta = 1),
/// which saves the pass that zeroes a fresh destination, the destination itself, and the
/// pass that adds it.
pub(crate) fn forward_add(
    x: &[f32],
    w: &[f32],
    rows: usize,
    inp: usize,
    out: usize,
    acc: &mut [f32],
) {
    assert!(acc.len() >= rows * out, "projection sum: short destination");
    // Decoding steps' few rows keep their own kernel (see `product`).
    if rows > FEW_ROWS {
        if let Some(lib) = system_blas(rows, out, inp, (inp, 1), (1, inp)) {
            // SAFETY: acc holds rows x out initialised elements; x and w are in bounds.
            unsafe {
                blas_product(
                    lib,
                    (rows, out, inp),
                    x,
                    (inp, 1),
                    w,
                    (1, inp),
                    1.0,
                    SharedMut(acc.as_mut_ptr()),
                )
            };
            return;
        }
    }
    super::add_into(acc, &forward(x, w, rows, inp, out));
}

/// The system BLAS, when it is on and takes a product of this shape and these strides.
fn system_blas(
    m: usize,
    n: usize,
    k: usize,
    a_strides: (usize, usize),
    b_strides: (usize, usize),
) -> Option<&'static blas::Blas> {
    blas::get()
        .filter(|_| super::enabled(Kernel::Blas))
        .filter(|lib| lib.accepts(m, n, k, a_strides, b_strides))
}

/// [`product`] on the gemm crate, into `out`'s spare capacity (shapes as [`blas_product`]).
fn gemm_product(
    (m, n, k): (usize, usize, usize),
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

/// Blocks a large BLAS product is split into: one per core of the machine, whatever the
/// pool's size. The blocks must not follow the thread count, because a library may round a
/// block of rows differently from the whole product (MKL does: at k = 1024 a 128-row block
/// differs from the same rows of a 256-row one), and then `--threads` would change the
/// numbers. One block per core, not several to balance a slowed core by work stealing: each
/// block packs the other operand again, and four per thread cost 8-20% more CPU per
/// forward and 5-15% more per training step (BENCHMARKS.md, 2026-11-29).
fn blas_parts() -> usize {
    static PARTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PARTS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// c (m x n, row-major) = A B + beta c through the system BLAS, the larger of m and n split
/// into blocks for rayon's threads (the library itself runs single-threaded, see [`blas`]).
/// The caller checked [`blas::Blas::accepts`]; blocks keep the full product's strides, so
/// they are accepted too.
///
/// # Safety
/// `c` must be valid for m x n writes, and initialised where beta is not 0.
#[allow(clippy::too_many_arguments)]
unsafe fn blas_product(
    lib: &blas::Blas,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    beta: f32,
    c: SharedMut,
) {
    let parts = if m * n * k >= PARALLEL_MIN_MACS {
        blas_parts()
    } else {
        1
    };
    let split_rows = m >= n;
    let len = if split_rows { m } else { n };
    let block = len
        .div_ceil(parts)
        .next_multiple_of(BLAS_BLOCK_ALIGN)
        .max(BLAS_BLOCK_MIN);
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
                    beta,
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
                    beta,
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
/// padding, and gemm packs the whole weight on every call; here each weight row is read in
/// place and dotted with the input rows in 4 x 4 tiles ([`tile_avx512`]). Other CPUs keep
/// gemm, whose AVX2 tiles are 16 rows tall.
#[cfg(target_arch = "x86_64")]
fn few_rows_product(m: usize, n: usize, k: usize, x: &[f32], w: &[f32]) -> Vec<f32> {
    // The kernel reads through raw pointers.
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "few-row product: short operands"
    );
    let mut out = vec![0f32; m * n];
    let dst = SharedMut(out.as_mut_ptr());
    // SAFETY: the caller checked AVX-512F; each task writes its own columns j0..j1 of out.
    let task = |(j0, j1): (usize, usize)| unsafe { few_rows_block(dst, x, w, m, n, k, j0, j1) };
    // A fork-join costs tens of microseconds from outside the pool (less on a pool thread,
    // where decoding runs): only products well above that are split.
    let blocks = if m * n * k >= FEW_ROWS_PARALLEL_MACS || n * k >= FEW_ROWS_PARALLEL_WEIGHT {
        rayon::current_num_threads()
    } else {
        1
    };
    let step = n.div_ceil(blocks).next_multiple_of(4).max(4);
    let ranges: Vec<(usize, usize)> = (0..n)
        .step_by(step)
        .map(|j| (j, (j + step).min(n)))
        .collect();
    if ranges.len() > 1 {
        ranges.into_par_iter().for_each(task);
    } else {
        ranges.into_iter().for_each(task);
    }
    out
}

/// Columns j0..j1 of out (m, n) = x W^T, in tiles of 4 weight rows by 4 input rows.
///
/// # Safety
/// The CPU must have AVX-512F; x holds m rows of k, w n rows of k, out m rows of n.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn few_rows_block(
    out: SharedMut,
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    j0: usize,
    j1: usize,
) {
    let (xp, wp, o) = (x.as_ptr(), w.as_ptr(), out.ptr());
    // Writes one tile's sums (r weight rows from j, c input rows from i).
    let put = |sums: &[[f32; 4]; 4], j: usize, i: usize, r: usize, c: usize| {
        for (jj, row) in sums.iter().enumerate().take(r) {
            for (ii, &v) in row.iter().enumerate().take(c) {
                *o.add((i + ii) * n + j + jj) = v;
            }
        }
    };
    let mut j = j0;
    while j < j1 {
        let r = (j1 - j).min(4);
        let mut i = 0;
        while i < m {
            let c = (m - i).min(4);
            // Partial tiles go one weight row or one input row at a time.
            match (r, c) {
                (4, 4) => put(
                    &tile_avx512::<4, 4>(wp.add(j * k), xp.add(i * k), k),
                    j,
                    i,
                    4,
                    4,
                ),
                (4, _) => {
                    for ii in i..i + c {
                        put(
                            &tile_avx512::<4, 1>(wp.add(j * k), xp.add(ii * k), k),
                            j,
                            ii,
                            4,
                            1,
                        );
                    }
                }
                (_, 4) => {
                    for jj in j..j + r {
                        put(
                            &tile_avx512::<1, 4>(wp.add(jj * k), xp.add(i * k), k),
                            jj,
                            i,
                            1,
                            4,
                        );
                    }
                }
                _ => {
                    for jj in j..j + r {
                        for ii in i..i + c {
                            let s = tile_avx512::<1, 1>(wp.add(jj * k), xp.add(ii * k), k);
                            put(&s, jj, ii, 1, 1);
                        }
                    }
                }
            }
            i += c;
        }
        j += r;
    }
}

/// sums[a][b] = dot(weight row a, input row b) for R consecutive weight rows from `w` and C
/// consecutive input rows from `x`, each of length k: every 16-wide load feeds R or C
/// multiply-adds (the 1 x 4 kernel this replaced was bound by its loads). (Written with
/// intrinsics: the same loop left to LLVM's autovectoriser stayed scalar.)
///
/// # Safety
/// The CPU must have AVX-512F; R rows from w and C rows from x, each of k floats, readable.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const C: usize>(
    w: *const f32,
    x: *const f32,
    k: usize,
) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    let full = k / 16;
    // The last k % 16 elements go through masked loads (zeros beyond the row).
    let mask: __mmask16 = ((1u32 << (k % 16)) - 1) as u16;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for l in 0..full {
        let xv: [__m512; C] = std::array::from_fn(|b| _mm512_loadu_ps(x.add(b * k + l * 16)));
        for (a, acc_a) in acc.iter_mut().enumerate() {
            let wv = _mm512_loadu_ps(w.add(a * k + l * 16));
            for (acc_ab, &xb) in acc_a.iter_mut().zip(&xv) {
                *acc_ab = _mm512_fmadd_ps(wv, xb, *acc_ab);
            }
        }
    }
    if mask != 0 {
        let xv: [__m512; C] =
            std::array::from_fn(|b| _mm512_maskz_loadu_ps(mask, x.add(b * k + full * 16)));
        for (a, acc_a) in acc.iter_mut().enumerate() {
            let wv = _mm512_maskz_loadu_ps(mask, w.add(a * k + full * 16));
            for (acc_ab, &xb) in acc_a.iter_mut().zip(&xv) {
                *acc_ab = _mm512_fmadd_ps(wv, xb, *acc_ab);
            }
        }
    }
    // Every tile shape sums a dot product's lanes in reduce4's order, so a row's result does
    // not depend on which tile it fell in.
    let zero = _mm512_setzero_ps();
    let mut sums = [[0f32; 4]; 4];
    for (s, a) in sums.iter_mut().zip(&acc) {
        *s = reduce4_avx512(std::array::from_fn(|b| if b < C { a[b] } else { zero }));
    }
    sums
}

/// The lane sums of four vectors at once: two rounds of pairwise shuffles and adds within
/// each 128-bit quarter, then the quarters added (about a third of the instructions of four
/// separate reductions, which cost a tile with k = 256 a fifth of its time).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce4_avx512(v: [std::arch::x86_64::__m512; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    // Per quarter: [v0 0+2, v1 0+2, v0 1+3, v1 1+3] and the same for v2, v3.
    let t0 = _mm512_add_ps(
        _mm512_unpacklo_ps(v[0], v[1]),
        _mm512_unpackhi_ps(v[0], v[1]),
    );
    let t1 = _mm512_add_ps(
        _mm512_unpacklo_ps(v[2], v[3]),
        _mm512_unpackhi_ps(v[2], v[3]),
    );
    // Per quarter: [sum v0, sum v1, sum v2, sum v3] of that quarter.
    let u = _mm512_add_ps(
        _mm512_shuffle_ps::<0b01_00_01_00>(t0, t1),
        _mm512_shuffle_ps::<0b11_10_11_10>(t0, t1),
    );
    // Add the quarters: swap halves, then swap neighbouring quarters.
    let u = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0b01_00_11_10>(u, u));
    let u = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0b10_11_00_01>(u, u));
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(u));
    out
}

impl FusedOp<2> for Linear {
    const NAME: &'static str = "fused-linear";

    fn cpu_fwd(&self, [x, w]: [Input<'_>; 2]) -> Result<(Vec<f32>, Shape)> {
        let (rows, inp) = x.layout.shape().dims2()?;
        let (out, inw) = w.layout.shape().dims2()?;
        if inp != inw {
            candle_core::bail!("linear: input width {inp} does not match the weight's {inw}");
        }
        let y = forward(x.data, w.data, rows, inp, out);
        Ok((y, Shape::from((rows, out))))
    }

    fn bwd(&self, [x, w]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Grads<2> {
        let (rows, inp) = x.dims2()?;
        let out = w.dim(0)?;
        let (dx, dw) = with_data(grad, |dy| {
            with_data(w, |w| {
                with_data(x, |x| Ok(backward(x, w, dy, rows, inp, out)))
            })
        })?;
        Ok([
            Some(Tensor::from_vec(dx, (rows, inp), x.device())?),
            Some(Tensor::from_vec(dw, (out, inp), w.device())?),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_op2, randn};
    use super::*;

    /// `len` standard normal values from `seed`.
    fn data(len: usize, seed: u64) -> Vec<f32> {
        randn(&[len], seed)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

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
            let (a, b) = (data(m * k, 4), data(k * n, 5));
            for (sa, sb) in [((k, 1), (n, 1)), ((1, m), (1, k)), ((k, 1), (1, k))] {
                let want = gemm_product((m, n, k), &a, sa, &b, sb, Vec::with_capacity(m * n));
                assert!(lib.accepts(m, n, k, sa, sb));
                // beta = 1 adds onto what is there; beta = 0 must ignore it, even NaN.
                for (beta, start) in [(1.0f32, 0.5f32), (0.0, f32::NAN)] {
                    let mut got = vec![start; m * n];
                    // SAFETY: got holds m x n initialised elements.
                    unsafe {
                        blas_product(
                            lib,
                            (m, n, k),
                            &a,
                            sa,
                            &b,
                            sb,
                            beta,
                            SharedMut(got.as_mut_ptr()),
                        )
                    };
                    let added = if beta == 0.0 { 0.0 } else { start };
                    // `all` with `<`, so a NaN left behind fails (a max would skip it).
                    assert!(
                        want.iter()
                            .zip(&got)
                            .all(|(x, y)| (x + added - y).abs() < 1e-4),
                        "{m}x{n}x{k} strides {sa:?} {sb:?}, beta {beta}: differs"
                    );
                }
            }
        }
    }

    /// A projection summed onto the residual equals the residual plus the projection: on
    /// the system BLAS's accumulator (many rows) and on the few-row kernel.
    #[test]
    fn projection_sums_match_product_plus_residual() {
        for (rows, inp, out) in [(300, 96, 80), (9, 40, 24), (200, 700, 64)] {
            let (x, w, resid) = (
                data(rows * inp, 8),
                data(out * inp, 9),
                data(rows * out, 10),
            );
            let mut got = resid.clone();
            forward_add(&x, &w, rows, inp, out, &mut got);
            let y = forward(&x, &w, rows, inp, out);
            let diff = resid
                .iter()
                .zip(&y)
                .zip(&got)
                .fold(0f32, |d, ((r, y), g)| d.max((r + y - g).abs()));
            assert!(diff < 1e-4, "{rows}x{inp}->{out}: differs by {diff}");
        }
    }

    /// `--threads` must not change a number: a product split across a 1-thread pool and a
    /// 3-thread pool gives the same bits, on the system BLAS (its blocks are fixed per
    /// machine, not per pool) and on gemm.
    #[test]
    fn products_do_not_depend_on_the_pool_size() {
        let in_pool = |threads: usize, f: &(dyn Fn() -> Vec<f32> + Sync)| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(f)
        };
        // Above PARALLEL_MIN_MACS, rows off the block alignment, k = 688 (the down
        // projection's), and 1024 x 256 x 1024, where MKL rounds the 96-row blocks a 3-thread
        // split by pool size made differently from 256-row ones (this test failed on MKL then).
        for (m, n, k) in [(1000, 96, 688), (72, 700, 256), (1024, 256, 1024)] {
            let (a, b) = (data(m * k, 6), data(k * n, 7));
            for (sa, sb) in [((k, 1), (1, k)), ((1, m), (n, 1))] {
                let via_product = || product(m, n, k, &a, sa, &b, sb);
                let via_gemm =
                    || gemm_product((m, n, k), &a, sa, &b, sb, Vec::with_capacity(m * n));
                for f in [&via_product as &(dyn Fn() -> Vec<f32> + Sync), &via_gemm] {
                    let (one, three) = (in_pool(1, f), in_pool(3, f));
                    assert!(
                        one.iter()
                            .zip(&three)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{m}x{n}x{k} strides {sa:?} {sb:?}: 1 and 3 threads differ"
                    );
                }
            }
        }
    }

    /// The few-row kernel against gemm for every tile remainder (rows and weight rows not a
    /// multiple of 4, widths not a multiple of 16) and split across threads (a weight of
    /// 2^20 elements); and a row's result is bit-identical whatever tile it fell in.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn few_row_products_match_gemm_and_do_not_depend_on_the_batch() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: no AVX-512 (few-row products take gemm)");
            return;
        }
        for (m, n, k) in [
            (16, 64, 32),
            (5, 7, 3),
            (13, 30, 70),
            (1, 9, 16),
            (3, 1 << 14, 64),
        ] {
            let (x, w) = (data(m * k, 1), data(n * k, 2));
            let got = few_rows_product(m, n, k, &x, &w);
            let want = gemm_product((m, n, k), &x, (k, 1), &w, (1, k), Vec::with_capacity(m * n));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
            assert!(diff < 1e-4, "{m}x{n}x{k}: differs from gemm by {diff}");
            let last = few_rows_product(1, n, k, &x[(m - 1) * k..], &w);
            assert!(
                last.iter()
                    .zip(&got[(m - 1) * n..])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{m}x{n}x{k}: the last row alone differs from the batch"
            );
        }
        assert!(few_rows_product(2, 0, 8, &[1.0; 16], &[]).is_empty());
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
            let fused = |t: &[Tensor]| t[0].apply_op2(&t[1], KernelOp(Linear)).unwrap();
            let reference = |t: &[Tensor]| t[0].matmul(&t[1].t().unwrap()).unwrap();
            check_op2(&x, &w, &o, &fused, &reference, (1e-4, 1e-4));
        }
    }
}
