//! Conversations in TRL's conversational formats, rendered by the model's chat template
//! (their default template is `chat`):
//! - `{"messages": [{"role", "content"}, ...]}` (language modelling, e.g. UltraChat's
//!   `messages`): the last message, an assistant turn, is the answer; the turns before it are
//!   the prompt;
//! - `{"prompt": [...], "completion": [...]}` (prompt-completion): the prompt's turns, then one
//!   assistant turn;
//! - ShareGPT's `{"conversations": [{"from", "value"}, ...]}`, its roles `human` / `gpt` /
//!   `system` read as `user` / `assistant` / `system`.
//!
//! The loss counts on the last turn only, as TRL's prompt-completion does (earlier assistant
//! turns are context), unless the spec's `turns` says otherwise (`assistant`: every assistant
//! turn; `all`: every token; see [`crate::data::records::Turns`]). Other fields (ids, scores) are ignored. No labels, so only
//! `select = "all"` applies.

use super::{Class, Parsed, RowOptions, Schema};
use crate::data::records::{check_conversation, messages_from_json, Message, Record, ASSISTANT};
use crate::data::rows::Object;
use anyhow::{bail, Context, Result};

pub const SCHEMA: Schema = Schema {
    name: "conversation",
    about: "conversations: {\"messages\": [{\"role\", \"content\"}, ...]} or {\"prompt\": [...], \
            \"completion\": [...]}, rendered with the chat template",
    selects: &[],
    parse,
};

fn parse(obj: &Object, opts: &RowOptions) -> Result<Parsed> {
    let messages = match (
        obj.get("messages"),
        obj.get("prompt"),
        obj.get("completion"),
    ) {
        _ if obj.contains_key("conversations") => sharegpt(&obj["conversations"])?,
        (Some(m), _, _) => messages_from_json(m, "messages")?,
        (None, Some(p), Some(c)) => {
            let (mut turns, answer) = prompt_and_completion(p, c)?;
            turns.push(answer);
            turns
        }
        _ => bail!(
            "expected a list \"messages\", or lists \"prompt\" and \"completion\", of \
             {{\"role\", \"content\"}} messages (or ShareGPT's \"conversations\")"
        ),
    };
    check_conversation(&messages)?;
    Ok(Parsed::Row(
        Record::Chat {
            messages,
            turns: opts.turns,
        },
        Class::Unlabeled,
    ))
}

/// TRL's conversational prompt-completion fields: the `prompt` turns, and the one assistant
/// turn `completion` holds.
pub(crate) fn prompt_and_completion(
    prompt: &serde_json::Value,
    completion: &serde_json::Value,
) -> Result<(Vec<Message>, Message)> {
    let turns = messages_from_json(prompt, "prompt")?;
    let completion = messages_from_json(completion, "completion")?;
    match <[Message; 1]>::try_from(completion) {
        Ok([one]) if one.role == ASSISTANT => Ok((turns, one)),
        Ok(_) => bail!(
            "field \"completion\" must be one \"assistant\" message (it has 1 of another role)"
        ),
        Err(c) => bail!(
            "field \"completion\" must be one \"assistant\" message (it has {}); the loss \
             counts on one answer turn",
            c.len()
        ),
    }
}

/// ShareGPT's turns: `{"from", "value"}`, with its role names mapped to the chat roles.
fn sharegpt(v: &serde_json::Value) -> Result<Vec<Message>> {
    let Some(list) = v.as_array() else {
        bail!("field \"conversations\" must be a list of {{\"from\", \"value\"}} turns");
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let text = |k: &str| {
                t.get(k).and_then(|x| x.as_str()).with_context(|| {
                    format!(
                        "field \"conversations\": turn {} has no string \"{k}\"",
                        i + 1
                    )
                })
            };
            let role = match text("from")? {
                "human" | "user" => "user",
                "gpt" | "assistant" | "chatgpt" => ASSISTANT,
                "system" => "system",
                other => bail!(
                    "field \"conversations\": turn {} is from \"{other}\"; ShareGPT's roles are \
                     human, gpt and system",
                    i + 1
                ),
            };
            Ok(Message::new(role, text("value")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{load, DataSpec};
    use crate::data::records::{Message, Record};

    fn write(dir: &std::path::Path, lines: &[serde_json::Value]) -> String {
        crate::data::write_jsonl(dir, "chat.jsonl", lines)
    }

    #[test]
    fn messages_and_prompt_completion_rows_read_as_conversations() {
        let d = tempfile::tempdir().unwrap();
        let msgs = serde_json::json!([{"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]);
        let pc = serde_json::json!({"prompt": [{"role": "user", "content": "hi"}],
            "completion": [{"role": "assistant", "content": "hello"}], "score": 3});
        let share = serde_json::json!({"id": "x", "conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]});
        let path = write(
            d.path(),
            &[serde_json::json!({ "messages": msgs }), pc, share],
        );
        // The generic schema names the row and the schema that reads it.
        let e = format!("{:#}", load(&DataSpec::new(&path, "jsonl")).unwrap_err());
        assert!(
            e.contains("line 1") && e.contains("--schema conversation"),
            "{e}"
        );
        let ds = load(&DataSpec::new(&path, "conversation")).unwrap();
        let user_hello = vec![
            Message::new("user", "hi"),
            Message::new("assistant", "hello"),
        ];
        let mut with_system = vec![Message::new("system", "be brief")];
        with_system.extend(user_hello.clone());
        assert_eq!(
            ds.records,
            vec![
                Record::conversation(with_system),
                Record::conversation(user_hello.clone()),
                Record::conversation(user_hello)
            ]
        );
    }

    #[test]
    fn malformed_conversations_are_refused_naming_the_line() {
        let d = tempfile::tempdir().unwrap();
        for (row, want) in [
            (
                serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
                "last message is a \"user\" turn",
            ),
            (serde_json::json!({"messages": []}), "no messages"),
            (
                serde_json::json!({"messages": [{"role": "assistant"}]}),
                "message 1 has no \"content\"",
            ),
            (
                serde_json::json!({"messages": "hi"}),
                "must be a list of {\"role\", \"content\"} messages",
            ),
            (
                serde_json::json!({"prompt": [{"role": "user", "content": "q"}],
                    "completion": [{"role": "assistant", "content": "a"},
                                   {"role": "assistant", "content": "b"}]}),
                "must be one \"assistant\" message (it has 2)",
            ),
            (
                serde_json::json!({"text": "x"}),
                "expected a list \"messages\"",
            ),
            (
                serde_json::json!({"conversations": [{"from": "bing", "value": "x"}]}),
                "turn 1 is from \"bing\"",
            ),
        ] {
            let path = write(d.path(), &[row]);
            let e = format!(
                "{:#}",
                load(&DataSpec::new(&path, "conversation")).unwrap_err()
            );
            assert!(
                e.contains("chat.jsonl") && e.contains("line 1") && e.contains(want),
                "{want}: {e}"
            );
        }
    }
}
