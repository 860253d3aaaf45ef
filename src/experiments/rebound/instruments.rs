//! The rebound report's instruments beyond score and KL (issue 22), aggregated over seeds:
//! - **capability kept**: mean NLL of the held-out `[capability]` set (base, aligned, each n-);
//! - **coherence**: mean NLL of the sampled responses under the base model;
//! - **refusal rate**: share of responses matching the versioned refusal keyword list;
//! - **KL by response position**, to the base model and to the aligned model;
//! - **weight-space elasticity**: fraction of the alignment update undone, cos(Δp, −Δa),
//!   ‖Δp‖/‖Δa‖, in total, per layer and per projection kind (`experiments::weight_space`).
//!
//! Writes `kl_by_position.csv`, `weight_space.csv`, a report section and one plot per
//! measured instrument (`capability_vs_negatives`, `coherence_vs_negatives`,
//! `refusal_vs_negatives`, `weight_space_vs_negatives`, `kl_by_position`,
//! `kl_to_aligned_by_position`, suffixed `_<model>` with several models).

use super::cells::EvalOutput;
use super::config::ReboundConfig;
use super::curves::{self, ci};
use super::outputs::Outputs;
use super::plan::ResolvedModel;
use crate::experiments::kl::PositionKl;
use crate::experiments::weight_space::Movement;
use crate::report::stats::{mean_ci95, MeanCi};
use crate::report::{LinePlot, RunDir, Series, Table};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Response positions shown in report.md (the CSV has all).
const POSITIONS_SHOWN: usize = 16;

/// The scalar instruments of one model (one seed), or their seed aggregates.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scalars<T> {
    pub capability_nll: Option<T>,
    pub coherence_nll: Option<T>,
    pub refusal_rate: Option<T>,
    pub kl_to_aligned: Option<T>,
    pub fraction_undone: Option<T>,
    pub cosine: Option<T>,
    pub norm_ratio: Option<T>,
}

/// The named scalar instruments, in report order: (key, title, y label).
const SCALARS: [(&str, &str, &str); 7] = [
    (
        "capability",
        "Capability kept: NLL of the held-out general set",
        "mean NLL per token (lower = more kept)",
    ),
    (
        "coherence",
        "Coherence: NLL of the samples under the base model",
        "mean NLL per response token",
    ),
    ("refusal", "Refusal rate", "share of responses that refuse"),
    (
        "kl_to_aligned",
        "KL to the aligned model",
        "KL(model || aligned) per token",
    ),
    (
        "weight_space",
        "Weight space: fraction of the alignment update undone",
        "−⟨Δp, Δa⟩ / ‖Δa‖²",
    ),
    ("cosine", "Weight space: cos(Δp, −Δa)", "cosine"),
    ("norm_ratio", "Weight space: ‖Δp‖ / ‖Δa‖", "norm ratio"),
];

impl<T: Copy> Scalars<T> {
    fn get(&self, key: &str) -> Option<T> {
        match key {
            "capability" => self.capability_nll,
            "coherence" => self.coherence_nll,
            "refusal" => self.refusal_rate,
            "kl_to_aligned" => self.kl_to_aligned,
            "weight_space" => self.fraction_undone,
            "cosine" => self.cosine,
            _ => self.norm_ratio,
        }
    }
}

/// The instruments of one evaluated model (one cell).
pub fn scalars(o: &EvalOutput) -> Scalars<f64> {
    let w = o.weight_space.as_ref().map(|w| &w.total);
    Scalars {
        capability_nll: o.capability.map(|c| c.mean_nll),
        coherence_nll: o.eval.coherence_nll,
        refusal_rate: o.eval.refusal_rate.map(|r| r.mean),
        kl_to_aligned: o.eval.kl_to_aligned,
        fraction_undone: w.and_then(|m| m.fraction_undone),
        cosine: w.and_then(|m| m.cosine),
        norm_ratio: w.and_then(|m| m.norm_ratio),
    }
}

