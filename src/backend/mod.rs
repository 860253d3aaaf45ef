//! Compute backends: one interface ([`LanguageModel`]) over the two ways elastica runs a
//! model. `fused` is the CPU path of `src/model` + `src/train` (hand-written kernels and
//! backward; the default and the fastest on a CPU). `torch` (behind `--features torch`) runs
//! the same architecture on libtorch, on the CPU or a CUDA GPU, in f32 or bf16 mixed
//! precision. Code above this layer (commands, experiments) asks [`load`] for a model and
//! never branches on which backend it got.

pub mod fused;
pub mod run;
#[cfg(feature = "torch")]
pub mod torch;
pub mod train;

use crate::model::generate::GenConfig;
use crate::model::{ModelConfig, TextTokenizer};
use crate::train::batch::Batch;
pub use crate::train::driver::Trainee;
use crate::train::optim::AdamWConfig;
use anyhow::{bail, Result};
use std::path::Path;

/// What every backend does with a decoder-only model: forward, loss, the training steps of
/// [`Trainee`] (an SFT and a weighted (DPO) step with AdamW in torch's arithmetic, the AdamW
/// state the model's own, made at the first step), save in the HF layout, KV-cache
/// generation, and the train state a resumed run restores.
pub trait LanguageModel: Trainee {
    /// "fused" or "torch".
    fn backend_name(&self) -> &'static str;
    /// Where it runs, in words ("cpu", "cuda:0").
    fn device_name(&self) -> String;
    fn config(&self) -> &ModelConfig;
    fn tokenizer(&self) -> &TextTokenizer;
    /// Logits (b, t, vocab), row-major f32, of `ids` (b, t), causal, positions 0..t.
    fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    /// Summed NLL of the batch's counted targets (no gradient).
    fn nll_sum(&self, batch: &Batch) -> Result<f64>;
    /// log p(target) at each of the batch's (b * t) positions; 0 where nothing is counted.
    fn token_logprobs(&self, batch: &Batch) -> Result<Vec<f32>>;
    /// Gradient checkpointing for [`Trainee::sft_step`]: recompute each block's
    /// activations in the backward instead of holding them all (less memory, ~1/3 more
    /// compute). Only the torch backend has it.
    fn set_grad_checkpoint(&mut self, on: bool) -> Result<()> {
        if on {
            bail!(
                "--grad-checkpoint needs the torch backend (--backend torch); the {} backend \
                 keeps every block's activations",
                self.backend_name()
            );
        }
        Ok(())
    }
    /// The settings of the LoRA adapter the model carries (only it trains), if any.
    fn adapter_config(&self) -> Option<&crate::model::lora::LoraConfig>;
    /// sha256 of the weights as they are now (`train::sft::params_fingerprint`): which
    /// model a run starts from, the same on every backend.
    fn weights_sha256(&self) -> Result<String>;
    /// AdamW updates done so far.
    fn adam_step(&self) -> u64;
    /// New tokens of each prompt (EOS not included), as `model::generate` documents.
    fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Result<Vec<Vec<u32>>>;
    /// Save in the HF layout (checkpoint's dtype unless `dtype`), with the tokenizer files.
    fn save(&self, out: &Path, dtype: Option<&str>) -> Result<()>;
    /// f32 weights (`model.safetensors`) and AdamW moments (`optimizer.safetensors`), the
    /// files of `train::sft`'s checkpoints.
    fn save_train_state(&self, dir: &Path) -> Result<()>;
    /// Restore what [`LanguageModel::save_train_state`] wrote, after `adam_step` updates.
    fn load_train_state(&mut self, dir: &Path, opt: &AdamWConfig, adam_step: u64) -> Result<()>;
}

