//! The libtorch backend (`--features torch`): the model of `model::llama` on libtorch's
//! kernels (cuBLAS, FlashAttention through sdpa, bf16) on a CUDA GPU or the CPU, with an
//! optional LoRA adapter (then only the adapter trains and is saved, in PEFT's format). Loading,
//! saving and checkpoints go through `model::checkpoint` (host f32 copies), so files, names
//! and dtypes are the fused path's. libtorch errors (a C++ exception surfaces as a tch
//! panic) become errors that say what was running, with advice on an out-of-memory.

pub mod bench;
mod model;
mod optim;

pub use model::{TorchLora, TorchWeights};

use super::{DeviceSpec, LanguageModel, Precision};
use crate::model::generate::{
    check_logits, check_request, pick, warn_context_stops, GenConfig, Rows,
};
use crate::model::lora::LoraDropout;
use crate::model::{LoadedModel, ModelConfig, TextTokenizer};
use crate::train::batch::Batch;
use crate::train::driver::{Trainee, Weigh};
use crate::train::optim::{AdamWConfig, StepSettings};
use anyhow::{bail, Context, Result};
use model::Decoder;
use optim::TorchAdamW;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub struct TorchModel {
    core: Core,
    tokenizer: TextTokenizer,
    /// Where the tokenizer and side files are copied from on save.
    dir: PathBuf,
    opt: Option<TorchAdamW>,
}

/// The model without its optimizer (so a step can borrow both).
struct Core {
    cfg: ModelConfig,
    weights: TorchWeights,
    device: Device,
    precision: Precision,
    /// Recompute each block in the backward (`--grad-checkpoint`).
    grad_checkpoint: bool,
    /// A LoRA adapter: then only its tensors train (the base is frozen).
    lora: Option<TorchLora>,
}

/// The tch device for a spec, checked to exist.
pub fn tch_device(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !tch::Cuda::is_available() {
                bail!(
                    "--device {spec}: libtorch sees no CUDA GPU (is the NVIDIA driver loaded, and is \
                     the libtorch on LD_LIBRARY_PATH a CUDA build? a CPU-only torch wheel has no CUDA)"
                );
            }
            let count = tch::Cuda::device_count() as usize;
            if n >= count {
                bail!(
                    "--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{}",
                    count.saturating_sub(1)
                );
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// Run libtorch work, turning its panics (C++ exceptions) into errors.
fn guard<T>(what: &str, hint: impl FnOnce() -> String, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            let first = msg.lines().next().unwrap_or("").to_string();
            if msg.contains("out of memory") {
                bail!(
                    "libtorch ran out of memory during {what}: {}. {first}",
                    hint()
                );
            }
            bail!("libtorch failed during {what}: {first}")
        }
    }
}

/// [`check_logits`] of each unfinished row of a step's `(b, vocab)` logits: one reduction on
/// the device, and a row copied to the host only to name what is wrong with it.
fn check_step_logits(logits: &Tensor, done: &[bool]) -> Result<()> {
    let bad = logits
        .isnan()
        .logical_or(&logits.isposinf())
        .any_dim(-1, false)
        .logical_or(&logits.isneginf().all_dim(-1, false))
        .to_kind(Kind::Int64);
    let bad = Vec::<i64>::try_from(&bad.to_device(Device::Cpu))?;
    for (r, (&b, &d)) in bad.iter().zip(done).enumerate() {
        if b != 0 && !d {
            check_logits(&to_host(&logits.get(r as i64))?)?;
        }
    }
    Ok(())
}

/// Host f32 data of a tensor.
fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
        .view([-1]);
    Ok(Vec::<f32>::try_from(&flat)?)
}

