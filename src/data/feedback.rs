//! Unpaired feedback for KTO (TRL's unpaired preference format): a prompt, one completion and
//! a boolean `label` (true: the completion is desirable, false: undesirable), as in
//! `trl-lib/kto-mix-14k`. Read from a [`DataSpec`] (files, limit, offset, shuffle_seed and
//! skip_bad_rows as for pairs) in one of two schemas:
//! - `jsonl`: `{"prompt": str, "completion": str, "label": bool}`, trained under the
//!   template as a prompt/response record (the completion then EOS counts);
//! - `conversation`: `{"prompt": [messages], "completion": [one assistant message],
//!   "label": bool}`, rendered by the chat template as a conversation's last turn.
//!
//! Errors name the file and the row. `train --method dpo --dpo-loss kto` reads a file of such
//! rows as this data ([`is_unpaired`] looks at its first row).

use crate::data::records::{last_user_content, Message, Record};
use crate::data::rows::{self, Object};
use crate::data::schemas::conversation::prompt_and_completion;
use crate::data::schemas::{bool_field, str_field, DataSpec, ReadCounts};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;

/// One example of unpaired feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    /// The prompt; for a conversation, the content of its last user turn (the turns being in
    /// `context`).
    pub prompt: String,
    pub completion: String,
    /// TRL's `label`: true for a desirable completion.
    pub desirable: bool,
    /// A conversation's turns before the completion (an assistant turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<Message>>,
}

impl FeedbackRecord {
    /// The training record of this example's prompt answered by `answer` (its own completion,
    /// or, for KTO's mismatched sequences, another example's).
    pub fn record(&self, answer: &str) -> Record {
        Record::answered(&self.prompt, self.context.as_deref(), answer)
    }
}

/// Examples loaded from a spec.
#[derive(Debug, Clone)]
pub struct FeedbackDataset {
    pub records: Vec<FeedbackRecord>,
    pub read: ReadCounts,
}

impl FeedbackDataset {
    pub fn summary(&self) -> String {
        let desirable = self.records.iter().filter(|r| r.desirable).count();
        format!(
            "{} ({desirable} desirable, {} undesirable)",
            self.read.summary("feedback examples", self.records.len()),
            self.records.len() - desirable
        )
    }
}

/// The schemas unpaired feedback is read in.
pub const FEEDBACK_SCHEMAS: &[&str] = &["jsonl", "conversation"];

/// Whether the first row of the data `spec` names is unpaired feedback (it has `completion`
/// and `label`, and no `chosen`).
pub fn is_unpaired(spec: &DataSpec) -> Result<bool> {
    let files = crate::data::files::resolve(&spec.path, spec.files.as_deref())?;
    let mut first = None;
    if let Some(file) = files.first() {
        rows::for_each_row(file, &mut |_, row| {
            first = row.ok();
            Ok(ControlFlow::Break(()))
        })?;
    }
    Ok(first.is_some_and(|o| {
        o.contains_key("completion") && o.contains_key("label") && !o.contains_key("chosen")
    }))
}

/// Load the examples `spec` names.
pub fn load(spec: &DataSpec) -> Result<FeedbackDataset> {
    let parse: fn(&Object) -> Result<FeedbackRecord> = match spec.schema.as_str() {
        "jsonl" => plain,
        "conversation" => conversation,
        s => bail!(
            "unpaired feedback is read in schema {}, not \"{s}\"",
            FEEDBACK_SCHEMAS.join(" or ")
        ),
    };
    if !spec.turns.is_last() {
        bail!("turns (--turns) applies to SFT conversations; a feedback example's answer is its last turn");
    }
    let files = crate::data::files::resolve(&spec.path, spec.files.as_deref())?;
    let (records, read) =
        crate::data::prefs::load_rows(spec, files, ("examples", "feedback examples"), &parse)
            .with_context(|| format!("loading unpaired feedback {}", spec.path))?;
    Ok(FeedbackDataset { records, read })
}

fn plain(o: &Object) -> Result<FeedbackRecord> {
    if ["prompt", "completion"]
        .iter()
        .any(|k| o.get(*k).is_some_and(|v| v.is_array()))
    {
        bail!(
            "this row is conversational feedback (lists of {{\"role\", \"content\"}} messages); \
             read it with schema \"conversation\" (--schema conversation)"
        );
    }
    Ok(FeedbackRecord {
        prompt: str_field(o, "prompt")?.to_string(),
        completion: str_field(o, "completion")?.to_string(),
        desirable: bool_field(o, "label")?,
        context: None,
    })
}

/// TRL's conversational unpaired rows: `prompt` a list of messages, `completion` one
/// assistant message.
fn conversation(o: &Object) -> Result<FeedbackRecord> {
    let field = |k: &str| match o.get(k) {
        None | Some(serde_json::Value::Null) => bail!("field \"{k}\" is missing"),
        Some(v) => Ok(v),
    };
    let (context, answer) = prompt_and_completion(field("prompt")?, field("completion")?)?;
    Ok(FeedbackRecord {
        prompt: last_user_content(&context).to_string(),
        completion: answer.content,
        desirable: bool_field(o, "label")?,
        context: Some(context),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, lines: &[serde_json::Value]) -> DataSpec {
        DataSpec::new(crate::data::write_jsonl(dir, "kto.jsonl", lines), "jsonl")
    }

    #[test]
    fn unpaired_rows_read_in_both_layouts_and_bad_ones_name_the_row() {
        let d = tempfile::tempdir().unwrap();
        let rows = [
            serde_json::json!({"prompt": "p", "completion": " a", "label": true}),
            serde_json::json!({"prompt": "q", "completion": " b", "label": false}),
        ];
        let spec = write(d.path(), &rows);
        assert!(is_unpaired(&spec).unwrap());
        let ds = load(&spec).unwrap();
        assert_eq!(ds.records.len(), 2);
        assert!(ds.records[0].desirable && !ds.records[1].desirable);
        assert_eq!(ds.records[1].record(" a"), Record::pair("q", " a"));
        assert!(
            ds.summary().contains("1 desirable, 1 undesirable"),
            "{}",
            ds.summary()
        );
        let u = |c: &str| serde_json::json!({"role": "user", "content": c});
        let a = |c: &str| serde_json::json!({"role": "assistant", "content": c});
        let mut spec = write(
            d.path(),
            &[serde_json::json!({"prompt": [u("hi")], "completion": [a("hello")], "label": true})],
        );
        spec.schema = "conversation".into();
        let ds = load(&spec).unwrap();
        assert_eq!(ds.records[0].prompt, "hi");
        assert_eq!(
            ds.records[0].record("yo"),
            Record::chat(&[Message::new("user", "hi")], "yo")
        );
        for (row, word) in [
            (
                serde_json::json!({"prompt": "p", "completion": "a", "label": "yes"}),
                "label",
            ),
            (
                serde_json::json!({"prompt": "p", "label": true}),
                "completion",
            ),
            (
                serde_json::json!({"prompt": [u("x")], "completion": [a("y")], "label": true}),
                "schema \"conversation\"",
            ),
        ] {
            let spec = write(d.path(), &[row]);
            let e = format!("{:#}", load(&spec).unwrap_err());
            assert!(e.contains(word) && e.contains("line 1"), "{e}");
        }
        let pairs = write(
            d.path(),
            &[serde_json::json!({"prompt": "p", "chosen": "a", "rejected": "b"})],
        );
        assert!(!is_unpaired(&pairs).unwrap());
    }
}
