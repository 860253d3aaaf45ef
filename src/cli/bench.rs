//! `elastica bench`: training, forward and generation throughput of a fixed Llama config on
//! random tokens, with MFU against the sgemm peak measured on the spot. The training table
//! has one row per fused kernel (switched on cumulatively after the reference path), so each
//! optimisation's before and after come from the same run. The PyTorch side of
//! the comparison is scripts/bench_torch.py; scripts/bench_compare.sh runs both in one go.

use crate::model::fused::{self, Kernel};
use crate::model::generate::{generate, GenConfig};
use crate::model::init::init_params;
use crate::model::{Llama, ModelConfig};
use crate::train::batch::Batch;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::sft::optimizer_step;
use anyhow::{Context, Result};
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
    /// Timed training steps per round (after --warmup untimed ones).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Interleaved rounds per configuration; each row reports its fastest round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Time the training step once per optimisation (reference path, then one more fused
    /// kernel per row); `--table false` times only the all-fused step.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub table: bool,
    /// The JSON line of scripts/bench_torch.py, for the "vs PyTorch" columns.
    #[arg(long)]
    pub torch: Option<std::path::PathBuf>,
    /// Also write every figure as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Key/value heads (0 = as many as --heads; Qwen2-0.5B has 2).
    #[arg(long, default_value_t = 0)]
    pub kv_heads: usize,
    /// Architecture: llama, or qwen2 (q/k/v biases).
    #[arg(long, default_value = "llama")]
    pub model_type: String,
    /// Tie the LM head to the embeddings (Qwen2-0.5B does).
    #[arg(long)]
    pub tie_embeddings: bool,
    /// Dense peak TFLOP/s for MFU on a GPU (default: from the GPU's name; H100/H200 SXM
    /// bf16 989).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// New tokens of the batch-1 generation timing on the torch backend.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchWhat {
    All,
    Train,
    Forward,
    Generate,
    /// The training step's matrix products alone: the gemm crate against the system BLAS.
    Sgemm,
}

fn bench_config(a: &BenchArgs) -> Result<ModelConfig> {
    ModelConfig::from_json_str(&format!(
        r#"{{"model_type":"{}","vocab_size":{},"hidden_size":{},"intermediate_size":{},
        "num_hidden_layers":{},"num_attention_heads":{},"num_key_value_heads":{},"rms_norm_eps":1e-6,
        "max_position_embeddings":32768,"tie_word_embeddings":{},"eos_token_id":1}}"#,
        a.model_type,
        a.vocab,
        a.hidden,
        a.ff,
        a.layers,
        a.heads,
        if a.kv_heads == 0 { a.heads } else { a.kv_heads },
        a.tie_embeddings
    ))
}

fn random_ids(b: usize, t: usize, vocab: usize, rng: &mut impl Rng) -> Vec<u32> {
    (0..b * t)
        .map(|_| rng.random_range(2..vocab as u32))
        .collect()
}

