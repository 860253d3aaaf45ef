//! `elastica bench`: training, forward and generation throughput of a fixed Llama config on
//! random tokens, with MFU against the sgemm peak measured on the spot. The PyTorch side of
//! the comparison is scripts/bench_torch.py; scripts/bench_compare.sh runs both in one go.

use crate::model::generate::{generate, GenConfig};
use crate::model::init::init_params;
use crate::model::{Llama, ModelConfig};
use crate::train::batch::Batch;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::sft::optimizer_step;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    pub what: BenchWhat,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 688)]
    pub ff: usize,
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed training steps (after --warmup untimed ones).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    All,
    Train,
    Forward,
    Generate,
}

fn bench_config(a: &BenchArgs) -> Result<ModelConfig> {
    ModelConfig::from_json_str(&format!(
        r#"{{"model_type":"llama","vocab_size":{},"hidden_size":{},"intermediate_size":{},
        "num_hidden_layers":{},"num_attention_heads":{},"num_key_value_heads":{},"rms_norm_eps":1e-6,
        "max_position_embeddings":4096,"tie_word_embeddings":false,"eos_token_id":1}}"#,
        a.vocab, a.hidden, a.ff, a.layers, a.heads, a.heads
    ))
}

fn random_ids(b: usize, t: usize, vocab: usize, rng: &mut impl Rng) -> Vec<u32> {
    (0..b * t)
        .map(|_| rng.random_range(2..vocab as u32))
        .collect()
}

/// Single-precision matmul GFLOP/s on (m,k)x(k,n), best of a few runs.
fn sgemm_gflops(m: usize, k: usize, n: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
    let _ = a.matmul(&b)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let _ = a.matmul(&b)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

pub fn run(a: BenchArgs) -> Result<()> {
    super::train::set_threads(a.threads);
    let cfg = bench_config(&a)?;
    let dev = Device::Cpu;
    let params = init_params(&cfg, 0, &dev)?;
    let n_params = params.num_elements();
    let model = Llama::new(cfg.clone(), params, &dev)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let peak = sgemm_gflops(2048, 2048, 2048)?;
    let mut out = serde_json::json!({
        "impl": "elastica", "threads": rayon::current_num_threads(), "params": n_params,
        "layers": a.layers, "hidden": a.hidden, "seq": a.seq, "batch": a.batch,
        "sgemm_gflops_2048": peak, "sgemm_gflops_1024x256x688": sgemm_gflops(1024, 256, 688)?,
    });
    // Training FLOPs per token: 6N for the weights, plus the attention matmuls (QK^T and AV:
    // 4 * seq * hidden per layer forward, computed in full as PyTorch's eager path does; x3
    // for forward + backward).
    let attn_flops_per_tok = 12.0 * (a.layers * a.seq * a.hidden) as f64;
    let tok_per_step = a.batch * a.seq;
    if matches!(a.what, BenchWhat::All | BenchWhat::Train) {
        let mut opt = AdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        });
        let mut step = || -> Result<()> {
            let ids = random_ids(a.batch, a.seq, a.vocab, &mut rng);
            let targets: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
            let batch = Batch {
                ids: Tensor::from_vec(ids, (a.batch, a.seq), &dev)?,
                targets: Tensor::from_vec(targets, (a.batch, a.seq), &dev)?,
                n_targets: tok_per_step,
                n_tokens: tok_per_step,
            };
            optimizer_step(&model, &[batch], &mut opt, 1e-4, 1.0)?;
            Ok(())
        };
        for _ in 0..a.warmup {
            step()?;
        }
        let t = Instant::now();
        for _ in 0..a.steps {
            step()?;
        }
        let tps = (a.steps * tok_per_step) as f64 / t.elapsed().as_secs_f64();
        let flops = (6.0 * n_params as f64 + attn_flops_per_tok) * tps;
        out["train_tok_s"] = tps.into();
        out["train_mfu"] = (flops / (peak * 1e9)).into();
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Forward) {
        let ids = Tensor::from_vec(
            random_ids(a.batch, a.seq, a.vocab, &mut rng),
            (a.batch, a.seq),
            &dev,
        )?;
        let _ = model.forward(&ids)?;
        let t = Instant::now();
        let reps = a.steps.max(1);
        for _ in 0..reps {
            let _ = model.forward(&ids)?.detach();
        }
        out["forward_tok_s"] = ((reps * tok_per_step) as f64 / t.elapsed().as_secs_f64()).into();
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Generate) {
        for b in [1usize, 16] {
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|_| random_ids(1, 16, a.vocab, &mut rng))
                .collect();
            let g = GenConfig {
                max_new_tokens: 64,
                batch_size: b,
                ..Default::default()
            };
            let t = Instant::now();
            let outs = generate(&model, &prompts, &[], 0, &g, |_| {})?;
            let n: usize = outs.iter().map(|o| o.len()).sum();
            out[format!("generate_b{b}_tok_s")] = (n as f64 / t.elapsed().as_secs_f64()).into();
        }
    }
    out["peak_rss_mb"] = peak_rss_mb().into();
    println!("{out}");
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in MB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
