//! What the resistance experiment measured and how it is reported: per (seed, pair) the mean
//! training loss of the inverse and the forward fine-tune (the paper's Table 1), per pair the
//! mean ± 95% CI over seeds, a sign test over every pair × seed, loss curves, and the files
//! (`results.csv`, `results.jsonl`, `results.json`, `pairs.csv`, `table.tex`, `report.md`,
//! `loss_k-l.png/.svg`). The statistics come from `crate::report::stats`.

use super::plan::Direction;
use crate::report::stats::{mean_ci95, sign_test, MeanCi, SignTest};
use crate::report::{fmt_ci, fmt_p, fmt_sig, LinePlot, RunDir, Series, Table};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The per-step training losses of one fine-tune (one seed, one pair, one direction).
#[derive(Debug, Clone, PartialEq)]
pub struct RunLosses {
    pub seed: u64,
    pub k: usize,
    pub l: usize,
    pub direction: Direction,
    /// Samples the fine-tune trained on.
    pub samples: usize,
    /// Loss of optimizer step 1, 2, ... (`train_log.jsonl`).
    pub losses: Vec<f64>,
}

/// One comparison: a pair under one seed (a row of `results.csv`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub seed: u64,
    pub k: usize,
    pub l: usize,
    pub samples: usize,
    pub steps: usize,
    /// Mean per-step training loss of theta_l fine-tuned on gen_k.
    pub inverse_loss: f64,
    /// Mean per-step training loss of theta_k fine-tuned on gen_l.
    pub forward_loss: f64,
    /// `forward_loss - inverse_loss`: positive when inverse alignment is easier.
    pub difference: f64,
    pub inverse_lower: bool,
    pub inverse_final_loss: f64,
    pub forward_final_loss: f64,
}

/// A pair summarised over seeds (a row of the Table-1-like table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairSummary {
    pub k: usize,
    pub l: usize,
    pub seeds: usize,
    pub inverse_loss: MeanCi,
    pub forward_loss: MeanCi,
    pub difference: MeanCi,
    /// Seeds in which inverse < forward.
    pub inverse_lower: usize,
}

/// Mean loss curve of one direction of a pair over seeds, step by step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve {
    pub direction: Direction,
    /// `(step, mean, lower, upper)`; lower = upper = mean with a single seed.
    pub points: Vec<(usize, f64, f64, f64)>,
}

/// Everything the experiment concludes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResistResults {
    pub comparisons: Vec<Comparison>,
    pub pairs: Vec<PairSummary>,
    /// Comparisons in which inverse < forward, out of `total`.
    pub inverse_lower: usize,
    pub total: usize,
    /// Two-sided exact sign test of `difference` over all pairs × seeds.
    pub sign_test: SignTest,
    /// Mean ± 95% CI of `difference` over all pairs × seeds.
    pub difference: MeanCi,
    /// Loss curves per pair id (`k-l`), forward then inverse.
    pub curves: BTreeMap<String, Vec<Curve>>,
}

fn mean(xs: &[f64]) -> f64 {
    crate::report::stats::mean(xs).unwrap_or(f64::NAN)
}

/// The forward and inverse run of each (pair, seed), found by their own fields.
type RunsByKey<'a> = BTreeMap<(usize, usize, u64), [Option<&'a RunLosses>; 2]>;

/// Turn the fine-tunes' losses into comparisons, summaries, the sign test and curves. Every
/// (seed, pair) needs exactly one forward and one inverse run with the same sample count.
pub fn analyse(runs: &[RunLosses]) -> Result<ResistResults> {
    let comparisons = compare(&index_runs(runs)?)?;
    let mut pairs = Vec::new();
    let mut curves = BTreeMap::new();
    let mut pair_keys: Vec<(usize, usize)> = comparisons.iter().map(|c| (c.k, c.l)).collect();
    pair_keys.dedup();
    for (k, l) in pair_keys {
        pairs.push(summarise_pair(k, l, &comparisons)?);
        let pc = Direction::BOTH
            .into_iter()
            .map(|dir| loss_curve(runs, k, l, dir))
            .collect();
        curves.insert(format!("{k}-{l}"), pc);
    }
    let diffs: Vec<f64> = comparisons.iter().map(|c| c.difference).collect();
    Ok(ResistResults {
        inverse_lower: comparisons.iter().filter(|c| c.inverse_lower).count(),
        total: comparisons.len(),
        sign_test: sign_test(&diffs)?,
        difference: mean_ci95(&diffs).context("no comparisons")?,
        comparisons,
        pairs,
        curves,
    })
}

