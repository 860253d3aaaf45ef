//! Jobs on a fixed number of workers, in the order their dependencies allow: [`schedule`] is
//! the one scheduler of the crate (the grid's local executor runs its cells with it);
//! [`run_jobs`] and [`run_graph`] are its short forms for jobs that each run on one thread.
//!
//! Why one thread per job by default: the demo's models are
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
    schedule(jobs, deps, &Limits::workers(workers), |_, j, inputs| {
        f(j, inputs)
    })?
    .into_iter()
    .map(|o| match o {
        Outcome::Done(t) => Ok(t),
        Outcome::Failed(e) => Err(e),
        Outcome::NotRun { because } => Err(anyhow!("not run: job {} it needs failed", because + 1)),
    })
    .collect()
}

/// How many jobs of a [`schedule`] run at once, and how.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Jobs running at the same time (at least 1).
    pub workers: usize,
    /// Run each job inside a one-thread rayon pool (see the module doc). Off for jobs whose
    /// kernels should use every core, like a grid's cells.
    pub one_thread_each: bool,
    /// What job `i` holds while it runs (e.g. bytes of memory); empty = nothing.
    pub cost: Vec<u64>,
    /// The running jobs' costs add up to at most this, except that one job may always run.
    pub budget: u64,
}

impl Limits {
    /// `workers` one-thread workers, no cost limit.
    pub fn workers(workers: usize) -> Limits {
        Limits {
            workers,
            one_thread_each: true,
            cost: Vec::new(),
            budget: u64::MAX,
        }
    }
}

/// How one job of a [`schedule`] ended.
#[derive(Debug)]
pub enum Outcome<T> {
    Done(T),
    Failed(anyhow::Error),
    /// Not run because its dependency `because` (an index) failed or was not run.
    NotRun {
        because: usize,
    },
}

impl Limits {
    /// What job `i` holds while it runs.
    fn cost_of(&self, i: usize) -> u64 {
        self.cost.get(i).copied().unwrap_or(0)
    }
}

/// Where one job of a [`schedule`] stands.
enum Slot<J, T> {
    Pending(J),
    Running,
    Done(Arc<T>),
    Failed(anyhow::Error),
    NotRun(usize),
}

impl<J, T> Slot<J, T> {
    fn ended_badly(&self) -> bool {
        matches!(self, Slot::Failed(_) | Slot::NotRun(_))
    }

    /// The job's outcome once the schedule has ended (job `i` for the messages).
    fn outcome(self, i: usize) -> Result<Outcome<T>> {
        Ok(match self {
            Slot::Done(t) => Outcome::Done(
                Arc::try_unwrap(t).map_err(|_| anyhow!("job {}: result still shared", i + 1))?,
            ),
            Slot::Failed(e) => Outcome::Failed(e),
            Slot::NotRun(d) => Outcome::NotRun { because: d },
            Slot::Pending(_) | Slot::Running => {
                Outcome::Failed(anyhow!("job {} did not run", i + 1))
            }
        })
    }
}

/// The state the workers of a [`schedule`] share, behind its mutex.
struct State<'a, J, T> {
    slots: Vec<Slot<J, T>>,
    deps: &'a [Vec<usize>],
    limits: &'a Limits,
    running: usize,
    running_cost: u64,
}

impl<J, T> State<'_, J, T> {
    /// Pending jobs whose dependency failed (or was not run) will not run; true if any
    /// job changed so.
    fn skip_failed_dependents(&mut self) -> bool {
        let mut changed = false;
        for (i, needs) in self.deps.iter().enumerate() {
            if matches!(self.slots[i], Slot::Pending(_)) {
                if let Some(&d) = needs.iter().find(|&&d| self.slots[d].ended_badly()) {
                    self.slots[i] = Slot::NotRun(d);
                    changed = true;
                }
            }
        }
        changed
    }

    /// The first pending job whose dependencies are done and whose cost fits (one job may
    /// always run).
    fn ready(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| {
            matches!(self.slots[i], Slot::Pending(_))
                && self.deps[i]
                    .iter()
                    .all(|&d| matches!(self.slots[d], Slot::Done(_)))
                && (self.running == 0
                    || self.running_cost.saturating_add(self.limits.cost_of(i))
                        <= self.limits.budget)
        })
    }

    /// Mark job `i` running; its job and its dependencies' results.
    fn start(&mut self, i: usize) -> (J, Vec<Arc<T>>) {
        let Slot::Pending(job) = std::mem::replace(&mut self.slots[i], Slot::Running) else {
            unreachable!("only a ready (pending) job is started")
        };
        self.running += 1;
        self.running_cost = self.running_cost.saturating_add(self.limits.cost_of(i));
        let inputs = self.deps[i]
            .iter()
            .filter_map(|&d| match &self.slots[d] {
                Slot::Done(t) => Some(Arc::clone(t)),
                _ => None,
            })
            .collect();
        (job, inputs)
    }

    fn finish(&mut self, i: usize, out: Result<T>) {
        self.slots[i] = match out {
            Ok(t) => Slot::Done(Arc::new(t)),
            Err(e) => Slot::Failed(e),
        };
        self.running -= 1;
        self.running_cost = self.running_cost.saturating_sub(self.limits.cost_of(i));
    }

    /// Nothing runs and nothing is ready: the pending jobs wait on a dependency cycle.
    fn fail_cycle(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if matches!(s, Slot::Pending(_)) {
                *s = Slot::Failed(anyhow!("job {} waits on a dependency cycle", i + 1));
            }
        }
    }
}

