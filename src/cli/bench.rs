//! `elastica bench`: training, forward and generation throughput of a fixed Llama config on
//! random tokens, with MFU against the sgemm peak measured on the spot (the best of several
//! repetitions of the step's own matrix shapes, before and after the training table) or
//! stated with `--peak-gflops`. The training table has one row per fused kernel (switched on
//! cumulatively after the reference path), so each optimisation's before and after come from
//! the same run. Before timing, each row's memory is estimated and rows that would not fit
//! in the machine's available memory are skipped with a message (instead of the
//! out-of-memory killer ending the run). The PyTorch side of the comparison is
//! scripts/bench_torch.py; scripts/bench_compare.sh runs both in one go.

use crate::model::fused::{self, Kernel};
use crate::model::generate::{generate, GenConfig};
use crate::model::init::init_params;
use crate::model::{Llama, ModelConfig};
use crate::train::batch::Batch;
use crate::train::objective::{DpoConfig, DpoLoss, Method};
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
    /// The machine's single-precision peak in GFLOP/s for the MFU column (default: the best
    /// sgemm rate measured on the step's shapes in this run).
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Memory the training rows may use beyond the weights, in GB (default: MemAvailable
    /// from /proc/meminfo); rows estimated to need more are skipped.
    #[arg(long)]
    pub mem_available: Option<f64>,
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
    /// Adapter rank of `bench lora`.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
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
    /// A LoRA step (rank --lora-rank on every projection, base frozen) against a full step:
    /// step time and peak RSS, LoRA first (so the full step's AdamW state is not counted in
    /// the LoRA row).
    Lora,
    /// A DPO step on --batch pairs (policy forward + backward on the chosen and the rejected
    /// answers, reference log-probs cached) against an SFT step on the same sequences; with
    /// --torch, the JSON of `scripts/bench_torch.py --only dpo`.
    Dpo,
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

/// Repetitions of each product when measuring the sgemm peak: the best one is the least
/// disturbed by other load.
const PEAK_REPS: usize = 7;

/// Single-precision matmul GFLOP/s on (m,k)x(k,n), best of [`PEAK_REPS`] runs, through the
/// same product the fused linear uses (the system BLAS where it is on, else the gemm crate).
fn sgemm_gflops(m: usize, k: usize, n: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let _ = fused::linear::linear_no_bias(&a, &w)?;
    let mut best = f64::MAX;
    for _ in 0..PEAK_REPS {
        let t = Instant::now();
        let _ = fused::linear::linear_no_bias(&a, &w)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// The sgemm peak for MFU: the best rate over 2048^3 and the forward products of the
/// training step itself (rows = batch x seq; the head's n capped so one product stays
/// under about 20 GFLOP), each the best of several runs. The step's own shapes matter: a
/// peak measured on other shapes can sit below what the step reaches (an MFU above 1).
fn sgemm_peak(a: &BenchArgs) -> Result<f64> {
    let rows = a.batch * a.seq;
    let head = a
        .vocab
        .min((1e10 / (rows * a.hidden).max(1) as f64) as usize)
        .max(1);
    let mut best = sgemm_gflops(2048, 2048, 2048)?;
    for (k, n) in [
        (a.hidden, a.hidden),
        (a.hidden, a.ff),
        (a.ff, a.hidden),
        (a.hidden, head),
    ] {
        best = best.max(sgemm_gflops(rows, k, n)?);
    }
    Ok(best)
}

/// Bytes a training step needs beyond the weights, for one row of the table (the kernels
/// `on`): the gradients (4 B per parameter), AdamW's two moments (8 B; one optimizer serves
/// every row), and the activations kept for the backward. The activation terms count f32
/// tensors per layer (tokens x hidden, tokens x ff, the attention scores) and for the head
/// (tokens x vocab), more of each on the reference path, which keeps every intermediate.
/// Checked against a run at 337M parameters (vocab 151936, seq 256, batch 2): 5.9 GB
/// measured with every kernel on, 6.3 GB estimated with the weights; an estimate, so rows
/// are skipped only when it exceeds the available memory.
pub fn step_memory_bytes(
    cfg: &ModelConfig,
    n_params: usize,
    batch: usize,
    seq: usize,
    on: &[Kernel],
) -> f64 {
    let n = n_params as f64;
    let t = (batch * seq) as f64;
    let (d, f, v) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
    );
    let scores = (batch * cfg.num_attention_heads * seq * seq) as f64;
    let has = |k: Kernel| on.contains(&k);
    let per_layer = if has(Kernel::RmsNorm) { 10.0 } else { 16.0 } * t * d
        + if has(Kernel::SwiGlu) { 4.0 } else { 6.0 } * t * f
        + if has(Kernel::Attention) { 1.0 } else { 4.0 } * scores;
    let head = if has(Kernel::CrossEntropy) { 2.0 } else { 6.0 } * t * v;
    12.0 * n + 4.0 * (cfg.num_hidden_layers as f64 * per_layer + head)
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

/// The figures of `--torch` (the JSON line scripts/bench_torch.py prints), if given.
fn read_torch(path: Option<&std::path::Path>) -> Result<Option<serde_json::Value>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read the PyTorch results {}", p.display()))?;
    let v = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not the JSON line scripts/bench_torch.py prints",
            p.display()
        )
    })?;
    Ok(Some(v))
}

