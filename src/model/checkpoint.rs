//! Checkpoint I/O in the Hugging Face layout: `config.json`, `model.safetensors` or shards
//! with `model.safetensors.index.json`, the tokenizer files and `generation_config.json`.
//! What we save loads unchanged in transformers: same tensor names, dtype and config keys.
//! Models come from a directory or from the offline HF cache, never from the network.
//! Weights holding NaN or inf are refused when loaded and never saved; a shard index may name
//! only files inside the model directory; every file is written durably (util::fsx).

use super::config::ModelConfig;
use super::init::init_params;
use super::llama::Llama;
use super::params::{param_specs, Params};
use super::tensor_file::non_finite;
pub use super::tensor_file::save_tensors;
use super::tokenizer::TextTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::path::{Path, PathBuf};

/// A model with its tokenizer and the directory it came from.
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub dir: PathBuf,
}

/// Files copied verbatim from the source directory when saving.
const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Resolve a model given as a directory, or as `org/name` in the offline HF cache
/// (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if p.exists() {
        bail!("{spec} is a file; give the model's directory (the one holding config.json)");
    }
    crate::data::hf_cache::resolve_hf_cache(crate::data::hf_cache::RepoKind::Model, spec)
}

/// Load config, weights (as f32 on `device`) and tokenizer.
pub fn load_model(spec: &str, device: &Device) -> Result<LoadedModel> {
    let dir = resolve_model_dir(spec)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let params = load_params(&dir, &cfg, device)?;
    let tokenizer = TextTokenizer::from_dir(&dir, &stop_ids(&dir, &cfg)?, cfg.pad_token_id)?
        .for_model(cfg.vocab_size, &dir.join("config.json"))?;
    let model = Llama::new(cfg, params, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        dir,
    })
}

/// The end-of-sequence ids of a checkpoint: config.json's, then any more that
/// `generation_config.json` lists. transformers' `generate` stops at the latter, and instruct
/// models name their end-of-turn token there only (Gemma's `<end_of_turn>`, Llama 3's
/// `<|eot_id|>`); the first id, the one training appends, stays config.json's (or the
/// tokenizer's).
fn stop_ids(dir: &Path, cfg: &ModelConfig) -> Result<Vec<u32>> {
    let mut ids = cfg.eos_token_ids.clone();
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(ids);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let listed = match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(x) => vec![x.clone()],
    };
    for x in listed {
        let id = x
            .as_u64()
            .filter(|&i| i < cfg.vocab_size as u64)
            .with_context(|| {
                format!(
                    "{}: eos_token_id {x} is not a token id below vocab_size = {}",
                    path.display(),
                    cfg.vocab_size
                )
            })? as u32;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// A fresh model from a `config.json` (from-scratch training), with the tokenizer taken from
/// `tokenizer_dir`.
pub fn init_model(
    config: &Path,
    tokenizer_dir: &Path,
    seed: u64,
    device: &Device,
) -> Result<LoadedModel> {
    let cfg = ModelConfig::from_file(config)?;
    cfg.check_training_fits(config)?;
    let params = init_params(&cfg, seed, device)?;
    let tokenizer = TextTokenizer::from_dir(tokenizer_dir, &cfg.eos_token_ids, cfg.pad_token_id)?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        bail!(
            "the tokenizer in {} has {} tokens but {} sets vocab_size = {}",
            tokenizer_dir.display(),
            tokenizer.vocab_size(),
            config.display(),
            cfg.vocab_size
        );
    }
    let model = Llama::new(cfg, params, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        dir: tokenizer_dir.to_path_buf(),
    })
}

/// The weight files of a model directory: `model.safetensors`, or the shards its index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
            bail!("{} has no \"weight_map\" object", index.display());
        };
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files
            .iter()
            .map(|f| shard_path(dir, f, &index))
            .collect::<Result<_>>()?;
        for p in &paths {
            if !p.exists() {
                bail!(
                    "shard {} named in {} is missing",
                    p.display(),
                    index.display()
                );
            }
        }
        return Ok(paths);
    }
    let pickles: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth"))
        .collect();
    if !pickles.is_empty() {
        bail!(
            "{} holds only pickle weights ({}). elastica refuses pickles because loading one can run arbitrary code. \
             Convert once with transformers: `python -c \"from transformers import AutoModelForCausalLM as M; \
             M.from_pretrained('{d}').save_pretrained('{d}', safe_serialization=True)\"`",
            dir.display(),
            pickles.join(", "),
            d = dir.display()
        );
    }
    bail!(
        "no model.safetensors or model.safetensors.index.json in {}",
        dir.display()
    )
}

