//! Prompt templates: how a record's prompt becomes the text the model sees.
//! - `raw`: the prompt verbatim (the paper's IMDb setting);
//! - `safe-rlhf`: `BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:` (the paper's SFT);
//!   a conversation in safe-rlhf's multi-turn format, `USER: {u} ASSISTANT:` for each user
//!   turn and `{a}{eos}` for each assistant turn after the same start (its `format_prompt`
//!   and the dialogue rows of its SFT data set), user and assistant turns alternating;
//! - `chat`: the model's own `chat_template` (Jinja, rendered with minijinja).
//!
//! Only the names live here, so that data sets can pick their default template; rendering a
//! prompt needs the tokenizer and sits beside it, in `model::template`.

use super::records::{Message, ASSISTANT, USER};
use anyhow::{bail, Context, Result};

/// How safe-rlhf starts a conversation.
pub const SAFE_RLHF_BEGIN: &str = "BEGINNING OF CONVERSATION: ";

/// safe-rlhf's text of a user turn, which ends asking for the assistant's answer.
pub fn safe_rlhf_user_turn(content: &str) -> String {
    format!("USER: {content} ASSISTANT:")
}

/// Refuse a conversation safe-rlhf's format cannot render: it knows user and assistant turns
/// only, alternating from a user turn (a turn's role is its parity there).
pub fn check_safe_rlhf_turns(messages: &[Message]) -> Result<()> {
    for (i, m) in messages.iter().enumerate() {
        let want = if i % 2 == 0 { USER } else { ASSISTANT };
        if m.role != want {
            bail!(
                "turn {} is a \"{}\" turn, but the safe-rlhf template renders user and \
                 assistant turns only, alternating from a user turn; use the model's chat \
                 template (--template chat, or `template = \"chat\"`)",
                i + 1,
                m.role
            );
        }
    }
    Ok(())
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    Raw,
    SafeRlhf,
    Chat,
}

impl Template {
    pub const NAMES: &'static [&'static str] = &["raw", "safe-rlhf", "chat"];

    pub fn name(self) -> &'static str {
        match self {
            Template::Raw => "raw",
            Template::SafeRlhf => "safe-rlhf",
            Template::Chat => "chat",
        }
    }

    /// Refuse, before a run is planned, `what` (a data set or prompt file, named) holding
    /// conversations this template cannot render: `raw` renders none, `safe-rlhf` user and
    /// assistant turns alternating from a user turn, `chat` whatever the model's template
    /// renders. `conversations` are (record number from 1, turns).
    pub fn check_conversations<'a>(
        self,
        conversations: impl IntoIterator<Item = (usize, &'a [Message])>,
        what: &str,
    ) -> Result<()> {
        for (n, turns) in conversations {
            match self {
                Template::Chat => return Ok(()),
                Template::Raw => bail!(
                    "{what} holds conversations, which the raw template cannot render; use the \
                     model's chat template (--template chat, or `template = \"chat\"`) or \
                     safe-rlhf (or give pairs)"
                ),
                Template::SafeRlhf => check_safe_rlhf_turns(turns)
                    .with_context(|| format!("{what}: record {n} is a conversation"))?,
            }
        }
        Ok(())
    }

    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "raw" => Template::Raw,
            "safe-rlhf" => Template::SafeRlhf,
            "chat" => Template::Chat,
            other => bail!(
                "unknown template \"{other}\"; valid: {}",
                Self::NAMES.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_template_refuses_the_conversations_it_cannot_render() {
        let m = |role: &str| Message::new(role, "x");
        let ok = [m(USER), m(ASSISTANT), m(USER)];
        let system = [m("system"), m(USER), m(ASSISTANT)];
        let found = [(3, &ok[..]), (7, &system[..])];
        assert!(Template::Chat
            .check_conversations(found, "the data")
            .is_ok());
        let e = format!(
            "{:#}",
            Template::SafeRlhf
                .check_conversations(found, "the data")
                .unwrap_err()
        );
        assert!(
            e.contains("the data: record 7") && e.contains("turn 1 is a \"system\""),
            "{e}"
        );
        assert!(Template::SafeRlhf
            .check_conversations([(3, &ok[..])], "the data")
            .is_ok());
        let e = format!(
            "{:#}",
            Template::Raw
                .check_conversations([(3, &ok[..])], "the data")
                .unwrap_err()
        );
        assert!(e.contains("the data holds conversations"), "{e}");
        // No conversation: nothing to refuse.
        assert!(Template::Raw.check_conversations([], "the data").is_ok());
    }
}