/// The best of PyTorch's figures under `keys` (e.g. its eager and sdpa runs), if any.
fn torch_best(torch: Option<&serde_json::Value>, keys: &[&str]) -> Option<f64> {
    keys.iter()
        .filter_map(|k| torch?.get(*k)?.as_f64())
        .reduce(f64::max)
}

/// The first three fields of /proc/loadavg ("" where unavailable): how loaded the machine
/// was, printed beside the figures it disturbs.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `rows` sequences of random tokens whose targets are the tokens themselves, every one
/// counted.
fn random_batch(a: &BenchArgs, rows: usize, rng: &mut impl Rng) -> Result<Batch> {
    let ids = random_ids(rows, a.seq, a.vocab, rng);
    let targets: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let tokens = rows * a.seq;
    Ok(Batch {
        ids: Tensor::from_vec(ids, (rows, a.seq), &Device::Cpu)?,
        targets: Tensor::from_vec(targets, (rows, a.seq), &Device::Cpu)?,
        n_targets: tokens,
        n_tokens: tokens,
    })
}

/// One SFT training step (forward, backward, clipping at 1, AdamW) on a fresh random batch.
fn sft_step(a: &BenchArgs, model: &Llama, opt: &mut AdamW, rng: &mut impl Rng) -> Result<()> {
    optimizer_step(model, &[random_batch(a, a.batch, rng)?], opt, 1e-4, 1.0)?;
    Ok(())
}

/// The AdamW every timed step uses (PyTorch's side uses the same betas and eps).
fn bench_adamw() -> AdamW {
    AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    })
}

/// One `elastica bench` run on the CPU: the model every table times, the PyTorch figures it
/// compares with, and the JSON every table adds to.
struct Session<'a> {
    a: &'a BenchArgs,
    cfg: ModelConfig,
    model: Llama,
    n_params: usize,
    torch: Option<serde_json::Value>,
    rng: rand_chacha::ChaCha8Rng,
    out: serde_json::Value,
}

