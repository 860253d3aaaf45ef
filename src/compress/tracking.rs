//! Compression rates tracked through fine-tuning (`elastica train --track-rates`): every N
//! optimizer steps the model's rate on each named held-out set is measured and written to
//! `rates.jsonl`, so the elasticity theorem's quantities (d gamma(D_i)/dl, PAPER.md §2) can
//! be read off a real training run.
//!
//! A rate here is the code length of the set's scored tokens, `sum -log2 p`, from one batched
//! forward pass per batch: the same numbers `eval-loss` and `rates` give (the latter codes
//! token by token through the KV cache; the arithmetic coder realises these lengths to within
//! its measured overhead). Batching keeps tracking cheap next to the training it watches.

use super::rates::Rate;
use crate::data::records::{read_run_records, Record};
use crate::data::template::Template;
use crate::model::checkpoint::LoadedModel;
use crate::report::{LinePlot, RunDir, Series};
use crate::train::eval::EvalBatches;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file the tracker writes next to `train_log.jsonl`.
pub const RATES_FILE: &str = "rates.jsonl";

/// A named held-out set whose rate is tracked.
#[derive(Debug, Clone)]
pub struct TrackedSet {
    pub name: String,
    pub records: Vec<Record>,
}

/// One measurement: the rate of `set` after `step` optimizer steps (0 = before training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedRate {
    pub step: usize,
    pub set: String,
    pub records: u64,
    pub tokens: u64,
    pub bytes: u64,
    pub bits_per_token: f64,
    pub bits_per_byte: f64,
    /// `bits_per_token - log2 V` (see [`super::rates`]).
    pub normalized: f64,
}

/// Parse `NAME=FILE,NAME=FILE` into named files; names must be unique.
pub fn parse_sets(spec: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, path) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("--track-rates entry {part:?} is not NAME=FILE"))?;
        let (name, path) = (name.trim(), path.trim());
        if name.is_empty() || path.is_empty() {
            bail!("--track-rates entry {part:?} needs both a name and a file (NAME=FILE)");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--track-rates names the set {name:?} twice");
        }
        out.push((name.to_string(), PathBuf::from(path)));
    }
    if out.is_empty() {
        bail!("--track-rates is empty; give NAME=FILE[,NAME=FILE...]");
    }
    Ok(out)
}

/// Refuse a measuring interval of 0 steps.
pub fn check_every(every: usize) -> Result<()> {
    if every == 0 {
        bail!("--track-every must be at least 1 step");
    }
    Ok(())
}

/// Load each named file, keeping at most `limit` records of each (the first ones).
pub fn load_sets(named: &[(String, PathBuf)], limit: Option<usize>) -> Result<Vec<TrackedSet>> {
    if limit == Some(0) {
        bail!("--track-records must be at least 1 (records of each tracked set to measure)");
    }
    named
        .iter()
        .map(|(name, path)| {
            // The reader's errors name the file and line.
            let mut records =
                read_run_records(path).with_context(|| format!("--track-rates set {name:?}"))?;
            if let Some(n) = limit {
                records.truncate(n);
            }
            if records.is_empty() {
                bail!(
                    "--track-rates set {name:?}: {} has no records",
                    path.display()
                );
            }
            Ok(TrackedSet {
                name: name.clone(),
                records,
            })
        })
        .collect()
}

/// Measures the tracked sets and keeps `rates.jsonl` up to date (rewritten atomically after
/// each measurement, so a killed run leaves a complete file).
pub struct RateTracker {
    sets: Vec<TrackedSet>,
    template: Template,
    max_length: usize,
    every: usize,
    path: PathBuf,
    rows: Vec<TrackedRate>,
    /// Whether a measurement has run in this process: the sets do not change, so records
    /// cut to `max_length` are reported once, not at every measurement.
    measured: std::cell::Cell<bool>,
}

impl RateTracker {
    /// `every` optimizer steps (>= 1); rates go to `out/rates.jsonl`. Rows already there from
    /// an earlier, resumed run are kept up to the step the run continues from.
    pub fn new(
        sets: Vec<TrackedSet>,
        template: Template,
        max_length: usize,
        every: usize,
        out: &Path,
    ) -> Result<Self> {
        check_every(every)?;
        if sets.is_empty() {
            bail!("no data set to track");
        }
        let path = out.join(RATES_FILE);
        let rows = if path.exists() {
            read_rows(&path)?
        } else {
            Vec::new()
        };
        Ok(RateTracker {
            sets,
            template,
            max_length,
            every,
            path,
            rows,
            measured: std::cell::Cell::new(false),
        })
    }

