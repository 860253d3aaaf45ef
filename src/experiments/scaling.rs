//! The scaling study: the rebound grid over several base models (sizes, or one
//! architecture at several pre-training token counts), and the rebound strength plotted
//! against the models' `x`. Rebound strength is defined in `rebound::report`; the section
//! added here has one row per (model, n+), a least-squares slope of R against x (against
//! log10 x on a log axis) with its 95% CI per n+, and the plot `strength_vs_x`.

use super::rebound::config::ReboundConfig;
use super::rebound::report::Analysis;
use super::rebound::{collect_with, execute, Outcome};
use crate::grid::config::RunOptions;
use crate::grid::rundir::Grid;
use crate::report::stats::linear_fit;
use crate::report::{fmt_ci, fmt_sig, LinePlot, RunDir, Series, Table};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Plan, execute and report a scaling study in `out` (`None`: submitted without waiting).
pub fn run(cfg: &ReboundConfig, out: &Path, opts: RunOptions) -> Result<Option<Outcome>> {
    cfg.validate_scaling()?;
    execute(cfg, out, "scaling", &title(cfg), opts, |run, a| {
        section(cfg, run, a)
    })
}

fn title(cfg: &ReboundConfig) -> String {
    format!("Scaling study: rebound strength vs {}", cfg.x_label)
}

/// `elastica collect` on a scaling run.
pub fn collect(grid: &Grid) -> Result<(Analysis, Vec<PathBuf>)> {
    let path = grid.run_dir().join(super::rebound::plan::CONFIG_FILE);
    let cfg = ReboundConfig::from_file(&path)?;
    collect_with(grid, &title(&cfg), section)
}

/// Write `scaling.csv` and the plot, and return the report section.
fn section(cfg: &ReboundConfig, run: &RunDir, a: &Analysis) -> Result<String> {
    let mut t = Table::new([
        "model".to_string(),
        cfg.x_label.clone(),
        "n+".to_string(),
        "alignment gain G".to_string(),
        "rebound strength R".to_string(),
    ]);
    let mut csv = Table::new([
        "model",
        "x",
        "n_positive",
        "gain",
        "gain_ci_half",
        "strength",
        "strength_ci_half",
        "seeds",
    ]);
    // n+ -> (x, R mean, R CI) over models.
    let mut by_np: BTreeMap<usize, Vec<(f64, f64, Option<f64>)>> = BTreeMap::new();
    for m in &a.models {
        let x = m.x.unwrap_or(f64::NAN);
        for r in &m.strength {
            let show = |c: Option<crate::report::MeanCi>| {
                c.map_or("—".into(), |c| fmt_ci(c.mean, c.half_width))
            };
            t.push_row([
                m.name.clone(),
                fmt_sig(x, 4),
                r.n_positive.to_string(),
                show(r.gain),
                crate::experiments::rebound::report::strength_cell(r),
            ])?;
            let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
            csv.push_row([
                m.name.clone(),
                x.to_string(),
                r.n_positive.to_string(),
                num(r.gain.map(|g| g.mean)),
                num(r.gain.and_then(|g| g.half_width)),
                num(r.strength.map(|s| s.mean)),
                num(r.strength.and_then(|s| s.half_width)),
                r.strength.map_or(0, |s| s.n).to_string(),
            ])?;
            if let Some(s) = r.strength {
                by_np
                    .entry(r.n_positive)
                    .or_default()
                    .push((x, s.mean, s.half_width));
            }
        }
    }
    run.write_table_csv("scaling.csv", &csv)?;
    let axis = if cfg.x_log {
        format!("log10 {}", cfg.x_label)
    } else {
        cfg.x_label.clone()
    };
    let mut slopes = Table::new([
        "n+".to_string(),
        format!("slope of R per unit {axis}"),
        "models".to_string(),
    ]);
    let mut plot = LinePlot::new(
        format!("Rebound strength vs {}", cfg.x_label),
        cfg.x_label.clone(),
        "rebound strength R",
    )
    .log_x(cfg.x_log);
    for (np, mut pts) in by_np {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let xs: Vec<f64> = pts
            .iter()
            .map(|p| if cfg.x_log { p.0.log10() } else { p.0 })
            .collect();
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let slope = match linear_fit(&xs, &ys) {
            Ok(f) => fmt_ci(f.slope, f.slope_ci95.map(|(lo, hi)| (hi - lo) / 2.0)),
            Err(_) => "—".to_string(),
        };
        slopes.push_row([np.to_string(), slope, pts.len().to_string()])?;
        let band: Vec<(f64, f64, f64)> = pts
            .iter()
            .filter_map(|p| p.2.map(|h| (p.0, p.1 - h, p.1 + h)))
            .collect();
        let mut s = Series::new(
            format!("n+ = {np}"),
            pts.iter().map(|p| (p.0, p.1)).collect(),
        );
        if !band.is_empty() {
            s = s.with_band(band);
        }
        plot = plot.series(s);
    }
    let mut md = format!(
        "\n## Scaling: rebound strength vs {}\n\n{}\n{}",
        cfg.x_label,
        t.to_markdown(),
        slopes.to_markdown()
    );
    if !plot.series.is_empty() {
        run.plot("strength_vs_x", &plot)?;
        md += "\n![rebound strength vs x](strength_vs_x.png)\n";
    }
    Ok(md)
}
