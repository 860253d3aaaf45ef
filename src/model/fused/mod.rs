//! Fused CPU kernels for the decoder's hot spots, each a candle `CustomOp` (through
//! [`op::KernelOp`]) with an analytic backward: causal attention with RoPE (no T x T tensor),
//! RMSNorm, SwiGLU, the cross-entropy over the vocabulary, and the projections as direct gemm
//! calls. Every kernel has a slow reference path built from differentiable candle ops; the
//! switches here choose between them at run time, so the reference stays tested and
//! `elastica bench` can time both in one run.
//!
//! The kernels run on CPU f32 tensors only; any other device or dtype takes the reference
//! path (the callers check [`usable`]).

pub mod attention;
pub mod blas;
pub mod cross_entropy;
pub mod decode;
pub mod linear;
pub mod norm;
pub mod op;
pub mod swiglu;
pub mod vexp;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// One switchable kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Attention = 1,
    RmsNorm = 2,
    SwiGlu = 4,
    CrossEntropy = 8,
    AdamW = 16,
    Linear = 32,
    /// The direct-gemm linear's large products on the system BLAS ([`blas`]), where found.
    Blas = 64,
    /// The training gradient computed by hand from the kernels above
    /// (`model::llama::backward`) instead of through candle's autograd.
    Backprop = 128,
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::RmsNorm,
        Kernel::SwiGlu,
        Kernel::CrossEntropy,
        Kernel::Attention,
        Kernel::Linear,
        Kernel::AdamW,
        Kernel::Backprop,
        Kernel::Blas,
    ];
    /// The short name `ELASTICA_KERNELS` uses.
    pub fn from_name(n: &str) -> Option<Kernel> {
        Some(match n {
            "attention" => Kernel::Attention,
            "rmsnorm" => Kernel::RmsNorm,
            "swiglu" => Kernel::SwiGlu,
            "cross-entropy" => Kernel::CrossEntropy,
            "linear" => Kernel::Linear,
            "adamw" => Kernel::AdamW,
            "blas" => Kernel::Blas,
            "backprop" => Kernel::Backprop,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Attention => "fused causal attention + RoPE",
            Kernel::RmsNorm => "fused RMSNorm",
            Kernel::SwiGlu => "fused SwiGLU",
            Kernel::CrossEntropy => "fused cross-entropy",
            Kernel::AdamW => "in-place AdamW",
            Kernel::Linear => "direct-gemm linear",
            Kernel::Blas => "system BLAS for the linear",
            Kernel::Backprop => "hand-written backward",
        }
    }
}

const ALL_ON: u32 = 255;

/// Enabled kernels (bit set of [`Kernel`]), read once from `ELASTICA_KERNELS` (see
/// [`from_env`]) unless [`set_enabled`] was called first.
static ENABLED: AtomicU32 = AtomicU32::new(u32::MAX);

/// `ELASTICA_KERNELS`: unset or `all` = every kernel; `none` = the reference path; or a
/// comma list of `attention,rmsnorm,swiglu,cross-entropy,linear,adamw,backprop,blas` (unknown names are
/// reported once and ignored).
fn from_env() -> u32 {
    match std::env::var("ELASTICA_KERNELS") {
        Err(_) => ALL_ON,
        Ok(v) if v.trim() == "all" => ALL_ON,
        Ok(v) => v
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty() && *n != "none")
            .fold(0, |m, n| match Kernel::from_name(n) {
                Some(k) => m | k as u32,
                None => {
                    eprintln!("warning: ELASTICA_KERNELS: unknown kernel \"{n}\" ignored (known: attention, rmsnorm, swiglu, cross-entropy, linear, adamw, backprop, blas)");
                    m
                }
            }),
    }
}

fn mask() -> u32 {
    let m = ENABLED.load(Ordering::Relaxed);
    if m != u32::MAX {
        return m;
    }
    let init = from_env();
    ENABLED.store(init, Ordering::Relaxed);
    init
}

/// Whether `k` is switched on.
pub fn enabled(k: Kernel) -> bool {
    mask() & k as u32 != 0
}

/// Switch exactly the kernels in `on` on (all others off). Process-wide.
pub fn set_enabled(on: &[Kernel]) {
    ENABLED.store(on.iter().fold(0, |m, &k| m | k as u32), Ordering::Relaxed);
}

/// Whether kernel `k` is on and can run on all of `ts` (CPU, f32).
pub fn usable(k: Kernel, ts: &[&Tensor]) -> bool {
    enabled(k)
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The contiguous f32 data of a CPU storage under `l`.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused kernel: input is not contiguous"),
    }
}

