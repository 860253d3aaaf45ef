//! The demo's compression section: the elasticity theorem (PAPER.md §2) checked on real
//! trained models. While an aligned world model is perturbed on negative reviews, the
//! compression rates (bits per token) of D_p (held-out pre-training text, and separately its
//! reviews and its dialogue), D_a (the alignment pairs) and D_t (the perturbation pairs)
//! are measured at every n- of the grid and after each of the first optimizer steps.
//!
//! With l = |D_t|/|D_a| and k = |D_p|/|D_a| counted in sequence tokens, the theorem says
//! `d gamma(D_a)/dl = Theta(-k d gamma(D_p)/dl)` with `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl`.
//! We fit each derivative as the least-squares slope of the rate against l over the points
//! with l <= `slope_l_max` (the theorem is about l << 1; at least the first two points are
//! used), per seed, and also take the secant over the first step alone. The signs are
//! judged per (base, n+) as three-outcome verdicts over seeds; the k-scaling per seed, as
//! the slope of ln(|dγ(D_a)/dl| / |dγ(D_p)/dl|) against ln k across the (base, n+) rows.
//! The same analysis reads the compression ablation, whose rows are its arms.

use super::config::DemoConfig;
use super::rebound::RatePoint;
use crate::report::stats::{linear_fit, mean_ci95, Effect, MeanCi, Verdict};
use crate::report::table::{fmt_ci, fmt_sig, Table};
use crate::report::{LinePlot, RunDir, Series};
use anyhow::Result;
use serde::Serialize;

/// One seed's fitted slopes (bits per token per unit of l).
#[derive(Debug, Clone, Serialize)]
pub struct SeedSlopes {
    pub seed: u64,
    pub k: f64,
    pub align: f64,
    pub pretrain: f64,
    pub perturb: f64,
    pub pretrain_reviews: Option<f64>,
    pub pretrain_dialogue: Option<f64>,
    /// Secants over the first measured step (the smallest l > 0).
    pub first_step_align: Option<f64>,
    pub first_step_pretrain: Option<f64>,
}

/// The measured slopes of one (base, n+) over seeds.
#[derive(Debug, Clone, Serialize)]
pub struct ElasticityRow {
    pub base: String,
    pub n_plus: usize,
    /// k = |D_p| / |D_a| (mean over seeds; each seed draws its own D_a).
    pub k: f64,
    pub slope_align: MeanCi,
    pub slope_pretrain: MeanCi,
    pub slope_perturb: MeanCi,
    pub slope_pretrain_reviews: Option<MeanCi>,
    pub slope_pretrain_dialogue: Option<MeanCi>,
    pub first_step_align: Option<MeanCi>,
    pub first_step_pretrain: Option<MeanCi>,
    /// `d gamma(D_a)/dl / (-d gamma(D_p)/dl)` per seed, pooled.
    pub ratio: MeanCi,
    /// Seeds in which `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl`.
    pub signs_as_theorem: usize,
    pub seeds: usize,
    /// dγ(D_p)/dl < 0 over seeds (predicted negative).
    pub pretrain_sign: Option<Effect>,
    /// dγ(D_a)/dl > 0 over seeds (predicted positive).
    pub align_sign: Option<Effect>,
    pub pretrain_reviews_sign: Option<Effect>,
    pub pretrain_dialogue_sign: Option<Effect>,
    /// The first step's secant of D_p below zero (predicted negative).
    pub first_step_pretrain_sign: Option<Effect>,
    pub per_seed: Vec<SeedSlopes>,
}

/// What the section concluded.
#[derive(Debug, Clone, Serialize)]
pub struct ElasticitySummary {
    pub rows: Vec<ElasticityRow>,
    /// Slope of log(mean ratio) against log(k) over rows with a positive mean ratio (the
    /// theorem predicts a positive slope, about 1), when at least two distinct k exist.
    pub log_log_slope: Option<f64>,
    /// Pairs of rows ordered the same way by k and by ratio, out of all pairs with distinct k.
    pub concordant_pairs: (usize, usize),
    /// Per seed, the slope of ln(|dγ(D_a)/dl| / |dγ(D_p)/dl|) against ln k across rows
    /// (theorem: about 1); `None` with fewer than two distinct k.
    pub k_scaling: Option<Effect>,
}