/// A shard named in an index, refused unless it stays inside the model directory: no
/// absolute path, no `..`, and no symlink that leads out. In the HF cache a snapshot's files
/// are symlinks into the repository's `blobs/`, so there the repository directory
/// (`models--org--name`, two levels up from `snapshots/<rev>`) is the boundary.
fn shard_path(dir: &Path, name: &str, index: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let rel = Path::new(name);
    if name.is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!(
            "{} names the shard \"{name}\", which is not a plain file path inside the model \
             directory (absolute paths and \"..\" are refused)",
            index.display()
        );
    }
    let p = dir.join(rel);
    if let Ok(real) = p.canonicalize() {
        let dir_real = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let in_cache = dir_real
            .parent()
            .and_then(|s| s.file_name())
            .is_some_and(|n| n == "snapshots");
        let boundary = if in_cache {
            dir_real
                .parent()
                .and_then(Path::parent)
                .unwrap_or(&dir_real)
        } else {
            &dir_real
        };
        if !real.starts_with(boundary) {
            bail!(
                "{} names the shard \"{name}\", a symlink to {} outside the model directory {}; \
                 refusing to read it",
                index.display(),
                real.display(),
                boundary.display()
            );
        }
    }
    Ok(p)
}

fn load_params(dir: &Path, cfg: &ModelConfig, device: &Device) -> Result<Params> {
    let files = weight_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; elastica never writes a checkpoint in
    // place (saves go to a temp file and are renamed), so the mapping cannot change under us.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }.with_context(
        || {
            format!(
                "cannot read weights in {} (truncated or not safetensors?)",
                dir.display()
            )
        },
    )?;
    // Every layer has tensors in the file: a config declaring more layers than the file has
    // tensors is wrong, and building its parameter list first would allocate by the config's
    // number instead of the checkpoint's size.
    let n_tensors = st.tensors().len();
    if cfg.num_hidden_layers > n_tensors {
        bail!(
            "config.json in {} declares {} layers but the weights hold only {n_tensors} tensors",
            dir.display(),
            cfg.num_hidden_layers
        );
    }
    let specs = param_specs(cfg);
    let expected: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for (name, _) in st.tensors() {
        let tolerated = name.ends_with("rotary_emb.inv_freq")
            || (cfg.tie_word_embeddings && name == "lm_head.weight");
        if !expected.contains(name.as_str()) && !tolerated {
            bail!(
                "unexpected tensor \"{name}\" in {}: the checkpoint does not match the {:?} architecture its config.json describes",
                dir.display(),
                cfg.family
            );
        }
    }
    let mut entries = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = st.load(&spec.name, device).with_context(|| {
            format!(
                "tensor \"{}\" is missing or unreadable in {}",
                spec.name,
                dir.display()
            )
        })?;
        if t.dims() != spec.shape.as_slice() {
            bail!(
                "tensor \"{}\" in {} has shape {:?}, expected {:?} from config.json",
                spec.name,
                dir.display(),
                t.dims(),
                spec.shape
            );
        }
        let t = t.to_dtype(DType::F32)?;
        if let Some(x) = non_finite(&t)? {
            bail!(
                "tensor \"{}\" in {} holds a non-finite value ({x}); the checkpoint is damaged \
                 or its training diverged",
                spec.name,
                dir.display()
            );
        }
        entries.push((spec.name, Var::from_tensor(&t)?));
    }
    if cfg.tie_word_embeddings && st.get("lm_head.weight").is_ok() {
        check_tied_head(&st, &entries, dir)?;
    }
    Ok(Params::new(entries))
}

