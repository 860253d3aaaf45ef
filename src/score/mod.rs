//! Scorers: text in, score out, batched. Every scorer (the world's exact rules, HF
//! classifiers, cost models, keyword matchers) sits behind [`Scorer`] so that experiments
//! never care which one they use.

pub mod classifier;
pub mod cost_model;
pub mod encoder;
pub mod keywords;
pub mod registry;
pub mod world;

use crate::data::records::Message;
use anyhow::Result;

/// One generation to score: the prompt it answered and the model's response.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// The prompt; for a conversation, its last user turn.
    pub prompt: &'a str,
    pub response: &'a str,
    /// The conversation's turns before the response, when it answers one (a scorer that
    /// reads whole conversations, such as the safe-rlhf cost model, renders them; the others
    /// read `prompt`).
    pub context: Option<&'a [Message]>,
}

impl<'a> Sample<'a> {
    /// A response to a text prompt.
    pub fn new(prompt: &'a str, response: &'a str) -> Self {
        Sample {
            prompt,
            response,
            context: None,
        }
    }
}

/// A batched scorer. Higher is "more aligned" or "more unsafe" depending on the scorer;
/// [`Scorer::higher_is_aligned`] says which, so reports can phrase results correctly.
pub trait Scorer: Send + Sync {
    /// Registry name, e.g. `world-sentiment`.
    fn name(&self) -> &str;
    /// True when a larger score means the aligned (positive / safe) behaviour.
    fn higher_is_aligned(&self) -> bool;
    /// Score each sample; the output has the same length and order as the input.
    fn score_batch(&self, samples: &[Sample<'_>]) -> Result<Vec<f64>>;
}
