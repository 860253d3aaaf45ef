//! The decoder on libtorch: the same architecture as `model::llama` (Llama, Qwen2, Gemma:
//! biases, Gemma's (1 + w) norm and sqrt(hidden) embedding scale, GeGLU, tied head, the RoPE
//! scalings of `model::rope`), with `scaled_dot_product_attention` (FlashAttention on a
//! GPU; GQA through `enable_gqa`, no repeated KV heads). Weights are f32 masters; in bf16
//! each is cast on use (what autocast does), norms and RoPE tables are computed in f32, and
//! the logits come back as f32 for the loss.

use crate::model::config::{Activation, Family, ModelConfig};
use crate::model::lora::{LoraDropout, PROJECTIONS};
use tch::{Device, Kind, Tensor};

/// Masked-out score: finite in f32 and in bf16 (f32::MIN rounds to -inf in bf16), so a
/// fully masked (left-padding) query row stays finite, as in transformers.
const MASKED: f64 = -3.0e38;

/// Named f32 parameters on one device, in checkpoint order.
pub struct TorchWeights {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
    index: std::collections::HashMap<String, usize>,
}

impl TorchWeights {
    pub fn new(entries: Vec<(String, Tensor)>) -> Self {
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect();
        let (names, tensors) = entries.into_iter().unzip();
        TorchWeights {
            names,
            tensors,
            index,
        }
    }
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }
    fn must(&self, name: &str) -> &Tensor {
        // Names come from `param_specs`, which the loader checked against the file.
        self.get(name)
            .unwrap_or_else(|| panic!("parameter \"{name}\" is missing"))
    }
}

/// Per-layer key/value buffers of a decoding batch, written in place.
pub struct Cache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Positions filled.
    pub len: i64,
    cap: i64,
}

/// A LoRA adapter on libtorch: A (r, in) and B (out, r) per adapted projection, named as
/// `model::lora` names them (`{module}.lora_A.weight`), and the output scale.
pub struct TorchLora {
    pub weights: TorchWeights,
    /// The output scale of each adapted module (`model.layers.0.self_attn.q_proj`).
    pub scales: std::collections::HashMap<String, f64>,
    /// rank, alpha, dropout, targets: what the saved adapter's config records.
    pub cfg: crate::model::lora::LoraConfig,
    /// PEFT's `base_model_name_or_path`.
    pub base_model: String,
    /// PEFT's layers and rank / alpha patterns (`model::lora::Adapter::layout`).
    pub layout: crate::model::lora::PeftLayout,
    /// The run's seed, which draws the dropout masks (`model::lora::LoraDropout`), kept
    /// for the saved adapter as the fused path keeps it.
    pub seed: u64,
}

/// Where a forward's tokens sit: the rotary tables of their positions and the attention
/// mask (None: causal over positions 0..t).
struct At {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

pub struct Decoder<'a> {
    pub cfg: &'a ModelConfig,
    pub w: &'a TorchWeights,
    /// The adapter the projections add, if any (`model::llama::Linear`'s rule).
    pub lora: Option<&'a TorchLora>,
    /// The adapter's dropout in a training forward: the fused path's masks.
    drop: Option<&'a LoraDropout>,
    pub device: Device,
    /// Kind of matmuls and activations (Float or BFloat16).
    pub compute: Kind,
    inv_freq: Tensor,
    /// What cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    rope_scale: f32,
    /// Weights cast once to `compute` (for decoding, where the weights do not change and a
    /// cast per token would read every f32 master again).
    cast: Option<std::collections::HashMap<String, Tensor>>,
}

impl<'a> Decoder<'a> {
    pub fn new(cfg: &'a ModelConfig, w: &'a TorchWeights, device: Device, compute: Kind) -> Self {
        let inv = crate::model::rope::inv_freq(cfg);
        Decoder {
            cfg,
            w,
            lora: None,
            drop: None,
            device,
            compute,
            inv_freq: Tensor::from_slice(&inv).to_device(device),
            rope_scale: crate::model::rope::attention_scaling(cfg),
            cast: None,
        }
    }

    /// The projections add `lora`'s low-rank term.
    pub fn with_lora(mut self, lora: Option<&'a TorchLora>) -> Self {
        self.lora = lora;
        self
    }

