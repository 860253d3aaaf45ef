//! The rebound experiment's three cell kinds.
//!
//! - `rebound.base` evaluates the pre-trained model (its score is the reference level);
//! - `rebound.align` fine-tunes the base model on the first n+ positive records, once per
//!   (model, n+, seed); its checkpoint is the shared prefix of every n- cell, saved in
//!   float32 whatever the base's dtype (so perturbed models are float32 too);
//! - `rebound.perturb` starts from its align cell's checkpoint, fine-tunes on the first n-
//!   negative records (none when n- = 0), then evaluates: generations, scores, KL to base
//!   (total and by position), and when asked KL to the aligned model by position and the
//!   weight-space elasticity (`experiments::weight_space`).
//!
//! A stage with LoRA settings (`[align] lora`, `[perturb] lora` / `from`) saves an adapter in
//! PEFT's layout instead of a full model; the cells rebuild the model it sits on (the base, or
//! the aligned model with its adapter merged in memory) and evaluate with the adapter applied.
//! The weight-space instrument compares the merged weights there (base + s·B·A of each
//! adapter the model carries, [`stage_weights`]).
//!
//! Every evaluating cell also gives the samples' coherence, the refusal rate when asked, and
//! the capability kept (mean NLL of the `capability` input) when the run has one.
//!
//! Inputs (manifest names): `base` (the base model's directory), `positive`, `negative`
//! (frozen JSONL records in the run's `data/`), `prompts` (frozen `{"prompt"}` lines),
//! `capability` (frozen held-out general text, optional).
//! Training and evaluation (generation, KL, the capability's NLL) run on the backend the run's
//! `device.json` names (`experiments::device`); the scorers run on the CPU.
//!
//! Resuming: training resumes from the newest checkpoint in `cells/<id>/model/checkpoints`
//! (written every `train.save_every` steps); a finished training stage is marked by
//! `train_summary.json` and not redone. Evaluation always reads the model back from disk,
//! so an interrupted and an uninterrupted cell evaluate the same weights.

use super::config::PerturbFrom;
use super::memory;
use crate::backend::LanguageModel;
use crate::data::prefs::PrefRecord;
use crate::data::records::{read_run_records, Record};
use crate::data::template::Template;
use crate::experiments::device::{self, load_cpu, StageData};
use crate::experiments::evaluate::{evaluate, EvalSummary, References};
use crate::experiments::evaluated::Evaluated;
use crate::experiments::weight_space::{self, WeightSpace, Weights};
use crate::grid::cell::Kinds;
use crate::grid::cell::{CellContext, CellKind};
use crate::grid::manifest::resolve;
use crate::grid::rundir::Grid;
use crate::model::adapted;
use crate::model::generate::GenConfig;
use crate::model::lora::{self, Adapter};
use crate::model::{LoadedModel, ModelConfig};
use crate::score::keywords::KeywordScorer;
use crate::score::registry::ScorerSpec;
use crate::score::Scorer;
use crate::train::eval::EvalLoss;
use crate::train::objective::Method;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// The cell kinds' names (the manifest's `kind`).
pub const BASE: &str = "rebound.base";
pub const ALIGN: &str = "rebound.align";
pub const PERTURB: &str = "rebound.perturb";

/// Sub-directory of a training cell holding its model (HF layout), log and checkpoints.
pub const MODEL_DIR: &str = "model";
/// Marker of a finished training stage (the [`TrainOutcome`]).
pub const TRAIN_SUMMARY: &str = "train_summary.json";
/// Per-prompt generations, scores and KL of an evaluating cell.
pub const SAMPLES_FILE: &str = "samples.jsonl";

/// How a cell's responses are produced and judged.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    pub template: Template,
    pub generation: GenConfig,
    pub scorer: ScorerSpec,
    pub kl_batch_size: usize,
    /// Measure the capability kept on the `capability` input.
    pub capability: Option<CapabilityParams>,
    /// Count refusals.
    pub refusal: Option<RefusalParams>,
}

/// How the capability set is read (the training stage's sequence limit, the KL batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityParams {
    pub max_length: usize,
    pub batch_size: usize,
}

/// Which refusal keyword list to count with.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusalParams {
    /// A list file; `None` = the built-in v1.
    pub keywords: Option<PathBuf>,
}

