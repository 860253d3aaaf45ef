//! `elastica compress`, `elastica decompress` and `elastica rates`: the language model as a
//! compressor of byte files, and the compression rates of data sets across checkpoints
//! (issue 6, items 1 and 2). The library side is [`crate::compress`].
//!
//! [`load_predictor`] is the single point where a model on disk becomes a
//! [`TokenPredictor`]; every command goes through it.

use crate::compress::baselines::baselines;
use crate::compress::model_predictor::ModelPredictor;
use crate::compress::rates::{code_lengths, scored_sequences, Coder, RecordScorer};
use crate::compress::rates_report::{rates_table, write_rates, RateRow};
use crate::compress::summary::CompressSummary;
use crate::compress::{compress, decompress, CompressOptions, TokenPredictor};
use crate::data::records::conversations;
use crate::data::source::{load as load_data, template_for, DataArgs};
use crate::data::template::Template;
use crate::model::adapted::load_model_with;
use crate::report::{default_run_dir, RunDir};
use crate::util::fsx::{atomic_write, atomic_write_json, refuse_input_as_output};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Load the model at `model` (a Hugging Face directory or cached hub id), with the LoRA
/// adapter in `adapter` on top if given, as a next-token predictor with an incremental
/// (KV-cache) forward.
pub fn load_predictor(model: &str, adapter: Option<&Path>) -> Result<Box<dyn TokenPredictor>> {
    let lm = load_model_with(model, adapter, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot load {model} as a compressor"))?;
    let pred = ModelPredictor::new(lm).with_context(|| format!("model {model}"))?;
    Ok(Box::new(match adapter {
        Some(a) => pred.with_adapter(a)?,
        None => pred,
    }))
}

/// One entry of `rates --models`: a model, or a LoRA adapter directory (it holds
/// adapter_config.json) on top of `--base` or, without it, of the base its config names.
fn model_and_adapter(entry: &str, base: Option<&str>) -> Result<(String, Option<PathBuf>)> {
    let dir = Path::new(entry);
    if !dir.join(crate::model::lora::CONFIG_FILE).is_file() {
        return Ok((entry.to_string(), None));
    }
    let base = match base {
        Some(b) => b.to_string(),
        None => {
            let p = dir.join(crate::model::lora::CONFIG_FILE);
            let cfg: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not JSON", p.display()))?;
            match cfg["base_model_name_or_path"].as_str() {
                // A base path from another machine: say how to point at this one's copy.
                Some(b) if b.starts_with('/') && !Path::new(b).is_dir() => bail!(
                    "{} names the base model {b}, which is not on this machine; give the base \
                     model with --base",
                    p.display()
                ),
                Some(b) if !b.is_empty() => b.to_string(),
                _ => bail!(
                    "{} names no base_model_name_or_path; give the base model with --base",
                    p.display()
                ),
            }
        }
    };
    Ok((base, Some(dir.to_path_buf())))
}

/// The model that codes a file. Decompression reproduces the compressor's predictions bit for
/// bit, so `decompress` needs the very model and adapter `compress` used.
#[derive(clap::Args, Debug)]
pub struct CoderArgs {
    /// Model directory (Hugging Face layout) or hub id in the local cache; decompress needs
    /// the same one.
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter (LoRA, DoRA, ...) on top of --model; decompress needs the same one.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl CoderArgs {
    fn load(&self) -> Result<Box<dyn TokenPredictor>> {
        load_predictor(&self.model, self.adapter.as_deref())
    }
}

#[derive(clap::Args, Debug)]
pub struct CompressArgs {
    #[command(flatten)]
    pub coder: CoderArgs,
    /// File to compress (any bytes).
    pub input: PathBuf,
    /// Where to write the compressed file.
    pub output: PathBuf,
    /// Token steps per chunk; the model restarts from an empty context after each
    /// (default and maximum: the model's context length).
    #[arg(long)]
    pub chunk_tokens: Option<usize>,
    /// Also write the report (sizes, code lengths, baselines) as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Skip the gzip / xz / zstd baselines.
    #[arg(long)]
    pub no_baselines: bool,
}

#[derive(clap::Args, Debug)]
pub struct DecompressArgs {
    #[command(flatten)]
    pub coder: CoderArgs,
    /// Compressed file.
    pub input: PathBuf,
    /// Where to write the original bytes.
    pub output: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Each record is tokenized as training and `eval-loss` tokenize it under \
--template (a pair's templated prompt as context, then its response and EOS, counted; a \
conversation's counted turns; a text, all counted). A sequence longer than the model's context \
is coded in chunks of the context, where `eval-loss` and `train --track-rates` cut at \
--max-length: for records within both, nats/token is eval-loss's mean NLL."
)]
pub struct RatesArgs {
    /// Checkpoints, in order (the x axis of the plots), comma-separated. An entry may be a
    /// LoRA adapter directory (PEFT's format), scored on top of --base.
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// The base model under the adapter entries of --models (default: the base each
    /// adapter_config.json names).
    #[arg(long)]
    pub base: Option<String>,
    /// Held-out data sets as NAME=PATH, comma-separated (a path may hold a comma where the text
    /// after it has no `=`), each read with --schema etc.
    /// (default: JSONL records); or name them in --data-config.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "data_config",
        conflicts_with = "data_config"
    )]
    pub data: Vec<String>,
    #[command(flatten)]
    pub data_args: DataArgs,
    /// Output directory (default: runs/rates-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use only the first N records of each data set.
    #[arg(long)]
    pub max_records: Option<usize>,
    /// Template the records are tokenized under, as in training and eval-loss (default: by
    /// schema: raw for imdb and world, chat for conversation, safe-rlhf otherwise).
    #[arg(long, value_enum)]
    pub template: Option<Template>,
    /// Where and how the models run. The default (fused, CPU) scores with the compressor's
    /// own predictor, bit for bit what `compress` codes; another backend scores each chunk
    /// in one forward (equal to float rounding).
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

