//! Generation with a KV cache: batched prompts (left-padded, with position ids from the
//! attention mask as transformers does), greedy or sampled (temperature, top-k, top-p),
//! stopping at EOS, after `max_new_tokens`, or when the sequence fills the model's context
//! (`max_position_embeddings`, as transformers' `max_length` would: RoPE would go on past it,
//! but on positions the model never saw). A prompt that alone fills the context is refused,
//! and rows stopped by the context are counted in a warning. Each prompt gets its own RNG
//! stream seeded by (seed, prompt index), so results do not depend on how prompts are batched.

use super::checkpoint::LoadedModel;
use super::llama::{KvCache, Llama};
use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// How responses are sampled. Declared once: clap flattens it into `elastica generate`'s
/// flags, serde stores it in the cells' parameters, and the rebound and resist configs read
/// their `[generation]` / `[generate]` tables into it (`experiments::sampling`, with each
/// experiment's own defaults and without the seed); each field's doc line is its `--help`
/// text and its TOML doc.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct GenConfig {
    /// Longest response in tokens.
    #[arg(long, default_value_t = GenConfig::DEFAULT.max_new_tokens)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = GenConfig::DEFAULT.temperature)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = GenConfig::DEFAULT.top_p)]
    pub top_p: f64,
    /// Sample only among the k most likely tokens (0 = off).
    #[arg(long, default_value_t = GenConfig::DEFAULT.top_k)]
    pub top_k: usize,
    /// Seed of the sampling (each prompt gets its own stream, so batching does not matter).
    #[arg(long, default_value_t = GenConfig::DEFAULT.seed)]
    pub seed: u64,
    /// Prompts decoded together.
    #[arg(long, default_value_t = GenConfig::DEFAULT.batch_size)]
    pub batch_size: usize,
}

impl GenConfig {
    /// The defaults (greedy), as a constant so that `--help` shows the same values.
    pub const DEFAULT: GenConfig = GenConfig {
        max_new_tokens: 64,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 42,
        batch_size: 16,
    };

    /// These settings with another sampling seed (one replicate's).
    pub fn with_seed(&self, seed: u64) -> GenConfig {
        GenConfig {
            seed,
            ..self.clone()
        }
    }

    /// Check the values `generate` cannot use: no tokens or no batch, a negative, infinite
    /// or NaN temperature, a nucleus mass outside (0, 1].
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 || self.batch_size == 0 {
            anyhow::bail!("max_new_tokens and batch_size must be at least 1");
        }
        self.check_sampling()
    }

    /// The sampling settings alone (see [`Self::validate`]), naming the one that is wrong.
    fn check_sampling(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            anyhow::bail!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("top_p must be in (0, 1], got {}", self.top_p);
        }
        Ok(())
    }
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig::DEFAULT
    }
}

impl LoadedModel {
    /// [`generate`] with the model's own EOS and padding tokens.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenConfig,
        on_done: impl FnMut(usize),
    ) -> Result<Vec<Vec<u32>>> {
        let tok = &self.tokenizer;
        generate(
            &self.model,
            prompts,
            tok.eos_ids(),
            tok.pad_id(),
            cfg,
            on_done,
        )
    }
}

/// Generate continuations of each prompt (token ids). Returns the new tokens of each prompt,
/// without the EOS that ended it. `on_done` is called with the number of prompts finished.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    eos_ids: &[u32],
    pad_id: u32,
    cfg: &GenConfig,
    mut on_done: impl FnMut(usize),
) -> Result<Vec<Vec<u32>>> {
    let context = model.cfg.max_position_embeddings;
    check_request(prompts, cfg, context)?;
    let run = Decoding {
        model,
        eos_ids,
        pad_id,
        cfg,
    };
    let mut out = Vec::with_capacity(prompts.len());
    let mut at_context = 0;
    for (chunk_idx, chunk) in prompts.chunks(cfg.batch_size).enumerate() {
        let first = chunk_idx * cfg.batch_size;
        let (gens, stopped) = run.split(chunk, first)?;
        out.extend(gens);
        at_context += stopped;
        on_done(chunk.len());
    }
    warn_context_stops(at_context, prompts.len(), context, cfg);
    Ok(out)
}

/// Refuse what no backend can generate from: bad sampling settings, or a prompt that alone
/// fills the model's `context` (no token can follow it).
pub fn check_request(prompts: &[Vec<u32>], cfg: &GenConfig, context: usize) -> Result<()> {
    anyhow::ensure!(cfg.batch_size > 0, "generation batch size must be positive");
    cfg.check_sampling()?;
    if let Some((i, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() >= context) {
        anyhow::bail!(
            "prompt {} is {} tokens long, but the model's context (max_position_embeddings) is \
             {context} tokens, so no token can follow it; shorten the prompt",
            i + 1,
            p.len()
        );
    }
    Ok(())
}

/// Say how many of `n` generations the model's `context` stopped before `max_new_tokens`.
pub fn warn_context_stops(at_context: usize, n: usize, context: usize, cfg: &GenConfig) {
    if at_context > 0 {
        eprintln!(
            "warning: {at_context} of {n} generation(s) stopped at the model's context \
             (max_position_embeddings = {context} tokens, prompt included) before \
             max_new_tokens = {}",
            cfg.max_new_tokens
        );
    }
}

/// Generations of one batch, and how many of them the context stopped.
type Batch = (Vec<Vec<u32>>, usize);

/// Fewest rows a sub-batch of [`Decoding::split`] keeps: each sub-batch reads every weight
/// once per step, so with fewer rows the extra weight traffic (a big model's real cost)
/// outgrows what the split saves.
const MIN_ROWS_PER_THREAD: usize = 8;

/// What stays fixed over one [`generate`] call: the model, its stop and padding tokens and
/// the sampling settings.
struct Decoding<'a> {
    model: &'a Llama,
    eos_ids: &'a [u32],
    pad_id: u32,
    cfg: &'a GenConfig,
}

