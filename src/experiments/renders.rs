//! Planning's check that the base model's tokenizer renders what a run will tokenize under
//! its template: a template that refuses some turn (a chat template that raises on a system
//! turn, a turn safe-rlhf's format cannot hold) or a missing chat template stops the plan
//! before a run directory is written, instead of failing inside a cell.

use crate::data::prompts::Prompt;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::checkpoint::resolve_model_dir;
use crate::model::{ModelConfig, TextTokenizer};
use crate::train::batch::tokenize;
use anyhow::{Context, Result};

/// Render and tokenize, with the tokenizer of the base model `model` (a path or hub id), the
/// records of each named set and the generation prompts under `template`. Only what can fail
/// to render is checked: every record and prompt under the chat template, conversations
/// under the others (fixed strings render any text); with nothing to check, the model is not
/// read.
pub fn check_renders(
    model: &str,
    template: Template,
    max_length: usize,
    sets: &[(&str, &[Record])],
    prompts: &[Prompt],
) -> Result<()> {
    let renders = |conversation: bool| template == Template::Chat || conversation;
    let records: Vec<(&str, usize, &Record)> = sets
        .iter()
        .flat_map(|(what, records)| records.iter().enumerate().map(move |(i, r)| (*what, i, r)))
        .filter(|(_, _, r)| renders(r.is_conversation()))
        .collect();
    let asked: Vec<(usize, &Prompt)> = prompts
        .iter()
        .enumerate()
        .filter(|(_, p)| renders(p.turns().is_some()))
        .collect();
    if records.is_empty() && asked.is_empty() {
        return Ok(());
    }
    let dir = resolve_model_dir(model)?;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let tok = TextTokenizer::from_dir(&dir, &config.eos_token_ids, config.pad_token_id)?;
    let whose = || format!("under the base model {model}'s tokenizer");
    for (what, i, r) in records {
        tokenize(std::slice::from_ref(r), &tok, template, max_length)
            .with_context(|| format!("{what}: record {} {}", i + 1, whose()))?;
    }
    for (i, p) in asked {
        template
            .encode_generation_prompt(p, &tok)
            .with_context(|| format!("generation prompt {} {}", i + 1, whose()))?;
    }
    Ok(())
}