impl TorchModel {
    /// Move a model loaded by `model::checkpoint` (f32, CPU) onto `device`.
    pub fn from_loaded(lm: LoadedModel, device: DeviceSpec, precision: Precision) -> Result<Self> {
        let dev = tch_device(device)?;
        if dev == Device::Cpu {
            // libtorch's own pool, as wide as elastica's.
            tch::set_num_threads(rayon::current_num_threads() as i32);
        }
        let hint = || format!("the model has {} parameters", lm.model.cfg.num_params());
        // With an adapter the base is frozen: no gradient, no AdamW state for it.
        let adapter = lm.model.adapter();
        let weights = to_device(&lm.model.params, dev, adapter.is_none(), hint)?;
        let lora = match adapter {
            Some(a) => Some(TorchLora {
                weights: to_device(&a.params, dev, true, hint)?,
                scales: a
                    .params
                    .iter()
                    .filter_map(|(n, _)| n.strip_suffix(".lora_A.weight"))
                    .map(|m| Ok((m.to_string(), a.scale_of(m)?)))
                    .collect::<Result<_>>()?,
                cfg: a.cfg.clone(),
                base_model: a.base_model.clone(),
                layout: a.layout.clone(),
                seed: a.seed,
            }),
            None => None,
        };
        Ok(TorchModel {
            core: Core {
                cfg: lm.model.cfg.clone(),
                weights,
                device: dev,
                precision,
                grad_checkpoint: false,
                lora,
            },
            tokenizer: lm.tokenizer,
            dir: lm.dir,
            opt: None,
        })
    }
}

/// Host parameters as f32 tensors on `dev`, tracking gradients when `train`.
fn to_device(
    params: &crate::model::Params,
    dev: Device,
    train: bool,
    hint: impl Fn() -> String,
) -> Result<TorchWeights> {
    let mut entries = Vec::new();
    for (name, var) in params.iter() {
        let data = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let shape: Vec<i64> = var.dims().iter().map(|&d| d as i64).collect();
        let t = guard("loading the weights", &hint, || {
            Ok(Tensor::from_slice(&data)
                .view(shape.as_slice())
                .to_device(dev))
        })?;
        entries.push((name.clone(), t.set_requires_grad(train)));
    }
    Ok(TorchWeights::new(entries))
}

/// `w` as host f32 `Params` (for saving through `model::checkpoint`).
fn host_params(w: &TorchWeights) -> Result<crate::model::Params> {
    let mut entries = Vec::new();
    for (name, t) in w.names.iter().zip(&w.tensors) {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let c = candle_core::Tensor::from_vec(to_host(t)?, shape, &candle_core::Device::Cpu)?;
        entries.push((name.clone(), candle_core::Var::from_tensor(&c)?));
    }
    Ok(crate::model::Params::new(entries))
}

impl Core {
    /// Clip the accumulated gradients, refuse a non-finite norm (before the update, the
    /// gradients cleared) and take the AdamW step; returns the norm before clipping.
    fn clip_and_update(&self, adam: &mut TorchAdamW, clip: f64, lr: f64) -> Result<f64> {
        let norm = TorchAdamW::clip(self.trainable(), clip);
        if !norm.is_finite() {
            self.zero_grads();
            bail!(
                "the gradient norm is {norm} (not finite); lower the learning rate or set --clip"
            );
        }
        adam.update(self.trainable(), lr);
        self.zero_grads();
        Ok(norm)
    }

    /// What training updates: the adapter's tensors when there is one, else the weights.
    fn trainable(&self) -> &TorchWeights {
        match &self.lora {
            Some(l) => &l.weights,
            None => &self.weights,
        }
    }

    /// The adapter's dropout in micro-batch `micro` of the step after `step` AdamW updates.
    fn lora_dropout(&self, step: u64, micro: u64) -> Option<LoraDropout> {
        let l = self.lora.as_ref()?;
        LoraDropout::of(&l.cfg, l.seed, step, micro)
    }

    fn zero_grads(&self) {
        for p in &self.trainable().tensors {
            p.shallow_clone().zero_grad();
        }
    }

