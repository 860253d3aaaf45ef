//! The encoder BERT, DistilBERT and RoBERTa share, with parts named by their role: embeddings
//! (word + position, plus segment for BERT/RoBERTa) -> post-norm layers -> a head on the first
//! token (dense, an activation, the output projection). Only the tensor names, config keys
//! and a few choices (position ids, head activation) differ, so each model's file is a loader
//! that builds these structs from its checkpoint's own names.

use super::{
    attention_bias, check_len, first_token, fwd, layer_norm, linear, multi_head_attention,
    usize_key, Activation, Batch, SequenceClassifier,
};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

/// What a model file's loader reads: the checkpoint's `config.json`, its tensors, and the
/// number of labels the head predicts.
pub struct Checkpoint<'a> {
    pub config: &'a serde_json::Value,
    pub vb: VarBuilder<'a>,
    pub num_labels: usize,
}

/// How position ids are formed.
#[derive(Debug, Clone, Copy)]
pub enum Positions {
    /// 0, 1, 2, ... (BERT, DistilBERT).
    FromZero,
    /// padding_idx + 1, + 2, ... for real tokens and padding_idx for pads (RoBERTa's
    /// `create_position_ids_from_input_ids`).
    AfterPadding { padding_idx: u32 },
}

impl Positions {
    /// The longest input a position table of `rows` rows holds.
    pub fn max_len(self, rows: usize) -> Result<usize> {
        match self {
            Positions::FromZero => Ok(rows),
            Positions::AfterPadding { padding_idx } => rows
                .checked_sub(padding_idx as usize + 1)
                .context("config.json: max_position_embeddings is not above pad_token_id + 1"),
        }
    }

    fn ids(self, batch: &Batch, device: &Device) -> Result<Tensor> {
        let rows: Vec<Vec<u32>> = batch
            .ids_host
            .iter()
            .map(|ids| match self {
                Positions::FromZero => (0..ids.len() as u32).collect(),
                Positions::AfterPadding { padding_idx } => {
                    let mut n = 0;
                    ids.iter()
                        .map(|&id| {
                            if id == padding_idx {
                                padding_idx
                            } else {
                                n += 1;
                                padding_idx + n
                            }
                        })
                        .collect()
                }
            })
            .collect();
        Ok(Tensor::new(rows, device)?)
    }
}

pub struct Embeddings {
    pub word: Embedding,
    pub position: Embedding,
    /// Segment ids (BERT, RoBERTa); DistilBERT has none.
    pub token_type: Option<Embedding>,
    pub norm: LayerNorm,
    pub positions: Positions,
}

impl Embeddings {
    /// (b, s) ids -> (b, s, hidden)
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let pos = self.positions.ids(batch, batch.input_ids.device())?;
        let mut x = (fwd(&self.word, &batch.input_ids)? + fwd(&self.position, &pos)?)?;
        if let Some(token_type) = &self.token_type {
            x = (x + fwd(token_type, &batch.token_type_ids)?)?;
        }
        fwd(&self.norm, &x)
    }
}

/// A post-norm block: x + attention -> norm; + feed-forward -> norm.
pub struct PostNormLayer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNorm,
    /// Feed-forward in (hidden -> intermediate) and out (intermediate -> hidden).
    pub ff_in: Linear,
    pub ff_out: Linear,
    pub ff_norm: LayerNorm,
    pub act: Activation,
    pub heads: usize,
}

/// Where a layer's tensors sit under the layer's prefix, in the checkpoint's own names.
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub ff_in: &'static str,
    pub ff_out: &'static str,
    pub ff_norm: &'static str,
}

/// A layer's sizes and settings, read from each model's config.
#[derive(Debug, Clone)]
pub struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f64,
}

/// The sizes every encoder's config gives, and its layers' shape.
#[derive(Debug, Clone)]
pub struct EncoderSizes {
    pub vocab_size: usize,
    pub layers: usize,
    /// Rows of the position table (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    pub layer: LayerShape,
}