fn aggregate(outs: &[&EvalOutput]) -> Scalars<MeanCi> {
    let all: Vec<Scalars<f64>> = outs.iter().map(|o| scalars(o)).collect();
    let ci = |key: &str| mean_ci95(&all.iter().filter_map(|s| s.get(key)).collect::<Vec<_>>());
    Scalars {
        capability_nll: ci("capability"),
        coherence_nll: ci("coherence"),
        refusal_rate: ci("refusal"),
        kl_to_aligned: ci("kl_to_aligned"),
        fraction_undone: ci("weight_space"),
        cosine: ci("cosine"),
        norm_ratio: ci("norm_ratio"),
    }
}

/// The scalar instruments of one (n+, n-) cell over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AtPoint {
    pub scalars: Scalars<MeanCi>,
}

/// One (n+, n-) cell aggregated over seeds.
pub type Point = curves::Point<AtPoint>;

/// The scalar instruments against n- for one n+.
pub type Curve = curves::Curve<AtPoint>;

/// KL by response position of one (n+, n-) against one reference, mean over seeds of the
/// per-seed (prompt-averaged) value at each position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionProfile {
    pub n_positive: usize,
    pub n_negative: usize,
    /// `base` or `aligned`.
    pub reference: String,
    /// `(position, KL over seeds)`, position 1 = the first response token.
    pub kl: Vec<(usize, MeanCi)>,
}

/// Weight-space numbers of one group of tensors, over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    pub n_positive: usize,
    pub n_negative: usize,
    /// `total`, `layer` or `kind`.
    pub by: String,
    pub group: String,
    pub fraction_undone: Option<MeanCi>,
    pub cosine: Option<MeanCi>,
    pub norm_ratio: Option<MeanCi>,
}

/// Everything the instruments measured for one base model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInstruments {
    pub name: String,
    /// The pre-trained model (its coherence is its own NLL of its samples).
    pub base: Scalars<MeanCi>,
    pub curves: Vec<Curve>,
    pub positions: Vec<PositionProfile>,
    pub weight_groups: Vec<GroupRow>,
    /// Version of the refusal keyword list, when refusals were counted.
    pub refusal_keywords: Option<String>,
}

/// Aggregate the instruments of every model from the finished cells' outputs.
pub fn analyze(
    cfg: &ReboundConfig,
    outputs: &Outputs,
    models: &[ResolvedModel],
) -> Vec<ModelInstruments> {
    let mut out = Vec::new();
    for m in models {
        let bases: Vec<&EvalOutput> = cfg
            .seeds
            .iter()
            .filter_map(|&s| outputs.base(&m.name, s))
            .collect();
        let mut curves = Vec::new();
        let mut positions = Vec::new();
        let mut weight_groups = Vec::new();
        let mut refusal_keywords = bases.iter().find_map(|o| o.eval.refusal_keywords.clone());
        for &np in &cfg.n_positive {
            let mut points = Vec::new();
            for &nn in &cfg.n_negative {
                let outs = outputs.perturbed_over_seeds(&m.name, np, nn, &cfg.seeds);
                refusal_keywords = refusal_keywords
                    .or_else(|| outs.iter().find_map(|o| o.eval.refusal_keywords.clone()));
                points.push(Point {
                    n_negative: nn,
                    at: AtPoint {
                        scalars: aggregate(&outs),
                    },
                });
                for (reference, pick) in [
                    ("base", kl_to_base as fn(&EvalOutput) -> &[PositionKl]),
                    ("aligned", kl_to_aligned),
                ] {
                    let kl = position_means(&outs, pick);
                    if !kl.is_empty() {
                        positions.push(PositionProfile {
                            n_positive: np,
                            n_negative: nn,
                            reference: reference.to_string(),
                            kl,
                        });
                    }
                }
                weight_groups.extend(group_rows(np, nn, &outs));
            }
            curves.push(Curve {
                n_positive: np,
                points,
            });
        }
        out.push(ModelInstruments {
            name: m.name.clone(),
            base: aggregate(&bases),
            curves,
            positions,
            weight_groups,
            refusal_keywords,
        });
    }
    out
}