/// Check every run (a logged, finite loss; one run per direction, pair and seed) and index
/// them by (k, l, seed).
fn index_runs(runs: &[RunLosses]) -> Result<RunsByKey<'_>> {
    let mut by_key: RunsByKey = BTreeMap::new();
    for r in runs {
        let what = || format!("{} fine-tune of pair {}-{}", r.direction.name(), r.k, r.l);
        if r.losses.is_empty() {
            bail!("the {} (seed {}) logged no step", what(), r.seed);
        }
        if let Some((i, x)) = r.losses.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            bail!(
                "the {} (seed {}) has loss {x} at step {}; the run diverged (lower the \
                 learning rate)",
                what(),
                r.seed,
                i + 1
            );
        }
        let slot = &mut by_key.entry((r.k, r.l, r.seed)).or_default()[r.direction as usize];
        if slot.is_some() {
            bail!(
                "two {} runs for pair {}-{} seed {}",
                r.direction.name(),
                r.k,
                r.l,
                r.seed
            );
        }
        *slot = Some(r);
    }
    if by_key.is_empty() {
        bail!("no fine-tune results to analyse");
    }
    Ok(by_key)
}

/// One comparison per (pair, seed): the forward and the inverse run's mean losses.
fn compare(by_key: &RunsByKey) -> Result<Vec<Comparison>> {
    let mut comparisons = Vec::new();
    for ((k, l, seed), [fwd, inv]) in by_key {
        let (Some(f), Some(i)) = (fwd, inv) else {
            bail!("pair {k}-{l} seed {seed} lacks its forward or its inverse run");
        };
        if f.samples != i.samples {
            bail!(
                "pair {k}-{l} seed {seed}: forward trained on {} samples but inverse on {}",
                f.samples,
                i.samples
            );
        }
        let (fl, il) = (mean(&f.losses), mean(&i.losses));
        comparisons.push(Comparison {
            seed: *seed,
            k: *k,
            l: *l,
            samples: f.samples,
            steps: f.losses.len(),
            inverse_loss: il,
            forward_loss: fl,
            difference: fl - il,
            inverse_lower: il < fl,
            inverse_final_loss: *i.losses.last().unwrap_or(&f64::NAN),
            forward_final_loss: *f.losses.last().unwrap_or(&f64::NAN),
        });
    }
    Ok(comparisons)
}

/// Pair k-l over seeds.
fn summarise_pair(k: usize, l: usize, comparisons: &[Comparison]) -> Result<PairSummary> {
    let cs: Vec<&Comparison> = comparisons
        .iter()
        .filter(|c| (c.k, c.l) == (k, l))
        .collect();
    let ci = |f: fn(&Comparison) -> f64| {
        let xs: Vec<f64> = cs.iter().map(|c| f(c)).collect();
        mean_ci95(&xs).context("a pair without comparisons")
    };
    Ok(PairSummary {
        k,
        l,
        seeds: cs.len(),
        inverse_loss: ci(|c| c.inverse_loss)?,
        forward_loss: ci(|c| c.forward_loss)?,
        difference: ci(|c| c.difference)?,
        inverse_lower: cs.iter().filter(|c| c.inverse_lower).count(),
    })
}

/// The loss curve of one direction of pair k-l: per step, the mean and 95% CI over the
/// seeds that reached it.
fn loss_curve(runs: &[RunLosses], k: usize, l: usize, dir: Direction) -> Curve {
    let per_seed: Vec<&[f64]> = runs
        .iter()
        .filter(|r| (r.k, r.l, r.direction) == (k, l, dir))
        .map(|r| r.losses.as_slice())
        .collect();
    let steps = per_seed.iter().map(|s| s.len()).max().unwrap_or(0);
    let points = (0..steps)
        .filter_map(|s| {
            let xs: Vec<f64> = per_seed.iter().filter_map(|r| r.get(s).copied()).collect();
            let m = mean_ci95(&xs)?;
            let (lo, hi) = m.bounds().unwrap_or((m.mean, m.mean));
            Some((s + 1, m.mean, lo, hi))
        })
        .collect();
    Curve {
        direction: dir,
        points,
    }
}

