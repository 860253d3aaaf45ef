//! Transformer encoders for Hugging Face sequence classifiers, inference only: BERT,
//! DistilBERT and RoBERTa, one file each (named after the HF `model_type`), reading
//! `model.safetensors` with the checkpoint's own tensor names. They share one encoder
//! (`transformer.rs`: embeddings, post-norm layers, head); this file holds the rest they
//! share: the classifier interface, weight loading, activations and multi-head attention.
//!
//! Inference only, so candle's fused ops (layer norm, softmax) are fine here: nothing needs
//! their backward.

pub mod bert;
pub mod distilbert;
pub mod roberta;
pub mod transformer;

use crate::model::checkpoint::weight_files;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use std::path::{Path, PathBuf};

/// A padded batch of token ids.
#[derive(Debug)]
pub struct Batch {
    /// (batch, seq) u32
    pub input_ids: Tensor,
    /// (batch, seq) f32: 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// (batch, seq) u32: segment ids (all 0 for single texts).
    pub token_type_ids: Tensor,
    /// The same ids on the host, for models that derive positions from them (RoBERTa).
    pub ids_host: Vec<Vec<u32>>,
}

/// An encoder with a sequence-classification head.
pub trait SequenceClassifier: Send + Sync {
    /// Logits, (batch, num_labels) f32.
    fn logits(&self, batch: &Batch) -> Result<Tensor>;
    /// The longest input (special tokens included) the position table allows.
    fn max_positions(&self) -> usize;
}

