//! `elastica generate`: continue one prompt (printed), a JSONL file of prompts, or the prompts
//! of a data set in any schema elastica reads (`--data` with the data flags), written as
//! `{"prompt","response"}` records; a conversation (a `{"messages"}` line, or a conversation
//! record's turns before its answer) is answered under the chat template (or safe-rlhf's
//! multi-turn format) and written back with the answer as its last turn.

use crate::data::prefs;
use crate::data::prompts::{read_prompts, Prompt};
use crate::data::records::Record;
use crate::data::source::template_for;
use crate::data::template::Template;
use crate::model::generate::GenConfig;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Model directory or `org/name` in the offline HF cache.
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter (LoRA, DoRA, ...; adapter_config.json,
    /// adapter_model.safetensors) on top of --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// One prompt; the response is printed.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// JSONL file of {"prompt": ...} records (other fields are ignored), or of
    /// {"messages": [{"role", "content"}, ...]} conversations to answer (under the chat template
    /// unless --template says otherwise).
    #[arg(long, requires = "out", conflicts_with = "data")]
    pub prompts: Option<PathBuf>,
    /// A data set (file, directory or `org/name` in the offline HF cache) whose records'
    /// prompts to answer, read by the data flags (--schema, --select, --files, --limit, ...):
    /// a pair's prompt, or a conversation's turns before its answer.
    #[arg(long, requires = "out", conflicts_with = "prompt")]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub data_args: crate::data::source::DataArgs,
    /// Output JSONL of {"prompt","response"} (with --prompts or --data).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Prompt template (default: the --data schema's; chat for a --prompts file with
    /// conversations; else safe-rlhf).
    #[arg(long, value_enum)]
    pub template: Option<Template>,
    #[command(flatten)]
    pub gen: GenConfig,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    // Before any model is loaded: 0 new tokens or an unusable sampling setting is refused.
    a.gen.validate()?;
    let (prompts, template) = prompts_of(&a)?;
    let responses = if a.device.choice()?.is_default_cpu() {
        let lm =
            crate::model::adapted::load_model_with(&a.model, a.adapter.as_deref(), &Device::Cpu)?;
        let ids = encode_all(&prompts, template, &lm.tokenizer)?;
        let pb = crate::util::progress::bar(prompts.len() as u64, "generate");
        let outs = lm.generate(&ids, &a.gen, |n| pb.inc(n as u64))?;
        pb.finish_and_clear();
        decode_all(&outs, &lm.tokenizer)?
    } else {
        if a.adapter.is_some() {
            anyhow::bail!("--adapter runs on the CPU path only for now; drop --device/--backend or merge the adapter first (elastica merge)");
        }
        let model = crate::backend::load(&a.model, &a.device.choice()?)?;
        let ids = encode_all(&prompts, template, model.tokenizer())?;
        decode_all(&model.generate(&ids, &a.gen)?, model.tokenizer())?
    };
    write_responses(&a, &prompts, &responses)
}

fn encode_all(
    prompts: &[Prompt],
    template: Template,
    tok: &crate::model::TextTokenizer,
) -> Result<Vec<Vec<u32>>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            template
                .encode_generation_prompt(p, tok)
                .with_context(|| format!("prompt {}", i + 1))
        })
        .collect()
}

/// Responses decoded, special tokens skipped.
fn decode_all(outs: &[Vec<u32>], tok: &crate::model::TextTokenizer) -> Result<Vec<String>> {
    outs.iter().map(|o| tok.decode(o, true)).collect()
}

