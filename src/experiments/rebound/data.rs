//! The experiment's data, frozen into the run directory when the grid is planned:
//! `data/positive.jsonl` (the first max n+ records, or preference pairs when the align
//! method is DPO), `data/negative.jsonl` (the first max n-)
//! and `data/eval_prompts.jsonl` (the first `eval.n` prompts). Cells read these files, not
//! the original data sets, so every cell (on any machine) trains on the same records, and
//! the manifest pins their hashes. Cell n takes the first n records, so the sets are nested:
//! the 1000 records of n+ = 1000 are the first 1000 of n+ = 2000.

use super::config::ReboundConfig;
use crate::data::prefs::{self, PrefRecord};
use crate::data::prompts::{conversations as prompt_conversations, prompt_lines, Prompt};
use crate::data::records::{conversations, jsonl_bytes, Record};
use crate::data::schemas::{self, DataSpec};
use crate::experiments::renders::check_renders;
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::Path;

pub const POSITIVE_FILE: &str = "data/positive.jsonl";
pub const NEGATIVE_FILE: &str = "data/negative.jsonl";
pub const PROMPTS_FILE: &str = "data/eval_prompts.jsonl";
/// The held-out general text of "capability kept" (only with a `[capability]` table).
pub const CAPABILITY_FILE: &str = "data/capability.jsonl";
/// The [`FrozenData`] summary, for reports written later (`elastica collect`).
pub const FROZEN_FILE: &str = "data/frozen.json";

/// What was frozen, for the report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrozenData {
    pub positive: usize,
    pub negative: usize,
    pub prompts: usize,
    /// One line per source: what was read and skipped.
    pub sources: Vec<String>,
    /// Evaluation prompts that are also prompts of a training record.
    pub eval_overlap: usize,
    /// Records of the capability set (0 without one).
    #[serde(default)]
    pub capability: usize,
}

/// The frozen files in memory, before anything is written: the planner pins their hashes
/// in the manifest and checks the manifest against the run directory first, so a refused
/// re-plan writes nothing.
#[derive(Debug, Clone)]
pub struct Frozen {
    pub summary: FrozenData,
    /// `(path relative to the run directory, bytes)`, in writing order.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl Frozen {
    /// The bytes of the frozen file `rel` (one of the `*_FILE` constants).
    pub fn bytes(&self, rel: &str) -> Result<&[u8]> {
        self.files
            .iter()
            .find(|(p, _)| *p == rel)
            .map(|(_, b)| b.as_slice())
            .with_context(|| format!("internal error: no frozen file {rel}"))
    }

    /// Write the files into `run_dir`; a file whose content is unchanged is not rewritten.
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        for (rel, bytes) in &self.files {
            write_if_changed(&run_dir.join(rel), bytes)?;
        }
        Ok(())
    }
}

