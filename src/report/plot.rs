//! Line plots for reports. A [`LinePlot`] describes the figure (title, axis labels, optional
//! log axes, series with optional confidence bands, an optional horizontal reference line)
//! and [`LinePlot::write`] renders it twice, to `stem.png` and `stem.svg`.
//!
//! Text in the PNG is drawn with DejaVu Sans embedded in the binary (assets/fonts, licence
//! next to it), so rendering needs no system fontconfig, and laid out by
//! [`super::png_text::TextFix`] (plotters drops each glyph's side bearing).
//!
//! Options for quantities with a nature: [`LinePlot::integer_x`] (counts such as optimizer
//! steps get integer ticks only) and [`LinePlot::nonnegative_y`] (a loss cannot be negative:
//! confidence bands are clipped at zero, and so is the axis). Both files are written atomically:
//! the SVG is rendered into memory, the PNG into a temporary sibling that is renamed into
//! place.

use super::png_text::TextFix;
use crate::util::fsx::atomic_write;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the legend box goes.
pub use plotters::chart::SeriesLabelPosition as LegendPosition;

const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Tableau 10: distinguishable, colour-blind-friendlier than the plotters defaults.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Register the embedded font with plotters once per process.
fn ensure_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    if !ok {
        bail!("the embedded DejaVu Sans font could not be loaded (assets/fonts/DejaVuSans.ttf is corrupt?)");
    }
    Ok(())
}

/// One line of a plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub name: String,
    /// `(x, y)` points in drawing order. Points with a non-finite coordinate are skipped.
    pub points: Vec<(f64, f64)>,
    /// Optional confidence band as `(x, lower, upper)`, drawn as a translucent area.
    /// Entries with a non-finite value are skipped.
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// Draw a dot at every point (on by default: experiment sweeps have few points).
    pub markers: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            band: None,
            markers: true,
        }
    }

    pub fn with_band(mut self, band: Vec<(f64, f64, f64)>) -> Self {
        self.band = Some(band);
        self
    }

    pub fn without_markers(mut self) -> Self {
        self.markers = false;
        self
    }
}

/// A labelled horizontal line, e.g. the pre-trained model's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefLine {
    pub y: f64,
    pub label: String,
}

/// Builder methods that set one field each: `pub fn field(mut self, value: T) -> Self`.
macro_rules! setters {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)+) => {$(
        $(#[$doc])*
        pub fn $field(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    )+};
}

/// Specification of a line plot.
#[derive(Debug, Clone)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    pub reference: Option<RefLine>,
    pub legend: LegendPosition,
    /// Pixel size of the PNG (and the SVG's viewport).
    pub size: (u32, u32),
    /// x is a count (optimizer steps): ticks at integers only.
    pub integer_x: bool,
    /// y cannot be negative (a loss): bands and the axis stop at zero.
    pub nonnegative_y: bool,
}

