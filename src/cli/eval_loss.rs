//! `elastica eval-loss`: mean NLL of a model on a data file, as JSON.

use crate::data::records::read_jsonl;
use crate::data::template::Template;
use crate::model::checkpoint::load_model;
use anyhow::Result;
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalLossArgs {
    /// Model directory or `org/name` in the offline HF cache.
    #[arg(long)]
    pub model: String,
    /// JSONL of {"prompt","response"} (response scored) or {"text"} (all scored).
    #[arg(long)]
    pub data: PathBuf,
    /// Prompt template.
    #[arg(long, value_enum, default_value = "safe-rlhf")]
    pub template: Template,
    /// Records per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Longest sequence in tokens (longer records are truncated).
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

pub fn run(a: EvalLossArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    if !a.device.choice()?.is_default_cpu() {
        return super::device_args::eval_loss(&a);
    }
    let lm = load_model(&a.model, &Device::Cpu)?;
    let records = read_jsonl(&a.data)?;
    let r =
        crate::train::eval::eval_loss(&lm, &records, a.template, a.max_length, a.batch_size, true)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