/// KL to the base model by response position.
fn kl_to_base(o: &EvalOutput) -> &[PositionKl] {
    &o.eval.kl_by_position
}

/// KL to the aligned model by response position.
fn kl_to_aligned(o: &EvalOutput) -> &[PositionKl] {
    &o.eval.kl_to_aligned_by_position
}

/// Per position, the mean over the seeds that reach it.
fn position_means(
    outs: &[&EvalOutput],
    pick: fn(&EvalOutput) -> &[PositionKl],
) -> Vec<(usize, MeanCi)> {
    let mut at: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for o in outs {
        for p in pick(o) {
            at.entry(p.position).or_default().push(p.mean);
        }
    }
    at.into_iter()
        .filter_map(|(p, xs)| mean_ci95(&xs).map(|c| (p, c)))
        .collect()
}

fn group_rows(np: usize, nn: usize, outs: &[&EvalOutput]) -> Vec<GroupRow> {
    let mut groups: BTreeMap<(u8, String), Vec<&Movement>> = BTreeMap::new();
    let mut order: Vec<(u8, String)> = Vec::new();
    for o in outs {
        let Some(w) = &o.weight_space else { continue };
        let all = std::iter::once((0u8, &w.total))
            .chain(w.layers.iter().map(|m| (1u8, m)))
            .chain(w.kinds.iter().map(|m| (2u8, m)));
        for (by, m) in all {
            let key = (by, m.group.clone());
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(m);
        }
    }
    order
        .into_iter()
        .map(|key| {
            let ms = &groups[&key];
            let ci = |f: fn(&Movement) -> Option<f64>| {
                mean_ci95(&ms.iter().filter_map(|m| f(m)).collect::<Vec<_>>())
            };
            GroupRow {
                n_positive: np,
                n_negative: nn,
                by: ["total", "layer", "kind"][key.0 as usize].to_string(),
                group: key.1,
                fraction_undone: ci(|m| m.fraction_undone),
                cosine: ci(|m| m.cosine),
                norm_ratio: ci(|m| m.norm_ratio),
            }
        })
        .collect()
}

/// One row of `kl_by_position.csv`.
#[derive(Serialize, Deserialize)]
struct PositionCsvRow {
    model: String,
    n_positive: usize,
    n_negative: usize,
    reference: String,
    position: usize,
    kl: f64,
    kl_ci_low: Option<f64>,
    kl_ci_high: Option<f64>,
    seeds: usize,
}

/// `kl_by_position.csv`: one row per (model, n+, n-, reference, position).
pub fn positions_table(all: &[ModelInstruments]) -> Result<Table> {
    let mut rows = Vec::new();
    for m in all {
        for p in &m.positions {
            for (pos, c) in &p.kl {
                rows.push(PositionCsvRow {
                    model: m.name.clone(),
                    n_positive: p.n_positive,
                    n_negative: p.n_negative,
                    reference: p.reference.clone(),
                    position: *pos,
                    kl: c.mean,
                    kl_ci_low: c.bounds().map(|b| b.0),
                    kl_ci_high: c.bounds().map(|b| b.1),
                    seeds: c.n,
                });
            }
        }
    }
    Table::from_rows(&rows)
}

/// One row of `weight_space.csv`: the means over seeds.
#[derive(Serialize, Deserialize)]
struct GroupCsvRow {
    model: String,
    n_positive: usize,
    n_negative: usize,
    by: String,
    group: String,
    fraction_undone: Option<f64>,
    cosine: Option<f64>,
    norm_ratio: Option<f64>,
    seeds: usize,
}

/// `weight_space.csv`: one row per (model, n+, n-, group).
pub fn groups_table(all: &[ModelInstruments]) -> Result<Table> {
    let mut rows = Vec::new();
    for m in all {
        for g in &m.weight_groups {
            let mean = |c: Option<MeanCi>| c.map(|c| c.mean);
            rows.push(GroupCsvRow {
                model: m.name.clone(),
                n_positive: g.n_positive,
                n_negative: g.n_negative,
                by: g.by.clone(),
                group: g.group.clone(),
                fraction_undone: mean(g.fraction_undone),
                cosine: mean(g.cosine),
                norm_ratio: mean(g.norm_ratio),
                seeds: g.fraction_undone.map_or(0, |c| c.n),
            });
        }
    }
    Table::from_rows(&rows)
}

