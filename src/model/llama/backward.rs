//! The decoder's training gradient by hand, walking the same blocks and projections
//! ([`Block`], [`Linear`]) that `llama.rs` loads, as `incremental` does for decoding. The
//! forward keeps what the backward needs and the backward calls each fused kernel's own
//! backward in reverse order, so every parameter's gradient is written once, straight into
//! the vector the optimizer reads. Through candle's autograd the same step spent about a
//! fifth of its wall time on one thread doing bookkeeping: every gradient went into a fresh
//! zero tensor and was added to it (`GradStore::or_insert` then `add`), and was copied out
//! again for the optimizer.
//!
//! Covers Llama and Qwen2 (SiLU MLP, optional projection biases, tied or untied head, LoRA
//! adapters with their dropout) on CPU f32 with the fused kernels on; everything else keeps
//! autograd (see [`usable`]). `train::backprop` puts the trainers on it (with the autograd
//! fallback) and checks the two paths against each other.

use super::{Block, Linear, Llama, LoraLinear};
use crate::model::config::{Activation, Family};
use crate::model::fused::op::{FusedOp, KernelOp};
use crate::model::fused::{
    self, add_into, attention, cross_entropy, linear, norm::RmsNorm, swiglu::SwiGlu, with_data,
    Kernel,
};
use crate::model::lora::{lora_names, LoraDropout};
use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;

/// Whether the hand-written backward (and its graph-free scoring forward) can run `model`.
pub fn usable(model: &Llama) -> bool {
    [
        Kernel::Backprop,
        Kernel::Attention,
        Kernel::RmsNorm,
        Kernel::SwiGlu,
        Kernel::CrossEntropy,
        Kernel::Linear,
    ]
    .iter()
    .all(|&k| fused::enabled(k))
        && model.device().is_cpu()
        && model.cfg.family != Family::Gemma
        && model.cfg.activation == Activation::Silu
        && model.params.iter().all(|(_, v)| v.dtype() == DType::F32)
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (see `fused::with_data`).
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let mut out = None;
    with_data(t, |d| {
        out = Some(f(d));
        Ok(())
    })?;
    out.context("tensor data was not reached")?
}

/// The contiguous data of a CPU f32 tensor, copied.
fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn tensor(v: Vec<f32>, shape: (usize, usize)) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape, &candle_core::Device::Cpu)?)
}

/// Gradients by parameter name, as the backward writes them.
type GradMap = HashMap<String, Vec<f32>>;

/// (parameter name, gradient) in `model.trainable()` order: what the optimizer reads.
pub type NamedGrads = Vec<(String, Vec<f32>)>;

/// How one call runs its projections: the LoRA dropout of a training forward (None when
/// scoring), and whether the base is frozen (a LoRA run: no gradient for weights or biases).
#[derive(Clone, Copy)]
struct Pass<'d> {
    drop: Option<&'d LoraDropout>,
    frozen: bool,
}

impl LoraLinear {
    /// x masked by this adapter's dropout (x itself without dropout), and the mask.
    fn dropped<'x>(
        &self,
        x: &'x [f32],
        drop: Option<&LoraDropout>,
    ) -> (Cow<'x, [f32]>, Option<Vec<f32>>) {
        match drop {
            None => (Cow::Borrowed(x), None),
            Some(d) => {
                let mask = d.mask(self.layer, self.proj, x.len());
                let xd = x.iter().zip(&mask).map(|(x, m)| x * m).collect();
                (Cow::Owned(xd), Some(mask))
            }
        }
    }

    /// h = s * xd A^T (rows, r) for the (dropped-out) input xd (rows, in): the adapter's
    /// scaled inner activations.
    fn inner(&self, xd: &[f32], rows: usize, inp: usize) -> Result<Vec<f32>> {
        let r = self.a.dim(0)?;
        let mut h = with_slice(&self.a, |a| Ok(linear::forward(xd, a, rows, inp, r)))?;
        let s = self.s as f32;
        h.iter_mut().for_each(|v| *v *= s);
        Ok(h)
    }

    /// y (rows, out) += h B^T.
    fn add_onto(
        &self,
        x: &[f32],
        rows: usize,
        inp: usize,
        drop: Option<&LoraDropout>,
        y: &mut [f32],
    ) -> Result<()> {
        let (out, r) = self.b.dims2()?;
        let h = self.inner(&self.dropped(x, drop).0, rows, inp)?;
        with_slice(&self.b, |b| {
            linear::forward_add(&h, b, rows, r, out, y);
            Ok(())
        })
    }

    /// The gradients of y = s * (xd A^T) B^T, xd = x * mask, from dy (rows, out):
    /// (dx, dA, dB). With h = s xd A^T: dB = dy^T h, dh = dy B, dA = s dh^T xd,
    /// dx = mask * (s dh A).
    fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        (rows, inp): (usize, usize),
        drop: Option<&LoraDropout>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (out, r) = self.b.dims2()?;
        let (xd, mask) = self.dropped(x, drop);
        let h = self.inner(&xd, rows, inp)?;
        let (mut dh, db) = with_slice(&self.b, |b| Ok(linear::backward(&h, b, dy, rows, r, out)))?;
        let s = self.s as f32;
        dh.iter_mut().for_each(|v| *v *= s);
        let (mut dx, da) =
            with_slice(&self.a, |a| Ok(linear::backward(&xd, a, &dh, rows, inp, r)))?;
        if let Some(mask) = mask {
            dx.iter_mut().zip(&mask).for_each(|(d, m)| *d *= m);
        }
        Ok((dx, da, db))
    }
}

