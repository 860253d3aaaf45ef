//! `world.json`: what a world directory holds. It records every generation parameter, the
//! tokenizer's special tokens, and the exact size of every file in records and in tokens,
//! so an experiment can state |D_p|, |D_a| and |D_t| to the token.

use super::{Task, WorldConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const FORMAT: &str = "elastica-world";
/// Bumped whenever the generator's output for a given config changes.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub config: WorldConfig,
    /// How to read the files; plain sentences for people.
    pub conventions: Vec<String>,
    pub tokenizer: TokenizerInfo,
    /// The requested pre-training budget in sequence tokens.
    pub pretrain_budget_tokens: u64,
    /// Per file name: its role and exact sizes.
    pub files: BTreeMap<String, FileStats>,
    /// Pre-training records per behaviour (`reviews_positive`, `dialogue_harmful_unsafe`, ...).
    pub pretrain_mix: BTreeMap<String, MixStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub file: String,
    pub config_file: String,
    pub kind: String,
    pub vocab_size: usize,
    pub bos_token: String,
    pub bos_id: u32,
    pub eos_token: String,
    pub eos_id: u32,
    pub pad_token: String,
    pub pad_id: u32,
    /// Records of the tokenizer's training corpus (drawn from the world, then discarded).
    pub trained_on_records: usize,
}

/// What a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// D_p: `{"text"}` records.
    Pretrain,
    /// D_a: positive / safe `{"prompt","response"}` pairs.
    Align,
    /// D_t: negative / unsafe `{"prompt","response"}` pairs.
    Perturb,
    /// Held-out `{"prompt"}` records.
    Eval,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStats {
    pub role: Role,
    pub task: Option<Task>,
    pub records: usize,
    /// Tokens of the text without special tokens (for pairs: prompt + response).
    pub text_tokens: u64,
    pub prompt_tokens: Option<u64>,
    pub response_tokens: Option<u64>,
    /// Tokens with the special tokens a model sees: `<s>` + text + `</s>` for training
    /// records, `<s>` + prompt for evaluation prompts.
    pub sequence_tokens: u64,
    /// `sequence_tokens / records`.
    pub mean_sequence_tokens: f64,
    pub max_sequence_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MixStats {
    pub records: usize,
    pub sequence_tokens: u64,
}

pub fn conventions() -> Vec<String> {
    [
        "a pair's text is prompt + response, concatenated verbatim; responses start with a space",
        "sequence tokens = <s> + text + </s> for training records, <s> + prompt for evaluation prompts",
        "pretrain.jsonl holds no record whose text is in an alignment or perturbation file, and no record whose prompt is an evaluation prompt",
        "evaluation prompts occur in no other file; alignment and perturbation pairs are distinct by exact text",
        "positive_fraction is the share of the aligned behaviour where behaviours differ: positive reviews, and refusals of harmful requests",
        "benign dialogue requests occur only in pretraining, always answered helpfully (safe)",
        "dialogue alignment, perturbation and evaluation prompts are all harmful requests",
        "the pretraining budget is filled in order and stops at the first record that would exceed it",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