impl EncoderSizes {
    /// Read the sizes under `keys`; the activation and the layer norms' `eps` are settings
    /// each model reads by its own rule.
    pub fn from_json(
        c: &serde_json::Value,
        keys: &SizeKeys,
        act: Activation,
        eps: f64,
    ) -> Result<Self> {
        let vocab_size = usize_key(c, "vocab_size", None)?;
        let hidden = usize_key(c, keys.hidden, None)?;
        let layers = usize_key(c, keys.layers, None)?;
        let heads = usize_key(c, keys.heads, None)?;
        let intermediate = usize_key(c, keys.intermediate, None)?;
        let max_position_embeddings = usize_key(c, "max_position_embeddings", Some(512))?;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            bail!(
                "config.json: {} {hidden} is not a multiple of {} {heads}",
                keys.hidden,
                keys.heads
            );
        }
        Ok(EncoderSizes {
            vocab_size,
            layers,
            max_position_embeddings,
            layer: LayerShape {
                hidden,
                intermediate,
                heads,
                act,
                eps,
            },
        })
    }

    /// The layers `layer.0`, `layer.1`, ... under `vb`, with their tensors named by `names`.
    pub fn load_layers(&self, vb: &VarBuilder, names: &LayerNames) -> Result<Vec<PostNormLayer>> {
        (0..self.layers)
            .map(|i| PostNormLayer::load(&vb.pp("layer").pp(i), names, &self.layer))
            .collect()
    }
}

/// The `config.json` keys of an encoder's sizes: BERT and DistilBERT give the same sizes
/// under their own names (`hidden_size` / `dim`, ...).
pub struct SizeKeys {
    pub hidden: &'static str,
    pub layers: &'static str,
    pub heads: &'static str,
    pub intermediate: &'static str,
}

impl PostNormLayer {
    pub fn load(vb: &VarBuilder, names: &LayerNames, shape: &LayerShape) -> Result<Self> {
        let (h, i) = (shape.hidden, shape.intermediate);
        Ok(PostNormLayer {
            query: linear(vb, names.query, h, h)?,
            key: linear(vb, names.key, h, h)?,
            value: linear(vb, names.value, h, h)?,
            attn_out: linear(vb, names.attn_out, h, h)?,
            attn_norm: layer_norm(vb, names.attn_norm, h, shape.eps)?,
            ff_in: linear(vb, names.ff_in, h, i)?,
            ff_out: linear(vb, names.ff_out, i, h)?,
            ff_norm: layer_norm(vb, names.ff_norm, h, shape.eps)?,
            act: shape.act,
            heads: shape.heads,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let ctx = multi_head_attention(
            &fwd(&self.query, x)?,
            &fwd(&self.key, x)?,
            &fwd(&self.value, x)?,
            bias,
            self.heads,
        )?;
        let x = fwd(&self.attn_norm, &(fwd(&self.attn_out, &ctx)? + x)?)?;
        let ff = self.act.apply(&fwd(&self.ff_in, &x)?)?;
        fwd(&self.ff_norm, &(fwd(&self.ff_out, &ff)? + x)?)
    }
}

/// Embeddings plus layers.
pub struct Encoder {
    pub embeddings: Embeddings,
    pub layers: Vec<PostNormLayer>,
    /// The longest input the position table allows (see [`Positions::max_len`]).
    pub max_positions: usize,
}

impl Encoder {
    /// Hidden states of the last layer, (batch, seq, hidden).
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        check_len(batch, self.max_positions)?;
        let bias = attention_bias(&batch.attention_mask)?;
        let mut x = self.embeddings.forward(batch)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        Ok(x)
    }
}

/// The classification head on the first token ([CLS] / <s>): `out(act(dense(x)))`. BERT's
/// pooler and RoBERTa's `classifier.dense` use tanh, DistilBERT's `pre_classifier` ReLU.
pub struct Head {
    pub dense: Linear,
    pub act: fn(&Tensor) -> candle_core::Result<Tensor>,
    pub out: Linear,
}

/// An encoder with its head: what every supported `*ForSequenceClassification` is.
pub struct EncoderClassifier {
    pub encoder: Encoder,
    pub head: Head,
}

impl SequenceClassifier for EncoderClassifier {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.encoder.forward(batch)?;
        let x = (self.head.act)(&fwd(&self.head.dense, &first_token(&hidden)?)?)?;
        fwd(&self.head.out, &x)
    }
    fn max_positions(&self) -> usize {
        self.encoder.max_positions
    }
}
