//! The rebound report: read the finished cells back, aggregate over seeds, and write
//! `results.csv` / `results.jsonl` (one row per evaluated model and seed), `summary.json`,
//! `report.md` (score and KL tables, the Table-3 analogue, rebound strength), `tables.tex`,
//! and the plots `score_vs_negatives` and `kl_vs_negatives` (PNG and SVG; one line per n+,
//! a band for the 95% CI over seeds, the base model's level as a reference line).
//!
//! Definitions (the report repeats them):
//! - the **aligned score** a(s) = s when the scorer's higher is aligned, else -s, so that
//!   alignment always raises it;
//! - **alignment gain** G = a(S(n+, 0)) - a(S_base): what positive fine-tuning bought;
//! - **rebound strength** R = [a(S(n+, 0)) - a(S(n+, n1))] / G, with n1 the first n- > 0 of
//!   the grid: the fraction of the alignment gain lost to the first n1 negative samples
//!   (R = 1: all of it; R > 1: below the base level). Computed per seed (against the same
//!   seed's base evaluation), then averaged with a 95% CI; undefined when G <= 0;
//! - **negatives to return to base**: the n- where the seed-mean aligned score first reaches
//!   the base level, by linear interpolation over the n- grid;
//! - **Table 3**: KL(model || base) after alignment (n- = 0), and the n- where the seed-mean
//!   KL first falls under epsilon, by linear interpolation (`report::stats::first_crossing`).
//!
//! Missing cells (failed or not run) are listed; every aggregate uses the seeds available.
//! The instruments beyond score and KL (capability, coherence, refusals, KL by position,
//! weight space) are aggregated and reported by `super::instruments`.

use super::cells::EvalOutput;
use super::config::ReboundConfig;
use super::curves::{self, ci};
use super::data::FrozenData;
use super::outputs::Outputs;
use super::plan::ResolvedModel;
use crate::grid::rundir::Grid;
use crate::report::stats::{first_crossing, mean_ci95, MeanCi};
use crate::report::{fmt_sig, RunDir, Table};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// One row of results.csv / results.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub model: String,
    /// `base` (pre-trained), `aligned` (n- = 0) or `perturbed` (n- > 0).
    pub stage: String,
    pub n_positive: usize,
    pub n_negative: usize,
    pub seed: u64,
    /// Mean score over the evaluation prompts.
    pub score: f64,
    /// 95% CI of the mean score over prompts.
    pub score_ci_low: Option<f64>,
    pub score_ci_high: Option<f64>,
    /// Mean per-token KL(model || base) over all response tokens.
    pub kl: f64,
    /// 95% CI over prompts of the per-prompt mean KL.
    pub kl_ci_low: Option<f64>,
    pub kl_ci_high: Option<f64>,
    pub prompts: usize,
    pub mean_response_tokens: f64,
    pub eos_fraction: f64,
    /// Final training loss of the n- stage (perturbed rows).
    pub train_loss: Option<f64>,
    /// The instruments of `super::instruments` (absent when not measured).
    #[serde(default)]
    pub kl_to_aligned: Option<f64>,
    #[serde(default)]
    pub coherence_nll: Option<f64>,
    #[serde(default)]
    pub capability_nll: Option<f64>,
    #[serde(default)]
    pub refusal_rate: Option<f64>,
    #[serde(default)]
    pub weight_fraction_undone: Option<f64>,
    #[serde(default)]
    pub weight_cosine: Option<f64>,
    #[serde(default)]
    pub weight_norm_ratio: Option<f64>,
}

/// Score and KL of one (n+, n-) cell over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreKl {
    pub score: Option<MeanCi>,
    pub kl: Option<MeanCi>,
}

/// One point of a rebound curve: a (n+, n-) cell aggregated over seeds.
pub type Point = curves::Point<ScoreKl>;

/// Score and KL against n- for one n+.
pub type Curve = curves::Curve<ScoreKl>;

