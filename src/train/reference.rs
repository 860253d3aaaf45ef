//! Runs against a frozen reference model (DPO's losses, KTO on unpaired feedback): the
//! reference log-probs, computed once before the first step and cached in the run directory
//! so that a resumed run reads them, and what such a run reports.

use super::batch::Batch;
use super::driver::{LogLine, Method, Outcome, Trainee};
use super::optim::StepSettings;
use super::recipe::Resolved;
use super::sft::{summarize, RunSettings, StepLog, TrainSummary};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// What a run against a reference model did (DPO's, and `kto`'s on unpaired feedback).
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceRunSummary<L> {
    /// Steps, pairs or examples (as `records`), truncation and the base log lines.
    pub train: TrainSummary,
    pub log: Vec<L>,
    /// Whether the reference log-probs were read from the run directory's cache.
    pub reference_cached: bool,
}

impl<L: LogLine> ReferenceRunSummary<L> {
    /// The summary of a run over `records` pairs or examples (`truncated` of them cut) from
    /// the loop's outcome; `cached`: the reference came from the run directory.
    pub(crate) fn of(
        total: usize,
        records: usize,
        truncated: usize,
        o: Outcome<L>,
        cached: bool,
    ) -> Self {
        let base: Vec<StepLog> = o.log.iter().map(|l| l.base().clone()).collect();
        ReferenceRunSummary {
            train: summarize(total, records, truncated, o.resumed_from, base),
            log: o.log,
            reference_cached: o.finished_before || cached,
        }
    }
}

/// A method's resolved run against a frozen reference model (DPO's pairs, KTO's feedback):
/// how it gets its reference log-probs and takes a step against them.
pub trait AgainstReference {
    /// The reference log-probs of the run's sequences (its cache file).
    type Reference;
    /// One line of `train_log.jsonl`.
    type Log: LogLine;
    /// The progress bar's label.
    const LABEL: &'static str;
    /// The log-probs, and whether they were read from `out`'s cache (else computed with
    /// `model`, which still holds the starting weights, and cached).
    fn reference(&self, model: &mut dyn Trainee, out: &Path) -> Result<(Self::Reference, bool)>;
    /// One optimizer step over `idx` at learning rate `lr`.
    fn step(
        &self,
        refs: &Self::Reference,
        model: &mut dyn Trainee,
        idx: &[usize],
        lr: f64,
    ) -> Result<Self::Log>;
}

/// The loop's step of a run `P` against a reference model: the log-probs are computed or
/// read once, in [`Method::begin`].
pub struct ReferenceStep<'a, P: AgainstReference> {
    plan: &'a P,
    /// The log-probs, and whether they were read from the run directory's cache.
    reference: Option<(P::Reference, bool)>,
}

impl<'a, P: AgainstReference> ReferenceStep<'a, P> {
    pub(super) fn new(plan: &'a P) -> Self {
        ReferenceStep {
            plan,
            reference: None,
        }
    }

    /// The run's summary over `n` pairs or examples from the loop's outcome.
    pub(super) fn summary(
        &self,
        resolved: &Resolved,
        n: usize,
        o: Outcome<P::Log>,
    ) -> ReferenceRunSummary<P::Log> {
        let cached = self.reference.as_ref().is_some_and(|(_, c)| *c);
        ReferenceRunSummary::of(resolved.total, n, resolved.truncated, o, cached)
    }
}

impl<P: AgainstReference> Method for ReferenceStep<'_, P> {
    type Log = P::Log;
    const LABEL: &'static str = P::LABEL;
    fn begin(&mut self, model: &mut dyn Trainee, out: &Path) -> Result<()> {
        self.reference = Some(self.plan.reference(model, out)?);
        Ok(())
    }
    fn step(&mut self, model: &mut dyn Trainee, idx: &[usize], lr: f64) -> Result<P::Log> {
        let Some((refs, _)) = &self.reference else {
            bail!("a step against the reference model before its log-probs");
        };
        self.plan.step(refs, model, idx, lr)
    }
}

/// A step's examples `idx` in micro-batches of `size`: the chunks of `idx`, the batch
/// `collate` makes of each (padded with `pad`), and the counted tokens of them all.
pub(super) struct MicroBatches<'i> {
    pub chunks: Vec<&'i [usize]>,
    pub batches: Vec<Batch>,
    pub tokens: usize,
}

impl<'i> MicroBatches<'i> {
    pub(super) fn new(
        idx: &'i [usize],
        size: usize,
        pad: u32,
        collate: impl Fn(&[usize], u32) -> Result<Batch>,
    ) -> Result<Self> {
        let chunks: Vec<&[usize]> = idx.chunks(size).collect();
        let batches: Vec<Batch> = chunks
            .iter()
            .map(|c| collate(c, pad))
            .collect::<Result<_>>()?;
        let tokens = batches.iter().map(|b| b.n_targets).sum();
        Ok(MicroBatches {
            chunks,
            batches,
            tokens,
        })
    }