    fn decoder(&self) -> Decoder<'_> {
        let kind = match self.precision {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        };
        Decoder::new(&self.cfg, &self.weights, self.device, kind).with_lora(self.lora.as_ref())
    }

    fn oom_hint(&self, b: usize, t: usize) -> String {
        format!(
            "model of {:.2}B parameters, batch {b} x {t} tokens, {:?}; try --grad-checkpoint, a \
             smaller --batch-size with a larger --grad-accum, a smaller --max-length, --dtype \
             bf16, or PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
            self.cfg.num_params() as f64 / 1e9,
            self.precision
        )
    }

    fn ids(&self, ids: &[u32], b: usize, t: usize) -> Tensor {
        let v: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        Tensor::from_slice(&v)
            .view([b as i64, t as i64])
            .to_device(self.device)
    }

    fn batch_tensors(&self, batch: &Batch) -> Result<(Tensor, Tensor, usize, usize)> {
        let (b, t) = batch.ids.dims2()?;
        let ids: Vec<u32> = batch.ids.flatten_all()?.to_vec1()?;
        let targets: Vec<i64> = batch.targets.flatten_all()?.to_vec1()?;
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            bail!("token id {bad} is out of the vocabulary ({vocab} tokens)");
        }
        let targets = Tensor::from_slice(&targets).to_device(self.device);
        Ok((self.ids(&ids, b, t), targets, b, t))
    }

    /// Base and adapter f32 parameters, in that order: what `weights_sha256` fingerprints
    /// (as `train::sft::weights_fingerprint` does on the fused path).
    fn host_all(&self) -> Result<crate::model::Params> {
        let mut all = host_params(&self.weights)?;
        if let Some(l) = &self.lora {
            let a = host_params(&l.weights)?;
            all = crate::model::Params::new(
                all.iter()
                    .chain(a.iter())
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect(),
            );
        }
        Ok(all)
    }
}

impl TorchModel {
    /// Generation of one batch, as `model::generate` does it: left padding, positions
    /// counting real tokens, one RNG stream per prompt index, finished rows fed pad tokens
    /// that nothing attends to, rows stopped where the model's context ends (with how many
    /// were). Greedy picks the argmax on the device.
    fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        first_index: usize,
        cfg: &GenConfig,
    ) -> Result<(Vec<Vec<u32>>, usize)> {
        let context = self.core.cfg.max_position_embeddings;
        let dec = self.core.decoder().with_cast_weights();
        let (eos, pad) = (self.tokenizer.eos_ids(), self.tokenizer.pad_id());
        let (mut rows, ids, pos) = Rows::start(prompts, first_index, pad, cfg.seed)?;
        let (b, max_len) = (prompts.len(), ids.len() / prompts.len());
        let mut cache = dec.new_cache(b as i64, (max_len + cfg.max_new_tokens) as i64);
        let positions = |p: &[u32], t: usize| {
            let p: Vec<f32> = p.iter().map(|&x| x as f32).collect();
            Tensor::from_slice(&p)
                .view([b as i64, t as i64])
                .to_device(self.core.device)
        };
        let mut logits = dec.forward_cached(
            &self.core.ids(&ids, b, max_len),
            &positions(&pos, max_len),
            &rows.key_mask,
            &mut cache,
        )?;
        let mut at_context = 0;
        for _ in 0..cfg.max_new_tokens {
            at_context += rows.stop_at(context);
            check_step_logits(&logits, &rows.done)?;
            let step = if cfg.temperature == 0.0 {
                let am = logits.argmax(-1, false).to_device(Device::Cpu);
                let picked = Vec::<i64>::try_from(&am)?;
                rows.step(eos, pad, |r, _| picked[r] as u32)
            } else {
                let v = self.core.cfg.vocab_size;
                let host = to_host(&logits)?;
                rows.step(eos, pad, |r, rng| pick(&host[r * v..(r + 1) * v], cfg, rng))
            };
            let Some((step_ids, next)) = step else {
                break;
            };
            logits = dec.forward_cached(
                &self.core.ids(&step_ids, b, 1),
                &positions(&next, 1),
                &rows.key_mask,
                &mut cache,
            )?;
        }
        Ok((rows.outputs, at_context))
    }
}