fn slope(points: &[(f64, f64)], l_max: f64) -> Option<f64> {
    let mut used: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 <= l_max).collect();
    if used.len() < 2 {
        used = points.iter().take(2).copied().collect();
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = used.into_iter().unzip();
    linear_fit(&xs, &ys).ok().map(|f| f.slope)
}

/// The secant from l = 0 to the first point with l > 0.
fn first_step(points: &[(f64, f64)]) -> Option<f64> {
    let (l0, y0) = *points.first()?;
    let &(l1, y1) = points.iter().find(|p| p.0 > l0)?;
    Some((y1 - y0) / (l1 - l0))
}

/// Fit the slopes and ratios of every (base, n+) from the tracked rates.
pub fn analyse(rates: &[RatePoint], l_max: f64) -> ElasticitySummary {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for r in rates {
        if !groups.iter().any(|g| g.0 == r.base && g.1 == r.n_plus) {
            groups.push((r.base.clone(), r.n_plus));
        }
    }
    let mut rows = Vec::new();
    for (base, np) in groups {
        let per_seed = seed_slopes(rates, &base, np, l_max);
        let col = |f: &dyn Fn(&SeedSlopes) -> Option<f64>| -> Vec<f64> {
            per_seed.iter().filter_map(f).collect()
        };
        let sa = col(&|s| Some(s.align));
        let sp = col(&|s| Some(s.pretrain));
        let st = col(&|s| Some(s.perturb));
        let ratio = col(&|s| Some(s.align / -s.pretrain));
        let ks = col(&|s| Some(s.k));
        let reviews = col(&|s| s.pretrain_reviews);
        let dialogue = col(&|s| s.pretrain_dialogue);
        let signs = per_seed
            .iter()
            .filter(|s| s.pretrain < 0.0 && s.align > 0.0)
            .count();
        let (Some(slope_align), Some(slope_pretrain), Some(slope_perturb), Some(ratio_ci), Some(k)) = (
            mean_ci95(&sa),
            mean_ci95(&sp),
            mean_ci95(&st),
            mean_ci95(&ratio),
            mean_ci95(&ks),
        ) else {
            continue;
        };
        rows.push(ElasticityRow {
            base,
            n_plus: np,
            k: k.mean,
            slope_align,
            slope_pretrain,
            slope_perturb,
            slope_pretrain_reviews: mean_ci95(&reviews),
            slope_pretrain_dialogue: mean_ci95(&dialogue),
            first_step_align: mean_ci95(&col(&|s| s.first_step_align)),
            first_step_pretrain: mean_ci95(&col(&|s| s.first_step_pretrain)),
            ratio: ratio_ci,
            signs_as_theorem: signs,
            seeds: sa.len(),
            pretrain_sign: Effect::of(&sp, false),
            align_sign: Effect::of(&sa, true),
            pretrain_reviews_sign: Effect::of(&reviews, false),
            pretrain_dialogue_sign: Effect::of(&dialogue, false),
            first_step_pretrain_sign: Effect::of(&col(&|s| s.first_step_pretrain), false),
            per_seed,
        });
    }
    let positive: Vec<&ElasticityRow> = rows.iter().filter(|r| r.ratio.mean > 0.0).collect();
    let log_log_slope = {
        let xs: Vec<f64> = positive.iter().map(|r| r.k.ln()).collect();
        let ys: Vec<f64> = positive.iter().map(|r| r.ratio.mean.ln()).collect();
        linear_fit(&xs, &ys).ok().map(|f| f.slope)
    };
    let mut concordant = (0, 0);
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            if a.k != b.k {
                concordant.1 += 1;
                if (a.k < b.k) == (a.ratio.mean < b.ratio.mean) {
                    concordant.0 += 1;
                }
            }
        }
    }
    let k_scaling = k_scaling(&rows);
    ElasticitySummary {
        rows,
        log_log_slope,
        concordant_pairs: concordant,
        k_scaling,
    }
}

