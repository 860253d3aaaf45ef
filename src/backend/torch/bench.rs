//! `elastica bench` on the libtorch backend (`--backend torch`, `--device cuda`): tok/s of
//! the training step (forward, backward, AdamW), of a no-grad forward and of greedy
//! generation, peak GPU memory, and MFU = 6 N tok/s over the GPU's dense bf16 (or tf32 for
//! f32) peak, for any Llama/Qwen2 shape. Weights are random (std 0.02, made on the device).

use super::model::{Decoder, TorchWeights};
use super::optim::TorchAdamW;
use crate::backend::{DeviceSpec, Precision};
use crate::model::params::{param_specs, InitKind};
use crate::model::ModelConfig;
use crate::train::optim::AdamWConfig;
use anyhow::Result;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct Shape {
    pub cfg: ModelConfig,
    pub batch: usize,
    pub seq: usize,
    pub steps: usize,
    pub warmup: usize,
    pub gen_tokens: usize,
    /// Dense peak in TFLOP/s; None = from the device name.
    pub peak_tflops: Option<f64>,
    /// Time the training step with gradient checkpointing (`--grad-checkpoint`).
    pub grad_checkpoint: bool,
}

/// The GPU's name, from nvidia-smi (None on the CPU or without nvidia-smi).
pub fn gpu_name(n: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name",
            "--format=csv,noheader",
            "-i",
            &n.to_string(),
        ])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Dense peak TFLOP/s of a GPU by name, for bf16 and for f32 (tf32 off: plain FP32).
/// H100/H200 SXM: 989 bf16, 67 fp32 (NVIDIA data sheets); PCIe/NVL H100: 756 / 51.
pub fn peak_for(name: &str, precision: Precision) -> Option<(f64, &'static str)> {
    let n = name.to_uppercase();
    let (bf16, f32, which) = if n.contains("H100") && (n.contains("PCIE") || n.contains("NVL")) {
        (756.0, 51.0, "H100 PCIe/NVL")
    } else if n.contains("H100") || n.contains("H200") || n.contains("GH200") {
        (989.0, 67.0, "H100/H200 SXM")
    } else if n.contains("A100") {
        (312.0, 19.5, "A100")
    } else {
        return None;
    };
    Some((
        if precision == Precision::Bf16 {
            bf16
        } else {
            f32
        },
        which,
    ))
}

/// This process's GPU memory in MiB (nvidia-smi's per-process figure: the caching
/// allocator's reserved memory plus the CUDA context), or the device total if the process
/// is not listed (a container's own PID namespace).
fn gpu_mem_mib(n: usize) -> Option<f64> {
    let pid = std::process::id().to_string();
    let q = |args: &[&str]| -> Option<String> {
        let o = std::process::Command::new("nvidia-smi")
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).to_string())
    };
    if let Some(s) = q(&[
        "--query-compute-apps=pid,used_memory",
        "--format=csv,noheader,nounits",
    ]) {
        for line in s.lines() {
            let mut f = line.split(',').map(str::trim);
            if f.next() == Some(pid.as_str()) {
                return f.next()?.parse().ok();
            }
        }
    }
    q(&[
        "--query-gpu=memory.used",
        "--format=csv,noheader,nounits",
        "-i",
        &n.to_string(),
    ])?
    .trim()
    .parse()
    .ok()
}

