//! Independent jobs on a fixed number of workers, each single-threaded. The demo's models are
//! so small that candle's kernels gain little from a second thread (a tiny-model SFT run took
//! 2.4 s of CPU on one thread and 6.5 s on two), so running whole jobs side by side uses the
//! cores far better. Each worker installs its own one-thread rayon pool, so the kernels inside
//! a job run sequentially and a job's result does not depend on how many workers there are.

use anyhow::{anyhow, Result};
use std::sync::{Arc, Condvar, Mutex};

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
    T: Send + Sync,
    F: Fn(J) -> Result<T> + Sync,
{
    let deps = vec![Vec::new(); jobs.len()];
    run_graph(jobs, deps, workers, |j, _| f(j))
}

/// Like [`run_jobs`], but job `i` starts only after every job in `deps[i]` (indices of
/// earlier or later jobs) has finished; `f` gets the job and the results of its
/// dependencies' successes. A free worker takes the first ready job in list order, so put
/// long jobs first. A job whose dependency failed fails without running.
pub fn run_graph<J, T, F>(
    jobs: Vec<J>,
    deps: Vec<Vec<usize>>,
    workers: usize,
    f: F,
) -> Result<Vec<T>>
where
    J: Send,
    T: Send + Sync,
    F: Fn(J, &[&T]) -> Result<T> + Sync,
{
    let n = jobs.len();
    if deps.len() != n || deps.iter().flatten().any(|&d| d >= n) {
        return Err(anyhow!("job graph: dependencies do not match the {n} jobs"));
    }
    struct State<J, T> {
        pending: Vec<Option<J>>,
        done: Vec<Option<Result<Arc<T>>>>,
        running: usize,
    }
    let state = Mutex::new(State {
        pending: jobs.into_iter().map(Some).collect(),
        done: (0..n).map(|_| None).collect(),
        running: 0,
    });
    let wake = Condvar::new();
    let work = || -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| anyhow!("cannot start a worker: {e}"))?;
        let mut st = state.lock().map_err(|_| anyhow!("a worker panicked"))?;
        loop {
            // Dependencies that failed make their dependents fail without running.
            for (i, needs) in deps.iter().enumerate() {
                if st.pending[i].is_some() {
                    if let Some(&d) = needs.iter().find(|&&d| matches!(st.done[d], Some(Err(_)))) {
                        st.pending[i] = None;
                        st.done[i] = Some(Err(anyhow!("not run: job {} it needs failed", d + 1)));
                        wake.notify_all();
                    }
                }
            }
            let ready = (0..n).find(|&i| {
                st.pending[i].is_some()
                    && deps[i].iter().all(|&d| matches!(st.done[d], Some(Ok(_))))
            });
            match ready {
                Some(i) => {
                    let job = st.pending[i].take().expect("checked above");
                    st.running += 1;
                    drop(st);
                    let inputs: Vec<Arc<T>> = {
                        let guard = state.lock().map_err(|_| anyhow!("a worker panicked"))?;
                        deps[i]
                            .iter()
                            .filter_map(|&d| match &guard.done[d] {
                                Some(Ok(t)) => Some(Arc::clone(t)),
                                _ => None,
                            })
                            .collect()
                    };
                    let refs: Vec<&T> = inputs.iter().map(|a| a.as_ref()).collect();
                    let out = pool.install(|| f(job, &refs)).map(Arc::new);
                    drop(refs);
                    drop(inputs);
                    st = state.lock().map_err(|_| anyhow!("a worker panicked"))?;
                    st.done[i] = Some(out);
                    st.running -= 1;
                    wake.notify_all();
                }
                None if st.pending.iter().all(Option::is_none) => return Ok(()),
                None if st.running == 0 => {
                    // Nothing runs and nothing is ready: a dependency cycle.
                    for i in 0..n {
                        if st.pending[i].take().is_some() {
                            st.done[i] =
                                Some(Err(anyhow!("job {} waits on a dependency cycle", i + 1)));
                        }
                    }
                    wake.notify_all();
                    return Ok(());
                }
                None => {
                    st = wake.wait(st).map_err(|_| anyhow!("a worker panicked"))?;
                }
            }
        }
    };
    let worker_errors: Vec<anyhow::Error> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.max(1).min(n.max(1)))
            .map(|_| s.spawn(work))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(anyhow!("a worker panicked")),
            })
            .collect()
    });
    if let Some(e) = worker_errors.into_iter().next() {
        return Err(e);
    }
    let st = state
        .into_inner()
        .map_err(|_| anyhow!("a worker panicked"))?;
    st.done
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let t = r.unwrap_or_else(|| Err(anyhow!("job {} did not run", i + 1)))?;
            Arc::try_unwrap(t).map_err(|_| anyhow!("job {}: result still shared", i + 1))
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
    fn dependencies_run_first_and_pass_their_results() {
        // 0 <- 1 <- 2, 3 independent; listed so that a naive order would break them.
        let deps = vec![vec![], vec![0], vec![1], vec![]];
        let order = Mutex::new(Vec::new());
        let out = run_graph(vec![10u64, 20, 30, 40], deps, 3, |j, inputs: &[&u64]| {
            order.lock().unwrap().push(j);
            Ok(j + inputs.iter().map(|x| **x).sum::<u64>())
        })
        .unwrap();
        assert_eq!(out, vec![10, 30, 60, 40]);
        let order = order.into_inner().unwrap();
        let pos = |j| order.iter().position(|&x| x == j).unwrap();
        assert!(pos(10) < pos(20) && pos(20) < pos(30));
        // A failed dependency fails its dependents without running them.
        let ran = AtomicUsize::new(0);
        let err = run_graph(vec![1u64, 2], vec![vec![], vec![0]], 2, |j, _: &[&u64]| {
            ran.fetch_add(1, Ordering::Relaxed);
            if j == 1 {
                anyhow::bail!("first failed")
            }
            Ok(j)
        })
        .unwrap_err();
        assert!(err.to_string().contains("first failed"));
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        // A cycle is an error, not a hang.
        let err = run_graph(vec![1u64, 2], vec![vec![1], vec![0]], 2, |j, _: &[&u64]| {
            Ok(j)
        })
        .unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn jobs_run_on_one_thread_each() {
        let threads = run_jobs(vec![(); 4], 2, |_| Ok(rayon::current_num_threads())).unwrap();
        assert_eq!(threads, vec![1; 4]);
    }
}
