//! DistilBERT (`model_type = "distilbert"`): its config and the tensor names that fill the
//! shared [`super::transformer`] encoder: embeddings (word + position, no segment ids) ->
//! layer (`q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`, `ffn.lin1`/`ffn.lin2`,
//! `output_layer_norm`) -> `DistilBertForSequenceClassification` (first token ->
//! `pre_classifier` -> ReLU -> `classifier`). DistilBERT's config uses its own
//! key names (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`).

use super::transformer::{
    Checkpoint, Embeddings, Encoder, EncoderClassifier, EncoderSizes, Head, LayerNames, Positions,
    SizeKeys,
};
use super::{embedding, layer_norm, linear, str_key, Activation};
use anyhow::Result;
use candle_core::Tensor;

/// DistilBERT's layer norms are built with eps 1e-12 and the config has no key for it.
const LAYER_NORM_EPS: f64 = 1e-12;

/// DistilBERT's names for the encoder's sizes.
const SIZE_KEYS: SizeKeys = SizeKeys {
    hidden: "dim",
    layers: "n_layers",
    heads: "n_heads",
    intermediate: "hidden_dim",
};

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
    let act = Activation::from_name(str_key(ck.config, "activation", "gelu")?)?;
    let c = EncoderSizes::from_json(ck.config, &SIZE_KEYS, act, LAYER_NORM_EPS)?;
    let dim = c.layer.hidden;
    let base = ck.vb.pp("distilbert");
    let emb = base.pp("embeddings");
    let embeddings = Embeddings {
        word: embedding(&emb, "word_embeddings", c.vocab_size, dim)?,
        position: embedding(&emb, "position_embeddings", c.max_position_embeddings, dim)?,
        token_type: None,
        norm: layer_norm(&emb, "LayerNorm", dim, LAYER_NORM_EPS)?,
        positions: Positions::FromZero,
    };
    Ok(EncoderClassifier {
        encoder: Encoder {
            embeddings,
            layers: c.load_layers(&base.pp("transformer"), &LAYER_NAMES)?,
            max_positions: c.max_position_embeddings,
        },
        head: Head {
            dense: linear(&ck.vb, "pre_classifier", dim, dim)?,
            act: Tensor::relu,
            out: linear(&ck.vb, "classifier", dim, ck.num_labels)?,
        },
    })
}
