//! `elastica demo`: the paper's whole pipeline on the synthetic world, from scratch, in
//! minutes on a CPU. World -> tokenizer -> pre-training (several budgets, two model sizes)
//! -> rebound grid (alignment SFT on n+ positive reviews, perturbation SFT on n- negative
//! reviews; the sampled score and two exact measures) with the compression rates of D_p,
//! D_a and D_t tracked through every perturbation -> the compression ablation (`--full`)
//! -> resistance (forward vs inverse alignment) -> the exact token-tree simulation of the
//! theorem -> one report, every claim a three-outcome verdict (held / reversed /
//! undecided) with its effect size, 95% CI and p-value over seeds.
//!
//! - [`config`]: the presets (default, `--quick`, `--full`).
//! - [`measures`]: the exact measures (likelihood margin, first-word sentiment).
//! - [`rebound`]: the resumable (base, seed) units of the rebound grid and the ablation.
//! - [`rebound_report`]: the rebound section, the controls and the two scaling claims.
//! - [`elasticity`]: the compression section (the theorem on trained models).
//! - [`sections`]: the resistance and theory sections, run through their own commands' code.
//!
//! Run directory: `report.md`, `results.json` (every section's numbers; identical on a rerun
//! with the same seed), `results.csv/jsonl` (rebound cells), `rates.csv/jsonl` (tracked
//! compression rates), `elasticity.csv`, plots (PNG and SVG), `world.json`, `world/`,
//! `models/` (the pre-trained bases), `cells/`, `resist/`, `theory/`.

pub mod config;
pub mod elasticity;
pub mod measures;
pub mod rebound;
pub mod rebound_report;
pub mod sections;

pub use config::{BaseSpec, DemoConfig};
pub use rebound::CellResult;

use super::pretrain::{pretrain, take_tokens, PretrainConfig};
use crate::data::world::{Task, World, WorldConfig};
use crate::model::TextTokenizer;
use crate::report::table::Table;
use crate::report::RunDir;
use crate::util::parallel::run_graph;
use anyhow::{Context, Result};
use rebound::{run_unit, DemoData, RatePoint};
use serde::Serialize;
use std::path::Path;

/// Extra pre-training text generated past the largest budget: the held-out D_p sample, and
/// per negative of the n- grid room for the ablation's pre-training-distributed D_t.
const HELD_OUT_TOKENS: usize = 8_000;
const HELD_OUT_TOKENS_PER_NEGATIVE: usize = 80;

/// Each (base, seed) pre-trained model's measures.
#[derive(Debug, Clone, Serialize)]
pub struct BaseScore {
    pub base: String,
    pub seed: u64,
    pub score: f64,
    pub margin: f64,
    pub first_word: f64,
}

impl BaseScore {
    pub fn measure(&self, name: &str) -> f64 {
        match name {
            "margin" => self.margin,
            "first_word" => self.first_word,
            _ => self.score,
        }
    }
}

/// Everything the demo measured, as `results.json`.
#[derive(Serialize)]
struct DemoResults<'a> {
    config: &'a DemoConfig,
    /// The measures of each pre-trained model (per rebound seed: the score samples with it).
    base_scores: &'a [BaseScore],
    /// Exact pre-training tokens per base.
    pretrain_tokens: &'a [(String, usize)],
    rebound: &'a [CellResult],
    rates: &'a [RatePoint],
    elasticity: &'a elasticity::ElasticitySummary,
    rebound_analysis: &'a rebound_report::Analysis,
    /// The compression ablation's tracked rates (`base` = the arm's name) and slopes.
    ablation_rates: &'a [RatePoint],
    ablation: Option<&'a elasticity::ElasticitySummary>,
    resistance: Option<&'a crate::experiments::resist::results::ResistResults>,
    theory: Option<serde_json::Value>,
}

/// A job of the demo's graph.
enum Job {
    /// Pre-train base `.0` (index into the bases).
    Pretrain(usize),
    /// The rebound unit of base `.0` (index into the bases) and seed `.1`.
    Unit(usize, u64),
    /// Ablation arm `.1` on base `.0` with seed `.2`.
    Ablation(usize, usize, u64),
    Resist,
}

enum Done {
    Pretrained(()),
    Unit(rebound::UnitOutcome),
    Ablation(rebound::AblationOutcome),
    Resist(
        Box<(
            String,
            String,
            crate::experiments::resist::results::ResistResults,
        )>,
    ),
}