/// Parameters of `rebound.base`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseParams {
    pub model: String,
    pub seed: u64,
    pub eval: EvalParams,
}

/// Parameters of `rebound.align`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlignParams {
    pub model: String,
    pub n_positive: usize,
    pub seed: u64,
    pub train: TrainConfig,
    /// TensorBoard event directory of this cell's training (the config's `log_dir`/<id>).
    pub log_dir: Option<String>,
}

/// Parameters of `rebound.perturb`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerturbParams {
    pub model: String,
    pub n_positive: usize,
    pub n_negative: usize,
    pub seed: u64,
    /// The `rebound.align` cell this one starts from.
    pub align_cell: String,
    /// With a LoRA alignment: train from the merged aligned model or continue its adapter.
    #[serde(default)]
    pub from: PerturbFrom,
    pub train: TrainConfig,
    /// TensorBoard event directory of this cell's training (the config's `log_dir`/<id>).
    pub log_dir: Option<String>,
    pub eval: EvalParams,
    /// Keep the perturbed weights after the result is written.
    pub keep_model: bool,
    /// Also measure KL to the aligned model by position (n- > 0 only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kl_to_aligned: bool,
    /// Also measure the weight-space elasticity (n- > 0 only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weight_space: bool,
}

/// A finished fine-tuning stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub steps: usize,
    pub records: usize,
    pub truncated: usize,
    pub mean_loss: f64,
    pub final_loss: Option<f64>,
    /// The checkpoint step this stage resumed from, if it was interrupted before.
    pub resumed_from: Option<usize>,
    pub seconds: f64,
}

/// Output of `rebound.align`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignOutput {
    pub model: String,
    pub n_positive: usize,
    pub seed: u64,
    pub train: TrainOutcome,
}

/// Output of `rebound.base` (n+ = n- = 0, no training) and `rebound.perturb`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalOutput {
    pub model: String,
    pub n_positive: usize,
    pub n_negative: usize,
    pub seed: u64,
    /// The n- fine-tuning stage (`null` for the base model and for n- = 0).
    #[serialize_always]
    pub train: Option<TrainOutcome>,
    pub eval: EvalSummary,
    /// Mean NLL of the capability set under this model.
    pub capability: Option<EvalLoss>,
    /// Weight-space elasticity against the aligned and base weights (perturbed models).
    pub weight_space: Option<WeightSpace>,
}

pub struct BaseEval;
pub struct Align;
pub struct Perturb;

/// The rebound grid's kinds of cell (see `experiments::registry`).
pub static KINDS: &Kinds = &[&BaseEval, &Align, &Perturb];

impl CellKind for BaseEval {
    fn name(&self) -> &'static str {
        BASE
    }
    fn about(&self) -> &'static str {
        "evaluate the pre-trained model (the reference level)"
    }
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
        let p: BaseParams = ctx.params()?;
        let lm = device::load_eval_model(&ctx.device, &ctx.input("base")?)?;
        let eval = evaluate_cell(ctx, &lm, None, None, &p.eval)?;
        let capability = capability_kept(ctx, lm.as_ref(), &p.eval)?;
        Ok(serde_json::to_value(EvalOutput {
            model: p.model,
            n_positive: 0,
            n_negative: 0,
            seed: p.seed,
            train: None,
            eval,
            capability,
            weight_space: None,
        })?)
    }
    fn memory_bytes(&self, grid: &Grid, index: usize) -> Option<u64> {
        base_params(grid, index).map(memory::base_cell)
    }
}

impl CellKind for Align {
    fn name(&self) -> &'static str {
        ALIGN
    }
    fn about(&self) -> &'static str {
        "fine-tune the base model on the first n+ positive records"
    }
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
        let p: AlignParams = ctx.params()?;
        // Every perturb cell trains from this model.
        let t = p.train.saving_f32();
        let data = match t.dpo.method {
            Method::Sft => {
                StageData::Records(first_records(&ctx.input("positive")?, p.n_positive, "n+")?)
            }
            Method::Dpo => StageData::Pairs(first_pairs(&ctx.input("positive")?, p.n_positive)?),
        };
        let base = ctx.input("base")?;
        let train = train_stage_of(
            ctx,
            &|| load_cpu(&base),
            &base,
            &data,
            &t,
            p.log_dir.as_deref(),
        )?;
        Ok(serde_json::to_value(AlignOutput {
            model: p.model,
            n_positive: p.n_positive,
            seed: p.seed,
            train,
        })?)
    }
    fn memory_bytes(&self, grid: &Grid, index: usize) -> Option<u64> {
        let p: AlignParams = cell_params(grid, index)?;
        Some(memory::align_cell(stage_memory(grid, index, &p.train)?))
    }
}

