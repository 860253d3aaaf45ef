//! Prompt templates: how a record's prompt becomes the text the model sees.
//! - `raw`: the prompt verbatim (the paper's IMDb setting);
//! - `safe-rlhf`: `BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:` (the paper's SFT);
//! - `chat`: the model's own `chat_template` (Jinja, rendered with minijinja).
//!
//! Only the names live here, so that data sets can pick their default template; rendering a
//! prompt needs the tokenizer and sits beside it, in `model::template`.

use anyhow::{bail, Result};

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
    /// conversations under a template other than `chat`: only the model's chat template
    /// renders turns.
    pub fn check_conversations(self, conversations: bool, what: &str) -> Result<()> {
        if conversations && self != Template::Chat {
            bail!(
                "{what} holds conversations, which only the model's chat template renders, but \
                 the template is \"{}\"; set template = \"chat\" (or give pairs)",
                self.name()
            );
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
