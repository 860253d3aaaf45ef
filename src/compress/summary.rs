//! What `elastica compress` tells the user: the model's code next to its ideal length and
//! the gzip / xz / zstd baselines, as a table and as JSON.

use super::baselines::Baseline;
use super::codec::CompressReport;
use crate::report::{fmt_sig, Table};
use anyhow::Result;
use serde::Serialize;

/// The JSON form of one compression run.
#[derive(Debug, Clone, Serialize)]
pub struct CompressSummary {
    pub input: String,
    pub report: CompressReport,
    /// Whole file (header included), bits per original byte.
    pub bits_per_byte: f64,
    /// Sum of -log2 p over every coded symbol, per original byte.
    pub ideal_bits_per_byte: f64,
    /// Ideal bits per token (tokens only).
    pub bits_per_token: f64,
    /// Payload over ideal, in percent (the header is not included).
    pub overhead_percent: f64,
    pub baselines: Vec<Baseline>,
}

impl CompressSummary {
    pub fn new(input: impl Into<String>, report: CompressReport, baselines: Vec<Baseline>) -> Self {
        CompressSummary {
            input: input.into(),
            bits_per_byte: report.bits_per_byte(),
            ideal_bits_per_byte: report.ideal_bits_per_byte(),
            bits_per_token: report.bits_per_token(),
            overhead_percent: report.overhead() * 100.0,
            report,
            baselines,
        }
    }

    /// Sizes side by side: the model's file, its ideal code length, and the baselines.
    pub fn table(&self) -> Result<Table> {
        let n = self.report.original_bytes;
        let mut t = Table::new(["method", "bytes", "bits/byte", "ratio"]);
        let mut row = |name: &str, bytes: f64| -> Result<()> {
            let bpb = if n == 0 { 0.0 } else { bytes * 8.0 / n as f64 };
            let ratio = if bytes > 0.0 { n as f64 / bytes } else { 0.0 };
            t.push_row([
                name.to_string(),
                format!("{:.0}", bytes.ceil()),
                format!("{bpb:.4}"),
                format!("{ratio:.3}"),
            ])
        };
        row("original", n as f64)?;
        row(
            "model (file, with header)",
            self.report.compressed_bytes as f64,
        )?;
        row(
            "model ideal (sum of -log2 p)",
            self.report.stream.ideal_bits() / 8.0,
        )?;
        for b in &self.baselines {
            row(&b.name, b.bytes as f64)?;
        }
        Ok(t)
    }

    /// One-paragraph account of the code: overhead, header, tokens, chunks, raw bytes, and
    /// what was stored raw because the model coded it worse than its bytes.
    pub fn notes(&self) -> String {
        let r = &self.report;
        let s = &r.stream;
        let f = &r.raw_fallback;
        let fallback = if f.whole_file {
            format!(
                " The model coded this input worse than its raw bytes, so it is stored raw \
                 (the file is the input plus {} bytes).",
                r.compressed_bytes.saturating_sub(r.original_bytes)
            )
        } else if f.pieces > 0 {
            format!(
                " Of the raw bytes, {} come from {} text piece(s) the model coded worse than \
                 8 bits per byte (so they were stored raw instead).",
                f.bytes, f.pieces
            )
        } else {
            String::new()
        };
        let coded = if s.tokens > 0 {
            format!(
                "{} tokens in {} chunk(s) of up to {} tokens, {:.4} bits/token",
                s.tokens, s.chunks, r.chunk_tokens, self.bits_per_token
            )
        } else {
            "No text coded as tokens".to_string()
        };
        let notes = format!(
            "code overhead over the ideal: {}% of {:.0} bits (payload {} bytes; header {} bytes \
             extra). {coded}; {} text piece(s) coded as tokens; {} raw byte(s) in {} run(s).",
            fmt_sig(self.overhead_percent, 3),
            s.ideal_bits(),
            r.payload_bytes,
            r.header_bytes,
            s.pieces,
            s.raw_bytes,
            s.raw_runs,
        );
        notes + &fallback
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::baselines::baselines;
    use crate::compress::testing::NgramPredictor;
    use crate::compress::{compress, CompressOptions};

    #[test]
    fn table_lists_the_model_and_every_baseline() {
        let input = b"the cat sat on the mat and the dog sat on the log. ".repeat(20);
        let mut pred = NgramPredictor::new(400, 4096).unwrap();
        let (_, report) = compress(&input, &mut pred, &CompressOptions::default()).unwrap();
        let s = CompressSummary::new("x.txt", report, baselines(&input).unwrap());
        let t = s.table().unwrap();
        assert_eq!(t.rows.len(), 6);
        assert_eq!(t.rows[0][1], input.len().to_string());
        assert!(t.to_markdown().contains("xz -9"));
        assert!(s.notes().contains("tokens"));
        let json = serde_json::to_value(&s).unwrap();
        assert!(json["overhead_percent"].as_f64().unwrap() < 5.0);
    }

    /// Bytes that are no text are accounted for as raw bytes, not as "0 tokens in 1 chunk".
    #[test]
    fn notes_on_an_input_with_no_text_say_so() {
        let input: Vec<u8> = (0..600u32).map(|i| 0x80 | (i * 7 % 64) as u8).collect();
        let mut pred = NgramPredictor::new(400, 4096).unwrap();
        let (_, report) = compress(&input, &mut pred, &CompressOptions::default()).unwrap();
        assert_eq!(report.stream.tokens, 0);
        let notes = CompressSummary::new("x.bin", report, Vec::new()).notes();
        assert!(
            notes.contains("No text coded as tokens; 0 text piece(s)"),
            "{notes}"
        );
        assert!(notes.contains("600 raw byte(s)"), "{notes}");
        assert!(!notes.contains("0 tokens in"), "{notes}");
    }
}