    /// The adapter's inputs go through `drop`'s masks (a training forward).
    pub fn with_dropout(mut self, drop: Option<&'a LoraDropout>) -> Self {
        self.drop = drop;
        self
    }

    /// Cast every weight to the compute kind now, once (no-grad use only).
    pub fn with_cast_weights(mut self) -> Self {
        if self.compute != Kind::Float {
            let kind = self.compute;
            let cast = self
                .w
                .names
                .iter()
                .zip(&self.w.tensors)
                .map(|(n, t)| (n.clone(), t.detach().to_kind(kind)))
                .collect();
            self.cast = Some(cast);
        }
        self
    }

    /// A weight in the compute kind (a differentiable cast of the f32 master).
    fn p(&self, name: &str) -> Tensor {
        if let Some(t) = self.cast.as_ref().and_then(|c| c.get(name)) {
            return t.shallow_clone();
        }
        let t = self.w.must(name);
        if self.compute == Kind::Float {
            t.shallow_clone()
        } else {
            t.to_kind(self.compute)
        }
    }

    /// x W^T + b, plus s * dropout(x) A^T B^T where the adapter covers `name`, dropout only
    /// in a training forward (`with_dropout`).
    fn linear(&self, x: &Tensor, name: &str) -> Tensor {
        let b = format!("{name}.bias");
        let bias = self.w.get(&b).map(|_| self.p(&b));
        let y = x.linear(&self.p(&format!("{name}.weight")), bias.as_ref());
        let Some(lora) = self.lora else {
            return y;
        };
        let (na, nb) = crate::model::lora::lora_names(name);
        match (lora.weights.get(&na), lora.weights.get(&nb)) {
            (Some(a), Some(b)) => {
                let scale = lora.scales.get(name).copied().unwrap_or(0.0);
                let cast = |t: &Tensor| match self.compute {
                    Kind::Float => t.shallow_clone(),
                    k => t.to_kind(k),
                };
                let low = self.dropped(x, name).linear::<Tensor>(&cast(a), None);
                y + low.linear::<Tensor>(&cast(b), None) * scale
            }
            _ => y,
        }
    }

    /// `x` times the dropout mask of projection `name` (inverted scaling), drawn as the fused
    /// path draws it (`LoraDropout::mask`, keyed by layer and projection); `x` itself
    /// without dropout.
    fn dropped(&self, x: &Tensor, name: &str) -> Tensor {
        let Some((d, (layer, proj))) = self.drop.zip(proj_of(name)) else {
            return x.shallow_clone();
        };
        let mask = d.mask(layer, proj, x.numel());
        x * Tensor::from_slice(&mask)
            .view(x.size().as_slice())
            .to_device(self.device)
            .to_kind(x.kind())
    }

