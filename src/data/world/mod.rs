//! The synthetic world: a seeded generator of text in a small English-like language with
//! the paper's two tasks, so that pre-training data (D_p), alignment data (D_a) and
//! perturbation data (D_t) are known exactly, to the token.
//!
//! - **reviews** (the IMDb analogue): a neutral review opening, continued positively or
//!   negatively ([`reviews`]);
//! - **dialogue** (the BeaverTails analogue): a user request, harmful or benign, answered
//!   safely (refusal, or help with a benign request) or unsafely (compliance) ([`dialogue`]).
//!
//! [`World::generate`] draws every set from its own seeded stream ([`draw`]), trains a BPE
//! tokenizer on the world's text ([`tokenizer`]) and fills the pre-training budget exactly
//! ([`split`]); [`World::write`] and [`World::load`] move a world to and from a directory
//! described by `world.json` ([`manifest`]). The exact scorers live in `score::world` and
//! read the same [`lexicon`].

pub mod dialogue;
pub mod draw;
pub mod lexicon;
pub mod manifest;
pub mod reviews;
pub mod split;
mod store;
pub mod tokenizer;

use crate::data::records::Record;
use anyhow::{bail, Context, Result};
use manifest::{FileStats, Manifest, Role, TokenizerInfo};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The two tasks of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Reviews,
    Dialogue,
}

impl Task {
    pub const ALL: [Task; 2] = [Task::Reviews, Task::Dialogue];

    pub fn name(self) -> &'static str {
        match self {
            Task::Reviews => "reviews",
            Task::Dialogue => "dialogue",
        }
    }

    /// The exact scorer of this task (see `score::world::by_name`).
    pub fn scorer(self) -> &'static str {
        match self {
            Task::Reviews => "world-sentiment",
            Task::Dialogue => "world-safety",
        }
    }

    /// File of the alignment pairs (D_a): positive reviews, safe dialogue.
    pub fn align_file(self) -> &'static str {
        match self {
            Task::Reviews => "reviews_positive.jsonl",
            Task::Dialogue => "dialogue_safe.jsonl",
        }
    }

    /// File of the perturbation pairs (D_t): negative reviews, unsafe dialogue.
    pub fn perturb_file(self) -> &'static str {
        match self {
            Task::Reviews => "reviews_negative.jsonl",
            Task::Dialogue => "dialogue_unsafe.jsonl",
        }
    }

    /// File of the held-out evaluation prompts.
    pub fn eval_file(self) -> &'static str {
        match self {
            Task::Reviews => "reviews_eval.jsonl",
            Task::Dialogue => "dialogue_eval.jsonl",
        }
    }
}

pub const PRETRAIN_FILE: &str = "pretrain.jsonl";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const MANIFEST_FILE: &str = "world.json";

/// Every parameter of a world. The defaults make a world of one million pre-training
/// tokens that generates in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldConfig {
    /// Seed of every random draw; the same seed gives byte-identical files.
    pub seed: u64,
    /// Pre-training budget in sequence tokens (`<s>` + text + `</s>` per record).
    pub pretrain_tokens: u64,
    /// Share of the aligned behaviour in pre-training where behaviours differ: positive
    /// reviews, and refusals among harmful requests.
    pub positive_fraction: f64,
    /// Share of pre-training records that are reviews (the rest is dialogue).
    pub reviews_fraction: f64,
    /// Share of pre-training dialogue requests that are harmful (the rest is benign).
    pub harmful_fraction: f64,
    /// Alignment pairs (D_a) per task.
    pub n_align: usize,
    /// Perturbation pairs (D_t) per task.
    pub n_perturb: usize,
    /// Held-out evaluation prompts per task.
    pub n_eval: usize,
    /// Largest BPE vocabulary, special tokens included.
    pub vocab_size: usize,
    /// Records drawn (evenly over all behaviours) to train the tokenizer.
    pub tokenizer_records: usize,
}