/// Load the config's data and check the sizes; returns the frozen files without writing
/// them ([`Frozen::write`]).
pub fn freeze(cfg: &ReboundConfig) -> Result<Frozen> {
    let mut sources = Vec::new();
    // Under `[align] method = "dpo"` the positive file holds preference pairs; `positive`
    // then stands for their (prompt, chosen) halves where prompts and counts are needed.
    let pairs = match cfg.align.is_dpo() {
        true => Some(load_pairs(cfg)?),
        false => None,
    };
    let positive = match &pairs {
        Some((p, what)) => (
            p.iter().map(|r| r.record(&r.chosen)).collect(),
            what.clone(),
        ),
        None => load_side(&cfg.positive, "positive", cfg.max_positive(), "n_positive")?,
    };
    sources.push(format!("positive: {}", positive.1));
    let negative = if cfg.max_negative() > 0 {
        let n = load_side(&cfg.negative, "negative", cfg.max_negative(), "n_negative")?;
        sources.push(format!("negative: {}", n.1));
        n.0
    } else {
        Vec::new()
    };
    let positive = positive.0;
    let (mut prompts, what) = match (&cfg.eval.prompts, &cfg.eval.data) {
        (Some(file), _) => (
            read_prompts(Path::new(file))?,
            format!("{file} ({{\"prompt\"}} or {{\"messages\"}} lines)"),
        ),
        (None, Some(spec)) => {
            let ds = schemas::load(spec)
                .with_context(|| format!("loading the evaluation prompts ({})", spec.path))?;
            let s = ds.summary();
            (ds.prompts()?, format!("{}: {s}", spec.path))
        }
        (None, None) => bail!("[eval]: no evaluation prompts"),
    };
    if prompts.len() < cfg.eval.n {
        bail!(
            "[eval] n = {} but the evaluation prompts ({what}) hold only {}; lower eval.n or \
             give more prompts",
            cfg.eval.n,
            prompts.len()
        );
    }
    prompts.truncate(cfg.eval.n);
    let t = cfg.train.template;
    t.check_conversations(conversations(&positive), "the positive data")?;
    t.check_conversations(conversations(&negative), "the negative data")?;
    t.check_conversations(prompt_conversations(&prompts), "the evaluation prompts")?;
    let sets = [
        ("the positive data", positive.as_slice()),
        ("the negative data", negative.as_slice()),
    ];
    for m in &cfg.models {
        check_renders(&m.path, t, cfg.train.max_length, &sets, &prompts)?;
    }
    sources.push(format!("eval prompts: {what}"));

    let train_prompts: HashSet<Prompt> = positive
        .iter()
        .chain(&negative)
        .filter_map(Prompt::of_record)
        .collect();
    let eval_overlap = prompts.iter().filter(|p| train_prompts.contains(p)).count();
    let capability = match &cfg.capability {
        Some(spec) => {
            let ds = schemas::load(spec)
                .with_context(|| format!("loading the capability data ({})", spec.path))?;
            let s = ds.summary();
            let mut r = ds.records;
            r.truncate(cfg.measures.capability_n);
            if r.is_empty() {
                bail!("the capability data ({}) has no records: {s}", spec.path);
            }
            sources.push(format!(
                "capability: {} ({s}); using the first {}",
                spec.path,
                r.len()
            ));
            Some(r)
        }
        None => None,
    };
    let summary = FrozenData {
        capability: capability.as_ref().map_or(0, Vec::len),
        positive: positive.len(),
        negative: negative.len(),
        prompts: prompts.len(),
        sources,
        eval_overlap,
    };
    let positive_bytes = match &pairs {
        Some((p, _)) => jsonl_bytes(p)?,
        None => jsonl_bytes(&positive)?,
    };
    let mut files = vec![
        (POSITIVE_FILE, positive_bytes),
        (NEGATIVE_FILE, jsonl_bytes(&negative)?),
        (PROMPTS_FILE, prompt_lines(&prompts)?),
    ];
    if let Some(r) = &capability {
        files.push((CAPABILITY_FILE, jsonl_bytes(r)?));
    }
    files.push((
        FROZEN_FILE,
        serde_json::to_string_pretty(&summary)?.into_bytes(),
    ));
    Ok(Frozen { summary, files })
}

/// The summary [`freeze`] recorded in `run_dir`, if any (runs planned before it was
/// recorded have none; their report then lacks the data lines).
pub fn read_frozen(run_dir: &Path) -> Result<Option<FrozenData>> {
    let p = run_dir.join(FROZEN_FILE);
    if !p.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{} is not a frozen-data summary", p.display()))
}

/// The first `need` records of a data spec; too few is an error naming both numbers.
fn load_side(spec: &DataSpec, side: &str, need: usize, key: &str) -> Result<(Vec<Record>, String)> {
    let ds =
        schemas::load(spec).with_context(|| format!("loading the {side} data ({})", spec.path))?;
    if ds.records.len() < need {
        bail!(
            "{key} asks for up to {need} {side} records, but the {side} data ({}, schema \
             \"{}\", select \"{}\") has only {}: {}. Lower the largest {key} or give more data",
            spec.path,
            spec.schema,
            serde_json::to_value(spec.select)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            ds.records.len(),
            ds.summary()
        );
    }
    let summary = ds.summary();
    let mut r = ds.records;
    r.truncate(need);
    Ok((
        r,
        format!("{} ({summary}); using the first {need}", spec.path),
    ))
}

/// The first max n+ preference pairs of the positive spec (`[align] method = "dpo"`).
fn load_pairs(cfg: &ReboundConfig) -> Result<(Vec<PrefRecord>, String)> {
    let spec = &cfg.positive;
    let need = cfg.max_positive();
    let ds = prefs::load(spec, cfg.align.prefer)
        .with_context(|| format!("loading the positive preference pairs ({})", spec.path))?;
    if ds.records.len() < need {
        bail!(
            "n_positive asks for up to {need} preference pairs, but the positive data ({}, \
             schema \"{}\") has only {}. Lower the largest n_positive or give more data",
            spec.path,
            spec.schema,
            ds.records.len()
        );
    }
    let summary = ds.summary();
    let mut r = ds.records;
    r.truncate(need);
    Ok((
        r,
        format!("{} ({summary}); using the first {need}", spec.path),
    ))
}

pub use crate::data::prompts::read_prompts;

/// Keep an identical file untouched (its mtime too); replace a different one atomically.
pub(crate) fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    crate::util::fsx::atomic_write(path, bytes)
}