/// Run `f` on the contiguous f32 data of a CPU tensor (copying it first if it is strided).
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(slice(c, l)?),
        _ => candle_core::bail!("fused kernel: tensor is not on the CPU"),
    }
}

/// A kernel's gradient for its input `like`: `data` in that input's shape, on its device.
pub(crate) fn grad_like(data: Vec<f32>, like: &Tensor) -> Result<Option<Tensor>> {
    Ok(Some(Tensor::from_vec(data, like.shape(), like.device())?))
}

/// Below this many elements a kernel runs on the calling thread: handing the work to the
/// thread pool (waking a worker, waiting for it) costs more than it saves, as in a
/// decoding step.
pub(crate) const SERIAL_MAX: usize = 32 * 1024;

/// Elements per parallel task of [`add_into`].
const ADD_CHUNK: usize = 32 * 1024;

/// a += b, elementwise, on rayon's threads when large.
pub(crate) fn add_into(a: &mut [f32], b: &[f32]) {
    let add = |(x, y): (&mut [f32], &[f32])| x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
    if a.len() <= ADD_CHUNK {
        add((a, b));
    } else {
        a.par_chunks_mut(ADD_CHUNK)
            .zip(b.par_chunks(ADD_CHUNK))
            .for_each(add);
    }
}

/// A raw pointer that parallel tasks may share because each writes a disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole Send + Sync wrapper).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// dst (m x n, row stride dst_rs) = beta_dst * dst + alpha * A (m x k) B (k x n), single
/// threaded (callers parallelise over heads / rows themselves). Strides in elements: each
/// matrix is (row stride, column stride).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * dst_rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

#[cfg(test)]
pub(crate) mod testing {
    //! Gradient checks shared by the kernel tests.
    use candle_core::{Device, Tensor, Var};

    pub fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Central finite differences of the scalar `f` at a few coordinates of input `which`,
    /// compared with the analytic gradient `grad` (relative tolerance `tol`).
    pub fn check_fd(
        inputs: &[Tensor],
        which: usize,
        grad: &Tensor,
        f: &dyn Fn(&[Tensor]) -> f64,
        tol: f64,
    ) {
        let flat: Vec<f32> = inputs[which].flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        let n = flat.len();
        let scale = g.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        for idx in [0, n / 3, n / 2, (2 * n) / 3, n - 1] {
            let eval = |delta: f32| {
                let mut v = flat.clone();
                v[idx] += delta;
                let mut ins = inputs.to_vec();
                ins[which] = Tensor::from_vec(v, inputs[which].shape(), &Device::Cpu).unwrap();
                f(&ins)
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let err = (fd - g[idx] as f64).abs();
            assert!(
                err <= tol * scale.max(1e-3),
                "input {which} coord {idx}: finite difference {fd} vs analytic {}",
                g[idx]
            );
        }
    }

    /// Gradients of sum(out * w) w.r.t. each input, through `f`.
    /// A two-input kernel against its reference on inputs `a`, `b`, with the loss
    /// sum(op(a, b) * out_w): outputs within `y_tol`, gradients within `g_tol`, and the
    /// kernel's gradients against finite differences.
    pub fn check_op2(
        a: &Tensor,
        b: &Tensor,
        out_w: &Tensor,
        fused: &dyn Fn(&[Tensor]) -> Tensor,
        reference: &dyn Fn(&[Tensor]) -> Tensor,
        (y_tol, g_tol): (f32, f32),
    ) {
        let inputs = [a.clone(), b.clone()];
        let (yf, gf) = grads(&inputs, out_w, fused);
        let (yr, gr) = grads(&inputs, out_w, reference);
        assert!(
            max_abs_diff(&yf, &yr) < y_tol,
            "output differs from the reference"
        );
        for (x, y) in gf.iter().zip(&gr) {
            assert!(
                max_abs_diff(x, y) < g_tol,
                "gradient differs from the reference"
            );
        }
        let loss = |t: &[Tensor]| {
            (fused(t) * out_w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        check_fd(&inputs, 0, &gf[0], &loss, 2e-2);
        check_fd(&inputs, 1, &gf[1], &loss, 2e-2);
    }

    pub fn grads(
        inputs: &[Tensor],
        w: &Tensor,
        f: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts);
        let loss = (&out * w).unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let gs = ts
            .iter()
            .map(|t| store.get(t).expect("input has a gradient").clone())
            .collect();
        (out.detach(), gs)
    }
}
