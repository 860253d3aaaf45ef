//! A system CBLAS (OpenBLAS, or Intel MKL), loaded at run time for the projections' large
//! products. On the shapes of a d=256 training step OpenBLAS's AVX-512 sgemm runs 1.3-1.6x
//! faster than the gemm crate's (DESIGN.md section 6, BENCHMARKS.md), and the projections are
//! most of a step. Loading it with dlopen, instead of linking it, keeps the build and both
//! README commands working on a machine without it: there gemm stays the only path.
//!
//! Threads: the library always runs single-threaded, and [`super::linear`] splits a product
//! across rayon's pool itself, so the demo's concurrent one-thread jobs never oversubscribe
//! the cores. That needs a library that is safe to call from several threads at once:
//! OpenBLAS's pthread and OpenMP flavours are (they lock their buffer pool); its serial flavour
//! is only when built with USE_LOCKING, which a caller cannot check, so it is refused. The
//! library's own threads are not used: OpenBLAS 0.3.21's threaded sgemm rounds some products
//! (k = 688) differently from its one-thread call, so `--threads` would change the numbers
//! (BENCHMARKS.md, 2026-11-29).
//!
//! `ELASTICA_BLAS`: unset = look for both; on an Intel CPU MKL first, elsewhere OpenBLAS
//! first (see [`candidates`]); a path = use that library (an error if it cannot be used);
//! `off` = gemm only.

use std::ffi::{c_char, c_int, CStr};
use std::sync::OnceLock;

/// cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc).
type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// OpenBLAS, in order: the library Debian's alternatives select, then each flavour's own
/// directory (the selected one may be the serial flavour).
const OPENBLAS: &[&str] = &[
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
];

/// MKL's runtime library, by the names its releases use.
const MKL: &[&str] = &["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"];

/// Where to look when `ELASTICA_BLAS` is unset, in order. MKL is looked for on the loader
/// path and in the active Python environment's `lib` (`VIRTUAL_ENV`, `CONDA_PREFIX`: where
/// the `mkl` wheel or conda package puts it). On an Intel CPU MKL comes first: its kernels
/// did a training step with about a fifth less CPU than OpenBLAS's on an AVX-512 Xeon
/// (BENCHMARKS.md, 2026-11-29), and PyTorch runs MKL. Elsewhere OpenBLAS comes first: MKL's
/// fast paths are for Intel's CPUs.
fn candidates(intel: bool, env_prefixes: &[String]) -> Vec<String> {
    let mkl = MKL.iter().map(|n| n.to_string()).chain(
        env_prefixes
            .iter()
            .flat_map(|p| MKL.iter().map(move |n| format!("{p}/lib/{n}"))),
    );
    let openblas = OPENBLAS.iter().map(|n| n.to_string());
    if intel {
        mkl.chain(openblas).collect()
    } else {
        openblas.chain(mkl).collect()
    }
}

/// Whether this is an Intel CPU (the CPUID vendor string).
fn intel_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let vendor = [r.ebx, r.edx, r.ecx].map(u32::to_le_bytes).concat();
        vendor == b"GenuineIntel"
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A loaded library's sgemm.
pub struct Blas {
    sgemm: SgemmFn,
    /// What was loaded, for `elastica bench` and error messages: path and version.
    pub description: String,
    // Kept so the library stays mapped for as long as `sgemm` may be called.
    _lib: libloading::Library,
}

/// The outcome of looking for a library: the one in use, or why there is none.
static LOADED: OnceLock<Result<Blas, String>> = OnceLock::new();

/// The system BLAS, loaded on first use; `None` where there is none (see [`status`]).
pub fn get() -> Option<&'static Blas> {
    LOADED.get_or_init(find).as_ref().ok()
}

/// One line saying which sgemm the projections use, and why not a system BLAS if not.
pub fn status() -> String {
    match LOADED.get_or_init(find) {
        Ok(b) => format!("system BLAS {}", b.description),
        Err(why) => format!("gemm crate ({why})"),
    }
}

/// Checks `ELASTICA_BLAS` up front: a library the user named that cannot be used is an error
/// here, at start-up, instead of a silent fall-back to the slower path.
pub fn check_env() -> anyhow::Result<()> {
    match std::env::var("ELASTICA_BLAS") {
        Ok(v) if !v.trim().is_empty() && v.trim() != "off" => match LOADED.get_or_init(find) {
            Ok(_) => Ok(()),
            Err(why) => Err(anyhow::anyhow!("ELASTICA_BLAS={v}: {why}")),
        },
        _ => Ok(()),
    }
}

fn find() -> Result<Blas, String> {
    match std::env::var("ELASTICA_BLAS") {
        Ok(v) if v.trim() == "off" => Err("ELASTICA_BLAS=off".into()),
        Ok(v) if !v.trim().is_empty() => load(v.trim()),
        _ => {
            let prefixes: Vec<String> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
                .iter()
                .filter_map(|v| std::env::var(v).ok())
                .filter(|p| !p.is_empty())
                .collect();
            let mut refused = Vec::new();
            for c in candidates(intel_cpu(), &prefixes) {
                match load(&c) {
                    Ok(b) => return Ok(b),
                    Err(e) if e.contains("cannot open") => {}
                    Err(e) => refused.push(e),
                }
            }
            if refused.is_empty() {
                Err("no OpenBLAS or MKL found; Debian: apt-get install libopenblas0-pthread".into())
            } else {
                Err(refused.join("; "))
            }
        }
    }
}

