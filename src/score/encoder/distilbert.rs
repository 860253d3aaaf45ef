//! DistilBERT (`model_type = "distilbert"`): its config and the tensor names that fill the
//! shared [`super::transformer`] encoder: embeddings (word + position, no segment ids) ->
//! layer (`q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`, `ffn.lin1`/`ffn.lin2`,
//! `output_layer_norm`) -> `DistilBertForSequenceClassification` (first token ->
//! `pre_classifier` -> ReLU -> `classifier`). DistilBERT's config uses its own
//! key names (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`).

use super::transformer::{Embeddings, Encoder, EncoderClassifier, Head, Positions, PostNormLayer};
use super::{embedding, layer_norm, linear, str_key, usize_key, Activation};
use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;

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

fn load_layer(vb: &VarBuilder, c: &DistilBertConfig) -> Result<PostNormLayer> {
    let (d, h) = (c.dim, c.hidden_dim);
    let attn = vb.pp("attention");
    let ffn = vb.pp("ffn");
    Ok(PostNormLayer {
        query: linear(&attn, "q_lin", d, d)?,
        key: linear(&attn, "k_lin", d, d)?,
        value: linear(&attn, "v_lin", d, d)?,
        attn_out: linear(&attn, "out_lin", d, d)?,
        attn_norm: layer_norm(vb, "sa_layer_norm", d, LAYER_NORM_EPS)?,
        ff_in: linear(&ffn, "lin1", d, h)?,
        ff_out: linear(&ffn, "lin2", h, d)?,
        ff_norm: layer_norm(vb, "output_layer_norm", d, LAYER_NORM_EPS)?,
        act: c.activation,
        heads: c.n_heads,
    })
}

/// `DistilBertForSequenceClassification`: first token -> `pre_classifier` -> ReLU ->
/// `classifier`.
pub fn load_classifier(
    config: &serde_json::Value,
    vb: VarBuilder,
    num_labels: usize,
) -> Result<EncoderClassifier> {
    let c = DistilBertConfig::from_json(config)?;
    let base = vb.pp("distilbert");
    let emb = base.pp("embeddings");
    let layers = (0..c.n_layers)
        .map(|i| load_layer(&base.pp("transformer").pp("layer").pp(i), &c))
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
            dense: linear(&vb, "pre_classifier", c.dim, c.dim)?,
            act: Tensor::relu,
            out: linear(&vb, "classifier", c.dim, num_labels)?,
        },
    })
}
