//! Rendering a prompt with a [`Template`] (whose names live in `data::template`, where data
//! sets pick their default): `raw` and `safe-rlhf` are fixed strings, `chat` renders the
//! tokenizer's own `chat_template` (Jinja, with minijinja), so it sits beside the tokenizer.
//! Conversations render under `chat` and in safe-rlhf's multi-turn format (which writes the
//! tokenizer's EOS text after each answer).

use super::tokenizer::TextTokenizer;
use crate::data::prompts::Prompt;
use crate::data::records::{Message, Turns, ASSISTANT, USER};
use crate::data::template::{
    check_safe_rlhf_turns, safe_rlhf_user_turn, Template, SAFE_RLHF_BEGIN,
};
use anyhow::{bail, Context, Result};

impl Template {
    /// The prompt as text, ready to tokenize.
    pub fn render(&self, prompt: &str, tok: &TextTokenizer) -> Result<String> {
        Ok(match self {
            Template::Raw => prompt.to_string(),
            Template::SafeRlhf => format!("{SAFE_RLHF_BEGIN}{}", safe_rlhf_user_turn(prompt)),
            Template::Chat => render_chat(prompt, tok)?,
        })
    }

    /// Token ids of the templated prompt. Chat templates write their own special tokens
    /// (as transformers' `apply_chat_template` does), the others get the tokenizer's.
    pub fn encode_prompt(&self, prompt: &str, tok: &TextTokenizer) -> Result<Vec<u32>> {
        let text = self.render(prompt, tok)?;
        tok.encode(&text, *self != Template::Chat)
    }

    /// A prompt-response pair as training and scoring read it: the templated prompt followed
    /// by the response, tokenized once, then the EOS id; and where the response starts (the
    /// tokens before it are masked). As TRL (1.x) tokenizes a prompt-completion example for
    /// SFT, DPO and KTO alike, and as safe-rlhf tokenizes its SFT and preference data: the
    /// response starts where the prompt's own tokenization and the joint one first differ
    /// (TRL's `common_prefix_length`), which is after the prompt unless a token merges across
    /// the boundary. Tokenized on its own, the response would start with a piece the joint
    /// text never has (SentencePiece's '▁' before it, or a merge BPE without pre-tokenization
    /// makes across the boundary).
    pub fn encode_pair(
        &self,
        prompt: &str,
        response: &str,
        tok: &TextTokenizer,
    ) -> Result<(Vec<u32>, usize)> {
        let text = self.render(prompt, tok)?;
        let specials = *self != Template::Chat;
        let alone = tok.encode(&text, specials)?;
        let mut ids = tok.encode(&format!("{text}{response}"), specials)?;
        let start = common_prefix(&alone, &ids);
        // As TRL: a response that already ends with the EOS text gets no second EOS.
        if !tok.ends_with_eos(response) {
            ids.push(tok.eos_id());
        }
        Ok((ids, start))
    }

    /// Token ids that ask the model to answer `prompt`: a text under this template, a
    /// conversation's turns under the chat or safe-rlhf template (see [`encode_context`]).
    pub fn encode_generation_prompt(
        &self,
        prompt: &Prompt,
        tok: &TextTokenizer,
    ) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(p) => self.encode_prompt(p, tok),
            Prompt::Turns(t) => encode_context(*self, t, tok),
        }
    }
}