/// The slopes of every seed of (base, n+); seeds missing a set or a slope are left out.
fn seed_slopes(rates: &[RatePoint], base: &str, np: usize, l_max: f64) -> Vec<SeedSlopes> {
    let mut seeds: Vec<u64> = rates
        .iter()
        .filter(|r| r.base == base && r.n_plus == np)
        .map(|r| r.seed)
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    let mut per_seed = Vec::new();
    for &seed in &seeds {
        let curve = |set: &str| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = rates
                .iter()
                .filter(|r| r.base == base && r.n_plus == np && r.seed == seed && r.set == set)
                .map(|r| (r.l, r.bits_per_token))
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let (Some(a), Some(p), Some(t)) = (
            slope(&curve("D_a"), l_max),
            slope(&curve("D_p"), l_max),
            slope(&curve("D_t"), l_max),
        ) else {
            continue;
        };
        let Some(k) = rates
            .iter()
            .find(|r| r.base == base && r.n_plus == np && r.seed == seed)
            .map(|r| r.k)
        else {
            continue;
        };
        per_seed.push(SeedSlopes {
            seed,
            k,
            align: a,
            pretrain: p,
            perturb: t,
            pretrain_reviews: slope(&curve("D_p:reviews"), l_max),
            pretrain_dialogue: slope(&curve("D_p:dialogue"), l_max),
            first_step_align: first_step(&curve("D_a")),
            first_step_pretrain: first_step(&curve("D_p")),
        });
    }
    per_seed
}

/// Per seed: the slope of ln(|a| / |p|) against ln k over the rows; the effect over seeds.
fn k_scaling(rows: &[ElasticityRow]) -> Option<Effect> {
    let mut seeds: Vec<u64> = rows
        .iter()
        .flat_map(|r| r.per_seed.iter().map(|s| s.seed))
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    let slopes: Vec<f64> = seeds
        .iter()
        .filter_map(|&seed| {
            let (xs, ys): (Vec<f64>, Vec<f64>) = rows
                .iter()
                .filter_map(|r| r.per_seed.iter().find(|s| s.seed == seed))
                .filter(|s| s.align != 0.0 && s.pretrain != 0.0)
                .map(|s| (s.k.ln(), (s.align.abs() / s.pretrain.abs()).ln()))
                .unzip();
            linear_fit(&xs, &ys).ok().map(|f| f.slope)
        })
        .collect();
    Effect::of(&slopes, true)
}

fn ci_cell(c: &Option<MeanCi>) -> String {
    c.map(|c| fmt_ci(c.mean, c.half_width))
        .unwrap_or_else(|| "-".into())
}

fn verdict_cell(e: &Option<Effect>) -> String {
    e.map(|e| e.verdict.word().to_string())
        .unwrap_or_else(|| "-".into())
}

/// "held in a, reversed in b, undecided in c of n (base, n+) rows".
fn tally(effects: impl Iterator<Item = Option<Effect>>) -> (usize, usize, usize) {
    let mut t = (0, 0, 0);
    for e in effects.flatten() {
        match e.verdict {
            Verdict::Held => t.0 += 1,
            Verdict::Reversed => t.1 += 1,
            Verdict::Undecided => t.2 += 1,
        }
    }
    t
}

impl ElasticitySummary {
    pub fn table(&self) -> Result<Table> {
        let mut t = Table::new([
            "base",
            "n+",
            "k = |D_p|/|D_a|",
            "dγ(D_a)/dl",
            "dγ(D_p)/dl",
            "dγ(D_p reviews)/dl",
            "dγ(D_p dialogue)/dl",
            "dγ(D_t)/dl",
            "first step dγ(D_a)/dl",
            "first step dγ(D_p)/dl",
            "ratio dγ(D_a)/dl ÷ −dγ(D_p)/dl",
            "ratio / k",
            "signs as theorem (seeds)",
            "dγ(D_p)/dl < 0",
            "first step dγ(D_p)/dl < 0",
            "dγ(D_a)/dl > 0",
        ]);
        for r in &self.rows {
            t.push_row([
                r.base.clone(),
                r.n_plus.to_string(),
                fmt_sig(r.k, 3),
                fmt_ci(r.slope_align.mean, r.slope_align.half_width),
                fmt_ci(r.slope_pretrain.mean, r.slope_pretrain.half_width),
                ci_cell(&r.slope_pretrain_reviews),
                ci_cell(&r.slope_pretrain_dialogue),
                fmt_ci(r.slope_perturb.mean, r.slope_perturb.half_width),
                ci_cell(&r.first_step_align),
                ci_cell(&r.first_step_pretrain),
                fmt_ci(r.ratio.mean, r.ratio.half_width),
                fmt_sig(r.ratio.mean / r.k, 3),
                format!("{}/{}", r.signs_as_theorem, r.seeds),
                verdict_cell(&r.pretrain_sign),
                verdict_cell(&r.first_step_pretrain_sign),
                verdict_cell(&r.align_sign),
            ])?;
        }
        Ok(t)
    }