/// A tied model whose file also holds an `lm_head.weight`: fine when it equals the embedding
/// (some tools save both), refused when it differs, since transformers 4 ties it away and
/// transformers 5 keeps it, so the same checkpoint means two different models.
fn check_tied_head(
    st: &candle_core::safetensors::MmapedSafetensors,
    entries: &[(String, Var)],
    dir: &Path,
) -> Result<()> {
    let head = st
        .load("lm_head.weight", &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .with_context(|| {
            format!(
                "tensor \"lm_head.weight\" is unreadable in {}",
                dir.display()
            )
        })?;
    let embed = entries
        .iter()
        .find(|(n, _)| n == "model.embed_tokens.weight")
        .map(|(_, v)| v.as_tensor().to_device(&Device::Cpu))
        .transpose()?;
    let same = match embed {
        Some(e) if e.dims() == head.dims() => {
            e.flatten_all()?.to_vec1::<f32>()? == head.flatten_all()?.to_vec1::<f32>()?
        }
        _ => false,
    };
    if !same {
        bail!(
            "config.json in {} ties the output layer to the embedding (tie_word_embeddings = \
             true), but the weights hold their own lm_head.weight, which differs from \
             model.embed_tokens.weight: transformers 4 would use the embedding, transformers 5 \
             the stored head. Set \"tie_word_embeddings\": false to use the stored head, or \
             remove the tensor to tie",
            dir.display()
        );
    }
    Ok(())
}

/// The candle dtype for a config dtype name.
pub fn dtype_from_name(name: &str) -> Result<DType> {
    Ok(match name {
        "float32" | "fp32" => DType::F32,
        "bfloat16" | "bf16" => DType::BF16,
        "float16" | "fp16" => DType::F16,
        other => {
            bail!("unsupported weight dtype \"{other}\"; supported: float32, bfloat16, float16")
        }
    })
}

/// Save `model` in the HF layout into `out` (created if needed), in the checkpoint's own dtype
/// (or `dtype` if given). Each file is written atomically. Tokenizer and side files are copied
/// from `source_dir`.
pub fn save_model(model: &Llama, source_dir: &Path, out: &Path, dtype: Option<&str>) -> Result<()> {
    // The dtype is checked before `out` is made: a refused save leaves nothing.
    let dtype_name = dtype.unwrap_or(&model.cfg.torch_dtype).to_string();
    let dt = dtype_from_name(&dtype_name)?;
    let made = !out.exists();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if let Err(e) = save_params(&model.params, dt, &out.join("model.safetensors")) {
        // A refused save leaves no empty directory behind.
        if made {
            let _ = std::fs::remove_dir(out);
        }
        return Err(e);
    }
    let cfg = model.cfg.to_json_for_save(&dtype_name);
    crate::util::fsx::atomic_write_json(&out.join("config.json"), &cfg)?;
    if source_dir != out {
        for f in SIDE_FILES {
            let src = source_dir.join(f);
            if src.exists() {
                let bytes = std::fs::read(&src)
                    .with_context(|| format!("cannot read {}", src.display()))?;
                crate::util::fsx::atomic_write(&out.join(f), &bytes)?;
            }
        }
    }
    Ok(())
}

/// Write parameters as one safetensors file (with the `format: pt` metadata transformers
/// expects), atomically.
pub fn save_params(params: &Params, dtype: DType, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in params.iter() {
        // Never write diverged weights (over good ones, or for a later stage to start from).
        if let Some(x) = non_finite(var.as_tensor())? {
            bail!(
                "refusing to save {}: tensor \"{name}\" holds a non-finite value ({x}); training \
                 diverged (lower the learning rate)",
                path.display()
            );
        }
        let stored = var.as_tensor().to_dtype(dtype)?.contiguous()?;
        // A finite f32 can still overflow a narrower dtype (float16 ends at 65504).
        if dtype != DType::F32 && non_finite(&stored)?.is_some() {
            let max = var.as_tensor().abs()?.max_all()?.to_dtype(DType::F32)?;
            bail!(
                "refusing to save {}: tensor \"{name}\" holds a value of magnitude {} that \
                 {} cannot hold (it would be stored as inf); save in bfloat16 or float32 \
                 (--save-dtype)",
                path.display(),
                max.to_scalar::<f32>()?,
                dtype.as_str()
            );
        }
        tensors.push((name.clone(), stored));
    }
    save_tensors(&tensors, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn a_value_the_save_dtype_cannot_hold_is_refused_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let w = Var::from_vec(vec![1.0f32, -1.0e6], 2, &Device::Cpu).unwrap();
        let params = Params::new(vec![("w".to_string(), w)]);
        let f16 = dir.path().join("f16.safetensors");
        let e = save_params(&params, DType::F16, &f16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"w\"") && e.contains("1000000") && e.contains("--save-dtype"),
            "{e}"
        );
        assert!(!f16.exists());
        // bfloat16 has float32's range.
        save_params(&params, DType::BF16, &dir.path().join("bf16.safetensors")).unwrap();
    }
}