    /// Rates of every set under the model as it is now.
    pub fn measure(&self, lm: &LoadedModel, step: usize) -> Result<Vec<TrackedRate>> {
        let first = !self.measured.replace(true);
        let mut rows = measure_sets(lm, &self.sets, self.template, self.max_length, first)?;
        for r in &mut rows {
            r.step = step;
        }
        Ok(rows)
    }

    /// Before the first step of this run, which continues from step `start` (0 = a fresh
    /// run): drop rows an interrupted run wrote past `start`, and measure the untrained model
    /// of a fresh run. (A resumed run's rows up to its checkpoint were written before the
    /// checkpoint was, so they are all there.)
    pub fn begin(&mut self, lm: &LoadedModel, start: usize) -> Result<()> {
        self.rows.retain(|r| r.step <= start);
        if start == 0 {
            self.rows.clear();
            let new = self.measure(lm, start)?;
            self.rows.extend(new);
        }
        self.save()
    }

    /// After optimizer step `step`: measure when it is due (every N steps).
    pub fn after_step(&mut self, lm: &LoadedModel, step: usize) -> Result<()> {
        if !step.is_multiple_of(self.every) {
            return Ok(());
        }
        self.record(lm, step)
    }

    /// After the last step: measure it unless it was due anyway.
    pub fn finish(&mut self, lm: &LoadedModel, last: usize) -> Result<()> {
        if self.rows.iter().any(|r| r.step == last) {
            return Ok(());
        }
        self.record(lm, last)
    }

    fn record(&mut self, lm: &LoadedModel, step: usize) -> Result<()> {
        self.rows.retain(|r| r.step < step);
        let new = self.measure(lm, step)?;
        self.rows.extend(new);
        self.save()
    }

    pub fn rows(&self) -> &[TrackedRate] {
        &self.rows
    }

    fn save(&self) -> Result<()> {
        crate::util::fsx::atomic_write_with(&self.path, |w| {
            for r in &self.rows {
                serde_json::to_writer(&mut *w, r)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })
    }
}

/// The rate of each set under `lm` (rows with `step` 0), from batched forward passes;
/// `warn_cuts`: say on stderr how many records were cut to `max_length`.
pub fn measure_sets(
    lm: &LoadedModel,
    sets: &[TrackedSet],
    template: Template,
    max_length: usize,
    warn_cuts: bool,
) -> Result<Vec<TrackedRate>> {
    let vocab = lm.tokenizer.vocab_size();
    sets.iter()
        .map(|s| {
            let mut batches =
                EvalBatches::new(&lm.tokenizer, lm.model.device(), template, max_length);
            batches.warn_cuts = warn_cuts;
            let e = batches
                .fused(lm, &s.records)
                .with_context(|| format!("tracked set {:?}", s.name))?;
            let bits = e.mean_nll * e.tokens as f64 / std::f64::consts::LN_2;
            let r = Rate::from_totals(
                e.records as u64,
                e.tokens as u64,
                e.bytes as u64,
                bits,
                vocab,
            )?;
            Ok(TrackedRate {
                step: 0,
                set: s.name.clone(),
                records: r.records,
                tokens: r.tokens,
                bytes: r.bytes,
                bits_per_token: r.bits_per_token,
                bits_per_byte: r.bits_per_byte,
                normalized: r.normalized,
            })
        })
        .collect()
}

/// Read a `rates.jsonl`.
pub fn read_rows(path: &Path) -> Result<Vec<TrackedRate>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not a tracked rate", path.display(), i + 1))
        })
        .collect()
}

/// `rates.{png,svg}`: normalised rate against the step, one line per set.
pub fn plot_rows(run: &RunDir, rows: &[TrackedRate]) -> Result<()> {
    let mut names: Vec<&str> = Vec::new();
    for r in rows {
        if !names.contains(&r.set.as_str()) {
            names.push(&r.set);
        }
    }
    let mut plot = LinePlot::new(
        "Compression rates during fine-tuning",
        "optimizer step",
        "normalised rate (bits/token - log2 V)",
    );
    for n in names {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.set == n)
            .map(|r| (r.step as f64, r.normalized))
            .collect();
        plot = plot.series(Series::new(n, pts));
    }
    run.plot("rates", &plot)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_parse_and_bad_entries_are_named() {
        let s = parse_sets("pre=a.jsonl, align=b/c.jsonl").unwrap();
        assert_eq!(s[0], ("pre".into(), PathBuf::from("a.jsonl")));
        assert_eq!(s[1], ("align".into(), PathBuf::from("b/c.jsonl")));
        assert!(parse_sets("a.jsonl")
            .unwrap_err()
            .to_string()
            .contains("NAME=FILE"));
        assert!(parse_sets("a=x,a=y")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(parse_sets("=x").is_err());
        assert!(parse_sets(" , ").is_err());
    }
}
