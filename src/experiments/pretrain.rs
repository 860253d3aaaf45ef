//! Pre-training from scratch on the synthetic world's text: a size preset, an exact token
//! budget (|D_p| known to the token), and the model saved in the HF layout.

use crate::data::records::Record;
use crate::data::template::Template;
use crate::data::world::World;
use crate::model::checkpoint::{init_model, LoadedModel};
use crate::model::presets;
use crate::model::TextTokenizer;
use crate::train::schedule::Schedule;
use crate::train::{train, TrainConfig, TrainRun, TrainSummary};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PretrainConfig {
    pub size: String,
    /// Pre-training budget in sequence tokens (BOS + text + EOS per record).
    pub tokens: usize,
    pub seed: u64,
    pub lr: f64,
    pub batch_size: usize,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            size: "tiny".into(),
            tokens: 200_000,
            seed: 42,
            lr: 3e-3,
            batch_size: 1,
        }
    }
}

/// The world's pre-training records in file order until `tokens` sequence tokens are used.
/// Errors if the world holds fewer, or if the budget holds no record: then the error asks to
/// raise `budget` (the setting that gave `tokens`, as the user writes it).
pub fn take_tokens(
    world: &World,
    tok: &TextTokenizer,
    tokens: usize,
    budget: &str,
) -> Result<(Vec<Record>, usize)> {
    let mut used = 0;
    let mut out = Vec::new();
    for r in world.pretrain() {
        let Record::Text { text } = r else { continue };
        let n = tok.encode(text, true)?.len() + 1;
        if used + n > tokens {
            break;
        }
        used += n;
        out.push(r.clone());
    }
    if out.is_empty() {
        bail!(
            "a budget of {tokens} tokens holds no whole pre-training record (records are taken \
             whole, in order; the first is longer); raise {budget}"
        );
    }
    if out.len() == world.pretrain().len() && used < tokens {
        bail!(
            "the world holds only {used} pre-training tokens but {tokens} were asked for; regenerate it with --pretrain-tokens {tokens} or more"
        );
    }
    Ok((out, used))
}

/// Pre-train a fresh model of preset `cfg.size` on the world in `world_dir`, into `out`.
pub fn pretrain(
    world_dir: &Path,
    cfg: &PretrainConfig,
    out: &Path,
    progress: bool,
) -> Result<(LoadedModel, TrainSummary, usize)> {
    let world = World::load(world_dir)
        .with_context(|| format!("cannot load the world in {}", world_dir.display()))?;
    let tok = TextTokenizer::from_dir(world_dir, &[], None)?;
    let config = presets::config_json(&cfg.size, &tok, 512)?;
    // Data and settings are checked before `out` is made: a refused run leaves nothing.
    let (records, used) = take_tokens(&world, &tok, cfg.tokens, "--tokens")?;
    let tc = TrainConfig {
        template: Template::Raw,
        lr: cfg.lr,
        schedule: Schedule::Cosine,
        warmup_ratio: 0.05,
        batch_size: cfg.batch_size,
        grad_accum: 1,
        epochs: 1,
        max_length: 512,
        seed: cfg.seed,
        // About ten resumable checkpoints per run, whatever its length.
        save_every: records
            .len()
            .div_ceil(cfg.batch_size.max(1))
            .div_ceil(10)
            .max(50),
        ..Default::default()
    };
    tc.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config_path = out.join("init_config.json");
    crate::util::fsx::atomic_write(&config_path, config.as_bytes())?;
    let lm = init_model(&config_path, world_dir, cfg.seed, &Device::Cpu)?;
    let s = train(
        &lm,
        &records,
        &tc,
        TrainRun {
            out,
            resume: true,
            hook: None,
            progress,
        },
    )?;
    Ok((lm, s, used))
}
