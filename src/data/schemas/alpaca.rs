//! Alpaca instruction data (the `tatsu-lab/stanford_alpaca` `alpaca_data.json` layout): a JSON
//! list of objects with `instruction`, `input` (often empty) and `output`.
//!
//! Prompt = the instruction, followed by a newline and the input when the input is not blank;
//! response = the output. (safe-rlhf joins instruction and input with a space instead; the
//! newline keeps the two visibly apart, which matters for inputs that are themselves
//! sentences.) The rows carry no label, so only `select = "all"` applies.

use super::{str_field, Class, Parsed, RowOptions, Schema};
use crate::data::records::Record;
use crate::data::rows::Object;
use anyhow::Result;
use serde_json::Value;

pub const SCHEMA: Schema = Schema {
    name: "alpaca",
    about: "Alpaca instructions: a JSON list of `instruction`, `input`, `output`",
    selects: &[],
    parse,
};

fn parse(obj: &Object, _: &RowOptions) -> Result<Parsed> {
    let instruction = str_field(obj, "instruction")?;
    // A missing or null `input` reads as empty (some Alpaca derivatives drop the key).
    let input = match obj.get("input") {
        None | Some(Value::Null) => "",
        Some(_) => str_field(obj, "input")?,
    };
    let output = str_field(obj, "output")?;
    Ok(Parsed::Row(
        Record::pair(prompt(instruction, input), output),
        Class::Unlabeled,
    ))
}

/// The prompt for an instruction and its optional input.
pub fn prompt(instruction: &str, input: &str) -> String {
    if input.trim().is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n{input}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{bad_rows, fixture, load_fails};
    use super::super::{load, DataSpec};
    use super::*;

    #[test]
    fn instruction_and_input_join() {
        let ds = load(&DataSpec::new(fixture("alpaca/alpaca_data.json"), "alpaca")).unwrap();
        assert_eq!(ds.records.len(), 3);
        assert_eq!(
            ds.records[0],
            Record::pair(
                "Give three tips for staying healthy.",
                "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well."
            )
        );
        assert_eq!(
            ds.records[1],
            Record::pair(
                "Translate the sentence into French.\nThe cat sleeps.",
                "Le chat dort."
            )
        );
    }

    #[test]
    fn bad_entries_and_broken_files() {
        let ds = bad_rows(
            "alpaca_bad.json",
            "alpaca",
            &[
                "entry 2 of the JSON list",
                "\"output\" must be a string, found a number (123)",
            ],
            (2, 3),
        );
        assert!(
            ds.bad_examples[1].contains("entry 3")
                && ds.bad_examples[1].contains("\"instruction\" is missing")
        );
        assert!(
            ds.bad_examples[2].contains("entry 4") && ds.bad_examples[2].contains("found a string")
        );

        let mut spec = DataSpec::new(fixture("alpaca_truncated.json"), "alpaca");
        spec.skip_bad_rows = true;
        load_fails(&spec, &["alpaca_truncated.json", "not a valid JSON list"]);
    }
}