    /// The claims this section can make, one line each, stated either way.
    pub fn claims(&self) -> Vec<String> {
        let total: usize = self.rows.iter().map(|r| r.seeds).sum();
        if total == 0 {
            return vec![
                "- Compression: no rates were tracked (the n- grid has no point beyond 0).".into(),
            ];
        }
        let n = self.rows.len();
        let line = |what: &str, t: (usize, usize, usize)| {
            format!(
                "- Compression, {what} (per (base, n+), 95% CI over seeds): held in {} of {n}, reversed in {}, undecided in {} -> {}",
                t.0,
                t.1,
                t.2,
                overall(t, n)
            )
        };
        let mut out = vec![
            line(
                "dγ(D_p)/dl < 0",
                tally(self.rows.iter().map(|r| r.pretrain_sign)),
            ),
            line(
                "first-step dγ(D_p)/dl < 0 (the smallest l)",
                tally(self.rows.iter().map(|r| r.first_step_pretrain_sign)),
            ),
            line(
                "dγ(D_a)/dl > 0",
                tally(self.rows.iter().map(|r| r.align_sign)),
            ),
        ];
        let reviews = tally(self.rows.iter().map(|r| r.pretrain_reviews_sign));
        let dialogue = tally(self.rows.iter().map(|r| r.pretrain_dialogue_sign));
        if reviews.0 + reviews.1 + reviews.2 > 0 {
            out.push(format!(
                "- Compression, D_p split: dγ(D_p reviews)/dl < 0 held in {} of {n} (reversed {}); dγ(D_p dialogue)/dl < 0 held in {} of {n} (reversed {})",
                reviews.0, reviews.1, dialogue.0, dialogue.1
            ));
        }
        match &self.k_scaling {
            None => out.push(
                "- Compression, |dγ(D_a)/dl| / |dγ(D_p)/dl| grows with k: not testable (one k value only)".into(),
            ),
            Some(e) => out.push(format!(
                "- Compression, |dγ(D_a)/dl| / |dγ(D_p)/dl| grows with k (per seed, slope of its log against ln k; theorem: about 1): {}{} -> {}",
                e.describe(2),
                e.power_phrase("seed", 2),
                e.verdict.word()
            )),
        }
        out
    }