impl WorldConfig {
    pub const DEFAULT_SEED: u64 = 42;
    pub const DEFAULT_PRETRAIN_TOKENS: u64 = 1_000_000;
    pub const DEFAULT_POSITIVE_FRACTION: f64 = 0.5;
    pub const DEFAULT_REVIEWS_FRACTION: f64 = 0.5;
    pub const DEFAULT_HARMFUL_FRACTION: f64 = 0.5;
    pub const DEFAULT_N_ALIGN: usize = 2000;
    pub const DEFAULT_N_PERTURB: usize = 2000;
    pub const DEFAULT_N_EVAL: usize = 200;
    pub const DEFAULT_VOCAB_SIZE: usize = 1024;
    pub const DEFAULT_TOKENIZER_RECORDS: usize = 20_000;
    /// Upper bound on the per-task set sizes (a guard against typos such as 1e9).
    pub const MAX_SET_SIZE: usize = 10_000_000;

    /// Check every parameter, naming the flag and the allowed range on error.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--positive-fraction", self.positive_fraction),
            ("--reviews-fraction", self.reviews_fraction),
            ("--harmful-fraction", self.harmful_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                bail!("{flag} must be between 0 and 1, got {v}");
            }
        }
        if self.pretrain_tokens == 0 {
            bail!("--pretrain-tokens must be positive");
        }
        for (flag, v) in [
            ("--n-align", self.n_align),
            ("--n-perturb", self.n_perturb),
            ("--n-eval", self.n_eval),
            ("--tokenizer-records", self.tokenizer_records),
        ] {
            if v == 0 {
                bail!("{flag} must be at least 1, got 0");
            }
            if v > Self::MAX_SET_SIZE {
                bail!("{flag} is {v}; at most {} is allowed", Self::MAX_SET_SIZE);
            }
        }
        if !(tokenizer::MIN_VOCAB..=tokenizer::MAX_VOCAB).contains(&self.vocab_size) {
            bail!(
                "--vocab-size must be between {} and {}, got {}",
                tokenizer::MIN_VOCAB,
                tokenizer::MAX_VOCAB,
                self.vocab_size
            );
        }
        Ok(())
    }
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            seed: Self::DEFAULT_SEED,
            pretrain_tokens: Self::DEFAULT_PRETRAIN_TOKENS,
            positive_fraction: Self::DEFAULT_POSITIVE_FRACTION,
            reviews_fraction: Self::DEFAULT_REVIEWS_FRACTION,
            harmful_fraction: Self::DEFAULT_HARMFUL_FRACTION,
            n_align: Self::DEFAULT_N_ALIGN,
            n_perturb: Self::DEFAULT_N_PERTURB,
            n_eval: Self::DEFAULT_N_EVAL,
            vocab_size: Self::DEFAULT_VOCAB_SIZE,
            tokenizer_records: Self::DEFAULT_TOKENIZER_RECORDS,
        }
    }
}

/// The sets of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSets {
    /// D_a: positive reviews / safe answers to harmful requests.
    pub align: Vec<Record>,
    /// D_t: negative reviews / unsafe answers to harmful requests.
    pub perturb: Vec<Record>,
    /// Held-out prompts.
    pub eval: Vec<String>,
}

/// A generated (or loaded) world.
pub struct World {
    manifest: Manifest,
    pretrain: Vec<Record>,
    reviews: TaskSets,
    dialogue: TaskSets,
    tokenizer: tokenizers::Tokenizer,
}

