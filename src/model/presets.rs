//! Named model sizes for from-scratch training on the synthetic world. Each preset is a
//! Llama config; the vocabulary and special ids come from the tokenizer it will use.

use super::tokenizer::TextTokenizer;
use anyhow::{bail, Result};

/// (name, hidden, layers, heads, intermediate): small enough to pre-train on a laptop CPU.
pub const PRESETS: &[(&str, usize, usize, usize, usize)] = &[
    ("tiny", 64, 2, 4, 176),
    ("small", 128, 4, 4, 344),
    ("base", 256, 4, 4, 688),
];

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// The preset called `name`, or an error listing the valid names.
pub fn config_json_check(name: &str) -> Result<(usize, usize, usize, usize)> {
    let Some(&(_, hidden, layers, heads, ff)) = PRESETS.iter().find(|p| p.0 == name) else {
        bail!(
            "unknown model size \"{name}\"; valid: {}",
            names().join(", ")
        );
    };
    Ok((hidden, layers, heads, ff))
}

/// The config.json text of preset `name` for a tokenizer's vocabulary.
pub fn config_json(name: &str, tok: &TextTokenizer, max_positions: usize) -> Result<String> {
    let (hidden, layers, heads, ff) = config_json_check(name)?;
    let bos = tok
        .bos_token
        .as_deref()
        .and_then(|t| tok.inner.token_to_id(t));
    let v = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": tok.vocab_size(),
        "hidden_size": hidden,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": true,
        "initializer_range": 0.02,
        "bos_token_id": bos,
        "eos_token_id": tok.eos_id(),
        "pad_token_id": tok.pad_id(),
        "torch_dtype": "float32",
    });
    Ok(serde_json::to_string_pretty(&v)?)
}
