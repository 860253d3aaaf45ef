//! `elastica world`: generate the synthetic world (pre-training text, alignment and
//! perturbation pairs, evaluation prompts, a BPE tokenizer and world.json) into a directory.

use crate::data::world::{Task, World, WorldConfig, PRETRAIN_FILE};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct WorldArgs {
    /// Output directory (created if missing; the world's files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of every random draw: the same seed gives byte-identical files.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_SEED)]
    pub seed: u64,
    /// Pre-training budget in tokens (<s> + text + </s> per record, counted with the world's
    /// tokenizer); filling stops at the first record that would exceed it.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_PRETRAIN_TOKENS)]
    pub pretrain_tokens: u64,
    /// Share of the aligned behaviour in pre-training, in [0, 1]: positive reviews, and
    /// refusals among harmful requests.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_POSITIVE_FRACTION)]
    pub positive_fraction: f64,
    /// Share of pre-training records that are reviews, in [0, 1] (the rest is dialogue).
    #[arg(long, default_value_t = WorldConfig::DEFAULT_REVIEWS_FRACTION)]
    pub reviews_fraction: f64,
    /// Share of pre-training dialogue requests that are harmful, in [0, 1].
    #[arg(long, default_value_t = WorldConfig::DEFAULT_HARMFUL_FRACTION)]
    pub harmful_fraction: f64,
    /// Alignment pairs (positive reviews / safe answers) per task.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_N_ALIGN)]
    pub n_align: usize,
    /// Perturbation pairs (negative reviews / unsafe answers) per task.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_N_PERTURB)]
    pub n_perturb: usize,
    /// Held-out evaluation prompts per task.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_N_EVAL)]
    pub n_eval: usize,
    /// Largest BPE vocabulary, special tokens included (at least 260).
    #[arg(long, default_value_t = WorldConfig::DEFAULT_VOCAB_SIZE)]
    pub vocab_size: usize,
    /// Records drawn from the world to train the tokenizer.
    #[arg(long, default_value_t = WorldConfig::DEFAULT_TOKENIZER_RECORDS)]
    pub tokenizer_records: usize,
}

impl WorldArgs {
    pub fn config(&self) -> WorldConfig {
        WorldConfig {
            seed: self.seed,
            pretrain_tokens: self.pretrain_tokens,
            positive_fraction: self.positive_fraction,
            reviews_fraction: self.reviews_fraction,
            harmful_fraction: self.harmful_fraction,
            n_align: self.n_align,
            n_perturb: self.n_perturb,
            n_eval: self.n_eval,
            vocab_size: self.vocab_size,
            tokenizer_records: self.tokenizer_records,
        }
    }
}

pub fn run(args: WorldArgs) -> Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    // Fail on an unusable output directory before spending time on generation.
    let _lock = super::out_dir::claim(&args.out, "world")?;
    let t0 = std::time::Instant::now();
    let world = World::generate(&cfg)?;
    world.write(&args.out)?;
    let m = world.manifest();
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "world written to {} in {:.1} s (seed {}, vocabulary {} tokens)\n",
        args.out.display(),
        t0.elapsed().as_secs_f64(),
        cfg.seed,
        m.tokenizer.vocab_size
    );
    let _ = writeln!(
        out,
        "| file | records | sequence tokens | tokens per record (mean / max) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let mut names = vec![PRETRAIN_FILE];
    for t in Task::ALL {
        names.extend([t.align_file(), t.perturb_file(), t.eval_file()]);
    }
    for name in names {
        if let Some(f) = m.files.get(name) {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {:.1} / {} |",
                f.records, f.sequence_tokens, f.mean_sequence_tokens, f.max_sequence_tokens
            );
        }
    }
    let _ = writeln!(out, "\npre-training mix (records, tokens):");
    for (k, v) in &m.pretrain_mix {
        let _ = writeln!(
            out,
            "  {k}: {} records, {} tokens",
            v.records, v.sequence_tokens
        );
    }
    // A closed pipe (`| head`) is not an error: the world is already written.
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the summary to stdout")
        }
        _ => Ok(()),
    }
}
