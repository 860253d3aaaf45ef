//! The demo's compression section: the elasticity theorem (PAPER.md §2) checked on real
//! trained models. While an aligned world model is perturbed on negative reviews, the
//! compression rates (bits per token) of D_p (held-out pre-training text), D_a (the
//! alignment pairs) and D_t (the perturbation pairs) are measured at every n- of the grid.
//!
//! With l = |D_t|/|D_a| and k = |D_p|/|D_a| counted in sequence tokens, the theorem says
//! `d gamma(D_a)/dl = Theta(-k d gamma(D_p)/dl)` with `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl`.
//! We fit each derivative as the least-squares slope of the rate against l over the points
//! with l <= `slope_l_max` (the theorem is about l << 1; at least the first two points are
//! used), per seed, and report the ratio `d gamma(D_a)/dl / (-d gamma(D_p)/dl)` next to k.

use super::rebound::RatePoint;
use crate::report::stats::{linear_fit, mean_ci95, MeanCi};
use crate::report::table::{fmt_ci, fmt_sig, Table};
use crate::report::{LinePlot, RunDir, Series};
use anyhow::Result;
use serde::Serialize;

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
    /// `d gamma(D_a)/dl / (-d gamma(D_p)/dl)` per seed, pooled.
    pub ratio: MeanCi,
    /// Seeds in which `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl`.
    pub signs_as_theorem: usize,
    pub seeds: usize,
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
}

fn slope(points: &[(f64, f64)], l_max: f64) -> Option<f64> {
    let mut used: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 <= l_max).collect();
    if used.len() < 2 {
        used = points.iter().take(2).copied().collect();
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) = used.into_iter().unzip();
    linear_fit(&xs, &ys).ok().map(|f| f.slope)
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
        let mut seeds: Vec<u64> = rates
            .iter()
            .filter(|r| r.base == base && r.n_plus == np)
            .map(|r| r.seed)
            .collect();
        seeds.sort_unstable();
        seeds.dedup();
        let (mut sa, mut sp, mut st, mut ratio, mut ks) = (vec![], vec![], vec![], vec![], vec![]);
        let mut signs = 0;
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
            if let Some(r) = rates
                .iter()
                .find(|r| r.base == base && r.n_plus == np && r.seed == seed)
            {
                ks.push(r.k);
            }
            sa.push(a);
            sp.push(p);
            st.push(t);
            ratio.push(a / -p);
            if p < 0.0 && a > 0.0 {
                signs += 1;
            }
        }
        let (Some(slope_align), Some(slope_pretrain), Some(slope_perturb), Some(ratio), Some(k)) = (
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
            ratio,
            signs_as_theorem: signs,
            seeds: sa.len(),
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
    ElasticitySummary {
        rows,
        log_log_slope,
        concordant_pairs: concordant,
    }
}

impl ElasticitySummary {
    pub fn table(&self) -> Result<Table> {
        let mut t = Table::new([
            "base",
            "n+",
            "k = |D_p|/|D_a|",
            "dγ(D_a)/dl",
            "dγ(D_p)/dl",
            "dγ(D_t)/dl",
            "ratio dγ(D_a)/dl ÷ −dγ(D_p)/dl",
            "ratio / k",
            "signs as theorem",
        ]);
        for r in &self.rows {
            t.push_row([
                r.base.clone(),
                r.n_plus.to_string(),
                fmt_sig(r.k, 3),
                fmt_ci(r.slope_align.mean, r.slope_align.half_width),
                fmt_ci(r.slope_pretrain.mean, r.slope_pretrain.half_width),
                fmt_ci(r.slope_perturb.mean, r.slope_perturb.half_width),
                fmt_ci(r.ratio.mean, r.ratio.half_width),
                fmt_sig(r.ratio.mean / r.k, 3),
                format!("{}/{}", r.signs_as_theorem, r.seeds),
            ])?;
        }
        Ok(t)
    }

    /// The claims this section can make, one line each, stated either way.
    pub fn claims(&self) -> Vec<String> {
        let mut out = Vec::new();
        let signs: usize = self.rows.iter().map(|r| r.signs_as_theorem).sum();
        let total: usize = self.rows.iter().map(|r| r.seeds).sum();
        if total == 0 {
            return vec![
                "- Compression: no rates were tracked (the n- grid has no point beyond 0).".into(),
            ];
        }
        out.push(format!(
            "- Compression, signs (dγ(D_p)/dl < 0 < dγ(D_a)/dl): {signs} of {total} runs -> {}",
            if signs == total {
                "held in every run"
            } else if 2 * signs > total {
                "held in most runs"
            } else {
                "did not hold in most runs"
            }
        ));
        let (c, n) = self.concordant_pairs;
        match (self.log_log_slope, n) {
            (_, 0) => out.push(
                "- Compression, ratio grows with k: not testable (one k value only)".into(),
            ),
            (slope, _) => out.push(format!(
                "- Compression, ratio grows with k: {c} of {n} pairs of (base, n+) ordered as k is{} -> {}",
                slope
                    .map(|s| format!(", log-log slope {s:.2} (theorem: about 1)"))
                    .unwrap_or_default(),
                if 2 * c > n && slope.is_some_and(|s| s > 0.0) {
                    "held"
                } else {
                    "did not hold here"
                }
            )),
        }
        out
    }

    /// Markdown section, plus the plots written into `run`.
    pub fn section(&self, run: &RunDir, rates: &[RatePoint]) -> Result<String> {
        let mut md = String::from("## Compression: the elasticity theorem on trained models\n\n");
        md.push_str(
            "While each aligned model is perturbed, the compression rate γ (bits per token, exact code length of the model) of three sets is measured at every n-: D_p = held-out pre-training text, D_a = the n+ alignment pairs, D_t = the perturbation pairs. l = |D_t|/|D_a| and k = |D_p|/|D_a| count sequence tokens. Slopes are least-squares fits of γ against l over the points with small l, per seed; mean ± 95% CI over seeds. The theorem predicts dγ(D_p)/dl < 0 < dγ(D_a)/dl and a ratio growing like k.\n\n",
        );
        md.push_str(&self.table()?.to_markdown());
        md.push('\n');
        for c in self.claims() {
            md.push_str(&c);
            md.push('\n');
        }
        md.push_str("\nThe theorem models a mixture that fits every data set exactly; these models are tiny and fine-tuned at a high learning rate, so forgetting can move γ(D_p) either way. The table shows what happened.\n\n");
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

    /// When pre-training compression also worsens, the signs are reported as not holding.
    #[test]
    fn wrong_signs_are_reported() {
        let mut rates = Vec::new();
        for i in 0..3 {
            let l = i as f64 * 0.1;
            rates.push(point("a", 1, "D_a", l, 5.0, 2.0 + l));
            rates.push(point("a", 1, "D_p", l, 5.0, 3.0 + l));
            rates.push(point("a", 1, "D_t", l, 5.0, 4.0 - l));
        }
        let s = analyse(&rates, 0.25);
        assert_eq!(s.rows[0].signs_as_theorem, 0);
        assert!(s.claims()[0].contains("did not hold"), "{:?}", s.claims());
        assert!(s.claims()[1].contains("not testable"));
    }
}