fn sync(dev: Device) {
    if let Device::Cuda(n) = dev {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Random weights for `cfg` on `dev` (std 0.02 where the model initialises with a normal),
/// with gradients on.
fn random_weights(cfg: &ModelConfig, dev: Device) -> TorchWeights {
    let entries: Vec<(String, Tensor)> = param_specs(cfg)
        .into_iter()
        .map(|s| {
            let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
            let t = match s.init {
                InitKind::Normal => Tensor::randn(dims.as_slice(), (Kind::Float, dev)) * 0.02,
                InitKind::Zeros => Tensor::zeros(dims.as_slice(), (Kind::Float, dev)),
                InitKind::Ones => Tensor::ones(dims.as_slice(), (Kind::Float, dev)),
            };
            (s.name, t.set_requires_grad(true))
        })
        .collect();
    TorchWeights::new(entries)
}

/// What the three timings share: the model, its batch of random tokens, the device.
struct Bench<'a> {
    shape: &'a Shape,
    w: TorchWeights,
    dev: Device,
    kind: Kind,
    ids: Tensor,
    /// What a failure (out of memory, mostly) says the run was timing.
    what: String,
}

impl Bench<'_> {
    /// `f` under [`super::guard`], which turns a libtorch failure into an error naming the
    /// benchmark and its size.
    fn guard<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        super::guard(what, || self.what.clone(), f)
    }

    /// Seconds of `shape.steps` training steps after `shape.warmup` untimed ones: mean loss
    /// over the batch (as transformers), backward, clip at 1, AdamW.
    fn train_seconds(&self) -> Result<f64> {
        let dec = Decoder::new(&self.shape.cfg, &self.w, self.dev, self.kind);
        let vocab = self.shape.cfg.vocab_size as i64;
        let targets = self.ids.view([-1]);
        let mut opt = TorchAdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        });
        let mean_loss = |logits: &Tensor| {
            logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(
                &targets,
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            )
        };
        let mut step = || {
            if self.shape.grad_checkpoint {
                let _ = dec.loss_backward_checkpointed(&self.ids, mean_loss, 1.0);
            } else {
                mean_loss(&dec.forward(&self.ids)).backward();
            }
            TorchAdamW::clip(&self.w, 1.0);
            opt.update(&self.w, 1e-5);
            for p in &self.w.tensors {
                p.shallow_clone().zero_grad();
            }
        };
        self.guard("the training benchmark", || {
            for _ in 0..self.shape.warmup {
                step();
            }
            sync(self.dev);
            let t0 = Instant::now();
            for _ in 0..self.shape.steps {
                step();
            }
            sync(self.dev);
            Ok(t0.elapsed().as_secs_f64())
        })
    }

    /// Seconds of `shape.steps` no-grad forwards after one untimed one.
    fn forward_seconds(&self) -> Result<f64> {
        let dec = Decoder::new(&self.shape.cfg, &self.w, self.dev, self.kind);
        self.guard("the forward benchmark", || {
            tch::no_grad(|| {
                let _ = dec.forward(&self.ids);
                sync(self.dev);
                let t0 = Instant::now();
                for _ in 0..self.shape.steps {
                    let _ = dec.forward(&self.ids);
                }
                sync(self.dev);
                Ok(t0.elapsed().as_secs_f64())
            })
        })
    }

    /// Seconds of greedy generation at batch 1: a 16-token prompt, `shape.gen_tokens` new
    /// tokens, no EOS stop; the second of two rounds.
    fn generate_seconds(&self) -> Result<f64> {
        let n_new = self.shape.gen_tokens as i64;
        let vocab = self.shape.cfg.vocab_size as i64;
        let dev = self.dev;
        let dec = Decoder::new(&self.shape.cfg, &self.w, dev, self.kind).with_cast_weights();
        self.guard("the generation benchmark", || {
            tch::no_grad(|| -> Result<f64> {
                let mut secs = 0.0;
                for round in 0..2 {
                    let mut cache = dec.new_cache(1, 16 + n_new);
                    let mut mask = vec![vec![1u32; 16]];
                    let prompt = Tensor::randint_low(2, vocab, [1, 16], (Kind::Int64, dev));
                    let pos = Tensor::arange(16, (Kind::Float, dev)).unsqueeze(0);
                    sync(dev);
                    let t0 = Instant::now();
                    let mut logits = dec.forward_cached(&prompt, &pos, &mask, &mut cache)?;
                    for i in 0..n_new - 1 {
                        let next = logits.argmax(-1, true);
                        mask[0].push(1);
                        let p = Tensor::from_slice(&[(16 + i) as f32])
                            .view([1, 1])
                            .to_device(dev);
                        logits = dec.forward_cached(&next, &p, &mask, &mut cache)?;
                    }
                    // The host reads each token in real use; read the last one here.
                    let _ = logits.argmax(-1, false).int64_value(&[0]);
                    if round == 1 {
                        secs = t0.elapsed().as_secs_f64();
                    }
                }
                Ok(secs)
            })
        })
    }
}

