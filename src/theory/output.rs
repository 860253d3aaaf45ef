//! Presenting the elasticity experiment: tables (k vs ratio, spring check, slope fits),
//! the full `report.md`, a short summary for `elastica demo`, and the plots
//! (`ratio_vs_k` log-log, `regime` over a wide l range), written through `crate::report`.

use super::elasticity::{KSummary, SlopeFit, TheoryResults};
use crate::report::stats::MeanCi;
use crate::report::{fmt_ci, fmt_sig, LegendPosition, LinePlot, RunDir, Series, Table};
use anyhow::Result;
use std::path::{Path, PathBuf};

fn ci_cell(c: &Option<MeanCi>) -> String {
    match c {
        Some(c) => fmt_ci(c.mean, c.half_width),
        None => "undefined".to_string(),
    }
}

/// k as typed: integers without decimals.
fn fmt_k(k: f64) -> String {
    if k.fract() == 0.0 && k.abs() < 1e15 {
        format!("{}", k as i64)
    } else {
        fmt_sig(k, 4)
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| fmt_sig(x, 3))
        .unwrap_or_else(|| "undefined".to_string())
}

fn fit_row(name: &str, f: &SlopeFit) -> Vec<String> {
    match &f.fit {
        Some(fit) => vec![
            name.to_string(),
            format!("{:.4}", fit.slope),
            fit.slope_ci95
                .map(|(lo, hi)| format!("[{lo:.4}, {hi:.4}]"))
                .unwrap_or_else(|| "n/a (2 points)".to_string()),
            format!("{:.4}", fit.r2),
            f.points.to_string(),
            f.excluded.to_string(),
        ],
        None => vec![
            name.to_string(),
            "undefined".to_string(),
            f.note.clone().unwrap_or_default(),
            "".to_string(),
            f.points.to_string(),
            f.excluded.to_string(),
        ],
    }
}

impl TheoryResults {
    /// k against the measured ratios (mean ± 95% CI over seeds).
    pub fn ratio_table(&self) -> Table {
        let mut t = Table::new([
            "k",
            "dγ(D_a)/dl at l=0",
            "dγ(D_p)/dl at l=0",
            "ratio, l→0",
            "ratio, secant [0, l_max]",
            "secant ratio, median",
            "secant ratio / k",
            "Huffman ratio (seeds defined)",
            "signs as theorem",
            "l*",
        ]);
        for s in &self.per_k {
            let over_k = s
                .ratio_secant
                .map(|c| fmt_ci(c.mean / s.k, c.half_width.map(|h| h / s.k)));
            let row = vec![
                fmt_k(s.k),
                ci_cell(&s.dgamma_a_l0),
                ci_cell(&s.dgamma_p_l0),
                ci_cell(&s.ratio_l0),
                ci_cell(&s.ratio_secant),
                s.ratio_secant_median
                    .map(|m| fmt_sig(m, 4))
                    .unwrap_or_else(|| "undefined".into()),
                over_k.unwrap_or_else(|| "undefined".into()),
                format!(
                    "{} ({}/{})",
                    ci_cell(&s.ratio_huffman),
                    s.huffman_defined,
                    s.seeds
                ),
                format!("{}/{}", s.signs_as_theorem, s.seeds),
                ci_cell(&s.l_star),
            ];
            // Widths match the headers by construction.
            t.rows.push(row);
        }
        t
    }

    /// The springs-in-series check per k.
    pub fn spring_table(&self) -> Table {
        let mut t = Table::new([
            "k",
            "l₁",
            "|D_p| ΔKL(D_p‖model)",
            "|D_a| ΔKL(D_a‖model)",
            "|D_t| ΔKL(D_t‖model)",
            "balance −F_a/F_p (forward KL)",
            "balance (reverse KL(model‖D_i))",
        ]);
        let l1 = self.config.l_max / self.config.l_steps as f64;
        for s in &self.per_k {
            t.rows.push(vec![
                fmt_k(s.k),
                fmt_sig(l1, 3),
                opt(s.force_pretrain),
                opt(s.force_align),
                opt(s.force_perturb),
                ci_cell(&s.spring_forward_balance),
                ci_cell(&s.spring_reverse_balance),
            ]);
        }
        t
    }

