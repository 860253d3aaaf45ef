//! `elastica demo`: the paper's rebound experiment end to end on the synthetic world, from
//! scratch, in minutes on a CPU. World -> tokenizer -> pre-training (two budgets, two model
//! sizes) -> alignment SFT on n+ positive reviews -> perturbation SFT on n- negative reviews
//! -> generation -> exact sentiment scores -> report.
//!
//! The n- grid is evaluated along ONE perturbation pass per (base, n+, seed): with a constant
//! learning rate, no shuffling and a batch size dividing every n-, the model after the first
//! n- negatives of the pass is exactly the model a separate run on those n- samples would
//! give, so snapshots replace separate runs at no loss of rigour.

use super::pretrain::{pretrain, PretrainConfig};
use crate::data::records::Record;
use crate::data::template::Template;
use crate::data::world::{Task, World, WorldConfig};
use crate::model::checkpoint::{load_model, LoadedModel};
use crate::model::generate::{generate, GenConfig};
use crate::report::stats::{first_crossing, mean_ci95};
use crate::report::table::{fmt_ci, Table};
use crate::report::{LinePlot, RunDir};
use crate::score::{Sample, Scorer};
use crate::train::schedule::Schedule;
use crate::train::sft::StepLog;
use crate::train::{train, TrainConfig};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One pre-trained base model of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseSpec {
    pub size: String,
    pub tokens: usize,
}

impl BaseSpec {
    pub fn name(&self) -> String {
        format!("{}-{}k", self.size, self.tokens / 1000)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoConfig {
    pub seed: u64,
    pub bases: Vec<BaseSpec>,
    pub n_plus: Vec<usize>,
    pub n_minus: Vec<usize>,
    pub seeds: Vec<u64>,
    pub eval_prompts: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub align_lr: f64,
    /// Records per optimizer step during alignment and perturbation; must divide every n-.
    pub batch_size: usize,
    pub positive_fraction: f64,
}

impl DemoConfig {
    /// The default demo: two pre-training budgets for the tiny model, and the small model at
    /// the larger budget; 3 seeds.
    pub fn full(seed: u64) -> Self {
        DemoConfig {
            seed,
            bases: vec![
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 60_000,
                },
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 240_000,
                },
                BaseSpec {
                    size: "small".into(),
                    tokens: 240_000,
                },
            ],
            n_plus: vec![100, 300],
            n_minus: vec![0, 10, 20, 50, 100, 200],
            seeds: vec![1, 2, 3],
            eval_prompts: 32,
            max_new_tokens: 32,
            temperature: 1.0,
            align_lr: 2e-3,
            batch_size: 5,
            positive_fraction: 0.5,
        }
    }

    /// `--quick`: one seed, two budgets of the tiny model, a short n- grid (the test suite runs it).
    pub fn quick(seed: u64) -> Self {
        DemoConfig {
            bases: vec![
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 20_000,
                },
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 60_000,
                },
            ],
            n_plus: vec![100],
            n_minus: vec![0, 20, 60],
            seeds: vec![1],
            eval_prompts: 16,
            max_new_tokens: 24,
            ..Self::full(seed)
        }
    }

    pub fn validate(&self, world: &World) -> Result<()> {
        let pos = world.align(Task::Reviews).len();
        let neg = world.perturb(Task::Reviews).len();
        if let Some(&m) = self.n_plus.iter().max() {
            if m > pos {
                bail!("n+ = {m} is larger than the {pos} positive pairs in the world");
            }
        }
        if let Some(&m) = self.n_minus.iter().max() {
            if m > neg {
                bail!("n- = {m} is larger than the {neg} negative pairs in the world");
            }
        }
        if let Some(bad) = self.n_minus.iter().find(|&&n| n % self.batch_size != 0) {
            bail!(
                "every n- must be a multiple of the batch size {} (got {bad})",
                self.batch_size
            );
        }
        Ok(())
    }
}

