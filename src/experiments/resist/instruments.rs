//! The resistance experiment's instruments beyond the training losses (issue 22), read back
//! from the finished cells and appended to `report.md`:
//! - per checkpoint θk (generation cells): KL(θk ‖ θ0) on its answers, in total and by
//!   response position, the answers' coherence (mean NLL under θ0) and θk's capability kept
//!   (mean NLL of the `[capability]` set);
//! - per pair fine-tune: the share of the weight-space gap to the checkpoint whose answers
//!   it trained on that the fine-tune closed (`weight_space` with Δa = θ_start − θ_data,
//!   so its "fraction undone" is the gap closed), with the cosine and the norm ratio.
//!   Resistance in weight space means the inverse run closes more of its gap.
//!
//! Files: `checkpoints.csv`, `weight_space.csv`, `kl_by_position_checkpoints.{png,svg}`,
//! `gap_closed.{png,svg}`.

use super::cells::{GenerateOutput, GenerateParams, PairOutput, GENERATE, PAIR};
use super::plan::Direction;
use crate::grid::rundir::Grid;
use crate::report::stats::{mean_ci95, MeanCi};
use crate::report::{fmt_ci, LinePlot, RunDir, Series, Table};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Response positions shown in report.md.
const POSITIONS_SHOWN: usize = 16;

