//! SFT records. A record is a prompt/response pair (the loss counts on the response and its
//! EOS only), a plain text (the loss counts on every token), or a conversation (TRL's
//! conversational format: the loss counts on its last message, an assistant turn, rendered by
//! the model's chat template). On disk: JSONL, one object a line, `{"prompt": ...,
//! "response": ...}`, `{"text": ...}` or `{"messages": [{"role", "content"}, ...]}`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` (or whatever roles the chat template knows).
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The role of the turn a conversation record trains on.
pub const ASSISTANT: &str = "assistant";
/// The role of a user turn.
pub const USER: &str = "user";

/// Which tokens of a conversation the loss counts (`--turns`, a data spec's `turns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Turns {
    /// The last assistant turn (what the template adds for it, end-of-turn text included);
    /// every earlier turn is masked context. TRL's conversational prompt-completion.
    #[default]
    Last,
    /// Every assistant turn, each as `last` counts it; system and user turns are masked.
    /// TRL's `assistant_only_loss`, for templates that render a conversation as the
    /// extension of its earlier turns.
    Assistant,
    /// Every token of the rendered conversation. TRL's default for `{"messages"}` rows
    /// (language modelling).
    All,
}

impl Turns {
    pub fn is_last(&self) -> bool {
        *self == Turns::Last
    }
    pub fn name(self) -> &'static str {
        match self {
            Turns::Last => "last",
            Turns::Assistant => "assistant",
            Turns::All => "all",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    /// Prompt tokens are masked out of the loss; the response and EOS count.
    Pair { prompt: String, response: String },
    /// Every token counts (pre-training style).
    Text { text: String },
    /// A conversation whose last message is an assistant turn, rendered by the chat template.
    /// By default ([`Turns::Last`]) the turns before the last (with the generation prompt)
    /// are the masked prompt, and the loss counts on what the template adds for the last turn
    /// (its content and end-of-turn text), as TRL's conversational prompt-completion does.
    Chat {
        messages: Vec<Message>,
        /// Which turns count (not written when it is the default).
        #[serde(default, skip_serializing_if = "Turns::is_last")]
        turns: Turns,
    },
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
    /// A pair's prompt; a text and a conversation have none (a conversation's prompt is its
    /// turns, which a template turns into text).
    pub fn prompt(&self) -> Option<&str> {
        match self {
            Record::Pair { prompt, .. } => Some(prompt),
            Record::Text { .. } | Record::Chat { .. } => None,
        }
    }
    /// The record as one text without a template: the text, or the prompt then the response;
    /// a conversation has none.
    pub fn plain_text(&self) -> Option<String> {
        match self {
            Record::Text { text } => Some(text.clone()),
            Record::Pair { prompt, response } => Some(format!("{prompt}{response}")),
            Record::Chat { .. } => None,
        }
    }
    /// The conversation `context` answered by the assistant with `answer` (its last turn
    /// counts).
    pub fn chat(context: &[Message], answer: &str) -> Self {
        let mut messages = context.to_vec();
        messages.push(Message::new(ASSISTANT, answer));
        Record::conversation(messages)
    }
    /// `answer` to a prompt: the conversation `context` answered by the assistant when there
    /// is one, else the pair (`prompt`, `answer`).
    pub fn answered(prompt: &str, context: Option<&[Message]>, answer: &str) -> Self {
        match context {
            Some(turns) => Record::chat(turns, answer),
            None => Record::pair(prompt, answer),
        }
    }
    /// Whether the record is a conversation (which the chat and safe-rlhf templates render).
    pub fn is_conversation(&self) -> bool {
        matches!(self, Record::Chat { .. })
    }
    /// A conversation's turns; none for a text or a pair.
    pub fn messages(&self) -> Option<&[Message]> {
        match self {
            Record::Chat { messages, .. } => Some(messages),
            _ => None,
        }
    }
    /// A conversation whose last turn counts ([`Turns::Last`]).
    pub fn conversation(messages: Vec<Message>) -> Self {
        Record::Chat {
            messages,
            turns: Turns::Last,
        }
    }
}

/// The content of the last user turn of `turns` (what logs and generation prompts show of a
/// conversation's prompt), or "" without one.
pub fn last_user_content(turns: &[Message]) -> &str {
    turns
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map_or("", |m| m.content.as_str())
}

/// A line without the UTF-8 byte-order mark some editors write at the start of a file
/// (JSON has no BOM; Python's `utf-8-sig` drops it the same way).
pub fn without_bom(line: &str) -> &str {
    line.strip_prefix('\u{feff}').unwrap_or(line)
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
        let line = without_bom(&line);
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            parse_record(line).with_context(|| format!("{}: line {}", path.display(), i + 1))?,
        );
    }
    if out.is_empty() {
        bail!("data file {} holds no records", path.display());
    }
    Ok(out)
}