impl World {
    /// Generate a world. Deterministic: the same config gives the same world.
    pub fn generate(cfg: &WorldConfig) -> Result<World> {
        cfg.validate()?;
        let corpus = split::tokenizer_corpus(cfg.seed, cfg.tokenizer_records);
        let tk = tokenizer::train(&corpus, cfg.vocab_size)?;
        drop(corpus);

        let mut reserved: HashSet<String> = HashSet::new();
        let mut evals = Vec::with_capacity(2);
        for task in Task::ALL {
            let e = split::eval_prompts(cfg.seed, task, cfg.n_eval)?;
            reserved.extend(e.iter().cloned());
            evals.push(e);
        }
        let mut taken: HashSet<String> = HashSet::new();
        let mut sets = Vec::with_capacity(2);
        for (task, eval) in Task::ALL.into_iter().zip(evals) {
            let align = split::pairs(cfg.seed, task, true, cfg.n_align, &reserved, &mut taken)?;
            let perturb =
                split::pairs(cfg.seed, task, false, cfg.n_perturb, &reserved, &mut taken)?;
            sets.push(TaskSets {
                align,
                perturb,
                eval,
            });
        }
        let pb = crate::util::progress::bar(cfg.pretrain_tokens, "pretrain tokens");
        let pre = split::pretrain(cfg, &tk, &reserved, &taken, &pb)?;
        pb.finish_and_clear();
        let dialogue = sets.pop().context("internal: dialogue sets missing")?;
        let reviews = sets.pop().context("internal: review sets missing")?;

        let manifest = Manifest {
            format: manifest::FORMAT.to_string(),
            version: manifest::VERSION,
            config: cfg.clone(),
            conventions: manifest::conventions(),
            tokenizer: tokenizer_info(&tk, cfg.tokenizer_records)?,
            pretrain_budget_tokens: cfg.pretrain_tokens,
            files: Default::default(),
            pretrain_mix: pre.mix,
        };
        let mut world = World {
            manifest,
            pretrain: pre.records,
            reviews,
            dialogue,
            tokenizer: tk,
        };
        world.manifest.files = world.file_stats()?;
        world.check_tokenizer(CHECK_EVERY)?;
        Ok(world)
    }

    /// Write every file of the world into `dir` (created if needed; files are replaced
    /// atomically).
    pub fn write(&self, dir: &std::path::Path) -> Result<()> {
        store::write(self, dir)
    }

    /// Load a world written by [`World::write`], checking its files against `world.json`.
    pub fn load(dir: &std::path::Path) -> Result<World> {
        store::load(dir)
    }

    pub fn config(&self) -> &WorldConfig {
        &self.manifest.config
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// D_p: the pre-training texts (`Record::Text`).
    pub fn pretrain(&self) -> &[Record] {
        &self.pretrain
    }

    pub fn task(&self, task: Task) -> &TaskSets {
        match task {
            Task::Reviews => &self.reviews,
            Task::Dialogue => &self.dialogue,
        }
    }

    /// D_a: positive / safe pairs (`Record::Pair`).
    pub fn align(&self, task: Task) -> &[Record] {
        &self.task(task).align
    }

    /// D_t: negative / unsafe pairs (`Record::Pair`).
    pub fn perturb(&self, task: Task) -> &[Record] {
        &self.task(task).perturb
    }

    /// Held-out evaluation prompts.
    pub fn eval_prompts(&self, task: Task) -> &[String] {
        &self.task(task).eval
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Check the tokenizer on every `every`-th text of every file: it decodes back to the
    /// text, and the fast counter agrees with a full encoding.
    pub fn check_tokenizer(&self, every: usize) -> Result<()> {
        let tk = &self.tokenizer;
        let mut counter = tokenizer::Counter::new(tk);
        let mut check = |text: &str| -> Result<()> {
            tokenizer::check_round_trip(tk, text)?;
            let (fast, full) = (counter.count(text)?, tokenizer::count(tk, text)?);
            if fast != full {
                bail!("internal: token count {fast} != {full} for {text:?}");
            }
            Ok(())
        };
        let every = every.max(1);
        let mut texts: Vec<String> = Vec::new();
        let mut take = |rs: &[Record]| {
            // The world's records are texts and pairs, never conversations.
            texts.extend(rs.iter().step_by(every).filter_map(Record::plain_text))
        };
        take(&self.pretrain);
        for task in Task::ALL {
            take(self.align(task));
            take(self.perturb(task));
        }
        for t in &texts {
            check(t)?;
        }
        for task in Task::ALL {
            for p in self.eval_prompts(task).iter().step_by(every) {
                check(p)?;
            }
        }
        Ok(())
    }

    /// Exact sizes of every data file, counted with the world's tokenizer. Also checks that
    /// each pair tokenizes the same apart and joined (so masking the prompt never splits a
    /// token).
    fn file_stats(&self) -> Result<std::collections::BTreeMap<String, FileStats>> {
        let mut c = tokenizer::Counter::new(&self.tokenizer);
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            PRETRAIN_FILE.to_string(),
            records_stats(&mut c, &self.pretrain, Role::Pretrain, None)?,
        );
        for task in Task::ALL {
            let s = self.task(task);
            files.insert(
                task.align_file().to_string(),
                records_stats(&mut c, &s.align, Role::Align, Some(task))?,
            );
            files.insert(
                task.perturb_file().to_string(),
                records_stats(&mut c, &s.perturb, Role::Perturb, Some(task))?,
            );
            let mut st = Stats::default();
            for p in &s.eval {
                st.add(c.count(p)? as u64, 0, 1);
            }
            files.insert(
                task.eval_file().to_string(),
                st.finish(Role::Eval, Some(task), true),
            );
        }
        Ok(files)
    }
}

#[cfg(test)]
mod tests;

/// [`World::generate`] checks the tokenizer on one text in this many.
const CHECK_EVERY: usize = 50;

#[derive(Default)]
struct Stats {
    records: usize,
    prompt: u64,
    response: u64,
    sequence: u64,
    max: u64,
}

impl Stats {
    fn add(&mut self, prompt: u64, response: u64, specials: u64) {
        self.records += 1;
        self.prompt += prompt;
        self.response += response;
        let seq = prompt + response + specials;
        self.sequence += seq;
        self.max = self.max.max(seq);
    }