impl Linear {
    /// x (rows, in) W^T + b (plus the adapter's output) on the fused kernels.
    fn rows_forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let (rows, inp) = x.dims2()?;
        let out = self.w.dim(0)?;
        let mut y = with_slice(x, |x| {
            let mut y = with_slice(&self.w, |w| Ok(linear::forward(x, w, rows, inp, out)))?;
            if let Some(l) = &self.lora {
                l.add_onto(x, rows, inp, pass.drop, &mut y)?;
            }
            Ok(y)
        })?;
        self.add_bias(&mut y, out)?;
        tensor(y, (rows, out))
    }

    /// residual + x W^T + b for x (rows, in): the projection summed onto the residual
    /// stream in one product (see `linear::forward_add`).
    fn rows_forward_onto(&self, x: &Tensor, residual: &Tensor, pass: Pass) -> Result<Tensor> {
        let (rows, inp) = x.dims2()?;
        let out = self.w.dim(0)?;
        let mut y = to_vec(residual)?;
        with_slice(x, |x| {
            with_slice(&self.w, |w| {
                linear::forward_add(x, w, rows, inp, out, &mut y);
                Ok(())
            })?;
            match &self.lora {
                Some(l) => l.add_onto(x, rows, inp, pass.drop, &mut y),
                None => Ok(()),
            }
        })?;
        self.add_bias(&mut y, out)?;
        tensor(y, (rows, out))
    }

    /// Adds the bias (if any) to each row of y (rows, out).
    fn add_bias(&self, y: &mut [f32], out: usize) -> Result<()> {
        match &self.b {
            Some(b) => with_slice(b, |b| {
                y.chunks_mut(out).for_each(|r| add_into(r, b));
                Ok(())
            }),
            None => Ok(()),
        }
    }

    /// dx for the input x (rows, in) from dy (rows, out); the weight's (and bias') gradient
    /// goes into `grads`, or, when the base is frozen, the adapter's A and B gradients.
    fn rows_backward(
        &self,
        x: &Tensor,
        dy: &[f32],
        pass: Pass,
        grads: &mut GradMap,
    ) -> Result<Vec<f32>> {
        let (rows, inp) = x.dims2()?;
        let out = self.w.dim(0)?;
        if pass.frozen {
            return with_slice(x, |x| {
                // dx = dy W through the frozen weight, plus the adapter's path.
                let mut dx = with_slice(&self.w, |w| {
                    Ok(linear::product(rows, inp, out, dy, (out, 1), w, (inp, 1)))
                })?;
                if let Some(l) = &self.lora {
                    let (dxl, da, db) = l.backward(x, dy, (rows, inp), pass.drop)?;
                    add_into(&mut dx, &dxl);
                    let (na, nb) = lora_names(&self.name);
                    grads.insert(na, da);
                    grads.insert(nb, db);
                }
                Ok(dx)
            });
        }
        let (dx, dw) = with_slice(x, |x| {
            with_slice(&self.w, |w| Ok(linear::backward(x, w, dy, rows, inp, out)))
        })?;
        grads.insert(format!("{}.weight", self.name), dw);
        if self.b.is_some() {
            let mut db = vec![0f32; out];
            dy.chunks(out).for_each(|r| add_into(&mut db, r));
            grads.insert(format!("{}.bias", self.name), db);
        }
        Ok(dx)
    }
}

