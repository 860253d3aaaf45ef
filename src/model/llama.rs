//! The decoder: embeddings -> N x (RMSNorm -> attention -> RMSNorm -> gated MLP) -> norm ->
//! LM head, with the family differences of Llama, Qwen2 and Gemma, its weights loaded once
//! under their HF names into the structs below. Three ways run them: the graph forward here
//! (every op records a backward, so autograd can train it: the reference path and the
//! families the kernels do not cover), `backward` (the training step by hand on the fused
//! kernels, and graph-free scoring) and `incremental` (KV-cache decoding).
//! Read bottom-up: norm -> linear -> attention -> mlp -> block -> model.

use super::config::{Activation, Family, ModelConfig};
use super::fused::decode::KvBuffers;
use super::fused::{self, attention::RopeTables, norm::rms_norm, swiglu::swiglu, Kernel};
use super::lora::{Adapter, LoraDropout};
use super::params::{proj_module, Params};
use super::rope::{self, Rope};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};

pub mod backward;
mod incremental;

/// x (.., in) times W^T (out, in), plus bias.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let y = fused::linear::linear_no_bias(x, w)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Softmax over the last dim from basic ops (so it has a backward). The max is detached:
/// softmax is shift-invariant, so this changes no gradient.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// A projection: its weight (out, in), optional bias and, when the model carries one, its
/// LoRA adapter.
struct Linear {
    /// The module's name (`model.layers.0.self_attn.q_proj`), which names its gradients.
    name: String,
    w: Tensor,
    b: Option<Tensor>,
    lora: Option<LoraLinear>,
}

/// A projection's adapter: A (r, in), B (out, r), the scale s, and where it sits (layer,
/// index in `params::PROJECTIONS`), which keys its dropout mask.
struct LoraLinear {
    a: Tensor,
    b: Tensor,
    s: f64,
    layer: usize,
    proj: usize,
}

impl Linear {
    /// Projection `proj` (index in `params::PROJECTIONS`) of layer `layer`.
    fn load(p: &Params, adapter: Option<&Adapter>, layer: usize, proj: usize) -> Result<Self> {
        let name = proj_module(layer, proj);
        let b = format!("{name}.bias");
        let lora = match adapter {
            Some(ad) => match ad.pair(&name)? {
                Some((a, b)) => Some(LoraLinear {
                    a,
                    b,
                    s: ad.scale_of(&name)?,
                    layer,
                    proj,
                }),
                None => None,
            },
            None => None,
        };
        Ok(Linear {
            w: p.tensor(&format!("{name}.weight"))?,
            b: if p.contains(&b) {
                Some(p.tensor(&b)?)
            } else {
                None
            },
            lora,
            name,
        })
    }

