//! A training run's directory, whatever the method and backend: the resolved settings and
//! fingerprints that make two runs the same run ([`RunSettings`]), the step log, the
//! checkpoints (a checkpoint counts only once its completion marker exists: written last,
//! deleted first), the resume point, the final save and the data order of each step (a pure
//! function of seed and step, so a resumed run replays exactly what the uninterrupted run
//! would have done).

use super::batch::Example;
use super::config::TrainConfig;
use super::optim::AdamW;
use crate::model::checkpoint::{save_model, save_params};
use crate::model::LoadedModel;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What makes two runs the same run: the resolved settings and the data, as tokenized. Stored
/// in every checkpoint's `trainer_state.json` and, once finished, as `train_config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// sha256 of the starting weights (names and f32 values, in order).
    pub start_sha256: String,
    /// sha256 of the tokenized examples (ids and loss labels), in order.
    pub data_sha256: String,
    /// Examples the run trains on.
    pub examples: usize,
    pub train: TrainConfig,
}

impl RunSettings {
    /// The fields of `self` (stored) that differ from `now`, as `name: stored -> now`.
    /// `save_every` is left out: it changes when checkpoints are written, not the weights.
    pub fn changes(&self, now: &RunSettings) -> Vec<String> {
        let mut out = Vec::new();
        if self.start_sha256 != now.start_sha256 {
            out.push(format!(
                "starting weights (--model / --init): sha256 {} -> {}",
                short(&self.start_sha256),
                short(&now.start_sha256)
            ));
        }
        if self.data_sha256 != now.data_sha256 || self.examples != now.examples {
            out.push(format!(
                "data: {} examples (sha256 {}) -> {} examples (sha256 {})",
                self.examples,
                short(&self.data_sha256),
                now.examples,
                short(&now.data_sha256)
            ));
        }
        let as_map = |c: &TrainConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (old, new) = (as_map(&self.train), as_map(&now.train));
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if k == "save_every" {
                continue;
            }
            let (a, b) = (old.get(k), new.get(k));
            if a != b {
                let show = |v: Option<&serde_json::Value>| {
                    v.map_or("(default)".to_string(), |v| v.to_string())
                };
                out.push(format!("{k}: {} -> {}", show(a), show(b)));
            }
        }
        out
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// sha256 over the parameters' names and f32 values: which model a run starts from,
/// wherever it was loaded from (one pass over the weights).
pub fn weights_fingerprint(lm: &LoadedModel) -> Result<String> {
    let adapter = lm.model.adapter().map(|a| &a.params);
    fingerprint(
        lm.model
            .params
            .iter()
            .chain(adapter.iter().flat_map(|p| p.iter())),
    )
}

/// [`weights_fingerprint`] of a parameter set (what any backend hands back as host weights).
pub fn params_fingerprint(params: &crate::model::Params) -> Result<String> {
    fingerprint(params.iter())
}

/// sha256 over (name, f32 values) pairs, in order.
fn fingerprint<'a>(
    params: impl Iterator<Item = (&'a String, &'a candle_core::Var)>,
) -> Result<String> {
    let mut h = Sha256::new();
    for (name, var) in params {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        let v: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 over the tokenized examples: what the run trains on, whatever file it came from.
pub fn data_fingerprint(examples: &[Example]) -> String {
    let mut h = Sha256::new();
    for e in examples {
        h.update((e.ids.len() as u64).to_le_bytes());
        for &t in &e.ids {
            h.update(t.to_le_bytes());
        }
        for &l in &e.labels {
            h.update(l.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    /// Mean NLL per counted token over the step's records (before the update).
    pub loss: f64,
    pub lr: f64,
    /// Tokens the loss counted in this step.
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The final weights of a run in `out`: the adapter of a LoRA run (its marker is
/// adapter_config.json), else the model.
fn final_weights(out: &Path) -> PathBuf {
    match out.join(crate::model::lora::CONFIG_FILE).is_file() {
        true => out.join(crate::model::lora::WEIGHTS_FILE),
        false => out.join("model.safetensors"),
    }
}

/// Save what a run trained into `out`: the adapter (PEFT's format) of a LoRA run, not the
/// frozen base; otherwise the whole model in `save_dtype`.
pub(crate) fn save_trained(lm: &LoadedModel, out: &Path, save_dtype: &str) -> Result<()> {
    match lm.model.adapter() {
        Some(a) => a.save(out),
        None => save_model(&lm.model, &lm.dir, out, Some(save_dtype)),
    }
}

/// The resolved settings of a finished run, written after its final model.
pub const FINISHED_SETTINGS: &str = "train_config.toml";

/// A run's step log, one JSON line per optimizer step.
pub const LOG_FILE: &str = "train_log.jsonl";

/// Where a resumed run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ResumePoint {
    /// Nothing to resume: train from the start.
    Fresh,
    /// From this complete checkpoint, written with the same settings and data.
    Checkpoint { step: usize, dir: PathBuf },
    /// The run finished with the same settings and data: nothing to do.
    Finished,
}

/// `train::resume_point` for a run already resolved (`train::recipe`).
pub fn resume_point_of(out: &Path, settings: &RunSettings, total: usize) -> Result<ResumePoint> {
    if finished_with(out, settings)? {
        return Ok(ResumePoint::Finished);
    }
    let Some((step, dir)) = latest_checkpoint(out)? else {
        return Ok(ResumePoint::Fresh);
    };
    if step > total {
        bail!(
            "the checkpoint in {} is at step {step}, past this run's {total} steps \
             (max_steps = {}); resume with --max-steps {step} or more, or start over \
             without --resume",
            dir.display(),
            settings.train.max_steps
        );
    }
    check_same_run(&dir, settings)?;
    Ok(ResumePoint::Checkpoint { step, dir })
}

/// Whether `out` holds a finished run with these settings. A finished run with other
/// settings is refused: resuming it would train from scratch over it.
fn finished_with(out: &Path, settings: &RunSettings) -> Result<bool> {
    let cfg_path = out.join(FINISHED_SETTINGS);
    if !cfg_path.is_file() || !final_weights(out).is_file() {
        return Ok(false);
    }
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {}", cfg_path.display()))?;
    // A file from an older elastica (settings only, no data fingerprint) cannot be compared:
    // such a run is trained again, as before.
    let Ok(stored) = toml::from_str::<RunSettings>(&text) else {
        return Ok(false);
    };
    let changes = stored.changes(settings);
    if !changes.is_empty() {
        bail!(
            "{} holds a finished run with other settings or data ({}); resuming would train \
             over it: give another --out, or delete that folder (`elastica train` without \
             --resume replaces it)",
            out.display(),
            changes.join("; ")
        );
    }
    Ok(true)
}

/// Load a finished run's saved weights into `lm`.
pub(crate) fn load_final(lm: &LoadedModel, out: &Path) -> Result<()> {
    let weights = final_weights(out);
    let tensors = candle_core::safetensors::load(&weights, lm.model.device())
        .with_context(|| format!("cannot read {}", weights.display()))?;
    // An adapter's keys carry PEFT's prefix.
    let prefix = match lm.model.adapter() {
        Some(_) => "base_model.model.",
        None => "",
    };
    for (name, var) in lm.model.trainable().iter() {
        let t = tensors
            .get(&format!("{prefix}{name}"))
            .with_context(|| format!("{} lacks tensor \"{name}\"", weights.display()))?;
        var.set(&t.to_dtype(DType::F32)?)
            .with_context(|| format!("tensor \"{name}\" in {}", weights.display()))?;
    }
    Ok(())
}

/// Refuse to resume from a checkpoint written with other settings or data.
fn check_same_run(dir: &Path, now: &RunSettings) -> Result<()> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let Some(stored) = state.get("settings") else {
        eprintln!(
            "warning: {} was written by an older elastica without its settings; they cannot \
             be checked against this run's",
            path.display()
        );
        return Ok(());
    };
    let stored: RunSettings = serde_json::from_value(stored.clone())
        .with_context(|| format!("{}: unreadable \"settings\"", path.display()))?;
    let changes = stored.changes(now);
    if !changes.is_empty() {
        bail!(
            "cannot resume from {}: it was written with other settings or data ({}). Resume \
             with the same settings, or start over without --resume (or in another --out)",
            dir.display(),
            changes.join("; ")
        );
    }
    Ok(())
}

/// Example indices of optimizer step `step` (0-based): epoch order is a seeded shuffle of
/// 0..n (or identity), and the step takes its slice of that order.
pub fn step_indices(
    n: usize,
    cfg: &TrainConfig,
    step: usize,
    steps_per_epoch: usize,
) -> Vec<usize> {
    let epoch = step / steps_per_epoch;
    let k = step % steps_per_epoch;
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.shuffle {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(epoch as u64);
        order.shuffle(&mut rng);
    }
    // Callers validated that batch_size x grad_accum fits; k * per < n.
    let per = cfg.batch_size.saturating_mul(cfg.grad_accum);
    order[k * per..(k * per).saturating_add(per).min(n)].to_vec()
}

fn checkpoint_root(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The file that makes a checkpoint directory count: written last, deleted first.
pub const COMPLETE_MARKER: &str = "complete";

/// The newest complete checkpoint (`checkpoints/step-N`), if any. A `step-N` directory
/// without its completion marker was cut short while being removed (or was left by an older
/// elastica): it is skipped with a warning and deleted, as is a temporary directory of a
/// checkpoint whose writing was cut short.
pub fn latest_checkpoint(out: &Path) -> Result<Option<(usize, PathBuf)>> {
    let root = checkpoint_root(out);
    if !root.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for e in std::fs::read_dir(&root).with_context(|| format!("cannot list {}", root.display()))? {
        let e = e.with_context(|| format!("cannot list {}", root.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".tmp-step-") {
            remove_checkpoint_dir(&path)?;
            continue;
        }
        let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            continue;
        };
        if !path.join(COMPLETE_MARKER).is_file() {
            eprintln!(
                "warning: checkpoint {} is incomplete (no \"{COMPLETE_MARKER}\" marker: a kill \
                 while it was being removed?); skipping and deleting it",
                path.display()
            );
            remove_checkpoint_dir(&path)?;
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, path));
        }
    }
    Ok(best)
}

/// Write `checkpoints/step-N` durably: every file in a temporary directory, the completion
/// marker last, then one rename; superseded checkpoints are removed afterwards.
pub(crate) fn write_checkpoint(
    lm: &LoadedModel,
    opt: &AdamW,
    out: &Path,
    step: usize,
    settings: &RunSettings,
) -> Result<()> {
    let state = serde_json::json!({ "step": step, "adam_step": opt.step, "settings": settings });
    write_checkpoint_with(out, step, &state, |dir| save_state(lm, Some(opt), dir))
}

/// The checkpoint layout every training loop shares: `fill` writes the weights and optimizer
/// state into a temporary directory, then `trainer_state.json` (`state`) and the completion
/// marker are written, the directory is renamed to `checkpoints/step-N` in one step, and
/// older checkpoints are removed (marker first).
pub fn write_checkpoint_with(
    out: &Path,
    step: usize,
    state: &serde_json::Value,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let root = checkpoint_root(out);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-step-")
        .tempdir_in(&root)
        .with_context(|| format!("cannot create a temporary directory in {}", root.display()))?;
    fill(tmp.path())?;
    crate::util::fsx::atomic_write_json(&tmp.path().join("trainer_state.json"), state)?;
    crate::util::fsx::atomic_write(&tmp.path().join(COMPLETE_MARKER), b"")?;
    let final_dir = root.join(format!("step-{step}"));
    let tmp_path = tmp.keep();
    crate::util::fsx::durable_rename(&tmp_path, &final_dir)?;
    // Older checkpoints are superseded.
    for e in std::fs::read_dir(&root)
        .with_context(|| format!("cannot list {}", root.display()))?
        .flatten()
    {
        let p = e.path();
        if p != final_dir && e.file_name().to_string_lossy().starts_with("step-") {
            remove_checkpoint_dir(&p)?;
        }
    }
    Ok(())
}

/// Delete a checkpoint directory, its completion marker first (and durably), so a kill
/// part-way leaves a directory that no resume trusts.
fn remove_checkpoint_dir(dir: &Path) -> Result<()> {
    let marker = dir.join(COMPLETE_MARKER);
    match std::fs::remove_file(&marker) {
        Ok(()) => crate::util::fsx::sync_dir(dir)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", marker.display())),
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// The AdamW update count a checkpoint's `trainer_state.json` records (`step`, one update a
/// step, where an older checkpoint lacks it).
pub(crate) fn saved_adam_step(dir: &Path, step: usize) -> Result<u64> {
    let p = dir.join("trainer_state.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let state: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", p.display()))?;
    Ok(state["adam_step"].as_u64().unwrap_or(step as u64))
}

/// Write a train state's files into `dir`: the trainable weights in f32
/// (`model.safetensors`) and the AdamW moments (`optimizer.safetensors`; none before the
/// first update).
pub(crate) fn save_state(lm: &LoadedModel, opt: Option<&AdamW>, dir: &Path) -> Result<()> {
    let params = lm.model.trainable();
    save_params(params, DType::F32, &dir.join("model.safetensors"))?;
    let moments = match opt {
        Some(o) => o.state_tensors(params)?,
        None => vec![],
    };
    crate::model::checkpoint::save_tensors(&moments, &dir.join("optimizer.safetensors"))
}

/// Load what [`save_state`] wrote into `lm` and `opt` (which has done `adam_step` updates).
pub(crate) fn load_state(
    lm: &LoadedModel,
    opt: &mut AdamW,
    dir: &Path,
    adam_step: u64,
) -> Result<()> {
    let dev = lm.model.device();
    let weights = candle_core::safetensors::load(dir.join("model.safetensors"), dev)
        .with_context(|| format!("cannot read checkpoint {}", dir.display()))?;
    for (name, var) in lm.model.trainable().iter() {
        let t = weights
            .get(name)
            .with_context(|| format!("checkpoint {} lacks tensor \"{name}\"", dir.display()))?;
        var.set(t)
            .with_context(|| format!("tensor \"{name}\" in checkpoint {}", dir.display()))?;
    }
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), dev)
        .with_context(|| format!("cannot read optimizer state in {}", dir.display()))?;
    check_state_finite(dir, &weights, &moments)?;
    opt.load_state(lm.model.trainable(), &moments, adam_step)
}

/// Refuse a checkpoint whose weights or AdamW moments hold NaN or inf (a damaged file): the
/// resumed run would otherwise find it only steps later, as a non-finite loss.
pub fn check_state_finite(
    dir: &Path,
    weights: &std::collections::HashMap<String, candle_core::Tensor>,
    moments: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    for (file, tensors) in [("model", weights), ("optimizer", moments)] {
        for (name, t) in tensors {
            if let Some(x) = crate::model::tensor_file::non_finite(t)? {
                bail!(
                    "checkpoint {}: tensor \"{name}\" of {file}.safetensors holds a non-finite \
                     value ({x}); the checkpoint is damaged: delete it to resume from an \
                     earlier one, or start over without --resume",
                    dir.display()
                );
            }
        }
    }
    Ok(())
}

/// Before a run trains into `out` from its start: what an earlier run left there goes, its
/// finished marker first, so that a replacement killed midway never passes for the earlier
/// run finished, and no earlier adapter or model (a LoRA run's adapter beside a full run's
/// model, say) outlives the run that wrote it. A folder no run has trained into is left as
/// it is.
pub(crate) fn clear_previous_run(out: &Path) -> Result<()> {
    if !out.join(FINISHED_SETTINGS).exists() && !out.join(LOG_FILE).exists() {
        return Ok(());
    }
    let remove = |p: &Path| match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", p.display()))
        }
        _ => Ok(()),
    };
    remove(&out.join(FINISHED_SETTINGS))?;
    crate::util::fsx::sync_dir(out)?;
    let mut stale: Vec<PathBuf> = [
        crate::model::lora::CONFIG_FILE,
        crate::model::lora::WEIGHTS_FILE,
        "model.safetensors",
        "model.safetensors.index.json",
    ]
    .iter()
    .map(|f| out.join(f))
    .collect();
    for e in std::fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("model-") && name.ends_with(".safetensors") {
            stale.push(out.join(name));
        }
    }
    for p in &stale {
        remove(p)?;
    }
    remove_checkpoints(out)
}

