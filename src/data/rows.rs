//! Table rows from data files, whatever the container: a JSON list, JSON lines or CSV with a
//! header row (plain or `.gz` / `.xz` / `.zst` compressed), or parquet (read with the
//! `parquet` crate's row API). A CSV cell is a string (CSV has no types).
//! Every row comes out as a JSON object together with its location in the file, so the schema
//! loaders map fields to records in one way for every format, and errors can name the row.
//!
//! A problem with one row (a line that is not JSON, an entry that is not an object) is handed
//! to the caller as that row's `Err`, so the caller decides whether to stop or skip it. A
//! problem with the whole file (cannot open, not parquet, a JSON list that does not parse) is
//! this module's error. Parquet page headers are checked against the file's size before the
//! `parquet` crate reads them (`data::parquet_pages`), so a hostile file cannot make it
//! allocate what it declares.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;

/// A JSON object: one row of a table.
pub type Object = Map<String, Value>;

/// Where a row sits in its file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    /// A line of a JSON-lines file.
    Line(usize),
    /// An entry of a JSON list.
    Entry(usize),
    /// A row of a parquet file (counted across row groups).
    Row(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Entry(n) => write!(f, "entry {n} of the JSON list"),
            Loc::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Why `.arrow` files are not read, and what to use instead.
pub const ARROW_HINT: &str = "; .arrow files are the `datasets` library's processed cache, \
     which elastica does not read: give the hub cache's copy of the data set (its id, or the \
     datasets--ORG--NAME snapshot) or save the split with ds.to_parquet(path)";

/// The container formats this module reads, chosen from the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.json`: a JSON list of objects, or (as many hub data sets do) JSON lines.
    Json,
    /// `.jsonl` / `.ndjson`, optionally compressed.
    JsonLines(Compression),
    /// `.csv` with a header row (TruthfulQA's original release), optionally compressed.
    Csv(Compression),
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

/// The format of `path` from its extension; `None` for files this module does not read.
pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".xz") {
        (s, Compression::Xz)
    } else if let Some(s) = name.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") {
        return Some(Format::JsonLines(compression));
    }
    if stem.ends_with(".csv") {
        return Some(Format::Csv(compression));
    }
    if compression != Compression::None {
        return None;
    }
    if stem.ends_with(".json") {
        Some(Format::Json)
    } else if stem.ends_with(".parquet") {
        Some(Format::Parquet)
    } else {
        None
    }
}

/// Call `f` on every row of `path` in file order until it returns `Break`. Blank lines of
/// JSON-lines files are not rows.
pub fn for_each_row(
    path: &Path,
    f: &mut dyn FnMut(Loc, Result<Object>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let format = format_of(path).ok_or_else(|| {
        let arrow = if path.extension().is_some_and(|x| x == "arrow") {
            ARROW_HINT
        } else {
            ""
        };
        anyhow!(
            "{}: unknown data file type; expected .parquet, .json, .jsonl or .csv (the last \
             two optionally .gz, .xz or .zst compressed){arrow}",
            path.display()
        )
    })?;
    match format {
        Format::Parquet => parquet_rows(path, f),
        Format::JsonLines(c) => json_lines(path, open(path, c)?, f),
        Format::Csv(c) => csv_rows(path, open(path, c)?, f),
        Format::Json => json_file(path, f),
    }
}

fn open(path: &Path, c: Compression) -> Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open data file {}", path.display()))?;
    let raw: Box<dyn Read> = match c {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(BufReader::new(
            file,
        ))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(file)
                .with_context(|| format!("{}: not a zstd stream", path.display()))?,
        ),
    };
    Ok(Box::new(BufReader::new(raw)))
}