/// What one decoder layer's backward needs from its forward, rows = batch * time.
struct Saved {
    x_in: Tensor,
    n1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    att: Tensor,
    x_mid: Tensor,
    n2: Tensor,
    g: Tensor,
    u: Tensor,
    s: Tensor,
}

/// The backward of a residual branch's RMSNorm y = norm(x; w) given dy (rows, width): the
/// weight's gradient goes into `grads` under `name`, the input's is added to `dx` (the
/// residual stream's gradient, which also reaches x by the skip connection).
fn norm_backward(
    norm: &RmsNorm,
    (x, w, y): (&Tensor, &Tensor, &Tensor),
    dy: Vec<f32>,
    name: String,
    grads: &mut GradMap,
    dx: &mut [f32],
) -> Result<()> {
    let [dx_branch, dw] = norm.bwd([x, w], y, &tensor(dy, x.dims2()?)?)?;
    grads.insert(name, to_vec(&dw.context("norm: no weight gradient")?)?);
    with_slice(&dx_branch.context("norm: no input gradient")?, |d| {
        add_into(dx, d);
        Ok(())
    })
}

/// The model run on rows of one sequence length: its RoPE tables, its LM head as a
/// projection (named for its gradient) and how the projections run.
struct Decoder<'a, 'd> {
    model: &'a Llama,
    norm: KernelOp<RmsNorm>,
    tables: attention::RopeTables,
    head: Linear,
    pass: Pass<'d>,
}

/// The forward's results: the last layer's output, its final norm and the logits.
struct Forward {
    x: Tensor,
    nf: Tensor,
    logits: Tensor,
}

impl<'a, 'd> Decoder<'a, 'd> {
    /// `drop`: the LoRA dropout of a training forward (None when scoring).
    fn new(model: &'a Llama, t: usize, drop: Option<&'d LoraDropout>) -> Self {
        let cfg = &model.cfg;
        Decoder {
            norm: KernelOp(RmsNorm {
                eps: cfg.rms_norm_eps,
                gemma: false,
            }),
            tables: model.rope_tables(t),
            head: Linear {
                name: if cfg.tie_word_embeddings {
                    "model.embed_tokens"
                } else {
                    "lm_head"
                }
                .into(),
                w: model.lm_head.clone(),
                b: None,
                lora: None,
            },
            pass: Pass {
                drop,
                frozen: model.adapter().is_some(),
            },
            model,
        }
    }

    /// The fused attention op for q, k, v (b, t, width).
    fn attention(
        &self,
        q3: &Tensor,
        k3: &Tensor,
        v3: &Tensor,
    ) -> Result<KernelOp<attention::FusedAttention>> {
        let cfg = &self.model.cfg;
        Ok(attention::attention_op(
            q3,
            k3,
            v3,
            attention::Heads {
                n_heads: cfg.num_attention_heads,
                n_kv: cfg.num_key_value_heads,
                rope: &self.tables,
            },
        )?)
    }

    /// Logits (b * t, vocab) of `ids` (b, t), pushing each layer's activations onto `keep`
    /// when given (for the backward); otherwise each layer's are freed as it finishes.
    fn forward(&self, ids: &Tensor, keep: Option<&mut Vec<Saved>>) -> Result<Forward> {
        let (x, nf) = self.forward_hidden(ids, keep)?;
        let logits = self.head.rows_forward(&nf, self.pass)?;
        Ok(Forward { x, nf, logits })
    }

