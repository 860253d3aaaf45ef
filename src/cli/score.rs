//! `elastica score`: run one scorer over a JSONL file of responses, outside any experiment.
//!
//! Input lines are `{"prompt", "response"}`, `{"text"}` (scored as a response to an empty
//! prompt) or `{"messages": [...]}` conversations ending in an assistant turn, as `elastica
//! generate` writes them (the last turn scored as the response to the last user turn before
//! it, as the experiments score conversations; the safe-rlhf cost model also reads the turns
//! before it). Writes `--out` with one `{"record", "score"}`
//! line per input record, in input order (blank lines are not records), and a summary
//! (scorer, count, mean, 95% CI over records) to stdout and to `<out stem>.summary.json`
//! beside it.

use crate::data::records::{last_user_content, read_run_records, Record};
use crate::report::stats::mean_ci95;
use crate::score::registry::{build, parse_cli_spec};
use crate::score::Sample;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    /// The scorer: a kind (`keywords`, `world-sentiment`, `world-safety`), the keys of a
    /// `[scorer]` table (`'kind = "cost-model", path = "DIR"'`), or a TOML file with them.
    #[arg(long)]
    pub scorer: String,
    /// JSONL of {"prompt","response"}, {"text"} or {"messages": [...]} records.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write one {"record", "score"} line per input record.
    #[arg(long)]
    pub out: PathBuf,
    /// Records handed to the scorer at once (progress advances per batch).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, Serialize)]
struct ScoreLine {
    /// 1-based index of the record in the input.
    record: usize,
    score: f64,
}

/// What `elastica score` prints.
#[derive(Debug, Serialize)]
pub struct ScoreSummary {
    pub scorer: String,
    pub higher_is_aligned: bool,
    pub data: String,
    pub count: usize,
    pub mean: f64,
    /// 95% CI of the mean over records (Student t); absent with one record.
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

/// What a scorer reads of a record: a pair as it is, a text as the response to an empty
/// prompt, a conversation's last turn as the response to the turns before it (whose last
/// user turn is the prompt of scorers that read one).
fn sample_of(r: &Record) -> Sample<'_> {
    match r {
        Record::Pair { prompt, response } => Sample::new(prompt, response),
        Record::Text { text } => Sample::new("", text),
        Record::Chat { messages, .. } => match messages.split_last() {
            Some((last, context)) => Sample {
                prompt: last_user_content(context),
                response: &last.content,
                context: Some(context),
            },
            None => Sample::new("", ""),
        },
    }
}

/// `scores.jsonl` -> `scores.summary.json`.
pub fn summary_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scores".into());
    out.with_file_name(format!("{stem}.summary.json"))
}

pub fn run(a: ScoreArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let spec = parse_cli_spec(&a.scorer)?;
    let outputs = [a.out.clone(), summary_path(&a.out)];
    for out in &outputs {
        crate::util::fsx::refuse_input_as_output("--out", out, &[("--data", &a.data)])?;
    }
    let records = read_run_records(&a.data)?;
    let scorer = build(&spec, &Device::Cpu).context("cannot build the scorer")?;
    let samples: Vec<Sample<'_>> = records.iter().map(sample_of).collect();
    let pb = crate::util::progress::bar(samples.len() as u64, "score");
    let mut scores = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(a.batch_size) {
        let got = scorer
            .score_batch(chunk)
            .with_context(|| format!("scoring {} with {}", a.data.display(), scorer.name()))?;
        if got.len() != chunk.len() {
            bail!(
                "scorer {} returned {} scores for {} records",
                scorer.name(),
                got.len(),
                chunk.len()
            );
        }
        if let Some(i) = got.iter().position(|x| !x.is_finite()) {
            bail!(
                "scorer {} gave {} for record {} of {}",
                scorer.name(),
                got[i],
                scores.len() + i + 1,
                a.data.display()
            );
        }
        scores.extend(got);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let lines: Vec<ScoreLine> = scores
        .iter()
        .enumerate()
        .map(|(i, &score)| ScoreLine {
            record: i + 1,
            score,
        })
        .collect();
    let mut text = String::new();
    for l in &lines {
        text += &serde_json::to_string(l)?;
        text.push('\n');
    }
    crate::util::fsx::atomic_write(&a.out, text.as_bytes())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let ci = mean_ci95(&scores).context("no scores")?;
    let bounds = ci.bounds();
    let summary = ScoreSummary {
        scorer: scorer.name().to_string(),
        higher_is_aligned: scorer.higher_is_aligned(),
        data: a.data.display().to_string(),
        count: scores.len(),
        mean: ci.mean,
        ci_low: bounds.map(|b| b.0),
        ci_high: bounds.map(|b| b.1),
    };
    crate::util::fsx::atomic_write_json(&summary_path(&a.out), &summary)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
