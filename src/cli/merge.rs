//! `elastica merge`: a base model with a PEFT adapter folded in (W + s * B A on every adapted
//! projection; DoRA, LoRA on the embedding or head, `modules_to_save` and trained biases as
//! `model::lora::FoldedAdapter` folds them), written as a plain HF
//! checkpoint that any command (or transformers) loads without the adapter. Each file is written atomically and durably.

use crate::model::adapted::save_with_merged;
use crate::model::checkpoint::load_model;
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Base model: a directory in the HF layout, or `org/name` in the offline HF cache.
    #[arg(long)]
    pub model: String,
    /// The PEFT adapter directory (LoRA, DoRA, ...; adapter_config.json,
    /// adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory for the merged model (HF layout, with the base's tokenizer files).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight dtype of the merged model: float32, bfloat16 or float16 (default: the base's).
    #[arg(long)]
    pub save_dtype: Option<String>,
}

pub fn run(a: MergeArgs) -> Result<()> {
    if let Some(d) = &a.save_dtype {
        crate::model::checkpoint::dtype_from_name(d).context("--save-dtype")?;
    }
    let lm = load_model(&a.model, &Device::Cpu)?;
    crate::util::fsx::refuse_input_as_output(
        "--out",
        &a.out,
        &[("--model", &lm.dir), ("--adapter", &a.adapter)],
    )?;
    save_with_merged(&lm, &a.adapter, &a.out, a.save_dtype.as_deref())?;
    println!(
        "{}",
        serde_json::json!({"out": a.out, "model": a.model, "adapter": a.adapter})
    );
    Ok(())
}
