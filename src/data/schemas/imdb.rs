//! IMDb movie reviews (the `stanfordnlp/imdb` parquet layout): `text` string, `label` int64
//! with 1 = positive, 0 = negative, -1 = unlabelled (the `unsupervised` split).
//!
//! Each review becomes a prompt/response pair: the prompt is its first `prompt_words` words
//! and the response the rest, so the model learns to continue a review's opening in the
//! review's sentiment (the paper's IMDb setting, raw text without a template). The same
//! openings serve as generation prompts for evaluation.
//!
//! Cleaning: IMDb texts carry HTML line breaks (`<br />`, also `<br/>` and `<br>`); each is
//! replaced by a space, then whitespace runs collapse to one space. The response keeps its
//! leading space, so `prompt + response` is exactly the cleaned review. A review with no more
//! than `prompt_words` words has nothing to continue and is counted as too short.

use super::{int_field, str_field, Class, Parsed, RowOptions, Schema, Select};
use crate::data::records::Record;
use crate::data::rows::Object;
use anyhow::{bail, Result};

pub const SCHEMA: Schema = Schema {
    name: "imdb",
    about: "IMDb reviews: `text` string, `label` int (1 = positive, 0 = negative)",
    selects: &[Select::Positive, Select::Negative],
    parse,
};

fn parse(obj: &Object, opts: &RowOptions) -> Result<Parsed> {
    let text = str_field(obj, "text")?;
    let class = match int_field(obj, "label")? {
        1 => Class::Positive,
        0 => Class::Negative,
        -1 => Class::Unlabeled,
        other => bail!(
            "field \"label\" must be 1 (positive), 0 (negative) or -1 (unlabelled), found {other}"
        ),
    };
    Ok(match split_review(text, opts.prompt_words) {
        Some((prompt, response)) => Parsed::Row(Record::pair(prompt, response), class),
        None => Parsed::TooShort,
    })
}

/// Split a cleaned review into its first `words` words and the rest (with its leading
/// space); `None` when nothing is left for the response.
pub fn split_review(text: &str, words: usize) -> Option<(String, String)> {
    let clean = clean_text(text);
    let mut ends = clean.match_indices(' ').map(|(i, _)| i);
    // After cleaning, words are separated by single spaces: the `words`-th space ends the prompt.
    let cut = ends.nth(words.checked_sub(1)?)?;
    Some((clean[..cut].to_string(), clean[cut..].to_string()))
}

/// Replace HTML line breaks by spaces and collapse whitespace.
pub fn clean_text(text: &str) -> String {
    let lower = text.to_ascii_lowercase(); // same byte offsets as `text`
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if let Some(len) = br_tag_len(&lower[i..]) {
            out.push(' ');
            i += len;
            continue;
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Byte length of a `<br>`, `<br/>` or `<br />` tag at the start of `s` (lowercased).
fn br_tag_len(s: &str) -> Option<usize> {
    let rest = s.strip_prefix("<br")?;
    let trimmed = rest.trim_start_matches(' ');
    let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let after = trimmed.strip_prefix('>')?;
    Some(s.len() - after.len())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bad_rows, fixture, load_fails, train_split};
    use super::super::{load, DataSpec, Select};
    use super::*;
    use crate::data::prompts::Prompt;

    #[test]
    fn cleaning_and_splitting() {
        assert_eq!(clean_text("a<br /><br />b <BR>c<br/>  d\n\ne"), "a b c d e");
        assert_eq!(clean_text("x <brr> y"), "x <brr> y");
        let (p, r) = split_review("One two<br />three four five", 2).unwrap();
        assert_eq!((p.as_str(), r.as_str()), ("One two", " three four five"));
        assert!(split_review("One two", 2).is_none());
        assert!(split_review("One two", 0).is_none());
        assert_eq!(split_review("ünï cödé ok", 2).unwrap().1, " ok");
    }

    #[test]
    fn positive_and_negative_pairs_from_parquet() {
        let mut spec = train_split("imdb");
        spec.select = Select::Positive;
        let ds = load(&spec).unwrap();
        // 3 positive reviews, one of them two words long.
        assert_eq!(
            (ds.records.len(), ds.skipped_short, ds.read.rows_read),
            (2, 1, 6)
        );
        assert_eq!(
            ds.records[0],
            Record::pair(
                "A wonderful film with a warm heart. The",
                " cast is superb and the ending made me cry."
            )
        );
        spec.select = Select::Negative;
        spec.prompt_words = 3;
        let ds = load(&spec).unwrap();
        assert_eq!(ds.records.len(), 3);
        assert_eq!(
            ds.prompts().unwrap(),
            Prompt::texts(&[
                "I rented this".into(),
                "Dull, slow and".into(),
                "Awful script. Awful".into()
            ])
        );
        let Record::Pair { response, .. } = &ds.records[2] else {
            panic!()
        };
        assert!(!response.contains('<'), "{response}");
    }

    #[test]
    fn bad_rows_name_the_parquet_row() {
        let ds = bad_rows(
            "imdb_bad.parquet",
            "imdb",
            &["imdb_bad.parquet: row 2", "\"text\" is null"],
            (1, 3),
        );
        assert!(ds.bad_examples[1].contains("row 3") && ds.bad_examples[1].contains("found 7"));
        assert!(ds.bad_examples[2].contains("row 4") && ds.bad_examples[2].contains("null"));

        let spec = DataSpec::new(fixture("imdb_label_string.parquet"), "imdb");
        load_fails(
            &spec,
            &["row 1", "must be an integer, found a string (\"1\")"],
        );
    }
}
