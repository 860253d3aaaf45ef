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
}

impl DeviceArgs {
    pub fn choice(&self) -> Result<BackendChoice> {
        BackendChoice::new(DeviceSpec::parse(&self.device)?, self.backend, self.dtype)
    }
}