impl TorchModel {
    /// Run one training step `f` on the decoder with the AdamW state (made at the first step),
    /// libtorch's panics and out-of-memory turned into errors that name the step's batch.
    fn train_step<T>(
        &mut self,
        micro: &[Batch],
        s: &StepSettings,
        f: impl FnOnce(&Core, &mut TorchAdamW) -> Result<T>,
    ) -> Result<T> {
        let (mb, mt) = micro.first().map_or(Ok((0, 0)), |b| b.ids.dims2())?;
        let adam = self.opt.get_or_insert_with(|| TorchAdamW::new(s.adamw));
        let core = &self.core;
        guard(
            "a training step",
            || core.oom_hint(mb, mt),
            || f(core, adam),
        )
    }
}

impl Trainee for TorchModel {
    fn pad_id(&self) -> u32 {
        self.tokenizer.pad_id()
    }
    fn sft_step(&mut self, micro: &[Batch], s: &StepSettings) -> Result<(f64, f64)> {
        let n_step: usize = micro.iter().map(|b| b.n_targets).sum();
        if n_step == 0 {
            return Ok((0.0, 0.0));
        }
        self.train_step(micro, s, |core, adam| {
            let mut nll_total = 0.0;
            let scale = 1.0 / n_step as f64;
            for (i, b) in micro.iter().enumerate().filter(|(_, b)| b.n_targets > 0) {
                let (ids, targets, _, _) = core.batch_tensors(b)?;
                // LoRA dropout masks keyed by the update count, as on the fused path.
                let drop = core.lora_dropout(adam.step, i as u64);
                let dec = core.decoder().with_dropout(drop.as_ref());
                if core.grad_checkpoint {
                    let nll =
                        dec.loss_backward_checkpointed(&ids, |logits| nll(logits, &targets), scale);
                    nll_total += nll.double_value(&[]);
                    continue;
                }
                let nll = nll(&dec.forward(&ids), &targets);
                nll_total += nll.double_value(&[]);
                // Scaled in f32 and seeded with 1, as the fused path's autograd does.
                (nll * scale).backward();
            }
            if !nll_total.is_finite() {
                core.zero_grads();
                bail!(
                    "the loss is {nll_total} (not finite); lower the learning rate or check \
                     the weights and data"
                );
            }
            let norm = core.clip_and_update(adam, s.clip, s.lr)?;
            Ok((nll_total, norm))
        })
    }
    fn seq_nll(&self, batch: &Batch) -> Result<Vec<f64>> {
        let (ids, targets, b, t) = self.core.batch_tensors(batch)?;
        guard(
            "a forward pass",
            || self.core.oom_hint(b, t),
            || tch::no_grad(|| seq_nll(&self.core.decoder().forward(&ids), &targets)),
        )
    }
    fn weighted_step(
        &mut self,
        micro: &[Batch],
        weigh: &mut Weigh<'_>,
        s: &StepSettings,
    ) -> Result<f64> {
        if self.core.grad_checkpoint {
            bail!("--grad-checkpoint applies to SFT steps only; the DPO step keeps every block's activations");
        }
        self.train_step(micro, s, |core, adam| {
            for (m, b) in micro.iter().enumerate() {
                let (ids, targets, _, _) = core.batch_tensors(b)?;
                let drop = core.lora_dropout(adam.step, m as u64);
                let dec = core.decoder().with_dropout(drop.as_ref());
                let per = per_seq_nll(&dec.forward(&ids), &targets);
                let host: Vec<f64> = Vec::<f64>::try_from(
                    &per.detach().to_kind(Kind::Double).to_device(Device::Cpu),
                )?;
                let w = match weigh(m, &host) {
                    Ok(w) => w,
                    Err(e) => {
                        core.zero_grads();
                        return Err(e);
                    }
                };
                anyhow::ensure!(
                    w.len() == host.len(),
                    "{} weights for {} sequences",
                    w.len(),
                    host.len()
                );
                let w = Tensor::from_slice(&w.iter().map(|&x| x as f32).collect::<Vec<_>>())
                    .to_device(core.device);
                (per * w).sum(Kind::Float).backward();
            }
            core.clip_and_update(adam, s.clip, s.lr)
        })
    }
}

