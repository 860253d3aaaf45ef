//! Rotary position embeddings (RoPE), HF "rotate_half" convention, with the `linear` and
//! Llama-3 frequency scalings. Built from differentiable tensor ops (candle's fused rope has
//! no backward).

use super::config::{ModelConfig, RopeScaling};
use candle_core::{DType, Device, Result, Tensor, D};

#[derive(Debug, Clone)]
pub struct Rope {
    /// (1, 1, head_dim/2) inverse frequencies, f32.
    inv_freq: Tensor,
    /// The same frequencies as a vector (for the fused attention's tables).
    inv: Vec<f32>,
}

/// Inverse frequencies exactly as transformers computes them (f32 powers, then scaling).
pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base = cfg.rope_theta as f32;
    let mut f: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect();
    match cfg.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => f.iter_mut().for_each(|x| *x /= factor as f32),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            let (factor, low, high, old_ctx) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
                old_ctx as f32,
            );
            let low_freq_wavelen = old_ctx / low;
            let high_freq_wavelen = old_ctx / high;
            for x in f.iter_mut() {
                let wavelen = 2.0 * std::f32::consts::PI / *x;
                let scaled = if wavelen > low_freq_wavelen {
                    *x / factor
                } else {
                    *x
                };
                let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                *x = if medium {
                    let smooth = (old_ctx / wavelen - low) / (high - low);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                };
            }
        }
    }
    f
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let f = inv_freq(cfg);
        let n = f.len();
        Ok(Rope {
            inv_freq: Tensor::from_vec(f.clone(), (1, 1, n), device)?,
            inv: f,
        })
    }

    /// The inverse frequencies (head_dim / 2).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv
    }

    /// cos / sin tables of positions 0..t for the fused attention kernel.
    pub fn tables(&self, t: usize) -> crate::model::fused::attention::RopeTables {
        crate::model::fused::attention::RopeTables::new(&self.inv, t)
    }

    /// cos and sin tables for `positions` (b, t) as f32, each (b, 1, t, head_dim).
    pub fn cos_sin(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (b, t, 1)
        let freqs = pos.broadcast_mul(&self.inv_freq)?; // (b, t, d/2)
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?; // (b, 1, t, d)
        Ok((emb.cos()?, emb.sin()?))
    }
}

/// Apply RoPE to `x` (b, heads, t, head_dim) with tables from [`Rope::cos_sin`].
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}
