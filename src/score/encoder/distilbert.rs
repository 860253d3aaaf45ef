//! DistilBERT (`model_type = "distilbert"`): its config and the tensor names that fill the
//! shared [`super::transformer`] encoder: embeddings (word + position, no segment ids) ->
//! layer (`q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`, `ffn.lin1`/`ffn.lin2`,
//! `output_layer_norm`) -> `DistilBertForSequenceClassification` (first token ->
//! `pre_classifier` -> ReLU -> `classifier`). DistilBERT's config uses its own
//! key names (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`).

use super::transformer::{
    Checkpoint, Embeddings, Encoder, EncoderClassifier, Head, LayerNames, LayerShape, Positions,
    PostNormLayer,
};
use super::{embedding, layer_norm, linear, str_key, usize_key, Activation};
use anyhow::{bail, Result};
use candle_core::Tensor;

/// DistilBERT's layer norms are built with eps 1e-12 and the config has no key for it.
const LAYER_NORM_EPS: f64 = 1e-12;

#[derive(Debug, Clone)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    pub activation: Activation,
    pub max_position_embeddings: usize,
}

impl DistilBertConfig {
    pub fn from_json(c: &serde_json::Value) -> Result<Self> {
        let cfg = DistilBertConfig {
            vocab_size: usize_key(c, "vocab_size", None)?,
            dim: usize_key(c, "dim", None)?,
            n_layers: usize_key(c, "n_layers", None)?,
            n_heads: usize_key(c, "n_heads", None)?,
            hidden_dim: usize_key(c, "hidden_dim", None)?,
            activation: Activation::from_name(str_key(c, "activation", "gelu")?)?,
            max_position_embeddings: usize_key(c, "max_position_embeddings", Some(512))?,
        };
        if cfg.n_heads == 0 || !cfg.dim.is_multiple_of(cfg.n_heads) {
            bail!(
                "config.json: dim {} is not a multiple of n_heads {}",
                cfg.dim,
                cfg.n_heads
            );
        }
        Ok(cfg)
    }
}

/// A DistilBERT layer's tensors, under `distilbert.transformer.layer.N`.
const LAYER_NAMES: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attn_out: "attention.out_lin",
    attn_norm: "sa_layer_norm",
    ff_in: "ffn.lin1",
    ff_out: "ffn.lin2",
    ff_norm: "output_layer_norm",
};

/// `DistilBertForSequenceClassification`: first token -> `pre_classifier` -> ReLU ->
/// `classifier`.
pub fn load_classifier(ck: Checkpoint) -> Result<EncoderClassifier> {
    let c = DistilBertConfig::from_json(ck.config)?;
    let base = ck.vb.pp("distilbert");
    let emb = base.pp("embeddings");
    let shape = LayerShape {
        hidden: c.dim,
        intermediate: c.hidden_dim,
        heads: c.n_heads,
        act: c.activation,
        eps: LAYER_NORM_EPS,
    };
    let layers = (0..c.n_layers)
        .map(|i| {
            PostNormLayer::load(
                &base.pp("transformer").pp("layer").pp(i),
                &LAYER_NAMES,
                &shape,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let embeddings = Embeddings {
        word: embedding(&emb, "word_embeddings", c.vocab_size, c.dim)?,
        position: embedding(
            &emb,
            "position_embeddings",
            c.max_position_embeddings,
            c.dim,
        )?,
        token_type: None,
        norm: layer_norm(&emb, "LayerNorm", c.dim, LAYER_NORM_EPS)?,
        positions: Positions::FromZero,
    };
    Ok(EncoderClassifier {
        encoder: Encoder {
            embeddings,
            layers,
            max_positions: c.max_position_embeddings,
        },
        head: Head {
            dense: linear(&ck.vb, "pre_classifier", c.dim, c.dim)?,
            act: Tensor::relu,
            out: linear(&ck.vb, "classifier", c.dim, ck.num_labels)?,
        },
    })
}
