//! Curves against n-: one point per n- (a measure aggregated over seeds), one curve per n+.
//! The report's score and KL and the instruments' scalars are all such curves, so one table
//! builder and one plot builder serve both.

use crate::report::stats::MeanCi;
use crate::report::{fmt_ci, LinePlot, Series, Table};
use anyhow::Result;
use serde::Serialize;

/// Measures against n- for one n+.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve<T> {
    pub n_positive: usize,
    pub points: Vec<Point<T>>,
}

/// One (n+, n-) cell: what was measured there, aggregated over seeds (its fields sit beside
/// `n_negative` in summary.json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point<T> {
    pub n_negative: usize,
    #[serde(flatten)]
    pub at: T,
}

/// A seed aggregate as a table cell: `mean ± half-width`, or `—` when nothing was measured.
pub fn ci(c: Option<MeanCi>) -> String {
    c.map_or("—".to_string(), |c| fmt_ci(c.mean, c.half_width))
}

/// One measure against n-: rows n-, one column per n+; with `base`, a first row
/// `pre-trained` repeats the pre-trained model's value under every n+.
pub fn table<T>(
    curves: &[Curve<T>],
    base: Option<Option<MeanCi>>,
    pick: impl Fn(&T) -> Option<MeanCi>,
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
        .map(|c| c.points.iter().map(|p| p.n_negative).collect())
        .unwrap_or_default();
    for (k, nn) in n_neg.iter().enumerate() {
        let mut r = vec![nn.to_string()];
        r.extend(curves.iter().map(|c| ci(pick(&c.points[k].at))));
        t.push_row(r)?;
    }
    Ok(t)
}

/// One measure against n-: a line per n+ with its 95% CI band over seeds; `None` when no
/// point was measured.
pub fn plot<T>(
    title: String,
    ylab: impl Into<String>,
    curves: &[Curve<T>],
    pick: impl Fn(&T) -> Option<MeanCi>,
) -> Option<LinePlot> {
    let mut plot = LinePlot::new(title, "negative samples n−", ylab);
    let mut drawable = false;
    for c in curves {
        let measured = || {
            c.points
                .iter()
                .filter_map(|p| pick(&p.at).map(|v| (p.n_negative as f64, v)))
        };
        let pts: Vec<(f64, f64)> = measured().map(|(x, v)| (x, v.mean)).collect();
        let band: Vec<(f64, f64, f64)> = measured()
            .filter_map(|(x, v)| v.bounds().map(|(lo, hi)| (x, lo, hi)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats::mean_ci95;

    fn curve(np: usize, values: &[(usize, &[f64])]) -> Curve<Option<MeanCi>> {
        Curve {
            n_positive: np,
            points: values
                .iter()
                .map(|&(nn, xs)| Point {
                    n_negative: nn,
                    at: mean_ci95(xs),
                })
                .collect(),
        }
    }

    #[test]
    fn the_table_has_a_row_per_n_negative_and_a_column_per_n_positive() {
        let curves = [
            curve(2, &[(0, &[1.0]), (4, &[])]),
            curve(8, &[(0, &[3.0]), (4, &[0.5])]),
        ];
        let t = table(&curves, Some(mean_ci95(&[0.25])), |p| *p).unwrap();
        assert_eq!(t.headers, ["n−", "n+ = 2", "n+ = 8"]);
        assert_eq!(t.rows[0], ["pre-trained", "0.2500", "0.2500"]);
        assert_eq!(t.rows[1], ["0", "1.000", "3.000"]);
        // A cell without a finished seed reads as a dash, not a zero.
        assert_eq!(t.rows[2], ["4", "—", "0.5000"]);
        let without_base = table(&curves, None, |p| *p).unwrap();
        assert_eq!(without_base.rows.len(), 2);
    }

    #[test]
    fn the_plot_draws_the_measured_points_and_nothing_when_none_was() {
        let curves = [curve(2, &[(0, &[1.0, 2.0]), (4, &[])])];
        assert!(plot("t".into(), "y", &curves, |p| *p).is_some());
        let empty = [curve(2, &[(0, &[]), (4, &[])])];
        assert!(plot("t".into(), "y", &empty, |p| *p).is_none());
    }
}