/// The classifier a checkpoint's `config.json` describes: dispatch on `architectures`
/// (falling back to `model_type`), each architecture reading its own config keys.
pub fn load_classifier(
    config: &serde_json::Value,
    vb: VarBuilder,
    num_labels: usize,
) -> Result<Box<dyn SequenceClassifier>> {
    let arch = config["architectures"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .map(str::to_owned);
    let model_type = config["model_type"].as_str().unwrap_or_default();
    let kind = match arch.as_deref() {
        Some(a) => a.to_owned(),
        None => match model_type {
            "bert" => "BertForSequenceClassification".into(),
            "distilbert" => "DistilBertForSequenceClassification".into(),
            "roberta" => "RobertaForSequenceClassification".into(),
            other => other.to_owned(),
        },
    };
    let ck = transformer::Checkpoint {
        config,
        vb,
        num_labels,
    };
    Ok(Box::new(match kind.as_str() {
        "BertForSequenceClassification" => bert::load_classifier(ck)?,
        "DistilBertForSequenceClassification" => distilbert::load_classifier(ck)?,
        "RobertaForSequenceClassification" => roberta::load_classifier(ck)?,
        other => bail!(
            "unsupported classifier architecture \"{other}\"; supported: \
             BertForSequenceClassification, DistilBertForSequenceClassification, \
             RobertaForSequenceClassification"
        ),
    }))
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists, found by the model loader's
/// [`weight_files`] (which also refuses shards outside the directory). Pickle weights are
/// refused: loading one can run arbitrary code; the hint here converts a classifier.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let has_safetensors = ["model.safetensors", "model.safetensors.index.json"]
        .iter()
        .any(|f| dir.join(f).is_file());
    let pickle = [
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "model.pt",
    ]
    .iter()
    .map(|f| dir.join(f))
    .find(|p| p.is_file());
    if let (false, Some(p)) = (has_safetensors, pickle) {
        bail!(
            "{} holds PyTorch pickle weights ({}); elastica does not load pickles, because \
             unpickling can run arbitrary code. If you trust the source, convert once with \
             transformers:\n  python -c \"from transformers import AutoModelForSequenceClassification as M; \
             m = M.from_pretrained('{d}'); m.save_pretrained('{d}', safe_serialization=True)\"\n\
             which writes model.safetensors next to it",
            dir.display(),
            p.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            d = dir.display()
        );
    }
    weight_files(dir)
}

/// A [`VarBuilder`] over a checkpoint's safetensors, every tensor read as f32.
pub fn var_builder(files: &[PathBuf], device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are memory-mapped read-only; like every safetensors reader we rely on
    // nobody truncating them while the model is loaded.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, DType::F32, device) }
        .with_context(|| format!("cannot read safetensors {}", show(files)))?;
    Ok(vb)
}

fn show(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The feed-forward activations HF encoders name in `hidden_act` / `activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (erf), HF's "gelu".
    Gelu,
    /// The tanh approximation: "gelu_new", "gelu_fast", "gelu_pytorch_tanh".
    GeluTanh,
    Relu,
    Silu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!(
                "unsupported activation \"{other}\"; supported: gelu, gelu_new, gelu_fast, \
                 gelu_pytorch_tanh, relu, silu"
            ),
        })
    }
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// A linear layer in HF layout: `weight` (out, in) and `bias` (out).
pub fn linear(vb: &VarBuilder, name: &str, inp: usize, out: usize) -> Result<Linear> {
    let vb = vb.pp(name);
    let w = vb
        .get((out, inp), "weight")
        .with_context(|| format!("tensor {}.weight", vb.prefix()))?;
    let b = vb
        .get(out, "bias")
        .with_context(|| format!("tensor {}.bias", vb.prefix()))?;
    Ok(Linear::new(w, Some(b)))
}

/// A layer norm: `weight`/`bias`, or the `gamma`/`beta` names of older checkpoints.
pub fn layer_norm(vb: &VarBuilder, name: &str, size: usize, eps: f64) -> Result<LayerNorm> {
    let vb = vb.pp(name);
    let (w, b) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    let weight = vb
        .get(size, w)
        .with_context(|| format!("tensor {}.{w}", vb.prefix()))?;
    let bias = vb
        .get(size, b)
        .with_context(|| format!("tensor {}.{b}", vb.prefix()))?;
    Ok(LayerNorm::new(weight, bias, eps))
}

pub fn embedding(vb: &VarBuilder, name: &str, rows: usize, dim: usize) -> Result<Embedding> {
    let vb = vb.pp(name);
    let w = vb
        .get((rows, dim), "weight")
        .with_context(|| format!("tensor {}.weight", vb.prefix()))?;
    Ok(Embedding::new(w, dim))
}

/// Additive attention bias from a (batch, seq) 0/1 mask: 0 where a key is real, the most
/// negative f32 where it is padding (as transformers does), shaped (batch, 1, 1, seq).
pub fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let bias = ((mask.ones_like()? - mask)? * f64::from(f32::MIN))?;
    Ok(bias.reshape((b, 1, 1, s))?)
}

/// Scaled dot-product attention over all heads; `q`, `k`, `v` are (batch, seq, hidden),
/// `bias` is (batch, 1, 1, seq). Returns (batch, seq, hidden).
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (b, s, h) = q.dims3()?;
    let dh = h / heads;
    let split = |x: &Tensor| -> candle_core::Result<Tensor> {
        // (b, s, h) -> (b, heads, s, dh)
        x.reshape((b, s, heads, dh))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    // (b, heads, s, s)
    let scores = (q.matmul(&k.t()?)? * (1.0 / (dh as f64).sqrt()))?.broadcast_add(bias)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    // (b, heads, s, dh) -> (b, s, h)
    let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
    Ok(ctx)
}

/// The first token's hidden state ([CLS] / <s>): (batch, seq, hidden) -> (batch, hidden).
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?)
}

/// Read a config key as usize, with a default for keys older configs lack.
pub fn usize_key(config: &serde_json::Value, key: &str, default: Option<usize>) -> Result<usize> {
    match config.get(key) {
        Some(v) if !v.is_null() => v.as_u64().map(|x| x as usize).with_context(|| {
            format!("config.json: \"{key}\" must be a non-negative integer, found {v}")
        }),
        _ => default.with_context(|| format!("config.json: \"{key}\" is missing")),
    }
}

pub fn f64_key(config: &serde_json::Value, key: &str, default: f64) -> Result<f64> {
    match config.get(key) {
        Some(v) if !v.is_null() => v
            .as_f64()
            .with_context(|| format!("config.json: \"{key}\" must be a number, found {v}")),
        _ => Ok(default),
    }
}

pub fn str_key<'a>(config: &'a serde_json::Value, key: &str, default: &'a str) -> Result<&'a str> {
    match config.get(key) {
        Some(v) if !v.is_null() => v
            .as_str()
            .with_context(|| format!("config.json: \"{key}\" must be a string, found {v}")),
        _ => Ok(default),
    }
}

/// Apply a module, for readability at call sites.
pub fn fwd<M: Module>(m: &M, x: &Tensor) -> Result<Tensor> {
    Ok(m.forward(x)?)
}

/// Check a batch's sequence length against a position table.
pub fn check_len(batch: &Batch, max: usize) -> Result<()> {
    let s = batch.input_ids.dim(D::Minus1)?;
    if s > max {
        bail!("a batch of {s} tokens exceeds the model's {max} positions (truncation should prevent this)");
    }
    Ok(())
}
