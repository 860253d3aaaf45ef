//! The demo's rebound section: per base model, each measure against n- (one line per n+)
//! with the pre-trained value as reference; how much the exact measures narrow the
//! across-seed interval of the alignment gain compared with the sampled score; the rebound
//! strength (initial drop rate, n½, and the old share-of-gain ratio as a column only); the
//! positive controls; and the paper's two scaling claims judged as three-outcome verdicts.
//!
//! Every verdict is on per-seed values, paired by seed: a seed fixes the alignment and
//! perturbation data and their order for every base, so the per-seed difference removes
//! the data draw from the comparison. The effect is the mean difference with its Student-t
//! 95% CI and p-value; "held" / "reversed" / "undecided" say whether the CI excludes zero on
//! the predicted side, the other side, or neither.
//!
//! The strength is the initial drop rate, not a share of the alignment gain: the gain is as
//! small as a few hundredths for a weakly pre-trained model, and a ratio over it is noise.
//! The verdicts use the measure named by `rebound_measure` (default the likelihood margin:
//! exact, and an average over every token of the held-out reviews).

use super::config::{DemoConfig, REBOUND_MEASURES};
use super::rebound::ReboundRow;
use super::BaseScore;
use crate::experiments::rebound::report::rebound_strength;
use crate::report::stats::{first_crossing, linear_fit, mean, mean_ci95, Effect, MeanCi};
use crate::report::table::{fmt_ci, Table};
use crate::report::{LinePlot, RunDir};
use anyhow::{Context, Result};
use serde::Serialize;

/// What a measure is called in the report.
pub(super) fn label(measure: &str) -> &'static str {
    match measure {
        "margin" => "likelihood margin (nats/token)",
        "first_word" => "first-word P(positive)",
        _ => "sampled score P(positive)",
    }
}

/// Alignment gains (in score units) at or below this are treated as "alignment did not take"
/// for the old share-of-gain ratio (the rebound grid's formula, [`rebound_strength`]).
const MIN_GAIN: f64 = 0.05;

/// The rebound strength of one (base, n+, measure) over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Strength {
    pub base: String,
    pub n_plus: usize,
    pub measure: String,
    /// (seed, measure lost per 100 negatives over the first `drop_fit_points` of the grid).
    pub drop_rate: Vec<(u64, f64)>,
    pub drop_rate_ci: Option<MeanCi>,
    /// (seed, negatives needed to lose half the alignment gain) for the seeds that did.
    pub n_half: Vec<(u64, f64)>,
    pub n_half_ci: Option<MeanCi>,
    /// Seeds whose gain was positive (n½ is defined only for them).
    pub gained: usize,
}

/// The alignment gain's across-seed interval under one measure.
#[derive(Debug, Clone, Serialize)]
pub struct Precision {
    pub base: String,
    pub n_plus: usize,
    pub measure: String,
    pub gain: MeanCi,
    /// 95% CI half-width over |mean gain| (`None` without an interval).
    pub relative_half_width: Option<f64>,
}

/// One judged claim.
#[derive(Debug, Clone, Serialize)]
pub struct Claim {
    pub name: String,
    pub effect: Effect,
    pub text: String,
}

/// Everything the section computed, for `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub verdict_measure: String,
    pub strengths: Vec<Strength>,
    pub precision: Vec<Precision>,
    pub controls: Vec<Claim>,
    pub claims: Vec<Claim>,
}

pub(super) fn curve(
    rows: &[ReboundRow],
    base: &str,
    np: usize,
    n_minus: &[usize],
    m: &str,
) -> Vec<MeanCi> {
    n_minus
        .iter()
        .filter_map(|&nm| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|r| r.base == base && r.n_plus == np && r.n_minus == nm)
                .map(|r| r.measure(m))
                .collect();
            mean_ci95(&v)
        })
        .collect()
}

