//! AdamW with decoupled weight decay, step for step the arithmetic of `torch.optim.AdamW`
//! (single-tensor path, f32): decay, lerp'd first moment, second moment, bias corrections.
//! Weight decay applies to tensors of rank >= 2 only (transformers' Trainer leaves norms and
//! biases undecayed). Moments live in plain vectors so they can be checkpointed.

use crate::model::fused::{self, Kernel};
use crate::model::Params;
use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, CpuStorage, Device, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// What one optimizer update takes besides the gradients: AdamW's settings (its state is
/// created from them at the first step), the learning rate and the gradient-norm clip.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    pub adamw: AdamWConfig,
    pub lr: f64,
    pub clip: f64,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Number of updates done so far.
    pub step: u64,
    m: HashMap<String, Vec<f32>>,
    v: HashMap<String, Vec<f32>>,
}

/// Gradients of every parameter as flat f32 vectors, in parameter order.
pub struct Grads(pub Vec<(String, Vec<f32>)>);

impl Grads {
    /// Collect from a GradStore (zeros for parameters the loss does not reach).
    pub fn from_store(params: &Params, store: &GradStore) -> Result<Self> {
        let mut out = Vec::new();
        for (name, var) in params.iter() {
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => vec![0.0; var.elem_count()],
            };
            out.push((name.clone(), g));
        }
        Ok(Grads(out))
    }

    /// Add another micro-batch's gradients.
    pub fn add(&mut self, other: Grads) {
        for ((_, a), (_, b)) in self.0.iter_mut().zip(other.0) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    }

    /// Global L2 norm (accumulated in f64).
    pub fn global_norm(&self) -> f64 {
        self.0
            .iter()
            .flat_map(|(_, g)| g.iter())
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt()
    }

    /// torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
    /// Returns the norm before clipping.
    pub fn clip(&mut self, max_norm: f64) -> f64 {
        let norm = self.global_norm();
        if max_norm > 0.0 {
            let coef = (max_norm / (norm + 1e-6)) as f32;
            if coef < 1.0 {
                self.0
                    .iter_mut()
                    .for_each(|(_, g)| g.iter_mut().for_each(|x| *x *= coef));
            }
        }
        norm
    }
}

/// The per-step scalars of the update.
#[derive(Clone, Copy)]
struct StepConsts {
    bc2_sqrt: f32,
    step_size: f32,
    w1: f32,
    b2: f32,
    one_minus_b2: f32,
    eps: f32,
    keep: f32,
    decay: bool,
}

/// Elements per parallel task of the update (elementwise, so the split changes no result).
const CHUNK: usize = 32 * 1024;

impl StepConsts {
    /// torch's single-tensor AdamW, element by element.
    fn apply(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        if p.len() <= CHUNK {
            self.apply_chunk(p, m, v, g);
        } else {
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| self.apply_chunk(p, m, v, g));
        }
    }

    fn apply_chunk(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        for i in 0..p.len() {
            if self.decay {
                p[i] *= self.keep;
            }
            // torch.lerp with weight < 0.5: m + w * (g - m)
            m[i] += self.w1 * (g[i] - m[i]);
            v[i] = v[i] * self.b2 + self.one_minus_b2 * g[i] * g[i];
            let denom = v[i].sqrt() / self.bc2_sqrt + self.eps;
            p[i] += -self.step_size * (m[i] / denom);
        }
    }
}

/// The update as an in-place op on the parameter's storage (no copy out and back).
struct InPlace<'a> {
    state: Mutex<(&'a mut [f32], &'a mut [f32])>,
    g: &'a [f32],
    k: StepConsts,
}

impl InplaceOp1 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("AdamW: parameter is not contiguous".into()))?;
        let p = match storage {
            CpuStorage::F32(p) => &mut p[a..b],
            _ => candle_core::bail!("AdamW: parameter is not f32"),
        };
        let mut st = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("AdamW: state lock poisoned".into()))?;
        let (m, v) = &mut *st;
        self.k.apply(p, m, v, self.g);
        Ok(())
    }
}

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update of every parameter with learning rate `lr`. On CPU f32 the parameters are
    /// updated in place ([`Kernel::AdamW`]); otherwise (or with the kernel off) each is read
    /// out, updated and written back. Both do the same arithmetic, element by element.
    pub fn update(&mut self, params: &Params, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let k = StepConsts {
            bc2_sqrt: (1.0 - c.beta2.powi(self.step as i32)).sqrt() as f32,
            step_size: (lr / bc1) as f32,
            w1: (1.0 - c.beta1) as f32,
            b2: c.beta2 as f32,
            one_minus_b2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
            keep: 1.0,
            decay: false,
        };
        for (name, g) in &grads.0 {
            let var = params.get(name)?;
            let decay = if var.rank() >= 2 { c.weight_decay } else { 0.0 };
            let k = StepConsts {
                keep: (1.0 - lr * decay) as f32,
                decay: decay != 0.0,
                ..k
            };
            let n = var.elem_count();
            let m = self.m.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
            let v = self.v.entry(name.clone()).or_insert_with(|| vec![0.0; n]);
            if m.len() != n || v.len() != n || g.len() != n {
                bail!("optimizer state of \"{name}\" does not match the parameter's size {n}");
            }
            let t = var.as_tensor();
            if fused::usable(Kernel::AdamW, &[t]) && t.is_contiguous() {
                t.inplace_op1(&InPlace {
                    state: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                    g,
                    k,
                })?;
            } else {
                let mut p = t.flatten_all()?.to_vec1::<f32>()?;
                k.apply(&mut p, m, v, g);
                var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
            }
        }
        Ok(())
    }

    /// Moments as named tensors for a checkpoint (`exp_avg.NAME`, `exp_avg_sq.NAME`).
    pub fn state_tensors(&self, params: &Params) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, var) in params.iter() {
            if let (Some(m), Some(v)) = (self.m.get(name), self.v.get(name)) {
                out.push((
                    format!("exp_avg.{name}"),
                    Tensor::from_slice(m, var.shape(), &Device::Cpu)?,
                ));
                out.push((
                    format!("exp_avg_sq.{name}"),
                    Tensor::from_slice(v, var.shape(), &Device::Cpu)?,
                ));
            }
        }
        Ok(out)
    }

    /// Restore moments saved by [`AdamW::state_tensors`].
    pub fn load_state(
        &mut self,
        params: &Params,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        self.step = step;
        self.m.clear();
        self.v.clear();
        if step == 0 {
            return Ok(());
        }
        for (name, var) in params.iter() {
            let get = |k: String| -> Result<Vec<f32>> {
                let t = tensors
                    .get(&k)
                    .with_context(|| format!("optimizer state lacks \"{k}\""))?;
                if t.elem_count() != var.elem_count() {
                    bail!("optimizer state \"{k}\" has the wrong size");
                }
                Ok(t.flatten_all()?.to_vec1::<f32>()?)
            };
            self.m.insert(name.clone(), get(format!("exp_avg.{name}"))?);
            self.v
                .insert(name.clone(), get(format!("exp_avg_sq.{name}"))?);
        }
        Ok(())
    }
}