pub fn run_compress(args: CompressArgs) -> Result<()> {
    let mut pred = args.coder.load()?;
    compress_file(&args, pred.as_mut())
}

pub fn run_decompress(args: DecompressArgs) -> Result<()> {
    let mut pred = args.coder.load()?;
    decompress_file(&args, pred.as_mut())
}

pub fn run_rates(args: RatesArgs) -> Result<()> {
    if let Some(out) = &args.out {
        // Before the models are scored: the folder is claimed when the rates are written.
        super::out_dir::refuse_foreign(out, "rates")?;
    }
    // Resolved before any data is read: a CUDA device without the torch build fails here.
    let choice = args.device.choice()?;
    let base = args.base.as_deref();
    if choice.is_default_cpu() {
        return rates_with(&args, &mut |m| {
            let (model, adapter) = model_and_adapter(m, base)?;
            load_predictor(&model, adapter.as_deref())
        });
    }
    rates_scored(&args, &mut |m| {
        if model_and_adapter(m, base)?.1.is_some() {
            bail!("{m} is a LoRA adapter: adapters run on the CPU path only for now; drop --device/--backend or merge it first (elastica merge)");
        }
        Ok(Box::new(
            crate::compress::rates_backend::BackendRates::load(m, &choice)
                .with_context(|| format!("cannot load {m} on {}", choice.device))?,
        ))
    })
}

/// `compress` with a given predictor.
pub fn compress_file(args: &CompressArgs, pred: &mut dyn TokenPredictor) -> Result<()> {
    refuse_input_as_output("OUTPUT", &args.output, &[("INPUT", &args.input)])?;
    let input = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let opts = CompressOptions {
        chunk_tokens: args.chunk_tokens,
        progress: true,
    };
    let (file, report) = compress(&input, pred, &opts)
        .with_context(|| format!("cannot compress {}", args.input.display()))?;
    atomic_write(&args.output, &file)?;
    let base = if args.no_baselines {
        Vec::new()
    } else {
        baselines(&input)?
    };
    let summary = CompressSummary::new(args.input.display().to_string(), report, base);
    println!(
        "{} -> {}\n\n{}\n{}",
        args.input.display(),
        args.output.display(),
        summary.table()?.to_markdown(),
        summary.notes()
    );
    if let Some(p) = &args.report {
        atomic_write_json(p, &summary)?;
    }
    Ok(())
}