    /// x W^T + b, plus s * dropout(x) A^T B^T with an adapter (dropout only in a training
    /// forward, `drop` given).
    fn forward(&self, x: &Tensor, drop: Option<&LoraDropout>) -> candle_core::Result<Tensor> {
        let y = linear(x, &self.w, self.b.as_ref())?;
        let Some(l) = &self.lora else {
            return Ok(y);
        };
        let x = match drop {
            Some(d) => {
                let mask = d.mask(l.layer, l.proj, x.elem_count());
                (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            None => x.clone(),
        };
        y + (linear(&linear(&x, &l.a, None)?, &l.b, None)? * l.s)?
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
}

/// How attention runs in one forward call.
enum AttnPath<'a> {
    /// The reference ops: RoPE tables (b, 1, t, hd) and the additive bias (b or 1, 1, t, T).
    Reference {
        cos: Tensor,
        sin: Tensor,
        bias: &'a Tensor,
    },
    /// The fused training kernel (positions 0..t, no cache).
    Fused(&'a RopeTables),
}

impl Attention {
    /// `proj`(x) for x (b, t, hidden) split into `n` heads: (b, n, t, head_dim).
    fn split_heads(
        &self,
        proj: &Linear,
        x: &Tensor,
        n: usize,
        drop: Option<&LoraDropout>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        proj.forward(x, drop)?
            .reshape((b, t, n, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// x (b, t, hidden); returns (b, t, hidden).
    fn forward(
        &self,
        x: &Tensor,
        path: &AttnPath,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        drop: Option<&LoraDropout>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let (cos, sin, bias, cache) = match (path, cache) {
            (AttnPath::Fused(tables), None) => {
                // One fused op from the projections to o_proj.
                let y = fused::attention::causal_attention(
                    &self.q_proj.forward(x, drop)?,
                    &self.k_proj.forward(x, drop)?,
                    &self.v_proj.forward(x, drop)?,
                    fused::attention::Heads {
                        n_heads: self.n_heads,
                        n_kv: self.n_kv,
                        rope: tables,
                    },
                )?;
                return self.o_proj.forward(&y, drop);
            }
            (AttnPath::Reference { cos, sin, bias }, cache) => (cos, sin, *bias, cache),
            _ => candle_core::bail!("attention: kernel path and cache do not match"),
        };
        // (b, t, heads*hd) -> (b, heads, t, hd)
        let q = self.split_heads(&self.q_proj, x, self.n_heads, drop)?;
        let k = self.split_heads(&self.k_proj, x, self.n_kv, drop)?;
        let v = self.split_heads(&self.v_proj, x, self.n_kv, drop)?;
        let q = rope::apply(&q, cos, sin)?;
        let k = rope::apply(&k, cos, sin)?;
        let (k, v) = match cache {
            Some(slot) => {
                let kv = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        let k = repeat_kv(&k, self.n_heads / self.n_kv)?; // (b, heads, T, hd)
        let v = repeat_kv(&v, self.n_heads / self.n_kv)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?)? * scale)?; // (b, heads, t, T)
        let att = softmax_last(&att.broadcast_add(bias)?)?;
        let y = att.matmul(&v)?; // (b, heads, t, hd)
        let y = y.transpose(1, 2)?.reshape((b, t, self.n_heads * hd))?;
        self.o_proj.forward(&y, drop)
    }
}

/// (b, kv, T, hd) -> (b, kv*n_rep, T, hd), each kv head repeated for its query group.
fn repeat_kv(x: &Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, hd))?
        .reshape((b, kv * n_rep, t, hd))
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor, drop: Option<&LoraDropout>) -> candle_core::Result<Tensor> {
        let g = self.gate_proj.forward(x, drop)?;
        let u = self.up_proj.forward(x, drop)?;
        let h = match self.act {
            Activation::Silu => swiglu(&g, &u)?,
            Activation::GeluTanh => (g.gelu()? * u)?,
            Activation::Gelu => (g.gelu_erf()? * u)?,
        };
        self.down_proj.forward(&h, drop)
    }
}

struct Block {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// Per-layer key/value cache for incremental decoding: tensors on the reference path, buffers
/// written in place on the fused one (see `incremental`). One cache serves one path.
/// Not `Clone`: two caches sharing a buffer would overwrite each other's positions.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    buffers: Vec<KvBuffers>,
    len: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
            buffers: (0..n_layers).map(|_| KvBuffers::default()).collect(),
            len: 0,
        }
    }
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The model. Holds views of the [`Params`] variables, so a trainer updating them is seen.
pub struct Llama {
    pub cfg: ModelConfig,
    pub params: Params,
    /// A LoRA adapter on the projections (its tensors are the trainable ones).
    adapter: Option<Adapter>,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    rope: Rope,
    device: Device,
}

impl Llama {
    pub fn new(cfg: ModelConfig, params: Params, device: &Device) -> Result<Self> {
        Self::build(cfg, params, None, device)
    }

    /// This model with `adapter` on its projections (replacing any it had). The base
    /// parameters are shared, not copied.
    pub fn with_adapter(self, adapter: Adapter) -> Result<Self> {
        adapter.check_fits(&self.cfg, std::path::Path::new("the adapter"))?;
        Self::build(self.cfg, self.params, Some(adapter), &self.device)
    }

    /// The LoRA adapter, if the model has one.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// The parameters training updates: the adapter's when there is one (the base is then
    /// frozen), otherwise every parameter.
    pub fn trainable(&self) -> &Params {
        match &self.adapter {
            Some(a) => &a.params,
            None => &self.params,
        }
    }

    fn build(
        cfg: ModelConfig,
        params: Params,
        adapter: Option<Adapter>,
        device: &Device,
    ) -> Result<Self> {
        let lin = |l: usize, proj: usize| Linear::load(&params, adapter.as_ref(), l, proj);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(Block {
                input_layernorm: params.tensor(&format!("{p}.input_layernorm.weight"))?,
                self_attn: Attention {
                    q_proj: lin(l, 0)?,
                    k_proj: lin(l, 1)?,
                    v_proj: lin(l, 2)?,
                    o_proj: lin(l, 3)?,
                    n_heads: cfg.num_attention_heads,
                    n_kv: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                },
                post_attention_layernorm: params
                    .tensor(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: lin(l, 4)?,
                    up_proj: lin(l, 5)?,
                    down_proj: lin(l, 6)?,
                    act: cfg.activation,
                },
            });
        }
        let embed_tokens = params.tensor("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            params.tensor("lm_head.weight")?
        };
        Ok(Llama {
            rope: Rope::new(&cfg, device)?,
            norm: params.tensor("model.norm.weight")?,
            embed_tokens,
            lm_head,
            layers,
            cfg,
            params,
            adapter,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The fused attention's RoPE tables for positions 0..t.
    pub fn rope_tables(&self, t: usize) -> RopeTables {
        self.cfg.note_past_context(t);
        self.rope.tables(t)
    }

    /// Training / scoring forward: `ids` (b, t) u32, causal attention, positions 0..t.
    /// Right padding needs no mask: pad keys come after every real query.
    /// Returns logits (b, t, vocab) f32.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_train(ids, None)
    }

    /// [`Self::forward`] of a training step: with `drop`, each LoRA adapter's input goes
    /// through its dropout mask (see [`LoraDropout`]); without, the same as `forward`.
    pub fn forward_train(&self, ids: &Tensor, drop: Option<&LoraDropout>) -> Result<Tensor> {
        Ok(linear(
            &self.hidden_states(ids, drop)?,
            &self.lm_head,
            None,
        )?)
    }

    /// The LoRA dropout of micro-batch `micro` of the optimizer step that follows `step`
    /// AdamW updates, or None where there is none (no adapter, or p = 0).
    pub fn lora_dropout(&self, step: u64, micro: u64) -> Option<LoraDropout> {
        let a = self.adapter.as_ref()?;
        LoraDropout::of(&a.cfg, a.seed, step, micro)
    }

    /// The backbone alone (transformers' `LlamaModel`): the final-normed hidden states
    /// (b, t, hidden) f32 of `ids` (b, t), causal, positions 0..t, right padding OK. Score
    /// models put their own head on top.
    pub fn forward_hidden(&self, ids: &Tensor) -> Result<Tensor> {
        self.hidden_states(ids, None)
    }

    /// [`Self::forward_hidden`], with LoRA dropout when `drop` is given.
    fn hidden_states(&self, ids: &Tensor, drop: Option<&LoraDropout>) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        self.cfg.note_past_context(t);
        let positions = Tensor::arange(0u32, t as u32, &self.device)?.unsqueeze(0)?;
        let x = self.embed(ids)?;
        if fused::usable(Kernel::Attention, &[&x]) {
            // The fused kernel applies RoPE itself from tables of positions 0..t.
            let tables = self.rope.tables(t);
            return self.blocks(x, &AttnPath::Fused(&tables), None, drop);
        }
        let bias = causal_bias(t, 0, None, &self.device)?;
        let (cos, sin) = self.rope.cos_sin(&positions)?;
        self.blocks(
            x,
            &AttnPath::Reference {
                cos,
                sin,
                bias: &bias,
            },
            None,
            drop,
        )
    }

    /// Incremental forward for generation: `ids` (b, t) new tokens, `positions` (b, t),
    /// `key_mask` (b, T_total) with 1 for real tokens and 0 for (left) padding, covering the
    /// cached and the new tokens. Returns the logits (b, vocab) f32 of each row's last new
    /// token (what generation and the compressor read).
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        anyhow::ensure!(b > 0 && t > 0, "decoding needs at least one new token");
        let past = cache.len();
        let on_buffers = cache.buffers.iter().any(|c| !c.is_empty());
        let on_tensors = cache.layers.iter().any(|c| c.is_some());
        let fused = incremental::usable(self);
        anyhow::ensure!(
            !(fused && on_tensors || !fused && on_buffers),
            "this KV cache was filled with the kernels switched {}; start a new cache",
            if on_buffers { "on" } else { "off" }
        );
        let flat = |x: &Tensor| -> Result<Vec<u32>> {
            Ok(x.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?)
        };
        let logits = if fused {
            let (ids, positions, key_mask) = (flat(ids)?, flat(positions)?, flat(key_mask)?);
            // Run on one of the pool's threads: there, a product's fork-join runs both halves
            // itself unless the other worker is free to take one, while from outside the pool
            // every split waits for a worker to wake (a one-token step splits ~30 products).
            let buffers = &mut cache.buffers;
            rayon::scope(|_| self.forward_incremental(&ids, &positions, key_mask, b, buffers))?
        } else {
            let x = self.embed(ids)?;
            let bias = causal_bias(t, past, Some(key_mask), &self.device)?;
            let (cos, sin) = self.rope.cos_sin(positions)?;
            let x = self.blocks(
                x,
                &AttnPath::Reference {
                    cos,
                    sin,
                    bias: &bias,
                },
                Some(cache),
                None,
            )?;
            linear(&x.narrow(1, t - 1, 1)?.squeeze(1)?, &self.lm_head, None)?
        };
        // Counted once every layer holds the new positions (after an error the caller starts
        // a new cache).
        cache.len = past + t;
        Ok(logits)
    }

    /// Token embeddings (b, t, hidden), Gemma-scaled.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let h = self.cfg.hidden_size;
        let x = self
            .embed_tokens
            .index_select(&ids.flatten_all()?, 0)
            .context("token id out of the vocabulary")?
            .reshape((b, t, h))?;
        if self.cfg.family == Family::Gemma {
            // transformers scales by sqrt(hidden) cast to the activation dtype.
            return Ok((x * (h as f32).sqrt() as f64)?);
        }
        Ok(x)
    }