impl Session<'_> {
    /// The best PyTorch figure under `keys` (e.g. its eager and sdpa runs), if given.
    fn torch(&self, keys: &[&str]) -> Option<f64> {
        torch_best(self.torch.as_ref(), keys)
    }

    /// Model FLOPs utilisation of a training step at `tok_s` over `peak` GFLOP/s. Training
    /// FLOPs per token: 6N for the weights, plus the attention matmuls (QK^T and AV: 4 x seq
    /// x hidden per layer forward, counted in full as PyTorch's eager path computes them; x3
    /// for forward + backward).
    fn mfu(&self, tok_s: f64, peak: f64) -> f64 {
        let attn_flops_per_tok = 12.0 * (self.a.layers * self.a.seq * self.a.hidden) as f64;
        (6.0 * self.n_params as f64 + attn_flops_per_tok) * tok_s / (peak * 1e9)
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    if !a.device.choice()?.is_default_cpu() {
        return on_backend(&a, bench_config(&a)?);
    }
    let torch = read_torch(a.torch.as_deref())?;
    let cfg = bench_config(&a)?;
    let dev = Device::Cpu;
    let params = init_params(&cfg, 0, &dev)?;
    match a.what {
        BenchWhat::Lora => return lora_vs_full(&a, &cfg, params),
        BenchWhat::Dpo => return dpo_vs_sft(&a, &cfg, params, torch.as_ref()),
        _ => {}
    }
    let n_params = params.num_elements();
    let model = Llama::new(cfg.clone(), params, &dev)?;
    let load = load_average();
    if let Some(p) = a.peak_gflops {
        anyhow::ensure!(
            p.is_finite() && p > 0.0,
            "--peak-gflops must be a positive number of GFLOP/s, got {p}"
        );
    }
    let peak = match a.peak_gflops {
        Some(p) => p,
        None => sgemm_peak(&a)?,
    };
    let out = serde_json::json!({
        "impl": "elastica", "threads": rayon::current_num_threads(), "params": n_params,
        "layers": a.layers, "hidden": a.hidden, "seq": a.seq, "batch": a.batch,
        "sgemm_gflops_1024x256x688": sgemm_gflops(1024, 256, 688)?,
        "loadavg_at_start": load, "rounds": a.rounds, "sgemm": fused::blas::status(),
        "torch_linked": cfg!(feature = "torch"),
    });
    println!(
        "elastica bench: Llama {} layers, d={}, {} heads, ff {}, vocab {}, seq {}, batch {}, f32, \
         {} threads, {n_params} params; load average at start {load}; sgemm peak {peak:.1} GFLOP/s\n\
         sgemm: {}\n{}\n",
        a.layers, a.hidden, a.heads, a.ff, a.vocab, a.seq, a.batch, rayon::current_num_threads(),
        fused::blas::status(),
        build_line()
    );
    let mut s = Session {
        a: &a,
        cfg,
        model,
        n_params,
        torch,
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(0),
        out,
    };
    if matches!(a.what, BenchWhat::All | BenchWhat::Train) {
        train_table(&mut s, peak)?;
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Forward) {
        forward_table(&mut s)?;
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Generate) {
        generate_table(&mut s)?;
    }
    if matches!(a.what, BenchWhat::All | BenchWhat::Sgemm) {
        s.out["sgemm_table"] = sgemm_table(&a)?.into();
    }
    fused::set_enabled(&Kernel::ALL);
    s.out["peak_rss_mb"] = peak_rss_mb().into();
    if let Some(p) = &a.json {
        crate::util::fsx::atomic_write_json(p, &s.out)?;
    }
    Ok(())
}

/// The training table's rows: one per optimisation (`--table`), else one row with the
/// kernels switched on now.
fn train_rows(a: &BenchArgs) -> Vec<(String, Vec<Kernel>)> {
    if a.table {
        return kernel_steps();
    }
    let on = kernels_on();
    vec![(format!("{} kernels on", on.len()), on)]
}

/// "Llama L layers, d=D, ff F, vocab V, seq S": the benchmarked model, for the headers.
/// What the build loads besides elastica: a binary built with the torch feature maps
/// libtorch and its CUDA libraries at start (about 340 MiB resident before any elastica code
/// runs), which every peak RSS row then carries although the fused path never calls them.
fn build_line() -> &'static str {
    if cfg!(feature = "torch") {
        "build: torch feature (libtorch loaded at start: about 340 MiB of each peak RSS below \
         is libtorch's; build without the feature to compare memory)"
    } else {
        "build: default (no libtorch)"
    }
}