    /// RMSNorm in f32, as transformers: Llama multiplies w by the normed x in the input's
    /// kind; Gemma multiplies by (1 + w) in f32 and then casts.
    fn rms(&self, x: &Tensor, name: &str) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let y = xf * (var + self.cfg.rms_norm_eps).rsqrt();
        if self.cfg.family == Family::Gemma {
            let w = self.w.must(name).to_kind(Kind::Float) + 1.0;
            (y * w).to_kind(kind)
        } else {
            self.p(name) * y.to_kind(kind)
        }
    }

    /// cos and sin (b, 1, t, head_dim) in the compute kind for f32 `positions` (b, t).
    /// Where the tokens at `positions` sit, with the attention `mask`.
    fn at(&self, positions: &Tensor, mask: Option<Tensor>) -> At {
        let (cos, sin) = self.cos_sin(positions);
        At { cos, sin, mask }
    }

    fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let (cos, sin) = (emb.cos(), emb.sin());
        let (cos, sin) = if self.rope_scale == 1.0 {
            (cos, sin)
        } else {
            let s = f64::from(self.rope_scale);
            (cos * s, sin * s)
        };
        (cos.to_kind(self.compute), sin.to_kind(self.compute))
    }

    fn embed(&self, ids: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.p("model.embed_tokens.weight"), ids, -1, false, false);
        if self.cfg.family == Family::Gemma {
            // transformers: sqrt(hidden) as a tensor of the activations' kind.
            let s = Tensor::from((self.cfg.hidden_size as f64).sqrt())
                .to_kind(x.kind())
                .to_device(self.device);
            return x * s;
        }
        x
    }

    fn mlp(&self, x: &Tensor, p: &str) -> Tensor {
        let g = self.linear(x, &format!("{p}.mlp.gate_proj"));
        let u = self.linear(x, &format!("{p}.mlp.up_proj"));
        let h = match self.cfg.activation {
            Activation::Silu => g.silu() * u,
            Activation::GeluTanh => g.gelu("tanh") * u,
            Activation::Gelu => g.gelu("none") * u,
        };
        self.linear(&h, &format!("{p}.mlp.down_proj"))
    }

    /// Attention of layer `l`. Without `at.mask` it is causal over positions 0..t (training;
    /// right padding needs no mask); with one, `cache` holds the earlier positions.
    fn attention(&self, x: &Tensor, l: usize, at: &At, cache: Option<&mut Cache>) -> Tensor {
        let c = self.cfg;
        let (nh, nkv, hd) = (
            c.num_attention_heads as i64,
            c.num_key_value_heads as i64,
            c.head_dim as i64,
        );
        let size = x.size();
        let (b, t) = (size[0], size[1]);
        let p = format!("model.layers.{l}.self_attn");
        let heads = |name: &str, n: i64| {
            self.linear(x, &format!("{p}.{name}"))
                .view([b, t, n, hd])
                .transpose(1, 2)
        };
        let (cos, sin, mask) = (&at.cos, &at.sin, at.mask.as_ref());
        let q = rope(&heads("q_proj", nh), cos, sin);
        let mut k = rope(&heads("k_proj", nkv), cos, sin);
        let mut v = heads("v_proj", nkv);
        if let Some(cache) = cache {
            let start = cache.len;
            cache.k[l].narrow(2, start, t).copy_(&k);
            cache.v[l].narrow(2, start, t).copy_(&v);
            k = cache.k[l].narrow(2, 0, start + t);
            v = cache.v[l].narrow(2, 0, start + t);
        }
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            mask.is_none(),
            None,
            nh != nkv,
        );
        let y = y.transpose(1, 2).reshape([b, t, nh * hd]);
        self.linear(&y, &format!("{p}.o_proj"))
    }

    fn blocks(&self, mut x: Tensor, at: &At, mut cache: Option<&mut Cache>) -> Tensor {
        for l in 0..self.cfg.num_hidden_layers {
            x = self.block(&x, l, at, cache.as_deref_mut());
        }
        self.rms(&x, "model.norm.weight")
    }

    /// Decoder block `l` (pre-norm attention, then pre-norm MLP, each residual).
    fn block(&self, x: &Tensor, l: usize, at: &At, cache: Option<&mut Cache>) -> Tensor {
        // Out of place on purpose: `x += ..` is libtorch's in-place add, which would change
        // a tensor autograd saved for the backward.
        let p = format!("model.layers.{l}");
        let h = self.rms(x, &format!("{p}.input_layernorm.weight"));
        let x = x + self.attention(&h, l, at, cache);
        let h = self.rms(&x, &format!("{p}.post_attention_layernorm.weight"));
        &x + self.mlp(&h, &p)
    }

    /// Gradient checkpointing (`--grad-checkpoint`): `loss(logits)` of `ids` and its gradient
    /// (accumulated into the weights' `.grad`), holding one block's activations at a time
    /// instead of every block's. The forward runs without autograd and keeps only each
    /// block's input; the backward recomputes block by block, last to first, seeding each
    /// with the gradient of its output (the gradient of `sum(out * g)` is `g`). The backward
    /// is of `loss * scale`; returns `loss`, detached. The gradients equal the plain
    /// backward's up to summation order.
    pub fn loss_backward_checkpointed(
        &self,
        ids: &Tensor,
        loss: impl Fn(&Tensor) -> Tensor,
        scale: f64,
    ) -> Tensor {
        let t = ids.size()[1];
        let pos = Tensor::arange(t, (Kind::Float, self.device)).unsqueeze(0);
        let at = self.at(&pos, None);
        let emb = self.embed(ids);
        let mut inputs = Vec::with_capacity(self.cfg.num_hidden_layers);
        let mut x = emb.detach();
        tch::no_grad(|| {
            for l in 0..self.cfg.num_hidden_layers {
                let next = self.block(&x, l, &at, None);
                inputs.push(std::mem::replace(&mut x, next));
            }
        });
        let last = x.set_requires_grad(true);
        let value = loss(&self.head(&self.rms(&last, "model.norm.weight")));
        (&value * scale).backward();
        let mut g = last.grad();
        for (l, input) in inputs.iter().enumerate().rev() {
            let xi = input.set_requires_grad(true);
            let y = self.block(&xi, l, &at, None);
            (y * &g).sum(Kind::Float).backward();
            g = xi.grad();
        }
        (emb * &g).sum(Kind::Float).backward();
        value.detach()
    }

    fn head(&self, x: &Tensor) -> Tensor {
        let name = if self.cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        x.linear::<Tensor>(&self.p(name), None).to_kind(Kind::Float)
    }

    /// Logits (b, t, vocab) f32 of `ids` (b, t) i64, causal, positions 0..t.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        let t = ids.size()[1];
        self.cfg.note_past_context(t as usize);
        let pos = Tensor::arange(t, (Kind::Float, self.device)).unsqueeze(0);
        let x = self.blocks(self.embed(ids), &self.at(&pos, None), None);
        self.head(&x)
    }

    pub fn new_cache(&self, b: i64, cap: i64) -> Cache {
        let c = self.cfg;
        let shape = [b, c.num_key_value_heads as i64, cap, c.head_dim as i64];
        let zeros = || {
            (0..c.num_hidden_layers)
                .map(|_| Tensor::zeros(shape, (self.compute, self.device)))
                .collect()
        };
        Cache {
            k: zeros(),
            v: zeros(),
            len: 0,
            cap,
        }
    }

    /// Incremental forward: `ids` (b, t) i64 new tokens at `positions` (b, t) f32, with
    /// `key_mask` (b, len + t) on the host (1 = real token, 0 = left padding) over the cached
    /// and the new positions. Returns the last new token's logits (b, vocab) f32.
    pub fn forward_cached(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &[Vec<u32>],
        cache: &mut Cache,
    ) -> anyhow::Result<Tensor> {
        let size = ids.size();
        let (b, t) = (size[0], size[1]);
        let past = cache.len;
        let total = past + t;
        anyhow::ensure!(
            total <= cache.cap,
            "the KV cache holds {} positions, {total} needed",
            cache.cap
        );
        // Additive mask (b, 1, t, total): key j visible to new query i when j <= past + i
        // and j is a real token.
        let mut m = vec![0f32; (b * t * total) as usize];
        for (r, row) in key_mask.iter().enumerate() {
            anyhow::ensure!(
                row.len() == total as usize,
                "key mask covers {} positions, expected {total}",
                row.len()
            );
            for i in 0..t {
                for j in 0..total {
                    if j > past + i || row[j as usize] == 0 {
                        m[((r as i64 * t + i) * total + j) as usize] = MASKED as f32;
                    }
                }
            }
        }
        let mask = Tensor::from_slice(&m)
            .view([b, 1, t, total])
            .to_kind(self.compute)
            .to_device(self.device);
        let x = self.blocks(
            self.embed(ids),
            &self.at(positions, Some(mask)),
            Some(cache),
        );
        cache.len = total;
        Ok(self.head(&x.narrow(1, t - 1, 1).squeeze_dim(1)))
    }
}

/// RoPE, transformers' rotate_half convention: x * cos + rotate_half(x) * sin.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = x.size()[3];
    let x1 = x.narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    x * cos + rotated * sin
}

/// Layer and index in `PROJECTIONS` of a projection's module name
/// (`model.layers.{layer}.{block}.{name}`, `model::params::proj_module`'s inverse).
fn proj_of(module: &str) -> Option<(usize, usize)> {
    let (layer, rest) = module.strip_prefix("model.layers.")?.split_once('.')?;
    let proj = PROJECTIONS.iter().position(|(block, name)| {
        rest.strip_prefix(block).and_then(|r| r.strip_prefix('.')) == Some(name)
    })?;
    Some((layer.parse().ok()?, proj))
}