/// The prompts to continue and their template: `--prompt`, the lines of `--prompts`
/// (`{"prompt"}` or `{"messages"}`), or the prompts of the `--data` records.
fn prompts_of(a: &GenerateArgs) -> Result<(Vec<Prompt>, Template)> {
    let asked = a.template.unwrap_or(Template::SafeRlhf);
    if a.data.is_some() || a.data_args.data_config.is_some() {
        if a.prompt.is_some() || a.prompts.is_some() {
            bail!("give one of --prompt, --prompts and --data (or --data-config)");
        }
        let Some(out) = &a.out else {
            bail!("a data set's prompts are answered into a file: give --out FILE.jsonl");
        };
        let spec = a.data_args.spec(a.data.as_deref())?;
        crate::util::fsx::refuse_input_as_output(
            "--out",
            out,
            &[("--data", Path::new(&spec.path))],
        )?;
        let prompts = data_prompts(&spec)?;
        let template = match a.template {
            None if prefs::PREF_SCHEMAS.contains(&spec.schema.as_str()) => {
                prefs::default_template(&spec.schema)
            }
            _ => template_for(a.template, &spec),
        };
        return Ok((prompts, template));
    }
    if a.data_args != Default::default() {
        bail!("the data flags (--schema, --select, --files, --limit, ...) read --data; give --data PATH");
    }
    match (&a.prompt, &a.prompts) {
        (Some(p), _) => Ok((vec![Prompt::Text(p.clone())], asked)),
        (None, Some(f)) => {
            if let Some(out) = &a.out {
                crate::util::fsx::refuse_input_as_output("--out", out, &[("--prompts", f)])?;
            }
            let prompts = read_prompts(f)?;
            // A file that holds conversations defaults to the chat template, which renders any.
            let chat = prompts.iter().any(|p| p.turns().is_some());
            let template = match a.template {
                None if chat => Template::Chat,
                _ => asked,
            };
            Ok((prompts, template))
        }
        (None, None) => bail!(
            "give --prompt TEXT, --prompts FILE.jsonl --out FILE.jsonl, or --data PATH --out \
             FILE.jsonl"
        ),
    }
}

/// The prompts of the data set `spec`: its records', or, for preference pairs (schemas
/// `pku-saferlhf`, `hh-rlhf`, or `jsonl` / `conversation` rows with `chosen` and
/// `rejected`), each pair's prompt (with its turns).
fn data_prompts(spec: &crate::data::schemas::DataSpec) -> Result<Vec<Prompt>> {
    let pairs = |first: Option<anyhow::Error>| -> Result<Vec<Prompt>> {
        // A pair's prompt is the same whichever answer is chosen: either label reads it.
        let prefer = (spec.schema == "pku-saferlhf").then_some(prefs::Prefer::Better);
        let ds = match prefs::load(spec, prefer) {
            Ok(ds) => ds,
            // Not pairs either: the records' own error says more.
            Err(e) => return Err(first.unwrap_or(e)),
        };
        Ok(ds
            .records
            .iter()
            .filter_map(|p| Prompt::of_record(&p.record(&p.chosen)))
            .collect())
    };
    if matches!(spec.schema.as_str(), "pku-saferlhf" | "hh-rlhf") {
        return pairs(None);
    }
    match crate::data::schemas::load(spec) {
        Ok(ds) => ds
            .prompts()
            .with_context(|| format!("the data set {}", spec.path)),
        Err(e) if prefs::PREF_SCHEMAS.contains(&spec.schema.as_str()) => pairs(Some(
            e.context(format!("cannot load the data set {}", spec.path)),
        )),
        Err(e) => Err(e.context(format!("cannot load the data set {}", spec.path))),
    }
}

/// The responses as records in `--out` (`{"prompt","response"}`, or a conversation with the
/// answer as its last turn), or the one response printed.
fn write_responses(a: &GenerateArgs, prompts: &[Prompt], responses: &[String]) -> Result<()> {
    match &a.out {
        Some(out) => {
            let recs: Vec<Record> = prompts
                .iter()
                .zip(responses)
                .map(|(p, r)| p.answered(r))
                .collect();
            crate::data::records::write_jsonl(out, &recs)?;
            eprintln!("wrote {} generations to {}", recs.len(), out.display());
        }
        None => println!("{}", responses[0]),
    }
    Ok(())
}