    /// One optimizer step on the weighted SFT gradient of these micro-batches: `weigh` gives
    /// a micro-batch's gradient weights and terms (a pair's or an example's loss, rewards,
    /// ...) from its indices and its sequences' summed NLLs. A term whose `loss` is not
    /// finite is refused before the update, as SFT refuses a non-finite loss (`method`
    /// names it). Returns the base log line, its loss the terms' mean over the step's
    /// indices, and every term in order.
    pub(super) fn weighted_step<T>(
        &self,
        model: &mut dyn Trainee,
        s: &StepSettings,
        (method, loss): (&str, fn(&T) -> f64),
        mut weigh: impl FnMut(&[usize], &[f64]) -> Result<(Vec<f64>, Vec<T>)>,
    ) -> Result<(StepLog, Vec<T>)> {
        let n: usize = self.chunks.iter().map(|c| c.len()).sum();
        let mut terms: Vec<T> = Vec::with_capacity(n);
        let mut by_micro_batch = |m: usize, nll: &[f64]| -> Result<Vec<f64>> {
            let (w, t) = weigh(self.chunks[m], nll)?;
            if let Some(bad) = t.iter().map(loss).find(|l| !l.is_finite()) {
                bail!("the {method} loss is {bad} (not finite); lower the learning rate or check the weights and data");
            }
            terms.extend(t);
            Ok(w)
        };
        let grad_norm = model.weighted_step(&self.batches, &mut by_micro_batch, s)?;
        let base = StepLog {
            step: 0,
            loss: terms.iter().map(loss).sum::<f64>() / n as f64,
            lr: s.lr,
            tokens: self.tokens,
            grad_norm,
        };
        Ok((base, terms))
    }
}

/// A method's cache file: the starting weights' and the data's sha256 it was computed for,
/// and its vectors of summed log-probs, one entry a sequence.
pub(super) trait ReferenceCache: Serialize + DeserializeOwned {
    /// (start_sha256, data_sha256).
    fn stamp(&self) -> (&str, &str);
    /// Every vector, in the order the plan's sequence lists come.
    fn vectors(&self) -> Vec<&[f64]>;
}

/// The cache at `path` when it was written for `settings`' start and data (see
/// [`ReferenceCache::stamp`]), holds `lens[i]`
/// log-probs in its i-th vector and all of them finite (`true`: read from the cache); else
/// `compute()`'s (which must use the starting weights), checked finite and written
/// atomically to `path` (`false`).
pub(super) fn cached_or_computed<R: ReferenceCache>(
    path: &Path,
    settings: &RunSettings,
    lens: &[usize],
    compute: impl FnOnce() -> Result<R>,
) -> Result<(R, bool)> {
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        match serde_json::from_str::<R>(&text) {
            Ok(r) if fits(&r, stamp_of(settings), lens) => return Ok((r, true)),
            _ => eprintln!(
                "warning: {} was written for another model or data (or is damaged); \
                 computing the reference log-probs again",
                path.display()
            ),
        }
    }
    let r = compute()?;
    let all = r.vectors().into_iter().flatten();
    if let Some(i) = all.into_iter().position(|x| !x.is_finite()) {
        bail!(
            "the starting model's log-prob of sequence {} is not finite",
            i + 1
        );
    }
    crate::util::fsx::atomic_write_json(path, &r)?;
    Ok((r, false))
}

fn stamp_of(s: &RunSettings) -> (&str, &str) {
    (&s.start_sha256, &s.data_sha256)
}

/// Whether a read cache belongs to this run: same start and data, the planned lengths, all
/// finite.
fn fits<R: ReferenceCache>(r: &R, stamp: (&str, &str), lens: &[usize]) -> bool {
    let v = r.vectors();
    r.stamp() == stamp
        && v.len() == lens.len()
        && v.iter().zip(lens).all(|(v, &n)| v.len() == n)
        && v.iter().all(|v| v.iter().all(|x| x.is_finite()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Logps {
        start_sha256: String,
        data_sha256: String,
        a: Vec<f64>,
        b: Vec<f64>,
    }

    impl ReferenceCache for Logps {
        fn stamp(&self) -> (&str, &str) {
            (&self.start_sha256, &self.data_sha256)
        }
        fn vectors(&self) -> Vec<&[f64]> {
            vec![&self.a, &self.b]
        }
    }

    fn logps(start: &str, a: Vec<f64>) -> Logps {
        Logps {
            start_sha256: start.into(),
            data_sha256: "d".into(),
            a,
            b: vec![-1.0],
        }
    }

    #[test]
    fn a_cache_is_read_only_when_it_fits_and_a_non_finite_one_is_refused_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ref.json");
        let settings = RunSettings {
            start_sha256: "s".into(),
            data_sha256: "d".into(),
            examples: 2,
            train: Default::default(),
        };
        let fresh = || Ok(logps("s", vec![-2.0, -3.0]));
        let never = || -> Result<Logps> { panic!("the cache fits; nothing is computed") };

        // Absent: computed and written.
        let (r, cached) = cached_or_computed(&path, &settings, &[2, 1], fresh).unwrap();
        assert!(!cached && r == fresh().unwrap() && path.is_file());
        // Present and fitting: read.
        let (r, cached) = cached_or_computed(&path, &settings, &[2, 1], never).unwrap();
        assert!(cached && r == fresh().unwrap());
        // Another length, start or damaged text: computed again and rewritten.
        let (_, cached) = cached_or_computed(&path, &settings, &[3, 1], fresh).unwrap();
        assert!(!cached);
        std::fs::write(
            &path,
            serde_json::to_string(&logps("other", vec![-2.0, -3.0])).unwrap(),
        )
        .unwrap();
        let (_, cached) = cached_or_computed(&path, &settings, &[2, 1], fresh).unwrap();
        assert!(!cached);
        let (_, cached) = cached_or_computed(&path, &settings, &[2, 1], never).unwrap();
        assert!(cached, "the recomputed cache was written");
        std::fs::write(&path, "{\"start_sha256\": ").unwrap();
        let (_, cached) = cached_or_computed(&path, &settings, &[2, 1], fresh).unwrap();
        assert!(!cached);

        // A non-finite log-prob is refused, naming the sequence, and the old cache stays.
        let before = std::fs::read(&path).unwrap();
        let bad = || Ok(logps("s", vec![-2.0, -1.0, f64::NAN]));
        let e = cached_or_computed(&path, &settings, &[3, 1], bad).unwrap_err();
        assert!(e.to_string().contains("sequence 3 is not finite"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