fn world_config(cfg: &DemoConfig) -> WorldConfig {
    let max_tokens = cfg.bases.iter().map(|b| b.tokens).max().unwrap_or(0);
    WorldConfig {
        seed: cfg.seed,
        // Sequence-token budget plus slack (records are whole, so cuts land below it) plus
        // the held-out pre-training sample.
        pretrain_tokens: (max_tokens
            + max_tokens / 20
            + 1000
            + HELD_OUT_TOKENS
            + HELD_OUT_TOKENS_PER_NEGATIVE * cfg.n_minus.iter().copied().max().unwrap_or(0))
            as u64,
        positive_fraction: cfg.positive_fraction,
        n_align: cfg.positives_needed(),
        n_perturb: cfg.n_minus.iter().copied().max().unwrap_or(0).max(1),
        n_eval: cfg.eval_prompts,
        ..WorldConfig::default()
    }
}

/// Run the demo into `out` with `workers` parallel single-threaded jobs; returns the printed
/// summary. Finished stages on disk (world,
/// pre-trained models, rebound units, resistance cells) are reused, so a killed demo resumes.
pub fn run(cfg: &DemoConfig, out: &Path, workers: usize) -> Result<String> {
    let started = std::time::Instant::now();
    cfg.validate_settings()?;
    let run = RunDir::create(out)?;
    let world_dir = out.join("world");
    let wcfg = world_config(cfg);
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
    let tok = TextTokenizer::from_dir(&world_dir, &[], None)?;
    let scorer = crate::score::world::by_name("world-sentiment")?;
    let prompts: Vec<String> = world
        .eval_prompts(Task::Reviews)
        .iter()
        .take(cfg.eval_prompts)
        .cloned()
        .collect();
    let max_tokens = cfg.bases.iter().map(|b| b.tokens).max().unwrap_or(0);
    let (seen_by_any, _) = take_tokens(&world, &tok, max_tokens)?;
    let held_out = &world.pretrain()[seen_by_any.len()..];
    let probes = measures::probes(&world, cfg.seed, cfg.probe_records)?;
    let data = DemoData {
        prompts: &prompts,
        align: world.align(Task::Reviews),
        perturb: world.perturb(Task::Reviews),
        held_out_pretrain: held_out,
        probes: &probes,
    };

    // Exact pre-training tokens of each base (the world is tokenized once per base, not once
    // per job).
    let pretrain_tokens: Vec<(String, usize)> = cfg
        .bases
        .iter()
        .map(|b| Ok((b.name(), take_tokens(&world, &tok, b.tokens)?.1)))
        .collect::<Result<_>>()?;
    // One job graph: pre-training of each base, then its rebound units, and the resistance
    // run on its base. A free worker takes the first ready job, so costly jobs come first.
    let resist_base = cfg
        .bases
        .iter()
        .position(|b| {
            b.size == "tiny"
                && Some(b.tokens)
                    == cfg
                        .bases
                        .iter()
                        .filter(|b| b.size == "tiny")
                        .map(|b| b.tokens)
                        .max()
        })
        .unwrap_or(0);
    let cost = |i: usize| size_cost(&cfg.bases[i].size);
    let mut order: Vec<usize> = (0..cfg.bases.len()).collect();
    order.sort_by(|&a, &b| {
        (cost(b) * cfg.bases[b].tokens as f64).total_cmp(&(cost(a) * cfg.bases[a].tokens as f64))
    });
    let mut jobs: Vec<Job> = order.iter().map(|&i| Job::Pretrain(i)).collect();
    let pretrain_job = |i: usize| order.iter().position(|&o| o == i).unwrap_or(0);
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); jobs.len()];
    let mut by_cost: Vec<usize> = (0..cfg.bases.len()).collect();
    by_cost.sort_by(|&a, &b| cost(b).total_cmp(&cost(a)));
    for &i in &by_cost {
        if cfg.resist_slice_records > 0 && i == resist_base {
            jobs.push(Job::Resist);
            deps.push(vec![pretrain_job(i)]);
        }
        if i == resist_base {
            for a in 0..cfg.ablation.len() {
                for &seed in &cfg.seeds {
                    jobs.push(Job::Ablation(i, a, seed));
                    deps.push(vec![pretrain_job(i)]);
                }
            }
        }
        for &seed in &cfg.seeds {
            jobs.push(Job::Unit(i, seed));
            deps.push(vec![pretrain_job(i)]);
        }
    }
    let pb = crate::util::progress::bar(jobs.len() as u64, "demo");
    let done = run_graph(jobs, deps, workers, |job, _| {
        let r = match job {
            Job::Pretrain(i) => {
                let base = &cfg.bases[i];
                Done::Pretrained(pretrain_base(cfg, base, &wcfg, &world_dir, out)?)
            }
            Job::Unit(i, seed) => {
                let base = &cfg.bases[i];
                let base_dir = out.join("models").join(base.name());
                let used = pretrain_tokens[i].1;
                let u = run_unit(
                    cfg,
                    base,
                    &base_dir,
                    used,
                    seed,
                    &data,
                    scorer.as_ref(),
                    out,
                )
                .with_context(|| format!("rebound unit {} seed {seed}", base.name()))?;
                Done::Unit(u)
            }
            Job::Ablation(i, a, seed) => {
                let base = &cfg.bases[i];
                let base_dir = out.join("models").join(base.name());
                let arm = &cfg.ablation[a];
                let u = rebound::run_ablation_unit(
                    cfg,
                    base,
                    &base_dir,
                    pretrain_tokens[i].1,
                    arm,
                    a,
                    seed,
                    &data,
                    out,
                )
                .with_context(|| format!("ablation arm {:?} seed {seed}", arm.name))?;
                Done::Ablation(u)
            }
            Job::Resist => {
                let base = &cfg.bases[resist_base];
                let base_dir = out.join("models").join(base.name());
                Done::Resist(Box::new(sections::resistance(
                    cfg,
                    &base_dir,
                    &base.name(),
                    &world_dir,
                    &out.join("resist"),
                )?))
            }
        };
        pb.inc(1);
        Ok(r)
    })?;
    pb.finish_and_clear();
    let mut rows: Vec<CellResult> = Vec::new();
    let mut rates: Vec<RatePoint> = Vec::new();
    let mut base_scores: Vec<BaseScore> = Vec::new();
    let mut ablation_rates: Vec<RatePoint> = Vec::new();
    let mut resist_out = None;
    for d in done {
        match d {
            Done::Unit(u) => {
                if let Some(r) = u.rows.first() {
                    base_scores.push(BaseScore {
                        base: r.base.clone(),
                        seed: r.seed,
                        score: u.base_score,
                        margin: u.base_exact.margin,
                        first_word: u.base_exact.first_word,
                    });
                }
                rows.extend(u.rows);
                rates.extend(u.rates);
            }
            Done::Ablation(u) => ablation_rates.extend(u.rates),
            Done::Resist(r) => resist_out = Some(*r),
            Done::Pretrained(()) => {}
        }
    }
    run.write_jsonl("results.jsonl", &rows)?;
    run.write_jsonl("rates.jsonl", &rates)?;
    run.write_table_csv("rates.csv", &rates_table(&rates)?)?;

    let mut md = String::from("# elastica demo: alignment elasticity in a synthetic world\n\n");
    md.push_str(&format!(
        "Everything below was computed from scratch by `elastica demo` (world seed {}): a synthetic review/dialogue world, Llama-family models pre-trained on it with exact token budgets, and the paper's experiments on them.\n\n",
        cfg.seed
    ));
    md.push_str(&settings_section(cfg, &pretrain_tokens));
    let (rebound_md, mut claims, rebound_analysis) =
        rebound_report::section(cfg, &run, &rows, &base_scores)?;
    md.push_str(&rebound_md);

    let el = elasticity::analyse(&rates, cfg.slope_l_max);
    run.write_table_csv("elasticity.csv", &el.table()?)?;
    md.push_str(&el.section(&run, &rates)?);
    claims.extend(el.claims());
    let ablation = if ablation_rates.is_empty() {
        None
    } else {
        run.write_jsonl("ablation_rates.jsonl", &ablation_rates)?;
        let ab = elasticity::analyse(&ablation_rates, cfg.slope_l_max);
        run.write_table_csv("ablation.csv", &ab.table()?)?;
        md.push_str(&ab.ablation_section(cfg)?);
        claims.extend(ab.ablation_claims());
        Some(ab)
    };

    let resistance = match resist_out {
        Some((res_md, res_claim, res)) => {
            md.push_str(&res_md);
            claims.push(res_claim);
            Some(res)
        }
        None => None,
    };

    let theory = if cfg.theory {
        let (th_md, th_claims, th) = sections::theory(&out.join("theory"))?;
        md.push_str(&th_md);
        claims.extend(th_claims);
        Some(th)
    } else {
        None
    };

    md.push_str("## Summary of the paper's claims, as measured here\n\n");
    for c in &claims {
        md.push_str(c);
        md.push('\n');
    }
    md.push_str(&format!(
        "\nTotal time {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    run.write_text("report.md", &md)?;
    run.write_json(
        "results.json",
        &DemoResults {
            config: cfg,
            base_scores: &base_scores,
            pretrain_tokens: &pretrain_tokens,
            rebound: &rows,
            rates: &rates,
            elasticity: &el,
            rebound_analysis: &rebound_analysis,
            ablation_rates: &ablation_rates,
            ablation: ablation.as_ref(),
            resistance: resistance.as_ref(),
            theory,
        },
    )?;
    let mut summary = String::from("elastica demo summary\n");
    for c in &claims {
        summary.push_str(c);
        summary.push('\n');
    }
    summary.push_str(&format!(
        "report: {} ({:.0} s)\n",
        run.path("report.md").display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(summary)
}

/// Every setting the run used, so a reader can repeat or question it.
fn settings_section(cfg: &DemoConfig, pretrain_tokens: &[(String, usize)]) -> String {
    let mut md = String::from(
        "## Settings

",
    );
    md.push_str(&format!(
        "- bases (size, requested / exact pre-training sequence tokens): {}
",
        cfg.bases
            .iter()
            .zip(pretrain_tokens)
            .map(|(b, (_, t))| format!("{} ({}, {} / {t})", b.name(), b.size, b.tokens))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str(&format!(
        "- pre-training: lr {}, batch {} records, world positive share {}
",
        cfg.pretrain_lr, cfg.pretrain_batch_size, cfg.positive_fraction
    ));
    md.push_str(&format!(
        "- rebound: n+ {:?}, n- {:?}, seeds {:?}; alignment and perturbation SFT lr {} (constant), batch {}, 1 epoch, no shuffling
",
        cfg.n_plus, cfg.n_minus, cfg.seeds, cfg.align_lr, cfg.batch_size
    ));
    md.push_str(&format!(
        "- sampled score: {} held-out openings, {} new tokens, temperature {}; exact measures on {} held-out reviews of each sentiment
",
        cfg.eval_prompts, cfg.max_new_tokens, cfg.temperature, cfg.probe_records
    ));
    md.push_str(&format!(
        "- rebound strength measured on `{}`; drop rate fitted on the first {} points of the n- grid
",
        cfg.rebound_measure, cfg.drop_fit_points
    ));
    md.push_str(&format!(
        "- compression: {} records per tracked set, slopes over l <= {}, rates also after each of the first {} perturbation step(s)
",
        cfg.rate_records, cfg.slope_l_max, cfg.rate_first_steps
    ));
    for a in &cfg.ablation {
        md.push_str(&format!(
            "- ablation arm \"{}\": perturbation lr {}, D_t = {}\n",
            a.name,
            a.lr,
            if a.perturb == "pretrain" {
                "held-out pre-training text"
            } else {
                "negative reviews"
            }
        ));
    }
    md.push_str(&format!(
        "- resistance: {} records per slice, {} prompts, seeds {:?}; theory: {}\n\n",
        cfg.resist_slice_records, cfg.resist_prompts, cfg.resist_seeds, cfg.theory
    ));
    md
}

/// Relative compute per token of a size preset (the demo's scheduling order only).
fn size_cost(size: &str) -> f64 {
    match size {
        "tiny" => 1.0,
        "small" => 4.0,
        _ => 16.0,
    }
}

/// Pre-train one base into `out/models/<name>` unless it is already there with these settings.
fn pretrain_base(
    cfg: &DemoConfig,
    base: &BaseSpec,
    wcfg: &WorldConfig,
    world_dir: &Path,
    out: &Path,
) -> Result<()> {
    let base_dir = out.join("models").join(base.name());
    let pc = PretrainConfig {
        size: base.size.clone(),
        tokens: base.tokens,
        seed: cfg.seed,
        lr: cfg.pretrain_lr,
        batch_size: cfg.pretrain_batch_size,
    };
    // A base is reused only if it was pre-trained with these settings on this world.
    let stamp = serde_json::to_string(&(&pc, wcfg))?;
    let stamp_path = base_dir.join("demo_pretrain.json");
    let same = std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str());
    if same && base_dir.join("model.safetensors").exists() {
        return Ok(());
    }
    // Checkpoints of other settings must not be resumed from; those of a killed run with the
    // same settings are (the stamp is written before training starts).
    if !same && base_dir.exists() {
        std::fs::remove_dir_all(&base_dir)
            .with_context(|| format!("cannot clear {}", base_dir.display()))?;
    }
    crate::util::fsx::atomic_write(&stamp_path, stamp.as_bytes())?;
    pretrain(world_dir, &pc, &base_dir, false)
        .with_context(|| format!("pre-training {}", base.name()))?;
    Ok(())
}

fn rates_table(rates: &[RatePoint]) -> Result<Table> {
    let mut t = Table::new([
        "base",
        "n_plus",
        "seed",
        "n_minus",
        "l",
        "k",
        "set",
        "bits_per_token",
    ]);
    for r in rates {
        t.push_row([
            r.base.clone(),
            r.n_plus.to_string(),
            r.seed.to_string(),
            r.n_minus.to_string(),
            format!("{:.5}", r.l),
            format!("{:.3}", r.k),
            r.set.clone(),
            format!("{:.5}", r.bits_per_token),
        ])?;
    }
    Ok(t)
}
