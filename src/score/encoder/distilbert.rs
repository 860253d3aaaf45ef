//! DistilBERT (`model_type = "distilbert"`), bottom-up: config -> embeddings (word +
//! position, no segment ids) -> layer (`q_lin`/`k_lin`/`v_lin`/`out_lin`, `sa_layer_norm`,
//! `ffn.lin1`/`ffn.lin2`, `output_layer_norm`) -> `DistilBertForSequenceClassification`
//! (first token -> `pre_classifier` -> ReLU -> `classifier`). DistilBERT's config uses its own
//! key names (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`).

use super::{
    attention_bias, check_len, embedding, first_token, fwd, layer_norm, linear,
    multi_head_attention, str_key, usize_key, Activation, Batch, SequenceClassifier,
};
use anyhow::{bail, Result};
use candle_core::Tensor;
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};

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

struct Layer {
    q_lin: Linear,
    k_lin: Linear,
    v_lin: Linear,
    out_lin: Linear,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    output_layer_norm: LayerNorm,
    act: Activation,
    heads: usize,
}

impl Layer {
    fn load(vb: &VarBuilder, c: &DistilBertConfig) -> Result<Self> {
        let (d, h) = (c.dim, c.hidden_dim);
        let attn = vb.pp("attention");
        let ffn = vb.pp("ffn");
        Ok(Layer {
            q_lin: linear(&attn, "q_lin", d, d)?,
            k_lin: linear(&attn, "k_lin", d, d)?,
            v_lin: linear(&attn, "v_lin", d, d)?,
            out_lin: linear(&attn, "out_lin", d, d)?,
            sa_layer_norm: layer_norm(vb, "sa_layer_norm", d, LAYER_NORM_EPS)?,
            lin1: linear(&ffn, "lin1", d, h)?,
            lin2: linear(&ffn, "lin2", h, d)?,
            output_layer_norm: layer_norm(vb, "output_layer_norm", d, LAYER_NORM_EPS)?,
            act: c.activation,
            heads: c.n_heads,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let ctx = multi_head_attention(
            &fwd(&self.q_lin, x)?,
            &fwd(&self.k_lin, x)?,
            &fwd(&self.v_lin, x)?,
            bias,
            self.heads,
        )?;
        let x = fwd(&self.sa_layer_norm, &(fwd(&self.out_lin, &ctx)? + x)?)?;
        let ff = fwd(&self.lin2, &self.act.apply(&fwd(&self.lin1, &x)?)?)?;
        fwd(&self.output_layer_norm, &(ff + x)?)
    }
}

pub struct DistilBertForSequenceClassification {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    pre_classifier: Linear,
    classifier: Linear,
    max_positions: usize,
}

impl DistilBertForSequenceClassification {
    pub fn load(config: &serde_json::Value, vb: VarBuilder, num_labels: usize) -> Result<Self> {
        let c = DistilBertConfig::from_json(config)?;
        let base = vb.pp("distilbert");
        let emb = base.pp("embeddings");
        let layers = (0..c.n_layers)
            .map(|i| Layer::load(&base.pp("transformer").pp("layer").pp(i), &c))
            .collect::<Result<Vec<_>>>()?;
        Ok(DistilBertForSequenceClassification {
            word_embeddings: embedding(&emb, "word_embeddings", c.vocab_size, c.dim)?,
            position_embeddings: embedding(
                &emb,
                "position_embeddings",
                c.max_position_embeddings,
                c.dim,
            )?,
            embeddings_norm: layer_norm(&emb, "LayerNorm", c.dim, LAYER_NORM_EPS)?,
            layers,
            pre_classifier: linear(&vb, "pre_classifier", c.dim, c.dim)?,
            classifier: linear(&vb, "classifier", c.dim, num_labels)?,
            max_positions: c.max_position_embeddings,
        })
    }
}

impl SequenceClassifier for DistilBertForSequenceClassification {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        check_len(batch, self.max_positions)?;
        let (b, s) = batch.input_ids.dims2()?;
        let device = batch.input_ids.device();
        // (b, s): 0, 1, 2, ... for every row
        let pos = Tensor::arange(0u32, s as u32, device)?
            .unsqueeze(0)?
            .repeat((b, 1))?;
        let x = (fwd(&self.word_embeddings, &batch.input_ids)?
            + fwd(&self.position_embeddings, &pos)?)?;
        let mut x = fwd(&self.embeddings_norm, &x)?;
        let bias = attention_bias(&batch.attention_mask)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias)?;
        }
        let h = fwd(&self.pre_classifier, &first_token(&x)?)?.relu()?;
        fwd(&self.classifier, &h)
    }
    fn max_positions(&self) -> usize {
        self.max_positions
    }
}