/// Four significant digits for losses.
fn loss(x: f64) -> String {
    fmt_sig(x, 4)
}

fn ci_cell(m: &MeanCi) -> String {
    if m.n == 1 {
        loss(m.mean)
    } else {
        fmt_ci(m.mean, m.half_width)
    }
}

/// The Table-1-like table: per pair, inverse and forward mean training loss, their
/// difference and whether inverse < forward (mean ± 95% CI and a seed count with several
/// seeds).
pub fn pair_table(res: &ResistResults) -> Result<Table> {
    let mut t = Table::new([
        "pair",
        "inverse loss",
        "forward loss",
        "forward − inverse",
        "inverse < forward",
    ]);
    for p in &res.pairs {
        let lower = if p.seeds == 1 {
            if p.inverse_lower == 1 { "yes" } else { "no" }.to_string()
        } else {
            format!("{}/{} seeds", p.inverse_lower, p.seeds)
        };
        t.push_row([
            format!("θ{} vs θ{}", p.k, p.l),
            ci_cell(&p.inverse_loss),
            ci_cell(&p.forward_loss),
            ci_cell(&p.difference),
            lower,
        ])?;
    }
    Ok(t)
}

/// Per (seed, pair) rows with full precision (`results.csv`).
pub fn comparison_table(res: &ResistResults) -> Result<Table> {
    Table::from_rows(&res.comparisons)
}

/// The verdict in one paragraph of Markdown (used by `report.md`): the counts, then the
/// per-comparison verdict sentence.
pub fn markdown_summary(res: &ResistResults) -> String {
    let verdict = if res.inverse_lower == res.total {
        "Resistance held in every comparison, as in the paper (27 of 27)."
    } else if res.inverse_lower * 2 > res.total {
        "Resistance held in most comparisons but not all."
    } else {
        "Resistance did not hold in most comparisons."
    };
    format!("{}\n\n{verdict}\n", markdown_counts(res))
}

/// The counts, the mean difference and the sign test, without a verdict (`elastica demo`
/// judges over seeds instead, since a seed's comparisons share its checkpoints).
pub fn markdown_counts(res: &ResistResults) -> String {
    let st = &res.sign_test;
    let mut s = format!(
        "Inverse alignment reached a lower mean training loss than forward alignment in \
         **{} of {}** comparisons (pairs × seeds). Mean forward − inverse loss: {}",
        res.inverse_lower,
        res.total,
        fmt_ci(res.difference.mean, res.difference.half_width)
    );
    match res.difference.bounds() {
        Some((lo, hi)) => s += &format!(" (95% CI [{}, {}]).", loss(lo), loss(hi)),
        None => s += " (one comparison: no confidence interval).",
    }
    s += &format!(
        " Sign test (two-sided, exact): {} positive, {} negative, {} ties, p = {}.",
        st.positive,
        st.negative,
        st.ties,
        fmt_p(st.p_value)
    );
    s
}

/// The loss-curve plot of one pair: forward vs inverse, with a 95% band over seeds.
pub fn curve_plot(pair_id: &str, curves: &[Curve], samples: usize) -> LinePlot {
    let (k, l) = pair_id.split_once('-').unwrap_or((pair_id, ""));
    let mut plot = LinePlot::new(
        format!("Training loss, θ{k} vs θ{l} ({samples} samples)"),
        "optimizer step",
        "training loss",
    )
    // Steps are counted; a loss is never negative, so neither is its band.
    .integer_x(true)
    .nonnegative_y(true);
    for c in curves {
        let name = match c.direction {
            Direction::Forward => format!("forward (θ{k} on gen_{l})"),
            Direction::Inverse => format!("inverse (θ{l} on gen_{k})"),
        };
        let pts = c.points.iter().map(|p| (p.0 as f64, p.1)).collect();
        let mut s = Series::new(name, pts);
        if c.points.iter().any(|p| p.3 > p.2) {
            s = s.with_band(c.points.iter().map(|p| (p.0 as f64, p.2, p.3)).collect());
        }
        plot = plot.series(s);
    }
    plot
}

