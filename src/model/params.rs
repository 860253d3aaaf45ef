//! The model's parameters: one [`Var`] per checkpoint tensor, named exactly as in the HF
//! checkpoint (`model.layers.0.self_attn.q_proj.weight`), in a fixed order.

use super::config::{Family, ModelConfig};
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// How a fresh tensor is initialised (transformers' `_init_weights` conventions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitKind {
    /// Normal(0, initializer_range): linear and embedding weights.
    Normal,
    Zeros,
    Ones,
}

/// A tensor the architecture expects: name, shape and how to initialise it.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: InitKind,
}

/// Every tensor the architecture needs, in checkpoint order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    // Gemma stores the norm weight w and applies (1 + w), so "identity" is zeros.
    let norm_init = if cfg.family == Family::Gemma {
        InitKind::Zeros
    } else {
        InitKind::Ones
    };
    let mut out = Vec::new();
    let mut push =
        |name: String, shape: Vec<usize>, init: InitKind| out.push(ParamSpec { name, shape, init });
    push(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, h],
        InitKind::Normal,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        push(format!("{p}.input_layernorm.weight"), vec![h], norm_init);
        for (proj, out_dim, in_dim) in [
            ("q_proj", q, h),
            ("k_proj", kv, h),
            ("v_proj", kv, h),
            ("o_proj", h, q),
        ] {
            push(
                format!("{p}.self_attn.{proj}.weight"),
                vec![out_dim, in_dim],
                InitKind::Normal,
            );
            let has_bias = match cfg.family {
                Family::Qwen2 => proj != "o_proj",
                _ => cfg.attention_bias,
            };
            if has_bias {
                push(
                    format!("{p}.self_attn.{proj}.bias"),
                    vec![out_dim],
                    InitKind::Zeros,
                );
            }
        }
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            norm_init,
        );
        for (proj, out_dim, in_dim) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]
        {
            push(
                format!("{p}.mlp.{proj}.weight"),
                vec![out_dim, in_dim],
                InitKind::Normal,
            );
            if cfg.mlp_bias {
                push(
                    format!("{p}.mlp.{proj}.bias"),
                    vec![out_dim],
                    InitKind::Zeros,
                );
            }
        }
    }
    push("model.norm.weight".into(), vec![h], norm_init);
    if !cfg.tie_word_embeddings {
        push(
            "lm_head.weight".into(),
            vec![cfg.vocab_size, h],
            InitKind::Normal,
        );
    }
    out
}

/// Named trainable variables in checkpoint order.
#[derive(Clone)]
pub struct Params {
    names: Vec<String>,
    vars: HashMap<String, Var>,
}

impl Params {
    pub fn new(entries: Vec<(String, Var)>) -> Self {
        let names = entries.iter().map(|(n, _)| n.clone()).collect();
        Params {
            names,
            vars: entries.into_iter().collect(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn get(&self, name: &str) -> Result<&Var> {
        match self.vars.get(name) {
            Some(v) => Ok(v),
            None => bail!("tensor \"{name}\" is missing"),
        }
    }

    /// The tensor view of a variable (shares storage, so optimizer updates are seen).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        Ok(self.get(name)?.as_tensor().clone())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// (name, var) in checkpoint order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.names.iter().map(move |n| (n, &self.vars[n]))
    }

    pub fn num_elements(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }
}