    /// Markdown section, plus the plots written into `run`.
    /// `ablation_ran`: whether this run has the ablation section (else `--full` has it).
    pub fn section(&self, run: &RunDir, rates: &[RatePoint], ablation_ran: bool) -> Result<String> {
        let mut md = String::from("## Compression: the elasticity theorem on trained models\n\n");
        md.push_str(
            "While each aligned model is perturbed, the compression rate γ (bits per token, exact code length of the model) of three sets is measured at every n- and after each of the first steps: D_p = held-out pre-training text (also split into its reviews and its dialogue), D_a = the n+ alignment pairs, D_t = the perturbation pairs. l = |D_t|/|D_a| and k = |D_p|/|D_a| count sequence tokens. Slopes are least-squares fits of γ against l over the points with small l, per seed, and the first-step columns are the secant over the first step alone (the smallest l measured); mean ± 95% CI over seeds. The theorem predicts dγ(D_p)/dl < 0 < dγ(D_a)/dl and a ratio growing like k.\n\n",
        );
        md.push_str(&self.table()?.to_markdown());
        md.push('\n');
        for c in self.claims() {
            md.push_str(&c);
            md.push('\n');
        }
        let failed = self
            .rows
            .iter()
            .filter(|r| r.pretrain_sign.map(|e| e.verdict) != Some(Verdict::Held))
            .count();
        if failed > 0 {
            md.push_str(&format!("\nWhy D_p's sign can fail (it was not held in {failed} of {} rows here): the theorem's model is a mixture that fits every data set exactly, so more D_t can only move mass toward what D_t and D_p share. A small network fine-tuned at a high learning rate also forgets: part of D_p is dialogue, which the negative reviews do not contain, and its rate can rise while D_p's reviews get easier. The D_p split above shows which part moves which way, the first-step columns show the sign where l is smallest, and the ablation ({}) varies the learning rate and draws D_t from the pre-training distribution.\n\n", self.rows.len(), if ablation_ran { "below" } else { "`elastica demo --full`" }));
        } else {
            md.push('\n');
        }
        let mut plot = LinePlot::new(
            "Change of compression rate under perturbation",
            "l = |D_t| / |D_a|",
            "Δγ (bits/token) from n- = 0",
        );
        let first_np = self.rows.first().map(|r| r.n_plus);
        for row in self.rows.iter().filter(|r| Some(r.n_plus) == first_np) {
            for set in ["D_a", "D_p"] {
                let mut by_l: Vec<(f64, Vec<f64>)> = Vec::new();
                let mut seeds: Vec<u64> = rates.iter().map(|r| r.seed).collect();
                seeds.sort_unstable();
                seeds.dedup();
                for seed in seeds {
                    let mut pts: Vec<(f64, f64)> = rates
                        .iter()
                        .filter(|r| {
                            r.base == row.base
                                && r.n_plus == row.n_plus
                                && r.seed == seed
                                && r.set == set
                        })
                        .map(|r| (r.l, r.bits_per_token))
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    let Some(&(_, y0)) = pts.first() else {
                        continue;
                    };
                    for (i, (l, y)) in pts.iter().enumerate() {
                        if by_l.len() <= i {
                            by_l.push((*l, Vec::new()));
                        }
                        by_l[i].1.push(y - y0);
                    }
                }
                let pts: Vec<(f64, f64)> = by_l
                    .iter()
                    .filter_map(|(l, v)| mean_ci95(v).map(|c| (*l, c.mean)))
                    .collect();
                plot = plot.series(Series::new(
                    format!("{} {set} (n+={})", row.base, row.n_plus),
                    pts,
                ));
            }
        }
        run.plot("compression_rates", &plot)?;
        md.push_str("![compression rates](compression_rates.png)\n\n");
        let pts: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter(|r| r.ratio.mean > 0.0)
            .map(|r| (r.k, r.ratio.mean))
            .collect();
        if pts.len() >= 2 {
            let lo = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
            let hi = pts.iter().map(|p| p.0).fold(0.0, f64::max);
            let plot = LinePlot::new("Elasticity ratio against k", "k = |D_p| / |D_a|", "ratio")
                .log_x(true)
                .log_y(true)
                .series(Series::new("measured (mean over seeds)", pts))
                .series(Series::new("ratio = k", vec![(lo, lo), (hi, hi)]).without_markers());
            run.plot("compression_ratio", &plot)?;
            md.push_str("![ratio against k](compression_ratio.png)\n\n");
        }
        Ok(md)
    }

    /// The ablation's section: one row per arm (`base` is the arm's name).
    pub fn ablation_section(&self, cfg: &DemoConfig) -> Result<String> {
        let mut md = String::from("## Compression ablation: when do the theorem's signs hold?\n\n");
        let base = cfg
            .bases
            .iter()
            .filter(|b| b.size == "tiny")
            .max_by_key(|b| b.tokens)
            .map(|b| b.name())
            .unwrap_or_default();
        md.push_str(&format!(
            "The perturbation pass of the rebound grid, repeated on {base} (n+ = {}, every seed) with each arm's learning rate and perturbation set; only the compression rates are tracked. D_t = negative reviews (as in the grid) or held-out text drawn from the pre-training distribution (reviews of both sentiments and dialogue, none seen in pre-training). Verdicts over seeds.\n\n",
            cfg.n_plus.first().copied().unwrap_or(0)
        ));
        md.push_str(&self.table()?.to_markdown());
        md.push('\n');
        for c in self.ablation_claims() {
            md.push_str(&c);
            md.push('\n');
        }
        md.push('\n');
        Ok(md)
    }

    /// One line per arm: the two signs' verdicts.
    pub fn ablation_claims(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| {
                let d = |e: &Option<Effect>| {
                    e.map(|e| format!("{} -> {}", e.describe(3), e.verdict.word()))
                        .unwrap_or_else(|| "n/a".into())
                };
                format!(
                    "- Ablation \"{}\": dγ(D_p)/dl < 0: {}; first step: {}; dγ(D_a)/dl > 0: {}",
                    r.base,
                    d(&r.pretrain_sign),
                    d(&r.first_step_pretrain_sign),
                    d(&r.align_sign)
                )
            })
            .collect()
    }
}

