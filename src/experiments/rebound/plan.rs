//! Planning: a validated [`ReboundConfig`] becomes a run directory ready to execute, with
//! the frozen data (`data/`), the resolved config (`config.toml`) and the grid manifest.
//!
//! Cells, per base model (ids prefixed `<model>.` when there are several):
//! - `base.s<seed>`: the pre-trained model's evaluation, one per seed;
//! - `align.p<n+>.s<seed>`: alignment on n+ positives, trained once per (n+, seed);
//! - `perturb.p<n+>.n<n->.s<seed>`: from that aligned checkpoint, n- negatives, evaluated.
//!
//! Everything is checked before any cell runs: the base models resolve and have a
//! config.json and tokenizer, the scorer builds, and the data sets hold enough records.
//! And everything is checked before anything is written: the data are frozen in memory,
//! the manifest is built from their hashes and checked against the run directory's
//! ([`Grid::check_replan`]), and only then are the data, `config.toml` and the manifest
//! written. A refused re-plan leaves the run directory byte-identical.

use super::cells::{
    AlignParams, BaseParams, CapabilityParams, EvalParams, PerturbParams, RefusalParams, ALIGN,
    BASE, PERTURB,
};
use super::config::ReboundConfig;
use super::data::{
    freeze, write_if_changed, Frozen, FrozenData, CAPABILITY_FILE, NEGATIVE_FILE, POSITIVE_FILE,
    PROMPTS_FILE,
};
use crate::experiments::log_dir::cell_log_dir;
use crate::grid::manifest::{CellSpec, Input, Manifest};
use crate::grid::rundir::Grid;
use crate::model::checkpoint::resolve_model_dir;
use crate::model::ModelConfig;
use crate::score::registry::ScorerSpec;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The resolved config written into the run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// A base model after resolution.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResolvedModel {
    pub name: String,
    pub dir: PathBuf,
    pub x: Option<f64>,
    pub params: usize,
}

/// A planned run.
#[derive(Debug, Clone)]
pub struct Planned {
    pub grid: Grid,
    pub data: FrozenData,
    pub models: Vec<ResolvedModel>,
}

/// Check everything, freeze the data and record the manifest in `run_dir`; nothing is
/// written unless every check passed.
pub fn plan(cfg: &ReboundConfig, run_dir: &Path, experiment: &str) -> Result<Planned> {
    let run_dir = absolute_dir(run_dir)?;
    let models = cfg
        .models
        .iter()
        .map(|m| {
            let dir = resolve_model_dir(&m.path)
                .with_context(|| format!("base model {:?} ({})", m.name, m.path))?;
            let dir = dir
                .canonicalize()
                .with_context(|| format!("cannot resolve {}", dir.display()))?;
            let mc = ModelConfig::from_file(&dir.join("config.json"))
                .with_context(|| format!("base model {:?}", m.name))?;
            if !dir.join("tokenizer.json").exists() {
                bail!(
                    "base model {:?}: {} has no tokenizer.json",
                    m.name,
                    dir.display()
                );
            }
            Ok(ResolvedModel {
                name: m.name.clone(),
                dir,
                x: m.x,
                params: mc.num_params(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let scorer = absolute_scorer(&cfg.scorer);
    // Built now to check it; the cells this process runs reuse this instance.
    super::cells::shared_scorer(&scorer).context("the [scorer] cannot be built")?;
    let frozen = freeze(cfg)?;
    let config_text = toml::to_string(cfg).context("cannot write the resolved config")?;
    let cells = cells(cfg, &models, &scorer, &frozen)?;
    let manifest = Manifest::new(experiment, cells)?;
    Grid::check_replan(&run_dir, &manifest)?;
    let data = frozen.summary.clone();
    if data.eval_overlap > 0 {
        eprintln!(
            "warning: {} of the {} evaluation prompts are also prompts of training records; \
             use an `offset` (or another split) so the evaluation measures held-out prompts",
            data.eval_overlap, data.prompts
        );
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create the run directory {}", run_dir.display()))?;
    frozen.write(&run_dir)?;
    write_if_changed(&run_dir.join(CONFIG_FILE), config_text.as_bytes())?;
    let grid = Grid::plan(&run_dir, manifest)?;
    Ok(Planned { grid, data, models })
}

/// `dir` as an absolute path without symlinks where it exists (cells run from any working
/// directory), without creating it.
fn absolute_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        dir.canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))
    } else {
        std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))
    }
}