/// How many leading tokens `a` and `b` share (TRL's `common_prefix_length`): where a
/// completion starts in its prompt+completion tokenization.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A conversation's token ids as training sees them, each with whether the loss counts it, and
/// the bytes of the counted text. The template (chat, or safe-rlhf's multi-turn format)
/// renders the whole conversation; which of it counts is `turns`:
/// - [`Turns::Last`] (TRL's conversational prompt-completion): the prompt is the rendering of
///   every turn before the last, with the generation prompt; the answer is what the whole
///   conversation's rendering adds after it (the last turn's content and end-of-turn text).
///   As TRL's SFT, the whole rendering is tokenized once and the leading tokens it shares
///   with the prompt's own tokenization are masked;
/// - [`Turns::Assistant`] (TRL's `assistant_only_loss`): the rendering is tokenized once, and
///   the tokens that overlap an assistant turn's text count, as transformers' assistant mask
///   counts them. The text is what the template marks with `{% generation %}` where it has
///   such markers (transformers' own rule), else what it adds for each assistant turn, found
///   as `Last` finds the last one's;
/// - [`Turns::All`] (TRL's default for `{"messages"}` rows): the rendering tokenized once,
///   every token counted.
///
/// A chat template writes its own special tokens; under safe-rlhf the tokenizer adds its own
/// at the start (its BOS), as safe-rlhf tokenizes, and the answers end with the EOS text.
pub fn encode_conversation(
    template: Template,
    messages: &[Message],
    turns: Turns,
    tok: &TextTokenizer,
) -> Result<(Vec<(u32, bool)>, usize)> {
    crate::data::records::check_conversation(messages)?;
    let (full, marked) = render_turns(template, messages, false, tok)?;
    let specials = template != Template::Chat;
    if turns == Turns::Assistant && !marked.is_empty() {
        // The template marks the assistant's text itself: count what it marks.
        return counted_by_spans(&full, &marked, specials, tok);
    }
    let answers: Vec<usize> = match turns {
        Turns::All => {
            let ids = tok.encode(&full, specials)?;
            return Ok((ids.into_iter().map(|t| (t, true)).collect(), full.len()));
        }
        Turns::Last => vec![messages.len() - 1],
        Turns::Assistant => (0..messages.len())
            .filter(|&i| messages[i].role == ASSISTANT)
            .collect(),
    };
    // The byte spans of `full` that count, in order.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for i in answers {
        let before = render_turns(template, &messages[..i], true, tok)?.0;
        let through = render_turns(template, &messages[..=i], false, tok)?.0;
        let after_last = spans.last().map_or(0, |s| s.1);
        if !(full.starts_with(&before) && full.starts_with(&through) && before.len() >= after_last)
        {
            bail!(
                "the chat template does not render this conversation as its earlier turns (with \
                 the generation prompt) followed by turn {}, so the answer cannot be told apart \
                 from its context{}",
                i + 1,
                if turns == Turns::Assistant {
                    " (a template that rewrites earlier turns needs --turns last)"
                } else {
                    ""
                }
            );
        }
        if through.len() <= before.len() {
            bail!("the chat template renders turn {} as nothing", i + 1);
        }
        spans.push((before.len(), through.len()));
    }
    if turns == Turns::Last {
        let bytes = spans.iter().map(|(s, e)| e - s).sum();
        let (start, _) = spans[0];
        // As TRL: the whole rendering tokenized once, the tokens it shares with the prompt's
        // own tokenization masked. (The answer tokenized alone would start with a piece the
        // joint text never has, e.g. SentencePiece's '▁' where the answer follows the
        // generation prompt directly.)
        let ids = tok.encode(&full, specials)?;
        let prompt = common_prefix(&tok.encode(&full[..start], specials)?, &ids);
        if ids.len() <= prompt {
            bail!("the last turn adds no token to the conversation's prompt ({prompt} tokens)");
        }
        return Ok((
            ids.into_iter()
                .enumerate()
                .map(|(i, t)| (t, i >= prompt))
                .collect(),
            bytes,
        ));
    }
    counted_by_spans(&full, &spans, specials, tok)
}

/// `full` tokenized once (with the tokenizer's special tokens if `specials`), each token
/// counted if it overlaps one of the byte `spans` (as transformers' assistant mask counts the
/// tokens of a marked span), and the spans' bytes.
fn counted_by_spans(
    full: &str,
    spans: &[(usize, usize)],
    specials: bool,
    tok: &TextTokenizer,
) -> Result<(Vec<(u32, bool)>, usize)> {
    let counted = |(s, e): (usize, usize)| spans.iter().any(|&(a, b)| s < b && e > a);
    let tokens = tok.encode_with_offsets(full, specials)?;
    Ok((
        tokens.into_iter().map(|(t, o)| (t, counted(o))).collect(),
        spans.iter().map(|(s, e)| e - s).sum(),
    ))
}

/// The token ids that ask the model to answer a conversation's turns `context` (the last
/// usually a user turn): the chat template over them with the generation prompt, as
/// transformers' `apply_chat_template(context, add_generation_prompt=True)`; or safe-rlhf's
/// format, which ends a user turn asking for the answer, BOS added.
pub fn encode_context(
    template: Template,
    context: &[Message],
    tok: &TextTokenizer,
) -> Result<Vec<u32>> {
    let text = render_context(template, context, tok)?;
    tok.encode(&text, template != Template::Chat)
}

/// The text that asks the model to answer `context` under `template` (what
/// [`encode_context`] tokenizes): a scorer that reads whole conversations appends the answer.
pub fn render_context(
    template: Template,
    context: &[Message],
    tok: &TextTokenizer,
) -> Result<String> {
    Ok(render_turns(template, context, true, tok)?.0)
}

/// `messages` rendered under `template`, with the byte spans a chat template marks as the
/// assistant's (see [`render_marked`]; none under safe-rlhf). The raw template renders no
/// conversation.
fn render_turns(
    template: Template,
    messages: &[Message],
    add_generation_prompt: bool,
    tok: &TextTokenizer,
) -> Result<(String, Vec<(usize, usize)>)> {
    match template {
        Template::Chat => render_marked(messages, add_generation_prompt, tok),
        Template::SafeRlhf => Ok((render_safe_rlhf(messages, tok)?, Vec::new())),
        Template::Raw => bail!(
            "the raw template renders no conversation; use the model's chat template \
             (--template chat, or `template = \"chat\"`) or safe-rlhf's format (\"safe-rlhf\")"
        ),
    }
}

