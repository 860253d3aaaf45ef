//! Independent jobs on a fixed number of workers, each single-threaded. The demo's models are
//! so small that candle's kernels gain little from a second thread (a tiny-model SFT run took
//! 2.4 s of CPU on one thread and 6.5 s on two), so running whole jobs side by side uses the
//! cores far better. Each worker installs its own one-thread rayon pool, so the kernels inside
//! a job run sequentially and a job's result does not depend on how many workers there are.

use anyhow::{anyhow, Result};
use std::sync::Mutex;

/// Workers to use for `requested` (0 = one per available core).
pub fn workers(requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Run `f` on every job with `workers` workers; results come back in job order. Every job
/// runs even if another fails; the first error (in job order) is returned.
pub fn run_jobs<J, T, F>(jobs: Vec<J>, workers: usize, f: F) -> Result<Vec<T>>
where
    J: Send,
    T: Send,
    F: Fn(J) -> Result<T> + Sync,
{
    let n = jobs.len();
    let queue: Mutex<Vec<(usize, J)>> = Mutex::new(jobs.into_iter().enumerate().rev().collect());
    let results: Mutex<Vec<Option<Result<T>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(n.max(1)) {
            s.spawn(|| {
                let pool = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(p) => p,
                    Err(e) => {
                        if let Ok(mut q) = queue.lock() {
                            while let Some((i, _)) = q.pop() {
                                if let Ok(mut r) = results.lock() {
                                    r[i] = Some(Err(anyhow!("cannot start a worker: {e}")));
                                }
                            }
                        }
                        return;
                    }
                };
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((i, job)) = next else { break };
                    let out = pool.install(|| f(job));
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(out);
                    }
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow!("a worker panicked"))?;
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| Err(anyhow!("job {} did not run (a worker panicked)", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_keep_job_order_and_every_job_runs() {
        let out = run_jobs((0..20).collect(), 3, |i: u64| Ok(i * i)).unwrap();
        assert_eq!(out, (0..20).map(|i| i * i).collect::<Vec<_>>());
        let ran = AtomicUsize::new(0);
        let err = run_jobs((0..5).collect(), 2, |i: u64| {
            ran.fetch_add(1, Ordering::Relaxed);
            if i == 3 {
                anyhow::bail!("job three failed")
            }
            Ok(i)
        })
        .unwrap_err();
        assert!(err.to_string().contains("three"));
        assert_eq!(ran.load(Ordering::Relaxed), 5);
        assert!(run_jobs(Vec::<u64>::new(), 2, Ok).unwrap().is_empty());
    }

    #[test]
    fn jobs_run_on_one_thread_each() {
        let threads = run_jobs(vec![(); 4], 2, |_| Ok(rayon::current_num_threads())).unwrap();
        assert_eq!(threads, vec![1; 4]);
    }
}
