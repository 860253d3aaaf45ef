//! Generation prompts: a text, which the run's template renders, or a conversation's turns,
//! which the model's chat template (or safe-rlhf's multi-turn format) renders with its
//! generation prompt (the model then writes the next assistant turn). Prompt files hold one a line, `{"prompt": ...}` or
//! `{"messages": [...]}`, as `elastica generate --prompts` and the experiments read them.

use super::records::{kind, last_user_content, messages_from_json, Message, Record};
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Prompt {
    Text(String),
    /// The turns to answer (the last usually a user turn).
    Turns(Vec<Message>),
}

impl Prompt {
    /// Text prompts.
    pub fn texts(prompts: &[String]) -> Vec<Prompt> {
        prompts.iter().cloned().map(Prompt::Text).collect()
    }

    /// What a scorer reads as the prompt and a sample row names: the text, or the
    /// conversation's last user turn.
    pub fn text(&self) -> &str {
        match self {
            Prompt::Text(p) => p,
            Prompt::Turns(t) => last_user_content(t),
        }
    }

    /// The conversation's turns, for a conversation.
    pub fn turns(&self) -> Option<&[Message]> {
        match self {
            Prompt::Text(_) => None,
            Prompt::Turns(t) => Some(t),
        }
    }

    /// The prompt answered by `response`: a `{"prompt","response"}` pair, or the
    /// conversation with the response as its last (assistant) turn.
    pub fn answered(&self, response: &str) -> Record {
        Record::answered(self.text(), self.turns(), response)
    }

    /// The prompt a record asks: a pair's prompt, or a conversation's turns before its last
    /// (the answer); a plain text has none.
    pub fn of_record(r: &Record) -> Option<Prompt> {
        match r {
            Record::Pair { prompt, .. } => Some(Prompt::Text(prompt.clone())),
            Record::Chat { messages, .. } => {
                let (_, context) = messages.split_last()?;
                Some(Prompt::Turns(context.to_vec()))
            }
            Record::Text { .. } => None,
        }
    }

    /// The line a prompt file holds: `{"prompt": ...}` or `{"messages": [...]}` (each turn
    /// `{"role", "content"}` in that order, as the other record files write turns).
    pub fn line(&self) -> PromptLine<'_> {
        match self {
            Prompt::Text(prompt) => PromptLine::Text { prompt },
            Prompt::Turns(messages) => PromptLine::Turns { messages },
        }
    }

    /// A prompt file's line: `{"messages": [...]}` is a conversation, else the string
    /// `"prompt"` (other fields are ignored).
    pub fn from_json(v: &serde_json::Value) -> Result<Prompt> {
        match (v.get("messages"), v.get("prompt")) {
            (Some(m), _) => {
                let turns = messages_from_json(m, "messages")?;
                if turns.is_empty() {
                    bail!("\"messages\" is empty: a conversation to answer needs a turn");
                }
                Ok(Prompt::Turns(turns))
            }
            (None, Some(serde_json::Value::String(p))) => Ok(Prompt::Text(p.clone())),
            (None, Some(p)) => bail!("\"prompt\" must be a string, found {}", kind(p)),
            (None, None) => {
                bail!("expected an object with a string \"prompt\" or a list \"messages\"")
            }
        }
    }
}

/// The conversations among `prompts`: (prompt number from 1, turns).
pub fn conversations(prompts: &[Prompt]) -> impl Iterator<Item = (usize, &[Message])> {
    prompts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.turns().map(|t| (i + 1, t)))
}

/// A prompt file's prompts; errors name the file and line, and a file without prompts is an
/// error.
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    super::records::json_lines(path, "prompts")?
        .into_iter()
        .map(|(line, v)| {
            Prompt::from_json(&v).with_context(|| format!("{}: line {line}", path.display()))
        })
        .collect()
}

/// A prompt file of texts only (the synthetic world's); a conversation is an error naming
/// its line.
pub fn read_text_prompts(path: &Path) -> Result<Vec<String>> {
    super::records::json_lines(path, "prompts")?
        .into_iter()
        .map(|(line, v)| match Prompt::from_json(&v) {
            Ok(Prompt::Text(p)) => Ok(p),
            Ok(Prompt::Turns(_)) => bail!(
                "{}: line {line}: a conversation, where this file holds text prompts",
                path.display()
            ),
            Err(e) => Err(e.context(format!("{}: line {line}", path.display()))),
        })
        .collect()
}

/// A prompt file's line, as written.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum PromptLine<'a> {
    Text { prompt: &'a str },
    Turns { messages: &'a [Message] },
}

/// Prompt-file lines (JSONL bytes) of `prompts`.
pub fn prompt_lines(prompts: &[Prompt]) -> Result<Vec<u8>> {
    let lines: Vec<PromptLine<'_>> = prompts.iter().map(Prompt::line).collect();
    super::records::jsonl_bytes(&lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_files_hold_texts_and_conversations_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let chat = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi?"),
        ];
        let prompts = vec![Prompt::Text("a".into()), Prompt::Turns(chat.clone())];
        std::fs::write(&path, prompt_lines(&prompts).unwrap()).unwrap();
        assert_eq!(read_prompts(&path).unwrap(), prompts);
        assert_eq!(prompts[1].text(), "Hi?");
        assert_eq!(
            Prompt::of_record(&prompts[1].answered("Hello.")),
            Some(prompts[1].clone())
        );
        assert_eq!(prompts[0].answered("b"), Record::pair("a", "b"));
        assert_eq!(Prompt::of_record(&Record::text("t")), None);

        for (line, want) in [
            ("{\"prompt\": 3}", "must be a string"),
            ("{\"messages\": []}", "is empty"),
            ("{\"messages\": [{\"role\": \"user\"}]}", "no \"content\""),
            ("{\"text\": \"t\"}", "\"prompt\" or a list \"messages\""),
        ] {
            std::fs::write(&path, format!("{{\"prompt\": \"ok\"}}\n{line}\n")).unwrap();
            let e = format!("{:#}", read_prompts(&path).unwrap_err());
            assert!(
                e.contains("p.jsonl: line 2") && e.contains(want),
                "{line}: {e}"
            );
        }
    }
}