    /// The last layer's output and its final norm (b * t, hidden), as [`Self::forward`].
    fn forward_hidden(
        &self,
        ids: &Tensor,
        mut keep: Option<&mut Vec<Saved>>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let rows = b * t;
        let (norm, pass) = (&self.norm, self.pass);
        let mut x = self
            .model
            .embed_tokens
            .detach()
            .index_select(&ids.flatten_all()?, 0)
            .context("token id out of the vocabulary")?;
        for layer in &self.model.layers {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            let n1 = x.apply_op2_no_bwd(&layer.input_layernorm, norm)?;
            let (q, k, v) = (
                a.q_proj.rows_forward(&n1, pass)?,
                a.k_proj.rows_forward(&n1, pass)?,
                a.v_proj.rows_forward(&n1, pass)?,
            );
            let (q3, k3, v3) = (
                q.reshape((b, t, ()))?,
                k.reshape((b, t, ()))?,
                v.reshape((b, t, ()))?,
            );
            let op = self.attention(&q3, &k3, &v3)?;
            let att = q3.apply_op3_no_bwd(&k3, &v3, &op)?.reshape((rows, ()))?;
            let x_mid = a.o_proj.rows_forward_onto(&att, &x, pass)?;
            let n2 = x_mid.apply_op2_no_bwd(&layer.post_attention_layernorm, norm)?;
            let (g, u) = (
                m.gate_proj.rows_forward(&n2, pass)?,
                m.up_proj.rows_forward(&n2, pass)?,
            );
            let s = g.apply_op2_no_bwd(&u, &KernelOp(SwiGlu))?;
            let x_out = m.down_proj.rows_forward_onto(&s, &x_mid, pass)?;
            if let Some(keep) = keep.as_deref_mut() {
                keep.push(Saved {
                    x_in: x,
                    n1,
                    q,
                    k,
                    v,
                    att,
                    x_mid,
                    n2,
                    g,
                    u,
                    s,
                });
            }
            x = x_out;
        }
        let nf = x.apply_op2_no_bwd(&self.model.norm, norm)?;
        Ok((x, nf))
    }
}

/// Logits (b, t, vocab) of `ids` (b, t) for scoring, where [`usable`]: the training forward
/// without a graph (each layer's activations are freed as soon as the next layer has them,
/// and no op is recorded).
pub fn scoring_logits(model: &Llama, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let logits = Decoder::new(model, t, None).forward(ids, None)?.logits;
    Ok(logits.reshape((b, t, ()))?)
}

/// Rows of logits a scoring pass holds at once (a (rows, vocab) block).
const SCORE_ROWS: usize = 256;

/// The summed NLL of `targets` (b, t) i64 (-100 = not counted) after `ids` (b, t) u32, where
/// [`usable`]: the training forward without a graph, with the LM head and the loss run over
/// blocks of [`SCORE_ROWS`] rows, so the (b * t, vocab) logits (64 MB at batch 8, seq 512,
/// vocab 4096) never exist at once.
pub fn scoring_nll(model: &Llama, ids: &Tensor, targets: &Tensor) -> Result<f64> {
    let (_, t) = ids.dims2()?;
    let dec = Decoder::new(model, t, None);
    let nf = dec.forward_hidden(ids, None)?.1;
    let target_list: Vec<i64> = targets.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let rows = nf.dim(0)?;
    let mut total = 0f64;
    for start in (0..rows).step_by(SCORE_ROWS) {
        let n = SCORE_ROWS.min(rows - start);
        let block = &target_list[start..start + n];
        if block.iter().all(|&t| t < 0) {
            continue;
        }
        let logits = dec.head.rows_forward(&nf.narrow(0, start, n)?, dec.pass)?;
        let loss = cross_entropy::loss_op(&logits, block.to_vec())?;
        total += logits
            .apply_op1_no_bwd(&loss)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total)
}

/// Turns a forward's per-sequence NLLs into each sequence's loss weight (DPO's, KTO's).
pub type SeqWeigh<'a> = dyn FnMut(&[f64]) -> Result<Vec<f64>> + 'a;

/// How the loss's logit gradient is seeded: one scale for every row (SFT), or a weight per
/// sequence computed from the sequences' NLLs (DPO).
pub enum Seed<'a> {
    Uniform(f64),
    PerSequence(&'a mut SeqWeigh<'a>),
}

/// Per-sequence summed NLLs of `logits` (b * t, vocab) at `targets` (b * t values).
fn sequence_nlls(logits: &Tensor, targets: &[i64], b: usize, t: usize) -> Result<Vec<f64>> {
    (0..b)
        .map(|s| {
            let rows = &targets[s * t..(s + 1) * t];
            if rows.iter().all(|&x| x < 0) {
                return Ok(0.0);
            }
            let block = logits.narrow(0, s * t, t)?;
            let op = cross_entropy::loss_op(&block, rows.to_vec())?;
            Ok(block
                .apply_op1_no_bwd(&op)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?)
        })
        .collect()
}

