//! `--device`, `--backend` and `--dtype`: the one set of flags that picks where and how a
//! model runs, flattened into every command that loads one.

use crate::backend::{BackendChoice, BackendKind, DeviceSpec, Precision};
use anyhow::Result;

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where the model runs: cpu, cuda (= cuda:0) or cuda:N (CUDA needs a build with
    /// `--features torch`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Implementation: fused (CPU kernels; default on the CPU) or torch (libtorch; default
    /// on CUDA, and usable on the CPU for comparisons).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Precision: f32, or bf16 mixed precision (bf16 matmuls, f32 master weights, AdamW
    /// state, softmax and loss; torch backend only).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Gradient checkpointing when training (torch backend): recompute each block in the
    /// backward, holding one block's activations at a time instead of all of them (less GPU
    /// memory for ~1/3 more compute). Ignored by commands that do not train.
    #[arg(long)]
    pub grad_checkpoint: bool,
}

impl DeviceArgs {
    pub fn choice(&self) -> Result<BackendChoice> {
        let c = BackendChoice::new(DeviceSpec::parse(&self.device)?, self.backend, self.dtype)?;
        if self.grad_checkpoint && c.kind != BackendKind::Torch {
            anyhow::bail!(
                "--grad-checkpoint needs the torch backend (--backend torch, or --device cuda); \
                 the fused CPU path keeps every block's activations"
            );
        }
        Ok(c)
    }
}