impl LinePlot {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        LinePlot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            log_y: false,
            series: Vec::new(),
            reference: None,
            legend: LegendPosition::UpperRight,
            size: (900, 600),
            integer_x: false,
            nonnegative_y: false,
        }
    }

    setters! {
        /// Integer x ticks only (x counts something, e.g. optimizer steps).
        integer_x: bool,
        /// y cannot be negative: clip confidence bands (and the axis) at zero.
        nonnegative_y: bool,
        log_x: bool,
        log_y: bool,
        legend: LegendPosition,
    }

    pub fn series(mut self, s: Series) -> Self {
        self.series.push(s);
        self
    }

    pub fn reference(mut self, y: f64, label: impl Into<String>) -> Self {
        self.reference = Some(RefLine {
            y,
            label: label.into(),
        });
        self
    }

    /// Render to `<stem>.png` and `<stem>.svg` (stem without extension) and return both
    /// paths. Errors: no drawable point, or a non-positive value on a log axis (named).
    pub fn write(&self, stem: &Path) -> Result<(PathBuf, PathBuf)> {
        ensure_font()?;
        let bounds = self.bounds()?;
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");

        let mut text = String::new();
        {
            let root = SVGBackend::with_string(&mut text, self.size).into_drawing_area();
            self.render(root, &bounds)
                .with_context(|| format!("while drawing {}", svg.display()))?;
        }
        atomic_write(&svg, text.as_bytes())?;

        // The bitmap encoder picks the format from the extension, so the temp name ends in .png.
        crate::util::fsx::atomic_write_path(&png, ".png", |tmp| {
            let backend = BitMapBackend::new(tmp, self.size);
            let root = TextFix::new(backend, dejavu()?).into_drawing_area();
            self.render(root, &bounds)
                .with_context(|| format!("while drawing {}", png.display()))
        })?;
        Ok((png, svg))
    }

    /// Axis ranges covering every finite point, band and the reference line, padded 5%
    /// (multiplicatively on log axes).
    fn bounds(&self) -> Result<Bounds> {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for s in &self.series {
            for &(x, y) in &s.points {
                if x.is_finite() && y.is_finite() {
                    self.check_log(&s.name, x, y)?;
                    xs.push(x);
                    ys.push(y);
                }
            }
            for &(x, lo, hi) in s.band.iter().flatten() {
                let lo = self.clip_y(lo);
                if x.is_finite() && lo.is_finite() && hi.is_finite() {
                    self.check_log(&s.name, x, lo.min(hi))?;
                    xs.push(x);
                    ys.extend([lo, hi]);
                }
            }
        }
        if xs.is_empty() {
            bail!("plot `{}` has no finite point to draw", self.title);
        }
        if let Some(r) = &self.reference {
            if r.y.is_finite() && (!self.log_y || r.y > 0.0) {
                ys.push(r.y);
            }
        }
        let (x0, x1) = padded(&xs, self.log_x);
        let (mut y0, y1) = padded(&ys, self.log_y);
        if self.nonnegative_y && !self.log_y && ys.iter().all(|&y| y >= 0.0) {
            y0 = y0.max(0.0);
        }
        Ok(Bounds { x0, x1, y0, y1 })
    }

    /// A band's lower edge as drawn: at least zero where y cannot be negative.
    fn clip_y(&self, lo: f64) -> f64 {
        if self.nonnegative_y {
            lo.max(0.0)
        } else {
            lo
        }
    }

    fn check_log(&self, series: &str, x: f64, y: f64) -> Result<()> {
        if self.log_x && x <= 0.0 {
            bail!("plot `{}`: series `{series}` has x = {x}, which a log x axis cannot show; use a linear axis", self.title);
        }
        if self.log_y && y <= 0.0 {
            bail!("plot `{}`: series `{series}` has y = {y} at x = {x}, which a log y axis cannot show; use a linear axis", self.title);
        }
        Ok(())
    }

    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, b: &Bounds) -> Result<()> {
        root.fill(&WHITE).map_err(draw_err)?;
        let (xr, yr) = (b.x0..b.x1, b.y0..b.y1);
        match (self.log_x, self.log_y) {
            (false, false) => self.draw_chart(&root, xr, yr)?,
            (true, false) => self.draw_chart(&root, xr.log_scale(), yr)?,
            (false, true) => self.draw_chart(&root, xr, yr.log_scale())?,
            (true, true) => self.draw_chart(&root, xr.log_scale(), yr.log_scale())?,
        }
        root.present().map_err(draw_err)?;
        Ok(())
    }

    fn draw_chart<DB, X, Y>(&self, root: &DrawingArea<DB, Shift>, xr: X, yr: Y) -> Result<()>
    where
        DB: DrawingBackend,
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(xr, yr)
            .map_err(draw_err)?;
        let integer_x = self.integer_x;
        // At most one tick per integer, so plotters' "nice" steps are whole numbers; the
        // formatter leaves any other tick unlabelled.
        let x_ticks = if integer_x {
            let r = chart.x_range();
            ((r.end - r.start).floor() as usize + 1).clamp(2, 10)
        } else {
            10
        };
        let x_fmt = move |v: &f64| {
            if integer_x && (v - v.round()).abs() > 1e-9 {
                String::new()
            } else {
                fmt_tick(*v)
            }
        };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 14))
            .x_labels(x_ticks)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v| fmt_tick(*v))
            .light_line_style(WHITE.mix(0.0))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(draw_err)?;

        let (x_lo, x_hi) = {
            let r = chart.x_range();
            (r.start, r.end)
        };
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            if let Some(band) = &s.band {
                let band: Vec<(f64, f64, f64)> = band
                    .iter()
                    .map(|&(x, lo, hi)| (x, self.clip_y(lo), hi))
                    .filter(|(x, lo, hi)| x.is_finite() && lo.is_finite() && hi.is_finite())
                    .collect();
                if band.len() >= 2 {
                    let mut poly: Vec<(f64, f64)> =
                        band.iter().map(|(x, lo, _)| (*x, *lo)).collect();
                    poly.extend(band.iter().rev().map(|(x, _, hi)| (*x, *hi)));
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            poly,
                            color.mix(0.18).filled(),
                        )))
                        .map_err(draw_err)?;
                }
            }
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            if s.markers {
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(draw_err)?;
            }
        }
        if let Some(r) = self.reference.as_ref().filter(|r| r.y.is_finite()) {
            let grey = RGBColor(60, 60, 60);
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x_lo, r.y), (x_hi, r.y)],
                    8,
                    5,
                    grey.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(r.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(legend_position(&self.legend))
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(draw_err)?;
        Ok(())
    }
}

/// The embedded font, for the PNG's text layout.
fn dejavu() -> Result<ab_glyph::FontRef<'static>> {
    ab_glyph::FontRef::try_from_slice(DEJAVU_SANS)
        .map_err(|e| anyhow!("the embedded DejaVu Sans font cannot be read: {e}"))
}

/// plotters' position enum is not `Copy`; rebuild it for each draw.
fn legend_position(p: &LegendPosition) -> LegendPosition {
    use LegendPosition::*;
    match p {
        UpperLeft => UpperLeft,
        MiddleLeft => MiddleLeft,
        LowerLeft => LowerLeft,
        UpperMiddle => UpperMiddle,
        MiddleMiddle => MiddleMiddle,
        LowerMiddle => LowerMiddle,
        UpperRight => UpperRight,
        MiddleRight => MiddleRight,
        LowerRight => LowerRight,
        Coordinate(x, y) => Coordinate(*x, *y),
    }
}

