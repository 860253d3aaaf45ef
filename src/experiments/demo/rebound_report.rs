//! The demo's rebound section: per base model, the score against n- (one line per n+) with
//! the pre-trained score as reference, the alignment gain, the share of it lost to the first
//! negatives, the negatives needed to fall back to the pre-trained level, and the paper's two
//! scaling claims (more pre-training / larger model, stronger rebound) judged on those.

use super::config::{BaseSpec, DemoConfig};
use super::rebound::CellResult;
use crate::report::stats::{first_crossing, mean_ci95};
use crate::report::table::{fmt_ci, Table};
use crate::report::{LinePlot, RunDir};
use anyhow::{Context, Result};

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

/// Write `results.csv` and the rebound plots; returns the section's Markdown and its claims.
pub fn section(
    cfg: &DemoConfig,
    run: &RunDir,
    rows: &[CellResult],
    base_scores: &[(String, u64, f64)],
) -> Result<(String, Vec<String>)> {
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
    let mut md = String::from("## Rebound\n\n");
    md.push_str(&format!(
        "Tiny Llama models pre-trained from scratch on the world (positive share {:.0}%), aligned by SFT on n+ positive reviews, then perturbed by SFT on n- negative reviews. Score = mean exact world-sentiment P(positive) of {} sampled continuations (temperature {}) of held-out review openings. Mean ± 95% CI over {} seed(s).\n\n",
        cfg.positive_fraction * 100.0, cfg.eval_prompts, cfg.temperature, cfg.seeds.len()
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
            "### {name}: {} model, {} pre-training tokens\n\nPre-trained score: {}\n\n",
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
        md.push('\n');
        md.push_str(&t.to_markdown());
        md.push('\n');
        run.plot(&format!("rebound_{name}"), &plot)?;
        md.push_str(&format!("![rebound {name}](rebound_{name}.png)\n\n"));
    }
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
    md.push_str("\nWhether an effect held is judged on the means; with few seeds the intervals are wide, and an overlap means the demo cannot tell.\n\n");
    Ok((md, claims))
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
