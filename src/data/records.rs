//! SFT records. A record is either a prompt/response pair (the loss counts on the response and
//! its EOS only) or a plain text (the loss counts on every token). On disk: JSONL, one object a
//! line, `{"prompt": ..., "response": ...}` or `{"text": ...}`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    /// Prompt tokens are masked out of the loss; the response and EOS count.
    Pair { prompt: String, response: String },
    /// Every token counts (pre-training style).
    Text { text: String },
}

impl Record {
    pub fn pair(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Record::Pair {
            prompt: prompt.into(),
            response: response.into(),
        }
    }
    pub fn text(text: impl Into<String>) -> Self {
        Record::Text { text: text.into() }
    }
}

/// Read a JSONL file of records. Blank lines are skipped; any other line that is not an
/// object with string fields `prompt`+`response` or `text` is an error naming the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open data file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: line {}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            parse_record(&line).with_context(|| format!("{}: line {}", path.display(), i + 1))?,
        );
    }
    if out.is_empty() {
        bail!("data file {} holds no records", path.display());
    }
    Ok(out)
}

/// Parse one JSONL line into a [`Record`].
pub fn parse_record(line: &str) -> Result<Record> {
    let v: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    record_from_json(&v)
}

/// A [`Record`] from a parsed JSON value: an object with string fields `prompt`+`response`
/// or `text`.
pub fn record_from_json(v: &serde_json::Value) -> Result<Record> {
    let Some(obj) = v.as_object() else {
        bail!(
            "expected a JSON object with \"prompt\" and \"response\" (or \"text\"), found {}",
            kind(v)
        );
    };
    let field = |k: &str| -> Result<Option<String>> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => bail!("field \"{k}\" must be a string, found {}", kind(other)),
        }
    };
    match (field("prompt")?, field("response")?, field("text")?) {
        (Some(p), Some(r), _) => Ok(Record::pair(p, r)),
        (None, None, Some(t)) => Ok(Record::text(t)),
        (Some(_), None, _) => bail!("field \"response\" is missing"),
        (None, Some(_), _) => bail!("field \"prompt\" is missing"),
        (None, None, None) => bail!("expected fields \"prompt\" and \"response\", or \"text\""),
    }
}

/// Write records as JSONL, atomically.
pub fn write_jsonl(path: &Path, records: &[Record]) -> Result<()> {
    crate::util::fsx::atomic_write_with(path, |w| {
        use std::io::Write;
        for r in records {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Rows as JSONL bytes, one JSON object a line: what a run directory pins by its hash
/// before it writes them.
pub fn jsonl_bytes<T: serde::Serialize>(rows: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Read `{"prompt": ...}` lines (other fields ignored); errors name the line, and a file
/// without prompts is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read prompts file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not valid JSON", path.display(), i + 1))?;
        match v.get("prompt").and_then(|p| p.as_str()) {
            Some(p) => out.push(p.to_string()),
            None => bail!(
                "{}: line {}: expected an object with a string \"prompt\"",
                path.display(),
                i + 1
            ),
        }
    }
    if out.is_empty() {
        bail!("prompts file {} holds no prompts", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let recs = vec![Record::pair("a", "b"), Record::text("c")];
        write_jsonl(&p, &recs).unwrap();
        assert_eq!(read_jsonl(&p).unwrap(), recs);

        std::fs::write(&p, "{\"prompt\":\"a\",\"response\":\"b\"}\n[1,2]\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(
            e.contains("line 2") && e.contains("d.jsonl") && e.contains("an array"),
            "{e}"
        );

        std::fs::write(&p, "{\"prompt\":\"a\"}\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(e.contains("line 1") && e.contains("response"), "{e}");

        std::fs::write(&p, "\n\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(e.contains("no records"), "{e}");
    }
}