/// Which implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum BackendKind {
    /// The CPU fused kernels (default on the CPU).
    Fused,
    /// libtorch (needs a build with `--features torch`; default on CUDA).
    Torch,
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => bail!("unknown device \"{other}\"; use cpu, cuda or cuda:N"),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Arithmetic precision of the forward and backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Precision {
    F32,
    /// Mixed precision: bf16 matmuls and activations; f32 master weights, AdamW moments,
    /// norms, softmax and loss.
    Bf16,
}

/// A resolved (backend, device, precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChoice {
    pub kind: BackendKind,
    pub device: DeviceSpec,
    pub precision: Precision,
}

/// How to get a build that has the libtorch backend.
pub const BUILD_HINT: &str = "this elastica was built without the libtorch backend; build it with \
     `pip install torch==2.11.0` and \
     `LIBTORCH_USE_PYTORCH=1 cargo build --release --features torch` (README, section GPUs)";

impl BackendChoice {
    /// The default: the fused path on the CPU in f32.
    pub const CPU: BackendChoice = BackendChoice {
        kind: BackendKind::Fused,
        device: DeviceSpec::Cpu,
        precision: Precision::F32,
    };

    /// Resolve flags: `backend` defaults to fused on the CPU and torch on CUDA. Refuses what
    /// cannot run (the fused path on CUDA or in bf16; torch in a build without it).
    pub fn new(
        device: DeviceSpec,
        backend: Option<BackendKind>,
        precision: Precision,
    ) -> Result<Self> {
        let kind = backend.unwrap_or(match device {
            DeviceSpec::Cpu => BackendKind::Fused,
            DeviceSpec::Cuda(_) => BackendKind::Torch,
        });
        if kind == BackendKind::Fused {
            if device != DeviceSpec::Cpu {
                bail!("the fused backend runs on the CPU only; use --backend torch for {device}");
            }
            if precision != Precision::F32 {
                bail!("the fused backend computes in f32 only; --dtype bf16 needs --backend torch");
            }
        }
        if kind == BackendKind::Torch && !cfg!(feature = "torch") {
            bail!("--backend torch / --device {device}: {BUILD_HINT}");
        }
        Ok(BackendChoice {
            kind,
            device,
            precision,
        })
    }

    pub fn is_default_cpu(&self) -> bool {
        *self == Self::CPU
    }
}

/// Load a model (directory or `org/name` in the offline HF cache) on the chosen backend.
pub fn load(spec: &str, choice: &BackendChoice) -> Result<Box<dyn LanguageModel>> {
    let lm = crate::model::load_model(spec, &candle_core::Device::Cpu)?;
    from_loaded(lm, choice)
}

/// Put a model loaded by `model::checkpoint` (CPU, f32) on the chosen backend.
pub fn from_loaded(
    lm: crate::model::LoadedModel,
    choice: &BackendChoice,
) -> Result<Box<dyn LanguageModel>> {
    match choice.kind {
        BackendKind::Fused => Ok(Box::new(fused::FusedModel::new(lm))),
        #[cfg(feature = "torch")]
        BackendKind::Torch => Ok(Box::new(torch::TorchModel::from_loaded(
            lm,
            choice.device,
            choice.precision,
        )?)),
        #[cfg(not(feature = "torch"))]
        BackendKind::Torch => bail!("{BUILD_HINT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_defaults_resolve() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        let e = DeviceSpec::parse("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
        let c = BackendChoice::new(DeviceSpec::Cpu, None, Precision::F32).unwrap();
        assert!(c.is_default_cpu());
        let e = BackendChoice::new(DeviceSpec::Cpu, Some(BackendKind::Fused), Precision::Bf16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bf16") && e.contains("--backend torch"), "{e}");
        let cuda = BackendChoice::new(DeviceSpec::Cuda(1), None, Precision::Bf16);
        if cfg!(feature = "torch") {
            assert_eq!(cuda.unwrap().kind, BackendKind::Torch);
        } else {
            let e = cuda.unwrap_err().to_string();
            assert!(
                e.contains("--features torch") && e.contains("cuda:1"),
                "{e}"
            );
        }
    }
}
