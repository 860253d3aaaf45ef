//! The demo's rebound cells: for one (base model, seed), score the base, then for each n+
//! align on n+ positive reviews and perturb on negative reviews, scoring the model and
//! measuring the compression rates of D_p, D_a and D_t at every n- of the grid.
//!
//! The n- grid is evaluated along ONE perturbation pass per (base, n+, seed): with a constant
//! learning rate, no shuffling and a batch size dividing every n-, the model after the first
//! n- negatives of the pass is exactly the model a separate run on those n- samples would
//! give, so snapshots replace separate runs at no loss of rigour.
//!
//! Each (base, seed) unit writes `cells/<base>-seed<S>/outcome.json` atomically, stamped with
//! a fingerprint of everything that determines it; a rerun reuses a unit whose fingerprint
//! matches, so a killed demo resumes where it stopped.

use super::config::{BaseSpec, DemoConfig};
use crate::compress::tracking::{measure_sets, TrackedSet};
use crate::data::records::Record;
use crate::data::template::Template;
use crate::experiments::manifest::sha256_hex;
use crate::model::checkpoint::{load_model, LoadedModel};
use crate::model::generate::{generate, GenConfig};
use crate::model::TextTokenizer;
use crate::report::stats::mean_ci95;
use crate::score::{Sample, Scorer};
use crate::train::schedule::Schedule;
use crate::train::sft::StepLog;
use crate::train::{train, TrainConfig};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One measured cell: mean score of the eval generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub base: String,
    pub size: String,
    pub pretrain_tokens: usize,
    pub n_plus: usize,
    pub n_minus: usize,
    pub seed: u64,
    pub score: f64,
    pub score_ci: Option<f64>,
}

/// The compression rate of one tracked set at one point of the perturbation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatePoint {
    pub base: String,
    pub n_plus: usize,
    pub seed: u64,
    pub n_minus: usize,
    /// l = |D_t| / |D_a| in sequence tokens.
    pub l: f64,
    /// k = |D_p| / |D_a| in sequence tokens.
    pub k: f64,
    /// `D_p` (held-out pre-training text), `D_a` (the alignment pairs) or `D_t` (the
    /// perturbation pairs).
    pub set: String,
    pub bits_per_token: f64,
}

/// Everything one (base, seed) unit measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitOutcome {
    pub fingerprint: String,
    pub base_score: f64,
    pub rows: Vec<CellResult>,
    pub rates: Vec<RatePoint>,
}

/// The data every unit draws from.
pub struct DemoData<'a> {
    pub prompts: &'a [String],
    pub align: &'a [Record],
    pub perturb: &'a [Record],
    /// Pre-training text that no base model saw (after the largest budget's cut).
    pub held_out_pretrain: &'a [Record],
}

/// Sequence tokens (BOS + text + EOS) of records, the unit the pre-training budget counts.
pub fn sequence_tokens(tok: &TextTokenizer, records: &[Record]) -> Result<usize> {
    records.iter().try_fold(0, |acc, r| {
        let text = match r {
            Record::Text { text } => text.clone(),
            Record::Pair { prompt, response } => format!("{prompt}{response}"),
        };
        Ok(acc + tok.encode(&text, true)?.len() + 1)
    })
}

/// Mean world-sentiment of sampled continuations of the eval prompts.
pub fn score_model(
    lm: &LoadedModel,
    prompts: &[String],
    scorer: &dyn Scorer,
    gen: &GenConfig,
) -> Result<(f64, Option<f64>)> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| Template::Raw.encode_prompt(p, &lm.tokenizer))
        .collect::<Result<_>>()?;
    let outs = generate(
        &lm.model,
        &ids,
        lm.tokenizer.eos_ids(),
        lm.tokenizer.pad_id(),
        gen,
        |_| {},
    )?;
    let texts: Vec<String> = outs
        .iter()
        .map(|o| lm.tokenizer.decode(o, true))
        .collect::<Result<_>>()?;
    let samples: Vec<Sample> = prompts
        .iter()
        .zip(&texts)
        .map(|(p, r)| Sample {
            prompt: p,
            response: r,
        })
        .collect();
    let scores = scorer.score_batch(&samples)?;
    let ci = mean_ci95(&scores).context("no eval scores")?;
    Ok((ci.mean, ci.half_width))
}

/// Each seed draws its own n+ positives and negatives (rotations of the pools).
fn draw(pool: &[Record], n: usize, seed: u64, stride: usize) -> Vec<Record> {
    let start = (seed as usize).wrapping_mul(stride) % pool.len();
    (0..n)
        .map(|i| pool[(start + i) % pool.len()].clone())
        .collect()
}

fn fingerprint(cfg: &DemoConfig, base: &BaseSpec, seed: u64) -> Result<String> {
    let key = serde_json::json!({
        "version": 2, "world_seed": cfg.seed, "base": base, "seed": seed,
        "n_plus": cfg.n_plus, "n_minus": cfg.n_minus, "eval_prompts": cfg.eval_prompts,
        "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
        "align_lr": cfg.align_lr, "batch_size": cfg.batch_size,
        "positive_fraction": cfg.positive_fraction, "rate_records": cfg.rate_records,
        "pretrain_lr": cfg.pretrain_lr, "pretrain_batch_size": cfg.pretrain_batch_size,
    });
    Ok(sha256_hex(serde_json::to_string(&key)?.as_bytes()))
}

