//! Result tables and number formatting. A [`Table`] is plain strings (headers and rows) and
//! renders to Markdown (for `report.md` and the terminal), CSV (RFC 4180 quoting) and a LaTeX
//! `tabular` (special characters escaped), so one table feeds every output.
//!
//! No table shows a negative zero: a value that rounds to zero prints as `0.00`, not
//! `-0.00` (the sign of a rounded-away number says nothing, and reads as a result).

use anyhow::{bail, Result};
use serde::Serialize;

/// A rectangular table of already-formatted cells.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// A table of serialisable rows (structs or maps of plain values): one column per field,
    /// named and ordered as the first row serialises, one row per row. Each cell is written
    /// as the hand-built result tables write their values: a string as it is, an integer or
    /// float with Rust's `Display` (the shortest string that reads back as the same number,
    /// never an exponent: `1.0` prints `1`, `1e-7` prints `0.0000001`), a bool as
    /// `true`/`false`, a missing value (`None`) as an empty cell. A nested value is an error.
    /// The columns are the struct's fields as declared, so a table of no rows still has its
    /// header line.
    pub fn from_rows<T: Serialize + serde::de::DeserializeOwned>(rows: &[T]) -> Result<Table> {
        Table::from_rows_fixed(rows, &[])
    }

    /// [`Table::from_rows`] with a fixed number of decimals for some columns: `("score", 4)`
    /// writes every number of column `score` as `{:.4}` (`0.8135`, `0.5000`), so a column
    /// lines up and keeps its trailing zeros. The other columns are as `from_rows` writes
    /// them. A rule naming a column the rows do not have is an error (a renamed field must
    /// not silently lose its format).
    pub fn from_rows_fixed<T: Serialize + serde::de::DeserializeOwned>(
        rows: &[T],
        decimals: &[(&str, usize)],
    ) -> Result<Table> {
        let mut table = Table::new(struct_fields::<T>()?);
        if let Some((name, _)) = decimals
            .iter()
            .find(|(name, _)| !table.headers.iter().any(|h| h == name))
        {
            bail!(
                "a decimals rule names the column {name:?}, the columns are {:?}",
                table.headers
            );
        }
        let places = |column: &str| {
            decimals
                .iter()
                .find(|(name, _)| *name == column)
                .map(|&(_, d)| d)
        };
        for (i, row) in rows.iter().enumerate() {
            // Through JSON text, read back in field order (serde_json's map sorts keys).
            let text = serde_json::to_string(row)?;
            let OrderedRow(fields) = serde_json::from_str(&text)?;
            if fields.iter().map(|(k, _)| k).ne(table.headers.iter()) {
                bail!(
                    "table row {} has the fields {:?}, the columns are {:?}",
                    i + 1,
                    fields.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                    table.headers
                );
            }
            let cells = fields
                .iter()
                .map(|(k, v)| row_cell(v, places(k)).map_err(|e| anyhow::anyhow!("field {k}: {e}")))
                .collect::<Result<Vec<_>>>()?;
            table.push_row(cells)?;
        }
        Ok(table)
    }

    /// Append a row; it must have one cell per header. Numbers that print as a negative
    /// zero (`-0`, `-0.000`) lose their sign.
    pub fn push_row<S: Into<String>>(&mut self, row: impl IntoIterator<Item = S>) -> Result<()> {
        let row: Vec<String> = row
            .into_iter()
            .map(|c| without_negative_zero(c.into()))
            .collect();
        if row.len() != self.headers.len() {
            bail!(
                "table row {} has {} cells but the table has {} columns ({})",
                self.rows.len() + 1,
                row.len(),
                self.headers.len(),
                self.headers.join(", ")
            );
        }
        self.rows.push(row);
        Ok(())
    }

    /// Write column `from` under the header `to` (a row field whose name is not the header
    /// a published file has always had); naming no column is an error.
    pub fn rename_column(&mut self, from: &str, to: &str) -> Result<()> {
        match self.headers.iter_mut().find(|h| *h == from) {
            Some(h) => *h = to.to_string(),
            None => bail!(
                "no column {from:?} to rename, the columns are {:?}",
                self.headers
            ),
        }
        Ok(())
    }

    /// GitHub-flavoured Markdown; `|` inside a cell is escaped and newlines become spaces.
    pub fn to_markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace(['\r', '\n'], " ");
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells.iter().map(|c| cell(c)).collect();
            format!("| {} |\n", parts.join(" | "))
        };
        let mut out = line(&self.headers);
        out.push('|');
        for _ in &self.headers {
            out.push_str("---|");
        }
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    /// CSV with RFC 4180 quoting: a field containing a comma, a double quote, CR or LF is
    /// enclosed in double quotes with inner quotes doubled. Records end with `\n` (not the
    /// RFC's CRLF), which every CSV reader accepts and keeps diffs clean.
    pub fn to_csv(&self) -> String {
        let mut out = csv_record(&self.headers);
        for r in &self.rows {
            out.push_str(&csv_record(r));
        }
        out
    }

    /// A LaTeX `tabular` (booktabs rules): first column left-aligned, the others
    /// right-aligned. Cells are escaped with [`latex_escape`].
    pub fn to_latex(&self) -> String {
        let ncol = self.headers.len();
        let spec: String = (0..ncol).map(|i| if i == 0 { 'l' } else { 'r' }).collect();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells.iter().map(|c| latex_escape(c)).collect();
            format!("{} \\\\\n", parts.join(" & "))
        };
        let mut out = format!("\\begin{{tabular}}{{{spec}}}\n\\toprule\n");
        out.push_str(&line(&self.headers));
        out.push_str("\\midrule\n");
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        out
    }
}