impl Decoding<'_> {
    /// One batch (the first of which is prompt `first_index` of the run), as up to one
    /// sub-batch per worker thread. The rows of a batch never interact while decoding, so each
    /// thread can run its own rows through the whole model: a decoding step's products are
    /// small (~100 us at batch 16) and splitting each one across threads cost about as much in
    /// fork-join as it saved.
    fn split(&self, prompts: &[Vec<u32>], first_index: usize) -> Result<Batch> {
        let parts =
            rayon::current_num_threads().clamp(1, (prompts.len() / MIN_ROWS_PER_THREAD).max(1));
        if parts == 1 {
            // On a worker thread, the products' fork-joins run their halves themselves unless
            // the other worker is free to steal one; from outside the pool each would wait for
            // a worker to wake.
            return rayon::scope(|_| self.batch(prompts, first_index));
        }
        let size = prompts.len().div_ceil(parts);
        let done: Vec<Result<Batch>> = prompts
            .par_chunks(size)
            .enumerate()
            .map(|(i, sub)| self.batch(sub, first_index + i * size))
            .collect();
        let mut out = Vec::with_capacity(prompts.len());
        let mut stopped = 0;
        for d in done {
            let (gens, n) = d?;
            out.extend(gens);
            stopped += n;
        }
        Ok((out, stopped))
    }

    /// One sub-batch of [`Self::split`], decoded on this thread.
    fn batch(&self, prompts: &[Vec<u32>], first_index: usize) -> Result<Batch> {
        let (model, eos_ids, pad_id, cfg) = (self.model, self.eos_ids, self.pad_id, self.cfg);
        let dev = model.device();
        let context = model.cfg.max_position_embeddings;
        let (mut rows, ids, pos) = Rows::start(prompts, first_index, pad_id, cfg.seed)?;
        let (b, max_len) = (prompts.len(), ids.len() / prompts.len());
        let mut cache = KvCache::new(model.cfg.num_hidden_layers);
        let mut logits = model.forward_cached(
            &Tensor::from_vec(ids, (b, max_len), dev)?,
            &Tensor::from_vec(pos, (b, max_len), dev)?,
            &Tensor::from_vec(rows.key_mask.concat(), (b, max_len), dev)?,
            &mut cache,
        )?;
        let mut at_context = 0;
        let mut total = max_len;
        for _ in 0..cfg.max_new_tokens {
            // (b, vocab): each row's last token.
            let last: Vec<Vec<f32>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2()?;
            for (row, done) in last.iter().zip(&rows.done) {
                if !done {
                    check_logits(row)?;
                }
            }
            at_context += rows.stop_at(context);
            let Some((step_ids, positions)) =
                rows.step(eos_ids, pad_id, |r, rng| pick(&last[r], cfg, rng))
            else {
                break;
            };
            total += 1;
            logits = model.forward_cached(
                &Tensor::from_vec(step_ids, (b, 1), dev)?,
                &Tensor::from_vec(positions, (b, 1), dev)?,
                &Tensor::from_vec(rows.key_mask.concat(), (b, total), dev)?,
                &mut cache,
            )?;
        }
        Ok((rows.outputs, at_context))
    }
}

/// The rows of a batch being decoded, on any backend: each row's key mask and next position
/// under left padding (positions count real tokens only), its RNG stream (seed, prompt
/// index), what it has generated and whether it has stopped.
pub struct Rows {
    pub outputs: Vec<Vec<u32>>,
    pub done: Vec<bool>,
    /// Per row, 1 where a key position holds a token to attend to (the prompt, then one
    /// column per step).
    pub key_mask: Vec<Vec<u32>>,
    /// Per row, the position its next token sits at.
    pub next_pos: Vec<u32>,
    rngs: Vec<rand_chacha::ChaCha8Rng>,
}