/// A row of the Table-3 analogue.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table3Row {
    pub n_positive: usize,
    /// KL(model || base) after alignment (n- = 0), over seeds.
    pub kl_aligned: Option<MeanCi>,
    /// Negatives needed to bring the seed-mean KL under epsilon; `None` when not reached
    /// within the grid (or no data).
    pub negatives_to_epsilon: Option<f64>,
}

/// Rebound strength of one n+.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrengthRow {
    pub n_positive: usize,
    /// The first n- > 0 of the grid.
    pub first_step: Option<usize>,
    /// Alignment gain G over seeds (in aligned-score units).
    pub gain: Option<MeanCi>,
    /// Rebound strength R over seeds (seeds with G <= 0 are left out).
    pub strength: Option<MeanCi>,
    /// Seeds of the grid (R comes from `strength.n` of them).
    pub seeds: usize,
    /// Negatives where the seed-mean aligned score first reaches the base level.
    pub negatives_to_base: Option<f64>,
}

/// Everything measured for one base model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelAnalysis {
    pub name: String,
    pub x: Option<f64>,
    pub params: usize,
    /// The pre-trained model's score over seeds.
    pub base: Option<MeanCi>,
    pub curves: Vec<Curve>,
    pub table3: Vec<Table3Row>,
    pub strength: Vec<StrengthRow>,
}

/// The whole analysis (`summary.json`, without the rows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    #[serde(skip)]
    pub rows: Vec<ResultRow>,
    pub models: Vec<ModelAnalysis>,
    pub scorer: Option<String>,
    pub higher_is_aligned: bool,
    pub kl_epsilon: f64,
    /// Cells whose results are missing (failed or not run).
    pub missing: Vec<String>,
    /// Capability, coherence, refusals, KL by position, weight space; one per model.
    pub instruments: Vec<super::instruments::ModelInstruments>,
}

/// Read every finished evaluation cell and aggregate.
pub fn analyze(cfg: &ReboundConfig, grid: &Grid, models: &[ResolvedModel]) -> Result<Analysis> {
    let (outputs, missing) = Outputs::read(grid)?;
    let any = outputs.any();
    let scorer = any.map(|o| o.eval.scorer.clone());
    let higher_is_aligned = any.is_none_or(|o| o.eval.higher_is_aligned);
    let sign = if higher_is_aligned { 1.0 } else { -1.0 };
    let mut rows = Vec::new();
    let analyses = models
        .iter()
        .map(|m| analyze_model(cfg, &outputs, m, sign, &mut rows))
        .collect();
    let instruments = super::instruments::analyze(cfg, &outputs, models);
    Ok(Analysis {
        instruments,
        rows,
        models: analyses,
        scorer,
        higher_is_aligned,
        kl_epsilon: cfg.kl_epsilon,
        missing,
    })
}

/// The finished evaluations of one base model, its pre-trained ones by seed.
struct ModelCells<'a> {
    outputs: &'a Outputs,
    model: &'a str,
    base: HashMap<u64, &'a EvalOutput>,
}

impl<'a> ModelCells<'a> {
    fn perturbed(&self, np: usize, nn: usize, seed: u64) -> Option<&'a EvalOutput> {
        self.outputs.perturbed(self.model, np, nn, seed)
    }
}