/// The logits' gradient of the seeded loss, and the per-sequence NLLs (with
/// [`Seed::PerSequence`], else empty). Autograd seeds the scaled loss with 1 and scales in
/// f32; so does this.
fn seeded_logit_grad(
    (loss, logits, nll): (&KernelOp<cross_entropy::CrossEntropy>, &Tensor, &Tensor),
    seed: Seed<'_>,
    targets: &[i64],
    (b, t): (usize, usize),
) -> Result<(Tensor, Vec<f64>)> {
    let (scale, weights, seq_nll) = match seed {
        Seed::Uniform(scale) => (scale, None, Vec::new()),
        Seed::PerSequence(weigh) => {
            let seq = sequence_nlls(logits, targets, b, t)?;
            let w = weigh(&seq)?;
            anyhow::ensure!(w.len() == b, "{} weights for {b} sequences", w.len());
            (1.0, Some(w), seq)
        }
    };
    let seed = Tensor::new(scale as f32, &candle_core::Device::Cpu)?;
    let [dlogits] = loss.0.bwd([logits], nll, &seed)?;
    let mut dlogits = dlogits.context("cross entropy: no gradient")?;
    if let Some(w) = weights {
        // Row r belongs to sequence r / t: scale its logit gradient by that sequence's weight.
        let v = logits.dim(1)?;
        let mut d = to_vec(&dlogits)?;
        d.chunks_mut(t * v)
            .zip(&w)
            .for_each(|(rows, &w)| rows.iter_mut().for_each(|x| *x *= w as f32));
        dlogits = tensor(d, (b * t, v))?;
    }
    Ok((dlogits, seq_nll))
}

impl Decoder<'_, '_> {
    /// One decoder layer's backward, given the gradient `dx` of its output (rows, hidden),
    /// which becomes the gradient of its input; its parameters' gradients go into `grads`.
    fn layer_backward(
        &self,
        (l, layer, sv): (usize, &Block, &Saved),
        bt: (usize, usize),
        dx: &mut [f32],
        grads: &mut GradMap,
    ) -> Result<()> {
        let prefix = format!("model.layers.{l}");
        self.mlp_backward(layer, sv, &prefix, dx, grads)?;
        self.attention_backward(layer, sv, &prefix, bt, dx, grads)
    }

    /// MLP branch: x_out = x_mid + down(swiglu(gate(n2), up(n2))), n2 = norm(x_mid); `dx`
    /// goes from x_out's gradient to x_mid's.
    fn mlp_backward(
        &self,
        layer: &Block,
        sv: &Saved,
        prefix: &str,
        dx: &mut [f32],
        grads: &mut GradMap,
    ) -> Result<()> {
        let (m, pass) = (&layer.mlp, self.pass);
        let ds = m.down_proj.rows_backward(&sv.s, dx, pass, grads)?;
        let [dg, du] = SwiGlu.bwd([&sv.g, &sv.u], &sv.s, &tensor(ds, sv.s.dims2()?)?)?;
        let (dg, du) = (dg.context("swiglu")?, du.context("swiglu")?);
        let mut dn2 = with_slice(&dg, |d| m.gate_proj.rows_backward(&sv.n2, d, pass, grads))?;
        let dn2u = with_slice(&du, |d| m.up_proj.rows_backward(&sv.n2, d, pass, grads))?;
        add_into(&mut dn2, &dn2u);
        let name = format!("{prefix}.post_attention_layernorm.weight");
        let (x_mid, w_post) = (&sv.x_mid, &layer.post_attention_layernorm);
        norm_backward(&self.norm.0, (x_mid, w_post, &sv.n2), dn2, name, grads, dx)
    }

    /// Attention branch: x_mid = x_in + o(attention(q(n1), k(n1), v(n1))), n1 = norm(x_in);
    /// `dx` goes from x_mid's gradient to x_in's.
    fn attention_backward(
        &self,
        layer: &Block,
        sv: &Saved,
        prefix: &str,
        (b, t): (usize, usize),
        dx: &mut [f32],
        grads: &mut GradMap,
    ) -> Result<()> {
        let (a, pass) = (&layer.self_attn, self.pass);
        let datt = a.o_proj.rows_backward(&sv.att, dx, pass, grads)?;
        let (q3, k3, v3) = (
            sv.q.reshape((b, t, ()))?,
            sv.k.reshape((b, t, ()))?,
            sv.v.reshape((b, t, ()))?,
        );
        let op = self.attention(&q3, &k3, &v3)?;
        let att3 = sv.att.reshape((b, t, ()))?;
        let datt = Tensor::from_vec(datt, att3.shape(), &candle_core::Device::Cpu)?;
        let [dq, dk, dv] = op.0.bwd([&q3, &k3, &v3], &att3, &datt)?;
        let mut dn1 = with_slice(&dq.context("attention")?, |d| {
            a.q_proj.rows_backward(&sv.n1, d, pass, grads)
        })?;
        for (proj, d) in [(&a.k_proj, dk), (&a.v_proj, dv)] {
            let part = with_slice(&d.context("attention")?, |d| {
                proj.rows_backward(&sv.n1, d, pass, grads)
            })?;
            add_into(&mut dn1, &part);
        }
        let name = format!("{prefix}.input_layernorm.weight");
        let (x_in, w_in) = (&sv.x_in, &layer.input_layernorm);
        norm_backward(&self.norm.0, (x_in, w_in, &sv.n1), dn1, name, grads, dx)
    }
}

