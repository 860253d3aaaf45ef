//! Rendering a prompt with a [`Template`] (whose names live in `data::template`, where data
//! sets pick their default): `raw` and `safe-rlhf` are fixed strings, `chat` renders the
//! tokenizer's own `chat_template` (Jinja, with minijinja), so it sits beside the tokenizer.

use super::tokenizer::TextTokenizer;
use crate::data::records::Message;
use crate::data::template::Template;
use anyhow::{bail, Context, Result};

impl Template {
    /// The prompt as text, ready to tokenize.
    pub fn render(&self, prompt: &str, tok: &TextTokenizer) -> Result<String> {
        Ok(match self {
            Template::Raw => prompt.to_string(),
            Template::SafeRlhf => format!("BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"),
            Template::Chat => render_chat(prompt, tok)?,
        })
    }

    /// Token ids of the templated prompt. Chat templates write their own special tokens
    /// (as transformers' `apply_chat_template` does), the others get the tokenizer's.
    pub fn encode_prompt(&self, prompt: &str, tok: &TextTokenizer) -> Result<Vec<u32>> {
        let text = self.render(prompt, tok)?;
        tok.encode(&text, *self != Template::Chat)
    }
}

/// A conversation's token ids as training sees them (TRL's conversational prompt-completion):
/// the prompt is the chat template's rendering of every turn before the last, with the
/// generation prompt; the answer is what the template's rendering of the whole conversation
/// adds after that prompt (the last turn's content and its end-of-turn text). Each part is
/// tokenized on its own, without added special tokens (the template writes its own), so the
/// mask boundary is exact. Returns (prompt ids, answer ids, answer bytes).
pub fn encode_conversation(
    template: Template,
    messages: &[Message],
    tok: &TextTokenizer,
) -> Result<(Vec<u32>, Vec<u32>, usize)> {
    require_chat(template)?;
    crate::data::records::check_conversation(messages)?;
    let context = &messages[..messages.len() - 1];
    let prompt = render_messages(context, true, tok)?;
    let full = render_messages(messages, false, tok)?;
    let Some(answer) = full.strip_prefix(prompt.as_str()) else {
        bail!(
            "the chat template does not render this conversation as its earlier turns (with the \
             generation prompt) followed by the last turn, so the answer cannot be told apart \
             from the prompt"
        );
    };
    if answer.is_empty() {
        bail!("the chat template renders the last turn as nothing");
    }
    Ok((
        tok.encode(&prompt, false)?,
        tok.encode(answer, false)?,
        answer.len(),
    ))
}

/// The token ids that ask the model to answer a conversation's turns `context` (the last
/// usually a user turn): the chat template over them with the generation prompt, as
/// transformers' `apply_chat_template(context, add_generation_prompt=True)`.
pub fn encode_context(
    template: Template,
    context: &[Message],
    tok: &TextTokenizer,
) -> Result<Vec<u32>> {
    require_chat(template)?;
    tok.encode(&render_messages(context, true, tok)?, false)
}

/// Refuse to render a conversation under any template but the model's chat template.
fn require_chat(template: Template) -> Result<()> {
    if template != Template::Chat {
        bail!(
            "a conversation is rendered by the model's chat template; use template \"chat\" \
             (--template chat, or `template = \"chat\"`), not \"{}\"",
            template.name()
        );
    }
    Ok(())
}

fn render_chat(prompt: &str, tok: &TextTokenizer) -> Result<String> {
    render_messages(&[Message::new("user", prompt)], true, tok)
}

/// The tokenizer's chat template rendered over `messages`, as transformers'
/// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
fn render_messages(
    messages: &[Message],
    add_generation_prompt: bool,
    tok: &TextTokenizer,
) -> Result<String> {
    let Some(src) = tok.chat_template.as_deref() else {
        bail!("template \"chat\" needs a chat_template in tokenizer_config.json, and this tokenizer has none; use --template raw or safe-rlhf");
    };
    let mut env = minijinja::Environment::new();
    // transformers renders chat templates with jinja2's trim_blocks and lstrip_blocks.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", src)
        .context("the chat_template does not parse")?;
    let messages: Vec<_> = messages
        .iter()
        .map(|m| minijinja::context! { role => m.role, content => m.content })
        .collect();
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => tok.bos_token.clone().unwrap_or_default(),
        eos_token => tok.eos_token.clone().unwrap_or_default(),
    };
    env.get_template("chat")?
        .render(ctx)
        .context("rendering the chat_template failed")
}