/// One base model's curves, Table-3 rows and rebound strengths; its result rows are
/// appended to `rows` (base first, then by n+, n-, seed).
fn analyze_model(
    cfg: &ReboundConfig,
    outputs: &Outputs,
    m: &ResolvedModel,
    sign: f64,
    rows: &mut Vec<ResultRow>,
) -> ModelAnalysis {
    let bases: Vec<(u64, &EvalOutput)> = cfg
        .seeds
        .iter()
        .filter_map(|&s| outputs.base(&m.name, s).map(|o| (s, o)))
        .collect();
    rows.extend(bases.iter().map(|(_, o)| row(&m.name, "base", o)));
    let base_scores: Vec<f64> = bases.iter().map(|(_, o)| o.eval.score.mean).collect();
    let base = mean_ci95(&base_scores);
    let cells = ModelCells {
        outputs,
        model: &m.name,
        base: bases.into_iter().collect(),
    };
    let mut curves = Vec::new();
    let mut table3 = Vec::new();
    let mut strength = Vec::new();
    for &np in &cfg.n_positive {
        let points: Vec<Point> = cfg
            .n_negative
            .iter()
            .map(|&nn| {
                let outs = outputs.perturbed_over_seeds(&m.name, np, nn, &cfg.seeds);
                let stage = if nn == 0 { "aligned" } else { "perturbed" };
                rows.extend(outs.iter().map(|o| row(&m.name, stage, o)));
                let of = |f: fn(&EvalOutput) -> f64| outs.iter().map(|o| f(o)).collect::<Vec<_>>();
                Point {
                    n_negative: nn,
                    at: ScoreKl {
                        score: mean_ci95(&of(|o| o.eval.score.mean)),
                        kl: mean_ci95(&of(|o| o.eval.kl)),
                    },
                }
            })
            .collect();
        table3.push(table3_row(np, &points, cfg.kl_epsilon));
        strength.push(strength_row(cfg, &cells, np, &points, base, sign));
        curves.push(Curve {
            n_positive: np,
            points,
        });
    }
    ModelAnalysis {
        name: m.name.clone(),
        x: m.x,
        params: m.params,
        base,
        curves,
        table3,
        strength,
    }
}

/// Table 3: KL after alignment, and where the seed-mean KL falls under epsilon.
fn table3_row(np: usize, points: &[Point], epsilon: f64) -> Table3Row {
    let kl_curve: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.at.kl.map(|k| (p.n_negative as f64, k.mean)))
        .collect();
    let kl_aligned = points.first().and_then(|p| p.at.kl);
    let negatives_to_epsilon = if kl_aligned.is_some() {
        negatives_for_kl(&kl_curve, epsilon)
    } else {
        None
    };
    Table3Row {
        n_positive: np,
        kl_aligned,
        negatives_to_epsilon,
    }
}

/// Rebound strength of one n+, per seed against that seed's base, and where the seed-mean
/// aligned score returns to the base level.
fn strength_row(
    cfg: &ReboundConfig,
    cells: &ModelCells,
    np: usize,
    points: &[Point],
    base: Option<MeanCi>,
    sign: f64,
) -> StrengthRow {
    let first_step = cfg.n_negative.iter().copied().find(|&n| n > 0);
    let mut gains = Vec::new();
    let mut ratios = Vec::new();
    for &s in &cfg.seeds {
        let (Some(a0), Some(b)) = (cells.perturbed(np, 0, s), cells.base.get(&s)) else {
            continue;
        };
        gains.push(sign * (a0.eval.score.mean - b.eval.score.mean));
        if let Some(a1) = first_step.and_then(|n1| cells.perturbed(np, n1, s)) {
            ratios.extend(rebound_strength(
                sign,
                b.eval.score.mean,
                a0.eval.score.mean,
                a1.eval.score.mean,
                0.0,
            ));
        }
    }
    let aligned_curve: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.at.score.map(|c| (p.n_negative as f64, sign * c.mean)))
        .collect();
    let negatives_to_base = match (base, aligned_curve.first()) {
        (Some(b), Some(&(_, a0))) if a0 > sign * b.mean => crossing(&aligned_curve, sign * b.mean),
        _ => None,
    };
    StrengthRow {
        n_positive: np,
        first_step,
        gain: mean_ci95(&gains),
        strength: mean_ci95(&ratios),
        seeds: cfg.seeds.len(),
        negatives_to_base,
    }
}

/// Rebound strength of one seed: the fraction of the alignment gain (aligned score over
/// base) lost after the first negative step; `sign` is -1 when higher scores are
/// misaligned. `None` when the gain is not above `min_gain` (0 = any gain; a ratio over a
/// gain near zero is noise, so the demo's old-ratio column asks for more). The one
/// formula: the rebound report and the demo both call it.
pub fn rebound_strength(
    sign: f64,
    base: f64,
    aligned: f64,
    after_first: f64,
    min_gain: f64,
) -> Option<f64> {
    let gain = sign * (aligned - base);
    if gain > min_gain {
        Some(sign * (aligned - after_first) / gain)
    } else {
        None
    }
}

