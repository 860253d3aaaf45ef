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

/// A decoder layer's projections with the block they live in, in checkpoint order: the one
/// list the model (`llama.rs`), its backward, LoRA and the key tree below name them by.
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
];

/// The module name of projection `proj` (index in [`PROJECTIONS`]) of layer `layer`:
/// `model.layers.{layer}.{block}.{name}`.
pub fn proj_module(layer: usize, proj: usize) -> String {
    let (block, name) = PROJECTIONS[proj];
    format!("model.layers.{layer}.{block}.{name}")
}

/// (out, in) of a projection's weight, by its name (`q_proj`, ...).
pub fn proj_shape(cfg: &ModelConfig, proj: &str) -> (usize, usize) {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    match proj {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_proj" | "up_proj" => (i, h),
        _ => (h, i), // down_proj
    }
}

/// Whether a projection carries a bias: Qwen2's q/k/v always, otherwise the config's
/// `attention_bias` / `mlp_bias`.
fn has_bias(cfg: &ModelConfig, block: &str, proj: &str) -> bool {
    match (block, cfg.family) {
        ("mlp", _) => cfg.mlp_bias,
        (_, Family::Qwen2) => proj != "o_proj",
        _ => cfg.attention_bias,
    }
}

/// Every tensor the architecture needs, in checkpoint order.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let h = cfg.hidden_size;
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
        for (j, (block, proj)) in PROJECTIONS.iter().enumerate() {
            if *block == "mlp" && PROJECTIONS[j - 1].0 != "mlp" {
                push(
                    format!("{p}.post_attention_layernorm.weight"),
                    vec![h],
                    norm_init,
                );
            }
            let (out_dim, in_dim) = proj_shape(cfg, proj);
            let module = proj_module(l, j);
            push(
                format!("{module}.weight"),
                vec![out_dim, in_dim],
                InitKind::Normal,
            );
            if has_bias(cfg, block, proj) {
                push(format!("{module}.bias"), vec![out_dim], InitKind::Zeros);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_tree_is_the_hf_checkpoint_order_with_qwen2_biases() {
        let cfg = ModelConfig::from_json_str(
            r#"{"model_type":"qwen2","vocab_size":50,"hidden_size":8,"intermediate_size":12,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rms_norm_eps":1e-6,"max_position_embeddings":64,"tie_word_embeddings":false}"#,
        )
        .unwrap();
        let got: Vec<(String, Vec<usize>)> = param_specs(&cfg)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        let l = "model.layers.0";
        let want: Vec<(String, Vec<usize>)> = [
            ("model.embed_tokens.weight".to_string(), vec![50, 8]),
            (format!("{l}.input_layernorm.weight"), vec![8]),
            (format!("{l}.self_attn.q_proj.weight"), vec![8, 8]),
            (format!("{l}.self_attn.q_proj.bias"), vec![8]),
            (format!("{l}.self_attn.k_proj.weight"), vec![4, 8]),
            (format!("{l}.self_attn.k_proj.bias"), vec![4]),
            (format!("{l}.self_attn.v_proj.weight"), vec![4, 8]),
            (format!("{l}.self_attn.v_proj.bias"), vec![4]),
            (format!("{l}.self_attn.o_proj.weight"), vec![8, 8]),
            (format!("{l}.post_attention_layernorm.weight"), vec![8]),
            (format!("{l}.mlp.gate_proj.weight"), vec![12, 8]),
            (format!("{l}.mlp.up_proj.weight"), vec![12, 8]),
            (format!("{l}.mlp.down_proj.weight"), vec![8, 12]),
            ("model.norm.weight".to_string(), vec![8]),
            ("lm_head.weight".to_string(), vec![50, 8]),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
    }
}
