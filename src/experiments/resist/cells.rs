//! The resistance experiment's cell kinds, run by the grid executor (or by `elastica cell
//! run` on a cluster):
//! - `resist.theta`: theta_k = theta_{k-1} fine-tuned on slice k (the model is the cell's
//!   directory): SFT or DPO (`[align] method`; DPO's reference is theta_{k-1}), the whole
//!   model or a LoRA adapter (kept in `adapter/`) merged into theta_k;
//! - `resist.generate`: a checkpoint answers the held-out prompts (`gen_k.jsonl`), and when
//!   asked measures KL(θk || θ0) by position on those answers, their coherence under θ0,
//!   and θk's capability kept;
//! - `resist.pair`: one direction of one pair, always SFT (full or a LoRA adapter under
//!   `[pair_train.lora]`); its output holds the per-step losses and,
//!   when asked, how far the fine-tune moved toward the checkpoint whose answers it
//!   trained on, in weight space (`experiments::weight_space`).
//!
//! Fine-tunes run with `resume = true`, so a killed cell continues from its newest
//! checkpoint (`train.save_every` > 0) when it runs again. Each fine-tune checks the fault
//! point `train-step-N` after optimizer step N (see `grid::cell`).

use super::plan::{Direction, PairPlan};
use crate::data::prompts::read_prompts;
use crate::data::records::{read_run_records, write_jsonl, Record};
use crate::data::schemas::DataSpec;
use crate::data::template::Template;
use crate::experiments::device::{self, load_cpu, StageData};
use crate::experiments::evaluate::{coherence, generate_responses, Generation};
use crate::experiments::evaluated::Evaluated;
use crate::experiments::kl::{by_position, pooled_mean, sequence_kl, Continuation, PositionKl};
use crate::experiments::weight_space::{self, WeightSpace};
use crate::grid::cell::Kinds;
use crate::grid::cell::{CellContext, CellKind};
use crate::model::adapted;
use crate::model::generate::GenConfig;
use crate::model::lora::{self, Adapter};
use crate::train::eval::EvalLoss;
use crate::train::objective::Method;
use crate::train::{TrainConfig, TrainSummary};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const THETA: &str = "resist.theta";
pub const GENERATE: &str = "resist.generate";
pub const PAIR: &str = "resist.pair";

/// Where a checkpoint's weights are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelRef {
    /// The base model theta_0: its directory, absolute or relative to the run directory.
    Base(String),
    /// The directory of a `resist.theta` cell (a dependency).
    Cell(String),
}

impl ModelRef {
    fn dir(&self, ctx: &CellContext<'_>) -> PathBuf {
        match self {
            ModelRef::Base(p) => crate::grid::manifest::resolve(ctx.grid.run_dir(), p),
            ModelRef::Cell(id) => ctx.dep_dir(id),
        }
    }
}

/// Parameters of a `resist.theta` cell; its input `data` is the slice.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThetaParams {
    pub k: usize,
    /// theta_{k-1}.
    pub start: ModelRef,
    pub train: TrainConfig,
    /// TensorBoard event directory of this fine-tune (the config's `log_dir`/<id>).
    pub log_dir: Option<String>,
}

/// Parameters of a `resist.generate` cell; its input `prompts` is the held-out prompts.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    pub k: usize,
    pub model: ModelRef,
    pub template: Template,
    pub generate: GenConfig,
    /// θ0's directory (absolute or relative to the run directory): measure KL(θk || θ0) by
    /// position and the coherence under θ0.
    pub base: Option<String>,
    /// Measure θk's capability kept on the `capability` input (its sequence limit).
    pub capability_max_length: Option<usize>,
}

/// Parameters of a `resist.pair` cell. The start model and the training data both follow
/// from `pair` and `direction`; `models` and `gens` only say where each checkpoint's
/// weights and generations are.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairParams {
    pub pair: PairPlan,
    pub direction: Direction,
    /// Weights of theta_k and theta_l.
    pub models: BTreeMap<usize, ModelRef>,
    /// Ids of the `resist.generate` cells of k and l.
    pub gens: BTreeMap<usize, String>,
    pub keep_model: bool,
    /// TensorBoard event directory of this fine-tune (the config's `log_dir`/<id>).
    pub log_dir: Option<String>,
    /// Measure the weight-space movement toward the data's checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub weight_space: bool,
}