/// `decompress` with a given predictor.
pub fn decompress_file(args: &DecompressArgs, pred: &mut dyn TokenPredictor) -> Result<()> {
    refuse_input_as_output("OUTPUT", &args.output, &[("INPUT", &args.input)])?;
    let file = std::fs::read(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let (out, report) = decompress(&file, pred, true)
        .with_context(|| format!("cannot decompress {}", args.input.display()))?;
    atomic_write(&args.output, &out)?;
    println!(
        "{} -> {}: {} bytes from {} ({:.4} bits/byte), checksum verified",
        args.input.display(),
        args.output.display(),
        out.len(),
        file.len(),
        report.bits_per_byte()
    );
    Ok(())
}

/// `rates` with a given way of loading models (tests pass test predictors).
pub fn rates_with(
    args: &RatesArgs,
    load: &mut dyn FnMut(&str) -> Result<Box<dyn TokenPredictor>>,
) -> Result<()> {
    rates_scored(args, &mut |m| Ok(Box::new(Coder(load(m)?))))
}

/// `rates` with any [`RecordScorer`] per model.
pub fn rates_scored(
    args: &RatesArgs,
    load: &mut dyn FnMut(&str) -> Result<Box<dyn RecordScorer>>,
) -> Result<()> {
    let sets = args
        .data_args
        .named_specs(&args.data)?
        .into_iter()
        .map(|(name, spec)| {
            let mut recs = load_data(&spec)
                .with_context(|| format!("data set {name:?}"))?
                .records;
            if let Some(n) = args.max_records {
                recs.truncate(n);
            }
            let template = template_for(args.template, &spec);
            template.check_conversations(conversations(&recs), &spec.path)?;
            Ok((name, spec.path, recs, template))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for (checkpoint, model) in args.models.iter().enumerate() {
        let mut pred = load(model).with_context(|| format!("model {model}"))?;
        for (name, path, recs, template) in &sets {
            let seqs = scored_sequences(recs, *template, pred.tokenization())
                .with_context(|| format!("{path}: cannot tokenize"))?;
            let pb = crate::util::progress::bar(seqs.len() as u64, &format!("{model} {name}"));
            let what = || format!("rate of {path} under {model}");
            let codes = code_lengths(pred.as_mut(), &seqs, &pb).with_context(what)?;
            pb.finish_and_clear();
            let (at, set) = ((model.as_str(), checkpoint), (name.as_str(), *template));
            rows.push(RateRow::of_codes(at, set, &codes, pred.vocab_size()).with_context(what)?);
        }
    }
    // The run directory is made once there is something to write: a refused or failed run
    // leaves none behind.
    let out = args.out.clone().unwrap_or_else(|| default_run_dir("rates"));
    let _lock = super::out_dir::claim(&out, "rates")?;
    let run = RunDir::create(out)?;
    write_rates(&run, &rows)?;
    println!("{}", rates_table(&rows)?.to_markdown());
    println!("written to {}", run.root().display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testing::NgramPredictor;

    fn mock_coder() -> CoderArgs {
        CoderArgs {
            model: "mock".into(),
            adapter: None,
        }
    }

    #[test]
    fn compress_then_decompress_files() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.txt");
        let packed = tmp.path().join("in.elz");
        let back = tmp.path().join("back.txt");
        let report = tmp.path().join("report.json");
        let mut text = "the cat sat on the mat; \u{00e9}t\u{00e9} "
            .repeat(40)
            .into_bytes();
        text.extend_from_slice(b"\xff\xfe binary tail \x00\x01");
        std::fs::write(&input, &text).unwrap();
        let args = CompressArgs {
            coder: mock_coder(),
            input: input.clone(),
            output: packed.clone(),
            chunk_tokens: Some(100),
            report: Some(report.clone()),
            no_baselines: false,
        };
        compress_file(&args, &mut NgramPredictor::new(400, 512).unwrap()).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(json["baselines"].as_array().unwrap().len(), 3);
        assert_eq!(json["report"]["chunk_tokens"], 100);
        let dargs = DecompressArgs {
            coder: mock_coder(),
            input: packed.clone(),
            output: back.clone(),
        };
        decompress_file(&dargs, &mut NgramPredictor::new(400, 512).unwrap()).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), text);

        // A damaged file: the error names it, and nothing is written.
        let mut bytes = std::fs::read(&packed).unwrap();
        let n = bytes.len();
        bytes.truncate(n - 3);
        std::fs::write(&packed, &bytes).unwrap();
        let dargs = DecompressArgs {
            output: tmp.path().join("never.txt"),
            ..dargs
        };
        let err = decompress_file(&dargs, &mut NgramPredictor::new(400, 512).unwrap()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("in.elz") && msg.contains("truncated"), "{msg}");
        assert!(!tmp.path().join("never.txt").exists());
    }

    #[test]
    fn the_real_loader_says_what_is_missing() {
        let err = load_predictor("/nonexistent/some/model", None)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("some/model"));
    }

    #[test]
    fn rates_across_checkpoints_write_all_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.jsonl");
        let b = tmp.path().join("b.jsonl");
        std::fs::write(
            &a,
            "{\"prompt\": \"the cat\", \"response\": \" sat on the mat\"}\n{\"text\": \"and the dog\"}\n",
        )
        .unwrap();
        std::fs::write(&b, "{\"text\": \"zzz qqq xxx\"}\n").unwrap();
        let out = tmp.path().join("out");
        let args = RatesArgs {
            models: vec!["small".into(), "big".into()],
            base: None,
            data: vec![
                format!("pre={}", a.display()),
                format!("neg={}", b.display()),
            ],
            out: Some(out.clone()),
            max_records: None,
            // The toy tokenizer has no specials or chat template to render the others with.
            template: Some(Template::Raw),
            data_args: Default::default(),
            device: crate::cli::device_args::DeviceArgs {
                device: "cpu".into(),
                backend: None,
                dtype: crate::backend::Precision::F32,
                grad_checkpoint: false,
            },
        };
        let mut load = |m: &str| -> Result<Box<dyn TokenPredictor>> {
            let ctx = if m == "small" { 3 } else { 512 };
            Ok(Box::new(NgramPredictor::new(400, ctx)?))
        };
        rates_with(&args, &mut load).unwrap();
        let rows: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("rates.json")).unwrap())
                .unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0]["dataset"], "pre");
        assert_eq!(rows[3]["checkpoint"], 1);
        for stem in ["rates_bits_per_byte", "rates_bits_per_token"] {
            assert!(out.join(format!("{stem}.png")).exists());
            assert!(out.join(format!("{stem}.svg")).exists());
        }

        // Under its schema's default (safe-rlhf) the toy tokenizer is refused, and nothing is
        // written.
        let refused = tmp.path().join("refused");
        let templated = RatesArgs {
            template: None,
            out: Some(refused.clone()),
            ..args.clone()
        };
        let err = format!("{:#}", rates_with(&templated, &mut load).unwrap_err());
        assert!(
            err.contains("a.jsonl") && err.contains("--template raw"),
            "{err}"
        );
        assert!(!refused.exists());

        let bad = RatesArgs {
            data: vec![format!(
                "pre={}",
                tmp.path().join("missing.jsonl").display()
            )],
            ..args
        };
        let err = rates_with(&bad, &mut load).unwrap_err();
        assert!(format!("{err:#}").contains("missing.jsonl"));
    }
}
