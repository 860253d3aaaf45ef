//! `config.json` for the three supported families. The raw serde struct mirrors the file
//! (both the paper-era dialect with top-level `rope_theta`/`torch_dtype` and the
//! transformers-5 dialect with `rope_parameters`/`dtype`) and is resolved once into a plain
//! [`ModelConfig`]. The original JSON is kept so a saved checkpoint carries the same keys.
//! Values that cannot run (`rms_norm_eps` or `rope_theta` not > 0, zero sizes) are refused
//! here, and [`ModelConfig::check_training_fits`] refuses a model too large to train before
//! anything is allocated.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// Which architecture variant: decides biases, norm offset, activation and embedding scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Family {
    Llama,
    Qwen2,
    Gemma,
}

impl Family {
    pub const NAMES: &'static [&'static str] = &["llama", "qwen2", "gemma"];

    fn from_model_type(t: &str) -> Option<Self> {
        match t {
            "llama" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "gemma" => Some(Family::Gemma),
            _ => None,
        }
    }
}

/// Activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Qwen2).
    Silu,
    /// GeGLU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
    /// GeGLU with exact erf GELU.
    Gelu,
}

/// RoPE frequency scaling read from `rope_scaling` / `rope_parameters`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama-3.1 wavelength-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// YaRN (Peng et al. 2023; Qwen2.5's long-context setting): each frequency interpolated
    /// by `factor`, extrapolated, or a ramp between the two by its rotations over the original
    /// context, and cos / sin scaled by `attention_factor` (resolved as transformers does).
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
}

/// The resolved runtime configuration.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// Weight dtype named by the checkpoint (`torch_dtype` or `dtype`), e.g. "bfloat16".
    pub torch_dtype: String,
    /// The file as read, re-written on save with only the dtype key updated.
    pub raw: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<usize>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

/// The count under key `k`, which the config must give and which must be positive.
fn positive(v: Option<usize>, k: &str) -> Result<usize> {
    match v {
        Some(0) => bail!("key \"{k}\" must be positive"),
        Some(x) => Ok(x),
        None => bail!("missing key \"{k}\""),
    }
}

impl RawConfig {
    /// elastica computes full causal attention in every layer. A layer with sliding-window
    /// attention (Qwen2's `use_sliding_window` on the layers from `max_window_layers` on, or
    /// transformers 5's `layer_types`) agrees with it only on sequences up to the window, so a
    /// window shorter than the context is refused rather than computed differently.
    fn check_full_attention(&self, layers: usize, context: usize) -> Result<()> {
        let sliding = match &self.layer_types {
            Some(types) => {
                if let Some(t) = types
                    .iter()
                    .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
                {
                    bail!("unsupported layer type \"{t}\" in \"layer_types\"; supported: full_attention");
                }
                types.iter().any(|t| t == "sliding_attention")
            }
            None => {
                self.use_sliding_window == Some(true)
                    && self.sliding_window.is_some()
                    && self.max_window_layers.unwrap_or(layers) < layers
            }
        };
        // transformers drops the window when `use_sliding_window` is false.
        if !sliding || self.use_sliding_window == Some(false) {
            return Ok(());
        }
        match self.sliding_window {
            Some(w) if w >= context => Ok(()),
            Some(w) => bail!(
                "some layers use sliding-window attention (sliding_window = {w} tokens, shorter \
                 than max_position_embeddings = {context}), which elastica does not compute: it \
                 attends over the whole sequence, which agrees with transformers only up to {w} \
                 tokens. If every sequence you use stays within {w} tokens, set \
                 \"use_sliding_window\": false (and \"layer_types\" to full_attention) in \
                 config.json"
            ),
            None => {
                bail!("\"layer_types\" names sliding_attention but \"sliding_window\" is not set")
            }
        }
    }

    /// The family named by `model_type` (or, without it, the first of `architectures`).
    fn family(&self) -> Result<Family> {
        let model_type = match (&self.model_type, &self.architectures) {
            (Some(t), _) => t.clone(),
            (None, Some(a)) if !a.is_empty() => a[0].clone(),
            _ => bail!("missing key \"model_type\""),
        };
        let Some(family) = Family::from_model_type(&model_type) else {
            bail!(
                "unsupported architecture model_type=\"{model_type}\"; supported: {}",
                Family::NAMES.join(", ")
            );
        };
        Ok(family)
    }