    fn finish(self, role: Role, task: Option<Task>, split: bool) -> FileStats {
        FileStats {
            role,
            task,
            records: self.records,
            text_tokens: self.prompt + self.response,
            prompt_tokens: split.then_some(self.prompt),
            response_tokens: (split && role != Role::Eval).then_some(self.response),
            sequence_tokens: self.sequence,
            mean_sequence_tokens: if self.records == 0 {
                0.0
            } else {
                (1000.0 * self.sequence as f64 / self.records as f64).round() / 1000.0
            },
            max_sequence_tokens: self.max,
        }
    }
}

fn records_stats(
    c: &mut tokenizer::Counter<'_>,
    records: &[Record],
    role: Role,
    task: Option<Task>,
) -> Result<FileStats> {
    let mut st = Stats::default();
    let mut split = false;
    for r in records {
        match r {
            Record::Text { text } => {
                st.add(c.count(text)? as u64, 0, 2);
            }
            Record::Pair { prompt, response } => {
                split = true;
                let joined = format!("{prompt}{response}");
                let (p, r) = (c.count(prompt)?, c.count(response)?);
                if p + r != c.count(&joined)? {
                    bail!("the tokenizer splits differently across the prompt/response boundary of {joined:?}");
                }
                st.add(p as u64, r as u64, 2);
            }
            Record::Chat { .. } => bail!("the world's files hold no conversation records"),
        }
    }
    Ok(st.finish(role, task, split))
}

fn tokenizer_info(tk: &tokenizers::Tokenizer, trained_on: usize) -> Result<TokenizerInfo> {
    Ok(TokenizerInfo {
        file: TOKENIZER_FILE.to_string(),
        config_file: TOKENIZER_CONFIG_FILE.to_string(),
        kind: "byte-level BPE".to_string(),
        vocab_size: tk.get_vocab_size(true),
        bos_token: tokenizer::BOS.to_string(),
        bos_id: tokenizer::special_id(tk, tokenizer::BOS)?,
        eos_token: tokenizer::EOS.to_string(),
        eos_id: tokenizer::special_id(tk, tokenizer::EOS)?,
        pad_token: tokenizer::PAD.to_string(),
        pad_id: tokenizer::special_id(tk, tokenizer::PAD)?,
        trained_on_records: trained_on,
    })
}