fn model_line(a: &BenchArgs) -> String {
    format!(
        "Llama {} layers, d={}, ff {}, vocab {}, seq {}",
        a.layers, a.hidden, a.ff, a.vocab, a.seq
    )
}

/// One configuration, the kernels enabled now, timed as [`interleaved`] times each
/// (`a.rounds` rounds of `a.steps` calls of `f` after `a.warmup`).
fn with_kernels_on(
    a: &BenchArgs,
    tokens: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Measured> {
    let ms = interleaved(&[kernels_on()], a.rounds, a.warmup, a.steps, tokens, |_| {
        f()
    })?;
    ms.first().copied().context("no measurement")
}

/// The kernels switched on now (ELASTICA_KERNELS, default all).
fn kernels_on() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|&k| fused::enabled(k))
        .collect()
}

/// The training table (forward + backward + AdamW per row). Its MFU divides by the best
/// sgemm rate seen, `peak` or a rate measured again after the table, so a disturbed first
/// measurement of the peak cannot inflate it.
fn train_table(s: &mut Session, mut peak: f64) -> Result<()> {
    let a = s.a;
    println!("## Training step (forward + backward + AdamW), tok/s\n");
    println!("| optimisation | tok/s | CPU s/step | wall s/step | vs reference | vs PyTorch | MFU | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    // Rows whose estimated memory does not fit what the machine has free are skipped
    // (the weights are already allocated, so MemAvailable is what the step may add).
    let avail = match a.mem_available {
        Some(gb) => Some(gb * 1e9),
        None => crate::util::sysmem::available_bytes().map(|b| b as f64),
    };
    let need = |on: &[Kernel]| step_memory_bytes(&s.cfg, s.n_params, a.batch, a.seq, on);
    let (rows, skipped): (Vec<_>, Vec<_>) = train_rows(a)
        .into_iter()
        .partition(|(_, on)| avail.is_none_or(|av| need(on) <= 0.9 * av));
    let configs: Vec<Vec<Kernel>> = rows.iter().map(|r| r.1.clone()).collect();
    // One optimizer for every row: the rows step the same weights, and one AdamW state
    // per row would multiply its 8 bytes per parameter by the number of rows.
    let mut opt = bench_adamw();
    let (model, rng) = (&s.model, &mut s.rng);
    let ms = interleaved(
        &configs,
        a.rounds,
        a.warmup,
        a.steps,
        a.batch * a.seq,
        |_| sft_step(a, model, &mut opt, rng),
    )?;
    if a.peak_gflops.is_none() && !configs.is_empty() {
        peak = peak.max(sgemm_peak(a)?);
    }
    let mut json = Vec::new();
    let base = ms.first().map(|m| m.tok_s);
    let torch_train = s.torch(&["train_tok_s_eager", "train_tok_s_sdpa"]);
    for ((label, _), m) in rows.iter().zip(&ms) {
        let mfu = s.mfu(m.tok_s, peak);
        println!(
            "| {label} | {:.0} | {:.3} | {:.3} | {} | {} | {mfu:.3} | {:.0} |",
            m.tok_s,
            m.cpu_s_per_step,
            m.wall_s_per_step,
            ratio(m.tok_s, base),
            ratio(m.tok_s, torch_train),
            m.rss_mb
        );
        json.push(serde_json::json!({"optimisation": label, "tok_s": m.tok_s,
            "cpu_s_per_step": m.cpu_s_per_step, "mfu": mfu, "peak_rss_mb": m.rss_mb}));
        s.out["train_tok_s"] = m.tok_s.into();
        s.out["train_mfu"] = mfu.into();
        s.out["train_peak_rss_mb"] = m.rss_mb.into();
    }
    for (label, on) in &skipped {
        let (need, have) = (need(on), avail.unwrap_or(0.0));
        println!(
            "| {label} | skipped: needs about {} beyond the weights (estimate), {} \
             available | | | | | | |",
            gb(need),
            gb(have)
        );
        json.push(serde_json::json!({"optimisation": label, "skipped": true,
            "estimated_bytes": need, "available_bytes": have}));
    }
    if !skipped.is_empty() {
        eprintln!(
            "warning: {} row(s) skipped because their estimated memory exceeds 90% of the \
             available memory (MemAvailable or --mem-available); a smaller --batch, --seq \
             or --vocab fits",
            skipped.len()
        );
    }
    s.out["train_table"] = json.into();
    report_peak(s, peak, &ms, torch_train);
    Ok(())
}

/// The lines under the training table: which peak the MFU divides by, a warning where an
/// MFU exceeds 1, and PyTorch's figures over the same peak.
fn report_peak(s: &mut Session, peak: f64, ms: &[Measured], torch_train: Option<f64>) {
    let source = match s.a.peak_gflops {
        Some(_) => "stated with --peak-gflops".to_string(),
        None => format!(
            "measured: best of {PEAK_REPS} runs of 2048^3 and of the step's own product \
             shapes, before and after the table"
        ),
    };
    println!("\nMFU = (6 x params + attention) FLOPs x tok/s over a peak of {peak:.1} GFLOP/s ({source}).");
    s.out["peak_gflops"] = peak.into();
    s.out["peak_source"] = source.into();
    if ms.iter().any(|m| s.mfu(m.tok_s, peak) > 1.0) {
        println!(
            "warning: an MFU above 1 means the peak of {peak:.1} GFLOP/s is not this \
             machine's peak (the peak measurement was disturbed by other load, or the \
             step used a faster product); rerun on an idle machine or pass --peak-gflops"
        );
    }
    if let Some(t) = torch_train {
        println!(
            "\nPyTorch (best of eager / sdpa): {t:.0} tok/s, MFU {:.3} over the same peak; peak RSS {} MB",
            s.mfu(t, peak),
            s.torch(&["peak_rss_mb"])
                .map_or("-".into(), |r| format!("{r:.0}"))
        );
    }
    println!();
}

/// Forward-only scoring (no gradient), reference path against all kernels.
fn forward_table(s: &mut Session) -> Result<()> {
    let a = s.a;
    println!("## Forward-only scoring (no grad), tok/s\n");
    println!("| path | tok/s | CPU s/batch | vs reference | vs PyTorch |\n|---|---|---|---|---|");
    let ids = Tensor::from_vec(
        random_ids(a.batch, a.seq, a.vocab, &mut s.rng),
        (a.batch, a.seq),
        &Device::Cpu,
    )?;
    let torch_fwd = s.torch(&["forward_tok_s_eager", "forward_tok_s_sdpa"]);
    let configs = [vec![], Kernel::ALL.to_vec()];
    let model = &s.model;
    let ms = interleaved(&configs, a.rounds, 1, a.steps, a.batch * a.seq, |_| {
        let _ = crate::train::backprop::scoring_logits(model, &ids)?;
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
        s.out[format!("forward_tok_s_{label}")] = m.tok_s.into();
        s.out["forward_tok_s"] = m.tok_s.into();
    }
    println!();
    Ok(())
}

/// Greedy generation with the KV cache at batch 1 and 16, reference path against all kernels.
fn generate_table(s: &mut Session) -> Result<()> {
    println!("## Greedy generation with KV cache (16-token prompts, 64 new tokens), tok/s\n");
    println!(
        "| batch | path | tok/s | vs reference | vs PyTorch generate |\n|---|---|---|---|---|"
    );
    for b in [1usize, 16] {
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|_| random_ids(1, 16, s.a.vocab, &mut s.rng))
            .collect();
        let g = GenConfig {
            max_new_tokens: 64,
            batch_size: b,
            ..Default::default()
        };
        let torch_gen = s.torch(&[&format!("generate_tok_s_b{b}")]);
        let configs = [vec![], Kernel::ALL.to_vec()];
        let mut n = 0;
        let model = &s.model;
        let ms = interleaved(&configs, s.a.rounds, 1, 1, b * 64, |_| {
            let outs = generate(model, &prompts, &[], 0, &g, |_| {})?;
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
            s.out[format!("generate_b{b}_tok_s_{label}")] = m.tok_s.into();
            s.out[format!("generate_b{b}_tok_s")] = m.tok_s.into();
        }
    }
    println!();
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

/// Bytes as GB with three significant digits (small budgets stay readable).
fn gb(bytes: f64) -> String {
    format!("{} GB", crate::report::fmt_sig(bytes / 1e9, 3))
}

/// Peak resident set size of this process (VmHWM), in MiB (the JSON keys say `mb`, as
/// bench_torch.py's do, which also counts MiB); 0 where /proc is unavailable.
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

/// `elastica bench` on the libtorch backend.
fn on_backend(a: &BenchArgs, cfg: crate::model::ModelConfig) -> Result<()> {
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
            grad_checkpoint: a.device.grad_checkpoint,
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

/// `bench lora`: one LoRA training step against one full step on the same weights and
/// batches (all kernels on), each its fastest of --rounds rounds of --steps steps, with its
/// own AdamW. The LoRA row runs first: peak RSS only grows within a process, and the full
/// step's AdamW state (8 bytes per parameter) would otherwise be counted in the LoRA row.
fn lora_vs_full(a: &BenchArgs, cfg: &ModelConfig, params: crate::model::Params) -> Result<()> {
    use crate::model::lora::{Adapter, LoraConfig};
    let dev = Device::Cpu;
    let lora_cfg = LoraConfig {
        rank: a.lora_rank,
        ..LoraConfig::default()
    };
    let adapter = Adapter::init(cfg, &lora_cfg, 0, "bench")?;
    let n_adapter = adapter.params.num_elements();
    let n_params = params.num_elements();
    let lora = Llama::new(cfg.clone(), params.clone(), &dev)?.with_adapter(adapter)?;
    let full = Llama::new(cfg.clone(), params, &dev)?;
    let tok_per_step = a.batch * a.seq;
    println!(
        "elastica bench lora: {}, batch {}, f32, {} threads; {n_params} base params, rank-{} \
         adapter on all 7 projections = {n_adapter} params\n{}\n",
        model_line(a),
        a.batch,
        rayon::current_num_threads(),
        a.lora_rank,
        build_line()
    );
    println!("| step | tok/s | wall s/step | CPU s/step | peak RSS MiB |");
    println!("|---|---|---|---|---|");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut rows = Vec::new();
    for (label, model) in [("LoRA", &lora), ("full", &full)] {
        let mut opt = bench_adamw();
        let m = with_kernels_on(a, tok_per_step, || sft_step(a, model, &mut opt, &mut rng))?;
        println!(
            "| {label} | {:.0} | {:.3} | {:.3} | {:.0} |",
            m.tok_s, m.wall_s_per_step, m.cpu_s_per_step, m.rss_mb
        );
        rows.push(serde_json::json!({"step": label, "tok_s": m.tok_s,
            "wall_s_per_step": m.wall_s_per_step, "cpu_s_per_step": m.cpu_s_per_step,
            "peak_rss_mb": m.rss_mb}));
    }
    if let Some(p) = &a.json {
        crate::util::fsx::atomic_write_json(
            p,
            &serde_json::json!({"params": n_params, "adapter_params": n_adapter,
                "lora_rank": a.lora_rank, "rows": rows}),
        )?;
    }
    Ok(())
}

/// KTO's mismatched sequences and their cached reference log-probs, for [`dpo_step`].
struct Mismatched<'a> {
    batch: &'a Batch,
    reference: &'a [f64],
}

/// One DPO step as `train --method dpo` takes it, on a batch whose first `ref_chosen.len()`
/// sequences are the chosen answers and the rest the rejected ones: the policy's forward and
/// backward on both (one backward, per-sequence weights), the reference log-probs given
/// (cached), clipping at 1 and AdamW. Under KTO the step first runs the forward (no
/// backward) over `kl`'s sequences for its reference point z0. Returns the mean loss.
fn dpo_step(
    model: &Llama,
    b: &Batch,
    (ref_chosen, ref_rejected): (&[f64], &[f64]),
    kl: Option<&Mismatched<'_>>,
    dpo: &DpoConfig,
    opt: &mut AdamW,
) -> Result<f64> {
    let n = ref_chosen.len() as f64;
    let z0 = match kl {
        Some(k) => {
            let nll = crate::train::dpo::seq_nll(model, k.batch)?;
            let policy: Vec<f64> = nll.iter().map(|x| -x).collect();
            crate::train::dpo::kto_z0(&policy, k.reference)?
        }
        None => 0.0,
    };
    let mut loss = 0.0;
    let mut weigh = |nll: &[f64]| -> Result<Vec<f64>> {
        let refs = ref_chosen.iter().copied().zip(ref_rejected.iter().copied());
        // The sigmoid and KTO losses read summed log-probs: the lengths do not enter.
        let lens = std::iter::repeat((1, 1));
        let (w, terms) = crate::train::dpo::pair_weights(dpo, nll, refs, lens, n, z0);
        loss = terms.iter().map(|t| t.loss).sum::<f64>() / n;
        Ok(w)
    };
    let (_, mut g) = crate::train::dpo::weighted_grads(model, b, None, &mut weigh)?;
    g.clip(1.0);
    opt.update(model.trainable(), &g, 1e-4)?;
    Ok(loss)
}

/// `bench dpo`: one DPO step on --batch pairs of random answers (reference log-probs
/// computed once before timing, as `train --method dpo` caches them) against one SFT step
/// on the same 2 x --batch sequences, then one KTO step (the DPO step plus a forward over
/// 2 x --batch mismatched sequences for z0), all kernels on, each its fastest of --rounds
/// rounds of --steps steps with its own AdamW; DPO runs first. tok/s counts the tokens of
/// both answers (the trained ones).
fn dpo_vs_sft(
    a: &BenchArgs,
    cfg: &ModelConfig,
    params: crate::model::Params,
    torch: Option<&serde_json::Value>,
) -> Result<()> {
    let model = Llama::new(cfg.clone(), params, &Device::Cpu)?;
    let n_params = model.trainable().num_elements();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let pairs = random_batch(a, 2 * a.batch, &mut rng)?;
    // The reference is the starting policy, so the first step's loss is ln 2 (h = 0).
    let reference: Vec<f64> = crate::train::dpo::seq_nll(&model, &pairs)?
        .iter()
        .map(|nll| -nll)
        .collect();
    let refs = reference.split_at(a.batch);
    let dpo = DpoConfig {
        method: Method::Dpo,
        ..DpoConfig::default()
    };
    let kto = DpoConfig {
        dpo_loss: DpoLoss::Kto,
        ..dpo.clone()
    };
    let mismatched = random_batch(a, 2 * a.batch, &mut rng)?;
    let mismatched_ref: Vec<f64> = crate::train::dpo::seq_nll(&model, &mismatched)?
        .iter()
        .map(|nll| -nll)
        .collect();
    let kl = Mismatched {
        batch: &mismatched,
        reference: &mismatched_ref,
    };
    let tokens = 2 * a.batch * a.seq;
    println!(
        "elastica bench dpo: {}, {} pairs ({} sequences) a step, f32, {} threads; beta {}: \
         DPO sigmoid loss, KTO (plus a forward over as many mismatched sequences)\n{}\n",
        model_line(a),
        a.batch,
        2 * a.batch,
        rayon::current_num_threads(),
        dpo.dpo_beta,
        build_line()
    );
    println!("| step | tok/s | wall s/step | CPU s/step | vs PyTorch | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    let mut first_loss = None;
    let mut rows = Vec::new();
    // Each row: its label, PyTorch's key, and the preference objective (None: SFT).
    let steps = [
        ("DPO", "dpo", Some((&dpo, None))),
        ("SFT, same sequences", "sft_same", None),
        ("KTO", "kto", Some((&kto, Some(&kl)))),
    ];
    for (label, torch_key, preference) in steps {
        let mut opt = bench_adamw();
        let m = with_kernels_on(a, tokens, || {
            match preference {
                Some((objective, mismatched)) => {
                    let loss = dpo_step(&model, &pairs, refs, mismatched, objective, &mut opt)?;
                    // DPO runs first, so this keeps its loss; later rows start from a model
                    // the rows before trained (KTO's loss there is not its first-step 1/2).
                    first_loss.get_or_insert(loss);
                }
                None => {
                    let b = Batch {
                        ids: pairs.ids.clone(),
                        targets: pairs.targets.clone(),
                        ..pairs
                    };
                    optimizer_step(&model, &[b], &mut opt, 1e-4, 1.0)?;
                }
            }
            Ok(())
        })?;
        let torch_tok_s = torch_best(
            torch,
            &[
                &format!("{torch_key}_tok_s_eager"),
                &format!("{torch_key}_tok_s_sdpa"),
            ],
        );
        println!(
            "| {label} | {:.0} | {:.3} | {:.3} | {} | {:.0} |",
            m.tok_s,
            m.wall_s_per_step,
            m.cpu_s_per_step,
            ratio(m.tok_s, torch_tok_s),
            m.rss_mb
        );
        rows.push(serde_json::json!({"step": label, "tok_s": m.tok_s,
            "wall_s_per_step": m.wall_s_per_step, "cpu_s_per_step": m.cpu_s_per_step,
            "peak_rss_mb": m.rss_mb, "torch_tok_s": torch_tok_s}));
    }
    let first_loss = first_loss.context("no DPO step ran")?;
    println!("\nThe first DPO step's loss: {first_loss:.6} (ln 2 = 0.693147: policy = reference).");
    if let Some(p) = &a.json {
        crate::util::fsx::atomic_write_json(
            p,
            &serde_json::json!({"params": n_params, "pairs": a.batch, "seq": a.seq,
                "dpo_beta": dpo.dpo_beta, "first_dpo_loss": first_loss, "rows": rows}),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_estimate_matches_a_measured_run() {
        // The issue's shape: 4 layers, hidden 896 (14 heads), ff 4864, vocab 151936,
        // seq 256, batch 2, 337M parameters; every kernel on it peaked at 5.9 GB.
        let cfg = ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":151936,"hidden_size":896,
            "intermediate_size":4864,"num_hidden_layers":4,"num_attention_heads":14,
            "num_key_value_heads":14,"rms_norm_eps":1e-6,"max_position_embeddings":4096,
            "tie_word_embeddings":false}"#,
        )
        .unwrap();
        let n = 337_380_224;
        let fused = step_memory_bytes(&cfg, n, 2, 256, &Kernel::ALL) + 4.0 * n as f64;
        assert!(
            (5.9e9..5.9e9 * 1.15).contains(&fused),
            "estimate {fused:.3e} B, measured 5.9e9"
        );
        // The reference path keeps more; every kernel switched on lowers the estimate.
        let mut last = f64::MAX;
        for (_, on) in kernel_steps() {
            let b = step_memory_bytes(&cfg, n, 2, 256, &on);
            assert!(b <= last, "{on:?}");
            last = b;
        }
        let activations = |on: &[Kernel]| step_memory_bytes(&cfg, n, 2, 256, on) - 12.0 * n as f64;
        assert!(activations(&[]) > 2.0 * activations(&Kernel::ALL));
    }
}