    /// (query heads, key/value heads, head width), checked against each other and against
    /// `hidden_size`.
    fn heads(&self, hidden_size: usize) -> Result<(usize, usize, usize)> {
        let num_attention_heads = positive(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!("num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})");
        }
        let head_dim = match self.head_dim {
            Some(h) if h > 0 => h,
            _ => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    bail!("hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_attention_heads}) and no head_dim is given");
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            bail!("head_dim ({head_dim}) must be even for rotary embeddings");
        }
        Ok((num_attention_heads, num_key_value_heads, head_dim))
    }

    /// RoPE's theta (not yet checked) and scaling: top-level keys (paper era) or inside
    /// `rope_parameters` (transformers 5).
    fn rope(&self, max_position_embeddings: usize) -> Result<(f64, RopeScaling)> {
        let rope_params = self.rope_parameters.as_ref().and_then(|v| v.as_object());
        // transformers' own class default when the key is absent, for every family.
        let rope_theta = self
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0);
        let scaling_src = self
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(self.rope_parameters.as_ref());
        let scaling = parse_rope_scaling(scaling_src, max_position_embeddings)?;
        Ok((rope_theta, scaling))
    }

    /// The MLP's activation from `hidden_act` (each family's default without it), as
    /// transformers 5 reads it. Only Gemma configs carry `hidden_activation`, which
    /// transformers 4 preferred: one that means another activation than `hidden_act` is
    /// refused, since the two versions would build different models.
    fn activation(&self, family: Family) -> Result<Activation> {
        let default = match family {
            Family::Gemma => "gelu_pytorch_tanh",
            _ => "silu",
        };
        let act = activation_named(family, self.hidden_act.as_deref().unwrap_or(default))?;
        if let (Family::Gemma, Some(other)) = (family, self.hidden_activation.as_deref()) {
            if activation_named(family, other)? != act {
                bail!(
                    "\"hidden_activation\": \"{other}\" and \"hidden_act\": \"{}\" name \
                     different activations (transformers 4 uses the first, transformers 5 the \
                     second); keep the one the weights were trained with",
                    self.hidden_act.as_deref().unwrap_or(default)
                );
            }
        }
        Ok(act)
    }

    /// (bos, eos ids, pad): the first id where a key lists several, except for eos.
    fn special_tokens(&self) -> Result<(Option<u32>, Vec<u32>, Option<u32>)> {
        let eos_token_ids =
            token_ids(self.eos_token_id.as_ref()).context("key \"eos_token_id\"")?;
        let bos_token_id = token_ids(self.bos_token_id.as_ref())
            .context("key \"bos_token_id\"")?
            .first()
            .copied();
        let pad_token_id = token_ids(self.pad_token_id.as_ref())
            .context("key \"pad_token_id\"")?
            .first()
            .copied();
        Ok((bos_token_id, eos_token_ids, pad_token_id))
    }
}

/// A `hidden_act` name as `family` reads it.
fn activation_named(family: Family, name: &str) -> Result<Activation> {
    Ok(match (family, name) {
        // transformers' Gemma forces the tanh approximation for the legacy "gelu" value.
        (Family::Gemma, "gelu") | (_, "gelu_pytorch_tanh") | (_, "gelu_new") => {
            Activation::GeluTanh
        }
        (_, "silu") | (_, "swish") => Activation::Silu,
        (_, "gelu") => Activation::Gelu,
        (_, other) => {
            bail!("unsupported activation \"{other}\"; supported: silu, gelu, gelu_pytorch_tanh")
        }
    })
}

