//! From records to token ids and labels, and from examples to padded micro-batches.
//! A pair is its templated prompt and response tokenized once (tokenizer specials included),
//! then EOS, with the prompt's tokens masked (-100; see `Template::encode_pair`); a text record
//! is `text_ids + [EOS]`, all counted; a conversation is its chat-template prompt, masked, then
//! the template's rendering of its last turn, counted (no EOS added: the template ends the turn;
//! see `model::template::encode_conversation`).

use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::TextTokenizer;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

pub const IGNORE: i64 = -100;

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Same length as `ids`; -100 where the loss does not count.
    pub labels: Vec<i64>,
    /// UTF-8 bytes of the text whose tokens are counted (for bits per byte).
    pub scored_bytes: usize,
}

/// Tokenize records; sequences longer than `max_length` are cut, and the number cut is
/// returned so the caller can say so.
pub fn tokenize(
    records: &[Record],
    tok: &TextTokenizer,
    template: Template,
    max_length: usize,
) -> Result<(Vec<Example>, usize)> {
    let mut out = Vec::with_capacity(records.len());
    let mut truncated = 0;
    for (i, r) in records.iter().enumerate() {
        let (mut ids, mut labels, bytes) = match r {
            Record::Pair { prompt, response } => {
                let (ids, start) = template
                    .encode_pair(prompt, response, tok)
                    .with_context(|| format!("record {}", i + 1))?;
                let labels = counted_from(&ids, start);
                (ids, labels, response.len())
            }
            Record::Chat { messages, turns } => {
                let (tokens, bytes) =
                    crate::model::template::encode_conversation(template, messages, *turns, tok)
                        .with_context(|| format!("record {}", i + 1))?;
                let labels = tokens
                    .iter()
                    .map(|&(t, counted)| if counted { t as i64 } else { IGNORE })
                    .collect();
                (tokens.into_iter().map(|(t, _)| t).collect(), labels, bytes)
            }
            Record::Text { text } => {
                let mut ids = tok
                    .encode(text, true)
                    .with_context(|| format!("record {}", i + 1))?;
                // As TRL: a text that already ends with the EOS text gets no second EOS.
                if !tok.ends_with_eos(text) {
                    ids.push(tok.eos_id());
                }
                let labels = ids.iter().map(|&t| t as i64).collect();
                (ids, labels, text.len())
            }
        };
        let mut scored_bytes = bytes;
        if ids.len() > max_length {
            truncated += 1;
            ids.truncate(max_length);
            labels.truncate(max_length);
            scored_bytes = kept_bytes(r, &labels, template, tok)
                .with_context(|| format!("record {}", i + 1))?;
        }
        out.push(Example {
            ids,
            labels,
            scored_bytes,
        });
    }
    Ok((out, truncated))
}

/// `ids` with the first `start` masked: the labels of a sequence whose loss counts from
/// `start` on.
fn counted_from(ids: &[u32], start: usize) -> Vec<i64> {
    let mut labels = vec![IGNORE; start];
    labels.extend(ids[start..].iter().map(|&t| t as i64));
    labels
}

/// The bytes of text that a cut example's counted tokens (`labels` after the cut) still
/// stand for, so bits per byte stay per byte of what was scored: a response's or text's
/// prefix up to its last kept token (by the tokenizer's offsets), a conversation's kept
/// counted runs as decoded.
fn kept_bytes(
    r: &Record,
    labels: &[i64],
    template: Template,
    tok: &TextTokenizer,
) -> Result<usize> {
    let prefix_end = |text: &str, special: bool, kept: usize| -> Result<usize> {
        let spans = tok.encode_with_offsets(text, special)?;
        Ok(spans.iter().take(kept).map(|s| s.1 .1).max().unwrap_or(0))
    };
    match r {
        // The pair's text is the templated prompt then the response (see `encode_pair`); the
        // cut took the EOS with it.
        Record::Pair { prompt, response } => {
            let prompt = template.render(prompt, tok)?;
            let end = prefix_end(
                &format!("{prompt}{response}"),
                template != Template::Chat,
                labels.len(),
            )?;
            Ok(end.saturating_sub(prompt.len()))
        }
        Record::Text { text } => prefix_end(text, true, labels.len()),
        Record::Chat { .. } => {
            let mut bytes = 0;
            for run in labels.split(|&l| l == IGNORE).filter(|r| !r.is_empty()) {
                let ids: Vec<u32> = run.iter().map(|&l| l as u32).collect();
                bytes += tok.decode(&ids, true)?.len();
            }
            Ok(bytes)
        }
    }
}

/// How many leading tokens of an answered example are its (masked) prompt.
fn prompt_len(e: &Example) -> usize {
    e.labels.iter().take_while(|&&l| l == IGNORE).count()
}

/// Gives a preference pair's two answers one prompt, as TRL's DPO does: each answer starts
/// where its joint tokenization leaves the prompt's own, and both start at the earlier of the
/// two, so a token merged across one boundary counts in both (see `Template::encode_pair`).
pub fn share_prompt(chosen: &mut Example, rejected: &mut Example) {
    let start = prompt_len(chosen).min(prompt_len(rejected));
    for e in [chosen, rejected] {
        for j in start..prompt_len(e) {
            e.labels[j] = e.ids[j] as i64;
        }
    }
}

/// KTO's mismatched sequences as TRL's KTO builds them: example i's prompt tokens followed by
/// the answer tokens of example i - 1 (cyclic), joined as ids (not tokenized again) and cut to
/// `max_length`. `examples` are the answered examples uncut (tokenized with no length limit).
pub fn mismatched(
    examples: &[Example],
    max_length: usize,
    tok: &TextTokenizer,
) -> Result<Vec<Example>> {
    let n = examples.len();
    (0..n)
        .map(|i| {
            let (p, c) = (&examples[i], &examples[(i + n - 1) % n]);
            let (lp, lc) = (prompt_len(p), prompt_len(c));
            let mut ids = p.ids[..lp].to_vec();
            ids.extend_from_slice(&c.ids[lc..]);
            ids.truncate(max_length);
            let labels = counted_from(&ids, lp.min(ids.len()));
            let counted: Vec<u32> = ids[lp.min(ids.len())..].to_vec();
            let scored_bytes = tok.decode(&counted, true)?.len();
            Ok(Example {
                ids,
                labels,
                scored_bytes,
            })
        })
        .collect()
}

/// Number of tokens the loss counts for an example (labels shifted by one).
pub fn loss_tokens(e: &Example) -> usize {
    e.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
}

/// A right-padded micro-batch: ids (b, t) u32 and labels (b, t) i64 already shifted so that
/// `labels[i][j]` is the target of position j (-100 where nothing counts).
pub struct Batch {
    pub ids: Tensor,
    pub targets: Tensor,
    pub n_targets: usize,
    pub n_tokens: usize,
}

pub fn collate(examples: &[&Example], pad_id: u32, device: &Device) -> Result<Batch> {
    let b = examples.len();
    let t = examples
        .iter()
        .map(|e| e.ids.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = vec![pad_id; b * t];
    let mut targets = vec![IGNORE; b * t];
    let mut n_targets = 0;
    let mut n_tokens = 0;
    for (r, e) in examples.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        n_tokens += e.ids.len();
        for j in 0..e.labels.len().saturating_sub(1) {
            let l = e.labels[j + 1];
            targets[r * t + j] = l;
            if l != IGNORE {
                n_targets += 1;
            }
        }
    }
    Ok(Batch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        targets: Tensor::from_vec(targets, (b, t), device)?,
        n_targets,
        n_tokens,
    })
}