/// Write every result file of a finished run into `run`; returns the report's Markdown.
pub fn write_all(run: &RunDir, res: &ResistResults, header: &str) -> Result<String> {
    run.write_table_csv("results.csv", &comparison_table(res)?)?;
    run.write_jsonl("results.jsonl", &res.comparisons)?;
    run.write_json("results.json", res)?;
    let table = pair_table(res)?;
    run.write_table_csv("pairs.csv", &table)?;
    run.write_text("table.tex", &table.to_latex())?;
    let mut plots = Vec::new();
    for (id, curves) in &res.curves {
        let samples = res
            .comparisons
            .iter()
            .find(|c| format!("{}-{}", c.k, c.l) == *id)
            .map_or(0, |c| c.samples);
        let stem = format!("loss_{id}");
        run.plot(&stem, &curve_plot(id, curves, samples))?;
        plots.push(stem);
    }
    let mut md = String::from("# Resistance: forward vs inverse alignment\n\n");
    md += header;
    md += "\n## Result\n\n";
    md += &markdown_summary(res);
    md += "\n## Mean training loss per pair (cf. the paper's Table 1)\n\n";
    md += &table.to_markdown();
    let seeds = res.pairs.first().map_or(0, |p| p.seeds);
    md += &format!(
        "\nForward: θk fine-tuned on θl's responses (k < l). Inverse: θl fine-tuned on θk's \
         responses. Both directions of a pair use the same sample count, prompts, \
         hyper-parameters and seed. {}\n",
        if seeds > 1 {
            format!("Cells are mean ± 95% CI (Student t) over {seeds} seeds.")
        } else {
            "One seed: no confidence interval.".to_string()
        }
    );
    md += "\n## Loss curves\n\n";
    for stem in &plots {
        md += &format!("![{stem}]({stem}.png)\n");
    }
    md += "\n## Files\n\n- `results.csv`, `results.jsonl`: one row per (seed, pair)\n\
           - `results.json`: everything above, including the curves\n\
           - `pairs.csv`, `table.tex`: the table above\n\
           - `cells/seed<S>-pair<k>-<l>-{forward,inverse}/train_log.jsonl`: per-step losses\n\
           - `cells/seed<S>-gen<k>/gen_<k>.jsonl`: what θk answered; `manifest.json`: the cells\n";
    run.write_text("report.md", &md)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64, k: usize, l: usize, d: Direction, losses: &[f64]) -> RunLosses {
        RunLosses {
            seed,
            k,
            l,
            direction: d,
            samples: 8,
            losses: losses.to_vec(),
        }
    }

    /// Three seeds of pair 1-2 and one of pair 1-3, with figures worked out by hand.
    fn sample() -> Vec<RunLosses> {
        use Direction::*;
        vec![
            // pair 1-2: inverse means 1.0, 2.0, 3.0; forward means 2.0, 4.0, 3.5
            run(1, 1, 2, Inverse, &[1.5, 0.5]),
            run(1, 1, 2, Forward, &[2.0, 2.0]),
            run(2, 1, 2, Inverse, &[2.0, 2.0]),
            run(2, 1, 2, Forward, &[5.0, 3.0]),
            run(3, 1, 2, Inverse, &[3.0, 3.0]),
            run(3, 1, 2, Forward, &[3.5, 3.5]),
            // pair 1-3, seed 1: inverse 2.0 > forward 1.0
            run(1, 1, 3, Inverse, &[2.0, 2.0]),
            run(1, 1, 3, Forward, &[1.0, 1.0]),
        ]
    }

    #[test]
    fn figures_match_hand_computation() {
        let r = analyse(&sample()).unwrap();
        assert_eq!((r.inverse_lower, r.total), (3, 4));
        let p = &r.pairs[0];
        assert_eq!((p.k, p.l, p.seeds, p.inverse_lower), (1, 2, 3, 3));
        // Differences 1.0, 2.0, 0.5: mean 7/6, sample std sqrt(((-1/6)²+(5/6)²+(-2/3)²)/2)
        // = sqrt(7/12); t_{0.975,2} = 4.302652729749464.
        let d = p.difference;
        assert!((d.mean - 7.0 / 6.0).abs() < 1e-12);
        let half = 4.302_652_729_749_464 * (7.0f64 / 12.0).sqrt() / 3f64.sqrt();
        assert!(
            (d.half_width.unwrap() - half).abs() < 1e-9,
            "{d:?} vs {half}"
        );
        // Inverse means 1, 2, 3: std 1, half-width t * 1 / sqrt(3).
        let hw = p.inverse_loss.half_width.unwrap();
        assert!((hw - 4.302_652_729_749_464 / 3f64.sqrt()).abs() < 1e-9);
        // Sign test over 4 comparisons: 3 positive, 1 negative; two-sided p =
        // 2 * P(X <= 1), X ~ Bin(4, 1/2) = 2 * 5/16 = 0.625.
        let st = r.sign_test;
        assert_eq!((st.positive, st.negative, st.ties), (3, 1, 0));
        assert!((st.p_value - 0.625).abs() < 1e-12);
        // Pooled differences 1, 2, 0.5, -1: mean 0.625.
        assert!((r.difference.mean - 0.625).abs() < 1e-12);
        // The single-seed pair has no interval.
        assert_eq!(r.pairs[1].difference.half_width, None);
        // Curves: step 1 of pair 1-2 forward is the mean of 2, 5, 3.5.
        let fwd = &r.curves["1-2"][0];
        assert_eq!(fwd.direction, Direction::Forward);
        assert!((fwd.points[0].1 - 3.5).abs() < 1e-12);
        assert!(fwd.points[0].2 < 3.5 && fwd.points[0].3 > 3.5);
    }

    #[test]
    fn tables_and_summary_render() {
        let r = analyse(&sample()).unwrap();
        let t = pair_table(&r).unwrap();
        assert_eq!(t.rows[0][0], "θ1 vs θ2");
        assert_eq!(t.rows[0][4], "3/3 seeds");
        assert_eq!(t.rows[1][4], "no");
        assert_eq!(t.rows[1][1], "2.000");
        assert!(t.rows[0][3].starts_with("1.2 ± 1.9"), "{}", t.rows[0][3]);
        let csv = comparison_table(&r).unwrap().to_csv();
        assert_eq!(csv.lines().count(), 5);
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("1,1,2,8,2,1,2,1,true"),
            "{csv}"
        );
        let md = markdown_summary(&r);
        assert!(
            md.contains("**3 of 4**") && md.contains("p = 0.625"),
            "{md}"
        );
        assert!(md.contains("most comparisons but not all"), "{md}");
    }

    #[test]
    fn incomplete_or_mismatched_runs_are_errors() {
        let mut runs = sample();
        runs.pop();
        let e = format!("{:#}", analyse(&runs).unwrap_err());
        assert!(e.contains("pair 1-3 seed 1 lacks"), "{e}");
        let mut runs = sample();
        runs[0].samples = 7;
        assert!(format!("{:#}", analyse(&runs).unwrap_err()).contains("7"));
        let mut runs = sample();
        runs[0].losses[1] = f64::NAN;
        assert!(format!("{:#}", analyse(&runs).unwrap_err()).contains("diverged"));
        assert!(analyse(&[]).is_err());
    }

    #[test]
    fn write_all_writes_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let r = analyse(&sample()).unwrap();
        let md = write_all(&run, &r, "header\n").unwrap();
        assert!(md.contains("| θ1 vs θ2 |"));
        for f in [
            "results.csv",
            "results.jsonl",
            "results.json",
            "pairs.csv",
            "table.tex",
            "report.md",
            "loss_1-2.png",
            "loss_1-2.svg",
            "loss_1-3.png",
            "loss_1-3.svg",
        ] {
            assert!(run.path(f).exists(), "{f} missing");
        }
    }
}