/// The scheduler behind [`run_graph`] and the grid's local executor: job `i` starts once
/// every job in `deps[i]` is done, on the first free worker, taking the first ready job in
/// list order whose cost fits; `f` gets the job's index, the job, and its dependencies'
/// results. Every job runs unless a dependency failed; each job's outcome comes back in job
/// order. A dependency cycle fails the jobs on it instead of hanging. The error is for the
/// scheduler itself (a bad graph, a panicking job).
pub fn schedule<J, T, F>(
    jobs: Vec<J>,
    deps: Vec<Vec<usize>>,
    limits: &Limits,
    f: F,
) -> Result<Vec<Outcome<T>>>
where
    J: Send,
    T: Send + Sync,
    F: Fn(usize, J, &[&T]) -> Result<T> + Sync,
{
    let n = jobs.len();
    if deps.len() != n || deps.iter().flatten().any(|&d| d >= n) {
        return Err(anyhow!("job graph: dependencies do not match the {n} jobs"));
    }
    let state = Mutex::new(State::<J, T> {
        slots: jobs.into_iter().map(Slot::Pending).collect(),
        deps: &deps,
        limits,
        running: 0,
        running_cost: 0,
    });
    let wake = Condvar::new();
    let poisoned = || anyhow!("a worker panicked");
    let work = || -> Result<()> {
        let pool = match limits.one_thread_each {
            true => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .map_err(|e| anyhow!("cannot start a worker: {e}"))?,
            ),
            false => None,
        };
        let mut st = state.lock().map_err(|_| poisoned())?;
        loop {
            if st.skip_failed_dependents() {
                wake.notify_all();
            }
            let any_pending = st.slots.iter().any(|s| matches!(s, Slot::Pending(_)));
            match st.ready() {
                Some(i) => {
                    let (job, inputs) = st.start(i);
                    drop(st);
                    let refs: Vec<&T> = inputs.iter().map(|a| a.as_ref()).collect();
                    let out = match &pool {
                        Some(pool) => pool.install(|| f(i, job, &refs)),
                        None => f(i, job, &refs),
                    };
                    drop(refs);
                    drop(inputs);
                    st = state.lock().map_err(|_| poisoned())?;
                    st.finish(i, out);
                    wake.notify_all();
                }
                None if !any_pending => return Ok(()),
                None if st.running == 0 => {
                    st.fail_cycle();
                    wake.notify_all();
                    return Ok(());
                }
                None => {
                    st = wake.wait(st).map_err(|_| poisoned())?;
                }
            }
        }
    };
    let worker_errors: Vec<anyhow::Error> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..limits.workers.max(1).min(n.max(1)))
            .map(|_| s.spawn(work))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(poisoned()),
            })
            .collect()
    });
    if let Some(e) = worker_errors.into_iter().next() {
        return Err(e);
    }
    let st = state.into_inner().map_err(|_| poisoned())?;
    st.slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.outcome(i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A job that counts its runs in `ran` and fails with `msg` on the value `bad`.
    fn failing_on<'a>(
        bad: u64,
        msg: &'a str,
        ran: &'a AtomicUsize,
    ) -> impl Fn(u64) -> Result<u64> + Sync + 'a {
        move |j| {
            ran.fetch_add(1, Ordering::Relaxed);
            if j == bad {
                anyhow::bail!("{msg}")
            }
            Ok(j)
        }
    }

    #[test]
    fn results_keep_job_order_and_every_job_runs() {
        let out = run_jobs((0..20).collect(), 3, |i: u64| Ok(i * i)).unwrap();
        assert_eq!(out, (0..20).map(|i| i * i).collect::<Vec<_>>());
        let ran = AtomicUsize::new(0);
        let job = failing_on(3, "job three failed", &ran);
        let err = run_jobs((0..5).collect(), 2, job).unwrap_err();
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
        let job = failing_on(1, "first failed", &ran);
        let err = run_graph(vec![1u64, 2], vec![vec![], vec![0]], 2, |j, _: &[&u64]| {
            job(j)
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