/// safe-rlhf's multi-turn text: its start, then `USER: {u} ASSISTANT:` for each user turn
/// and `{a}{eos}` for each assistant turn (the EOS as text, which the tokenizer reads back as
/// the EOS token). A conversation ending with a user turn ends asking for the answer, so
/// there is no separate generation prompt.
fn render_safe_rlhf(messages: &[Message], tok: &TextTokenizer) -> Result<String> {
    check_safe_rlhf_turns(messages)?;
    // Read once, and only when an answer needs it.
    let eos = match messages.iter().any(|m| m.role == ASSISTANT) {
        true => eos_text(tok)?,
        false => String::new(),
    };
    let mut text = SAFE_RLHF_BEGIN.to_string();
    for m in messages {
        if m.role == USER {
            text.push_str(&safe_rlhf_user_turn(&m.content));
        } else {
            text.push_str(&m.content);
            text.push_str(&eos);
        }
    }
    Ok(text)
}

/// The EOS token's text: `eos_token` of tokenizer_config.json, else the vocabulary's entry
/// for the EOS id.
fn eos_text(tok: &TextTokenizer) -> Result<String> {
    if let Some(t) = &tok.eos_token {
        return Ok(t.clone());
    }
    tok.inner.id_to_token(tok.eos_id()).context(
        "safe-rlhf's format ends each answer with the EOS token's text, and this tokenizer has \
         no text for its EOS id",
    )
}

fn render_chat(prompt: &str, tok: &TextTokenizer) -> Result<String> {
    Ok(render_marked(&[Message::new(USER, prompt)], true, tok)?.0)
}

/// Around the text a template marks with `{% generation %}`, in the raw rendering.
const SPAN_OPEN: char = '\u{F0001}';
const SPAN_CLOSE: char = '\u{F0002}';

/// The tokenizer's chat template rendered over `messages`, as transformers'
/// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`, and the byte
/// spans of the text the template marks as the assistant's
/// with transformers' `{% generation %}` ... `{% endgeneration %}` (none if it has no
/// markers). minijinja has no such statement, so each pair becomes a filter block, which is
/// a block statement too (the same trim_blocks / lstrip_blocks whitespace) and wraps its
/// body in two private-use characters that are then cut out.
fn render_marked(
    messages: &[Message],
    add_generation_prompt: bool,
    tok: &TextTokenizer,
) -> Result<(String, Vec<(usize, usize)>)> {
    let Some(src) = tok.chat_template.as_deref() else {
        bail!("template \"chat\" needs a chat_template in tokenizer_config.json, and this tokenizer has none; use --template raw or safe-rlhf");
    };
    let src = generation_as_filter(src)?;
    let marked = matches!(src, std::borrow::Cow::Owned(_));
    if let Some(m) = messages
        .iter()
        .find(|m| marked && m.content.contains([SPAN_OPEN, SPAN_CLOSE]))
    {
        bail!(
            "a \"{}\" message holds U+F0001 or U+F0002, which elastica reserves to find the \
             template's generation spans",
            m.role
        );
    }
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
    env.add_filter(GENERATION_FILTER, |body: String| {
        format!("{SPAN_OPEN}{body}{SPAN_CLOSE}")
    });
    env.add_template("chat", &src)
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
    let raw = env
        .get_template("chat")?
        .render(ctx)
        .context("rendering the chat_template failed")?;
    // Cut the markers out, noting where each span starts and ends in what remains.
    let (mut text, mut spans, mut open) = (String::with_capacity(raw.len()), Vec::new(), None);
    for c in raw.chars() {
        match c {
            SPAN_OPEN => open = Some(text.len()),
            SPAN_CLOSE => spans.extend(open.take().map(|s| (s, text.len()))),
            c => text.push(c),
        }
    }
    Ok((text, spans))
}

/// The filter a template's `{% generation %}` block becomes.
const GENERATION_FILTER: &str = "elastica_generation_span";

/// `src` with transformers' `{% generation %}` / `{% endgeneration %}` (whitespace control
/// kept) as a filter block minijinja runs.
fn generation_as_filter(src: &str) -> Result<std::borrow::Cow<'_, str>> {
    // Every template names `add_generation_prompt`; only a marked one closes a block.
    if !src.contains("endgeneration") {
        return Ok(src.into());
    }
    let tag = |name: &str| regex::Regex::new(&format!(r"\{{%([-+]?)\s*{name}\s*([-+]?)%\}}"));
    let opened = tag("generation")?.replace_all(
        src,
        format!("{{%${{1}} filter {GENERATION_FILTER} ${{2}}%}}"),
    );
    let closed = tag("endgeneration")?.replace_all(&opened, "{%${1} endfilter ${2}%}");
    Ok(closed.into_owned().into())
}