/// A serialised row's fields in the order they were written.
struct OrderedRow(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = OrderedRow;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table row (a struct or a map)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedRow, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(OrderedRow(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// The fields of a struct that derives `Deserialize`, in declaration order (what serde's
/// derive hands to `deserialize_struct`).
fn struct_fields<T: serde::de::DeserializeOwned>() -> Result<Vec<&'static str>> {
    use serde::de::value::Error;
    struct Probe<'a>(&'a mut Option<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Error> {
            *self.0 = Some(fields);
            Err(serde::de::Error::custom("probed"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    match fields {
        Some(f) => Ok(f.to_vec()),
        None => bail!("Table::from_rows needs rows of a struct type"),
    }
}

/// One value of a row as its table cell (see [`Table::from_rows`]), a number with `decimals`
/// places when its column has that rule.
fn row_cell(v: &serde_json::Value, decimals: Option<usize>) -> Result<String> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (decimals, n.as_f64()) {
            (Some(d), Some(f)) => format!("{f:.d$}"),
            _ => display_number(n),
        },
        other => bail!("a table cell holds a plain value, not {other}"),
    })
}

/// A number as Rust's `Display` writes it: an integer as one, a float as the shortest
/// string that reads back as the same value.
fn display_number(n: &serde_json::Number) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) if !n.is_f64() => u.to_string(),
        (_, Some(i), _) if !n.is_f64() => i.to_string(),
        (_, _, Some(f)) => f.to_string(),
        _ => n.to_string(),
    }
}

fn csv_record(cells: &[String]) -> String {
    let fields: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
    format!("{}\n", fields.join(","))
}

/// One CSV field with RFC 4180 quoting.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Escape text for LaTeX: `\ & % $ # _ { } ~ ^` and the `±` that [`fmt_ci`] produces.
pub fn latex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(ch);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '±' => out.push_str("$\\pm$"),
            _ => out.push(ch),
        }
    }
    out
}

