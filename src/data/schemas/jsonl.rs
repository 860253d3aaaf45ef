//! elastica's own record files: JSON lines of `{"prompt", "response"}` (or `{"text"}` for
//! pre-training style records), read with [`crate::data::records`]'s rules. No labels, so only
//! `select = "all"` applies; a positive and a negative set are two files.

use super::{Class, Parsed, RowOptions, Schema};
use crate::data::records::record_from_json;
use crate::data::rows::Object;
use anyhow::Result;

pub const SCHEMA: Schema = Schema {
    name: "jsonl",
    about: "generic records: JSON lines of {\"prompt\", \"response\"} or {\"text\"}",
    selects: &[],
    parse,
};

fn parse(obj: &Object, _: &RowOptions) -> Result<Parsed> {
    // Clones one row; these files are small next to a model, and the rule stays in one place.
    let record = record_from_json(&serde_json::Value::Object(obj.clone()))?;
    Ok(Parsed::Row(record, Class::Unlabeled))
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::super::{load, DataSpec};
    use crate::data::records::{read_jsonl, Record};

    #[test]
    fn same_records_as_read_jsonl() {
        let path = fixture("generic.jsonl");
        let ds = load(&DataSpec::new(&path, "jsonl")).unwrap();
        assert_eq!(ds.records, read_jsonl(path.as_ref()).unwrap());
        assert_eq!(ds.records[0], Record::pair("Hello", " world"));
    }
}