impl ModelConfig {
    /// Say once per process when a sequence of `t` tokens runs past the model's context:
    /// it is computed as transformers computes it, but silently it would look like any other.
    pub fn note_past_context(&self, t: usize) {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let ctx = self.max_position_embeddings;
        if t > ctx && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "warning: a sequence of {t} tokens runs past the model's context \
                 (max_position_embeddings = {ctx}); its later positions are computed as \
                 transformers computes them, on positions the model was not trained on \
                 (--max-length {ctx} cuts sequences to the context)"
            );
        }
    }

    /// Read and resolve `config.json`; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("in model config {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw_value: serde_json::Value = serde_json::from_str(text).context("not valid JSON")?;
        let raw: RawConfig =
            serde_json::from_value(raw_value.clone()).context("unexpected value type in config")?;
        Self::resolve(raw, raw_value)
    }

    fn resolve(raw: RawConfig, raw_value: serde_json::Value) -> Result<Self> {
        let family = raw.family()?;
        let hidden_size = positive(raw.hidden_size, "hidden_size")?;
        let (num_attention_heads, num_key_value_heads, head_dim) = raw.heads(hidden_size)?;
        let max_position_embeddings = raw.max_position_embeddings.unwrap_or(2048);
        let (rope_theta, rope_scaling) = raw.rope(max_position_embeddings)?;
        let activation = raw.activation(family)?;
        let tie_word_embeddings = raw
            .tie_word_embeddings
            .unwrap_or(matches!(family, Family::Gemma));
        let attention_bias = match family {
            Family::Qwen2 => true,
            _ => raw.attention_bias.unwrap_or(false),
        };
        let (bos_token_id, eos_token_ids, pad_token_id) = raw.special_tokens()?;
        let vocab_size = positive(raw.vocab_size, "vocab_size")?;
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            bail!("key \"rms_norm_eps\" must be a finite number > 0, got {rms_norm_eps}");
        }
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            bail!("key \"rope_theta\" must be a finite number > 0, got {rope_theta}");
        }
        if max_position_embeddings == 0 {
            bail!("key \"max_position_embeddings\" must be positive");
        }
        let num_hidden_layers = positive(raw.num_hidden_layers, "num_hidden_layers")?;
        raw.check_full_attention(num_hidden_layers, max_position_embeddings)?;
        Ok(ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: positive(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
            attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            activation,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            torch_dtype: raw
                .torch_dtype
                .or(raw.dtype)
                .unwrap_or_else(|| "float32".into()),
            raw: raw_value,
        })
    }

    /// The config as JSON for saving: the original keys, with the dtype key set to `dtype`
    /// in whichever dialect the file used.
    pub fn to_json_for_save(&self, dtype: &str) -> serde_json::Value {
        let mut v = self.raw.clone();
        if let Some(obj) = v.as_object_mut() {
            if obj.contains_key("dtype") && !obj.contains_key("torch_dtype") {
                obj.insert("dtype".into(), dtype.into());
            } else {
                obj.insert("torch_dtype".into(), dtype.into());
            }
        }
        v
    }

    /// Number of parameters the model has (embeddings counted once when tied); saturates at
    /// `usize::MAX` for sizes no machine holds.
    pub fn num_params(&self) -> usize {
        self.checked_num_params().unwrap_or(usize::MAX)
    }

    /// [`Self::num_params`], or `None` when the count overflows.
    pub fn checked_num_params(&self) -> Option<usize> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads.checked_mul(self.head_dim)?;
        let kv = self.num_key_value_heads.checked_mul(self.head_dim)?;
        let hq = h.checked_mul(q)?;
        let mut attn = hq
            .checked_mul(2)?
            .checked_add(h.checked_mul(kv)?.checked_mul(2)?)?;
        if self.attention_bias {
            attn = attn.checked_add(q)?.checked_add(kv.checked_mul(2)?)?;
        }
        let mut mlp = h.checked_mul(i)?.checked_mul(3)?;
        if self.mlp_bias {
            mlp = mlp.checked_add(i.checked_mul(2)?)?.checked_add(h)?;
        }
        let layer = attn.checked_add(mlp)?.checked_add(h.checked_mul(2)?)?;
        let embed = v.checked_mul(h)?;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed
            .checked_add(self.num_hidden_layers.checked_mul(layer)?)?
            .checked_add(h)?
            .checked_add(head)
    }

    /// Bytes that training holds besides activations: f32 weights, f32 gradients and two f32
    /// AdamW moments, 16 bytes a parameter (`None`: beyond any count).
    pub fn training_bytes(&self) -> Option<u64> {
        (self.checked_num_params()? as u64).checked_mul(16)
    }

    /// Refuse, before anything is allocated, a model whose training state alone exceeds this
    /// machine's memory (/proc/meminfo `MemTotal`; no check where that is unknown).
    pub fn check_training_fits(&self, source: &Path) -> Result<()> {
        let Some(total) = crate::util::sysmem::total_bytes() else {
            return Ok(());
        };
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        match self.training_bytes() {
            Some(need) if need <= total => Ok(()),
            need => bail!(
                "{}: training this model needs about {} (parameters {}, each with an f32 weight, \
                 gradient and two AdamW moments: 16 bytes) before activations, but this machine \
                 has {:.1} GiB of memory",
                source.display(),
                need.map_or("more memory than any count holds".to_string(), |b| format!(
                    "{:.1} GiB",
                    gib(b)
                )),
                self.checked_num_params()
                    .map_or("beyond count".to_string(), |n| n.to_string()),
                gib(total)
            ),
        }
    }
}