/// Single-precision matmul GFLOP/s on (m,k)x(k,n), best of a few runs, through the same
/// product the fused linear uses (the system BLAS where it is on, else the gemm crate).
fn sgemm_gflops(m: usize, k: usize, n: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let _ = fused::linear::linear_no_bias(&a, &w)?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let _ = fused::linear::linear_no_bias(&a, &w)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// Process CPU time (user + system) in seconds, from /proc/self/stat (0 where unavailable).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the ")" that closes the command name; utime, stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Reset the peak-RSS mark (Linux: "5" > /proc/self/clear_refs), so each measurement
/// reports its own peak. Best effort.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One measured configuration: the best round (the least disturbed by other load).
#[derive(Clone, Copy)]
struct Measured {
    tok_s: f64,
    cpu_s_per_step: f64,
    wall_s_per_step: f64,
    rss_mb: f64,
}

/// Time every kernel configuration in `configs`, interleaved over `rounds` rounds of `reps`
/// calls of `f(config index)` (each processing `tokens` tokens; `warmup` untimed calls in
/// the first round), keeping each configuration's fastest round. Interleaving exposes all
/// configurations to the same background load; the best round is the least disturbed.
fn interleaved(
    configs: &[Vec<Kernel>],
    rounds: usize,
    warmup: usize,
    reps: usize,
    tokens: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<Measured>> {
    let reps = reps.max(1);
    let mut best: Vec<Option<Measured>> = vec![None; configs.len()];
    for round in 0..rounds.max(1) {
        for (i, on) in configs.iter().enumerate() {
            fused::set_enabled(on);
            reset_peak_rss();
            if round == 0 {
                for _ in 0..warmup {
                    f(i)?;
                }
            }
            let (c0, t0) = (cpu_seconds(), Instant::now());
            for _ in 0..reps {
                f(i)?;
            }
            let wall = t0.elapsed().as_secs_f64() / reps as f64;
            let m = Measured {
                tok_s: tokens as f64 / wall,
                cpu_s_per_step: (cpu_seconds() - c0) / reps as f64,
                wall_s_per_step: wall,
                rss_mb: peak_rss_mb(),
            };
            best[i] = Some(match best[i] {
                Some(b) if b.wall_s_per_step <= m.wall_s_per_step => Measured {
                    rss_mb: b.rss_mb.max(m.rss_mb),
                    ..b
                },
                Some(b) => Measured {
                    rss_mb: b.rss_mb.max(m.rss_mb),
                    ..m
                },
                None => m,
            });
        }
    }
    Ok(best.into_iter().flatten().collect())
}

/// The kernel sets the table walks through: the reference path, then one more fused
/// kernel per row (cumulative), ending with all of them.
fn kernel_steps() -> Vec<(String, Vec<Kernel>)> {
    let mut out = vec![("reference (no fused kernels)".to_string(), vec![])];
    let mut on = Vec::new();
    for k in Kernel::ALL {
        on.push(k);
        out.push((format!("+ {}", k.name()), on.clone()));
    }
    out
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    if !a.device.choice()?.is_default_cpu() {
        return super::device_args::bench(&a, bench_config(&a)?);
    }
    let torch: Option<serde_json::Value> = match &a.torch {
        Some(p) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the PyTorch results {}", p.display()))?,
            )
            .with_context(|| {
                format!(
                    "{} is not the JSON line scripts/bench_torch.py prints",
                    p.display()
                )
            })?,
        ),
        None => None,
    };
    let tf = |keys: &[&str]| -> Option<f64> {
        let t = torch.as_ref()?;
        keys.iter()
            .filter_map(|k| t.get(*k)?.as_f64())
            .reduce(f64::max)
    };
    let cfg = bench_config(&a)?;
    let dev = Device::Cpu;
    let params = init_params(&cfg, 0, &dev)?;
    let n_params = params.num_elements();
    let model = Llama::new(cfg.clone(), params, &dev)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: String = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut peak = sgemm_gflops(2048, 2048, 2048)?;
    let mut out = serde_json::json!({
        "impl": "elastica", "threads": rayon::current_num_threads(), "params": n_params,
        "layers": a.layers, "hidden": a.hidden, "seq": a.seq, "batch": a.batch,
        "sgemm_gflops_2048": peak, "sgemm_gflops_1024x256x688": sgemm_gflops(1024, 256, 688)?,
        "loadavg_at_start": load, "rounds": a.rounds, "sgemm": fused::blas::status(),
    });
    println!(
        "elastica bench: Llama {} layers, d={}, {} heads, ff {}, vocab {}, seq {}, batch {}, f32, \
         {} threads, {n_params} params; load average at start {load}; sgemm 2048^3 {peak:.1} GFLOP/s\n\
         sgemm: {}\n",
        a.layers, a.hidden, a.heads, a.ff, a.vocab, a.seq, a.batch, rayon::current_num_threads(),
        fused::blas::status()
    );
    // Training FLOPs per token: 6N for the weights, plus the attention matmuls (QK^T and AV:
    // 4 * seq * hidden per layer forward, counted in full as PyTorch's eager path computes
    // them; x3 for forward + backward).
    let attn_flops_per_tok = 12.0 * (a.layers * a.seq * a.hidden) as f64;
    let tok_per_step = a.batch * a.seq;
    // Over the best sgemm rate seen (measured at the start and again after the training
    // table), so a disturbed measurement of the peak cannot inflate the MFU.
    let mfu =
        |tps: f64, peak: f64| (6.0 * n_params as f64 + attn_flops_per_tok) * tps / (peak * 1e9);
    if matches!(a.what, BenchWhat::All | BenchWhat::Train) {
        let torch_train = tf(&["train_tok_s_eager", "train_tok_s_sdpa"]);
        println!("## Training step (forward + backward + AdamW), tok/s\n");
        println!("| optimisation | tok/s | CPU s/step | wall s/step | vs reference | vs PyTorch | MFU | peak RSS MB |");
        println!("|---|---|---|---|---|---|---|---|");
        let mut rows = Vec::new();
        let steps = if a.table {
            kernel_steps()
        } else {
            // Only the kernels switched on now (ELASTICA_KERNELS, default all).
            let on: Vec<Kernel> = Kernel::ALL
                .into_iter()
                .filter(|&k| fused::enabled(k))
                .collect();
            vec![(format!("{} kernels on", on.len()), on)]
        };
        let configs: Vec<Vec<Kernel>> = steps.iter().map(|s| s.1.clone()).collect();
        let mut opts: Vec<AdamW> = configs
            .iter()
            .map(|_| {
                AdamW::new(AdamWConfig {
                    beta1: 0.9,
                    beta2: 0.95,
                    eps: 1e-8,
                    weight_decay: 0.0,
                })
            })
            .collect();
        let ms = interleaved(&configs, a.rounds, a.warmup, a.steps, tok_per_step, |i| {
            let ids = random_ids(a.batch, a.seq, a.vocab, &mut rng);
            let targets: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
            let batch = Batch {
                ids: Tensor::from_vec(ids, (a.batch, a.seq), &dev)?,
                targets: Tensor::from_vec(targets, (a.batch, a.seq), &dev)?,
                n_targets: tok_per_step,
                n_tokens: tok_per_step,
            };
            optimizer_step(&model, &[batch], &mut opts[i], 1e-4, 1.0)?;
            Ok(())
        })?;
        peak = peak.max(sgemm_gflops(2048, 2048, 2048)?);
        let base = ms.first().map(|m| m.tok_s);
        for ((label, _), m) in steps.iter().zip(&ms) {
            println!(
                "| {label} | {:.0} | {:.3} | {:.3} | {} | {} | {:.3} | {:.0} |",
                m.tok_s,
                m.cpu_s_per_step,
                m.wall_s_per_step,
                ratio(m.tok_s, base),
                ratio(m.tok_s, torch_train),
                mfu(m.tok_s, peak),
                m.rss_mb
            );
            rows.push(serde_json::json!({"optimisation": label, "tok_s": m.tok_s,
                "cpu_s_per_step": m.cpu_s_per_step, "mfu": mfu(m.tok_s, peak), "peak_rss_mb": m.rss_mb}));
            out["train_tok_s"] = m.tok_s.into();
            out["train_mfu"] = mfu(m.tok_s, peak).into();
            out["train_peak_rss_mb"] = m.rss_mb.into();
        }
        out["train_table"] = rows.into();
        if let Some(t) = torch_train {
            println!(
                "\nPyTorch (best of eager / sdpa): {t:.0} tok/s, MFU {:.3} over the same peak; peak RSS {} MB",
                mfu(t, peak),
                tf(&["peak_rss_mb"]).map_or("-".into(), |r| format!("{r:.0}"))
            );
        }
        println!();
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Forward) {
        println!("## Forward-only scoring (no grad), tok/s\n");
        println!(
            "| path | tok/s | CPU s/batch | vs reference | vs PyTorch |\n|---|---|---|---|---|"
        );
        let ids = Tensor::from_vec(
            random_ids(a.batch, a.seq, a.vocab, &mut rng),
            (a.batch, a.seq),
            &dev,
        )?;
        let torch_fwd = tf(&["forward_tok_s_eager", "forward_tok_s_sdpa"]);
        let configs = [vec![], Kernel::ALL.to_vec()];
        let ms = interleaved(&configs, a.rounds, 1, a.steps, tok_per_step, |_| {
            let _ = crate::train::backprop::scoring_logits(&model, &ids)?;
            Ok(())
        })?;
        for (label, m) in ["reference", "fused"].iter().zip(&ms) {
            println!(
                "| {label} | {:.0} | {:.3} | {} | {} |",
                m.tok_s,
                m.cpu_s_per_step,
                ratio(m.tok_s, Some(ms[0].tok_s)),
                ratio(m.tok_s, torch_fwd)
            );
            out[format!("forward_tok_s_{label}")] = m.tok_s.into();
            out["forward_tok_s"] = m.tok_s.into();
        }
        println!();
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Generate) {
        println!("## Greedy generation with KV cache (16-token prompts, 64 new tokens), tok/s\n");
        println!(
            "| batch | path | tok/s | vs reference | vs PyTorch generate |\n|---|---|---|---|---|"
        );
        for b in [1usize, 16] {
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|_| random_ids(1, 16, a.vocab, &mut rng))
                .collect();
            let g = GenConfig {
                max_new_tokens: 64,
                batch_size: b,
                ..Default::default()
            };
            let torch_gen = tf(&[&format!("generate_tok_s_b{b}")]);
            let configs = [vec![], Kernel::ALL.to_vec()];
            let mut n = 0;
            let ms = interleaved(&configs, a.rounds, 1, 1, b * 64, |_| {
                let outs = generate(&model, &prompts, &[], 0, &g, |_| {})?;
                n = outs.iter().map(|o| o.len()).sum();
                Ok(())
            })?;
            anyhow::ensure!(n == b * 64, "generation stopped early ({n} tokens)");
            for (label, m) in ["reference", "fused"].iter().zip(&ms) {
                println!(
                    "| {b} | {label} | {:.0} | {} | {} |",
                    m.tok_s,
                    ratio(m.tok_s, Some(ms[0].tok_s)),
                    ratio(m.tok_s, torch_gen)
                );
                out[format!("generate_b{b}_tok_s_{label}")] = m.tok_s.into();
                out[format!("generate_b{b}_tok_s")] = m.tok_s.into();
            }
        }
        println!();
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Sgemm) {
        out["sgemm_table"] = sgemm_table(&a)?.into();
    }
    fused::set_enabled(&Kernel::ALL);
    out["peak_rss_mb"] = peak_rss_mb().into();
    if let Some(p) = &a.json {
        crate::util::fsx::atomic_write_json(p, &out)?;
    }
    Ok(())
}

