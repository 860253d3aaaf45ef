//! BERT (`model_type = "bert"`): its config and the tensor names that fill the shared
//! [`super::transformer`] encoder, then `BertForSequenceClassification` (pooler: dense + tanh
//! on [CLS], then `classifier`). RoBERTa shares the embeddings and encoder and differs only in
//! its position ids and head (see `roberta.rs`), so [`load_encoder`] takes the positions.
//! Tensor names are the checkpoint's: `bert.embeddings.word_embeddings.weight`,
//! `bert.encoder.layer.N.attention.self.query.weight`, ...

use super::transformer::{
    Checkpoint, Embeddings, Encoder, EncoderClassifier, Head, LayerNames, LayerShape, Positions,
    PostNormLayer,
};
use super::{embedding, f64_key, layer_norm, linear, str_key, usize_key, Activation};
use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;

/// The keys of a BERT-family `config.json` the encoder uses.
#[derive(Debug, Clone)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: usize,
}

impl BertConfig {
    pub fn from_json(c: &serde_json::Value) -> Result<Self> {
        let pet = str_key(c, "position_embedding_type", "absolute")?;
        if pet != "absolute" {
            bail!("config.json: position_embedding_type \"{pet}\" is not supported (only \"absolute\")");
        }
        let cfg = BertConfig {
            vocab_size: usize_key(c, "vocab_size", None)?,
            hidden_size: usize_key(c, "hidden_size", None)?,
            num_hidden_layers: usize_key(c, "num_hidden_layers", None)?,
            num_attention_heads: usize_key(c, "num_attention_heads", None)?,
            intermediate_size: usize_key(c, "intermediate_size", None)?,
            hidden_act: Activation::from_name(str_key(c, "hidden_act", "gelu")?)?,
            max_position_embeddings: usize_key(c, "max_position_embeddings", Some(512))?,
            type_vocab_size: usize_key(c, "type_vocab_size", Some(2))?,
            layer_norm_eps: f64_key(c, "layer_norm_eps", 1e-12)?,
            pad_token_id: usize_key(c, "pad_token_id", Some(0))?,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            bail!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        Ok(cfg)
    }
}

/// BERT's encoder (also RoBERTa's) under a prefix (`bert` or `roberta`), with its own
/// tensor names.
pub fn load_encoder(vb: &VarBuilder, c: &BertConfig, positions: Positions) -> Result<Encoder> {
    let emb = vb.pp("embeddings");
    let h = c.hidden_size;
    let embeddings = Embeddings {
        word: embedding(&emb, "word_embeddings", c.vocab_size, h)?,
        position: embedding(&emb, "position_embeddings", c.max_position_embeddings, h)?,
        token_type: Some(embedding(
            &emb,
            "token_type_embeddings",
            c.type_vocab_size,
            h,
        )?),
        norm: layer_norm(&emb, "LayerNorm", h, c.layer_norm_eps)?,
        positions,
    };
    let shape = LayerShape {
        hidden: h,
        intermediate: c.intermediate_size,
        heads: c.num_attention_heads,
        act: c.hidden_act,
        eps: c.layer_norm_eps,
    };
    let layers = (0..c.num_hidden_layers)
        .map(|i| PostNormLayer::load(&vb.pp("encoder").pp("layer").pp(i), &LAYER_NAMES, &shape))
        .collect::<Result<Vec<_>>>()?;
    Ok(Encoder {
        embeddings,
        layers,
        max_positions: positions.max_len(c.max_position_embeddings)?,
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
    let h = c.hidden_size;
    Ok(EncoderClassifier {
        encoder: load_encoder(&ck.vb.pp("bert"), &c, Positions::FromZero)?,
        head: Head {
            dense: linear(&ck.vb.pp("bert").pp("pooler"), "dense", h, h)?,
            act: Tensor::tanh,
            out: linear(&ck.vb, "classifier", h, ck.num_labels)?,
        },
    })
}