fn ci(c: Option<MeanCi>) -> String {
    c.map_or("—".to_string(), |c| fmt_ci(c.mean, c.half_width))
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// What the finished cells measured: the per-seed rows of the two CSV files and their
/// values grouped for the seed means.
struct Measured {
    /// `checkpoints.csv`: one row per (seed, generation cell).
    checkpoints: Table,
    /// `weight_space.csv`: one row per (seed, pair fine-tune).
    pairs: Table,
    /// k -> per-seed values.
    kl: BTreeMap<usize, Vec<f64>>,
    coh: BTreeMap<usize, Vec<f64>>,
    cap: BTreeMap<usize, Vec<f64>>,
    /// k -> response position -> per-seed values.
    pos: BTreeMap<usize, BTreeMap<usize, Vec<f64>>>,
    /// (k, l) -> [forward, inverse] gap closed per seed.
    gap: BTreeMap<(usize, usize), [Vec<f64>; 2]>,
}

impl Measured {
    fn new() -> Measured {
        Measured {
            checkpoints: Table::new(["seed", "k", "kl_to_base", "coherence_nll", "capability_nll"]),
            pairs: Table::new([
                "seed",
                "k",
                "l",
                "direction",
                "gap_closed",
                "cosine",
                "norm_ratio",
            ]),
            kl: BTreeMap::new(),
            coh: BTreeMap::new(),
            cap: BTreeMap::new(),
            pos: BTreeMap::new(),
            gap: BTreeMap::new(),
        }
    }

    /// Read every finished generation and pair cell of `grid`.
    fn read(grid: &Grid) -> Result<Measured> {
        let mut all = Measured::new();
        for (i, c) in grid.manifest().cells.iter().enumerate() {
            let Some(r) = grid.result(i)? else { continue };
            if c.kind == GENERATE {
                let p: GenerateParams = serde_json::from_value(c.params.clone())
                    .with_context(|| format!("cell {}: bad parameters", c.id))?;
                all.add_checkpoint(&p, &r.output_as()?)?;
            } else if c.kind == PAIR {
                all.add_pair(&r.output_as()?)?;
            }
        }
        Ok(all)
    }

    fn add_checkpoint(&mut self, p: &GenerateParams, o: &GenerateOutput) -> Result<()> {
        if o.measures.is_none() && o.capability.is_none() {
            return Ok(());
        }
        let m = o.measures.as_ref();
        let capability = o.capability.map(|c| c.mean_nll);
        self.checkpoints.push_row([
            p.generate.seed.to_string(),
            p.k.to_string(),
            opt(m.map(|m| m.kl_to_base)),
            opt(m.and_then(|m| m.coherence_nll)),
            opt(capability),
        ])?;
        if let Some(m) = m {
            self.kl.entry(p.k).or_default().push(m.kl_to_base);
            self.coh.entry(p.k).or_default().extend(m.coherence_nll);
            let pos = self.pos.entry(p.k).or_default();
            for q in &m.kl_by_position {
                pos.entry(q.position).or_default().push(q.mean);
            }
        }
        self.cap.entry(p.k).or_default().extend(capability);
        Ok(())
    }

    fn add_pair(&mut self, o: &PairOutput) -> Result<()> {
        let Some(w) = &o.weight_space else {
            return Ok(());
        };
        let t = &w.total;
        self.pairs.push_row([
            o.seed.to_string(),
            o.k.to_string(),
            o.l.to_string(),
            o.direction.name().to_string(),
            opt(t.fraction_undone),
            opt(t.cosine),
            opt(t.norm_ratio),
        ])?;
        self.gap.entry((o.k, o.l)).or_default()[o.direction as usize].extend(t.fraction_undone);
        Ok(())
    }
}

/// Write the files and append the section to `report.md`; nothing when no instrument was
/// measured.
pub fn write(run: &RunDir, grid: &Grid) -> Result<()> {
    let all = Measured::read(grid)?;
    if all.checkpoints.rows.is_empty() && all.pairs.rows.is_empty() {
        return Ok(());
    }
    let mut md = String::from("\n## Instruments\n");
    if !all.checkpoints.rows.is_empty() {
        run.write_table_csv("checkpoints.csv", &all.checkpoints)?;
        md += &checkpoint_section(&all)?;
    }
    md += &position_section(run, &all.pos)?;
    if !all.pairs.rows.is_empty() {
        run.write_table_csv("weight_space.csv", &all.pairs)?;
        md += &gap_section(run, &all.gap)?;
    }
    let path = run.path("report.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text += &md;
    run.write_text("report.md", &text)?;
    Ok(())
}

/// Per checkpoint, the seed means of KL to θ0, coherence and capability.
fn checkpoint_section(all: &Measured) -> Result<String> {
    let mut t = Table::new([
        "checkpoint",
        "KL(θk ‖ θ0) on its answers",
        "coherence (NLL under θ0)",
        "capability NLL",
    ]);
    let ks: BTreeSet<usize> = all.kl.keys().chain(all.cap.keys()).copied().collect();
    for k in &ks {
        let m = |map: &BTreeMap<usize, Vec<f64>>| map.get(k).and_then(|v| mean_ci95(v));
        t.push_row([
            format!("θ{k}"),
            ci(m(&all.kl)),
            ci(m(&all.coh)),
            ci(m(&all.cap)),
        ])?;
    }
    Ok(format!(
        "\nPer checkpoint, mean over seeds (`checkpoints.csv` has each seed). Coherence is \
         the mean NLL of θk's answer tokens under θ0; capability the mean NLL of the \
         held-out `[capability]` set.\n\n{}",
        t.to_markdown()
    ))
}

/// KL to θ0 by response position: a table of the first positions and a plot of all;
/// nothing when no checkpoint measured it.
fn position_section(
    run: &RunDir,
    pos: &BTreeMap<usize, BTreeMap<usize, Vec<f64>>>,
) -> Result<String> {
    let with_pos: Vec<(&usize, &BTreeMap<usize, Vec<f64>>)> =
        pos.iter().filter(|(_, v)| !v.is_empty()).collect();
    if with_pos.is_empty() {
        return Ok(String::new());
    }
    let mut head = vec!["position".to_string()];
    head.extend(with_pos.iter().map(|(k, _)| format!("θ{k}")));
    let mut t = Table::new(head);
    let longest = with_pos.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    for q in 1..=longest.min(POSITIONS_SHOWN) {
        let mut row = vec![q.to_string()];
        row.extend(
            with_pos
                .iter()
                .map(|(_, v)| ci(v.get(&q).and_then(|x| mean_ci95(x)))),
        );
        t.push_row(row)?;
    }
    let mut plot = LinePlot::new(
        "KL to the base model by response position",
        "response position",
        "KL(θk || θ0) at the position",
    );
    for (k, v) in &with_pos {
        let pts = v
            .iter()
            .filter_map(|(q, x)| mean_ci95(x).map(|c| (*q as f64, c.mean)))
            .collect();
        plot = plot.series(Series::new(format!("θ{k}"), pts).without_markers());
    }
    run.plot("kl_by_position_checkpoints", &plot)?;
    Ok(format!(
        "\n### KL(θk ‖ θ0) by response position\n\nMean over the answers reaching each \
         position, then over seeds.\n\n{}\n![KL by position](kl_by_position_checkpoints.png)\n",
        t.to_markdown()
    ))
}

/// Per pair, the seed means of the weight-space gap each direction closed: a table and a
/// plot.
fn gap_section(run: &RunDir, gap: &BTreeMap<(usize, usize), [Vec<f64>; 2]>) -> Result<String> {
    let mut t = Table::new([
        "pair",
        "forward: gap to θl closed",
        "inverse: gap to θk closed",
    ]);
    let mut fwd = Vec::new();
    let mut inv = Vec::new();
    for (n, ((k, l), v)) in gap.iter().enumerate() {
        let f = mean_ci95(&v[Direction::Forward as usize]);
        let i = mean_ci95(&v[Direction::Inverse as usize]);
        t.push_row([format!("θ{k} vs θ{l}"), ci(f), ci(i)])?;
        let x = (n + 1) as f64;
        fwd.extend(f.map(|c| (x, c.mean)));
        inv.extend(i.map(|c| (x, c.mean)));
    }
    let plot = LinePlot::new(
        "Weight space: share of the gap closed, per pair (table order)",
        "pair",
        "−⟨Δp, Δa⟩ / ‖Δa‖²",
    )
    .series(Series::new("forward", fwd))
    .series(Series::new("inverse", inv));
    run.plot("gap_closed", &plot)?;
    Ok(format!(
        "\n### Weight space: share of the gap closed\n\nFor a fine-tune from θ_start on \
         the answers of θ_data: −⟨Δp, Δa⟩/‖Δa‖² with Δa = θ_start − θ_data and Δp its \
         update (1 = reached θ_data's projection). Resistance in weight space: the \
         inverse run closes more of its gap. Per seed, cosine and norm ratio in \
         `weight_space.csv`.\n\n{}\n![gap closed](gap_closed.png)\n",
        t.to_markdown()
    ))
}