/// GFLOP/s of each matrix product in a training step (forward, and the backward's input and
/// weight gradients), on the gemm crate and on the system BLAS, interleaved; also the JSON rows.
fn sgemm_table(a: &BenchArgs) -> Result<Vec<serde_json::Value>> {
    let rows = a.batch * a.seq;
    let (d, f, v) = (a.hidden, a.ff, a.vocab);
    // (what, m, k, n, A strides, B strides) as fused::linear computes them: y = x W^T,
    // dx = dy W, dW = dy^T x.
    let mut shapes = Vec::new();
    for (name, inp, out) in [
        ("q/k/v/o", d, d),
        ("gate/up", d, f),
        ("down", f, d),
        ("head", d, v),
    ] {
        shapes.push((
            format!("{name} forward"),
            rows,
            inp,
            out,
            (inp, 1),
            (1, inp),
        ));
        shapes.push((format!("{name} dx"), rows, out, inp, (out, 1), (inp, 1)));
        shapes.push((format!("{name} dW"), out, rows, inp, (1, out), (inp, 1)));
    }
    let gemm_only: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|&k| k != Kernel::Blas)
        .collect();
    let configs = [gemm_only, Kernel::ALL.to_vec()];
    println!(
        "## Matrix products of the training step, GFLOP/s (sgemm: {})\n",
        fused::blas::status()
    );
    println!("| product | m x k x n | gemm crate | system BLAS | ratio |\n|---|---|---|---|---|");
    let mut json = Vec::new();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (name, m, k, n, sa, sb) in shapes {
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let y: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let flops = 2 * m * k * n;
        let ms = interleaved(&configs, a.rounds, 1, a.steps.max(4), flops, |_| {
            std::hint::black_box(fused::linear::product(m, n, k, &x, sa, &y, sb));
            Ok(())
        })?;
        let (g, b) = (ms[0].tok_s / 1e9, ms[1].tok_s / 1e9);
        println!("| {name} | {m}x{k}x{n} | {g:.0} | {b:.0} | {:.2}x |", b / g);
        json.push(serde_json::json!({"product": name, "m": m, "k": k, "n": n,
            "gemm_gflops": g, "blas_gflops": b}));
    }
    println!();
    Ok(json)
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
