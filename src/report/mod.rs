//! Shared result-writing toolkit used by every experiment: statistics for small samples
//! ([`stats`]), tables rendered as Markdown/CSV/LaTeX ([`table`]), line plots written as PNG
//! and SVG ([`plot`]), TensorBoard event files ([`tensorboard`]), and a [`RunDir`] that
//! writes an experiment's files atomically.
//!
//! Typical use:
//! ```no_run
//! use elastica::report::{RunDir, Table, LinePlot, Series, stats, fmt_ci};
//! # fn main() -> anyhow::Result<()> {
//! let run = RunDir::create("runs/example")?;
//! let ci = stats::mean_ci95(&[0.5, 0.52, 0.49]).unwrap();
//! let mut t = Table::new(["setting", "score"]);
//! t.push_row(["base".to_string(), fmt_ci(ci.mean, ci.half_width)])?;
//! run.write_text("report.md", &t.to_markdown())?;
//! run.write_table_csv("results.csv", &t)?;
//! run.plot("score", &LinePlot::new("Score", "n", "score")
//!     .series(Series::new("base", vec![(0.0, 0.5), (1.0, 0.4)])))?;
//! # Ok(()) }
//! ```

pub mod plot;
pub mod png_text;
pub mod stats;
pub mod table;
pub mod tensorboard;

pub use plot::{LegendPosition, LinePlot, RefLine, Series};
pub use stats::{first_crossing, linear_fit, mean_ci95, sign_test, LinearFit, MeanCi, SignTest};
pub use table::{fmt_ci, fmt_p, fmt_sig, Table};

use crate::util::fsx::{atomic_write, atomic_write_json};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// An experiment's output directory. Every file goes through an atomic write, so a killed
/// run leaves either the old file or the new one, never half of one.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Use (and create if needed) the directory `root`.
    pub fn create(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the output directory {}", root.display()))?;
        Ok(RunDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a file inside the run directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn write_text(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.path(name);
        atomic_write(&p, text.as_bytes())?;
        Ok(p)
    }

    /// Pretty-printed JSON.
    pub fn write_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<PathBuf> {
        let p = self.path(name);
        atomic_write_json(&p, value)?;
        Ok(p)
    }

    /// One compact JSON object per line (results.jsonl).
    pub fn write_jsonl<T: serde::Serialize>(&self, name: &str, rows: &[T]) -> Result<PathBuf> {
        let mut text = String::new();
        for (i, r) in rows.iter().enumerate() {
            let line = serde_json::to_string(r)
                .with_context(|| format!("cannot serialise row {} of {name}", i + 1))?;
            text.push_str(&line);
            text.push('\n');
        }
        self.write_text(name, &text)
    }

    pub fn write_table_csv(&self, name: &str, table: &Table) -> Result<PathBuf> {
        self.write_text(name, &table.to_csv())
    }

    /// Render `plot` to `<stem>.png` and `<stem>.svg` in the run directory.
    pub fn plot(&self, stem: &str, plot: &LinePlot) -> Result<(PathBuf, PathBuf)> {
        plot.write(&self.path(stem))
    }
}

/// A default run directory `runs/<kind>-YYYYMMDD-HHMMSS` (UTC) for commands whose `--out`
/// was not given.
pub fn default_run_dir(kind: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("runs").join(format!("{kind}-{}", utc_stamp(secs)))
}

/// `YYYYMMDD-HHMMSS` for a Unix time (days-to-civil conversion, proleptic Gregorian).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}{mo:02}{d:02}-{h:02}{m:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(utc_stamp(1_709_210_096), "20240229-123456");
        assert!(default_run_dir("theory").starts_with("runs"));
    }

    #[test]
    fn run_dir_writes_files() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path().join("a/b")).unwrap();
        #[derive(serde::Serialize)]
        struct Row {
            k: u32,
            r: f64,
        }
        let p = run
            .write_jsonl(
                "results.jsonl",
                &[Row { k: 1, r: 0.5 }, Row { k: 2, r: 1.5 }],
            )
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "{\"k\":1,\"r\":0.5}\n{\"k\":2,\"r\":1.5}\n"
        );
        let mut t = Table::new(["k", "r"]);
        t.push_row(["1", "0.5"]).unwrap();
        run.write_table_csv("results.csv", &t).unwrap();
        run.write_json("results.json", &serde_json::json!({"ok": true}))
            .unwrap();
        assert!(run.path("results.csv").exists() && run.path("results.json").exists());
    }
}
