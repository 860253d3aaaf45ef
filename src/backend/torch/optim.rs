//! AdamW on libtorch tensors with `train::optim`'s arithmetic (torch's single-tensor AdamW:
//! decay, first moment m + (1 - b1)(g - m), second moment, bias corrections), f32 moments
//! on the parameters' device, and torch's `clip_grad_norm_`. Weight decay on rank >= 2 only.

use super::model::TorchWeights;
use crate::train::optim::AdamWConfig;
use tch::{Kind, Tensor};

pub struct TorchAdamW {
    pub cfg: AdamWConfig,
    pub step: u64,
    /// (m, v) per parameter, in parameter order; created at the first update.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl TorchAdamW {
    pub fn new(cfg: AdamWConfig) -> Self {
        TorchAdamW {
            cfg,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// Global L2 norm of the gradients, and scale them by min(1, max_norm / (norm + 1e-6))
    /// when `max_norm` > 0 (torch.nn.utils.clip_grad_norm_). One device sync.
    pub fn clip(w: &TorchWeights, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = w
                .tensors
                .iter()
                .map(|p| p.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double))
                .collect();
            if norms.is_empty() {
                return 0.0;
            }
            let norm = Tensor::stack(&norms, 0).sum(Kind::Double).sqrt();
            let n = norm.double_value(&[]);
            if max_norm > 0.0 {
                let coef = max_norm / (n + 1e-6);
                if coef < 1.0 {
                    for p in &w.tensors {
                        let mut g = p.grad();
                        if g.defined() {
                            let _ = g.g_mul_scalar_(coef as f32 as f64);
                        }
                    }
                }
            }
            n
        })
    }

    /// One update with learning rate `lr`; gradients are read from `.grad()` (absent =
    /// zero) and left for the caller to zero.
    pub fn update(&mut self, w: &TorchWeights, lr: f64) {
        self.step += 1;
        let c = self.cfg;
        if self.moments.is_empty() {
            self.moments = w
                .tensors
                .iter()
                .map(|p| (p.zeros_like(), p.zeros_like()))
                .collect();
        }
        // The scalars in f32, as `train::optim` computes them.
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt() as f32 as f64;
        let step_size = (lr / bc1) as f32 as f64;
        let w1 = (1.0 - c.beta1) as f32 as f64;
        let b2 = c.beta2 as f32 as f64;
        let one_minus_b2 = (1.0 - c.beta2) as f32 as f64;
        let eps = c.eps as f32 as f64;
        tch::no_grad(|| {
            for (p, (m, v)) in w.tensors.iter().zip(self.moments.iter_mut()) {
                let g = p.grad();
                let g = if g.defined() { g } else { p.zeros_like() };
                let mut p = p.shallow_clone();
                let decay = if p.dim() >= 2 { c.weight_decay } else { 0.0 };
                if decay != 0.0 {
                    let _ = p.g_mul_scalar_((1.0 - lr * decay) as f32 as f64);
                }
                let _ = m.g_add_(&((&g - &*m) * w1));
                let _ = v.g_mul_scalar_(b2);
                let _ = v.addcmul_(&(&g * one_minus_b2), &g);
                let denom = v.sqrt() / bc2_sqrt + eps;
                let _ = p.g_add_(&((&*m / denom) * (-step_size)));
            }
        });
    }
}
