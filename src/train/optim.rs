//! AdamW with decoupled weight decay, step for step the arithmetic of `torch.optim.AdamW`
//! (single-tensor path, f32): decay, lerp'd first moment, second moment, bias corrections.
//! Weight decay applies to tensors of rank >= 2 only (transformers' Trainer leaves norms and
//! biases undecayed). Moments live in plain vectors so they can be checkpointed.

use crate::model::Params;
use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, Device, Tensor};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
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

impl AdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        AdamW {
            cfg,
            step: 0,
            m: HashMap::new(),
            v: HashMap::new(),
        }
    }

    /// One update of every parameter with learning rate `lr`.
    pub fn update(&mut self, params: &Params, grads: &Grads, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt() as f32;
        let step_size = (lr / bc1) as f32;
        let w1 = (1.0 - c.beta1) as f32;
        let (b2, one_minus_b2) = (c.beta2 as f32, (1.0 - c.beta2) as f32);
        let eps = c.eps as f32;
        for (name, g) in &grads.0 {
            let var = params.get(name)?;
            let decay = if var.rank() >= 2 { c.weight_decay } else { 0.0 };
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let m = self
                .m
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; p.len()]);
            let v = self
                .v
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; p.len()]);
            let keep = (1.0 - lr * decay) as f32;
            for i in 0..p.len() {
                if decay != 0.0 {
                    p[i] *= keep;
                }
                // torch.lerp with weight < 0.5: m + w * (g - m)
                m[i] += w1 * (g[i] - m[i]);
                v[i] = v[i] * b2 + one_minus_b2 * g[i] * g[i];
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] += -step_size * (m[i] / denom);
            }
            let t = Tensor::from_vec(p, var.shape(), var.device())?;
            var.set(&t)?;
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