fn json_lines(
    path: &Path,
    reader: Box<dyn BufRead>,
    f: &mut dyn FnMut(Loc, Result<Object>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    for (i, line) in reader.lines().enumerate() {
        let loc = Loc::Line(i + 1);
        // An unreadable line (bad UTF-8, a corrupt compressed stream) ends the file.
        let line = line.with_context(|| format!("{}: {loc}: cannot read", path.display()))?;
        let line = crate::data::records::without_bom(&line);
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str::<Value>(line)
            .map_err(|e| anyhow!("not valid JSON ({e})"))
            .and_then(into_object);
        if f(loc, row)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// CSV records keyed by the header row's names. A record that does not parse (a field count
/// unlike the header's, bad UTF-8) is that row's error; an unreadable header ends the file.
fn csv_rows(
    path: &Path,
    reader: Box<dyn BufRead>,
    f: &mut dyn FnMut(Loc, Result<Object>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let mut csv = csv::ReaderBuilder::new().from_reader(reader);
    let header: Vec<String> = csv
        .headers()
        .with_context(|| format!("{}: cannot read the CSV header row", path.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    if header.is_empty() {
        bail!("{}: empty CSV file (no header row)", path.display());
    }
    let mut record = csv::StringRecord::new();
    loop {
        let next = csv.read_record(&mut record);
        // The record's first line (a quoted field may span lines).
        let position = match &next {
            Err(e) => e.position(),
            Ok(_) => record.position(),
        };
        let loc = Loc::Line(position.map_or(0, |p| p.line() as usize));
        let row = match next {
            Ok(false) => break,
            Ok(true) => Ok(header
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k.clone(), Value::String(v.to_owned())))
                .collect()),
            // An I/O error (a corrupt compressed stream) ends the file, as for JSON lines.
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(anyhow!("{}: cannot read: {e}", path.display()))
            }
            Err(e) => Err(anyhow!("not a valid CSV record ({e})")),
        };
        if f(loc, row)?.is_break() {
            break;
        }
    }
    Ok(())
}

fn json_file(
    path: &Path,
    f: &mut dyn FnMut(Loc, Result<Object>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read data file {}", path.display()))?;
    let text = crate::data::records::without_bom(&text);
    // Many hub data sets name JSON-lines files `.json`; a list starts with '['.
    if !text.trim_start().starts_with('[') {
        let bytes = text.as_bytes().to_vec();
        return json_lines(path, Box::new(std::io::Cursor::new(bytes)), f);
    }
    let list: Vec<Value> = serde_json::from_str(text).with_context(|| {
        format!(
            "{}: not a valid JSON list (a truncated or hand-edited file?); the whole file is \
             unusable, so skip_bad_rows cannot help",
            path.display()
        )
    })?;
    for (i, v) in list.into_iter().enumerate() {
        if f(Loc::Entry(i + 1), into_object(v))?.is_break() {
            break;
        }
    }
    Ok(())
}

fn into_object(v: Value) -> Result<Object> {
    match v {
        Value::Object(m) => Ok(m),
        other => bail!("expected a JSON object, found {}", json_kind(&other)),
    }
}

fn parquet_rows(
    path: &Path,
    f: &mut dyn FnMut(Loc, Result<Object>) -> Result<ControlFlow<()>>,
) -> Result<()> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open data file {}", path.display()))?;
    // The parquet crate (56) panics on some corrupt files (an out-of-range slice, an
    // `unimplemented!` page type) instead of returning an error: each call into it is
    // guarded, and a panic becomes an error naming the file.
    let guarded = |what: &str| {
        anyhow!(
            "{}: the parquet reader failed while {what}: the file is corrupt (or uses a \
             parquet feature this reader lacks)",
            path.display()
        )
    };
    let reader = catch_unwind(AssertUnwindSafe(|| SerializedFileReader::new(file)))
        .map_err(|_| guarded("reading the footer"))?
        .with_context(|| format!("{}: not a readable parquet file", path.display()))?;
    // The crate allocates what page headers declare: check them against the file first.
    super::parquet_pages::check_page_headers(path, reader.metadata())?;
    let mut rows = catch_unwind(AssertUnwindSafe(|| reader.get_row_iter(None)))
        .map_err(|_| guarded("reading the schema"))?
        .with_context(|| format!("{}: cannot read the parquet schema", path.display()))?;
    for i in 0.. {
        let loc = Loc::Row(i + 1);
        let next = catch_unwind(AssertUnwindSafe(|| rows.next()))
            .map_err(|_| guarded(&format!("decoding {loc}")))?;
        let Some(row) = next else { break };
        // A decoding failure is a property of the file (codec, corrupt page), not of one row.
        let row = row.map_err(|e| {
            let hint = if e.to_string().contains("Disabled feature") {
                "; elastica reads snappy-compressed or uncompressed parquet: re-save it with \
                 pyarrow.parquet.write_table(table, path, compression=\"snappy\")"
            } else {
                ""
            };
            anyhow!(
                "{}: {loc}: cannot decode parquet data: {e}{hint}",
                path.display()
            )
        })?;
        let obj: Object = row
            .get_column_iter()
            .map(|(name, field)| (name.clone(), field_to_json(field)))
            .collect();
        if f(loc, Ok(obj))?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A parquet value as JSON. Strings stay strings and integers stay integers, so schema checks
/// ("label must be an integer") read the same for parquet and JSON files.
fn field_to_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => (*v).into(),
        Field::Short(v) => (*v).into(),
        Field::Int(v) => (*v).into(),
        Field::Long(v) => (*v).into(),
        Field::UByte(v) => (*v).into(),
        Field::UShort(v) => (*v).into(),
        Field::UInt(v) => (*v).into(),
        Field::ULong(v) => (*v).into(),
        Field::Float16(v) => float(f64::from(f32::from(*v))),
        Field::Float(v) => float(f64::from(*v)),
        Field::Double(v) => float(*v),
        Field::Str(s) => Value::String(s.clone()),
        // Unannotated binary: text when it is UTF-8 (old writers), else a byte list.
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => Value::Array(b.data().iter().map(|x| (*x).into()).collect()),
        },
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_to_json(v)))
                .collect(),
        ),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(field_to_json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, field_to_json(v))
                })
                .collect(),
        ),
        // Dates, times and decimals never appear in the text data sets we read; keep their
        // display form so an error message can still show them.
        other => Value::String(other.to_string()),
    }
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// "a string", "a number", ... for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(path: &Path) -> Result<Vec<(Loc, std::result::Result<Object, String>)>> {
        let mut out = Vec::new();
        for_each_row(path, &mut |loc, r| {
            out.push((loc, r.map_err(|e| e.to_string())));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }

    fn fixture(rel: &str) -> std::path::PathBuf {
        crate::data::schemas::testing::fixture(rel).into()
    }

    #[test]
    fn formats_from_names() {
        let csv = |c| Some(Format::Csv(c));
        for (name, format) in [
            ("a/train.jsonl.xz", Some(Format::JsonLines(Compression::Xz))),
            ("x.JSONL", Some(Format::JsonLines(Compression::None))),
            ("x.parquet", Some(Format::Parquet)),
            ("x.json", Some(Format::Json)),
            ("x.parquet.gz", None),
            ("README.md", None),
            ("x.csv", csv(Compression::None)),
            ("x.CSV.zst", csv(Compression::Zstd)),
        ] {
            assert_eq!(format_of(Path::new(name)), format, "{name}");
        }
    }

    #[test]
    fn parquet_rows_span_row_groups_and_keep_types() {
        let rows = collect(&fixture("imdb/plain_text/train-00000-of-00001.parquet")).unwrap();
        assert_eq!(rows.len(), 6, "both row groups are read");
        assert_eq!(rows[5].0, Loc::Row(6));
        let last = rows[5].1.as_ref().unwrap();
        assert_eq!(last["text"], Value::String("Too short.".into()));
        assert_eq!(last["label"], Value::from(1i64));
        let bad = collect(&fixture("imdb_bad.parquet")).unwrap();
        assert_eq!(bad[1].1.as_ref().unwrap()["text"], Value::Null);
        assert_eq!(bad[3].1.as_ref().unwrap()["label"], Value::Null);
    }

    #[test]
    fn json_lines_compressed_and_row_errors() {
        let rows = collect(&fixture("beavertails/round0/30k/train.jsonl.xz")).unwrap();
        assert_eq!(rows.len(), 5);
        let cat = rows[0].1.as_ref().unwrap()["category"].as_object().unwrap();
        assert_eq!(cat.len(), 14);

        let rows = collect(&fixture("generic_bad.jsonl")).unwrap();
        // The blank line is not a row, but line numbers still count it.
        let locs: Vec<Loc> = rows.iter().map(|r| r.0).collect();
        assert_eq!(
            locs,
            [Loc::Line(1), Loc::Line(2), Loc::Line(3), Loc::Line(5)]
        );
        assert!(rows[1].1.as_ref().unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn csv_rows_are_keyed_by_the_header_and_compressed_files_read_alike() {
        let plain = collect(&fixture("TruthfulQA.csv")).unwrap();
        // A quoted field spans lines 3-4, so the next record starts on line 5.
        let locs: Vec<Loc> = plain.iter().map(|r| r.0).collect();
        assert_eq!(
            locs,
            [Loc::Line(2), Loc::Line(3), Loc::Line(5), Loc::Line(6)]
        );
        let row = plain[1].1.as_ref().unwrap();
        assert_eq!(row.len(), 8);
        assert_eq!(row["Question"], "Where did fortune cookies originate?");
        assert!(row["Incorrect Answers"]
            .as_str()
            .unwrap()
            .contains(";\nFortune"));

        let tmp = tempfile::tempdir().unwrap();
        let gz = tmp.path().join("t.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &std::fs::read(fixture("TruthfulQA.csv")).unwrap())
            .unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(collect(&gz).unwrap(), plain);

        let bad = collect(&fixture("truthfulqa_bad.csv")).unwrap();
        assert_eq!(bad.len(), 4);
        assert!(bad[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("not a valid CSV record"));
        assert_eq!(bad[2].1.as_ref().unwrap()["Best Answer"], "");

        let empty = tmp.path().join("empty.csv");
        std::fs::write(&empty, "").unwrap();
        let e = collect(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.csv") && e.contains("no header row"),
            "{e}"
        );
    }

    #[test]
    fn json_lists_and_file_level_errors() {
        let rows = collect(&fixture("alpaca_bad.json")).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[3].0, Loc::Entry(4));
        assert!(rows[3].1.as_ref().unwrap_err().contains("found a string"));
        let e = format!(
            "{:#}",
            collect(&fixture("alpaca_truncated.json")).unwrap_err()
        );
        assert!(
            e.contains("alpaca_truncated.json") && e.contains("not a valid JSON list"),
            "{e}"
        );
        let e = format!("{:#}", collect(&fixture("missing.parquet")).unwrap_err());
        assert!(
            e.contains("cannot open") && e.contains("missing.parquet"),
            "{e}"
        );
    }

    /// The fuzz finding of issue 17 (the shrunk case from `tests/fuzz.rs`): 18 bytes inserted
    /// into the IMDb seed make a page header's statistics declare an 18 MB field, which the
    /// parquet crate allocated before reading; now the file is refused, naming it.
    #[test]
    fn a_page_header_declaring_more_than_the_file_is_refused() {
        let src = fixture("imdb/plain_text/test-00000-of-00001.parquet");
        let mut bytes = std::fs::read(&src).unwrap();
        // proptest's `Index(5932212851897785322)` over len + 1 positions.
        let at = (((bytes.len() as u128 + 1) * 5932212851897785322u128) >> 64) as usize;
        let insert = [
            0, 0, 199, 0, 0, 0, 0, 0, 0, 0, 0, 139, 1, 131, 128, 128, 128, 9,
        ];
        bytes.splice(at..at, insert);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.parquet");
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", collect(&path).unwrap_err());
        assert!(
            e.contains("hostile.parquet") && e.contains("corrupt page header"),
            "{e}"
        );
    }

    #[test]
    fn break_stops_early() {
        let mut n = 0;
        for_each_row(
            &fixture("imdb/plain_text/train-00000-of-00001.parquet"),
            &mut |_, _| {
                n += 1;
                Ok(if n == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )
        .unwrap();
        assert_eq!(n, 2);
    }
}