    /// Blocks -> final norm: (b, t, hidden).
    fn blocks(
        &self,
        mut x: Tensor,
        path: &AttnPath,
        mut cache: Option<&mut KvCache>,
        drop: Option<&LoraDropout>,
    ) -> Result<Tensor> {
        let gemma = self.cfg.family == Family::Gemma;
        let eps = self.cfg.rms_norm_eps;
        for (l, block) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let hn = rms_norm(&x, &block.input_layernorm, eps, gemma)?;
            x = (x + block.self_attn.forward(&hn, path, slot, drop)?)?;
            let hn = rms_norm(&x, &block.post_attention_layernorm, eps, gemma)?;
            x = (x + block.mlp.forward(&hn, drop)?)?;
        }
        Ok(rms_norm(&x, &self.norm, eps, gemma)?)
    }
}

/// Additive attention bias (b or 1, 1, t, past+t): 0 where query i may see key j (causal,
/// and the key is not padding), f32::MIN elsewhere. f32::MIN (not -inf) keeps fully masked
/// rows finite, as transformers does.
fn causal_bias(t: usize, past: usize, key_mask: Option<&Tensor>, dev: &Device) -> Result<Tensor> {
    let total = past + t;
    let mut v = vec![0f32; t * total];
    for i in 0..t {
        for j in (past + i + 1)..total {
            v[i * total + j] = f32::MIN;
        }
    }
    let causal = Tensor::from_vec(v, (1, 1, t, total), dev)?;
    match key_mask {
        None => Ok(causal),
        Some(m) => {
            let (b, tm) = m.dims2()?;
            anyhow::ensure!(
                tm == total,
                "key mask covers {tm} positions, expected {total}"
            );
            // (b, 1, 1, total): 0 for real keys, MIN for padding.
            let pad = ((m.to_dtype(DType::F32)? - 1.0)? * -(f32::MIN as f64))?
                .reshape((b, 1, 1, total))?;
            // MIN + MIN would overflow to -inf; clamp keeps it finite.
            Ok(causal.broadcast_add(&pad)?.clamp(f32::MIN, 0f32)?)
        }
    }
}