/// The embedding's gradient: the rows the batch's `ids` used, from the first layer's input
/// gradient `dx` (rows, hidden), plus the head's gradient where the two are tied.
fn embedding_grads(
    model: &Llama,
    ids: &[u32],
    dx: &[f32],
    head_grad: Vec<f32>,
    grads: &mut GradMap,
) {
    let hidden = model.cfg.hidden_size;
    let mut dembed = if model.cfg.tie_word_embeddings {
        head_grad
    } else {
        grads.insert("lm_head.weight".into(), head_grad);
        vec![0f32; model.embed_tokens.elem_count()]
    };
    for (r, &id) in ids.iter().enumerate() {
        let row = id as usize * hidden;
        add_into(
            &mut dembed[row..row + hidden],
            &dx[r * hidden..(r + 1) * hidden],
        );
    }
    grads.insert("model.embed_tokens.weight".into(), dembed);
}

/// Only what trains, in `model.trainable()` order (the adapter's tensors in a LoRA run),
/// zeros for a parameter the loss did not reach.
fn trainable_grads(model: &Llama, mut grads: GradMap) -> NamedGrads {
    model
        .trainable()
        .iter()
        .map(|(name, var)| {
            let g = grads
                .remove(name.as_str())
                .unwrap_or_else(|| vec![0f32; var.elem_count()]);
            (name.clone(), g)
        })
        .collect()
}

/// The summed NLL of `targets` (b, t) i64 (-100 = not counted) after `ids` (b, t) u32, the
/// per-sequence NLLs (with [`Seed::PerSequence`], else empty), and the gradient of the
/// seeded loss for every trainable parameter in `model.trainable()` order (zeros for one
/// the loss does not reach), with the LoRA dropout `dropout` of a training step if given.
pub fn nll_and_grads(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    seed: Seed<'_>,
    dropout: Option<&LoraDropout>,
) -> Result<(f64, Vec<f64>, NamedGrads)> {
    let (b, t) = ids.dims2()?;
    let dec = Decoder::new(model, t, dropout);
    let id_list: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let mut saved = Vec::with_capacity(model.layers.len());
    let Forward { x, nf, logits } = dec.forward(ids, Some(&mut saved))?;
    let target_list: Vec<i64> = targets.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let loss = cross_entropy::loss_op(&logits, target_list.clone())?;
    let nll = logits.apply_op1_no_bwd(&loss)?;
    let nll_sum = nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;

    // Backward, from the logits down to the embedding.
    let mut grads: GradMap = HashMap::new();
    let (dlogits, seq_nll) = seeded_logit_grad((&loss, &logits, &nll), seed, &target_list, (b, t))?;
    drop(logits);
    let dnf = with_slice(&dlogits, |d| {
        dec.head.rows_backward(&nf, d, dec.pass, &mut grads)
    })?;
    drop(dlogits);
    // Empty when the base is frozen (a LoRA run): then only the adapter's gradients count.
    let head_grad = grads
        .remove(&format!("{}.weight", dec.head.name))
        .unwrap_or_default();
    let dnf = tensor(dnf, (b * t, model.cfg.hidden_size))?;
    let [dx, dw] = dec.norm.0.bwd([&x, &model.norm], &nf, &dnf)?;
    grads.insert(
        "model.norm.weight".into(),
        to_vec(&dw.context("norm: no gradient")?)?,
    );
    let mut dx = to_vec(&dx.context("norm: no gradient")?)?;
    for (l, (layer, sv)) in model.layers.iter().zip(saved).enumerate().rev() {
        dec.layer_backward((l, layer, &sv), (b, t), &mut dx, &mut grads)?;
    }
    // Nothing for the embedding when the base is frozen.
    if !dec.pass.frozen {
        embedding_grads(model, &id_list, &dx, head_grad, &mut grads);
    }
    Ok((nll_sum, seq_nll, trainable_grads(model, grads)))
}