/// Whether any cell measured this scalar.
fn measured(m: &ModelInstruments, key: &str) -> bool {
    m.base.get(key).is_some()
        || m.curves
            .iter()
            .any(|c| c.points.iter().any(|p| p.at.scalars.get(key).is_some()))
}

/// A scalar against n-: rows n-, one column per n+ (and the base model's value first).
fn scalar_table(m: &ModelInstruments, key: &str) -> Result<Table> {
    let base = m.base.get(key).is_some().then_some(m.base.get(key));
    curves::table(&m.curves, base, |p| p.scalars.get(key))
}

/// KL by position for the largest n+: rows positions, one column per n-.
fn position_table(m: &ModelInstruments, reference: &str) -> Result<Option<Table>> {
    let Some(np) = m.curves.last().map(|c| c.n_positive) else {
        return Ok(None);
    };
    let profiles: Vec<&PositionProfile> = m
        .positions
        .iter()
        .filter(|p| p.n_positive == np && p.reference == reference)
        .collect();
    let longest = profiles.iter().map(|p| p.kl.len()).max().unwrap_or(0);
    if longest == 0 {
        return Ok(None);
    }
    let mut head = vec![format!("position (n+ = {np})")];
    head.extend(profiles.iter().map(|p| format!("n− = {}", p.n_negative)));
    let mut t = Table::new(head);
    for pos in 1..=longest.min(POSITIONS_SHOWN) {
        let mut r = vec![pos.to_string()];
        r.extend(
            profiles
                .iter()
                .map(|p| ci(p.kl.iter().find(|(q, _)| *q == pos).map(|(_, c)| *c))),
        );
        t.push_row(r)?;
    }
    Ok(Some(t))
}

/// Per layer and per projection kind, for the largest n+ and the largest n- measured.
fn groups_md(m: &ModelInstruments) -> Result<Option<(usize, usize, Table)>> {
    let Some(last) = m
        .weight_groups
        .iter()
        .filter(|g| g.by == "total")
        .max_by_key(|g| (g.n_positive, g.n_negative))
    else {
        return Ok(None);
    };
    let (np, nn) = (last.n_positive, last.n_negative);
    let mut t = Table::new(["group", "fraction undone", "cos(Δp, −Δa)", "‖Δp‖/‖Δa‖"]);
    for g in m
        .weight_groups
        .iter()
        .filter(|g| (g.n_positive, g.n_negative) == (np, nn))
    {
        let name = match g.by.as_str() {
            "layer" if g.group != crate::experiments::weight_space::OTHER => {
                format!("layer {}", g.group)
            }
            "layer" => "outside the layers".to_string(),
            _ => g.group.clone(),
        };
        t.push_row([name, ci(g.fraction_undone), ci(g.cosine), ci(g.norm_ratio)])?;
    }
    Ok(Some((np, nn, t)))
}

fn scalar_plot(
    m: &ModelInstruments,
    key: &str,
    title: &str,
    ylab: &str,
    of: &str,
) -> Option<LinePlot> {
    let plot = curves::plot(format!("{title}{of}"), ylab, &m.curves, |p| {
        p.scalars.get(key)
    })?;
    Some(match (key, m.base.get(key)) {
        ("weight_space", _) => plot.reference(1.0, "back to the base model's projection"),
        (_, Some(b)) => plot.reference(b.mean, "pre-trained model"),
        _ => plot,
    })
}