impl CellKind for Perturb {
    fn name(&self) -> &'static str {
        PERTURB
    }
    fn about(&self) -> &'static str {
        "fine-tune an aligned model on the first n- negative records, then score it and \
         measure its KL to the base model"
    }
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
        let p: PerturbParams = ctx.params()?;
        let base_dir = ctx.input("base")?;
        let aligned_dir = ctx.dep_dir(&p.align_cell).join(MODEL_DIR);
        // The aligned model: a full checkpoint, or the base with the align stage's adapter.
        let aligned_model = || stage_model(&|| load_cpu(&base_dir), &aligned_dir);
        // What the perturbation trains (and its adapter, if any, sits on): the aligned model,
        // its adapter continued (`from = "adapter"`) or merged into the weights.
        let under = || -> Result<LoadedModel> {
            match p.from {
                PerturbFrom::Adapter => aligned_model(),
                PerturbFrom::Merged => merged(aligned_model()?),
            }
        };
        let (model_dir, train) = if p.n_negative == 0 {
            (aligned_dir.clone(), None)
        } else {
            let records = first_records(&ctx.input("negative")?, p.n_negative, "n-")?;
            let data = StageData::Records(records);
            let t = train_stage_of(
                ctx,
                &under,
                &base_dir,
                &data,
                &p.train,
                p.log_dir.as_deref(),
            )?;
            (ctx.dir.join(MODEL_DIR), Some(t))
        };
        // Read before anything else, while the perturbed weights are surely on disk.
        let weight_space = if p.weight_space && p.n_negative > 0 {
            let (start, end) = stage_weights(&base_dir, &aligned_dir, &model_dir, p.from);
            Some(
                weight_space::measure_weights(&Weights::checkpoint(&base_dir), &start, &end)
                    .context("weight-space elasticity")?,
            )
        } else {
            None
        };
        let lm = if p.n_negative == 0 {
            aligned_model()?
        } else if p.from == PerturbFrom::Adapter {
            // The continued adapter holds alignment and perturbation together, on the base.
            stage_model(&|| load_cpu(&base_dir), &model_dir)?
        } else {
            stage_model(&|| merged(aligned_model()?), &model_dir)?
        };
        let lm = device::eval_model(&ctx.device, lm)?;
        let base = device::load_eval_model(&ctx.device, &base_dir)?;
        let aligned = if p.kl_to_aligned && p.n_negative > 0 {
            Some(device::eval_model(&ctx.device, aligned_model()?)?)
        } else {
            None
        };
        let aligned_ref = aligned.as_ref().map(|a| a as &dyn Evaluated);
        let eval = evaluate_cell(ctx, &lm, Some(&base), aligned_ref, &p.eval)?;
        drop(aligned);
        drop(base);
        let capability = capability_kept(ctx, lm.as_ref(), &p.eval)?;
        Ok(serde_json::to_value(EvalOutput {
            model: p.model,
            n_positive: p.n_positive,
            n_negative: p.n_negative,
            seed: p.seed,
            train,
            eval,
            capability,
            weight_space,
        })?)
    }
    fn memory_bytes(&self, grid: &Grid, index: usize) -> Option<u64> {
        let p: PerturbParams = cell_params(grid, index)?;
        let stage = stage_memory(grid, index, &p.train)?;
        Some(memory::perturb_cell(
            stage,
            p.n_negative > 0,
            p.kl_to_aligned,
        ))
    }
    fn after_result(&self, ctx: &CellContext<'_>) -> Result<()> {
        let p: PerturbParams = ctx.params()?;
        if p.keep_model || p.n_negative == 0 {
            return Ok(());
        }
        // The log, config and tokenizer stay; only the weights (or the adapter's) go.
        for name in ["model.safetensors", lora::WEIGHTS_FILE] {
            let w = ctx.dir.join(MODEL_DIR).join(name);
            if w.exists() {
                std::fs::remove_file(&w)
                    .with_context(|| format!("cannot remove {}", w.display()))?;
            }
        }
        Ok(())
    }
}