/// The overall word for a tally over n rows.
fn overall(t: (usize, usize, usize), n: usize) -> &'static str {
    if t.0 == n {
        "held in every row"
    } else if t.1 == n {
        "reversed in every row"
    } else if t.0 > t.1 + t.2 {
        "held in most rows"
    } else if t.1 > t.0 + t.2 {
        "reversed in most rows"
    } else {
        "mixed or undecided"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(base: &str, seed: u64, set: &str, l: f64, k: f64, y: f64) -> RatePoint {
        RatePoint {
            base: base.into(),
            n_plus: 10,
            seed,
            n_minus: (l * 100.0) as usize,
            l,
            k,
            set: set.into(),
            bits_per_token: y,
        }
    }

    /// Rates that move exactly as the theorem says (slope_a = k * -slope_p) give ratio k,
    /// and a log-log slope of 1.
    #[test]
    fn theorem_shaped_rates_give_ratio_k() {
        let mut rates = Vec::new();
        for (base, k) in [("a", 10.0), ("b", 100.0)] {
            for seed in 1..=3u64 {
                for i in 0..4 {
                    let l = i as f64 * 0.1;
                    let noise = seed as f64 * 1e-3;
                    rates.push(point(base, seed, "D_a", l, k, 2.0 + 0.5 * l + noise));
                    rates.push(point(base, seed, "D_p", l, k, 3.0 - 0.5 / k * l));
                    rates.push(point(base, seed, "D_t", l, k, 4.0 - l));
                }
            }
        }
        let s = analyse(&rates, 0.25);
        assert_eq!(s.rows.len(), 2);
        for r in &s.rows {
            assert!((r.ratio.mean - r.k).abs() < 1e-6 * r.k, "{r:?}");
            assert_eq!(r.signs_as_theorem, 3);
            assert!((r.slope_perturb.mean + 1.0).abs() < 1e-9);
        }
        assert!((s.log_log_slope.unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(s.concordant_pairs, (1, 1));
        assert!(
            s.claims().iter().all(|c| c.contains("held")),
            "{:?}",
            s.claims()
        );
    }

    /// Only the small-l points are fitted: a kink after l_max does not change the slope.
    #[test]
    fn slopes_use_the_small_l_points() {
        let pts = [(0.0, 1.0), (0.1, 1.1), (0.2, 1.2), (1.0, 5.0)];
        assert!((slope(&pts, 0.25).unwrap() - 1.0).abs() < 1e-9);
        // Fewer than two points under l_max: the first two are used.
        assert!((slope(&pts[..2], 0.01).unwrap() - 1.0).abs() < 1e-9);
    }

    /// When pre-training compression worsens in every seed, its sign is reported reversed;
    /// the D_p split and the first-step secant are read from their own sets.
    #[test]
    fn wrong_signs_are_reported_reversed() {
        let mut rates = Vec::new();
        for seed in 1..=3u64 {
            let up = 1.0 + seed as f64 * 0.1;
            for i in 0..3 {
                let l = i as f64 * 0.1;
                rates.push(point("a", seed, "D_a", l, 5.0, 2.0 + l));
                rates.push(point("a", seed, "D_p", l, 5.0, 3.0 + up * l));
                rates.push(point(
                    "a",
                    seed,
                    "D_p:reviews",
                    l,
                    5.0,
                    3.0 - l * l - 0.5 * l,
                ));
                rates.push(point("a", seed, "D_p:dialogue", l, 5.0, 3.0 + 2.0 * up * l));
                rates.push(point("a", seed, "D_t", l, 5.0, 4.0 - l));
            }
        }
        let s = analyse(&rates, 0.25);
        let r = &s.rows[0];
        assert_eq!(r.signs_as_theorem, 0);
        assert_eq!(r.pretrain_sign.unwrap().verdict, Verdict::Reversed);
        assert_eq!(r.align_sign.unwrap().verdict, Verdict::Held);
        assert_eq!(r.pretrain_reviews_sign.unwrap().verdict, Verdict::Held);
        assert_eq!(r.pretrain_dialogue_sign.unwrap().verdict, Verdict::Reversed);
        // First step: (3 - 0.01 - 0.05 - 3) / 0.1 on the reviews; D_p: up.
        assert!((r.first_step_pretrain.unwrap().mean - 1.2).abs() < 1e-9);
        let c = s.claims();
        assert!(c[0].contains("reversed in every row"), "{c:?}");
        assert!(
            c[1].contains("first-step") && c[1].contains("reversed in every row"),
            "{c:?}"
        );
        assert!(c[2].contains("held in every row"), "{c:?}");
        assert!(c[3].contains("reviews)/dl < 0 held in 1 of 1"), "{c:?}");
        assert!(c[4].contains("not testable"), "{c:?}");
    }
}