fn position_plot(m: &ModelInstruments, reference: &str, of: &str) -> Option<LinePlot> {
    let np = m.curves.last()?.n_positive;
    let mut plot = LinePlot::new(
        format!("KL to the {reference} model by response position, n+ = {np}{of}"),
        "response position",
        format!("KL(model || {reference}) at the position"),
    );
    let mut any = false;
    for p in m
        .positions
        .iter()
        .filter(|p| p.n_positive == np && p.reference == reference)
    {
        let pts: Vec<(f64, f64)> = p.kl.iter().map(|(q, c)| (*q as f64, c.mean)).collect();
        any |= !pts.is_empty();
        let name = if p.n_negative == 0 {
            "aligned (n− = 0)".to_string()
        } else {
            format!("n− = {}", p.n_negative)
        };
        plot = plot.series(Series::new(name, pts).without_markers());
    }
    any.then_some(plot)
}

/// The report section of one model, and the plots it shows (written into `run`).
pub fn section(
    run: &RunDir,
    m: &ModelInstruments,
    suffix: &str,
    h: &str,
    several: bool,
) -> Result<(String, Vec<PathBuf>)> {
    let of = if several {
        format!(" ({})", m.name)
    } else {
        String::new()
    };
    let mut md = String::new();
    let mut files = Vec::new();
    let mut figs = Vec::new();
    for (key, title, ylab) in SCALARS {
        if !measured(m, key) {
            continue;
        }
        md += &format!("\n{h} {title}\n\n{}", scalar_table(m, key)?.to_markdown());
        if key == "refusal" {
            if let Some(v) = &m.refusal_keywords {
                md += &format!(
                    "\nRefusal keyword list: {v} (the phrases are listed at the end of this \
                     report).\n"
                );
            }
        }
        let stem = match key {
            "cosine" | "norm_ratio" => continue,
            "weight_space" => format!("weight_space_vs_negatives{suffix}"),
            k => format!("{k}_vs_negatives{suffix}"),
        };
        if let Some(p) = scalar_plot(m, key, title, ylab, &of) {
            let (png, svg) = run.plot(&stem, &p)?;
            files.extend([png, svg]);
            figs.push(stem);
        }
    }
    if let Some((np, nn, t)) = groups_md(m)? {
        md += &format!(
            "\n{h} Weight space by layer and projection (n+ = {np}, n− = {nn})\n\nΔa = θ_aligned − \
             θ_base, Δp = θ_perturbed − θ_aligned; every (n+, n−) is in `weight_space.csv`.\n\n{}",
            t.to_markdown()
        );
    }
    for (reference, stem) in [
        ("base", format!("kl_by_position{suffix}")),
        ("aligned", format!("kl_to_aligned_by_position{suffix}")),
    ] {
        if let Some(t) = position_table(m, reference)? {
            md += &format!(
                "\n{h} KL(model ‖ {reference}) by response position\n\nMean over prompts \
                 reaching each position, then over seeds; the first {POSITIONS_SHOWN} \
                 positions (all in `kl_by_position.csv`).\n\n{}",
                t.to_markdown()
            );
        }
        if let Some(p) = position_plot(m, reference, &of) {
            let (png, svg) = run.plot(&stem, &p)?;
            files.extend([png, svg]);
            figs.push(stem);
        }
    }
    if !figs.is_empty() {
        md.push('\n');
        for f in figs {
            md += &format!("![{f}]({f}.png)\n");
        }
    }
    Ok((md, files))
}

/// Definitions of the instruments (for the report's Definitions list).
pub const DEFINITIONS: &str = "\
- Capability kept: mean NLL per token of the held-out `[capability]` set under the model \
(lower = more of the general capability kept).\n\
- Coherence: mean NLL of the sampled response tokens under the base model (for the base \
model, its own samples); a rise means the samples read less like the base model's language.\n\
- Refusal rate: share of responses containing a phrase of the refusal keyword list \
(versioned; printed below).\n\
- KL by position: KL(model ‖ base) (and ‖ aligned) at response position 1, 2, ..., averaged \
over the prompts whose response reaches that position, then over seeds.\n\
- Weight space: with Δa = θ_aligned − θ_base and Δp = θ_perturbed − θ_aligned, the fraction \
of the alignment update undone −⟨Δp, Δa⟩/‖Δa‖² (1 = back to the base along Δa), \
cos(Δp, −Δa), and ‖Δp‖/‖Δa‖; in total, per layer and per projection kind.\n";
