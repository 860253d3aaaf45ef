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

// The commands on a backend other than the default fused CPU path: each loads through
// `backend` and does its work through the `LanguageModel` interface. (The default path
// stays in the command's own file, unchanged.)

/// `elastica eval-loss` on the chosen backend.
pub fn eval_loss(
    a: &super::eval_loss::EvalLossArgs,
    records: &[crate::data::records::Record],
    template: crate::data::template::Template,
) -> Result<()> {
    let model = crate::backend::load(&a.model, &a.device.choice()?)?;
    let r = crate::backend::run::eval_loss(&*model, records, template, a.max_length, a.batch_size)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `elastica generate` on the chosen backend.
pub fn generate(a: &super::generate::GenerateArgs) -> Result<()> {
    let model = crate::backend::load(&a.model, &a.device.choice()?)?;
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(f)) => crate::data::records::read_prompts(f)?,
        (None, None) => {
            anyhow::bail!("give --prompt TEXT or --prompts FILE.jsonl --out FILE.jsonl")
        }
    };
    let cfg = crate::model::generate::GenConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        batch_size: a.batch_size,
    };
    let responses = crate::backend::run::generate_texts(&*model, &prompts, a.template, &cfg)?;
    match &a.out {
        Some(out) => {
            let recs: Vec<crate::data::records::Record> = prompts
                .iter()
                .zip(&responses)
                .map(|(p, r)| crate::data::records::Record::pair(p.clone(), r.clone()))
                .collect();
            crate::data::records::write_jsonl(out, &recs)?;
            eprintln!("wrote {} generations to {}", recs.len(), out.display());
        }
        None => println!("{}", responses[0]),
    }
    Ok(())
}

/// `elastica train` on the chosen backend (the loop of `backend::sft`).
pub fn train(
    a: &super::train::TrainArgs,
    cfg: &crate::train::TrainConfig,
    records: &[crate::data::records::Record],
) -> Result<()> {
    let choice = a.device.choice()?;
    if a.track_rates.is_some() {
        anyhow::bail!(
            "--track-rates runs on the fused CPU path only for now; drop it or use --device cpu --backend fused"
        );
    }
    let cpu = candle_core::Device::Cpu;
    let lm = match (&a.model, &a.init) {
        (Some(m), _) => crate::model::load_model(m, &cpu)?,
        (None, Some(init)) => {
            let Some(tok) = &a.tokenizer else {
                anyhow::bail!("--init needs --tokenizer DIR (a directory with tokenizer.json)");
            };
            crate::model::checkpoint::init_model(init, tok, a.seed, &cpu)?
        }
        (None, None) => anyhow::bail!("give --model or --init"),
    };
    let mut model = crate::backend::from_loaded(lm, &choice)?;
    let s = crate::backend::sft::train(&mut *model, records, cfg, &a.out, a.resume, true)?;
    println!(
        "{}",
        serde_json::json!({
            "out": a.out, "steps": s.steps, "records": s.records, "truncated": s.truncated,
            "mean_loss": s.mean_loss, "final_loss": s.log.last().map(|l| l.loss),
            "resumed_from": s.resumed_from, "backend": model.backend_name(),
            "device": model.device_name(),
        })
    );
    Ok(())
}

/// `elastica bench` on the libtorch backend.
pub fn bench(a: &super::bench::BenchArgs, cfg: crate::model::ModelConfig) -> Result<()> {
    let choice = a.device.choice()?;
    if choice.kind != crate::backend::BackendKind::Torch {
        anyhow::bail!("--device/--dtype other than cpu/f32 need --backend torch");
    }
    #[cfg(feature = "torch")]
    {
        let shape = crate::backend::torch::bench::Shape {
            cfg,
            batch: a.batch,
            seq: a.seq,
            steps: a.steps,
            warmup: a.warmup,
            gen_tokens: a.gen_tokens,
            peak_tflops: a.peak_tflops,
        };
        let out = crate::backend::torch::bench::run(&shape, choice.device, choice.precision)?;
        println!("{}", serde_json::to_string(&out)?);
        if let Some(p) = &a.json {
            crate::util::fsx::atomic_write_json(p, &out)?;
        }
        Ok(())
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = cfg;
        anyhow::bail!("{}", crate::backend::BUILD_HINT)
    }
}
