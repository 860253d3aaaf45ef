//! The fused decoding forward behind [`Llama::forward_cached`]: a prompt's prefill or one
//! decoding step on raw f32 buffers, with the KV cache written in place. Through candle, a
//! batch-16 step of the bench model was ~80 small ops whose per-op costs (a fresh output
//! tensor each, layout checks, thread-pool hand-offs) came to several times their
//! arithmetic; here a layer is a handful of slice kernels.

use super::{Block, Linear, Llama};
use crate::model::config::{Activation, Family};
use crate::model::fused::decode::{self, DecodeCtx, KvBuffers};
use crate::model::fused::{self, add_into, linear, norm::RmsNorm, swiglu, Kernel};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Layout, Storage, StorageRef, Tensor, TensorId};
use std::collections::HashMap;

/// Whether the fused decoding forward can run `model`: the kernels are on and every weight
/// is an f32 tensor on the CPU.
pub(super) fn usable(model: &Llama) -> bool {
    fused::enabled(Kernel::Attention)
        && fused::enabled(Kernel::Linear)
        && model
            .weights()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The weights' data for one call: each distinct tensor's storage read-locked once (the
/// tied LM head is the embedding itself; locking one lock twice could deadlock).
struct Weights<'m> {
    locked: Vec<(StorageRef<'m>, &'m Layout)>,
    index: HashMap<TensorId, usize>,
}

impl<'m> Weights<'m> {
    fn lock(model: &'m Llama) -> Self {
        let mut w = Weights {
            locked: Vec::new(),
            index: HashMap::new(),
        };
        for t in model.weights() {
            if let std::collections::hash_map::Entry::Vacant(e) = w.index.entry(t.id()) {
                e.insert(w.locked.len());
                w.locked.push(t.storage_and_layout());
            }
        }
        w
    }

    fn get(&self, t: &Tensor) -> Result<&[f32]> {
        let &i = self
            .index
            .get(&t.id())
            .context("decoding: a weight of the model was not locked")?;
        let (s, l) = &self.locked[i];
        match &**s {
            Storage::Cpu(c) => Ok(fused::slice(c, l)?),
            _ => bail!("decoding: a weight is not on the CPU"),
        }
    }

    /// x (rows, in) W^T + b for a projection.
    fn project(&self, x: &[f32], p: &Linear, rows: usize) -> Result<Vec<f32>> {
        let (out, inp) = p.w.dims2()?;
        if x.len() != rows * inp {
            bail!(
                "decoding: {} inputs are not {rows} rows of {inp} for a ({out}, {inp}) weight",
                x.len()
            );
        }
        let mut y = linear::forward(x, self.get(&p.w)?, rows, inp, out);
        if let Some(b) = &p.b {
            let b = self.get(b)?;
            y.chunks_exact_mut(out).for_each(|r| add_into(r, b));
        }
        if let Some(l) = &p.lora {
            // + s * (x A^T) B^T
            let r = l.a.dim(0)?;
            let mut h = linear::forward(x, self.get(&l.a)?, rows, inp, r);
            h.iter_mut().for_each(|v| *v *= l.s as f32);
            linear::forward_add(&h, self.get(&l.b)?, rows, r, out, &mut y);
        }
        Ok(y)
    }
}

impl Llama {
    /// Every weight tensor the forward reads.
    fn weights(&self) -> impl Iterator<Item = &Tensor> {
        let per_layer = self.layers.iter().flat_map(|l| {
            let a = &l.self_attn;
            let m = &l.mlp;
            [&l.input_layernorm, &l.post_attention_layernorm]
                .into_iter()
                .chain(
                    [
                        &a.q_proj,
                        &a.k_proj,
                        &a.v_proj,
                        &a.o_proj,
                        &m.gate_proj,
                        &m.up_proj,
                        &m.down_proj,
                    ]
                    .into_iter()
                    .flat_map(|p| {
                        std::iter::once(&p.w)
                            .chain(p.b.as_ref())
                            .chain(p.lora.iter().flat_map(|l| [&l.a, &l.b]))
                    }),
                )
        });
        [&self.embed_tokens, &self.norm, &self.lm_head]
            .into_iter()
            .chain(per_layer)
    }

    /// The fused forward of `ids` (b * t new tokens) at `positions` (b * t), `key_mask`
    /// (b * (past + t), 1 = real key) after the cache's positions: logits (b, vocab) of
    /// each row's last new token.
    pub(super) fn forward_incremental(
        &self,
        ids: &[u32],
        positions: &[u32],
        key_mask: Vec<u32>,
        b: usize,
        cache: &mut [KvBuffers],
    ) -> Result<Tensor> {
        let t = ids.len() / b.max(1);
        let past = cache.first().map_or(0, |c| c.len());
        let ctx = DecodeCtx::new(
            self.rope.inv_freq(),
            self.rope.scale(),
            b,
            t,
            past,
            positions,
            key_mask,
        )?;
        let w = Weights::lock(self);
        let h = self.cfg.hidden_size;
        let vocab = self.embed_tokens.dim(0)?;
        let embed = w.get(&self.embed_tokens)?;
        let mut x = Vec::with_capacity(ids.len() * h);
        for &id in ids {
            let id = id as usize;
            if id >= vocab {
                bail!("token id {id} is out of the vocabulary ({vocab} tokens)");
            }
            x.extend_from_slice(&embed[id * h..(id + 1) * h]);
        }
        if self.cfg.family == Family::Gemma {
            // transformers scales by sqrt(hidden) cast to the activation dtype.
            let s = (h as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let norm = RmsNorm {
            eps: self.cfg.rms_norm_eps,
            gemma: self.cfg.family == Family::Gemma,
        };
        for (block, kv) in self.layers.iter().zip(cache.iter_mut()) {
            self.block_incremental(block, &mut x, &ctx, kv, &w, &norm)?;
        }
        // Only each row's last token is scored: generation needs no other logits.
        let last: Vec<f32> = (0..b)
            .flat_map(|r| x[(r * t + t - 1) * h..(r * t + t) * h].iter().copied())
            .collect();
        let nf = norm.forward(&last, w.get(&self.norm)?, &[b, h])?;
        let n_out = self.lm_head.dim(0)?;
        let logits = linear::forward(&nf, w.get(&self.lm_head)?, b, h, n_out);
        Ok(Tensor::from_vec(logits, (b, n_out), &Device::Cpu)?)
    }

    /// One decoder layer on the residual stream `x` (b * t rows of hidden), in place.
    fn block_incremental(
        &self,
        block: &Block,
        x: &mut [f32],
        ctx: &DecodeCtx,
        kv: &mut KvBuffers,
        w: &Weights,
        norm: &RmsNorm,
    ) -> Result<()> {
        let rows = ctx.b * ctx.t;
        let h = self.cfg.hidden_size;
        let a = &block.self_attn;
        let n1 = norm.forward(x, w.get(&block.input_layernorm)?, &[rows, h])?;
        let mut q = w.project(&n1, &a.q_proj, rows)?;
        let mut k = w.project(&n1, &a.k_proj, rows)?;
        let v = w.project(&n1, &a.v_proj, rows)?;
        decode::rope_in_place(&mut q, a.n_heads, ctx)?;
        decode::rope_in_place(&mut k, a.n_kv, ctx)?;
        kv.append(&k, &v, ctx.b, a.n_kv, a.head_dim)?;
        let y = decode::attend(&q, kv, a.n_heads, ctx)?;
        add_into(x, &w.project(&y, &a.o_proj, rows)?);
        let n2 = norm.forward(x, w.get(&block.post_attention_layernorm)?, &[rows, h])?;
        let m = &block.mlp;
        let g = w.project(&n2, &m.gate_proj, rows)?;
        let u = w.project(&n2, &m.up_proj, rows)?;
        let s = match m.act {
            Activation::Silu => swiglu::forward(&g, &u),
            // Gemma's GELU MLPs: candle's own ops, the reference path's numbers.
            act => {
                let shape = (rows, g.len() / rows.max(1));
                let (g, u) = (
                    Tensor::from_vec(g, shape, &Device::Cpu)?,
                    Tensor::from_vec(u, shape, &Device::Cpu)?,
                );
                let gelu = if act == Activation::GeluTanh {
                    g.gelu()?
                } else {
                    g.gelu_erf()?
                };
                (gelu * u)?.flatten_all()?.to_vec1()?
            }
        };
        add_into(x, &w.project(&s, &m.down_proj, rows)?);
        Ok(())
    }
}
