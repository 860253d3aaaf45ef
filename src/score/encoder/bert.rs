//! BERT (`model_type = "bert"`): its config and the tensor names that fill the shared
//! [`super::transformer`] encoder, then `BertForSequenceClassification` (pooler: dense + tanh
//! on [CLS], then `classifier`). RoBERTa shares the embeddings and encoder and differs only in
//! its position ids and head (see `roberta.rs`), so [`load_encoder`] takes the positions.
//! Tensor names are the checkpoint's: `bert.embeddings.word_embeddings.weight`,
//! `bert.encoder.layer.N.attention.self.query.weight`, ...

use super::transformer::{
    Checkpoint, Embeddings, Encoder, EncoderClassifier, EncoderSizes, Head, LayerNames, Positions,
    SizeKeys,
};
use super::{embedding, f64_key, layer_norm, linear, str_key, usize_key, Activation};
use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;

/// The keys of a BERT-family `config.json` the encoder uses.
#[derive(Debug, Clone)]
pub struct BertConfig {
    pub sizes: EncoderSizes,
    pub type_vocab_size: usize,
    pub pad_token_id: usize,
}

/// BERT's names for the encoder's sizes.
const SIZE_KEYS: SizeKeys = SizeKeys {
    hidden: "hidden_size",
    layers: "num_hidden_layers",
    heads: "num_attention_heads",
    intermediate: "intermediate_size",
};

impl BertConfig {
    pub fn from_json(c: &serde_json::Value) -> Result<Self> {
        let pet = str_key(c, "position_embedding_type", "absolute")?;
        if pet != "absolute" {
            bail!("config.json: position_embedding_type \"{pet}\" is not supported (only \"absolute\")");
        }
        let act = Activation::from_name(str_key(c, "hidden_act", "gelu")?)?;
        let eps = f64_key(c, "layer_norm_eps", 1e-12)?;
        Ok(BertConfig {
            sizes: EncoderSizes::from_json(c, &SIZE_KEYS, act, eps)?,
            type_vocab_size: usize_key(c, "type_vocab_size", Some(2))?,
            pad_token_id: usize_key(c, "pad_token_id", Some(0))?,
        })
    }
}

/// BERT's encoder (also RoBERTa's) under a prefix (`bert` or `roberta`), with its own
/// tensor names.
pub fn load_encoder(vb: &VarBuilder, c: &BertConfig, positions: Positions) -> Result<Encoder> {
    let emb = vb.pp("embeddings");
    let s = &c.sizes;
    let h = s.layer.hidden;
    let embeddings = Embeddings {
        word: embedding(&emb, "word_embeddings", s.vocab_size, h)?,
        position: embedding(&emb, "position_embeddings", s.max_position_embeddings, h)?,
        token_type: Some(embedding(
            &emb,
            "token_type_embeddings",
            c.type_vocab_size,
            h,
        )?),
        norm: layer_norm(&emb, "LayerNorm", h, s.layer.eps)?,
        positions,
    };
    Ok(Encoder {
        embeddings,
        layers: s.load_layers(&vb.pp("encoder"), &LAYER_NAMES)?,
        max_positions: positions.max_len(s.max_position_embeddings)?,
    })
}

/// A BERT layer's tensors, under `encoder.layer.N`.
const LAYER_NAMES: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    ff_in: "intermediate.dense",
    ff_out: "output.dense",
    ff_norm: "output.LayerNorm",
};

/// `BertForSequenceClassification`: pooler (dense + tanh on [CLS]) then `classifier`.
pub fn load_classifier(ck: Checkpoint) -> Result<EncoderClassifier> {
    let c = BertConfig::from_json(ck.config)?;
    let h = c.sizes.layer.hidden;
    Ok(EncoderClassifier {
        encoder: load_encoder(&ck.vb.pp("bert"), &c, Positions::FromZero)?,
        head: Head {
            dense: linear(&ck.vb.pp("bert").pp("pooler"), "dense", h, h)?,
            act: Tensor::tanh,
            out: linear(&ck.vb, "classifier", h, ck.num_labels)?,
        },
    })
}