/// This process's GPU memory on a CUDA device (None on the CPU).
fn device_mem_mib(device: DeviceSpec) -> Option<f64> {
    match device {
        DeviceSpec::Cuda(n) => gpu_mem_mib(n),
        DeviceSpec::Cpu => None,
    }
}

/// Run the benchmark; prints a table and returns every figure as JSON.
pub fn run(shape: &Shape, device: DeviceSpec, precision: Precision) -> Result<serde_json::Value> {
    let dev = super::tch_device(device)?;
    if dev == Device::Cpu {
        tch::set_num_threads(rayon::current_num_threads() as i32);
    }
    let cfg = &shape.cfg;
    let n_params = cfg.num_params();
    tch::manual_seed(0);
    let w = random_weights(cfg, dev);
    let kind = if precision == Precision::Bf16 {
        Kind::BFloat16
    } else {
        Kind::Float
    };
    let (b, t) = (shape.batch as i64, shape.seq as i64);
    let ids = Tensor::randint_low(2, cfg.vocab_size as i64, [b, t], (Kind::Int64, dev));
    let name = match device {
        DeviceSpec::Cuda(n) => gpu_name(n).unwrap_or_else(|| "unknown CUDA GPU".into()),
        DeviceSpec::Cpu => "cpu".into(),
    };
    let peak = shape
        .peak_tflops
        .map(|p| (p, "--peak-tflops"))
        .or_else(|| peak_for(&name, precision));
    println!(
        "elastica bench (torch): {} layers, d={}, {} heads / {} kv, ff {}, vocab {}, seq {t}, batch {b}, \
         {:?}, {n_params} params, on {name} ({device})",
        cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
        cfg.intermediate_size, cfg.vocab_size, precision
    );
    let mut out = serde_json::json!({
        "impl": "elastica-torch", "device": device.to_string(), "gpu": name,
        "dtype": format!("{precision:?}").to_lowercase(), "params": n_params,
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads, "ff": cfg.intermediate_size, "vocab": cfg.vocab_size,
        "seq": t, "batch": b, "steps": shape.steps, "grad_checkpoint": shape.grad_checkpoint,
    });
    let bench = Bench {
        shape,
        w,
        dev,
        kind,
        ids,
        what: format!("{:.2}B parameters, batch {b} x {t}", n_params as f64 / 1e9),
    };
    let train_s = bench.train_seconds()?;
    let train_tok_s = (b * t) as f64 * shape.steps as f64 / train_s;
    let mem_train = device_mem_mib(device);
    let mfu = peak.map(|(p, _)| 6.0 * n_params as f64 * train_tok_s / (p * 1e12));
    out["train_tok_s"] = train_tok_s.into();
    out["train_step_s"] = (train_s / shape.steps as f64).into();
    out["gpu_mem_mib_after_train"] = mem_train.into();
    out["mfu_train"] = mfu.into();
    out["peak_tflops"] = peak.map(|p| p.0).into();
    out["peak_source"] = peak.map(|p| p.1).into();
    let fwd_tok_s = (b * t) as f64 * shape.steps as f64 / bench.forward_seconds()?;
    out["forward_tok_s"] = fwd_tok_s.into();
    let gen_tok_s = shape.gen_tokens as f64 / bench.generate_seconds()?;
    out["generate_b1_tok_s"] = gen_tok_s.into();
    out["gpu_mem_mib"] = device_mem_mib(device).into();
    println!("| measure | value |\n|---|---|");
    println!("| training step tok/s | {train_tok_s:.0} |");
    println!("| training step s | {:.3} |", train_s / shape.steps as f64);
    match (mfu, peak) {
        (Some(m), Some((p, src))) => println!(
            "| MFU (6 N tok/s over {p} TFLOP/s, {src}) | {:.1}% |",
            m * 100.0
        ),
        _ => println!("| MFU | - (unknown peak for \"{name}\"; give --peak-tflops) |"),
    }
    println!("| forward tok/s | {fwd_tok_s:.0} |");
    println!("| greedy generation, batch 1, tok/s | {gen_tok_s:.1} |");
    if let Some(m) = mem_train {
        println!("| GPU memory after training, MiB (nvidia-smi) | {m:.0} |");
    }
    Ok(out)
}
