//! The process's thread set-up: rayon's global pool (our kernels and gemm) and candle's own
//! elementwise pool.

/// More threads than this many per core only add contention (and `--threads 2^64-1` would
/// keep creating threads until the machine gives out).
pub const MAX_THREADS_PER_CORE: usize = 8;

/// The thread count last asked of [`set_threads`] (0 = none or "all cores").
static REQUESTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The thread count the command asked for with [`set_threads`]; 0 when it asked for none.
pub fn requested() -> usize {
    REQUESTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Use `n` threads for rayon (and so for gemm and the fused kernels); 0 keeps the default
/// (all cores). Above [`MAX_THREADS_PER_CORE`] x cores, `n` is capped with a warning.
pub fn set_threads(n: usize) {
    let n = capped(n, cores());
    REQUESTED.store(n, std::sync::atomic::Ordering::Relaxed);
    if n > 0 {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .ok();
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `n` capped at [`MAX_THREADS_PER_CORE`] x `cores`, with a warning when it was above.
fn capped(n: usize, cores: usize) -> usize {
    let cap = cores.saturating_mul(MAX_THREADS_PER_CORE).max(1);
    if n > cap {
        eprintln!(
            "warning: --threads {n} is more than {MAX_THREADS_PER_CORE} per core on this \
             {cores}-core machine; using {cap}"
        );
        cap
    } else {
        n
    }
}

/// Runs candle's elementwise ops on the calling thread unless the user set
/// `CANDLE_NUM_THREADS`. Candle 0.11 otherwise keeps a pool of (cores - 1) workers that spin
/// 25,000 times after every op: on 2 cores that worker steals CPU from rayon's gemm threads
/// and from the demo's parallel jobs (which also queue on the pool's one lock). Measured on
/// the training benchmark: 0.87 -> 0.77 CPU s/step at the same wall time (BENCHMARKS.md).
/// Must run before the first candle op, while the process has one thread.
pub fn init_candle_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Starts the system BLAS with one thread unless the user set its own variable: we split
/// products across rayon's pool ourselves (model::fused::blas), so the library's own pool
/// would only sleep. Must run before the library is loaded, while the process has one thread.
pub fn init_blas_threads() {
    for var in ["OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_counts_are_capped_per_core() {
        assert_eq!(super::capped(0, 2), 0);
        assert_eq!(super::capped(16, 2), 16);
        assert_eq!(super::capped(17, 2), 16);
        assert_eq!(super::capped(usize::MAX, 2), 16);
    }
}