/// Table 3: the n- where the KL curve `(n-, KL)` (n- ascending, starting at 0) first falls
/// to `epsilon`, by linear interpolation; 0 when the aligned model is already under it;
/// `None` when the grid never gets there.
pub fn negatives_for_kl(curve: &[(f64, f64)], epsilon: f64) -> Option<f64> {
    match curve.first() {
        None => None,
        Some(&(x0, k0)) if k0 <= epsilon => Some(x0),
        Some(_) => crossing(curve, epsilon),
    }
}

fn crossing(curve: &[(f64, f64)], level: f64) -> Option<f64> {
    let xs: Vec<f64> = curve.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = curve.iter().map(|p| p.1).collect();
    first_crossing(&xs, &ys, level)
}

fn row(model: &str, stage: &str, o: &EvalOutput) -> ResultRow {
    let s = o.eval.score.bounds();
    let k = o.eval.kl_per_prompt.and_then(|k| k.bounds());
    let i = super::instruments::scalars(o);
    ResultRow {
        model: model.to_string(),
        stage: stage.to_string(),
        n_positive: o.n_positive,
        n_negative: o.n_negative,
        seed: o.seed,
        score: o.eval.score.mean,
        score_ci_low: s.map(|b| b.0),
        score_ci_high: s.map(|b| b.1),
        kl: o.eval.kl,
        kl_ci_low: k.map(|b| b.0),
        kl_ci_high: k.map(|b| b.1),
        prompts: o.eval.prompts,
        mean_response_tokens: o.eval.mean_response_tokens,
        eos_fraction: o.eval.eos_fraction,
        train_loss: o.train.as_ref().and_then(|t| t.final_loss),
        kl_to_aligned: i.kl_to_aligned,
        coherence_nll: i.coherence_nll,
        capability_nll: i.capability_nll,
        refusal_rate: i.refusal_rate,
        weight_fraction_undone: i.fraction_undone,
        weight_cosine: i.cosine,
        weight_norm_ratio: i.norm_ratio,
    }
}

/// The rows as a table (results.csv).
pub fn rows_table(rows: &[ResultRow]) -> Result<Table> {
    Table::from_rows(rows)
}

/// Score (or KL) against n-: rows n-, one column per n+.
fn curve_table(m: &ModelAnalysis, kl: bool) -> Result<Table> {
    curves::table(&m.curves, None, |p| if kl { p.kl } else { p.score })
}

fn table3(m: &ModelAnalysis, eps: f64, max_neg: usize) -> Result<Table> {
    let mut t = Table::new([
        "n+".to_string(),
        "KL after alignment".to_string(),
        format!("negatives for KL < {}", fmt_sig(eps, 3)),
    ]);
    for r in &m.table3 {
        let need = match (r.negatives_to_epsilon, r.kl_aligned) {
            (Some(n), _) => format!("{n:.0}"),
            (None, Some(_)) => format!("> {max_neg} (not reached)"),
            (None, None) => "—".to_string(),
        };
        t.push_row([r.n_positive.to_string(), ci(r.kl_aligned), need])?;
    }
    Ok(t)
}

/// The score axis: the scorer and which way is aligned (a cost model's lower is better).
fn score_axis(a: &Analysis) -> String {
    let scorer = a.scorer.as_deref().unwrap_or("score");
    let better = if a.higher_is_aligned {
        "higher is better"
    } else {
        "lower is better"
    };
    format!("mean score ({scorer}; {better})")
}

/// R as a table shows it: mean ± 95% CI (an interval needs two seeds) and how many of the
/// grid's seeds it comes from, always: a mean of 1 of 2 seeds reads very differently.
pub fn strength_cell(r: &StrengthRow) -> String {
    let k = r.strength.map_or(0, |c| c.n);
    let seeds = if r.seeds == 1 { "seed" } else { "seeds" };
    format!("{} ({k} of {} {seeds})", ci(r.strength), r.seeds)
}

