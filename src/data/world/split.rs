//! Drawing the world's sets: the tokenizer corpus, held-out evaluation prompts, alignment
//! (D_a) and perturbation (D_t) pairs, and the pre-training text (D_p) filled to an exact
//! token budget. Disjointness is by exact text: a draw that collides with a set it must
//! avoid is thrown away and drawn again.

use super::draw::{chance, stream, Stream};
use super::manifest::MixStats;
use super::{dialogue, reviews, tokenizer, Task, WorldConfig};
use crate::data::records::Record;
use anyhow::{anyhow, bail, Result};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashSet};

/// Consecutive rejected draws after which a set is declared impossible to fill.
const MAX_REDRAWS: usize = 100_000;

/// What a response does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// A positive review continuation.
    Positive,
    /// A negative review continuation.
    Negative,
    /// A refusal of a harmful request.
    HarmfulSafe,
    /// Compliance with a harmful request.
    HarmfulUnsafe,
    /// Help with a benign request.
    BenignHelped,
}

impl Behaviour {
    pub fn task(self) -> Task {
        match self {
            Behaviour::Positive | Behaviour::Negative => Task::Reviews,
            _ => Task::Dialogue,
        }
    }

    /// The key in world.json's `pretrain_mix`.
    pub fn key(self) -> &'static str {
        match self {
            Behaviour::Positive => "reviews_positive",
            Behaviour::Negative => "reviews_negative",
            Behaviour::HarmfulSafe => "dialogue_harmful_safe",
            Behaviour::HarmfulUnsafe => "dialogue_harmful_unsafe",
            Behaviour::BenignHelped => "dialogue_benign_helped",
        }
    }

    pub const ALL: [Behaviour; 5] = [
        Behaviour::Positive,
        Behaviour::Negative,
        Behaviour::HarmfulSafe,
        Behaviour::HarmfulUnsafe,
        Behaviour::BenignHelped,
    ];

    /// The behaviour of an alignment (aligned = true) or perturbation pair of `task`.
    pub fn of_pair(task: Task, aligned: bool) -> Behaviour {
        match (task, aligned) {
            (Task::Reviews, true) => Behaviour::Positive,
            (Task::Reviews, false) => Behaviour::Negative,
            (Task::Dialogue, true) => Behaviour::HarmfulSafe,
            (Task::Dialogue, false) => Behaviour::HarmfulUnsafe,
        }
    }
}

/// Draw one prompt of `task` (a harmful request for dialogue unless `benign`).
fn prompt_only(rng: &mut ChaCha8Rng, task: Task) -> String {
    match task {
        Task::Reviews => reviews::opening(rng).text,
        Task::Dialogue => dialogue::request(rng, true).text,
    }
}

/// Draw one (prompt, response) pair with the given behaviour.
pub fn pair(rng: &mut ChaCha8Rng, b: Behaviour) -> (String, String) {
    match b {
        Behaviour::Positive | Behaviour::Negative => {
            let o = reviews::opening(rng);
            let r = reviews::continuation(rng, &o, b == Behaviour::Positive);
            (o.text, r)
        }
        Behaviour::HarmfulSafe => {
            let q = dialogue::request(rng, true);
            let r = dialogue::safe_response(rng, &q);
            (q.text, r)
        }
        Behaviour::HarmfulUnsafe => {
            let q = dialogue::request(rng, true);
            let r = dialogue::unsafe_response(rng, &q);
            (q.text, r)
        }
        Behaviour::BenignHelped => {
            let q = dialogue::request(rng, false);
            let r = dialogue::safe_response(rng, &q);
            (q.text, r)
        }
    }
}

/// The pre-training mixture: which behaviour the next record shows.
fn pretrain_behaviour(rng: &mut ChaCha8Rng, cfg: &WorldConfig) -> Behaviour {
    if chance(rng, cfg.reviews_fraction) {
        if chance(rng, cfg.positive_fraction) {
            Behaviour::Positive
        } else {
            Behaviour::Negative
        }
    } else if chance(rng, cfg.harmful_fraction) {
        if chance(rng, cfg.positive_fraction) {
            Behaviour::HarmfulSafe
        } else {
            Behaviour::HarmfulUnsafe
        }
    } else {
        Behaviour::BenignHelped
    }
}

/// The tokenizer's training corpus: `n` texts with every behaviour equally likely, so every
/// word of the language gets its tokens whatever the pre-training mixture.
pub fn tokenizer_corpus(seed: u64, n: usize) -> Vec<String> {
    let mut rng = stream(seed, Stream::TokenizerCorpus);
    (0..n)
        .map(|i| {
            let (p, r) = pair(&mut rng, Behaviour::ALL[i % Behaviour::ALL.len()]);
            p + &r
        })
        .collect()
}