/// Output of a fine-tuning cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneOutput {
    pub records: usize,
    pub steps: usize,
    pub truncated: usize,
    pub mean_loss: f64,
    pub resumed_from: Option<usize>,
    /// Loss of optimizer step 1, 2, ...
    pub losses: Vec<f64>,
}

impl From<&TrainSummary> for FineTuneOutput {
    fn from(s: &TrainSummary) -> Self {
        FineTuneOutput {
            records: s.records,
            steps: s.steps,
            truncated: s.truncated,
            mean_loss: s.mean_loss,
            resumed_from: s.resumed_from,
            losses: s.log.iter().map(|l| l.loss).collect(),
        }
    }
}

/// Output of a `resist.pair` cell.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairOutput {
    pub k: usize,
    pub l: usize,
    pub direction: Direction,
    pub samples: usize,
    pub seed: u64,
    pub fine_tune: FineTuneOutput,
    /// Δa = θ_start − θ_data (the checkpoint whose answers it trained on), Δp = the
    /// fine-tune's update: `fraction_undone` is the share of the gap to θ_data closed.
    pub weight_space: Option<WeightSpace>,
}

/// What a generation cell measured beside the answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeasures {
    /// KL(θk || θ0) per token over every answer position (0 for θ0 itself).
    pub kl_to_base: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kl_by_position: Vec<PositionKl>,
    /// Mean NLL of the answer tokens under θ0.
    pub coherence_nll: Option<f64>,
}

/// Output of a `resist.generate` cell.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOutput {
    /// File name inside the cell directory.
    pub file: String,
    pub records: usize,
    pub measures: Option<CheckpointMeasures>,
    /// Mean NLL of the capability set under θk.
    pub capability: Option<EvalLoss>,
}

/// `gen_k.jsonl`.
pub fn gen_file(k: usize) -> String {
    format!("gen_{k}.jsonl")
}

/// Where a LoRA slice fine-tune keeps its adapter and log inside the cell directory (the
/// cell directory itself holds θk with the adapter merged in).
pub const ADAPTER_DIR: &str = "adapter";

/// The resist grid's kinds of cell (see `experiments::registry`).
pub static KINDS: &Kinds = &[&ThetaKind, &GenerateKind, &PairKind];

pub struct ThetaKind;

impl CellKind for ThetaKind {
    fn name(&self) -> &'static str {
        THETA
    }
    fn about(&self) -> &'static str {
        "resist: fine-tune theta_{k-1} on slice k into theta_k"
    }
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
        let p: ThetaParams = ctx.params()?;
        let input = ctx.input("data")?;
        let data = match p.train.dpo.method {
            Method::Sft => StageData::Records(read_run_records(&input)?),
            Method::Dpo => {
                let spec = DataSpec::new(input.to_string_lossy(), "jsonl");
                StageData::Pairs(crate::data::prefs::load(&spec, None)?.records)
            }
        };
        // θ_k is trained further (θ_{k+1}, the pairs).
        let t = p.train.saving_f32();
        let start = p.start.dir(ctx);
        let log_dir = p.log_dir.as_deref();
        if !t.lora.enabled() {
            let s =
                device::train_cell(ctx, load_cpu(&start)?, &start, &data, &t, &ctx.dir, log_dir)?;
            return Ok(serde_json::to_value(FineTuneOutput::from(&s))?);
        }
        // A LoRA stage: the adapter trains on θ_{k-1}, then θ_k is θ_{k-1} with it merged in,
        // a full checkpoint like every other θ (the next slice, the generations and the pair
        // fine-tunes start from it unchanged).
        let adapter_dir = ctx.dir.join(ADAPTER_DIR);
        let s = device::train_cell(
            ctx,
            load_cpu(&start)?,
            &start,
            &data,
            &t,
            &adapter_dir,
            log_dir,
        )?;
        let lm = load_cpu(&start)?;
        let adapter = Adapter::load(&adapter_dir, &lm.model.cfg)?;
        adapted::save_merged(&adapted::attach(lm, adapter)?, &ctx.dir, Some("float32"))
            .with_context(|| {
                format!("merging the adapter of θ{} into {}", p.k, ctx.dir.display())
            })?;
        Ok(serde_json::to_value(FineTuneOutput::from(&s))?)
    }
}

pub struct GenerateKind;

