//! `elastica generate`: continue one prompt (printed) or a JSONL file of prompts (written as
//! `{"prompt","response"}` records).

use crate::data::records::Record;
use crate::data::template::Template;
use crate::model::generate::GenConfig;
use anyhow::{bail, Result};
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model directory or `org/name` in the offline HF cache.
    #[arg(long)]
    pub model: String,
    /// A LoRA or DoRA adapter (PEFT's format: adapter_config.json,
    /// adapter_model.safetensors) on top of --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// One prompt; the response is printed.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// JSONL file of {"prompt": ...} records (other fields are ignored).
    #[arg(long, requires = "out")]
    pub prompts: Option<PathBuf>,
    /// Output JSONL of {"prompt","response"} (with --prompts).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompt template.
    #[arg(long, value_enum, default_value = "safe-rlhf")]
    pub template: Template,
    #[command(flatten)]
    pub gen: GenConfig,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

pub use crate::data::records::read_prompts;

pub fn run(a: GenerateArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    if !a.device.choice()?.is_default_cpu() {
        if a.adapter.is_some() {
            anyhow::bail!("--adapter runs on the CPU path only for now; drop --device/--backend or merge the adapter first (elastica merge)");
        }
        return on_backend(&a);
    }
    let lm = crate::model::adapted::load_model_with(&a.model, a.adapter.as_deref(), &Device::Cpu)?;
    let prompts = prompts_of(&a)?;
    let cfg = &a.gen;
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| a.template.encode_prompt(p, &lm.tokenizer))
        .collect::<Result<_>>()?;
    let pb = crate::util::progress::bar(prompts.len() as u64, "generate");
    let outs = lm.generate(&ids, cfg, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    let responses: Vec<String> = outs
        .iter()
        .map(|o| lm.tokenizer.decode(o, true))
        .collect::<Result<_>>()?;
    write_responses(&a, &prompts, &responses)
}

/// `elastica generate` on the chosen backend.
fn on_backend(a: &GenerateArgs) -> Result<()> {
    let model = crate::backend::load(&a.model, &a.device.choice()?)?;
    let prompts = prompts_of(a)?;
    let responses = crate::backend::run::generate_texts(&*model, &prompts, a.template, &a.gen)?;
    write_responses(a, &prompts, &responses)
}

/// The prompts to continue: `--prompt`, or the records of `--prompts`.
fn prompts_of(a: &GenerateArgs) -> Result<Vec<String>> {
    Ok(match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => read_prompts(f)?,
        (None, None) => bail!("give --prompt TEXT or --prompts FILE.jsonl --out FILE.jsonl"),
    })
}

/// The responses as `{"prompt","response"}` records in `--out`, or the one response printed.
fn write_responses(a: &GenerateArgs, prompts: &[String], responses: &[String]) -> Result<()> {
    match &a.out {
        Some(out) => {
            let recs: Vec<Record> = prompts
                .iter()
                .zip(responses)
                .map(|(p, r)| Record::pair(p.clone(), r.clone()))
                .collect();
            crate::data::records::write_jsonl(out, &recs)?;
            eprintln!("wrote {} generations to {}", recs.len(), out.display());
        }
        None => println!("{}", responses[0]),
    }
    Ok(())
}
