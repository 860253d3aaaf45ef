//! The CPU fused path behind [`LanguageModel`]: a thin adapter over `model` and `train`
//! (the same calls the commands make without it, so nothing changes in what they compute).

use super::LanguageModel;
use crate::model::checkpoint::save_model;
use crate::model::generate::GenConfig;
use crate::model::lora::LoraConfig;
use crate::model::{LoadedModel, ModelConfig, TextTokenizer};
use crate::train::backprop::{scoring_logits, scoring_nll};
use crate::train::batch::Batch;
use crate::train::fused::Fused;
use crate::train::loss::log_softmax;
use crate::train::optim::AdamWConfig;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The fused path owning its model: [`LanguageModel`]'s training steps are `train::fused`'s.
pub type FusedModel = Fused<LoadedModel>;

impl LanguageModel for FusedModel {
    fn backend_name(&self) -> &'static str {
        "fused"
    }
    fn device_name(&self) -> String {
        "cpu".into()
    }
    fn config(&self) -> &ModelConfig {
        &self.lm.model.cfg
    }
    fn tokenizer(&self) -> &TextTokenizer {
        &self.lm.tokenizer
    }
    fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let ids = Tensor::from_slice(ids, (b, t), &Device::Cpu)?;
        Ok(scoring_logits(&self.lm.model, &ids)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
    fn nll_sum(&self, batch: &Batch) -> Result<f64> {
        scoring_nll(&self.lm.model, &batch.ids, &batch.targets)
    }
    fn token_logprobs(&self, batch: &Batch) -> Result<Vec<f32>> {
        let logits = scoring_logits(&self.lm.model, &batch.ids)?;
        let v = logits.dim(2)?;
        let logp = log_softmax(&logits.reshape(((), v))?)?;
        let targets: Vec<i64> = batch.targets.flatten_all()?.to_vec1()?;
        let idx: Vec<u32> = targets.iter().map(|&t| t.max(0) as u32).collect();
        let idx = Tensor::from_vec(idx, (targets.len(), 1), &Device::Cpu)?;
        let picked: Vec<f32> = logp.gather(&idx, 1)?.flatten_all()?.to_vec1()?;
        Ok(picked
            .into_iter()
            .zip(&targets)
            .map(|(p, &t)| if t < 0 { 0.0 } else { p })
            .collect())
    }
    fn adapter_config(&self) -> Option<&LoraConfig> {
        self.lm.model.adapter().map(|a| &a.cfg)
    }
    fn weights_sha256(&self) -> Result<String> {
        crate::train::sft::weights_fingerprint(&self.lm)
    }
    fn adam_step(&self) -> u64 {
        Fused::adam_step(self)
    }
    fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Result<Vec<Vec<u32>>> {
        self.lm.generate(prompts, cfg, |_| {})
    }
    /// A LoRA model saves its adapter (PEFT's format), not the frozen base.
    fn save(&self, out: &Path, dtype: Option<&str>) -> Result<()> {
        match self.lm.model.adapter() {
            Some(a) => a.save(out),
            None => save_model(&self.lm.model, &self.lm.dir, out, dtype),
        }
    }
    fn save_train_state(&self, dir: &Path) -> Result<()> {
        Fused::save_train_state(self, dir)
    }
    fn load_train_state(&mut self, dir: &Path, opt: &AdamWConfig, adam_step: u64) -> Result<()> {
        Fused::load_train_state(self, dir, opt, adam_step)
    }
}

/// Both files of a train state, as CPU tensors by name.
pub type TensorMap = std::collections::HashMap<String, Tensor>;

/// Read `model.safetensors` and `optimizer.safetensors` of a train-state directory.
pub fn read_train_state(dir: &Path) -> Result<(TensorMap, TensorMap)> {
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
        .with_context(|| format!("cannot read checkpoint {}", dir.display()))?;
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &Device::Cpu)
        .with_context(|| format!("cannot read optimizer state in {}", dir.display()))?;
    crate::train::sft::check_state_finite(dir, &weights, &moments)?;
    Ok((weights, moments))
}