fn strength_table(m: &ModelAnalysis, max_neg: usize) -> Result<Table> {
    let mut t = Table::new([
        "n+",
        "alignment gain G",
        "rebound strength R",
        "negatives to return to base",
    ]);
    for r in &m.strength {
        let back = match (r.negatives_to_base, r.gain) {
            (Some(n), _) => format!("{n:.0}"),
            (None, Some(g)) if g.mean > 0.0 => format!("> {max_neg} (not reached)"),
            (None, Some(_)) => "n/a (mean gain ≤ 0)".to_string(),
            (None, None) => "—".to_string(),
        };
        t.push_row([r.n_positive.to_string(), ci(r.gain), strength_cell(r), back])?;
    }
    Ok(t)
}

/// Plots of score and KL against n- for one model.
fn plots(run: &RunDir, m: &ModelAnalysis, suffix: &str, a: &Analysis) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let of = if suffix.is_empty() {
        String::new()
    } else {
        format!(" ({})", m.name)
    };
    for kl in [false, true] {
        let (stem, title, ylab) = if kl {
            (
                format!("kl_vs_negatives{suffix}"),
                format!("KL to the base model vs negative samples{of}"),
                "KL(model || base) per token".to_string(),
            )
        } else {
            (
                format!("score_vs_negatives{suffix}"),
                format!("Rebound: score vs negative samples{of}"),
                score_axis(a),
            )
        };
        let pick = |p: &ScoreKl| if kl { p.kl } else { p.score };
        let Some(plot) = curves::plot(title, ylab, &m.curves, pick) else {
            continue;
        };
        let plot = if kl {
            plot.reference(a.kl_epsilon, format!("ε = {}", fmt_sig(a.kl_epsilon, 3)))
        } else {
            match m.base {
                Some(b) => plot.reference(b.mean, "pre-trained model"),
                None => plot,
            }
        };
        let (png, svg) = run.plot(&stem, &plot)?;
        out.push(png);
        out.push(svg);
    }
    Ok(out)
}

/// Write every report file into the run directory; `extra` is appended to report.md (the
/// scaling section). Returns the paths written.
pub fn write(
    run: &RunDir,
    cfg: &ReboundConfig,
    a: &Analysis,
    data: Option<&FrozenData>,
    title: &str,
    extra: &str,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![
        run.write_jsonl("results.jsonl", &a.rows)?,
        run.write_table_csv("results.csv", &rows_table(&a.rows)?)?,
        run.write_json("summary.json", a)?,
    ];
    let max_neg = cfg.max_negative();
    let several = a.models.len() > 1;
    let mut md = format!("# {title}\n\n");
    md += &setup_section(cfg, a, data);
    let mut tex = String::new();
    for m in &a.models {
        // An underscore, not a dot: the plot writer replaces the extension.
        let suffix = if several {
            format!("_{}", m.name)
        } else {
            String::new()
        };
        if several {
            md += &format!("\n## Model {}\n", m.name);
        }
        let h = if several { "###" } else { "##" };
        md += &format!(
            "\n{h} Score vs n−\n\nPre-trained model: {}.\n\n{}",
            ci(m.base),
            curve_table(m, false)?.to_markdown()
        );
        md += &format!(
            "\n{h} KL(model ‖ base) vs n−\n\n{}",
            curve_table(m, true)?.to_markdown()
        );
        md += &format!(
            "\n{h} Table 3 analogue\n\n{}",
            table3(m, cfg.kl_epsilon, max_neg)?.to_markdown()
        );
        md += &format!(
            "\n{h} Rebound strength\n\n{}",
            strength_table(m, max_neg)?.to_markdown()
        );
        if let Some(ins) = a.instruments.iter().find(|x| x.name == m.name) {
            let (section, files) = super::instruments::section(run, ins, &suffix, h, several)?;
            md += &section;
            written.extend(files);
        }
        let files = plots(run, m, &suffix, a)?;
        if !files.is_empty() {
            md += &format!(
                "\n![score vs n−](score_vs_negatives{suffix}.png)\n![KL vs n−](kl_vs_negatives{suffix}.png)\n"
            );
        }
        written.extend(files);
        tex += &format!(
            "% {} — score vs n-\n{}\n% {} — Table 3 analogue\n{}\n% {} — rebound strength\n{}\n",
            m.name,
            curve_table(m, false)?.to_latex(),
            m.name,
            table3(m, cfg.kl_epsilon, max_neg)?.to_latex(),
            m.name,
            strength_table(m, max_neg)?.to_latex()
        );
    }
    md += extra;
    md += &instrument_files(run, cfg, a, &mut written)?;
    if !a.missing.is_empty() {
        md += &format!(
            "\n## Missing cells\n\n{} cell(s) have no result (failed or not run; see \
             status.json and cells/<id>/error.txt): {}\n",
            a.missing.len(),
            a.missing.join(", ")
        );
    }
    written.push(run.write_text("report.md", &md)?);
    written.push(run.write_text("tables.tex", &tex)?);
    Ok(written)
}