/// Read records as elastica writes them (a grid's frozen inputs, the responses it sampled,
/// `generate --out`): pairs, texts, and `{"messages": [...]}` conversations ending in an
/// assistant turn (with their `turns` when not the default). Errors name the file and line.
pub fn read_run_records(path: &Path) -> Result<Vec<Record>> {
    json_lines(path, "records")?
        .into_iter()
        .map(|(line, v)| {
            let at = || format!("{}: line {line}", path.display());
            match v.get("messages") {
                Some(m) => {
                    let messages = messages_from_json(m, "messages").with_context(at)?;
                    check_conversation(&messages).with_context(at)?;
                    let turns = match v.get("turns") {
                        None | Some(serde_json::Value::Null) => Turns::Last,
                        Some(t) => serde_json::from_value(t.clone())
                            .with_context(|| format!("{}: \"turns\" is not valid", at()))?,
                    };
                    Ok(Record::Chat { messages, turns })
                }
                None => record_from_json(&v).with_context(at),
            }
        })
        .collect()
}

/// Parse one JSONL line into a [`Record`].
pub fn parse_record(line: &str) -> Result<Record> {
    let v: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    record_from_json(&v)
}

/// A [`Record`] from a parsed JSON value: an object with string fields `prompt`+`response`
/// or `text`. Conversational rows (lists of messages) are named, with the schema that reads
/// them.
pub fn record_from_json(v: &serde_json::Value) -> Result<Record> {
    let Some(obj) = v.as_object() else {
        bail!(
            "expected a JSON object with \"prompt\" and \"response\" (or \"text\"), found {}",
            kind(v)
        );
    };
    if ["messages", "prompt", "completion", "conversations"]
        .iter()
        .any(|k| obj.get(*k).is_some_and(|x| x.is_array()))
    {
        bail!(
            "this row is a conversation (lists of {{\"role\", \"content\"}} messages); read it \
             with schema \"conversation\" (--schema conversation), which renders it with the \
             model's chat template"
        );
    }
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

/// A list of `{"role", "content"}` messages (field `key` of a row), each role and content a
/// string.
pub fn messages_from_json(v: &serde_json::Value, key: &str) -> Result<Vec<Message>> {
    let Some(list) = v.as_array() else {
        bail!(
            "field \"{key}\" must be a list of {{\"role\", \"content\"}} messages, found {}",
            kind(v)
        );
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |k: &str| -> Result<String> {
                match m.get(k) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    None | Some(serde_json::Value::Null) => {
                        bail!("field \"{key}\": message {} has no \"{k}\"", i + 1)
                    }
                    Some(x) => bail!(
                        "field \"{key}\": message {}'s \"{k}\" must be a string, found {}",
                        i + 1,
                        kind(x)
                    ),
                }
            };
            Ok(Message {
                role: text("role")?,
                content: text("content")?,
            })
        })
        .collect()
}

/// Check a conversation record: it ends with an assistant turn (what the loss counts on).
pub fn check_conversation(messages: &[Message]) -> Result<()> {
    match messages.last() {
        None => bail!("the conversation has no messages"),
        Some(m) if m.role != ASSISTANT => bail!(
            "the conversation's last message is a \"{}\" turn; training counts the loss on a \
             last \"assistant\" turn",
            m.role
        ),
        Some(_) => Ok(()),
    }
}

/// The conversations among `records`: (record number from 1, turns).
pub fn conversations(records: &[Record]) -> impl Iterator<Item = (usize, &[Message])> {
    records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.messages().map(|m| (i + 1, m)))
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

pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The JSON values of a JSONL file's non-blank lines, with their line numbers; errors name
/// the file and line, and a file without lines is an error (`what` names what it should hold).
pub fn json_lines(path: &Path, what: &str) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in without_bom(&text).lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not valid JSON", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    if out.is_empty() {
        bail!("{what} file {} holds no {what}", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UTF-8 byte-order mark at the start of a file is not part of its first line.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bom.jsonl");
        std::fs::write(&p, "\u{feff}{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(read_jsonl(&p).unwrap().len(), 2);
        assert_eq!(json_lines(&p, "records").unwrap().len(), 2);
        assert_eq!(read_run_records(&p).unwrap().len(), 2);
    }

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