/// The base models of an already planned run, read back from its manifest (each model's
/// `base` input is the absolute directory the cells use), for reports written after the
/// cells ran elsewhere (`elastica collect`).
pub fn models_of_grid(cfg: &ReboundConfig, grid: &Grid) -> Result<Vec<ResolvedModel>> {
    cfg.models
        .iter()
        .map(|m| {
            let pre = prefix(cfg, &m.name);
            let id = base_id(&pre, cfg.seeds[0]);
            let cell = grid
                .manifest()
                .index_of(&id)
                .map(|i| &grid.manifest().cells[i])
                .with_context(|| {
                    format!(
                        "the manifest of {} has no cell {id}; was config.toml edited after \
                         the run was planned?",
                        grid.run_dir().display()
                    )
                })?;
            let dir = cell
                .inputs
                .get("base")
                .map(|inp| crate::grid::manifest::resolve(grid.run_dir(), &inp.path))
                .with_context(|| format!("cell {id} has no `base` input"))?;
            let mc = ModelConfig::from_file(&dir.join("config.json"))
                .with_context(|| format!("base model {:?}", m.name))?;
            Ok(ResolvedModel {
                name: m.name.clone(),
                dir,
                x: m.x,
                params: mc.num_params(),
            })
        })
        .collect()
}

/// Cell ids (shared with the report, which finds cells by id).
pub fn base_id(prefix: &str, seed: u64) -> String {
    format!("{prefix}base.s{seed}")
}
pub fn align_id(prefix: &str, n_pos: usize, seed: u64) -> String {
    format!("{prefix}align.p{n_pos}.s{seed}")
}
pub fn perturb_id(prefix: &str, n_pos: usize, n_neg: usize, seed: u64) -> String {
    format!("{prefix}perturb.p{n_pos}.n{n_neg}.s{seed}")
}

/// The id prefix of a model's cells: empty for a single model.
pub fn prefix(cfg: &ReboundConfig, model: &str) -> String {
    if cfg.models.len() > 1 {
        format!("{model}.")
    } else {
        String::new()
    }
}

/// The frozen files the cells read, pinned by their bytes, and what every evaluation of the
/// grid shares.
struct CellPlanner<'a> {
    cfg: &'a ReboundConfig,
    scorer: &'a ScorerSpec,
    positive: Input,
    negative: Input,
    prompts: Input,
    capability: Option<Input>,
    refusal: Option<RefusalParams>,
}

impl<'a> CellPlanner<'a> {
    fn new(cfg: &'a ReboundConfig, scorer: &'a ScorerSpec, frozen: &Frozen) -> Result<Self> {
        let pin = |rel: &str| -> Result<Input> { Ok(Input::pinned_bytes(rel, frozen.bytes(rel)?)) };
        Ok(CellPlanner {
            cfg,
            scorer,
            positive: pin(POSITIVE_FILE)?,
            negative: pin(NEGATIVE_FILE)?,
            prompts: pin(PROMPTS_FILE)?,
            capability: match cfg.capability {
                Some(_) => Some(pin(CAPABILITY_FILE)?),
                None => None,
            },
            refusal: refusal_params(cfg, scorer)?,
        })
    }

    /// Each cell's generations are seeded by its own seed, here and only here.
    fn eval(&self, seed: u64) -> EvalParams {
        let cfg = self.cfg;
        EvalParams {
            template: cfg.train.template,
            generation: cfg.generation.with_seed(seed),
            scorer: self.scorer.clone(),
            kl_batch_size: cfg.eval.kl_batch_size,
            capability: self.capability.as_ref().map(|_| CapabilityParams {
                max_length: cfg.train.max_length,
                batch_size: cfg.eval.kl_batch_size,
            }),
            refusal: self.refusal.clone(),
        }
    }

