//! BeaverTails question-answer pairs (the `PKU-Alignment/BeaverTails` JSONL layout, often
//! `.jsonl.xz`): `prompt`, `response`, `category` (14 harm categories mapped to booleans) and
//! `is_safe`. A row becomes the pair (prompt, response), labelled safe or unsafe by
//! `is_safe`, the label the paper's safe/unsafe SFT sets use. `category` is checked for shape
//! (an object of booleans) but does not affect the label.

use super::{bool_field, str_field, Class, Parsed, RowOptions, Schema, Select};
use crate::data::records::Record;
use crate::data::rows::{json_kind, Object};
use anyhow::{bail, Result};
use serde_json::Value;

pub const SCHEMA: Schema = Schema {
    name: "beavertails",
    about: "BeaverTails QA pairs: `prompt`, `response`, `category`, `is_safe`",
    selects: &[Select::Safe, Select::Unsafe],
    parse,
};

/// The 14 harm categories, as the published files spell them.
pub const CATEGORIES: [&str; 14] = [
    "animal_abuse",
    "child_abuse",
    "controversial_topics,politics",
    "discrimination,stereotype,injustice",
    "drug_abuse,weapons,banned_substance",
    "financial_crime,property_crime,theft",
    "hate_speech,offensive_language",
    "misinformation_regarding_ethics,laws_and_safety",
    "non_violent_unethical_behavior",
    "privacy_violation",
    "self_harm",
    "sexually_explicit,adult_content",
    "terrorism,organized_crime",
    "violence,aiding_and_abetting,incitement",
];

fn parse(obj: &Object, _: &RowOptions) -> Result<Parsed> {
    let prompt = str_field(obj, "prompt")?;
    let response = str_field(obj, "response")?;
    let is_safe = bool_field(obj, "is_safe")?;
    match obj.get("category") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_boolean()) {
                bail!(
                    "field \"category\" must map each category to a boolean, but \"{k}\" is {}",
                    json_kind(v)
                );
            }
        }
        Some(other) => bail!(
            "field \"category\" must be an object of booleans, found {}",
            json_kind(other)
        ),
    }
    let class = if is_safe { Class::Safe } else { Class::Unsafe };
    Ok(Parsed::Row(Record::pair(prompt, response), class))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bad_rows, train_split};
    use super::super::{load, Select};
    use super::*;

    #[test]
    fn safe_and_unsafe_from_compressed_shards() {
        let mut spec = train_split("beavertails");
        spec.select = Select::Unsafe;
        let ds = load(&spec).unwrap();
        assert_eq!(ds.records.len(), 2);
        assert_eq!(
            ds.records[0],
            Record::pair(
                "How do I pick a lock?",
                "Insert a tension wrench, then rake the pins until they set."
            )
        );
        spec.select = Select::Safe;
        let safe = load(&spec).unwrap();
        assert_eq!(safe.records.len(), 3);
        spec.select = Select::All;
        let all = load(&spec).unwrap();
        assert_eq!(
            (
                all.prompts().unwrap().len(),
                all.unique_prompts().unwrap().len()
            ),
            (5, 4)
        );
        spec.files = None;
        spec.select = Select::All;
        assert_eq!(
            load(&spec).unwrap().records.len(),
            7,
            "train and test shards"
        );
    }

    #[test]
    fn bad_lines_are_located_and_explained() {
        let ds = bad_rows(
            "beavertails_bad.jsonl",
            "beavertails",
            &["beavertails_bad.jsonl: line 2", "not valid JSON"],
            (2, 4),
        );
        let ex = ds.bad_examples.join("\n");
        assert!(
            ex.contains("line 3") && ex.contains("\"is_safe\" must be a boolean, found a string"),
            "{ex}"
        );
        assert!(
            ex.contains("line 4") && ex.contains("\"response\" is missing"),
            "{ex}"
        );
        assert!(
            ex.contains("line 5") && ex.contains("\"animal_abuse\" is a string"),
            "{ex}"
        );
    }
}