impl LanguageModel for TorchModel {
    fn backend_name(&self) -> &'static str {
        "torch"
    }
    fn device_name(&self) -> String {
        match self.core.device {
            Device::Cuda(n) => format!("cuda:{n}"),
            _ => "cpu".into(),
        }
    }
    fn config(&self) -> &ModelConfig {
        &self.core.cfg
    }
    fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
    fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        guard(
            "a forward pass",
            || self.core.oom_hint(b, t),
            || tch::no_grad(|| to_host(&self.core.decoder().forward(&self.core.ids(ids, b, t)))),
        )
    }
    fn nll_sum(&self, batch: &Batch) -> Result<f64> {
        let (ids, targets, b, t) = self.core.batch_tensors(batch)?;
        guard(
            "a forward pass",
            || self.core.oom_hint(b, t),
            || {
                Ok(tch::no_grad(|| {
                    let logits = self.core.decoder().forward(&ids);
                    nll(&logits, &targets).double_value(&[])
                }))
            },
        )
    }
    fn token_logprobs(&self, batch: &Batch) -> Result<Vec<f32>> {
        let (ids, targets, b, t) = self.core.batch_tensors(batch)?;
        guard(
            "a forward pass",
            || self.core.oom_hint(b, t),
            || {
                tch::no_grad(|| {
                    let logits = self.core.decoder().forward(&ids);
                    let v = logits.size()[2];
                    let logp = logits.view([-1, v]).log_softmax(-1, Kind::Float);
                    let counted = targets.ge(0);
                    let idx = targets.clamp_min(0).unsqueeze(1);
                    let picked = logp.gather(1, &idx, false).squeeze_dim(1);
                    to_host(&(picked * counted.to_kind(Kind::Float)))
                })
            },
        )
    }
    fn set_grad_checkpoint(&mut self, on: bool) -> Result<()> {
        self.core.grad_checkpoint = on;
        Ok(())
    }
    fn adapter_config(&self) -> Option<&crate::model::lora::LoraConfig> {
        self.core.lora.as_ref().map(|l| &l.cfg)
    }
    fn weights_sha256(&self) -> Result<String> {
        crate::train::sft::params_fingerprint(&self.core.host_all()?)
    }
    fn adam_step(&self) -> u64 {
        self.opt.as_ref().map_or(0, |o| o.step)
    }
    fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Result<Vec<Vec<u32>>> {
        let context = self.core.cfg.max_position_embeddings;
        check_request(prompts, cfg, context)?;
        let mut at_context = 0;
        let mut out = Vec::with_capacity(prompts.len());
        for (i, chunk) in prompts.chunks(cfg.batch_size).enumerate() {
            let t = chunk.iter().map(|p| p.len()).max().unwrap_or(0) + cfg.max_new_tokens;
            let r = guard(
                "generation",
                || self.core.oom_hint(chunk.len(), t),
                || tch::no_grad(|| self.generate_batch(chunk, i * cfg.batch_size, cfg)),
            )?;
            out.extend(r.0);
            at_context += r.1;
        }
        warn_context_stops(at_context, prompts.len(), context, cfg);
        Ok(out)
    }
    /// A LoRA model saves its adapter (PEFT's format, f32), not the frozen base, as
    /// `train::sft::save_trained` does.
    fn save(&self, out: &Path, dtype: Option<&str>) -> Result<()> {
        if let Some(l) = &self.core.lora {
            let adapter = crate::model::lora::Adapter {
                cfg: l.cfg.clone(),
                params: host_params(&l.weights)?,
                base_model: l.base_model.clone(),
                layout: l.layout.clone(),
                seed: l.seed,
            };
            return adapter.save(out);
        }
        let model = crate::model::Llama::new(
            self.core.cfg.clone(),
            host_params(&self.core.weights)?,
            &candle_core::Device::Cpu,
        )?;
        crate::model::checkpoint::save_model(&model, &self.dir, out, dtype)
    }
    fn save_train_state(&self, dir: &Path) -> Result<()> {
        let params = host_params(self.core.trainable())?;
        crate::model::checkpoint::save_params(
            &params,
            candle_core::DType::F32,
            &dir.join("model.safetensors"),
        )?;
        let mut moments = Vec::new();
        if let Some(o) = &self.opt {
            let w = self.core.trainable();
            for ((name, p), (m, v)) in w.names.iter().zip(&w.tensors).zip(&o.moments) {
                let shape: Vec<usize> = p.size().iter().map(|&d| d as usize).collect();
                let cpu = &candle_core::Device::Cpu;
                moments.push((
                    format!("exp_avg.{name}"),
                    candle_core::Tensor::from_vec(to_host(m)?, shape.clone(), cpu)?,
                ));
                moments.push((
                    format!("exp_avg_sq.{name}"),
                    candle_core::Tensor::from_vec(to_host(v)?, shape, cpu)?,
                ));
            }
        }
        crate::model::checkpoint::save_tensors(&moments, &dir.join("optimizer.safetensors"))
    }
    fn load_train_state(&mut self, dir: &Path, opt: &AdamWConfig, adam_step: u64) -> Result<()> {
        let (weights, moments) = super::fused::read_train_state(dir)?;
        let dev = self.core.device;
        let to_dev = |t: &candle_core::Tensor, like: &Tensor, what: &str| -> Result<Tensor> {
            anyhow::ensure!(
                t.elem_count() as i64 == like.numel() as i64,
                "{what} in {} has the wrong size",
                dir.display()
            );
            let v = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(Tensor::from_slice(&v)
                .view(like.size().as_slice())
                .to_device(dev))
        };
        let mut adam = TorchAdamW::new(*opt);
        adam.step = adam_step;
        let trainable = self.core.trainable();
        for (name, p) in trainable.names.iter().zip(&trainable.tensors) {
            let w = weights
                .get(name)
                .with_context(|| format!("checkpoint {} lacks tensor \"{name}\"", dir.display()))?;
            let w = to_dev(w, p, &format!("tensor \"{name}\""))?;
            tch::no_grad(|| p.shallow_clone().copy_(&w));
            if adam_step > 0 {
                let get = |k: String| -> Result<Tensor> {
                    let t = moments
                        .get(&k)
                        .with_context(|| format!("optimizer state lacks \"{k}\""))?;
                    to_dev(t, p, &k)
                };
                adam.moments.push((
                    get(format!("exp_avg.{name}"))?,
                    get(format!("exp_avg_sq.{name}"))?,
                ));
            }
        }
        self.opt = Some(adam);
        Ok(())
    }
}

/// Summed NLL of each sequence (b,) over its targets that are not -100, from f32 logits
/// (b, t, vocab).
fn per_seq_nll(logits: &Tensor, targets: &Tensor) -> Tensor {
    let size = logits.size();
    let (b, t, v) = (size[0], size[1], size[2]);
    logits
        .view([-1, v])
        .cross_entropy_loss::<Tensor>(targets, None, tch::Reduction::None, -100, 0.0)
        .view([b, t])
        .sum_dim_intlist(&[1i64][..], false, Kind::Float)
}

/// [`per_seq_nll`] on the host, in f64.
fn seq_nll(logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
    let per = per_seq_nll(logits, targets).to_kind(Kind::Double);
    Ok(Vec::<f64>::try_from(&per.to_device(Device::Cpu))?)
}

/// Summed NLL over targets that are not -100, from f32 logits (b, t, vocab).
fn nll(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits
        .view([-1, v])
        .cross_entropy_loss::<Tensor>(targets, None, tch::Reduction::Sum, -100, 0.0)
}