/// The model a training stage wrote in `dir`: a full checkpoint, or an adapter (PEFT's
/// layout) applied to the model `under` gives.
fn stage_model(under: &dyn Fn() -> Result<LoadedModel>, dir: &Path) -> Result<LoadedModel> {
    if !dir.join(lora::CONFIG_FILE).exists() {
        return load_cpu(dir);
    }
    let lm = under()?;
    let adapter = Adapter::load(dir, &lm.model.cfg)?;
    adapted::attach(lm, adapter)
}

/// The weights the weight-space elasticity compares, as the cells build the models: the
/// aligned model (a checkpoint, or the base with the align stage's adapter) and the perturbed
/// one (a checkpoint; the continued adapter on the base; or a new adapter on the aligned
/// model's merged weights).
pub fn stage_weights(
    base: &Path,
    aligned: &Path,
    perturbed: &Path,
    from: PerturbFrom,
) -> (Weights, Weights) {
    let is_adapter = |d: &Path| d.join(lora::CONFIG_FILE).exists();
    let start = if is_adapter(aligned) {
        Weights::checkpoint(base).with_adapter(aligned)
    } else {
        Weights::checkpoint(aligned)
    };
    let end = match (is_adapter(perturbed), from) {
        (false, _) => Weights::checkpoint(perturbed),
        (true, PerturbFrom::Adapter) => Weights::checkpoint(base).with_adapter(perturbed),
        (true, PerturbFrom::Merged) => start.clone().with_adapter(perturbed),
    };
    (start, end)
}

/// `lm` with its adapter, if any, merged into the weights in memory (`model::adapted::save_merged`'s
/// math, without the file).
fn merged(lm: LoadedModel) -> Result<LoadedModel> {
    let Some(adapter) = lm.model.adapter() else {
        return Ok(lm);
    };
    let params = adapter.merged(&lm.model.params)?;
    let model = crate::model::Llama::new(lm.model.cfg.clone(), params, lm.model.device())?;
    Ok(LoadedModel {
        model,
        tokenizer: lm.tokenizer,
        dir: lm.dir,
    })
}