/// One measured cell: mean score of the eval generations.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Mean world-sentiment of sampled continuations of the eval prompts.
fn score_model(
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

/// Run the demo into `out`. Stages already on disk (world, pre-trained models) are reused.
pub fn run(cfg: &DemoConfig, out: &Path) -> Result<String> {
    let started = std::time::Instant::now();
    let run = RunDir::create(out)?;
    let world_dir = out.join("world");
    let max_tokens = cfg.bases.iter().map(|b| b.tokens).max().unwrap_or(0);
    let max_plus = *cfg.n_plus.iter().max().unwrap_or(&0);
    let max_minus = *cfg.n_minus.iter().max().unwrap_or(&0);
    let wcfg = WorldConfig {
        seed: cfg.seed,
        // Sequence-token budget plus slack: records are whole, so the cut lands below it.
        pretrain_tokens: (max_tokens + max_tokens / 20 + 1000) as u64,
        positive_fraction: cfg.positive_fraction,
        n_align: max_plus.max(1),
        n_perturb: max_minus.max(1),
        n_eval: cfg.eval_prompts,
        ..WorldConfig::default()
    };
    let world = match World::load(&world_dir) {
        Ok(w) if *w.config() == wcfg => w,
        _ => {
            eprintln!("[demo] generating the world");
            let w = World::generate(&wcfg)?;
            w.write(&world_dir)?;
            w
        }
    };
    cfg.validate(&world)?;
    run.write_json("demo_config.json", cfg)?;
    std::fs::copy(world_dir.join("world.json"), out.join("world.json"))
        .context("cannot copy world.json")?;
    let scorer = crate::score::world::by_name("world-sentiment")?;
    let prompts: Vec<String> = world
        .eval_prompts(Task::Reviews)
        .iter()
        .take(cfg.eval_prompts)
        .cloned()
        .collect();
    let align = world.align(Task::Reviews);
    let perturb = world.perturb(Task::Reviews);
    let mut rows: Vec<CellResult> = Vec::new();
    let mut base_scores: Vec<(String, u64, f64)> = Vec::new();
    for base in &cfg.bases {
        let base_dir = out.join("models").join(base.name());
        if !base_dir.join("model.safetensors").exists() {
            eprintln!(
                "[demo] pre-training {} on {} tokens",
                base.size, base.tokens
            );
            let pc = PretrainConfig {
                size: base.size.clone(),
                tokens: base.tokens,
                seed: cfg.seed,
                ..Default::default()
            };
            pretrain(&world_dir, &pc, &base_dir, true)?;
        }
        let base_spec = base_dir.to_string_lossy().into_owned();
        for &seed in &cfg.seeds {
            let gen = GenConfig {
                max_new_tokens: cfg.max_new_tokens,
                temperature: cfg.temperature,
                seed,
                batch_size: 16,
                ..Default::default()
            };
            let base_lm = load_model(&base_spec, &Device::Cpu)?;
            let (s, _) = score_model(&base_lm, &prompts, scorer.as_ref(), &gen)?;
            base_scores.push((base.name(), seed, s));
            for &np in &cfg.n_plus {
                eprintln!("[demo] {} seed {seed}: align on {np} positive, perturb up to {max_minus} negative", base.name());
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
                // Each seed aligns on its own draw of n+ positives (rotation of the pool).
                let start = (seed as usize * 7919) % align.len();
                let pos: Vec<Record> = (0..np)
                    .map(|i| align[(start + i) % align.len()].clone())
                    .collect();
                let cell_dir = out
                    .join("cells")
                    .join(format!("{}-nplus{np}-seed{seed}", base.name()));
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
                if cfg.n_minus.contains(&0) {
                    let (s, ci) = score_model(&lm, &prompts, scorer.as_ref(), &gen)?;
                    measured.push((0, s, ci));
                }
                if max_minus > 0 {
                    let start = (seed as usize * 104729) % perturb.len();
                    let neg: Vec<Record> = (0..max_minus)
                        .map(|i| perturb[(start + i) % perturb.len()].clone())
                        .collect();
                    let bs = cfg.batch_size;
                    let mut hook = |m: &LoadedModel, l: &StepLog| -> Result<()> {
                        let seen = l.step * bs;
                        if cfg.n_minus.contains(&seen) {
                            let (s, ci) = score_model(m, &prompts, scorer.as_ref(), &gen)?;
                            measured.push((seen, s, ci));
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
        }
    }
    run.write_jsonl("results.jsonl", &rows)?;
    let summary = report(
        cfg,
        &run,
        &rows,
        &base_scores,
        started.elapsed().as_secs_f64(),
    )?;
    Ok(summary)
}

/// Rebound metrics of one (base, n+) curve averaged over seeds.
struct Curve {
    xs: Vec<f64>,
    mean: Vec<f64>,
    half: Vec<Option<f64>>,
}

fn curve(rows: &[CellResult], base: &str, np: usize, n_minus: &[usize]) -> Curve {
    let mut c = Curve {
        xs: vec![],
        mean: vec![],
        half: vec![],
    };
    for &nm in n_minus {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.base == base && r.n_plus == np && r.n_minus == nm)
            .map(|r| r.score)
            .collect();
        if let Some(ci) = mean_ci95(&v) {
            c.xs.push(nm as f64);
            c.mean.push(ci.mean);
            c.half.push(ci.half_width);
        }
    }
    c
}

/// Alignment gains below this (in score units) are treated as "alignment did not take".
const MIN_GAIN: f64 = 0.05;

/// Per-seed "share of the alignment gain lost at the first n- step": the paper's fast initial
/// drop, with no assumption of a plateau.
fn first_step_loss(
    rows: &[CellResult],
    base: &str,
    np: usize,
    first: usize,
    base_score: &dyn Fn(u64) -> f64,
) -> Vec<f64> {
    let mut out = vec![];
    for r0 in rows
        .iter()
        .filter(|r| r.base == base && r.n_plus == np && r.n_minus == 0)
    {
        let Some(r1) = rows
            .iter()
            .find(|r| r.base == base && r.n_plus == np && r.n_minus == first && r.seed == r0.seed)
        else {
            continue;
        };
        let gain = r0.score - base_score(r0.seed);
        // A share of a gain that is not there is noise, not rebound.
        if gain > MIN_GAIN {
            out.push((r0.score - r1.score) / gain);
        }
    }
    out
}

fn report(
    cfg: &DemoConfig,
    run: &RunDir,
    rows: &[CellResult],
    base_scores: &[(String, u64, f64)],
    secs: f64,
) -> Result<String> {
    let mut csv = Table::new([
        "base",
        "size",
        "pretrain_tokens",
        "n_plus",
        "n_minus",
        "seed",
        "score",
        "score_ci95",
    ]);
    for r in rows {
        csv.push_row([
            r.base.clone(),
            r.size.clone(),
            r.pretrain_tokens.to_string(),
            r.n_plus.to_string(),
            r.n_minus.to_string(),
            r.seed.to_string(),
            format!("{:.4}", r.score),
            r.score_ci.map(|h| format!("{h:.4}")).unwrap_or_default(),
        ])?;
    }
    run.write_table_csv("results.csv", &csv)?;
    let mut md = String::new();
    md.push_str("# elastica demo: alignment elasticity in a synthetic world\n\n");
    md.push_str(&format!(
        "Tiny Llama models pre-trained from scratch on a synthetic review/dialogue world (positive share {:.0}%), aligned by SFT on n+ positive reviews, then perturbed by SFT on n- negative reviews. Score = mean exact world-sentiment P(positive) of {} sampled continuations (temperature {}) of held-out review openings. Mean ± 95% CI over {} seed(s). Total time {:.0} s.\n\n",
        cfg.positive_fraction * 100.0, cfg.eval_prompts, cfg.temperature, cfg.seeds.len(), secs
    ));
    let n_minus: Vec<usize> = cfg.n_minus.clone();
    let first = n_minus.iter().copied().find(|&n| n > 0);
    let mut strengths: Vec<(String, Vec<f64>)> = Vec::new();
    for base in &cfg.bases {
        let name = base.name();
        let bs: Vec<f64> = base_scores
            .iter()
            .filter(|b| b.0 == name)
            .map(|b| b.2)
            .collect();
        let bci = mean_ci95(&bs).context("no base score")?;
        md.push_str(&format!(
            "## {name}: {} model, {} pre-training tokens\n\nPre-trained score: {}\n\n",
            base.size,
            base.tokens,
            fmt_ci(bci.mean, bci.half_width)
        ));
        let mut t = Table::new(
            std::iter::once("n+".to_string()).chain(n_minus.iter().map(|n| format!("n-={n}"))),
        );
        let mut plot = LinePlot::new(
            format!("Rebound, {name}"),
            "negative samples n-",
            "P(positive)",
        )
        .reference(bci.mean, "pre-trained model");
        let base_of = |seed: u64| {
            base_scores
                .iter()
                .find(|b| b.0 == name && b.1 == seed)
                .map(|b| b.2)
                .unwrap_or(bci.mean)
        };
        for &np in &cfg.n_plus {
            let c = curve(rows, &name, np, &n_minus);
            t.push_row(
                std::iter::once(np.to_string())
                    .chain(c.mean.iter().zip(&c.half).map(|(m, h)| fmt_ci(*m, *h))),
            )?;
            let band: Vec<(f64, f64, f64)> =
                c.xs.iter()
                    .zip(&c.mean)
                    .zip(&c.half)
                    .map(|((x, m), h)| (*x, m - h.unwrap_or(0.0), m + h.unwrap_or(0.0)))
                    .collect();
            plot = plot.series(
                crate::report::plot::Series::new(
                    format!("n+={np}"),
                    c.xs.iter().copied().zip(c.mean.iter().copied()).collect(),
                )
                .with_band(band),
            );
            if let Some(f) = first {
                let lost = first_step_loss(rows, &name, np, f, &base_of);
                let crossing = first_crossing(&c.xs, &c.mean, bci.mean);
                md.push_str(&format!(
                    "- n+={np}: alignment gain {:+.3}; share of it lost after the first {f} negatives: {}; negatives to fall back to the pre-trained level: {}\n",
                    c.mean.first().copied().unwrap_or(f64::NAN) - bci.mean,
                    mean_ci95(&lost).map(|ci| fmt_ci(ci.mean, ci.half_width)).unwrap_or_else(|| "n/a".into()),
                    crossing.map(|x| format!("{x:.0}")).unwrap_or_else(|| "not reached".into()),
                ));
                strengths.push((format!("{name} n+={np}"), lost));
            }
        }
        md.push_str("\n");
        md.push_str(&t.to_markdown());
        md.push('\n');
        run.plot(&format!("rebound_{name}"), &plot)?;
        md.push_str(&format!("![rebound {name}](rebound_{name}.png)\n\n"));
    }
    md.push_str("## The paper's claims, as measured here\n\n");
    md.push_str("Rebound strength = share of the alignment gain lost after the first n- step (per seed; mean ± 95% CI). The curves are not assumed to plateau at the pre-trained level.\n\n");
    // Pooled over n+ and seeds for one base.
    let strength = |label: &str| -> Option<crate::report::stats::MeanCi> {
        let v: Vec<f64> = strengths
            .iter()
            .filter(|(l, _)| l.starts_with(label))
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        mean_ci95(&v)
    };
    let mut claims = Vec::new();
    let tiny: Vec<&BaseSpec> = cfg.bases.iter().filter(|b| b.size == "tiny").collect();
    if tiny.len() >= 2 {
        let (lo, hi) = (tiny[0], tiny[tiny.len() - 1]);
        if let (Some(a), Some(b)) = (
            strength(&format!("{} ", lo.name())),
            strength(&format!("{} ", hi.name())),
        ) {
            claims.push(format!(
                "- More pre-training, stronger rebound: {} tokens {} vs {} tokens {} -> {}",
                lo.tokens,
                fmt_ci(a.mean, a.half_width),
                hi.tokens,
                fmt_ci(b.mean, b.half_width),
                verdict(&a, &b)
            ));
        }
    }
    let big = cfg.bases.iter().find(|b| b.size != "tiny");
    let small = big.and_then(|g| {
        cfg.bases
            .iter()
            .find(|b| b.size == "tiny" && b.tokens == g.tokens)
    });
    if let (Some(big), Some(small)) = (big, small) {
        if let (Some(a), Some(b)) = (
            strength(&format!("{} ", small.name())),
            strength(&format!("{} ", big.name())),
        ) {
            claims.push(format!(
                "- Larger model, stronger rebound: {} {} vs {} {} -> {}",
                small.size,
                fmt_ci(a.mean, a.half_width),
                big.size,
                fmt_ci(b.mean, b.half_width),
                verdict(&a, &b)
            ));
        }
    }
    if claims.is_empty() {
        claims.push(format!(
            "- No comparison could be made: a base model needed for it gained less than {MIN_GAIN} from alignment in every seed, so it had no gain to lose (align on more samples or pre-train more)."
        ));
    }
    for c in &claims {
        md.push_str(c);
        md.push('\n');
    }
    md.push_str("\nWhether an effect held is judged on the means; with few seeds the intervals are wide, and an overlap means the demo cannot tell.\n");
    run.write_text("report.md", &md)?;
    let mut summary = String::from("elastica demo summary\n");
    for c in &claims {
        summary.push_str(c);
        summary.push('\n');
    }
    summary.push_str(&format!("report: {}\n", run.path("report.md").display()));
    Ok(summary)
}

fn verdict(a: &crate::report::stats::MeanCi, b: &crate::report::stats::MeanCi) -> &'static str {
    let overlap = match (a.bounds(), b.bounds()) {
        (Some((_, ahi)), Some((blo, _))) => blo <= ahi,
        _ => true,
    };
    match (b.mean > a.mean, overlap) {
        (true, false) => "held (intervals separate)",
        (true, true) => "same direction as the paper, but the intervals overlap",
        (false, _) => "did not hold here",
    }
}