/// `n` distinct held-out prompts of `task`.
pub fn eval_prompts(seed: u64, task: Task, n: usize) -> Result<Vec<String>> {
    let mut rng = stream(
        seed,
        match task {
            Task::Reviews => Stream::ReviewsEval,
            Task::Dialogue => Stream::DialogueEval,
        },
    );
    let mut seen = HashSet::with_capacity(n);
    draw_distinct(
        n,
        || {
            let p = prompt_only(&mut rng, task);
            seen.insert(p.clone()).then_some(p)
        },
        |found| {
            anyhow!(
                "cannot draw {n} distinct {} evaluation prompts (found {found}): ask for fewer with --n-eval",
                task.name()
            )
        },
    )
}

/// Draw until `n` items are kept; `draw` gives `None` for a draw it throws away. After
/// [`MAX_REDRAWS`] throw-aways in a row the set cannot be filled: `fail(items kept)`.
fn draw_distinct<T>(
    n: usize,
    mut draw: impl FnMut() -> Option<T>,
    fail: impl Fn(usize) -> anyhow::Error,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(n);
    let mut misses = 0usize;
    while out.len() < n {
        match draw() {
            Some(item) => {
                out.push(item);
                misses = 0;
            }
            None => {
                misses += 1;
                if misses > MAX_REDRAWS {
                    return Err(fail(out.len()));
                }
            }
        }
    }
    Ok(out)
}

/// `n` alignment (aligned = true) or perturbation pairs of `task`, none with a reserved
/// prompt and none whose text is already in `taken` (which receives the new texts).
pub fn pairs(
    seed: u64,
    task: Task,
    aligned: bool,
    n: usize,
    reserved_prompts: &HashSet<String>,
    taken: &mut HashSet<String>,
) -> Result<Vec<Record>> {
    let s = match (task, aligned) {
        (Task::Reviews, true) => Stream::ReviewsPositive,
        (Task::Reviews, false) => Stream::ReviewsNegative,
        (Task::Dialogue, true) => Stream::DialogueSafe,
        (Task::Dialogue, false) => Stream::DialogueUnsafe,
    };
    let mut rng = stream(seed, s);
    let b = Behaviour::of_pair(task, aligned);
    draw_distinct(
        n,
        || {
            let (p, r) = pair(&mut rng, b);
            (!reserved_prompts.contains(&p) && taken.insert(format!("{p}{r}")))
                .then(|| Record::pair(p, r))
        },
        |found| {
            anyhow!(
                "cannot draw {n} distinct {} pairs for {} (found {found}): ask for fewer",
                b.key(),
                task.name()
            )
        },
    )
}

/// The pre-training text and its composition.
pub struct Pretrain {
    pub records: Vec<Record>,
    pub mix: BTreeMap<String, MixStats>,
    pub sequence_tokens: u64,
}

/// Fill the pre-training budget: draw records from the mixture in order, skipping any whose
/// prompt is reserved or whose text is taken, and stop at the first record whose sequence
/// tokens (`<s>` + text + `</s>`) would take the total over `cfg.pretrain_tokens`.
pub fn pretrain(
    cfg: &WorldConfig,
    tk: &tokenizers::Tokenizer,
    reserved_prompts: &HashSet<String>,
    taken: &HashSet<String>,
    progress: &indicatif::ProgressBar,
) -> Result<Pretrain> {
    let mut rng = stream(cfg.seed, Stream::Pretrain);
    let mut mix: BTreeMap<String, MixStats> = Behaviour::ALL
        .iter()
        .map(|b| (b.key().to_string(), MixStats::default()))
        .collect();
    let mut records = Vec::new();
    let mut total = 0u64;
    let mut misses = 0usize;
    let mut counter = tokenizer::Counter::new(tk);
    loop {
        let b = pretrain_behaviour(&mut rng, cfg);
        let (p, r) = pair(&mut rng, b);
        let text = p.clone() + &r;
        if reserved_prompts.contains(&p) || taken.contains(&text) {
            misses += 1;
            if misses > MAX_REDRAWS {
                bail!("the world ran out of pre-training text that avoids the held-out sets: ask for fewer --pretrain-tokens");
            }
            continue;
        }
        misses = 0;
        let n = counter.count(&text)? as u64 + 2;
        if total + n > cfg.pretrain_tokens {
            break;
        }
        total += n;
        progress.inc(n);
        let m = mix.entry(b.key().to_string()).or_default();
        m.records += 1;
        m.sequence_tokens += n;
        records.push(Record::text(text));
    }
    if records.is_empty() {
        bail!(
            "--pretrain-tokens {} is smaller than a single pre-training record: ask for at least a few hundred tokens",
            cfg.pretrain_tokens
        );
    }
    Ok(Pretrain {
        records,
        mix,
        sequence_tokens: total,
    })
}