struct Bounds {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

fn padded(v: &[f64], log: bool) -> (f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if log {
        let f = if hi > lo { (hi / lo).powf(0.05) } else { 2.0 };
        (lo / f, hi * f)
    } else {
        let pad = if hi > lo {
            0.05 * (hi - lo)
        } else if lo != 0.0 {
            0.1 * lo.abs()
        } else {
            1.0
        };
        (lo - pad, hi + pad)
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot rendering failed: {e}")
}

/// Compact tick label: plain decimals without trailing zeros in [1e-3, 1e5), else `1e4` style.
fn fmt_tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-3..5).contains(&mag) {
        let s = format!("{v:.2e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{e}");
    }
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_plot(log: bool) -> LinePlot {
        let xs = [10.0, 100.0, 1000.0, 10000.0];
        let pts: Vec<(f64, f64)> = xs.iter().map(|&k| (k, 0.9 * k)).collect();
        let band = xs.iter().map(|&k| (k, 0.7 * k, 1.1 * k)).collect();
        LinePlot::new(
            "Elasticity ratio vs k",
            "k = |D_p| / |D_a|",
            "ratio ± 95% CI",
        )
        .log_x(log)
        .log_y(log)
        .series(Series::new("measured ratio", pts).with_band(band))
        .series(
            Series::new("slope-1 guide", xs.iter().map(|&k| (k, k)).collect()).without_markers(),
        )
        .reference(500.0, "pre-trained model")
        .legend(LegendPosition::UpperLeft)
    }

    #[test]
    fn writes_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        for (log, name) in [(true, "loglog"), (false, "linear")] {
            let (png, svg) = demo_plot(log).write(&dir.path().join(name)).unwrap();
            let bytes = std::fs::read(&png).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
            // IHDR width and height, big-endian, right after the signature and chunk header.
            let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
            let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
            assert_eq!((w, h), (900, 600));
            assert!(
                bytes.len() > 10_000,
                "PNG suspiciously small: {}",
                bytes.len()
            );
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(text.contains("<svg"));
            for s in [
                "measured ratio",
                "slope-1 guide",
                "pre-trained model",
                "Elasticity ratio vs k",
            ] {
                assert!(text.contains(s), "SVG lacks `{s}`");
            }
        }
        // No temporary files left behind.
        let n = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(n, 4);
    }

    #[test]
    fn log_axis_rejects_non_positive_values_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = LinePlot::new("t", "x", "y")
            .log_y(true)
            .series(Series::new("bad", vec![(1.0, 1.0), (2.0, -0.5)]));
        let e = format!("{:#}", p.write(&dir.path().join("x")).unwrap_err());
        assert!(e.contains("`bad`") && e.contains("-0.5"), "{e}");
        let empty =
            LinePlot::new("empty", "x", "y").series(Series::new("nan", vec![(f64::NAN, 1.0)]));
        assert!(empty.write(&dir.path().join("y")).is_err());
    }

    /// The texts of an SVG's `<text>` elements.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split("</text>").next()?.trim().to_string())
            })
            .collect()
    }

    #[test]
    fn step_axes_have_integer_ticks_and_loss_bands_stop_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        // Three optimizer steps with a wide band (two seeds): the lower edge dips below 0.
        let plot = |on: bool| {
            LinePlot::new("loss", "optimizer step", "training loss")
                .integer_x(on)
                .nonnegative_y(on)
                .series(
                    Series::new("forward", vec![(1.0, 500.0), (2.0, 300.0), (3.0, 200.0)])
                        .with_band(vec![
                            (1.0, -200.0, 1200.0),
                            (2.0, -100.0, 700.0),
                            (3.0, 100.0, 300.0),
                        ]),
                )
        };
        let (_, svg) = plot(true).write(&dir.path().join("on")).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(svg).unwrap());
        for want in ["1", "2", "3"] {
            assert!(texts.iter().any(|t| t == want), "no tick {want}: {texts:?}");
        }
        // y ticks are multiples of 100 here, so any fractional label would be an x tick.
        let fractional = |texts: &[String]| {
            texts
                .iter()
                .any(|t| t.parse::<f64>().is_ok_and(|v| v.fract() != 0.0))
        };
        assert!(!fractional(&texts), "{texts:?}");
        assert!(plot(true).bounds().unwrap().y0 >= 0.0);
        assert!(plot(false).bounds().unwrap().y0 < 0.0);
        let (_, svg) = plot(false).write(&dir.path().join("off")).unwrap();
        let texts = svg_texts(&std::fs::read_to_string(svg).unwrap());
        assert!(
            fractional(&texts),
            "plotters' default x ticks were expected to be fractional here: {texts:?}"
        );
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(fmt_tick(0.30000000000000004), "0.3");
        assert_eq!(fmt_tick(100.0), "100");
        assert_eq!(fmt_tick(100000.0), "1e5");
        assert_eq!(fmt_tick(2.5e-5), "2.5e-5");
    }
}