fn token_ids(v: Option<&serde_json::Value>) -> Result<Vec<u32>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(vec![]),
        Some(serde_json::Value::Number(n)) => Ok(vec![as_u32(n)?]),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                serde_json::Value::Number(n) => as_u32(n),
                other => bail!("expected token ids, found {other}"),
            })
            .collect(),
        Some(other) => bail!("expected a token id or a list of ids, found {other}"),
    }
}

fn as_u32(n: &serde_json::Number) -> Result<u32> {
    n.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .with_context(|| format!("{n} is not a valid token id"))
}

fn parse_rope_scaling(v: Option<&serde_json::Value>, max_positions: usize) -> Result<RopeScaling> {
    let Some(obj) = v.and_then(|v| v.as_object()) else {
        return Ok(RopeScaling::None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    // Positive: a zero or negative factor divides by zero (NaN logits), and transformers
    // computes the same frequencies without checking.
    let num = |k: &str| -> Result<f64> {
        let x = obj
            .get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("rope scaling \"{kind}\" needs a number \"{k}\""))?;
        if !(x.is_finite() && x > 0.0) {
            bail!("rope scaling \"{kind}\": \"{k}\" must be a positive number, got {x}");
        }
        Ok(x)
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        "yarn" => yarn(obj, max_positions)?,
        other => bail!(
            "unsupported rope scaling type \"{other}\"; supported: default, linear, llama3, yarn"
        ),
    })
}

