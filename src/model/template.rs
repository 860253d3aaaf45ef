//! Rendering a prompt with a [`Template`] (whose names live in `data::template`, where data
//! sets pick their default): `raw` and `safe-rlhf` are fixed strings, `chat` renders the
//! tokenizer's own `chat_template` (Jinja, with minijinja), so it sits beside the tokenizer.

use super::tokenizer::TextTokenizer;
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

fn render_chat(prompt: &str, tok: &TextTokenizer) -> Result<String> {
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
    let ctx = minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => prompt }],
        add_generation_prompt => true,
        bos_token => tok.bos_token.clone().unwrap_or_default(),
        eos_token => tok.eos_token.clone().unwrap_or_default(),
    };
    env.get_template("chat")?
        .render(ctx)
        .context("rendering the chat_template failed")
}
