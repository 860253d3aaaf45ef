//! Output of `elastica rates`: one row per (checkpoint, data set), written as a Markdown
//! table, CSV, JSON, and plots of the rate against the checkpoint with one line per data set.

use super::rates::{Rate, RecordCode};
use crate::data::template::Template;
use crate::report::stats::ratio_ci95;
use crate::report::{LinePlot, RunDir, Series, Table};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

/// A plotted quantity: file stem, axis label, how to read it from a row, and its interval.
type Metric = (
    &'static str,
    &'static str,
    fn(&RateRow) -> f64,
    fn(&RateRow) -> Option<(f64, f64)>,
);

/// The rate of one data set under one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct RateRow {
    pub model: String,
    /// Position of the model in the `--models` list (the x axis of the plots).
    pub checkpoint: usize,
    pub dataset: String,
    /// The template the records were tokenized under.
    pub template: Template,
    #[serde(flatten)]
    pub rate: Rate,
    /// 95% intervals of the pooled bits per token and per byte over the records (the records
    /// are the sampling unit; `stats::ratio_ci95`); none with fewer than two records.
    pub bits_per_token_ci95: Option<(f64, f64)>,
    pub bits_per_byte_ci95: Option<(f64, f64)>,
}

impl RateRow {
    /// The row of `codes` (one per record) of data set `dataset` under checkpoint
    /// `checkpoint` (`model`), whose vocabulary has `vocab_size` entries.
    pub fn of_codes(
        (model, checkpoint): (&str, usize),
        (dataset, template): (&str, Template),
        codes: &[RecordCode],
        vocab_size: usize,
    ) -> Result<Self> {
        let bits: Vec<f64> = codes.iter().map(|c| c.bits).collect();
        let per =
            |f: fn(&RecordCode) -> u64| -> Vec<f64> { codes.iter().map(|c| f(c) as f64).collect() };
        Ok(RateRow {
            model: model.to_string(),
            checkpoint,
            dataset: dataset.to_string(),
            template,
            rate: Rate::from_codes(codes, vocab_size)?,
            bits_per_token_ci95: ratio_ci95(&bits, &per(|c| c.tokens)),
            bits_per_byte_ci95: ratio_ci95(&bits, &per(|c| c.bytes)),
        })
    }
}

pub fn rates_table(rows: &[RateRow]) -> Result<Table> {
    let mut t = Table::new([
        "checkpoint",
        "model",
        "dataset",
        "template",
        "records",
        "tokens",
        "bytes",
        "bits/token",
        "bits/token 95% CI",
        "bits/byte",
        "normalised",
        "nats/token",
    ]);
    for r in rows {
        t.push_row([
            r.checkpoint.to_string(),
            r.model.clone(),
            r.dataset.clone(),
            r.template.name().to_string(),
            r.rate.records.to_string(),
            r.rate.tokens.to_string(),
            r.rate.bytes.to_string(),
            format!("{:.4}", r.rate.bits_per_token),
            r.bits_per_token_ci95
                .map_or("n/a".into(), |(lo, hi)| format!("[{lo:.4}, {hi:.4}]")),
            format!("{:.4}", r.rate.bits_per_byte),
            format!("{:.4}", r.rate.normalized),
            format!("{:.4}", r.rate.nats_per_token),
        ])?;
    }
    Ok(t)
}

/// Write `rates.md`, `rates.csv`, `rates.json` and the plots `rates_bits_per_byte` and
/// `rates_bits_per_token` (PNG and SVG) into `run`; returns the paths written.
pub fn write_rates(run: &RunDir, rows: &[RateRow]) -> Result<Vec<PathBuf>> {
    if rows.is_empty() {
        bail!("no rates to write");
    }
    let table = rates_table(rows)?;
    let mut md = String::from(
        "# Compression rates\n\nExact code length (sum of -log2 p) of each data set's scored \
         tokens under each checkpoint. normalised = bits/token - log2(vocabulary size); \
         nats/token is the mean NLL (the eval-loss figure). The 95% interval of bits/token \
         treats the records as the sample (delta method for a ratio of sums, Student t with \
         records - 1 degrees of freedom).\n\n",
    );
    md.push_str(&table.to_markdown());
    let mut written = vec![
        run.write_text("rates.md", &md)?,
        run.write_table_csv("rates.csv", &table)?,
        run.write_json("rates.json", &rows)?,
    ];
    let mut datasets: Vec<&str> = Vec::new();
    for r in rows {
        if !datasets.contains(&r.dataset.as_str()) {
            datasets.push(&r.dataset);
        }
    }
    let metrics: [Metric; 2] = [
        (
            "rates_bits_per_byte",
            "bits per byte",
            |r| r.rate.bits_per_byte,
            |r| r.bits_per_byte_ci95,
        ),
        (
            "rates_bits_per_token",
            "bits per token",
            |r| r.rate.bits_per_token,
            |r| r.bits_per_token_ci95,
        ),
    ];
    for (stem, label, get, ci) in metrics {
        let mut plot = LinePlot::new(
            format!("Compression rate ({label}, 95% interval over records) by checkpoint"),
            "checkpoint (order of --models)",
            label,
        )
        .integer_x(true);
        for d in &datasets {
            let of_set: Vec<&RateRow> = rows.iter().filter(|r| r.dataset == *d).collect();
            let points = of_set
                .iter()
                .map(|r| (r.checkpoint as f64, get(r)))
                .collect();
            let band = of_set
                .iter()
                .filter_map(|r| ci(r).map(|(lo, hi)| (r.checkpoint as f64, lo, hi)))
                .collect();
            plot = plot.series(Series::new(*d, points).with_band(band));
        }
        let (png, svg) = run.plot(stem, &plot)?;
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::rates::RecordCode;

    #[test]
    fn writes_table_json_and_plots() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        // One record per row at first: no interval; two at checkpoint 2 of "align".
        let code = |bits: f64| RecordCode {
            bits,
            tokens: 10,
            bytes: 40,
        };
        let rows: Vec<RateRow> = (0..3)
            .flat_map(|c| {
                ["pretrain", "align"].map(|d| {
                    let mut codes = vec![code(30.0 + c as f64)];
                    if (c, d) == (2, "align") {
                        codes.push(code(34.0));
                    }
                    let (model, template) = (format!("ckpt-{c}"), Template::Raw);
                    RateRow::of_codes((&model, c), (d, template), &codes, 256).unwrap()
                })
            })
            .collect();
        let files = write_rates(&run, &rows).unwrap();
        assert_eq!(files.len(), 7);
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 0, "{}", f.display());
        }
        let csv = std::fs::read_to_string(run.path("rates.csv")).unwrap();
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.contains("ckpt-1,align,raw,1,10,40,3.1000,n/a,0.7750,-4.9000"));
        // Records of 32 and 34 bits over 10 tokens each: 3.3 ± t(0.975, 1) * 0.1.
        let h = 12.706204736174705 * 0.1;
        let bounds = format!("[{:.4}, {:.4}]", 3.3 - h, 3.3 + h);
        assert!(
            csv.contains(&format!("ckpt-2,align,raw,2,20,80,3.3000,\"{bounds}\"")),
            "{csv}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.path("rates.json")).unwrap())
                .unwrap();
        assert_eq!(json[0]["bits_per_token"], 3.0);
        assert!(json[0]["bits_per_token_ci95"].is_null());
        let ci = &json[5]["bits_per_token_ci95"];
        assert!((ci[0].as_f64().unwrap() - (3.3 - h)).abs() < 1e-9, "{ci}");
    }
}