/// YaRN's settings as transformers' `_compute_yarn_parameters` resolves them: the original
/// context defaults to `max_position_embeddings`, a null `factor` to their ratio, and the
/// attention factor to `mscale(factor, mscale) / mscale(factor, mscale_all_dim)` where both
/// are given, else `mscale(factor)` (`0.1 ln(factor) + 1`, 1 for factor <= 1).
fn yarn(
    obj: &serde_json::Map<String, serde_json::Value>,
    max_positions: usize,
) -> Result<RopeScaling> {
    let opt = |k: &str| -> Result<Option<f64>> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .with_context(|| format!("rope scaling \"yarn\": \"{k}\" must be a number")),
        }
    };
    let original = opt("original_max_position_embeddings")?.unwrap_or(max_positions as f64);
    let factor = opt("factor")?.unwrap_or(max_positions as f64 / original);
    if !(factor.is_finite() && factor > 0.0 && original > 0.0) {
        bail!("rope scaling \"yarn\": factor {factor} and original_max_position_embeddings {original} must be positive");
    }
    let mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    // Python truthiness: an absent or zero mscale falls back to mscale(factor).
    let attention_factor = match (
        opt("attention_factor")?,
        opt("mscale")?,
        opt("mscale_all_dim")?,
    ) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
            mscale(factor, m) / mscale(factor, all)
        }
        _ => mscale(factor, 1.0),
    };
    // `or` in transformers: zero or absent takes the paper's default.
    let beta = |k: &str, default: f64| -> Result<f64> {
        Ok(opt(k)?.filter(|b| *b != 0.0).unwrap_or(default))
    };
    let truncate = match obj.get("truncate") {
        None | Some(serde_json::Value::Null) => true,
        Some(v) => v
            .as_bool()
            .context("rope scaling \"yarn\": \"truncate\" must be true or false")?,
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_max_position_embeddings: original,
        attention_factor,
        beta_fast: beta("beta_fast", 32.0)?,
        beta_slow: beta("beta_slow", 1.0)?,
        truncate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
        "num_hidden_layers":1,"num_attention_heads":2"#;

    #[test]
    fn both_rope_dialects_are_read() {
        let old = ModelConfig::from_json_str(&format!(
            "{BASE},\"rope_theta\":500000.0,\"torch_dtype\":\"bfloat16\"}}"
        ))
        .unwrap();
        assert_eq!(old.rope_theta, 500000.0);
        assert_eq!(old.torch_dtype, "bfloat16");
        let new = ModelConfig::from_json_str(&format!(
            "{BASE},\"rope_parameters\":{{\"rope_theta\":1000000.0,\"rope_type\":\"default\"}},\"dtype\":\"float32\"}}"
        ))
        .unwrap();
        assert_eq!(new.rope_theta, 1e6);
        assert_eq!(new.rope_scaling, RopeScaling::None);
        let saved = new.to_json_for_save("bfloat16");
        assert_eq!(saved["dtype"], "bfloat16");
        assert!(saved.get("torch_dtype").is_none());
    }

    /// The activation is `hidden_act`'s, as transformers 5 reads it: a stray
    /// `hidden_activation` outside Gemma is not read; in Gemma it must agree with `hidden_act`
    /// (transformers 4 preferred it), the legacy "gelu" meaning the tanh approximation.
    #[test]
    fn the_activation_is_hidden_acts() {
        let act = |family: &str, keys: &str| {
            let base = BASE.replace("\"llama\"", &format!("\"{family}\""));
            ModelConfig::from_json_str(&format!("{base}{keys}}}")).map(|c| c.activation)
        };
        assert_eq!(act("llama", "").unwrap(), Activation::Silu);
        let stray = ",\"hidden_act\":\"silu\",\"hidden_activation\":\"gelu\"";
        assert_eq!(act("qwen2", stray).unwrap(), Activation::Silu);
        assert_eq!(act("gemma", "").unwrap(), Activation::GeluTanh);
        let official = ",\"hidden_act\":\"gelu\",\"hidden_activation\":\"gelu_pytorch_tanh\"";
        assert_eq!(act("gemma", official).unwrap(), Activation::GeluTanh);
        let e = act(
            "gemma",
            ",\"hidden_act\":\"gelu\",\"hidden_activation\":\"silu\"",
        );
        let e = format!("{:#}", e.unwrap_err());
        assert!(
            e.contains("hidden_activation") && e.contains("transformers 5"),
            "{e}"
        );
    }

    /// A factor that would divide by zero (NaN logits) is refused, naming the key.
    #[test]
    fn rope_factors_must_be_positive() {
        let with = |scaling: &str| {
            ModelConfig::from_json_str(&format!("{BASE},\"rope_scaling\":{scaling}}}"))
                .map(|c| c.rope_scaling)
        };
        let llama3 = |f: &str| {
            format!(
                r#"{{"rope_type":"llama3","factor":{f},"low_freq_factor":1.0,
                "high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#
            )
        };
        for (scaling, key) in [
            (
                r#"{"type":"linear","factor":0.0}"#.to_string(),
                "\"factor\"",
            ),
            (
                r#"{"type":"linear","factor":-2.0}"#.to_string(),
                "\"factor\"",
            ),
            (llama3("0"), "\"factor\""),
            (llama3("8.0").replace("1.0", "0.0"), "\"low_freq_factor\""),
        ] {
            let e = format!("{:#}", with(&scaling).unwrap_err());
            assert!(e.contains(key) && e.contains("positive"), "{scaling}: {e}");
        }
        assert_eq!(
            with(r#"{"type":"linear","factor":2.0}"#).unwrap(),
            RopeScaling::Linear { factor: 2.0 }
        );
        assert!(matches!(
            with(&llama3("8.0")).unwrap(),
            RopeScaling::Llama3 { .. }
        ));
    }

    /// YaRN's keys resolve as transformers resolves them; `dynamic` (which changes with the
    /// sequence length) is refused, naming what is supported.
    #[test]
    fn yarn_settings_resolve_with_transformers_defaults() {
        let with = |scaling: &str| {
            ModelConfig::from_json_str(&format!(
                "{BASE},\"max_position_embeddings\":128,\"rope_scaling\":{scaling}}}"
            ))
        };
        let yarn = |scaling: &str| with(scaling).unwrap().rope_scaling;
        // Only a factor: the original context is max_position_embeddings, betas 32 / 1.
        let only_factor = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 128.0,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        };
        assert_eq!(yarn(r#"{"type":"yarn","factor":4.0}"#), only_factor);
        let settled = |scaling: &str| match yarn(scaling) {
            RopeScaling::Yarn {
                factor,
                attention_factor,
                ..
            } => (factor, attention_factor),
            other => panic!("{other:?}"),
        };
        // A null factor: max_position_embeddings over the original context.
        let (f, _) =
            settled(r#"{"rope_type":"yarn","factor":null,"original_max_position_embeddings":32}"#);
        assert_eq!(f, 4.0);
        // Both mscales: their ratio; an explicit attention factor wins.
        let (_, a) =
            settled(r#"{"rope_type":"yarn","factor":8.0,"mscale":2.0,"mscale_all_dim":1.0}"#);
        let m = |k: f64| 0.1 * k * 8f64.ln() + 1.0;
        assert!((a - m(2.0) / m(1.0)).abs() < 1e-15);
        let (_, a) = settled(r#"{"rope_type":"yarn","factor":8.0,"attention_factor":1.5}"#);
        assert_eq!(a, 1.5);
        for (bad, want) in [
            (
                r#"{"rope_type":"yarn","factor":"4"}"#,
                "\"factor\" must be a number",
            ),
            (r#"{"rope_type":"yarn","factor":-2.0}"#, "must be positive"),
            (
                r#"{"rope_type":"yarn","factor":2.0,"truncate":1}"#,
                "\"truncate\"",
            ),
            (
                r#"{"rope_type":"dynamic","factor":2.0}"#,
                "supported: default, linear, llama3, yarn",
            ),
        ] {
            let e = format!("{:#}", with(bad).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = format!(
            "{:#}",
            ModelConfig::from_json_str(r#"{"model_type":"gpt2"}"#).unwrap_err()
        );
        assert!(e.contains("gpt2") && e.contains("llama"), "{e}");
        let e = format!(
            "{:#}",
            ModelConfig::from_json_str(r#"{"model_type":"llama","vocab_size":3}"#).unwrap_err()
        );
        assert!(e.contains("hidden_size"), "{e}");
    }

    /// Qwen1.5/Qwen2's published configs (use_sliding_window false) load; a window that
    /// would change the attention inside the context is refused, in either dialect.
    #[test]
    fn sliding_window_attention_is_refused_only_where_it_would_differ() {
        let qwen = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"max_position_embeddings":64"#;
        let cfg = |extra: &str| ModelConfig::from_json_str(&format!("{qwen},{extra}}}"));
        for ok in [
            r#""use_sliding_window":false,"sliding_window":32,"max_window_layers":0"#,
            r#""use_sliding_window":true,"sliding_window":32,"max_window_layers":2"#,
            r#""use_sliding_window":true,"sliding_window":64,"max_window_layers":0"#,
            r#""layer_types":["full_attention","full_attention"],"sliding_window":null"#,
        ] {
            cfg(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        for bad in [
            r#""use_sliding_window":true,"sliding_window":32,"max_window_layers":1"#,
            r#""layer_types":["full_attention","sliding_attention"],"sliding_window":32"#,
        ] {
            let e = format!("{:#}", cfg(bad).unwrap_err());
            assert!(
                e.contains("sliding_window = 32") && e.contains("\"use_sliding_window\": false"),
                "{bad}: {e}"
            );
        }
        let e = format!(
            "{:#}",
            cfg(r#""layer_types":["full_attention","chunked"]"#).unwrap_err()
        );
        assert!(e.contains("\"chunked\""), "{e}");
    }
}