impl CellKind for GenerateKind {
    fn name(&self) -> &'static str {
        GENERATE
    }
    fn about(&self) -> &'static str {
        "resist: checkpoint theta_k answers the held-out prompts (gen_k.jsonl)"
    }
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
        let p: GenerateParams = ctx.params()?;
        let path = ctx.input("prompts")?;
        let prompts = read_prompts(&path)?;
        let lm = device::load_eval_model(&ctx.device, &p.model.dir(ctx))?;
        let gens = generate_responses(&lm, &prompts, p.template, &p.generate, ctx.progress)?;
        let recs: Vec<Record> = gens
            .iter()
            .map(|g| g.prompt.answered(&g.response))
            .collect();
        let file = gen_file(p.k);
        write_jsonl(&ctx.dir.join(&file), &recs)?;
        let measures = match &p.base {
            None => None,
            Some(base) => {
                let seqs: Vec<Continuation<'_>> =
                    gens.iter().map(Generation::continuation).collect();
                let b = if p.k == 0 {
                    None
                } else {
                    let base = crate::grid::manifest::resolve(ctx.grid.run_dir(), base);
                    Some(device::load_eval_model(&ctx.device, &base)?)
                };
                let reference = b.as_ref().unwrap_or(&lm);
                let kls = sequence_kl(
                    &lm,
                    reference,
                    &seqs,
                    lm.tokenizer().pad_id(),
                    p.generate.batch_size,
                    |_| {},
                )?;
                Some(CheckpointMeasures {
                    kl_to_base: pooled_mean(&kls),
                    kl_by_position: if p.k == 0 {
                        Vec::new()
                    } else {
                        by_position(&kls)
                    },
                    coherence_nll: coherence(&kls, &gens),
                })
            }
        };
        let capability = match p.capability_max_length {
            None => None,
            Some(max_length) => Some(device::capability_kept(
                ctx,
                lm.as_ref(),
                p.template,
                max_length,
                p.generate.batch_size,
            )?),
        };
        Ok(serde_json::to_value(GenerateOutput {
            file,
            records: recs.len(),
            measures,
            capability,
        })?)
    }
}

pub struct PairKind;

impl CellKind for PairKind {
    fn name(&self) -> &'static str {
        PAIR
    }
    fn about(&self) -> &'static str {
        "resist: forward (theta_k on gen_l) or inverse (theta_l on gen_k) fine-tune"
    }
    fn run(&self, ctx: &CellContext<'_>) -> Result<serde_json::Value> {
        let p: PairParams = ctx.params()?;
        let mut gens = BTreeMap::new();
        for c in [p.pair.k(), p.pair.l()] {
            let id = p
                .gens
                .get(&c)
                .with_context(|| format!("cell {}: no generation cell for θ{c}", ctx.cell.id))?;
            let out: GenerateOutput = ctx.dep_output(id)?;
            gens.insert(c, read_run_records(&ctx.dep_dir(id).join(out.file))?);
        }
        let data = p.pair.training_set(p.direction, &gens)?;
        let start_k = p.pair.start(p.direction);
        let start = p
            .models
            .get(&start_k)
            .with_context(|| format!("cell {}: no weights for θ{start_k}", ctx.cell.id))?
            .dir(ctx);
        let s = device::train_cell(
            ctx,
            load_cpu(&start)?,
            &start,
            &StageData::Records(data),
            p.pair.train(),
            &ctx.dir,
            p.log_dir.as_deref(),
        )?;
        let weight_space = if p.weight_space {
            let from = p.pair.data_from(p.direction);
            let target = p
                .models
                .get(&from)
                .with_context(|| format!("cell {}: no weights for θ{from}", ctx.cell.id))?;
            Some(
                weight_space::measure(&target.dir(ctx), &start, &ctx.dir)
                    .context("weight-space movement")?,
            )
        } else {
            None
        };
        Ok(serde_json::to_value(PairOutput {
            weight_space,
            k: p.pair.k(),
            l: p.pair.l(),
            direction: p.direction,
            samples: p.pair.samples(),
            seed: p.pair.train().seed,
            fine_tune: FineTuneOutput::from(&s),
        })?)
    }
    /// Only the losses of a pair fine-tune are needed; its weights go unless kept.
    fn after_result(&self, ctx: &CellContext<'_>) -> Result<()> {
        let p: PairParams = ctx.params()?;
        if p.keep_model {
            return Ok(());
        }
        // The full weights, or the adapter's under [pair_train.lora].
        for name in ["model.safetensors", lora::WEIGHTS_FILE] {
            let w = ctx.dir.join(name);
            if w.exists() {
                std::fs::remove_file(&w)
                    .with_context(|| format!("cannot remove {}", w.display()))?;
            }
        }
        Ok(())
    }
}