/// One seed's curve of measure `m`: (n-, value) in grid order.
pub(super) fn seed_curve(
    rows: &[ReboundRow],
    base: &str,
    np: usize,
    seed: u64,
    m: &str,
) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.base == base && r.n_plus == np && r.seed == seed)
        .map(|r| (r.n_minus as f64, r.measure(m)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

pub(super) fn seeds_of(rows: &[ReboundRow], base: &str) -> Vec<u64> {
    let mut s: Vec<u64> = rows
        .iter()
        .filter(|r| r.base == base)
        .map(|r| r.seed)
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

fn base_value(base_scores: &[BaseScore], base: &str, seed: u64, m: &str) -> Option<f64> {
    base_scores
        .iter()
        .find(|b| b.base == base && b.seed == seed)
        .map(|b| b.measure(m))
}

/// Drop rate and n½ of every (base, n+, measure).
pub(super) fn strengths(
    cfg: &DemoConfig,
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
) -> Vec<Strength> {
    let mut out = Vec::new();
    for base in &cfg.bases {
        let name = base.name();
        for &np in &cfg.n_plus {
            for m in REBOUND_MEASURES {
                let (mut drop, mut half, mut gained) = (Vec::new(), Vec::new(), 0);
                for seed in seeds_of(rows, &name) {
                    let c = seed_curve(rows, &name, np, seed, m);
                    let fit: Vec<(f64, f64)> =
                        c.iter().take(cfg.drop_fit_points).copied().collect();
                    let (xs, ys): (Vec<f64>, Vec<f64>) = fit.into_iter().unzip();
                    if let Ok(f) = linear_fit(&xs, &ys) {
                        drop.push((seed, -100.0 * f.slope));
                    }
                    let (Some(b), Some(&(_, y0))) =
                        (base_value(base_scores, &name, seed, m), c.first())
                    else {
                        continue;
                    };
                    if y0 > b {
                        gained += 1;
                        let (xs, ys): (Vec<f64>, Vec<f64>) = c.iter().copied().unzip();
                        if let Some(x) = first_crossing(&xs, &ys, y0 - (y0 - b) / 2.0) {
                            half.push((seed, x));
                        }
                    }
                }
                let v = |p: &[(u64, f64)]| p.iter().map(|x| x.1).collect::<Vec<f64>>();
                out.push(Strength {
                    base: name.clone(),
                    n_plus: np,
                    measure: m.to_string(),
                    drop_rate_ci: mean_ci95(&v(&drop)),
                    n_half_ci: mean_ci95(&v(&half)),
                    drop_rate: drop,
                    n_half: half,
                    gained,
                });
            }
        }
    }
    out
}

/// Per-seed alignment gain (n- = 0 minus the pre-trained model) of (base, n+) under `m`.
pub(super) fn gains(
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
    base: &str,
    np: usize,
    m: &str,
) -> Vec<(u64, f64)> {
    rows.iter()
        .filter(|r| r.base == base && r.n_plus == np && r.n_minus == 0)
        .filter_map(|r| {
            base_value(base_scores, base, r.seed, m).map(|b| (r.seed, r.measure(m) - b))
        })
        .collect()
}

/// Per seed, the mean over n+ of `f(n+, seed)` (seeds missing a value for some n+ are left
/// out, so every seed's number averages the same cells).
pub(super) fn per_seed(cfg: &DemoConfig, f: impl Fn(usize) -> Vec<(u64, f64)>) -> Vec<(u64, f64)> {
    let by_np: Vec<Vec<(u64, f64)>> = cfg.n_plus.iter().map(|&np| f(np)).collect();
    let mut seeds: Vec<u64> = by_np.iter().flatten().map(|x| x.0).collect();
    seeds.sort_unstable();
    seeds.dedup();
    seeds
        .into_iter()
        .filter_map(|s| {
            let v: Option<Vec<f64>> = by_np
                .iter()
                .map(|l| l.iter().find(|x| x.0 == s).map(|x| x.1))
                .collect();
            v.and_then(|v| mean(&v)).map(|m| (s, m))
        })
        .collect()
}

/// Paired by seed: `b - a` for the seeds both have.
pub(super) fn paired(a: &[(u64, f64)], b: &[(u64, f64)]) -> Vec<f64> {
    b.iter()
        .filter_map(|(s, y)| a.iter().find(|x| x.0 == *s).map(|x| y - x.1))
        .collect()
}

pub(super) fn claim(
    name: &str,
    what: &str,
    diffs: &[f64],
    predicted_positive: bool,
    digits: usize,
) -> Option<Claim> {
    let effect = Effect::of(diffs, predicted_positive)?;
    Some(Claim {
        name: name.to_string(),
        text: format!(
            "- {name} ({what}): {}{} -> {}",
            effect.describe(digits),
            effect.power_phrase("seed", digits),
            effect.verdict.word()
        ),
        effect,
    })
}

/// Write `results.csv` and the rebound plots; returns the section's Markdown, its claim
/// lines for the summary, and the analysis.
pub fn section(
    cfg: &DemoConfig,
    run: &RunDir,
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
) -> Result<(String, Vec<String>, Analysis)> {
    write_results_csv(run, rows)?;
    let vm = cfg.rebound_measure.as_str();
    let mut md = String::from("## Rebound\n\n");
    md.push_str(&format!(
        "Llama models ({}) pre-trained from scratch on the world (positive share {:.0}%), aligned by SFT on n+ positive reviews, then perturbed by SFT on n- negative reviews. Three measures of each model: the **sampled score** (the paper's measure: mean exact world-sentiment P(positive) of {} sampled continuations, temperature {}, of held-out review openings), and two exact ones without sampling noise: the **likelihood margin** (mean log-likelihood per token of {n} held-out positive reviews minus {n} held-out negative ones, nats) and the **first-word sentiment** (P(positive word) / P(any sentiment word of the lexicon) at the first sentiment-bearing word of held-out reviews). Mean ± 95% CI over {} seed(s). Each base is pre-trained once (seed {}), so a seed varies the alignment and perturbation data and their order and the sampling, not the pre-training run: the verdicts below generalise over those draws, for these pre-trained models; the pre-trained model's exact measures are the same in every seed.\n\n",
        sizes(cfg), cfg.positive_fraction * 100.0, cfg.eval_prompts, cfg.temperature, cfg.seeds.len(), cfg.seed, n = cfg.probe_records
    ));
    for base in &cfg.bases {
        md.push_str(&base_curves(cfg, run, rows, base_scores, base)?);
    }
    let (precision_md, precision) = precision_section(cfg, rows, base_scores)?;
    md.push_str(&precision_md);
    let strengths = strengths(cfg, rows, base_scores);
    md.push_str(&strength_section(cfg, rows, base_scores, &strengths)?);
    let controls = controls(cfg, rows, base_scores);
    md.push_str("### Positive controls\n\nEffects that hold by construction (SFT on positive reviews must make positive reviews likelier; SFT on negative ones must undo it). If a control is not \"held\", the measurement is broken or too noisy to judge anything else.\n\n");
    for c in &controls {
        md.push_str(&c.text);
        md.push('\n');
    }
    md.push('\n');
    let claims = scaling_claims(cfg, &strengths);
    md.push_str("### The paper's scaling claims\n\n");
    if claims.is_empty() {
        md.push_str("- No scaling comparison is possible with these bases.\n");
    }
    for c in &claims {
        md.push_str(&c.text);
        md.push('\n');
    }
    md.push_str("\nEach verdict: held = the 95% CI of the paired effect excludes zero in the paper's direction; reversed = it excludes zero in the other direction; undecided = it includes zero (the demo cannot tell at this number of seeds). p is the two-sided paired t test; the exact sign-flip permutation p over seeds is in results.json. For an undecided verdict the line also gives what the seeds could resolve (two-sided 5% t test, 80% power): the across-seed SD of the per-seed values, the seeds an effect of the observed size would need, and the smallest effect detectable at the seeds run.\n\n");
    let lines: Vec<String> = controls
        .iter()
        .chain(&claims)
        .map(|c| c.text.clone())
        .collect();
    Ok((
        md,
        lines,
        Analysis {
            verdict_measure: vm.to_string(),
            strengths,
            precision,
            controls,
            claims,
        },
    ))
}

/// The smallest per-seed alignment gain of the sampled score over every (base, n+).
fn smallest_score_gain(
    cfg: &DemoConfig,
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
) -> Option<f64> {
    cfg.bases
        .iter()
        .flat_map(|b| {
            cfg.n_plus
                .iter()
                .flat_map(move |&np| gains(rows, base_scores, &b.name(), np, "score"))
        })
        .map(|x| x.1)
        .min_by(f64::total_cmp)
}

/// The model sizes of the bases, in order of first appearance: "tiny and small".
fn sizes(cfg: &DemoConfig) -> String {
    let mut v: Vec<&str> = Vec::new();
    for b in &cfg.bases {
        if !v.contains(&b.size.as_str()) {
            v.push(&b.size);
        }
    }
    v.join(" and ")
}

/// `results.csv`: one line per rebound grid point.
fn write_results_csv(run: &RunDir, rows: &[ReboundRow]) -> Result<()> {
    let mut csv = Table::from_rows_fixed(
        rows,
        &[
            ("score", 4),
            ("score_ci", 4),
            ("margin", 5),
            ("first_word", 5),
        ],
    )?;
    csv.rename_column("score_ci", "score_ci95")?;
    run.write_table_csv("results.csv", &csv)?;
    Ok(())
}

/// One base's subsection: its pre-trained measures, the curves of every measure against n-
/// (a table and one plot per measure).
fn base_curves(
    cfg: &DemoConfig,
    run: &RunDir,
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
    base: &super::BaseSpec,
) -> Result<String> {
    let vm = cfg.rebound_measure.as_str();
    let n_minus = &cfg.n_minus;
    let mut md = String::new();
    let name = base.name();
    let pre = |m: &str| {
        let v: Vec<f64> = base_scores
            .iter()
            .filter(|b| b.base == name)
            .map(|b| b.measure(m))
            .collect();
        mean_ci95(&v)
    };
    let score_ci = pre("score").context("no base score")?;
    md.push_str(&format!(
        "### {name}: {} model, {} pre-training tokens\n\nPre-trained score: {}; margin {}; first-word {} (the exact measures are one number: the same model in every seed)\n\n",
        base.size,
        base.tokens,
        fmt_ci(score_ci.mean, score_ci.half_width),
        pre("margin").map(|c| format!("{:.4}", c.mean)).unwrap_or_default(),
        pre("first_word").map(|c| format!("{:.4}", c.mean)).unwrap_or_default(),
    ));
    let mut t = Table::new(
        ["measure".to_string(), "n+".to_string()]
            .into_iter()
            .chain(n_minus.iter().map(|n| format!("n-={n}"))),
    );
    for m in REBOUND_MEASURES {
        let mut plot = LinePlot::new(format!("Rebound, {name}"), "negative samples n-", label(m));
        if let Some(p) = pre(m) {
            plot = plot.reference(p.mean, "pre-trained model");
        }
        for &np in &cfg.n_plus {
            let c = curve(rows, &name, np, n_minus, m);
            t.push_row(
                [m.to_string(), np.to_string()]
                    .into_iter()
                    .chain(c.iter().map(|ci| fmt_ci(ci.mean, ci.half_width))),
            )?;
            let xs: Vec<f64> = n_minus.iter().take(c.len()).map(|&n| n as f64).collect();
            let band: Vec<(f64, f64, f64)> = xs
                .iter()
                .zip(&c)
                .map(|(x, ci)| {
                    let h = ci.half_width.unwrap_or(0.0);
                    (*x, ci.mean - h, ci.mean + h)
                })
                .collect();
            plot = plot.series(
                crate::report::plot::Series::new(
                    format!("n+={np}"),
                    xs.iter().copied().zip(c.iter().map(|ci| ci.mean)).collect(),
                )
                .with_band(band),
            );
        }
        // The sampled score keeps its old file name; the exact measures get a suffix.
        let file = if *m == "score" {
            format!("rebound_{name}")
        } else {
            format!("rebound_{name}_{m}")
        };
        run.plot(&file, &plot)?;
    }
    md.push('\n');
    md.push_str(&t.to_markdown());
    md.push_str(&format!(
        "\n![rebound {name}](rebound_{name}.png) ![{vm}](rebound_{name}_{vm}.png)\n\n"
    ));
    Ok(md)
}

/// How much the exact measures narrow the across-seed interval of the alignment gain.
fn precision_section(
    cfg: &DemoConfig,
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
) -> Result<(String, Vec<Precision>)> {
    let mut md = String::new();
    let mut precision = Vec::new();
    let mut pt = Table::new([
        "base",
        "n+",
        "measure",
        "alignment gain (mean ± 95% CI)",
        "CI half-width / |gain|",
        "interval vs the sampled score",
    ]);
    for base in &cfg.bases {
        let name = base.name();
        for &np in &cfg.n_plus {
            let mut score_rel = None;
            for m in ["score", "first_word", "margin"] {
                let g: Vec<f64> = gains(rows, base_scores, &name, np, m)
                    .iter()
                    .map(|x| x.1)
                    .collect();
                let Some(ci) = mean_ci95(&g) else { continue };
                let rel = ci.half_width.map(|h| h / ci.mean.abs());
                if m == "score" {
                    score_rel = rel;
                }
                let shrink = match (score_rel, rel) {
                    (Some(s), Some(r)) if m != "score" && r > 0.0 => {
                        format!("{:.1}x narrower", s / r)
                    }
                    _ => "-".into(),
                };
                pt.push_row([
                    name.clone(),
                    np.to_string(),
                    m.to_string(),
                    fmt_ci(ci.mean, ci.half_width),
                    rel.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into()),
                    shrink,
                ])?;
                precision.push(Precision {
                    base: name.clone(),
                    n_plus: np,
                    measure: m.to_string(),
                    gain: ci,
                    relative_half_width: rel,
                });
            }
        }
    }
    md.push_str("### Precision of the measures\n\nThe alignment gain (n- = 0 minus the pre-trained model, per seed) under each measure, and its 95% CI half-width relative to the gain: the smaller, the fewer seeds a claim needs. \"Narrower\" compares that relative width with the sampled score's.\n\n");
    md.push_str(&pt.to_markdown());
    md.push('\n');

    Ok((md, precision))
}

/// The rebound-strength table of every (base, n+, measure).
fn strength_section(
    cfg: &DemoConfig,
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
    strengths: &[Strength],
) -> Result<String> {
    let vm = cfg.rebound_measure.as_str();
    let n_minus = &cfg.n_minus;
    let mut md = String::new();
    let mut st = Table::new([
        "base",
        "n+",
        "measure",
        "drop rate per 100 negatives",
        "n½ (negatives to lose half the gain)",
        "share of gain lost at the first step (old ratio)",
    ]);
    let first = n_minus.iter().copied().find(|&n| n > 0);
    for s in strengths {
        let old = if s.measure == "score" {
            first
                .map(|f| old_ratio(rows, base_scores, &s.base, s.n_plus, f))
                .and_then(|v| mean_ci95(&v))
                .map(|c| fmt_ci(c.mean, c.half_width))
                .unwrap_or_else(|| "n/a".into())
        } else {
            "-".into()
        };
        st.push_row([
            s.base.clone(),
            s.n_plus.to_string(),
            s.measure.clone(),
            s.drop_rate_ci
                .map(|c| fmt_ci(c.mean, c.half_width))
                .unwrap_or_else(|| "n/a".into()),
            format!(
                "{} ({} of {} seeds reached it)",
                s.n_half_ci
                    .map(|c| fmt_ci(c.mean, c.half_width))
                    .unwrap_or_else(|| "n/a".into()),
                s.n_half.len(),
                s.gained
            ),
            old,
        ])?;
    }
    md.push_str(&format!(
        "### Rebound strength\n\nThe verdicts use the **initial drop rate** of the {}: per seed, minus the least-squares slope of the measure against n- over the first {} points of the grid (n- = 0 included), in measure units per 100 negatives. It is well conditioned (no division) and it is where the paper's effect lives (the fast first drop). n½ (negatives needed to lose half the alignment gain, interpolated; only seeds with a positive gain that fell that far) is shown beside it; it divides by nothing either, but it is censored when the curve does not fall far enough within the grid, so it does not drive verdicts. The old ratio (share of the sampled gain lost at the first step) divides by the sampled gain (per seed; the smallest here {}; seeds with a gain at or below {MIN_GAIN} are left out) and stays only as a column.\n\n",
        label(vm), cfg.drop_fit_points, smallest_score_gain(cfg, rows, base_scores).map(|g| format!("{g:.3}")).unwrap_or_else(|| "n/a".into())
    ));
    md.push_str(&st.to_markdown());
    md.push('\n');

    Ok(md)
}

/// Positive controls: known by construction, so a broken measurement shows here.
fn controls(cfg: &DemoConfig, rows: &[ReboundRow], base_scores: &[BaseScore]) -> Vec<Claim> {
    let vm = cfg.rebound_measure.as_str();
    let n_minus = &cfg.n_minus;
    let mut controls = Vec::new();
    let last = n_minus.last().copied().unwrap_or(0);
    for base in &cfg.bases {
        let name = base.name();
        let g = per_seed(cfg, |np| gains(rows, base_scores, &name, np, vm));
        let v: Vec<f64> = g.iter().map(|x| x.1).collect();
        if let Some(c) = claim(
            &format!("Control: alignment on positive reviews raises the {vm} of {name}"),
            "aligned minus pre-trained, per seed",
            &v,
            true,
            3,
        ) {
            controls.push(c);
        }
        if last > 0 {
            let d = per_seed(cfg, |np| {
                seeds_of(rows, &name)
                    .into_iter()
                    .filter_map(|seed| {
                        let c = seed_curve(rows, &name, np, seed, vm);
                        Some((seed, c.last()?.1 - c.first()?.1))
                    })
                    .collect()
            });
            let v: Vec<f64> = d.iter().map(|x| x.1).collect();
            if let Some(c) = claim(
                &format!("Control: {last} negatives lower the {vm} of aligned {name}"),
                &format!("n- = {last} minus n- = 0, per seed"),
                &v,
                false,
                3,
            ) {
                controls.push(c);
            }
        }
    }
    controls
}

/// The per-seed drop rates of the verdict measure of `base`, averaged over n+.
pub(super) fn drop_rates(cfg: &DemoConfig, strengths: &[Strength], base: &str) -> Vec<(u64, f64)> {
    per_seed_of(cfg, strengths, base, |s| &s.drop_rate)
}

/// Per seed, the negatives that undid half the alignment gain of the verdict measure on
/// `base`, averaged over n+ (seeds that reached it at every n+).
pub(super) fn half_lives(cfg: &DemoConfig, strengths: &[Strength], base: &str) -> Vec<(u64, f64)> {
    per_seed_of(cfg, strengths, base, |s| &s.n_half)
}

/// One per-seed field of the verdict measure's strengths on `base`, averaged over n+.
fn per_seed_of(
    cfg: &DemoConfig,
    strengths: &[Strength],
    base: &str,
    field: fn(&Strength) -> &Vec<(u64, f64)>,
) -> Vec<(u64, f64)> {
    let vm = cfg.rebound_measure.as_str();
    per_seed(cfg, |np| {
        strengths
            .iter()
            .find(|s| s.base == base && s.n_plus == np && s.measure == vm)
            .map(|s| field(s).clone())
            .unwrap_or_default()
    })
}

/// The paper's scaling claims on the drop rate of the verdict measure, paired by seed.
fn scaling_claims(cfg: &DemoConfig, strengths: &[Strength]) -> Vec<Claim> {
    let vm = cfg.rebound_measure.as_str();
    let strength_of = |base: &str| drop_rates(cfg, strengths, base);

    let mut claims = Vec::new();
    let mut tiny: Vec<&super::BaseSpec> = cfg.bases.iter().filter(|b| b.size == "tiny").collect();
    tiny.sort_by_key(|b| b.tokens);
    if tiny.len() >= 2 {
        let (lo, hi) = (tiny[0], tiny[tiny.len() - 1]);
        let d = paired(&strength_of(&lo.name()), &strength_of(&hi.name()));
        claims.extend(claim(
            "More pre-training, stronger rebound",
            &format!(
                "drop rate of the {vm} per 100 negatives, {} minus {}, paired by seed",
                hi.name(),
                lo.name()
            ),
            &d,
            true,
            3,
        ));
    }
    if tiny.len() >= 3 {
        // The trend over every budget: per seed, the slope of the drop rate against ln(tokens).
        let per: Vec<Vec<(u64, f64)>> = tiny.iter().map(|b| strength_of(&b.name())).collect();
        let seeds: Vec<u64> = per[0].iter().map(|x| x.0).collect();
        let slopes: Vec<f64> = seeds
            .iter()
            .filter_map(|s| {
                let pts: Option<Vec<(f64, f64)>> = tiny
                    .iter()
                    .zip(&per)
                    .map(|(b, p)| {
                        p.iter()
                            .find(|x| x.0 == *s)
                            .map(|x| ((b.tokens as f64).ln(), x.1))
                    })
                    .collect();
                let (xs, ys): (Vec<f64>, Vec<f64>) = pts?.into_iter().unzip();
                linear_fit(&xs, &ys).ok().map(|f| f.slope)
            })
            .collect();
        claims.extend(claim(
            "More pre-training, stronger rebound, trend over all tiny budgets",
            &format!(
                "slope of the drop rate against ln(pre-training tokens), per seed, {} budgets",
                tiny.len()
            ),
            &slopes,
            true,
            3,
        ));
    }
    let big = cfg.bases.iter().find(|b| b.size != "tiny");
    let small = big.and_then(|g| {
        cfg.bases
            .iter()
            .find(|b| b.size == "tiny" && b.tokens == g.tokens)
    });
    if let (Some(big), Some(small)) = (big, small) {
        let d = paired(&strength_of(&small.name()), &strength_of(&big.name()));
        claims.extend(claim(
            "Larger model, stronger rebound",
            &format!(
                "drop rate of the {vm} per 100 negatives, {} minus {}, paired by seed",
                big.name(),
                small.name()
            ),
            &d,
            true,
            3,
        ));
    }
    claims
}

/// The old strength, kept as a column: per seed, the share of the sampled alignment gain
/// lost after the first n- step (seeds with a gain below `MIN_GAIN` left out).
fn old_ratio(
    rows: &[ReboundRow],
    base_scores: &[BaseScore],
    base: &str,
    np: usize,
    first: usize,
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
        let Some(b) = base_value(base_scores, base, r0.seed, "score") else {
            continue;
        };
        out.extend(rebound_strength(1.0, b, r0.score, r1.score, MIN_GAIN));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats::Verdict;

    fn row(base: &str, seed: u64, nm: usize, v: f64) -> ReboundRow {
        ReboundRow {
            base: base.into(),
            size: "tiny".into(),
            pretrain_tokens: 0,
            n_plus: 100,
            n_minus: nm,
            seed,
            score: v,
            score_ci: None,
            margin: v,
            first_word: v,
        }
    }

    /// A planted effect: the 60k base drops faster than the 20k one in every seed, so "more
    /// pre-training, stronger rebound" must be held; swapped, reversed; equal up to
    /// seed-to-seed noise, undecided. The controls hold in every case.
    #[test]
    fn planted_rebound_difference_is_found() {
        let cfg = DemoConfig::quick(1);
        let names: Vec<String> = cfg.bases.iter().map(|b| b.name()).collect();
        // Per-seed drop per negative of each base.
        let rate = |base: usize, planted: (f64, f64), seed: u64| {
            let alt = if seed.is_multiple_of(2) { 1e-3 } else { -1e-3 };
            match base {
                0 => planted.0 + seed as f64 * 1e-4,
                _ => planted.1 + seed as f64 * 1e-4 + alt,
            }
        };
        let build = |planted: (f64, f64)| {
            let mut rows = Vec::new();
            let mut bases = Vec::new();
            for seed in 1..=5u64 {
                for (i, name) in names.iter().enumerate() {
                    bases.push(BaseScore {
                        base: name.clone(),
                        seed,
                        score: 0.2,
                        margin: 0.2,
                        first_word: 0.2,
                    });
                    for &nm in &cfg.n_minus {
                        rows.push(row(
                            name,
                            seed,
                            nm,
                            0.9 - rate(i, planted, seed) * nm as f64,
                        ));
                    }
                }
            }
            (rows, bases)
        };
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let verdict = |planted: (f64, f64)| {
            let (rows, bases) = build(planted);
            let (_, _, a) = section(&cfg, &run, &rows, &bases).unwrap();
            for c in &a.controls {
                assert_eq!(c.effect.verdict, Verdict::Held, "{}", c.text);
            }
            a.claims[0].effect.verdict
        };
        assert_eq!(verdict((0.002, 0.006)), Verdict::Held);
        assert_eq!(verdict((0.006, 0.002)), Verdict::Reversed);
        assert_eq!(verdict((0.004, 0.004)), Verdict::Undecided);
        // The strength is per 100 negatives and n½ is interpolated: gain 0.7, half at 0.55.
        let planted = (0.002, 0.01);
        let (rows, bases) = build(planted);
        let s = strengths(&cfg, &rows, &bases);
        let lo = s
            .iter()
            .find(|s| s.base == names[0] && s.measure == "margin")
            .unwrap();
        assert!(
            (lo.drop_rate[0].1 - 100.0 * rate(0, planted, 1)).abs() < 1e-9,
            "{lo:?}"
        );
        assert!(
            lo.n_half.is_empty(),
            "0.9 - 0.0021 * 60 never falls to 0.55"
        );
        let hi = s
            .iter()
            .find(|s| s.base == names[1] && s.measure == "margin")
            .unwrap();
        assert!(
            (hi.n_half[0].1 - 0.35 / rate(1, planted, 1)).abs() < 1e-9,
            "{hi:?}"
        );
        assert_eq!((hi.n_half.len(), hi.gained), (5, 5));
    }
}
