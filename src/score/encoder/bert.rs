//! BERT (`model_type = "bert"`), read bottom-up: config -> embeddings -> attention -> layer ->
//! encoder -> `BertForSequenceClassification` (pooler: dense + tanh on [CLS], then
//! `classifier`). RoBERTa shares the embeddings and encoder and differs only in its position
//! ids and head (see `roberta.rs`), so [`BertModel`] takes both as parameters.
//! Tensor names are the checkpoint's: `bert.embeddings.word_embeddings.weight`,
//! `bert.encoder.layer.N.attention.self.query.weight`, ...

use super::{
    attention_bias, check_len, embedding, f64_key, first_token, fwd, layer_norm, linear,
    multi_head_attention, str_key, usize_key, Activation, Batch, SequenceClassifier,
};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

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

/// How position ids are formed.
#[derive(Debug, Clone, Copy)]
pub enum Positions {
    /// 0, 1, 2, ... (BERT).
    FromZero,
    /// padding_idx + 1, + 2, ... for real tokens and padding_idx for pads (RoBERTa's
    /// `create_position_ids_from_input_ids`).
    AfterPadding { padding_idx: u32 },
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    positions: Positions,
}

impl Embeddings {
    fn load(vb: &VarBuilder, c: &BertConfig, positions: Positions) -> Result<Self> {
        Ok(Embeddings {
            word_embeddings: embedding(vb, "word_embeddings", c.vocab_size, c.hidden_size)?,
            position_embeddings: embedding(
                vb,
                "position_embeddings",
                c.max_position_embeddings,
                c.hidden_size,
            )?,
            token_type_embeddings: embedding(
                vb,
                "token_type_embeddings",
                c.type_vocab_size,
                c.hidden_size,
            )?,
            layer_norm: layer_norm(vb, "LayerNorm", c.hidden_size, c.layer_norm_eps)?,
            positions,
        })
    }

    fn position_ids(&self, batch: &Batch, device: &Device) -> Result<Tensor> {
        let rows: Vec<Vec<u32>> = batch
            .ids_host
            .iter()
            .map(|ids| match self.positions {
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

    /// (b, s) ids -> (b, s, hidden)
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let device = batch.input_ids.device();
        let pos = self.position_ids(batch, device)?;
        let x = (fwd(&self.word_embeddings, &batch.input_ids)?
            + fwd(&self.position_embeddings, &pos)?)?;
        let x = (x + fwd(&self.token_type_embeddings, &batch.token_type_ids)?)?;
        fwd(&self.layer_norm, &x)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    act: Activation,
    heads: usize,
}

impl Layer {
    fn load(vb: &VarBuilder, c: &BertConfig) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let attn = vb.pp("attention");
        let this = attn.pp("self");
        let attn_output = attn.pp("output");
        let out = vb.pp("output");
        Ok(Layer {
            query: linear(&this, "query", h, h)?,
            key: linear(&this, "key", h, h)?,
            value: linear(&this, "value", h, h)?,
            attn_out: linear(&attn_output, "dense", h, h)?,
            attn_norm: layer_norm(&attn_output, "LayerNorm", h, c.layer_norm_eps)?,
            intermediate: linear(&vb.pp("intermediate"), "dense", h, i)?,
            output: linear(&out, "dense", i, h)?,
            out_norm: layer_norm(&out, "LayerNorm", h, c.layer_norm_eps)?,
            act: c.hidden_act,
            heads: c.num_attention_heads,
        })
    }

    /// Post-norm block: x + attention -> norm; + feed-forward -> norm.
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let ctx = multi_head_attention(
            &fwd(&self.query, x)?,
            &fwd(&self.key, x)?,
            &fwd(&self.value, x)?,
            bias,
            self.heads,
        )?;
        let x = fwd(&self.attn_norm, &(fwd(&self.attn_out, &ctx)? + x)?)?;
        let ff = self.act.apply(&fwd(&self.intermediate, &x)?)?;
        fwd(&self.out_norm, &(fwd(&self.output, &ff)? + x)?)
    }
}

/// Embeddings plus encoder layers, under a prefix (`bert` or `roberta`).
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    max_positions: usize,
}

impl BertModel {
    pub fn load(vb: &VarBuilder, c: &BertConfig, positions: Positions) -> Result<Self> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(&vb.pp("encoder").pp("layer").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        let max_positions = match positions {
            Positions::FromZero => c.max_position_embeddings,
            Positions::AfterPadding { padding_idx } => c
                .max_position_embeddings
                .checked_sub(padding_idx as usize + 1)
                .context("config.json: max_position_embeddings is not above pad_token_id + 1")?,
        };
        Ok(BertModel {
            embeddings: Embeddings::load(&vb.pp("embeddings"), c, positions)?,
            layers,
            max_positions,
        })
    }

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

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// `BertForSequenceClassification`: pooler (dense + tanh on [CLS]) then `classifier`.
pub struct BertForSequenceClassification {
    bert: BertModel,
    pooler: Linear,
    classifier: Linear,
}

impl BertForSequenceClassification {
    pub fn load(config: &serde_json::Value, vb: VarBuilder, num_labels: usize) -> Result<Self> {
        let c = BertConfig::from_json(config)?;
        let h = c.hidden_size;
        Ok(BertForSequenceClassification {
            bert: BertModel::load(&vb.pp("bert"), &c, Positions::FromZero)?,
            pooler: linear(&vb.pp("bert").pp("pooler"), "dense", h, h)?,
            classifier: linear(&vb, "classifier", h, num_labels)?,
        })
    }
}

impl SequenceClassifier for BertForSequenceClassification {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = self.bert.forward(batch)?;
        let pooled = fwd(&self.pooler, &first_token(&hidden)?)?.tanh()?;
        fwd(&self.classifier, &pooled)
    }
    fn max_positions(&self) -> usize {
        self.bert.max_positions()
    }
}