impl Rows {
    /// The rows of `prompts` (the first of which is prompt `first_index` of the run), and
    /// the left-padded ids and positions (b, longest prompt), row-major, of the first
    /// forward.
    pub fn start(
        prompts: &[Vec<u32>],
        first_index: usize,
        pad_id: u32,
        seed: u64,
    ) -> Result<(Self, Vec<u32>, Vec<u32>)> {
        let b = prompts.len();
        let max_len = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        anyhow::ensure!(
            max_len > 0,
            "cannot generate from an empty prompt (no tokens)"
        );
        let (mut ids, mut pos) = (
            Vec::with_capacity(b * max_len),
            Vec::with_capacity(b * max_len),
        );
        let (mut key_mask, mut next_pos) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for p in prompts {
            let padn = max_len - p.len();
            ids.extend(std::iter::repeat_n(pad_id, padn).chain(p.iter().copied()));
            pos.extend(std::iter::repeat_n(0, padn).chain(0..p.len() as u32));
            key_mask.push((0..max_len).map(|j| u32::from(j >= padn)).collect());
            next_pos.push(p.len() as u32);
        }
        let rngs = (0..b)
            .map(|r| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream((first_index + r) as u64);
                rng
            })
            .collect();
        let rows = Rows {
            outputs: vec![Vec::new(); b],
            done: vec![false; b],
            key_mask,
            next_pos,
            rngs,
        };
        Ok((rows, ids, pos))
    }

    /// Stop the rows whose next token would sit past the model's `context`; how many it
    /// stopped.
    pub fn stop_at(&mut self, context: usize) -> usize {
        let mut stopped = 0;
        for (done, &p) in self.done.iter_mut().zip(&self.next_pos) {
            if !*done && p as usize >= context {
                *done = true;
                stopped += 1;
            }
        }
        stopped
    }

    /// One decoding step: each row still going takes `pick(row, its RNG)`, an EOS stopping
    /// it (and not kept); a stopped row takes `pad_id`. Returns the step's ids and positions
    /// (b, 1), the key mask grown by one column, or None once every row has stopped.
    pub fn step(
        &mut self,
        eos_ids: &[u32],
        pad_id: u32,
        mut pick: impl FnMut(usize, &mut rand_chacha::ChaCha8Rng) -> u32,
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        let mut ids = Vec::with_capacity(self.done.len());
        for r in 0..self.done.len() {
            let tok = if self.done[r] {
                pad_id
            } else {
                let t = pick(r, &mut self.rngs[r]);
                if eos_ids.contains(&t) {
                    self.done[r] = true;
                } else {
                    self.outputs[r].push(t);
                }
                t
            };
            ids.push(tok);
        }
        if self.done.iter().all(|&d| d) {
            return None;
        }
        // Finished rows keep decoding pad tokens that nothing attends to (mask 0).
        for (row, &done) in self.key_mask.iter_mut().zip(&self.done) {
            row.push(u32::from(!done));
        }
        let positions = self.next_pos.clone();
        self.next_pos.iter_mut().for_each(|p| *p += 1);
        Some((ids, positions))
    }
}

/// Refuse a step's logits that hold NaN or +inf, or only -inf: the forward overflowed (a
/// diverged fine-tune, a damaged checkpoint, an adapter's scale), and sampling from them
/// would return garbage without a word.
pub fn check_logits(row: &[f32]) -> Result<()> {
    if let Some(x) = row.iter().find(|x| x.is_nan() || **x == f32::INFINITY) {
        bail!("{}", non_finite_logits(*x));
    }
    if row.iter().all(|&x| x == f32::NEG_INFINITY) {
        bail!("{}", non_finite_logits(f32::NEG_INFINITY));
    }
    Ok(())
}

/// The error of [`check_logits`].
pub fn non_finite_logits(x: f32) -> String {
    format!(
        "the model produced non-finite logits ({x}) while generating: its forward overflows \
         (diverged or damaged weights, or an adapter's scale)"
    )
}

/// Choose the next token from one row of logits.
pub fn pick(logits: &[f32], cfg: &GenConfig, rng: &mut impl Rng) -> u32 {
    if cfg.temperature == 0.0 {
        return argmax(logits);
    }
    let t = cfg.temperature as f32;
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / t))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if cfg.top_k > 0 && cfg.top_k < cand.len() {
        cand.truncate(cfg.top_k);
    }
    let m = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|c| ((c.1 - m) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if cfg.top_p < 1.0 {
        // Keep the smallest prefix of most likely tokens whose mass reaches top_p.
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        cand.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let u: f64 = rng.random::<f64>();
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return cand[i].0;
        }
    }
    cand[cand.len() - 1].0
}

/// Index of the largest logit (first one on ties, as torch.argmax).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        gen: GenConfig,
    }

    #[test]
    fn the_flags_are_the_fields_with_the_same_defaults() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("generate").chain(args.iter().copied()))
                .unwrap()
                .gen
        };
        let d = parse(&[]);
        let want = GenConfig::default();
        assert_eq!(
            (
                d.max_new_tokens,
                d.temperature,
                d.top_p,
                d.top_k,
                d.seed,
                d.batch_size
            ),
            (
                want.max_new_tokens,
                want.temperature,
                want.top_p,
                want.top_k,
                want.seed,
                want.batch_size
            )
        );
        let c = parse(&["--temperature", "0.7", "--top-k", "5", "--seed", "3"]);
        assert_eq!((c.temperature, c.top_k, c.seed), (0.7, 5, 3));
    }
}