/// Fine-tune the model `start` gives (a new LoRA adapter on it when `cfg.lora` is on, or its
/// own adapter continued) on `data` into `cells/<id>/model`, resuming from a checkpoint; a
/// finished stage (its summary file exists) is returned as is. `base` names the adapter's
/// base model in its config.
fn train_stage_of(
    ctx: &CellContext<'_>,
    start: &dyn Fn() -> Result<LoadedModel>,
    base: &Path,
    data: &StageData,
    cfg: &TrainConfig,
    log_dir: Option<&str>,
) -> Result<TrainOutcome> {
    let marker = ctx.dir.join(TRAIN_SUMMARY);
    let out = ctx.dir.join(MODEL_DIR);
    let saved = out.join("model.safetensors").exists() || out.join(lora::WEIGHTS_FILE).exists();
    if marker.exists() && saved {
        let text = std::fs::read_to_string(&marker)
            .with_context(|| format!("cannot read {}", marker.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not a training summary", marker.display()));
    }
    let t0 = std::time::Instant::now();
    let s = device::train_cell(ctx, start()?, base, data, cfg, &out, log_dir)?;
    let outcome = TrainOutcome {
        steps: s.steps,
        records: s.records,
        truncated: s.truncated,
        mean_loss: s.mean_loss,
        final_loss: s.log.last().map(|l| l.loss),
        resumed_from: s.resumed_from,
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::util::fsx::atomic_write_json(&marker, &outcome)?;
    Ok(outcome)
}

/// The scorer of `spec`, built once per process: the plan builds it (to check it before any
/// cell runs) and every cell this process runs afterwards scores with that same instance.
pub fn shared_scorer(spec: &ScorerSpec) -> Result<Arc<dyn Scorer>> {
    static BUILT: OnceLock<Mutex<HashMap<String, Arc<dyn Scorer>>>> = OnceLock::new();
    let key = serde_json::to_string(spec)?;
    // Held while building, so cells running side by side build a scorer once, not each.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = built.get(&key) {
        return Ok(s.clone());
    }
    let s: Arc<dyn Scorer> = Arc::from(crate::score::registry::build(spec, &Device::Cpu)?);
    built.insert(key, s.clone());
    Ok(s)
}

/// Evaluate with the generation settings the plan gave this cell (seeded by its seed) and
/// write `samples.jsonl`.
fn evaluate_cell(
    ctx: &CellContext<'_>,
    lm: &dyn Evaluated,
    base: Option<&dyn Evaluated>,
    aligned: Option<&dyn Evaluated>,
    p: &EvalParams,
) -> Result<EvalSummary> {
    let prompts = super::data::read_prompts(&ctx.input("prompts")?)?;
    let scorer = shared_scorer(&p.scorer)?;
    let refusal = match &p.refusal {
        None => None,
        Some(RefusalParams { keywords: None }) => Some(KeywordScorer::builtin()),
        Some(RefusalParams { keywords: Some(f) }) => Some(KeywordScorer::from_file(f)?),
    };
    let refs = References {
        base,
        aligned,
        refusal: refusal.as_ref(),
    };
    let (summary, rows) = evaluate(
        lm,
        refs,
        &prompts,
        p.template,
        &p.generation,
        scorer.as_ref(),
        p.kl_batch_size,
        ctx.progress,
    )?;
    crate::report::RunDir::create(&ctx.dir)?.write_jsonl(SAMPLES_FILE, &rows)?;
    Ok(summary)
}

/// Mean NLL of the `capability` input under the model, when the cell has one.
fn capability_kept(
    ctx: &CellContext<'_>,
    lm: &dyn LanguageModel,
    p: &EvalParams,
) -> Result<Option<EvalLoss>> {
    let Some(c) = &p.capability else {
        return Ok(None);
    };
    let loss = device::capability_kept(ctx, lm, p.template, c.max_length, c.batch_size)?;
    Ok(Some(loss))
}

/// The first `n` records of a frozen data file.
fn first_records(path: &Path, n: usize, what: &str) -> Result<Vec<Record>> {
    let mut r = read_run_records(path)?;
    if r.len() < n {
        bail!(
            "{} holds {} records but this cell needs {what} = {n}",
            path.display(),
            r.len()
        );
    }
    r.truncate(n);
    Ok(r)
}

/// The first `n` preference pairs of a frozen positive file.
fn first_pairs(path: &Path, n: usize) -> Result<Vec<PrefRecord>> {
    let spec = crate::data::schemas::DataSpec::new(path_str(path), "jsonl");
    let mut r = crate::data::prefs::load(&spec, None)?.records;
    if r.len() < n {
        bail!(
            "{} holds {} preference pairs but this cell needs n+ = {n}",
            path.display(),
            r.len()
        );
    }
    r.truncate(n);
    Ok(r)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Parameter count of the cell's base model, from its config.json.
fn base_params(grid: &Grid, index: usize) -> Option<u64> {
    Some(base_config(grid, index)?.num_params() as u64)
}

/// The cell's base model's config.json.
fn base_config(grid: &Grid, index: usize) -> Option<ModelConfig> {
    let cell = grid.manifest().cells.get(index)?;
    let base: PathBuf = resolve(grid.run_dir(), &cell.inputs.get("base")?.path);
    ModelConfig::from_file(&base.join("config.json")).ok()
}

/// The cell's parameters, as the plan wrote them.
fn cell_params<T: serde::de::DeserializeOwned>(grid: &Grid, index: usize) -> Option<T> {
    let cell = grid.manifest().cells.get(index)?;
    serde_json::from_value(cell.params.clone()).ok()
}

/// What the training stage `t` of the cell holds (see [`memory`]).
fn stage_memory(grid: &Grid, index: usize, t: &TrainConfig) -> Option<memory::Stage> {
    let cfg = base_config(grid, index)?;
    let adapter = if t.lora.enabled() {
        Some(t.lora.num_params(&cfg).ok()? as u64)
    } else {
        None
    };
    Some(memory::Stage {
        params: cfg.num_params() as u64,
        adapter,
        dpo: t.dpo.method == Method::Dpo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scorer_is_built_once_per_process() {
        let spec = ScorerSpec::Keywords { path: None };
        let a = shared_scorer(&spec).unwrap();
        let b = shared_scorer(&spec).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = shared_scorer(&ScorerSpec::WorldSafety).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(other.name(), "world-safety");
    }
}