/// Run (or reuse) the unit of `base` (pre-trained into `base_dir`, on `pretrain_tokens`
/// sequence tokens) and `seed`.
#[allow(clippy::too_many_arguments)]
pub fn run_unit(
    cfg: &DemoConfig,
    base: &BaseSpec,
    base_dir: &Path,
    pretrain_tokens: usize,
    seed: u64,
    data: &DemoData,
    scorer: &dyn Scorer,
    out: &Path,
) -> Result<UnitOutcome> {
    let unit_dir = out
        .join("cells")
        .join(format!("{}-seed{seed}", base.name()));
    let outcome_path = unit_dir.join("outcome.json");
    let fp = fingerprint(cfg, base, seed)?;
    if let Ok(text) = std::fs::read_to_string(&outcome_path) {
        if let Ok(done) = serde_json::from_str::<UnitOutcome>(&text) {
            if done.fingerprint == fp {
                return Ok(done);
            }
        }
    }
    let base_spec = base_dir.to_string_lossy().into_owned();
    let gen = GenConfig {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        seed,
        batch_size: 16,
        ..Default::default()
    };
    let base_lm = load_model(&base_spec, &Device::Cpu)?;
    let (base_score, _) = score_model(&base_lm, data.prompts, scorer, &gen)?;
    let max_minus = cfg.n_minus.iter().copied().max().unwrap_or(0);
    let neg = if max_minus > 0 {
        draw(data.perturb, max_minus, seed, 104_729)
    } else {
        Vec::new()
    };
    let tok = &base_lm.tokenizer;
    // l is counted in tokens: tokens of the first n- negatives of the pass.
    let mut neg_prefix_tokens = vec![0usize];
    for r in &neg {
        let last = *neg_prefix_tokens.last().unwrap_or(&0);
        neg_prefix_tokens.push(last + sequence_tokens(tok, std::slice::from_ref(r))?);
    }
    let held_out: Vec<Record> = data
        .held_out_pretrain
        .iter()
        .take(cfg.rate_records)
        .cloned()
        .collect();
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for &np in &cfg.n_plus {
        let lm = load_model(&base_spec, &Device::Cpu)?;
        let tc = TrainConfig {
            template: Template::Raw,
            lr: cfg.align_lr,
            schedule: Schedule::Constant,
            batch_size: cfg.batch_size,
            grad_accum: 1,
            epochs: 1,
            max_length: 512,
            seed,
            shuffle: false,
            ..Default::default()
        };
        let pos = draw(data.align, np, seed, 7919);
        let align_tokens = sequence_tokens(tok, &pos)? as f64;
        let k = pretrain_tokens as f64 / align_tokens;
        let sets = vec![
            TrackedSet {
                name: "D_p".into(),
                records: held_out.clone(),
            },
            TrackedSet {
                name: "D_a".into(),
                records: pos.iter().take(cfg.rate_records).cloned().collect(),
            },
            TrackedSet {
                name: "D_t".into(),
                records: neg.iter().take(cfg.rate_records).cloned().collect(),
            },
        ];
        let cell_dir = unit_dir.join(format!("nplus{np}"));
        train(
            &lm,
            &pos,
            &tc,
            &cell_dir.join("aligned"),
            false,
            None,
            false,
        )?;
        let mut measured: Vec<(usize, f64, Option<f64>)> = Vec::new();
        let mut measure = |m: &LoadedModel, nm: usize| -> Result<()> {
            let (s, ci) = score_model(m, data.prompts, scorer, &gen)?;
            measured.push((nm, s, ci));
            let l = neg_prefix_tokens[nm] as f64 / align_tokens;
            if neg.is_empty() {
                return Ok(());
            }
            for r in measure_sets(m, &sets, Template::Raw, 512)? {
                rates.push(RatePoint {
                    base: base.name(),
                    n_plus: np,
                    seed,
                    n_minus: nm,
                    l,
                    k,
                    set: r.set,
                    bits_per_token: r.bits_per_token,
                });
            }
            Ok(())
        };
        measure(&lm, 0)?;
        if max_minus > 0 {
            let bs = cfg.batch_size;
            let mut hook = |m: &LoadedModel, l: &StepLog| -> Result<()> {
                let seen = l.step * bs;
                if cfg.n_minus.contains(&seen) {
                    measure(m, seen)?;
                }
                Ok(())
            };
            train(
                &lm,
                &neg,
                &tc,
                &cell_dir.join("perturbed"),
                false,
                Some(&mut hook),
                false,
            )?;
        }
        for (nm, s, ci) in measured {
            if !cfg.n_minus.contains(&nm) {
                continue;
            }
            rows.push(CellResult {
                base: base.name(),
                size: base.size.clone(),
                pretrain_tokens: base.tokens,
                n_plus: np,
                n_minus: nm,
                seed,
                score: s,
                score_ci: ci,
            });
        }
    }
    let outcome = UnitOutcome {
        fingerprint: fp,
        base_score,
        rows,
        rates,
    };
    crate::util::fsx::atomic_write_json(&outcome_path, &outcome)?;
    Ok(outcome)
}
