//! Curves against n-: one point per n- (a measure aggregated over seeds), one curve per n+.
//! The report's score and KL and the instruments' scalars are all such curves, so one table
//! builder and one plot builder serve both.

use super::cells::EvalOutput;
use super::outputs::Outputs;
use crate::report::stats::MeanCi;
use crate::report::{fmt_ci, LinePlot, Series, Table};
use anyhow::Result;
use serde::Serialize;

/// A measure against n- for one n+; `P` is the point type (one n- aggregated over seeds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve<P> {
    pub n_positive: usize,
    pub points: Vec<P>,
}

/// A point of a [`Curve`]: where it sits on the n- axis.
pub trait AtNegatives {
    fn n_negative(&self) -> usize;
}

/// A seed aggregate as a table cell: `mean ± half-width`, or `—` when nothing was measured.
pub fn ci(c: Option<MeanCi>) -> String {
    c.map_or("—".to_string(), |c| fmt_ci(c.mean, c.half_width))
}

/// The finished evaluations of one (model, n+, n-) over `seeds`, in seed order (the seeds
/// whose cell has no result are left out).
pub fn seed_outputs<'a>(
    outputs: &'a Outputs,
    model: &str,
    np: usize,
    nn: usize,
    seeds: &[u64],
) -> Vec<&'a EvalOutput> {
    seeds
        .iter()
        .filter_map(|&s| outputs.perturbed(model, np, nn, s))
        .collect()
}

/// One measure against n-: rows n-, one column per n+; with `base`, a first row
/// `pre-trained` repeats the pre-trained model's value under every n+.
pub fn table<P: AtNegatives>(
    curves: &[Curve<P>],
    base: Option<Option<MeanCi>>,
    pick: impl Fn(&P) -> Option<MeanCi>,
) -> Result<Table> {
    let mut head = vec!["n−".to_string()];
    head.extend(curves.iter().map(|c| format!("n+ = {}", c.n_positive)));
    let mut t = Table::new(head);
    if let Some(b) = base {
        let mut r = vec!["pre-trained".to_string()];
        r.extend(curves.iter().map(|_| ci(b)));
        t.push_row(r)?;
    }
    let n_neg: Vec<usize> = curves
        .first()
        .map(|c| c.points.iter().map(P::n_negative).collect())
        .unwrap_or_default();
    for (k, nn) in n_neg.iter().enumerate() {
        let mut r = vec![nn.to_string()];
        r.extend(curves.iter().map(|c| ci(pick(&c.points[k]))));
        t.push_row(r)?;
    }
    Ok(t)
}

/// One measure against n-: a line per n+ with its 95% CI band over seeds; `None` when no
/// point was measured.
pub fn plot<P: AtNegatives>(
    title: String,
    ylab: impl Into<String>,
    curves: &[Curve<P>],
    pick: impl Fn(&P) -> Option<MeanCi>,
) -> Option<LinePlot> {
    let mut plot = LinePlot::new(title, "negative samples n−", ylab);
    let mut drawable = false;
    for c in curves {
        let x = |p: &P| p.n_negative() as f64;
        let pts: Vec<(f64, f64)> = c
            .points
            .iter()
            .filter_map(|p| pick(p).map(|v| (x(p), v.mean)))
            .collect();
        let band: Vec<(f64, f64, f64)> = c
            .points
            .iter()
            .filter_map(|p| pick(p)?.bounds().map(|(lo, hi)| (x(p), lo, hi)))
            .collect();
        drawable |= !pts.is_empty();
        let mut s = Series::new(format!("n+ = {}", c.n_positive), pts);
        if !band.is_empty() {
            s = s.with_band(band);
        }
        plot = plot.series(s);
    }
    drawable.then_some(plot)
}