    /// Slopes of log(ratio) against log(k).
    pub fn fit_table(&self) -> Table {
        let mut t = Table::new(["ratio", "slope", "95% CI", "R²", "points", "excluded"]);
        t.rows.push(fit_row("ideal, l→0", &self.fits.ideal_l0));
        t.rows.push(fit_row(
            "ideal, secant over [0, l_max] (headline)",
            &self.fits.ideal_secant,
        ));
        t.rows.push(fit_row(
            "Huffman, secant over [0, l_max]",
            &self.fits.huffman_secant,
        ));
        t
    }

    fn runs_count(&self) -> (usize, usize) {
        let ok = self.runs.iter().filter(|r| r.signs_as_theorem).count();
        (ok, self.runs.len())
    }

    /// Plain-language findings, generated from the numbers (including where the simulation
    /// disagrees with the theorem).
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let (ok, n) = self.runs_count();
        if ok == n {
            out.push(format!(
                "Signs: in all {n} runs d γ(D_p)/dl < 0 < d γ(D_a)/dl at l = 0, as the theorem states."
            ));
        } else {
            out.push(format!(
                "Signs: only {ok} of {n} runs have d γ(D_p)/dl < 0 < d γ(D_a)/dl at l = 0; in the others \
                 D_a and D_t overlap enough (Σ p_a p_t / q ≥ 1) that the perturbation improves alignment \
                 compression. The theorem's sign pattern does not hold there; the magnitudes still obey \
                 |γ_a'| = k |γ_p'| at l → 0 (force balance), only the direction flips."
            ));
        }
        out.push(format!(
            "Force balance: k γ_p' + γ_a' + l γ_t' = 0 holds to {} (relative) in every run, so the \
             ideal ratio at l → 0 equals k exactly; it is an identity of the size-weighted mixture.",
            fmt_sig(self.max_balance_residual, 2)
        ));
        if let Some(f) = &self.fits.ideal_secant.fit {
            let ci = f
                .slope_ci95
                .map(|(lo, hi)| format!(" (95% CI {} to {})", fmt_sig(lo, 4), fmt_sig(hi, 4)))
                .unwrap_or_default();
            out.push(format!(
                "Scaling: over [0, {}] the ratio grows as k^{}{ci}; the theorem predicts about 1.",
                fmt_sig(self.config.l_max, 3),
                fmt_sig(f.slope, 4)
            ));
        }
        let stars: Vec<f64> = self.runs.iter().filter_map(|r| r.l_star).collect();
        if !stars.is_empty() {
            let lo = stars.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = stars.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            out.push(format!(
                "Regime: γ(D_p) stops improving at l* between {} and {} (over all k and seeds); beyond l* \
                 both rates worsen and the ratio changes sign, so the theorem needs l < l*, not just l ≪ 1.",
                fmt_sig(lo, 3),
                fmt_sig(hi, 3)
            ));
        }
        let undefined = self
            .runs
            .iter()
            .filter(|r| r.huffman.secant.ratio.is_none())
            .count();
        if undefined > 0 {
            let ks: Vec<String> = self
                .per_k
                .iter()
                .filter(|s| s.huffman_defined < s.seeds)
                .map(|s| fmt_k(s.k))
                .collect();
            out.push(format!(
                "Huffman: in {undefined} of {} runs (k = {}) the Huffman code does not change between l = 0 \
                 and l = {} (the code changes only when q crosses a tie between subtrees, and q moves by O(l/k)), \
                 so the Huffman rates are flat and the ratio is undefined there.",
                self.runs.len(),
                ks.join(", "),
                fmt_sig(self.config.l_max, 3)
            ));
        }
        let non_positive = self
            .runs
            .iter()
            .filter(|r| r.huffman.secant.ratio.is_some_and(|x| x <= 0.0))
            .count();
        if non_positive > 0 {
            out.push(format!(
                "Huffman: in {non_positive} of {} runs the code change moved γ(D_a) and γ(D_p) the same way                  (ratio ≤ 0): a step function's secant is dominated by which ties happen to flip. These runs                  are left out of the Huffman slope fit.",
                self.runs.len()
            ));
        }
        let fwd: Vec<f64> = self
            .per_k
            .iter()
            .filter_map(|s| s.spring_forward_balance.map(|c| c.mean))
            .collect();
        let rev: Vec<f64> = self
            .per_k
            .iter()
            .filter_map(|s| s.spring_reverse_balance.map(|c| c.mean))
            .collect();
        if !fwd.is_empty() {
            let range = |v: &[f64]| {
                let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
                let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                format!("{}–{}", fmt_sig(lo, 4), fmt_sig(hi, 4))
            };
            let mut s = format!(
                "Springs: |D_p| ΔKL(D_p‖model) and |D_a| ΔKL(D_a‖model) are equal and opposite (balance {} \
                 across k)",
                range(&fwd)
            );
            if !rev.is_empty() {
                s.push_str(&format!(
                    "; with the reverse KL(model‖D_i) the balance is {}, the same order but not equal",
                    range(&rev)
                ));
            }
            s.push('.');
            out.push(s);
        }
        out
    }

    /// A short Markdown section for `elastica demo`.
    pub fn summary_markdown(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "Exact token-tree simulation (depth {}, M = {} responses, Zipf α = {}, {} seeds): as the \
             perturbation l = |D_t|/|D_a| grows from 0 to {}, the alignment set's compression rate \
             worsens about k = |D_p|/|D_a| times faster than the pre-training set's improves.\n\n",
            c.depth,
            1u64 << c.depth,
            c.alpha,
            c.seeds,
            fmt_sig(c.l_max, 3)
        );
        let mut t = Table::new(["k", "ratio dγ(D_a)/dl ÷ −dγ(D_p)/dl", "ratio / k"]);
        for k in &self.per_k {
            t.rows.push(vec![
                fmt_k(k.k),
                ci_cell(&k.ratio_secant),
                k.ratio_secant
                    .map(|r| fmt_ci(r.mean / k.k, r.half_width.map(|h| h / k.k)))
                    .unwrap_or_else(|| "undefined".into()),
            ]);
        }
        s.push_str(&t.to_markdown());
        s.push('\n');
        for f in self.findings() {
            s.push_str(&format!("- {f}\n"));
        }
        s
    }

    /// The full report.
    pub fn report_markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::from("# Elasticity theorem: exact token-tree simulation\n\n");
        s.push_str(&format!(
            "Depth d = {} (M = {} responses), Zipf exponent α = {}, k ∈ {{{}}}, seeds {}..{}, \
             l swept over [0, {}] in {} steps.\n\n",
            c.depth,
            1u64 << c.depth,
            c.alpha,
            c.ks.iter()
                .map(|k| fmt_k(*k))
                .collect::<Vec<_>>()
                .join(", "),
            c.first_seed,
            c.first_seed + c.seeds as u64 - 1,
            fmt_sig(c.l_max, 3),
            c.l_steps
        ));
        s.push_str(
            "## Set-up and conventions\n\n\
             - D1, D2, D3: Zipf masses r^(−α) over the M leaves, each placed in its own seeded order.\n\
             - Pre-training D_p = equal mixture of D1, D2, D3; alignment D_a ~ D2; perturbation D_t ~ D3; \
             sizes |D_p| = k, |D_a| = 1, |D_t| = l (units of |D_a|).\n\
             - The model trained on D_p ∪ D_a ∪ D_t is the size-weighted mixture q = (k p_p + p_a + l p_t)/(k + 1 + l).\n\
             - γ(D) = compression rate of D under q, bits per token: ideal = cross-entropy / d; Huffman = \
             expected length of q's Huffman code / d. Larger γ = worse compression. The normalised rate \
             subtracts log M (per token: log2(M)/d = 1 bit); it shifts all rates by a constant and does not \
             change any derivative or ratio.\n\
             - Theorem (paper §2): dγ(D_p)/dl < 0 < dγ(D_a)/dl and dγ(D_a)/dl = Θ(−k dγ(D_p)/dl). \
             Ratio := (dγ(D_a)/dl) / (−dγ(D_p)/dl).\n\
             - Ideal derivatives are analytic: dγ(D)/dl = (1 − Σ p_D p_t / q) / (d (k+1+l) ln 2).\n\
             - Huffman rates are step functions of l, so they get the secant over the whole sweep: codes \
             built at l = 0 and l = l_max, ratio = Δγ(D_a) / −Δγ(D_p); undefined when the code did not change. \
             The ideal rates get the same secant (the headline) besides the exact l → 0 derivative.\n\n",
        );
        s.push_str("## Findings\n\n");
        for f in self.findings() {
            s.push_str(&format!("- {f}\n"));
        }
        s.push_str("\n## Ratio against k (mean ± 95% CI over seeds)\n\n");
        s.push_str(&self.ratio_table().to_markdown());
        s.push_str("\n## Slope of log(ratio) against log(k)\n\n");
        s.push_str(&self.fit_table().to_markdown());
        s.push_str(
            "\n## Springs in series\n\nForces F_i = |D_i| × ΔKL between l = 0 and the first sweep step l₁ \
             (bits per response × size). Forward KL(D_i‖model) is d × Δγ(D_i).\n\n",
        );
        s.push_str(&self.spring_table().to_markdown());
        let r = &self.regime;
        s.push_str(&format!(
            "\n## Where the regime ends\n\nFor k = {}, seed {}: Δγ(D_a) and −k Δγ(D_p) over l ∈ [0, {}]. \
             They coincide for small l (force balance) and separate as l grows; γ(D_p) stops improving at \
             l* = {}.\n\n",
            fmt_k(r.k),
            r.seed,
            fmt_sig(r.points.last().map(|p| p.0).unwrap_or(0.0), 3),
            opt(r.l_star)
        ));
        s.push_str(
            "## Files\n\n- `results.json`: configuration, per-k summaries, fits, every run with its sweep\n\
             - `results.csv`: the ratio table above\n\
             - `ratio_vs_k.png` / `.svg`: log-log ratio against k\n\
             - `regime.png` / `.svg`: rate changes over a wide l range\n",
        );
        s
    }

    /// Log-log plot of the ratios against k, with the ratio = k guide.
    pub fn ratio_plot(&self) -> LinePlot {
        let mut plot = LinePlot::new(
            "Elasticity: dγ(D_a)/dl ÷ −dγ(D_p)/dl against k",
            "k = |D_p| / |D_a|",
            "ratio",
        )
        .log_x(true)
        .log_y(true)
        .legend(LegendPosition::UpperLeft);
        let pos = |c: &Option<MeanCi>| c.filter(|c| c.mean > 0.0 && c.mean.is_finite());
        let secant: Vec<(&KSummary, MeanCi)> = self
            .per_k
            .iter()
            .filter_map(|s| pos(&s.ratio_secant).map(|c| (s, c)))
            .collect();
        let band = secant
            .iter()
            .filter_map(|(s, c)| {
                c.bounds()
                    .filter(|(lo, _)| *lo > 0.0)
                    .map(|(lo, hi)| (s.k, lo, hi))
            })
            .collect();
        plot = plot.series(
            Series::new(
                format!(
                    "ideal, secant over [0, {}] ± 95% CI",
                    fmt_sig(self.config.l_max, 3)
                ),
                secant.iter().map(|(s, c)| (s.k, c.mean)).collect(),
            )
            .with_band(band),
        );
        let huff: Vec<(f64, f64)> = self
            .per_k
            .iter()
            .filter_map(|s| pos(&s.ratio_huffman).map(|c| (s.k, c.mean)))
            .collect();
        if !huff.is_empty() {
            plot = plot.series(Series::new(
                "Huffman, secant (where the code changed)",
                huff,
            ));
        }
        let mut ks: Vec<f64> = self.per_k.iter().map(|s| s.k).collect();
        ks.sort_by(f64::total_cmp);
        plot.series(
            Series::new("ratio = k", ks.iter().map(|&k| (k, k)).collect()).without_markers(),
        )
    }

    /// Rate changes over a wide l range for one (k, seed).
    pub fn regime_plot(&self) -> LinePlot {
        let r = &self.regime;
        let title = match r.l_star {
            Some(s) => format!(
                "Rates against perturbation, k = {} (l* = {})",
                fmt_k(r.k),
                fmt_sig(s, 3)
            ),
            None => format!("Rates against perturbation, k = {}", fmt_k(r.k)),
        };
        LinePlot::new(title, "l = |D_t| / |D_a|", "change in rate (bits/token)")
            .series(
                Series::new("Δγ(D_a)", r.points.iter().map(|p| (p.0, p.1)).collect())
                    .without_markers(),
            )
            .series(
                Series::new("−k·Δγ(D_p)", r.points.iter().map(|p| (p.0, p.2)).collect())
                    .without_markers(),
            )
            .reference(0.0, "no change")
            .legend(LegendPosition::UpperLeft)
    }

    /// Write results.json, report.md and both plots into `out`; returns the paths written.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>> {
        let run = RunDir::create(out)?;
        let mut paths = vec![
            run.write_json("results.json", self)?,
            run.write_text("report.md", &self.report_markdown())?,
            run.write_table_csv("results.csv", &self.ratio_table())?,
        ];
        let (a, b) = run.plot("ratio_vs_k", &self.ratio_plot())?;
        paths.extend([a, b]);
        let (a, b) = run.plot("regime", &self.regime_plot())?;
        paths.extend([a, b]);
        Ok(paths)
    }
}