    /// A cell's inputs: `list` and the base model; an evaluating cell also reads the
    /// capability set, when there is one.
    fn inputs(
        &self,
        m: &Model,
        list: &[(&str, &Input)],
        evaluates: bool,
    ) -> BTreeMap<String, Input> {
        let mut map: BTreeMap<String, Input> = list
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).clone()))
            .collect();
        map.insert("base".into(), m.dir.clone());
        if let (true, Some(c)) = (evaluates, &self.capability) {
            map.insert("capability".into(), c.clone());
        }
        map
    }

    /// The cells of one base model: its base evaluations, then per n+ and seed the align
    /// cell and its perturb cells.
    fn model_cells(&self, m: &ResolvedModel, out: &mut Vec<CellSpec>) -> Result<()> {
        let m = Model {
            name: &m.name,
            pre: prefix(self.cfg, &m.name),
            dir: Input::path(m.dir.to_string_lossy()),
        };
        for &seed in &self.cfg.seeds {
            out.push(CellSpec {
                id: base_id(&m.pre, seed),
                kind: BASE.into(),
                deps: vec![],
                inputs: self.inputs(&m, &[("prompts", &self.prompts)], true),
                params: serde_json::to_value(BaseParams {
                    model: m.name.to_string(),
                    seed,
                    eval: self.eval(seed),
                })?,
            });
        }
        for &n_pos in &self.cfg.n_positive {
            for &seed in &self.cfg.seeds {
                out.push(self.align_cell(&m, n_pos, seed)?);
                for &n_neg in &self.cfg.n_negative {
                    out.push(self.perturb_cell(&m, n_pos, n_neg, seed)?);
                }
            }
        }
        Ok(())
    }

    /// The fine-tuning settings of `seed` (it overrides `[train]`'s own).
    fn train(&self, seed: u64) -> TrainConfig {
        let mut train = self.cfg.train.clone();
        train.seed = seed;
        train
    }

    fn align_cell(&self, m: &Model, n_pos: usize, seed: u64) -> Result<CellSpec> {
        let id = align_id(&m.pre, n_pos, seed);
        Ok(CellSpec {
            id: id.clone(),
            kind: ALIGN.into(),
            deps: vec![],
            inputs: self.inputs(m, &[("positive", &self.positive)], false),
            params: serde_json::to_value(AlignParams {
                model: m.name.to_string(),
                n_positive: n_pos,
                seed,
                // The align stage's objective; the perturbation stays SFT.
                train: TrainConfig {
                    dpo: self.cfg.align.dpo_config(),
                    lora: self.cfg.align.lora.clone(),
                    ..self.train(seed)
                },
                log_dir: cell_log_dir(self.cfg.log_dir.as_deref(), &id)?,
            })?,
        })
    }

    fn perturb_cell(&self, m: &Model, n_pos: usize, n_neg: usize, seed: u64) -> Result<CellSpec> {
        let cfg = self.cfg;
        let align = align_id(&m.pre, n_pos, seed);
        let list: Vec<(&str, &Input)> = if n_neg > 0 {
            vec![("prompts", &self.prompts), ("negative", &self.negative)]
        } else {
            vec![("prompts", &self.prompts)]
        };
        let id = perturb_id(&m.pre, n_pos, n_neg, seed);
        Ok(CellSpec {
            id: id.clone(),
            kind: PERTURB.into(),
            deps: vec![align.clone()],
            inputs: self.inputs(m, &list, true),
            params: serde_json::to_value(PerturbParams {
                model: m.name.to_string(),
                n_positive: n_pos,
                n_negative: n_neg,
                seed,
                align_cell: align,
                train: TrainConfig {
                    lora: cfg.perturb.stage_lora(&cfg.align),
                    ..self.train(seed)
                },
                from: cfg.perturb.from,
                // n- = 0 trains nothing.
                log_dir: if n_neg > 0 {
                    cell_log_dir(cfg.log_dir.as_deref(), &id)?
                } else {
                    None
                },
                eval: self.eval(seed),
                keep_model: cfg.keep_models,
                kl_to_aligned: n_neg > 0 && cfg.measures.kl_to_aligned,
                // With LoRA stages it compares the merged weights.
                weight_space: n_neg > 0 && cfg.measures.weight_space,
            })?,
        })
    }
}

/// One base model as its cells name and read it.
struct Model<'a> {
    name: &'a str,
    /// The id prefix of its cells.
    pre: String,
    dir: Input,
}

/// How refusals are counted, when they are; a refusal keyword list is read now, so a bad
/// list fails before any cell runs.
fn refusal_params(cfg: &ReboundConfig, scorer: &ScorerSpec) -> Result<Option<RefusalParams>> {
    if !cfg.measures.refusals(scorer) {
        return Ok(None);
    }
    let keywords = match &cfg.measures.refusal_keywords {
        Some(p) => {
            crate::score::keywords::KeywordScorer::from_file(p)
                .context("[measures] refusal_keywords")?;
            Some(
                p.canonicalize()
                    .with_context(|| format!("cannot resolve {}", p.display()))?,
            )
        }
        None => None,
    };
    Ok(Some(RefusalParams { keywords }))
}

fn cells(
    cfg: &ReboundConfig,
    models: &[ResolvedModel],
    scorer: &ScorerSpec,
    frozen: &Frozen,
) -> Result<Vec<CellSpec>> {
    let planner = CellPlanner::new(cfg, scorer, frozen)?;
    let mut out = Vec::new();
    for m in models {
        planner.model_cells(m, &mut out)?;
    }
    Ok(out)
}

/// The scorer spec with local paths made absolute, so cells run from any directory.
fn absolute_scorer(spec: &ScorerSpec) -> ScorerSpec {
    let abs = |p: &str| -> String {
        match Path::new(p).canonicalize() {
            Ok(a) if Path::new(p).exists() => a.to_string_lossy().into_owned(),
            _ => p.to_string(),
        }
    };
    let mut spec = spec.clone();
    match &mut spec {
        ScorerSpec::Classifier { path, .. } | ScorerSpec::CostModel { path, .. } => {
            *path = abs(path)
        }
        ScorerSpec::Keywords { path: Some(p) } => *p = PathBuf::from(abs(&p.to_string_lossy())),
        _ => {}
    }
    spec
}