/// `s` with every space-separated number that reads as zero but carries a minus sign
/// (`-0`, `-0.000`, `-0e0`, what formatting a tiny negative value gives) written without it.
pub fn without_negative_zero(s: String) -> String {
    if !s.contains("-0") {
        return s;
    }
    s.split(' ')
        .map(|tok| match tok.strip_prefix('-') {
            Some(rest) if rest.parse::<f64>().is_ok_and(|v| v == 0.0) => rest,
            _ => tok,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `x` with `sig` significant digits, in plain notation for moderate magnitudes and in
/// scientific notation below 1e-3 or from 1e6 on. Non-finite values print as `nan`/`inf`.
pub fn fmt_sig(x: f64, sig: usize) -> String {
    without_negative_zero(fmt_sig_signed(x, sig))
}

fn fmt_sig_signed(x: f64, sig: usize) -> String {
    let sig = sig.max(1);
    if !x.is_finite() {
        return format!("{x}").to_lowercase();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let mag = x.abs().log10().floor() as i32;
    if !(-3..6).contains(&mag) {
        return format!("{:.*e}", sig - 1, x);
    }
    let decimals = (sig as i32 - 1 - mag).max(0) as usize;
    format!("{:.*}", decimals, x)
}

/// `mean ± half` with the half-width rounded to two significant digits and the mean to the
/// same decimal place, e.g. `fmt_ci(0.51234, Some(0.0341))` = `"0.512 ± 0.034"`. Without an
/// interval (one sample) the mean alone is printed with four significant digits.
pub fn fmt_ci(mean: f64, half: Option<f64>) -> String {
    without_negative_zero(fmt_ci_signed(mean, half))
}

fn fmt_ci_signed(mean: f64, half: Option<f64>) -> String {
    let Some(h) = half.filter(|h| h.is_finite() && *h > 0.0) else {
        return fmt_sig(mean, 4);
    };
    if !mean.is_finite() {
        return format!("{} ± {}", fmt_sig(mean, 4), fmt_sig(h, 2));
    }
    let hmag = h.log10().floor() as i32;
    let decimals = 1 - hmag; // two significant digits in the half-width
    let mmag = if mean == 0.0 {
        hmag
    } else {
        mean.abs().log10().floor() as i32
    };
    if decimals > 6 && (0..6).contains(&mmag) {
        // An interval far narrower than a mean of ordinary size: keep the mean readable.
        return format!("{} ± {:.1e}", fmt_sig(mean, 6), h);
    }
    if decimals > 6 || mmag >= 6 {
        return format!("{:.3e} ± {:.1e}", mean, h);
    }
    let d = decimals.max(0) as usize;
    format!("{:.*} ± {:.*}", d, mean, d, h)
}

/// A p-value for a table: three significant digits, or `< 1e-6` below that.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-6 {
        "< 1e-6".to_string()
    } else {
        fmt_sig(p, 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(["k", "ratio", "note"]);
        t.push_row(["10", "9.8 ± 0.4", "a, \"quoted\" | piped"])
            .unwrap();
        t.push_row(["100", "101", "x_1 & 50% #2"]).unwrap();
        t
    }

    #[test]
    fn markdown_renders_and_escapes_pipes() {
        let md = sample().to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| k | ratio | note |");
        assert_eq!(lines[1], "|---|---|---|");
        assert_eq!(lines[2], "| 10 | 9.8 ± 0.4 | a, \"quoted\" \\| piped |");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn csv_quotes_per_rfc4180() {
        let csv = sample().to_csv();
        assert_eq!(
            csv,
            "k,ratio,note\n10,9.8 ± 0.4,\"a, \"\"quoted\"\" | piped\"\n100,101,x_1 & 50% #2\n"
        );
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn latex_escapes_specials() {
        let tex = sample().to_latex();
        assert!(tex.starts_with("\\begin{tabular}{lrr}\n\\toprule\nk & ratio & note \\\\\n"));
        assert!(tex.contains("9.8 $\\pm$ 0.4"));
        assert!(tex.contains("x\\_1 \\& 50\\% \\#2"));
        assert!(tex.trim_end().ends_with("\\end{tabular}"));
        assert_eq!(
            latex_escape("a\\b~c^d{e}$"),
            "a\\textbackslash{}b\\textasciitilde{}c\\textasciicircum{}d\\{e\\}\\$"
        );
    }

    #[test]
    fn wrong_row_width_is_an_error_naming_the_columns() {
        let mut t = Table::new(["a", "b"]);
        let e = t.push_row(["1"]).unwrap_err().to_string();
        assert!(
            e.contains("1 cells") && e.contains("2 columns") && e.contains("a, b"),
            "{e}"
        );
    }

    #[test]
    fn rows_become_cells_as_the_hand_built_tables_write_them() {
        #[derive(Serialize, serde::Deserialize)]
        struct Row {
            name: String,
            n: usize,
            delta: i64,
            x: f64,
            ci: Option<f64>,
            ok: bool,
        }
        let rows = [
            Row {
                name: "a, b".into(),
                n: 3,
                delta: -2,
                x: 1.0,
                ci: None,
                ok: true,
            },
            Row {
                name: "c".into(),
                n: 10,
                delta: 0,
                x: 1e-7,
                ci: Some(0.1 + 0.2),
                ok: false,
            },
        ];
        let t = Table::from_rows(&rows).unwrap();
        // What `to_string()` on each value gives, which results.csv has always held.
        let hand = |r: &Row| {
            vec![
                r.name.clone(),
                r.n.to_string(),
                r.delta.to_string(),
                r.x.to_string(),
                r.ci.map(|v| v.to_string()).unwrap_or_default(),
                r.ok.to_string(),
            ]
        };
        assert_eq!(t.headers, ["name", "n", "delta", "x", "ci", "ok"]);
        assert_eq!(t.rows, [hand(&rows[0]), hand(&rows[1])]);
        assert_eq!(t.rows[0][3], "1");
        assert_eq!(t.rows[1][3], "0.0000001");
        assert_eq!(t.rows[1][4], "0.30000000000000004");
        assert_eq!(t.to_csv().lines().nth(1), Some("\"a, b\",3,-2,1,,true"));
        // No rows: the header line alone.
        let empty = Table::from_rows::<Row>(&[]).unwrap();
        assert_eq!(empty.to_csv(), "name,n,delta,x,ci,ok\n");
        #[derive(Serialize, serde::Deserialize)]
        struct Nested {
            a: Vec<u8>,
        }
        let e = Table::from_rows(&[Nested { a: vec![1, 2] }])
            .unwrap_err()
            .to_string();
        assert!(e.contains("field a"), "{e}");
        let e = Table::from_rows(&[1.0]).unwrap_err().to_string();
        assert!(e.contains("struct"), "{e}");
    }

    #[test]
    fn a_decimals_rule_fixes_its_columns_places_and_names_a_wrong_column() {
        #[derive(Serialize, serde::Deserialize)]
        struct Row {
            n: usize,
            x: f64,
            ci: Option<f64>,
            y: f64,
        }
        let rows = [
            Row {
                n: 3,
                x: 0.5,
                ci: None,
                y: 0.5,
            },
            Row {
                n: 10,
                x: 0.123456,
                ci: Some(0.08384),
                y: -0.00001,
            },
        ];
        let mut t = Table::from_rows_fixed(&rows, &[("x", 4), ("ci", 4), ("n", 1)]).unwrap();
        // Ruled columns keep trailing zeros and round; a missing value stays empty; the
        // column without a rule is as `from_rows` writes it.
        assert_eq!(t.rows[0], ["3.0", "0.5000", "", "0.5"]);
        assert_eq!(t.rows[1], ["10.0", "0.1235", "0.0838", "-0.00001"]);
        t.rename_column("ci", "ci95").unwrap();
        assert_eq!(t.headers, ["n", "x", "ci95", "y"]);
        let e = t.rename_column("ci", "x").unwrap_err().to_string();
        assert!(e.contains("\"ci\"") && e.contains("ci95"), "{e}");
        let e = Table::from_rows_fixed(&rows, &[("z", 2)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"z\"") && e.contains("\"y\""), "{e}");
        // Rounding to zero drops the sign, as in every table.
        let t = Table::from_rows_fixed(&rows, &[("y", 3)]).unwrap();
        assert_eq!(t.rows[1][3], "0.000");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_ci(0.51234, Some(0.0341)), "0.512 ± 0.034");
        assert_eq!(fmt_ci(1234.4, Some(56.0)), "1234 ± 56");
        assert_eq!(fmt_ci(9.81, Some(0.4)), "9.81 ± 0.40");
        assert_eq!(fmt_ci(0.7, None), "0.7000");
        assert_eq!(fmt_ci(2.5e-9, Some(1e-10)), "2.500e-9 ± 1.0e-10");
        assert_eq!(fmt_ci(10.0, Some(3.2e-13)), "10.0000 ± 3.2e-13");
        assert_eq!(fmt_ci(-1.047e-3, Some(7.8e-6)), "-1.047e-3 ± 7.8e-6");
        assert_eq!(fmt_sig(0.0012345, 3), "0.00123");
        assert_eq!(fmt_sig(123456.0, 3), "123456");
        assert_eq!(fmt_sig(1.5e7, 2), "1.5e7");
        assert_eq!(fmt_sig(0.0, 3), "0");
        assert_eq!(fmt_sig(f64::NAN, 3), "nan");
        assert_eq!(fmt_p(0.109375), "0.109");
        assert_eq!(fmt_p(1e-9), "< 1e-6");
    }

    #[test]
    fn no_negative_zero_anywhere() {
        assert_eq!(fmt_ci(-0.0004, Some(0.031)), "0.000 ± 0.031");
        assert_eq!(fmt_ci(-0.0, None), "0");
        assert_eq!(fmt_sig(-0.0, 3), "0");
        assert_eq!(fmt_ci(-0.4, Some(0.031)), "-0.400 ± 0.031");
        assert_eq!(fmt_sig(-1e-9, 2), "-1.0e-9");
        let mut t = Table::new(["a", "b", "c"]);
        t.push_row([
            format!("{:.2}", -0.001),
            "-0 (1 of 2 seeds)".into(),
            "-0.5".into(),
        ])
        .unwrap();
        t.push_row([(-0.0f64).to_string(), "x-0".into(), "-0e0".into()])
            .unwrap();
        assert_eq!(t.rows[0], ["0.00", "0 (1 of 2 seeds)", "-0.5"]);
        assert_eq!(t.rows[1], ["0", "x-0", "0e0"]);
    }
}