/// Opens `path`, checks that it is a CBLAS that is safe to call from several threads, and
/// pins it to one thread per call.
fn load(path: &str) -> Result<Blas, String> {
    // SAFETY: loading runs the library's initialisers; OpenBLAS and MKL have no
    // requirements on the caller's state.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    // SAFETY: the symbols are looked up with the signatures the CBLAS, OpenBLAS and MKL
    // headers declare.
    unsafe {
        let sgemm = *lib
            .get::<SgemmFn>(b"cblas_sgemm\0")
            .map_err(|_| format!("{path} has no cblas_sgemm (not a CBLAS)"))?;
        let description = if let Ok(parallel) =
            lib.get::<unsafe extern "C" fn() -> c_int>(b"openblas_get_parallel\0")
        {
            // 0 = serial, 1 = pthreads, 2 = OpenMP.
            if parallel() == 0 {
                return Err(format!(
                    "{path} is OpenBLAS's serial flavour, which may not be safe to call from \
                     several threads (Debian: apt-get install libopenblas0-pthread)"
                ));
            }
            if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                set(1);
            }
            let config = c_string(&lib, b"openblas_get_config\0");
            let core = c_string(&lib, b"openblas_get_corename\0");
            format!("{path} ({config}, kernels for {core})")
        } else if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(b"MKL_Set_Num_Threads\0") {
            // The sequential layer needs no OpenMP runtime beside the library (1 =
            // MKL_THREADING_SEQUENTIAL); it must be chosen before the first BLAS call.
            if let Ok(layer) =
                lib.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0")
            {
                layer(1);
            }
            set(1);
            format!("{path} (Intel MKL)")
        } else {
            return Err(format!(
                "{path} is neither OpenBLAS nor MKL; their threading is known, another \
                 library's is not"
            ));
        };
        Ok(Blas {
            sgemm,
            description,
            _lib: lib,
        })
    }
}

/// The string a `const char *f(void)` of the library returns ("" where it has no `symbol`).
///
/// # Safety
/// `symbol` must name a function of that signature returning a NUL-terminated string or null.
unsafe fn c_string(lib: &libloading::Library, symbol: &[u8]) -> String {
    lib.get::<unsafe extern "C" fn() -> *const c_char>(symbol)
        .ok()
        .map(|f| f())
        .filter(|p| !p.is_null())
        .map(|p| CStr::from_ptr(p).to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// How a CBLAS sees a matrix with (row stride, column stride): transposed or not, and its
/// leading dimension. `None` when neither stride is 1 or a size overflows a C int.
fn operand(rows: usize, cols: usize, (rs, cs): (usize, usize)) -> Option<(c_int, c_int)> {
    let ld = if cs == 1 && rs >= cols.max(1) {
        (NO_TRANS, rs)
    } else if rs == 1 && cs >= rows.max(1) {
        (TRANS, cs)
    } else {
        return None;
    };
    Some((ld.0, c_int::try_from(ld.1).ok()?))
}

impl Blas {
    /// Whether A (m x k) B (k x n) with these strides is a product a CBLAS takes.
    pub fn accepts(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a_strides: (usize, usize),
        b_strides: (usize, usize),
    ) -> bool {
        m > 0
            && n > 0
            && k > 0
            && c_int::try_from(m.max(n).max(k)).is_ok()
            && operand(m, k, a_strides).is_some()
            && operand(k, n, b_strides).is_some()
    }

    /// c (m x n, row stride ldc) = A (m x k) B (k x n) + beta c, on the calling thread.
    /// Returns false (and writes nothing) when the layouts or sizes are not ones a CBLAS
    /// takes.
    ///
    /// # Safety
    /// `a`, `b` and `c` must be valid for the given shapes and strides, and `c` writable (and
    /// initialised where beta is not 0).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        a_strides: (usize, usize),
        b: *const f32,
        b_strides: (usize, usize),
        beta: f32,
        c: *mut f32,
        ldc: usize,
    ) -> bool {
        let (Some((ta, lda)), Some((tb, ldb))) =
            (operand(m, k, a_strides), operand(k, n, b_strides))
        else {
            return false;
        };
        let (Ok(mi), Ok(ni), Ok(ki), Ok(ldci)) = (
            c_int::try_from(m),
            c_int::try_from(n),
            c_int::try_from(k),
            c_int::try_from(ldc),
        ) else {
            return false;
        };
        if m == 0 || n == 0 || k == 0 || ldc < n {
            return false;
        }
        (self.sgemm)(
            ROW_MAJOR, ta, tb, mi, ni, ki, 1.0, a, lda, b, ldb, beta, c, ldci,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mkl_first_on_intel_openblas_first_elsewhere() {
        let envs = ["/opt/venv".to_string()];
        let intel = candidates(true, &envs);
        let other = candidates(false, &envs);
        assert_eq!(intel[0], "libmkl_rt.so.3");
        assert_eq!(other[0], "libopenblas.so.0");
        // The same libraries either way, the environment's MKL among them.
        let mut a = intel.clone();
        let mut b = other.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert!(intel.contains(&"/opt/venv/lib/libmkl_rt.so.2".to_string()));
        let first_openblas = intel.iter().position(|c| c.contains("openblas")).unwrap();
        assert!(intel[..first_openblas].iter().all(|c| c.contains("mkl")));
    }

    #[test]
    fn operands_map_to_cblas_transposes() {
        // Row-major (3 x 5): not transposed, lda 5; its transpose viewed as (5 x 3): lda 5.
        assert_eq!(operand(3, 5, (5, 1)), Some((NO_TRANS, 5)));
        assert_eq!(operand(5, 3, (1, 5)), Some((TRANS, 5)));
        // A block of rows keeps the parent's row stride.
        assert_eq!(operand(2, 5, (8, 1)), Some((NO_TRANS, 8)));
        // Neither stride 1, or a leading dimension shorter than a row: not expressible.
        assert_eq!(operand(3, 5, (10, 2)), None);
        assert_eq!(operand(3, 5, (4, 1)), None);
    }
}
