//! A base model with a LoRA adapter (`model::lora`): loading one for `--model M --adapter
//! DIR` (an adapter with more than LoRA on the projections folded in), preparing one for training, and merging it into a plain
//! checkpoint. Kept apart from `lora` so that the decoder (which applies an adapter) does not
//! depend on checkpoint I/O.

use super::checkpoint::LoadedModel;
use super::lora::{Adapter, FoldedAdapter, LoraConfig, PeftAdapter};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::Path;

/// Load `spec` (a model directory or `org/name` in the offline HF cache) with the adapter in
/// `adapter` on top, if given, to evaluate: what `eval-loss`, `generate`, `compress` and
/// `rates` load for `--model M --adapter DIR`. A LoRA adapter is applied on the fly; one with
/// more (DoRA, LoRA on the embedding or head, `modules_to_save`, trained biases) is folded
/// into the weights (see [`FoldedAdapter`]), so the model carries none.
pub fn load_model_with(spec: &str, adapter: Option<&Path>, device: &Device) -> Result<LoadedModel> {
    let lm = super::checkpoint::load_model(spec, device)?;
    let Some(dir) = adapter else {
        return Ok(lm);
    };
    match PeftAdapter::load(dir, &lm.model.cfg)? {
        PeftAdapter::Lora(a) => attach(lm, a),
        PeftAdapter::Folded(f) => fold(lm, &f),
    }
}

/// Load `spec` with the adapter in `adapter` on top, if given, to train further: a LoRA
/// adapter only (a [`FoldedAdapter`] is refused, naming where it loads instead).
pub fn load_model_to_train(
    spec: &str,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<LoadedModel> {
    let lm = super::checkpoint::load_model(spec, device)?;
    match adapter {
        None => Ok(lm),
        Some(dir) => {
            let adapter = Adapter::load(dir, &lm.model.cfg)?;
            attach(lm, adapter)
        }
    }
}

/// `lm` with an adapter folded into its weights (and its configuration, which folding may
/// untie).
fn fold(lm: LoadedModel, adapter: &FoldedAdapter) -> Result<LoadedModel> {
    let (cfg, params) = adapter.merged(&lm.model.cfg, &lm.model.params)?;
    Ok(LoadedModel {
        model: super::Llama::new(cfg, params, lm.model.device())?,
        tokenizer: lm.tokenizer,
        dir: lm.dir,
    })
}

/// `lm`'s decoder with other weights (merged ones), no adapter.
fn with_params(lm: &LoadedModel, params: super::params::Params) -> Result<super::Llama> {
    super::Llama::new(lm.model.cfg.clone(), params, lm.model.device())
}

/// Refuse to train `model` with `cfg` when the two disagree: LoRA settings without an
/// adapter on the model (see [`for_training`]), or an adapter whose rank, alpha or targets
/// differ from the settings.
pub fn check_for_training(model: &super::Llama, cfg: &LoraConfig) -> Result<()> {
    check_adapter_for_training(model.adapter().map(|a| &a.cfg), cfg)
}

/// [`check_for_training`] of a model whose adapter has settings `adapter` (None: no
/// adapter), on whatever backend holds it.
pub fn check_adapter_for_training(adapter: Option<&LoraConfig>, cfg: &LoraConfig) -> Result<()> {
    match (adapter, cfg.enabled()) {
        (None, false) => Ok(()),
        (None, true) => bail!(
            "LoRA settings (lora rank {}) reached a training loop whose model has no adapter: \
             LoRA runs through `elastica train --lora-rank` for now (experiment stages train \
             full models only)",
            cfg.rank
        ),
        (Some(_), false) => bail!(
            "the model carries a LoRA adapter but the LoRA settings are off; set the \
             adapter's lora rank (--lora-rank) to train it, or merge it first (elastica merge)"
        ),
        (Some(have), true) => {
            let want = LoraConfig {
                targets: cfg.resolved_targets()?,
                ..cfg.clone()
            };
            if *have != want {
                bail!(
                    "the adapter being continued has r = {}, alpha = {}, dropout = {}, \
                     rslora = {}, targets {:?}, but the run asks for r = {}, alpha = {}, \
                     dropout = {}, rslora = {}, targets {:?}; give the adapter's own settings",
                    have.rank,
                    have.alpha,
                    have.dropout,
                    have.rslora,
                    have.targets,
                    want.rank,
                    want.alpha,
                    want.dropout,
                    want.rslora,
                    want.targets
                );
            }
            Ok(())
        }
    }
}

/// Ready `lm` for a run with LoRA settings `cfg`: with LoRA on and no adapter yet, a fresh
/// one (seeded by `seed`; PEFT's init, so the model starts equal to the base); a model that
/// already carries an adapter (`--adapter DIR`) continues that adapter, and LoRA settings
/// left off take the adapter's own. `seed` (the run's) also draws the dropout masks.
/// Returns the model and the settings the run records.
pub fn for_training(
    lm: LoadedModel,
    cfg: &LoraConfig,
    seed: u64,
    base_model: &str,
) -> Result<(LoadedModel, LoraConfig)> {
    cfg.validate()?;
    if let Some(a) = lm.model.adapter() {
        let resolved = if cfg.enabled() {
            cfg.clone()
        } else {
            a.cfg.clone()
        };
        resolved.validate()?;
        check_for_training(&lm.model, &resolved)?;
        // The same tensors (shared variables), keyed for this run's dropout masks.
        let adapter = Adapter { seed, ..a.clone() };
        return Ok((attach(lm, adapter)?, resolved));
    }
    if !cfg.enabled() {
        return Ok((lm, cfg.clone()));
    }
    let adapter = Adapter::init(&lm.model.cfg, cfg, seed, base_model)?;
    Ok((attach(lm, adapter)?, cfg.clone()))
}

/// `lm` with `adapter` on its projections.
pub fn attach(lm: LoadedModel, adapter: Adapter) -> Result<LoadedModel> {
    Ok(LoadedModel {
        model: lm.model.with_adapter(adapter)?,
        tokenizer: lm.tokenizer,
        dir: lm.dir,
    })
}

/// Write `lm`'s base with its adapter merged in as an HF checkpoint in `out` (the base's
/// dtype unless `dtype` is given), each file atomic and durable.
pub fn save_merged(lm: &LoadedModel, out: &Path, dtype: Option<&str>) -> Result<()> {
    let adapter = lm
        .model
        .adapter()
        .context("the model has no adapter to merge")?;
    let model = with_params(lm, adapter.merged(&lm.model.params)?)?;
    super::checkpoint::save_model(&model, &lm.dir, out, dtype)
}

/// Write the base `lm` (no adapter on it) with the adapter in `adapter` merged in, LoRA or
/// folded, as an HF checkpoint in `out` (the base's dtype unless `dtype` is given).
pub fn save_with_merged(
    lm: &LoadedModel,
    adapter: &Path,
    out: &Path,
    dtype: Option<&str>,
) -> Result<()> {
    if lm.model.adapter().is_some() {
        bail!("the model already carries an adapter; merge from the base alone");
    }
    let (cfg, params) =
        PeftAdapter::load(adapter, &lm.model.cfg)?.merged(&lm.model.cfg, &lm.model.params)?;
    let model = super::Llama::new(cfg, params, lm.model.device())?;
    super::checkpoint::save_model(&model, &lm.dir, out, dtype)
}