/// Remove every checkpoint of a finished run (each marker first).
pub fn remove_checkpoints(out: &Path) -> Result<()> {
    let root = checkpoint_root(out);
    if root.is_dir() {
        for e in std::fs::read_dir(&root)
            .with_context(|| format!("cannot list {}", root.display()))?
            .flatten()
        {
            if e.path().is_dir() {
                remove_checkpoint_dir(&e.path())?;
            }
        }
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove {}", root.display()))?;
    }
    Ok(())
}

/// The step log of a run (an SFT run's lines, or the shared fields of any method's).
pub fn read_log(path: &Path) -> Result<Vec<StepLog>> {
    read_log_as(path)
}

/// The lines of a JSON-lines log; a last line cut by a kill is dropped (the steps after the
/// checkpoint are redone).
pub fn read_log_as<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let n = text.lines().count();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(l) => out.push(l),
            Err(_) if i + 1 == n => {}
            Err(e) => bail!("{}: line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}

/// Replace a log with `log`'s lines, atomically.
pub(crate) fn rewrite_log<T: Serialize>(path: &Path, log: &[T]) -> Result<()> {
    crate::util::fsx::atomic_write_with(path, |w| {
        for l in log {
            serde_json::to_writer(&mut *w, l)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// Append one JSON line to a run's `train_log.jsonl`.
pub(crate) fn append_log<T: Serialize>(path: &Path, entry: &T) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    let mut line = serde_json::to_string(entry)?;
    line.push('\n');
    f.write_all(line.as_bytes())?;
    Ok(())
}