/// The instruments' CSV files and the refusal keyword list (report.md's tail).
fn instrument_files(
    run: &RunDir,
    cfg: &ReboundConfig,
    a: &Analysis,
    written: &mut Vec<PathBuf>,
) -> Result<String> {
    use super::instruments::{groups_table, positions_table};
    let mut md = String::new();
    let pos = positions_table(&a.instruments)?;
    if !pos.rows.is_empty() {
        written.push(run.write_table_csv("kl_by_position.csv", &pos)?);
    }
    let groups = groups_table(&a.instruments)?;
    if !groups.rows.is_empty() {
        written.push(run.write_table_csv("weight_space.csv", &groups)?);
    }
    if a.instruments.iter().any(|m| m.refusal_keywords.is_some()) {
        let list = match &cfg.measures.refusal_keywords {
            Some(p) => crate::score::keywords::KeywordScorer::from_file(p)?,
            None => crate::score::keywords::KeywordScorer::builtin(),
        };
        md += &format!(
            "\n## Refusal keyword list ({})\n\nA response refuses when it contains one of these \
             phrases (case-insensitive, curly apostrophes read as straight):\n\n{}\n",
            list.version(),
            list.phrases()
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(md)
}

fn setup_section(cfg: &ReboundConfig, a: &Analysis, data: Option<&FrozenData>) -> String {
    let models: Vec<String> = cfg
        .models
        .iter()
        .map(|m| format!("`{}` ({})", m.name, m.path))
        .collect();
    let list = |v: &[usize]| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let orient = if a.higher_is_aligned {
        "higher is aligned"
    } else {
        "higher is misaligned, so the aligned score is the negated score"
    };
    let mut s = format!(
        "## Setup\n\n\
         - base model(s): {}\n\
         - n+ = {{{}}}, n− = {{{}}}, seeds = {:?}\n\
         - positive data: {} (schema {}), negative data: {} (schema {})\n\
         - training: lr {}, effective batch {}, {} epoch(s), template {}\n\
         - generation: temperature {}, top-p {}, up to {} new tokens, {} prompts\n\
         - scorer: {} ({orient})\n",
        models.join(", "),
        list(&cfg.n_positive),
        list(&cfg.n_negative),
        cfg.seeds,
        cfg.positive.path,
        cfg.positive.schema,
        cfg.negative.path,
        cfg.negative.schema,
        cfg.train.lr,
        cfg.train.batch_size * cfg.train.grad_accum,
        cfg.train.epochs,
        serde_json::to_value(cfg.train.template)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        cfg.generation.temperature,
        cfg.generation.top_p,
        cfg.generation.max_new_tokens,
        cfg.eval.n,
        a.scorer.as_deref().unwrap_or("?"),
    );
    s += &format!("- alignment: {}\n", cfg.align.describe());
    s += &format!(
        "- align stage: {}; perturb stage: {}{}\n",
        crate::experiments::align::AlignSpec::describe_lora(&cfg.align.lora),
        crate::experiments::align::AlignSpec::describe_lora(&cfg.perturb.stage_lora(&cfg.align)),
        match (cfg.align.lora.enabled(), cfg.perturb.from) {
            (false, _) => "",
            (true, super::config::PerturbFrom::Merged) => {
                ", starting from the aligned model with its adapter merged"
            }
            (true, super::config::PerturbFrom::Adapter) => ", continuing the align stage's adapter",
        }
    );
    if cfg.uses_lora() && cfg.measures.weight_space {
        s += &format!(
            "- weight-space elasticity: on the merged weights (W + s·B·A for every adapted \
             projection): aligned = {}; perturbed = {}\n",
            if cfg.align.lora.enabled() {
                "the base with the align stage's adapter"
            } else {
                "the aligned checkpoint"
            },
            match (
                cfg.perturb.stage_lora(&cfg.align).enabled(),
                cfg.perturb.from
            ) {
                (false, _) => "the perturbed checkpoint",
                (true, super::config::PerturbFrom::Adapter) => {
                    "the base with the continued adapter"
                }
                (true, super::config::PerturbFrom::Merged) => {
                    "the aligned weights with the perturbation's adapter"
                }
            }
        );
    }
    if let Some(d) = data {
        for src in &d.sources {
            s += &format!("- {src}\n");
        }
    }
    s += "\n## Definitions\n\n\
          - Score: the scorer's mean over the evaluation prompts of one sampled response \
          each; tables show the mean over seeds ± the 95% CI over seeds (no ± with one seed).\n\
          - KL: mean per-token KL(model ‖ base), exact over the vocabulary, at every position \
          of the model's own responses.\n\
          - Aligned score a: the score, negated when the scorer's higher is misaligned.\n\
          - Alignment gain G = a(n+, n− = 0) − a(base).\n\
          - Rebound strength R = [a(n+, 0) − a(n+, n1)] / G with n1 the first n− > 0: the \
          fraction of the alignment gain lost to the first n1 negative samples (1 = all of \
          it; above 1 = below the pre-trained level), per seed, then mean ± 95% CI over the \
          seeds with G > 0 whose cells finished (\"k of n seeds\": k of the grid's n).\n\
          - Negatives to return to base: where the seed-mean aligned score first reaches \
          the base level (linear interpolation over n−).\n\
          - Table 3: KL after alignment (n− = 0), and the n− where the seed-mean KL first \
          falls under ε (linear interpolation).\n";
    s += super::instruments::DEFINITIONS;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(model: &str, np: usize, nn: usize, seed: u64, score: f64) -> EvalOutput {
        serde_json::from_value(serde_json::json!({
            "model": model, "n_positive": np, "n_negative": nn, "seed": seed, "train": null,
            "eval": {
                "prompts": 1, "scorer": "keywords", "higher_is_aligned": true,
                "score": mean_ci95(&[score]).unwrap(), "kl": 0.0, "kl_positions": 0,
                "mean_response_tokens": 1.0, "eos_fraction": 1.0,
            },
        }))
        .unwrap()
    }

    #[test]
    fn outputs_are_found_by_their_own_fields() {
        let mut o = Outputs::default();
        o.insert_base(output("a", 0, 0, 1, 0.1));
        // n+ = 0, n- = 0 after "alignment" on nothing is not the base evaluation.
        o.insert_perturbed(output("a", 0, 0, 1, 0.2));
        o.insert_perturbed(output("a", 4, 2, 1, 0.3));
        o.insert_perturbed(output("b", 4, 2, 1, 0.4));
        let score = |x: Option<&EvalOutput>| x.map(|x| x.eval.score.mean);
        assert_eq!(score(o.base("a", 1)), Some(0.1));
        assert_eq!(score(o.perturbed("a", 0, 0, 1)), Some(0.2));
        assert_eq!(score(o.perturbed("a", 4, 2, 1)), Some(0.3));
        assert_eq!(score(o.perturbed("b", 4, 2, 1)), Some(0.4));
        assert_eq!(score(o.base("b", 1)), None);
        assert_eq!(score(o.perturbed("a", 4, 2, 2)), None);
    }

    #[test]
    fn table3_interpolates_the_kl_crossing() {
        // KL falls 0.21 -> 0.005 over n- = 0..1000; it crosses 0.01 between 500 (0.03) and
        // 1000 (0.005): 500 + 500 * (0.03 - 0.01) / (0.03 - 0.005) = 900.
        let curve = [
            (0.0, 0.21),
            (100.0, 0.15),
            (200.0, 0.09),
            (500.0, 0.03),
            (1000.0, 0.005),
        ];
        let n = negatives_for_kl(&curve, 0.01).unwrap();
        assert!((n - 900.0).abs() < 1e-9, "{n}");
        // Exactly on a grid point.
        assert_eq!(negatives_for_kl(&curve, 0.03), Some(500.0));
        // Already under epsilon after alignment, and never reached.
        assert_eq!(
            negatives_for_kl(&[(0.0, 0.004), (100.0, 0.002)], 0.01),
            Some(0.0)
        );
        assert_eq!(negatives_for_kl(&[(0.0, 0.3), (100.0, 0.2)], 0.01), None);
        assert_eq!(negatives_for_kl(&[], 0.01), None);
    }

    #[test]
    fn rebound_strength_by_hand_in_both_orientations() {
        // Sentiment (higher aligned): base 0.5, aligned 0.9, after n1 0.7: half the gain lost.
        assert!((rebound_strength(1.0, 0.5, 0.9, 0.7, 0.0).unwrap() - 0.5).abs() < 1e-12);
        // Below the base level: more than all of it.
        assert!((rebound_strength(1.0, 0.5, 0.9, 0.3, 0.0).unwrap() - 1.5).abs() < 1e-12);
        // Cost (higher misaligned): base cost 2, aligned 0, after n1 1.
        assert!((rebound_strength(-1.0, 2.0, 0.0, 1.0, 0.0).unwrap() - 0.5).abs() < 1e-12);
        // No alignment gain: undefined.
        assert_eq!(rebound_strength(1.0, 0.5, 0.4, 0.3, 0.0), None);
        assert_eq!(rebound_strength(-1.0, 1.0, 1.5, 2.0, 0.0), None);
        // A gain at or under `min_gain` is too small to divide by.
        assert_eq!(rebound_strength(1.0, 0.5, 0.53, 0.4, 0.05), None);
        assert!((rebound_strength(1.0, 0.5, 0.6, 0.55, 0.05).unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_score_axis_says_which_way_is_better() {
        let mut a = Analysis {
            rows: vec![],
            models: vec![],
            scorer: Some("cost-model".into()),
            higher_is_aligned: false,
            kl_epsilon: 0.01,
            missing: vec![],
            instruments: vec![],
        };
        assert_eq!(score_axis(&a), "mean score (cost-model; lower is better)");
        a.higher_is_aligned = true;
        a.scorer = Some("classifier".into());
        assert_eq!(score_axis(&a), "mean score (classifier; higher is better)");
    }

    #[test]
    fn strength_always_says_how_many_seeds() {
        // The row: one of two seeds gained, the mean gain is negative.
        let row = |gains: &[f64], rs: &[f64]| StrengthRow {
            n_positive: 16,
            first_step: Some(4),
            gain: mean_ci95(gains),
            strength: mean_ci95(rs),
            seeds: 2,
            negatives_to_base: None,
        };
        let m = ModelAnalysis {
            name: "base".into(),
            x: None,
            params: 0,
            base: None,
            curves: vec![],
            table3: vec![],
            strength: vec![
                row(&[0.02, -0.1], &[-53.46]),
                row(&[0.2, 0.3], &[0.5, 0.7]),
                row(&[-0.2, -0.1], &[]),
                row(&[0.2, 0.1], &[-0.3, 0.29]),
            ],
        };
        let t = strength_table(&m, 8).unwrap();
        assert_eq!(t.rows[0][2], "-53.46 (1 of 2 seeds)");
        assert_eq!(t.rows[0][3], "n/a (mean gain ≤ 0)");
        assert!(t.rows[1][2].contains(" ± ") && t.rows[1][2].ends_with("(2 of 2 seeds)"));
        assert_eq!(t.rows[2][2], "— (0 of 2 seeds)");
        // A mean of -0.005 at this precision is zero, printed without a sign.
        assert_eq!(t.rows[3][2], "0.0 ± 3.7 (2 of 2 seeds)");
    }
}
