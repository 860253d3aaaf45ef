//! The decoder's training gradient by hand. The forward keeps what the backward needs and
//! the backward calls each fused kernel's own backward in reverse order, so every parameter's
//! gradient is written once, straight into the vector the optimizer reads. Through candle's
//! autograd the same step spent about a fifth of its wall time on one thread doing
//! bookkeeping: every gradient went into a fresh zero tensor and was added to it
//! (`GradStore::or_insert` then `add`), and was copied out again for the optimizer.
//!
//! Covers Llama and Qwen2 (SiLU MLP, optional projection biases, tied or untied head) on CPU
//! f32 with the fused kernels on; everything else, and the reference path, keeps autograd
//! (see [`usable`]). The two paths are checked against each other in the tests below.

use crate::model::config::{Activation, Family};
use crate::model::fused::{
    self, add_into, attention, cross_entropy, linear, norm::RmsNorm, swiglu::SwiGlu, with_data,
    Kernel,
};
use crate::model::lora::{LoraDropout, PROJECTIONS};
use crate::model::Llama;
use crate::train::optim::Grads;
use anyhow::{Context, Result};
use candle_core::{CustomOp1, CustomOp2, CustomOp3, DType, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;

/// Whether [`nll_and_grads`] can compute `model`'s gradient (otherwise use autograd).
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

/// One projection of the model: its weight (out, in), optional bias, and parameter name.
struct Proj {
    name: String,
    w: Tensor,
    b: Option<Tensor>,
    /// The base is frozen (a LoRA run): no gradient for the weight or bias.
    frozen: bool,
    /// A LoRA adapter on this projection.
    lora: Option<LoraProj>,
}

/// A projection's adapter: y += s * (dropout(x) A^T) B^T, A (r, in), B (out, r).
struct LoraProj {
    a: Tensor,
    b: Tensor,
    s: f32,
    /// The training forward's dropout with this adapter's (layer, projection index).
    drop: Option<(LoraDropout, usize, usize)>,
}

impl LoraProj {
    /// x masked by this adapter's dropout (x itself without dropout), and the mask.
    fn dropped<'x>(&self, x: &'x [f32]) -> (Cow<'x, [f32]>, Option<Vec<f32>>) {
        match &self.drop {
            None => (Cow::Borrowed(x), None),
            Some((d, layer, proj)) => {
                let mask = d.mask(*layer, *proj, x.len());
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
        h.iter_mut().for_each(|v| *v *= self.s);
        Ok(h)
    }

    /// y (rows, out) += h B^T.
    fn add_onto(&self, x: &[f32], rows: usize, inp: usize, y: &mut [f32]) -> Result<()> {
        let (out, r) = self.b.dims2()?;
        let h = self.inner(&self.dropped(x).0, rows, inp)?;
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
        rows: usize,
        inp: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (out, r) = self.b.dims2()?;
        let (xd, mask) = self.dropped(x);
        let h = self.inner(&xd, rows, inp)?;
        let (mut dh, db) = with_slice(&self.b, |b| Ok(linear::backward(&h, b, dy, rows, r, out)))?;
        dh.iter_mut().for_each(|v| *v *= self.s);
        let (mut dx, da) =
            with_slice(&self.a, |a| Ok(linear::backward(&xd, a, &dh, rows, inp, r)))?;
        if let Some(mask) = mask {
            dx.iter_mut().zip(&mask).for_each(|(d, m)| *d *= m);
        }
        Ok((dx, da, db))
    }
}

impl Proj {
    /// Projection `proj` (index in `lora::PROJECTIONS`) of layer `layer`, with its adapter's
    /// dropout `drop` in a training forward.
    fn load(model: &Llama, layer: usize, proj: usize, drop: Option<&LoraDropout>) -> Result<Self> {
        let (block, pname) = PROJECTIONS[proj];
        let name = format!("model.layers.{layer}.{block}.{pname}");
        let p = &model.params;
        let bias = format!("{name}.bias");
        let lora = match model.adapter() {
            Some(ad) => ad.pair(&name)?.map(|(a, b)| LoraProj {
                a: a.detach(),
                b: b.detach(),
                s: ad.scale() as f32,
                drop: drop.map(|d| (*d, layer, proj)),
            }),
            None => None,
        };
        Ok(Proj {
            w: p.tensor(&format!("{name}.weight"))?.detach(),
            b: match p.contains(&bias) {
                true => Some(p.tensor(&bias)?.detach()),
                false => None,
            },
            name,
            frozen: model.adapter().is_some(),
            lora,
        })
    }

    /// x (rows, in) W^T + b.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, inp) = x.dims2()?;
        let out = self.w.dim(0)?;
        let mut y = with_slice(x, |x| {
            let mut y = with_slice(&self.w, |w| Ok(linear::forward(x, w, rows, inp, out)))?;
            if let Some(l) = &self.lora {
                l.add_onto(x, rows, inp, &mut y)?;
            }
            Ok(y)
        })?;
        self.add_bias(&mut y, out)?;
        tensor(y, (rows, out))
    }

    /// residual + x W^T + b for x (rows, in): the projection summed onto the residual
    /// stream in one product (see `linear::forward_add`).
    fn forward_onto(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (rows, inp) = x.dims2()?;
        let out = self.w.dim(0)?;
        let mut y = to_vec(residual)?;
        with_slice(x, |x| {
            with_slice(&self.w, |w| {
                linear::forward_add(x, w, rows, inp, out, &mut y);
                Ok(())
            })?;
            match &self.lora {
                Some(l) => l.add_onto(x, rows, inp, &mut y),
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
    fn backward(
        &self,
        x: &Tensor,
        dy: &[f32],
        grads: &mut HashMap<String, Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let (rows, inp) = x.dims2()?;
        let out = self.w.dim(0)?;
        if self.frozen {
            return with_slice(x, |x| {
                // dx = dy W through the frozen weight, plus the adapter's path.
                let mut dx = with_slice(&self.w, |w| {
                    Ok(linear::product(rows, inp, out, dy, (out, 1), w, (inp, 1)))
                })?;
                if let Some(l) = &self.lora {
                    let (dxl, da, db) = l.backward(x, dy, rows, inp)?;
                    add_into(&mut dx, &dxl);
                    let (na, nb) = crate::model::lora::lora_names(&self.name);
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

/// One layer's weights.
struct Layer {
    prefix: String,
    w_in: Tensor,
    w_post: Tensor,
    q: Proj,
    k: Proj,
    v: Proj,
    o: Proj,
    gate: Proj,
    up: Proj,
    down: Proj,
}

impl Layer {
    fn load(model: &Llama, l: usize, drop: Option<&LoraDropout>) -> Result<Self> {
        let p = format!("model.layers.{l}");
        let proj = |j: usize| Proj::load(model, l, j, drop);
        let norm = |n: &str| -> Result<Tensor> {
            Ok(model.params.tensor(&format!("{p}.{n}.weight"))?.detach())
        };
        Ok(Layer {
            w_in: norm("input_layernorm")?,
            w_post: norm("post_attention_layernorm")?,
            q: proj(0)?,
            k: proj(1)?,
            v: proj(2)?,
            o: proj(3)?,
            gate: proj(4)?,
            up: proj(5)?,
            down: proj(6)?,
            prefix: p,
        })
    }
}

/// The backward of a residual branch's RMSNorm y = norm(x; w) given dy (rows, width): the
/// weight's gradient goes into `grads` under `name`, the input's is added to `dx` (the
/// residual stream's gradient, which also reaches x by the skip connection).
fn norm_backward(
    norm: &RmsNorm,
    (x, w, y): (&Tensor, &Tensor, &Tensor),
    dy: Vec<f32>,
    name: String,
    grads: &mut HashMap<String, Vec<f32>>,
    dx: &mut [f32],
) -> Result<()> {
    let (dx_branch, dw) = norm.bwd(x, w, y, &tensor(dy, x.dims2()?)?)?;
    grads.insert(name, to_vec(&dw.context("norm: no weight gradient")?)?);
    with_slice(&dx_branch.context("norm: no input gradient")?, |d| {
        add_into(dx, d);
        Ok(())
    })
}

/// The decoder's weights (detached views of the parameters) for one sequence length.
struct Decoder<'a> {
    model: &'a Llama,
    norm: RmsNorm,
    tables: attention::RopeTables,
    layers: Vec<Layer>,
    embed: Tensor,
    head: Proj,
    w_final: Tensor,
}

/// The forward's results: the last layer's output, its final norm and the logits.
struct Forward {
    x: Tensor,
    nf: Tensor,
    logits: Tensor,
}

impl<'a> Decoder<'a> {
    /// `drop`: the LoRA dropout of a training forward (None when scoring).
    fn load(model: &'a Llama, t: usize, drop: Option<&LoraDropout>) -> Result<Self> {
        let cfg = &model.cfg;
        let embed = model.params.tensor("model.embed_tokens.weight")?.detach();
        let tied = cfg.tie_word_embeddings;
        Ok(Decoder {
            norm: RmsNorm {
                eps: cfg.rms_norm_eps,
                gemma: false,
            },
            tables: model.rope_tables(t),
            layers: (0..cfg.num_hidden_layers)
                .map(|l| Layer::load(model, l, drop))
                .collect::<Result<_>>()?,
            head: Proj {
                name: if tied {
                    "model.embed_tokens"
                } else {
                    "lm_head"
                }
                .into(),
                w: if tied {
                    embed.clone()
                } else {
                    model.params.tensor("lm_head.weight")?.detach()
                },
                b: None,
                frozen: model.adapter().is_some(),
                lora: None,
            },
            embed,
            w_final: model.params.tensor("model.norm.weight")?.detach(),
            model,
        })
    }

    /// The fused attention op for q, k, v (b, t, width).
    fn attention(
        &self,
        q3: &Tensor,
        k3: &Tensor,
        v3: &Tensor,
    ) -> Result<attention::FusedAttention> {
        let cfg = &self.model.cfg;
        Ok(attention::attention_op(
            q3,
            k3,
            v3,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            &self.tables,
        )?)
    }

    /// Logits (b * t, vocab) of `ids` (b, t), pushing each layer's activations onto `keep`
    /// when given (for the backward); otherwise each layer's are freed as it finishes.
    fn forward(&self, ids: &Tensor, keep: Option<&mut Vec<Saved>>) -> Result<Forward> {
        let (x, nf) = self.forward_hidden(ids, keep)?;
        let logits = self.head.forward(&nf)?;
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
        let norm = &self.norm;
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)
            .context("token id out of the vocabulary")?;
        for layer in &self.layers {
            let n1 = x.apply_op2_no_bwd(&layer.w_in, norm)?;
            let (q, k, v) = (
                layer.q.forward(&n1)?,
                layer.k.forward(&n1)?,
                layer.v.forward(&n1)?,
            );
            let (q3, k3, v3) = (
                q.reshape((b, t, ()))?,
                k.reshape((b, t, ()))?,
                v.reshape((b, t, ()))?,
            );
            let op = self.attention(&q3, &k3, &v3)?;
            let att = q3.apply_op3_no_bwd(&k3, &v3, &op)?.reshape((rows, ()))?;
            let x_mid = layer.o.forward_onto(&att, &x)?;
            let n2 = x_mid.apply_op2_no_bwd(&layer.w_post, norm)?;
            let (g, u) = (layer.gate.forward(&n2)?, layer.up.forward(&n2)?);
            let s = g.apply_op2_no_bwd(&u, &SwiGlu)?;
            let x_out = layer.down.forward_onto(&s, &x_mid)?;
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
        let nf = x.apply_op2_no_bwd(&self.w_final, norm)?;
        Ok((x, nf))
    }
}

/// Logits (b, t, vocab) of `ids` (b, t) for scoring, where no gradient is needed: where
/// [`usable`], the training forward without a graph (each layer's activations are freed as
/// soon as the next layer has them, and no op is recorded); otherwise `Llama::forward`.
pub fn scoring_logits(model: &Llama, ids: &Tensor) -> Result<Tensor> {
    if !usable(model) {
        return Ok(model.forward(ids)?.detach());
    }
    let (b, t) = ids.dims2()?;
    let logits = Decoder::load(model, t, None)?.forward(ids, None)?.logits;
    Ok(logits.reshape((b, t, ()))?)
}

/// Rows of logits a scoring pass holds at once (a (rows, vocab) block).
const SCORE_ROWS: usize = 256;

/// The summed NLL of `targets` (b, t) i64 (-100 = not counted) after `ids` (b, t) u32, for
/// scoring (eval-loss): where [`usable`], the training forward without a graph, with the LM
/// head and the loss run over blocks of [`SCORE_ROWS`] rows, so the (b * t, vocab) logits
/// (64 MB at batch 8, seq 512, vocab 4096) never exist at once; otherwise through
/// `Llama::forward`. Equal to `nll_sum` on the full logits.
pub fn scoring_nll(model: &Llama, ids: &Tensor, targets: &Tensor) -> Result<f64> {
    if !usable(model) {
        let nll = crate::train::loss::nll_sum(&model.forward(ids)?, targets)?;
        return Ok(nll.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    }
    let (_, t) = ids.dims2()?;
    let dec = Decoder::load(model, t, None)?;
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
        let logits = dec.head.forward(&nf.narrow(0, start, n)?)?;
        let loss = cross_entropy::loss_op(&logits, block.to_vec())?;
        total += logits
            .apply_op1_no_bwd(&loss)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total)
}

/// The summed NLL of `targets` (b, t) i64 (-100 = not counted) after `ids` (b, t) u32, and
/// the gradient of `scale` * NLL for every trainable parameter, in `model.trainable()` order
/// (zeros for a parameter the loss does not reach), with the LoRA dropout `drop` of a
/// training step if given. Equal, to rounding, to autograd on `Llama::forward_train`.
pub fn nll_and_grads(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    scale: f64,
    drop: Option<&LoraDropout>,
) -> Result<(f64, Grads)> {
    let (nll, _, grads) = nll_and_grads_seeded(model, ids, targets, Seed::Uniform(scale), drop)?;
    Ok((nll, grads))
}

/// The summed NLL of each sequence (row of `targets`, -100 = not counted) and the gradient of
/// sum_s w_s * NLL_s, where `weigh` turns the forward's per-sequence NLLs into the weights
/// w_s (DPO's per-pair scalars; see `train::dpo`). One forward: the weights scale the rows of
/// the loss's logit gradient before the shared backward. `drop` as in [`nll_and_grads`].
pub fn seq_nll_and_weighted_grads(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    drop: Option<&LoraDropout>,
    weigh: &mut dyn FnMut(&[f64]) -> Result<Vec<f64>>,
) -> Result<(Vec<f64>, Grads)> {
    let (_, seq, grads) =
        nll_and_grads_seeded(model, ids, targets, Seed::PerSequence(weigh), drop)?;
    Ok((seq, grads))
}

/// How the loss's logit gradient is seeded: one scale for every row (SFT), or a weight per
/// sequence computed from the sequences' NLLs.
enum Seed<'a> {
    Uniform(f64),
    PerSequence(&'a mut dyn FnMut(&[f64]) -> Result<Vec<f64>>),
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

fn nll_and_grads_seeded(
    model: &Llama,
    ids: &Tensor,
    targets: &Tensor,
    seed: Seed<'_>,
    dropout: Option<&LoraDropout>,
) -> Result<(f64, Vec<f64>, Grads)> {
    let cfg = &model.cfg;
    let (b, t) = ids.dims2()?;
    let rows = b * t;
    let dec = Decoder::load(model, t, dropout)?;
    let (norm, head, layers) = (&dec.norm, &dec.head, &dec.layers);
    let id_list: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let mut saved = Vec::with_capacity(layers.len());
    let Forward { x, nf, logits } = dec.forward(ids, Some(&mut saved))?;
    let target_list: Vec<i64> = targets.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
    let loss = cross_entropy::loss_op(&logits, target_list.clone())?;
    let nll = logits.apply_op1_no_bwd(&loss)?;
    let nll_sum = nll.to_dtype(DType::F64)?.to_scalar::<f64>()?;

    // Backward. Autograd seeds the scaled loss with 1 and scales in f32; so does this.
    let mut grads: HashMap<String, Vec<f32>> = HashMap::new();
    let (scale, weights, seq_nll) = match seed {
        Seed::Uniform(scale) => (scale, None, Vec::new()),
        Seed::PerSequence(weigh) => {
            let seq = sequence_nlls(&logits, &target_list, b, t)?;
            let w = weigh(&seq)?;
            anyhow::ensure!(w.len() == b, "{} weights for {b} sequences", w.len());
            (1.0, Some(w), seq)
        }
    };
    let seed = Tensor::new(scale as f32, &candle_core::Device::Cpu)?;
    let mut dlogits = loss
        .bwd(&logits, &nll, &seed)?
        .context("cross entropy: no gradient")?;
    if let Some(w) = weights {
        // Row r belongs to sequence r / t: scale its logit gradient by that sequence's weight.
        let v = logits.dim(1)?;
        let mut d = to_vec(&dlogits)?;
        d.chunks_mut(t * v)
            .zip(&w)
            .for_each(|(rows, &w)| rows.iter_mut().for_each(|x| *x *= w as f32));
        dlogits = tensor(d, (rows, v))?;
    }
    drop(logits);
    let dnf = with_slice(&dlogits, |d| head.backward(&nf, d, &mut grads))?;
    drop(dlogits);
    // Empty when the base is frozen (a LoRA run): then only the adapter's gradients count.
    let head_grad = grads
        .remove(&format!("{}.weight", head.name))
        .unwrap_or_default();
    let (dx, dw) = norm.bwd(
        &x,
        &dec.w_final,
        &nf,
        &tensor(dnf, (rows, cfg.hidden_size))?,
    )?;
    grads.insert(
        "model.norm.weight".into(),
        to_vec(&dw.context("norm: no gradient")?)?,
    );
    let mut dx = to_vec(&dx.context("norm: no gradient")?)?;
    let hidden = cfg.hidden_size;
    for (layer, sv) in layers.iter().zip(saved).rev() {
        // MLP branch: x_out = x_mid + down(swiglu(gate(n2), up(n2))), n2 = norm(x_mid).
        let ds = layer.down.backward(&sv.s, &dx, &mut grads)?;
        let (dg, du) = SwiGlu.bwd(&sv.g, &sv.u, &sv.s, &tensor(ds, sv.s.dims2()?)?)?;
        let (dg, du) = (dg.context("swiglu")?, du.context("swiglu")?);
        let mut dn2 = with_slice(&dg, |d| layer.gate.backward(&sv.n2, d, &mut grads))?;
        let dn2u = with_slice(&du, |d| layer.up.backward(&sv.n2, d, &mut grads))?;
        add_into(&mut dn2, &dn2u);
        let name = format!("{}.post_attention_layernorm.weight", layer.prefix);
        let (x_mid, w_post) = (&sv.x_mid, &layer.w_post);
        norm_backward(
            norm,
            (x_mid, w_post, &sv.n2),
            dn2,
            name,
            &mut grads,
            &mut dx,
        )?;
        // Attention branch: x_mid = x_in + o(attention(q(n1), k(n1), v(n1))), n1 = norm(x_in).
        let datt = layer.o.backward(&sv.att, &dx, &mut grads)?;
        let (q3, k3, v3) = (
            sv.q.reshape((b, t, ()))?,
            sv.k.reshape((b, t, ()))?,
            sv.v.reshape((b, t, ()))?,
        );
        let op = dec.attention(&q3, &k3, &v3)?;
        let att3 = sv.att.reshape((b, t, ()))?;
        let datt = Tensor::from_vec(datt, att3.shape(), &candle_core::Device::Cpu)?;
        let (dq, dk, dv) = op.bwd(&q3, &k3, &v3, &att3, &datt)?;
        let mut dn1 = with_slice(&dq.context("attention")?, |d| {
            layer.q.backward(&sv.n1, d, &mut grads)
        })?;
        for (proj, d) in [(&layer.k, dk), (&layer.v, dv)] {
            let part = with_slice(&d.context("attention")?, |d| {
                proj.backward(&sv.n1, d, &mut grads)
            })?;
            add_into(&mut dn1, &part);
        }
        let name = format!("{}.input_layernorm.weight", layer.prefix);
        let (x_in, w_in) = (&sv.x_in, &layer.w_in);
        norm_backward(norm, (x_in, w_in, &sv.n1), dn1, name, &mut grads, &mut dx)?;
    }
    // The embedding rows the batch used, plus the head's gradient where they are tied
    // (nothing when the base is frozen).
    if !head.frozen {
        let mut dembed = if cfg.tie_word_embeddings {
            head_grad
        } else {
            grads.insert("lm_head.weight".into(), head_grad);
            vec![0f32; dec.embed.elem_count()]
        };
        for (r, &id) in id_list.iter().enumerate() {
            let row = id as usize * hidden;
            add_into(
                &mut dembed[row..row + hidden],
                &dx[r * hidden..(r + 1) * hidden],
            );
        }
        grads.insert("model.embed_tokens.weight".into(), dembed);
    }
    // Only what trains: the adapter's tensors in a LoRA run.
    let out = model
        .trainable()
        .iter()
        .map(|(name, var)| {
            let g = grads
                .remove(name.as_str())
                .unwrap_or_else(|| vec![0f32; var.elem_count()]);
            (name.clone(), g)
        })
        .collect();
    Ok((nll_sum, seq_nll, Grads(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::init_params;
    use crate::model::ModelConfig;
    use crate::train::loss::nll_sum;
    use candle_core::Device;

    /// A tiny model of `family` with grouped-query heads (4 query, 2 kv).
    fn tiny(family: &str, tied: bool) -> Llama {
        let cfg = ModelConfig::from_json_str(&format!(
            r#"{{"model_type":"{family}","vocab_size":50,"hidden_size":32,"intermediate_size":40,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rms_norm_eps":1e-6,"max_position_embeddings":64,"tie_word_embeddings":{tied},
            "initializer_range":0.2}}"#
        ))
        .unwrap();
        let params = init_params(&cfg, 7, &Device::Cpu).unwrap();
        Llama::new(cfg, params, &Device::Cpu).unwrap()
    }

    /// The gradient through candle's autograd on the same (fused) forward.
    fn autograd(model: &Llama, ids: &Tensor, targets: &Tensor, scale: f64) -> (f64, Grads) {
        let nll = nll_sum(&model.forward(ids).unwrap(), targets).unwrap();
        let total = nll
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let store = (nll * scale).unwrap().backward().unwrap();
        (total, Grads::from_store(&model.params, &store).unwrap())
    }

    #[test]
    fn equals_autograd_and_the_graph_forward_for_llama_and_qwen2_tied_or_not() {
        let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 7 + 3) % 50).collect();
        let mut targets: Vec<i64> = (0..2 * 9).map(|i| (i * 5 + 1) % 50).collect();
        targets[0] = -100; // a prompt position, not counted
        targets[10] = -100;
        let ids = Tensor::from_vec(ids, (2, 9), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(targets, (2, 9), &Device::Cpu).unwrap();
        for (family, tied) in [("llama", false), ("llama", true), ("qwen2", false)] {
            let model = tiny(family, tied);
            let (nll_a, ga) = autograd(&model, &ids, &targets, 0.25);
            let (nll_b, gb) = nll_and_grads(&model, &ids, &targets, 0.25, None).unwrap();
            let whole = nll_sum(&model.forward(&ids).unwrap(), &targets).unwrap();
            let whole = whole.to_scalar::<f32>().unwrap() as f64;
            let blocks = scoring_nll(&model, &ids, &targets).unwrap();
            assert!(
                (whole - blocks).abs() < 1e-5 * whole.abs(),
                "{family}: scoring nll"
            );
            let want = model.forward(&ids).unwrap();
            let got = scoring_logits(&model, &ids).unwrap();
            assert_eq!(want.dims(), got.dims());
            let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_scalar::<f32>().unwrap() < 1e-5,
                "{family}: logits differ"
            );
            assert!(
                (nll_a - nll_b).abs() < 1e-4 * nll_a.abs(),
                "{family}: nll {nll_a} vs {nll_b}"
            );
            assert_eq!(ga.0.len(), gb.0.len());
            if family == "qwen2" {
                assert!(
                    ga.0.iter().any(|(n, _)| n.ends_with("q_proj.bias")),
                    "qwen2 has biases"
                );
            }
            for ((name, a), (name_b, b)) in ga.0.iter().zip(&gb.0) {
                assert_eq!(name, name_b);
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(scale > 0.0, "{family} tied={tied}: {name} has no gradient");
                let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(
                    diff <= 1e-4 * scale,
                    "{family} tied={tied}: {name} differs by {diff} (largest entry {scale})"
                );
            }
        }
    }

    #[test]
    fn out_of_vocabulary_ids_are_an_error() {
        let model = tiny("llama", false);
        let ids = Tensor::from_vec(vec![3u32, 77], (1, 2), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(vec![1i64, 2], (1, 2), &Device::Cpu).unwrap();
        let Err(err) = nll_and_grads(&model, &ids, &targets, 1.0, None) else {
            panic!("an id past the vocabulary was accepted");
        };
        assert!(format!("{err:#}").contains("vocabulary"), "{err:#}");
    }
}
