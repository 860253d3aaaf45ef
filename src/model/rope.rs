//! Rotary position embeddings (RoPE), HF "rotate_half" convention, with the `linear`,
//! Llama-3 and YaRN frequency scalings (YaRN also scales cos and sin). Built from
//! differentiable tensor ops (candle's fused rope has no backward).

use super::config::{ModelConfig, RopeScaling};
use candle_core::{DType, Device, Result, Tensor, D};

#[derive(Debug, Clone)]
pub struct Rope {
    /// (1, 1, head_dim/2) inverse frequencies, f32.
    inv_freq: Tensor,
    /// The same frequencies as a vector (for the fused attention's tables).
    inv: Vec<f32>,
    /// What cos and sin are multiplied by ([`attention_scaling`]).
    scale: f32,
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
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: old_ctx,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            // The dimensions that turn fewer than beta_slow times over the original context
            // are interpolated, those that turn more than beta_fast times extrapolated, a
            // linear ramp between; as transformers: the range in f64, the blend in f32.
            let correction_dim = |rotations: f64| {
                dim as f64 * (old_ctx / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * cfg.rope_theta.ln())
            };
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
            if low == high {
                high += 0.001;
            }
            // As torch: the bounds' difference in f64, each operation then in f32.
            let (low, span, factor) = (low as f32, (high - low) as f32, factor as f32);
            for (j, x) in f.iter_mut().enumerate() {
                let ramp = ((j as f32 - low) / span).clamp(0.0, 1.0);
                let extrapolated = 1.0 - ramp;
                let pos_freq = base.powf((2 * j) as f32 / dim as f32);
                *x = (1.0 / (factor * pos_freq)) * (1.0 - extrapolated) + *x * extrapolated;
            }
        }
    }
    f
}

/// The factor transformers multiplies RoPE's cos and sin by: YaRN's attention factor, else 1.
pub fn attention_scaling(cfg: &ModelConfig) -> f32 {
    match cfg.rope_scaling {
        RopeScaling::Yarn {
            attention_factor, ..
        } => attention_factor as f32,
        _ => 1.0,
    }
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let f = inv_freq(cfg);
        let n = f.len();
        Ok(Rope {
            inv_freq: Tensor::from_vec(f.clone(), (1, 1, n), device)?,
            inv: f,
            scale: attention_scaling(cfg),
        })
    }

    /// The inverse frequencies (head_dim / 2).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv
    }

    /// What cos and sin are multiplied by (1 but under YaRN).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// cos / sin tables of positions 0..t for the fused attention kernel.
    pub fn tables(&self, t: usize) -> crate::model::fused::attention::RopeTables {
        crate::model::fused::attention::RopeTables::new(&self.inv, self.scale, t)
    }

    /// cos and sin tables for `positions` (b, t) as f32, each (b, 1, t, head_dim).
    pub fn cos_sin(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (b, t, 1)
        let freqs = pos.broadcast_mul(&self.inv_freq)?; // (b, t, d/2)
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?.unsqueeze(1)?; // (b, 1, t, d)
        if self.scale == 1.0 {
            return Ok((emb.cos()?, emb.sin()?));
        }
        let s = self.scale as f64;
        Ok((emb.cos()?.affine(s, 0.0)?, emb.sin()?.affine(s, 0.0)?))
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
