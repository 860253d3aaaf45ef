//! `elastica eval-loss`: mean NLL of a model on a data set (`--data` with the shared data
//! flags of [`crate::data::source`]), as JSON.

use crate::data::source::{load, template_for, DataSetArgs};
use crate::data::template::Template;
use anyhow::Result;
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct EvalLossArgs {
    /// Model directory or `org/name` in the offline HF cache.
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter (LoRA, DoRA, ...; adapter_config.json,
    /// adapter_model.safetensors) on top of --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataSetArgs,
    /// Prompt template (default: by schema: raw for imdb and world, chat for conversation,
    /// safe-rlhf otherwise).
    #[arg(long, value_enum)]
    pub template: Option<Template>,
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
    let spec = a.data.spec()?;
    let data = load(&spec)?;
    let template = template_for(a.template, &spec);
    let choice = a.device.choice()?;
    let lm = crate::model::adapted::load_model_with(&a.model, a.adapter.as_deref(), &Device::Cpu)?;
    if !choice.is_default_cpu() {
        return on_backend(&a, lm, &choice, &data.records, template);
    }
    let r = crate::train::eval::eval_loss(
        &lm,
        &data.records,
        template,
        a.max_length,
        a.batch_size,
        true,
    )?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `elastica eval-loss` on the chosen backend (a LoRA adapter too: both backends run one).
fn on_backend(
    a: &EvalLossArgs,
    lm: crate::model::LoadedModel,
    choice: &crate::backend::BackendChoice,
    records: &[crate::data::records::Record],
    template: crate::data::template::Template,
) -> Result<()> {
    let model = crate::backend::from_loaded(lm, choice)?;
    let r = crate::backend::run::eval_loss(&*model, records, template, a.max_length, a.batch_size)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
