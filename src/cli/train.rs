//! `elastica train`: supervised fine-tuning (or DPO with `--method dpo`; KTO on pairs, or on
//! unpaired feedback `{"prompt", "completion", "label"}` with `--dpo-loss kto`), or from-scratch
//! training with `--init`. The
//! command holds an exclusive lock on `--out` for its whole run, so two processes never
//! train into one directory.

use super::train_hooks::StepHooks;
use crate::compress::tracking::{load_sets, parse_sets, RateTracker, TrackedSet};
use crate::data::feedback;
use crate::data::prefs::{self, Prefer};
use crate::data::schemas::DataSpec;
use crate::data::source::{load as load_data, template_for, DataSetArgs};
use crate::data::template::Template;
use crate::model::checkpoint::{init_model, resolve_model_dir, LoadedModel};
use crate::model::ModelConfig;
use crate::train::objective::DpoLoss;
use crate::train::objective::Method;
use crate::train::recipe::{train_prepared, Recipe, SummaryOf};
use crate::train::sft::{ResumePoint, StepLog};
use crate::train::{dpo, kto};
use crate::train::{TrainConfig, TrainRun};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The name of `train`'s lock file inside `--out`.
pub const LOCK_FILE: &str = ".train.lock";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Every flag can also be set in a TOML file given as --config FILE \
(keys are the long flag names: lr = 1e-5, betas = [0.9, 0.95], and shuffle = false for \
--no-shuffle; a key that is no flag is refused); flags typed on the command line win."
)]
pub struct TrainArgs {
    /// Base model: a directory in the HF layout, or `org/name` in the offline HF cache.
    #[arg(long, required_unless_present = "init", conflicts_with = "init")]
    pub model: Option<String>,
    /// A LoRA adapter directory (PEFT's format) on top of --model: training continues this
    /// adapter (the LoRA flags default to its own settings; one that only folds, such as DoRA, is refused: merge it).
    #[arg(long, requires = "model")]
    pub adapter: Option<PathBuf>,
    /// Train from scratch from this config.json (random init, seeded by --seed).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// With --init: directory holding tokenizer.json (and tokenizer_config.json).
    #[arg(long, requires = "init")]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataSetArgs,
    /// With --method dpo and --schema pku-saferlhf: which label names the chosen answer
    /// (safer_response_id or better_response_id).
    #[arg(long, value_enum)]
    pub prefer: Option<Prefer>,
    /// Output directory: final model (HF layout), train_log.jsonl, checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Prompt template (default: by schema: raw for imdb and world, chat for conversation,
    /// safe-rlhf otherwise).
    #[arg(long, value_enum)]
    pub template: Option<Template>,
    /// AdamW betas, "b1,b2" (default and paper: 0.9,0.95).
    #[arg(long)]
    pub betas: Option<String>,
    #[command(flatten)]
    pub train: TrainConfig,
    /// Continue from the newest checkpoint in --out (refused if it was written with other
    /// settings or data; a run already finished with these settings is left as it is).
    #[arg(long)]
    pub resume: bool,
    /// Track compression rates of held-out sets during training: NAME=FILE.jsonl,...
    /// (written to OUT/rates.jsonl and plotted as OUT/rates.png/svg).
    #[arg(long)]
    pub track_rates: Option<String>,
    /// Measure the tracked rates every N optimizer steps (and at the start and the end).
    #[arg(long, default_value_t = 10)]
    pub track_every: usize,
    /// Use at most this many records of each tracked set.
    #[arg(long, default_value_t = 256)]
    pub track_records: usize,
    /// Write TensorBoard event files here (loss, lr, grad_norm, tokens/s, and the tracked
    /// rates): `tensorboard --logdir DIR`.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub device: super::device_args::DeviceArgs,
}

pub fn parse_betas(s: &str) -> Result<(f64, f64)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 2 {
        bail!("--betas expects two numbers \"b1,b2\", got \"{s}\"");
    }
    let p = |x: &str| {
        x.parse::<f64>()
            .with_context(|| format!("--betas: \"{x}\" is not a number"))
    };
    Ok((p(parts[0])?, p(parts[1])?))
}

pub fn run(a: TrainArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    // The two settings the command line spells differently from the TOML keys.
    let mut cfg = a.train.clone();
    if let Some(betas) = &a.betas {
        (cfg.beta1, cfg.beta2) = parse_betas(betas)?;
    }
    let spec = a.data.spec()?;
    cfg.template = match cfg.dpo.method {
        Method::Sft => template_for(a.template, &spec),
        Method::Dpo => a
            .template
            .unwrap_or_else(|| prefs::default_template(&spec.schema)),
    };
    cfg.validate()?;
    cfg.dpo.validate()?;
    if cfg.dpo.method == Method::Sft && a.prefer.is_some() {
        bail!("--prefer chooses between preference labels; it applies to --method dpo only");
    }
    let data = load_train_data(&cfg, &spec, a.prefer)?;
    // The tracked sets too are read before --out exists, so a bad one leaves nothing behind.
    let tracked = match &a.track_rates {
        Some(spec) => Some(load_sets(&parse_sets(spec)?, Some(a.track_records))?),
        None => None,
    };
    if tracked.is_some() {
        crate::compress::tracking::check_every(a.track_every)?;
    }
    for set in tracked.iter().flatten() {
        let what = format!("--track-rates set {:?}", set.name);
        let conversations = crate::data::records::conversations(&set.records);
        cfg.template.check_conversations(conversations, &what)?;
    }
    let choice = a.device.choice()?;
    let lm = load_start(&a, cfg.seed, choice.is_default_cpu())?;
    let mut inputs = vec![("--model", lm.dir.as_path())];
    inputs.extend(a.adapter.as_deref().map(|p| ("--adapter", p)));
    crate::util::fsx::refuse_input_as_output("--out", &a.out, &inputs)?;
    let base_name = a.model.clone().unwrap_or_default();
    let (lm, lora) = crate::model::adapted::for_training(lm, &cfg.lora, cfg.seed, &base_name)?;
    let cfg = TrainConfig { lora, ..cfg };
    if let Some(dir) = &a.log_dir {
        crate::report::tensorboard::ensure_log_dir(dir)?;
    }
    match &data {
        TrainData::Records(r) => train_on(&a, &cfg, lm, r, tracked, &choice),
        TrainData::Pairs(p) => train_on(&a, &cfg, lm, p, tracked, &choice),
        TrainData::Feedback(f) => train_on(&a, &cfg, lm, f, tracked, &choice),
    }
}

/// Train `records` with their method on the fused path, or on the backend `--device` /
/// `--backend` choose. The run is resolved first, so one refused for its settings, adapter or
/// data leaves no --out behind.
fn train_on<T: crate::train::recipe::TrainData>(
    a: &TrainArgs,
    cfg: &TrainConfig,
    lm: LoadedModel,
    records: &[T],
    tracked: Option<Vec<TrackedSet>>,
    choice: &crate::backend::BackendChoice,
) -> Result<()>
where
    SummaryOf<T>: Reported,
{
    if !choice.is_default_cpu() {
        return on_backend(a, cfg, lm, records, choice);
    }
    let recipe = crate::train::recipe::prepare(&lm, records, cfg)?;
    let _lock = claim_out(&a.out)?;
    // Resume's checks (and "already finished") come before anything is written into --out.
    let resume_at = match a.resume {
        true => Some(recipe.resolved().resume_point(&a.out)?),
        false => None,
    };
    let finished = resume_at == Some(ResumePoint::Finished);
    let tracker = match tracked {
        Some(_) if finished => None,
        Some(sets) => {
            let mut t =
                RateTracker::new(sets, cfg.template, cfg.max_length, a.track_every, &a.out)?;
            let start = match &resume_at {
                Some(ResumePoint::Checkpoint { step, .. }) => *step,
                _ => 0,
            };
            t.begin(&lm, start)?;
            Some(t)
        }
        None => None,
    };
    // A finished run is left as it is: no new event file either.
    let log_dir = a.log_dir.as_deref().filter(|_| !finished);
    let mut hooks = StepHooks::new(tracker, log_dir)?;
    let mut hook = |m: &LoadedModel, l: &StepLog| hooks.after_step(m, l);
    let run = TrainRun {
        out: &a.out,
        resume: a.resume,
        hook: Some(&mut hook),
        progress: true,
    };
    let (steps, line) = train_prepared(&lm, &recipe, run)?.report(&a.out);
    hooks.finish(&lm, steps, &a.out)?;
    println!("{line}");
    Ok(())
}

/// Create --out and take its lock, or refuse while another process trains into it (or when
/// it holds another command's run).
fn claim_out(out: &Path) -> Result<File> {
    super::out_dir::refuse_foreign(out, "train")?;
    crate::util::fsx::lock_folder(out, LOCK_FILE, "process is training into")
}

/// What `train` trains on: SFT records, DPO's preference pairs, or KTO's unpaired feedback.
enum TrainData {
    Records(Vec<crate::data::records::Record>),
    Pairs(Vec<crate::data::prefs::PrefRecord>),
    Feedback(Vec<crate::data::feedback::FeedbackRecord>),
}

/// The data `spec` names, read as the objective needs it: records for SFT; for DPO, pairs, or
/// unpaired feedback when its rows are `{"prompt", "completion", "label"}` (KTO only).
fn load_train_data(
    cfg: &TrainConfig,
    spec: &DataSpec,
    prefer: Option<Prefer>,
) -> Result<TrainData> {
    let data = match cfg.dpo.method {
        Method::Sft => {
            let data = load_data(spec)?;
            eprintln!("data: {}", data.summary());
            TrainData::Records(data.records)
        }
        Method::Dpo if feedback::is_unpaired(spec)? => {
            if cfg.dpo.dpo_loss != DpoLoss::Kto {
                bail!(
                    "{} holds unpaired feedback {{\"prompt\", \"completion\", \"label\"}} \
                     (TRL's KTO format), which trains with --dpo-loss kto; the {} loss compares \
                     two answers to one prompt (preference pairs {{\"prompt\", \"chosen\", \
                     \"rejected\"}})",
                    spec.path,
                    cfg.dpo.dpo_loss.name()
                );
            }
            if prefer.is_some() {
                bail!("--prefer chooses between PKU-SafeRLHF's labels; unpaired feedback has its own label");
            }
            let data = feedback::load(spec)?;
            eprintln!("data: {}", data.summary());
            TrainData::Feedback(data.records)
        }
        Method::Dpo => {
            let data = prefs::load(spec, prefer)?;
            eprintln!("data: {}", data.summary());
            TrainData::Pairs(data.records)
        }
    };
    Ok(data)
}

/// The starting model: --model (with --adapter) or a random --init, on the host. `fused`:
/// the fused path trains on the host, so its training state must fit this machine's memory.
fn load_start(a: &TrainArgs, seed: u64, fused: bool) -> Result<LoadedModel> {
    let dev = Device::Cpu;
    match (&a.model, &a.init) {
        (Some(m), _) => {
            if fused {
                let dir = resolve_model_dir(m)?;
                let config = dir.join("config.json");
                ModelConfig::from_file(&config)?.check_training_fits(&config)?;
            }
            crate::model::adapted::load_model_to_train(m, a.adapter.as_deref(), &dev)
        }
        (None, Some(init)) => {
            let Some(tok) = &a.tokenizer else {
                bail!("--init needs --tokenizer DIR (a directory with tokenizer.json)");
            };
            init_model(init, tok, seed, &dev)
        }
        (None, None) => bail!("give --model or --init"),
    }
}

/// `elastica train` on the chosen backend (`backend::train`'s loop).
fn on_backend<T: crate::train::recipe::TrainData>(
    a: &TrainArgs,
    cfg: &TrainConfig,
    lm: LoadedModel,
    records: &[T],
    choice: &crate::backend::BackendChoice,
) -> Result<()>
where
    SummaryOf<T>: Reported,
{
    if a.track_rates.is_some() {
        bail!(
            "--track-rates runs on the fused CPU path only for now; drop it or use --device cpu --backend fused"
        );
    }
    let mut model = crate::backend::from_loaded(lm, choice)?;
    model.set_grad_checkpoint(a.device.grad_checkpoint)?;
    let recipe = crate::backend::train::prepare(&*model, records, cfg)?;
    let _lock = claim_out(&a.out)?;
    let run = crate::train::driver::Run {
        out: &a.out,
        resume: a.resume,
        progress: true,
        hook: None::<&mut crate::train::driver::AfterStep>,
    };
    let on = serde_json::json!({
        "backend": model.backend_name(), "device": model.device_name(),
    });
    let s = crate::backend::train::train_prepared(&mut *model, &recipe, run)?;
    println!("{}", with_backend(s.report(&a.out).1, Some(on)));
    Ok(())
}

/// A run's summary as `elastica train` reports it: (steps, the JSON line it prints).
trait Reported {
    fn report(&self, out: &Path) -> (usize, serde_json::Value);
}

impl Reported for crate::train::TrainSummary {
    fn report(&self, out: &Path) -> (usize, serde_json::Value) {
        (self.steps, sft_summary(out, self))
    }
}

impl Reported for dpo::DpoSummary {
    fn report(&self, out: &Path) -> (usize, serde_json::Value) {
        let line = reference_run_line(out, ("dpo", "pairs"), self, None);
        (self.train.steps, line)
    }
}

impl Reported for kto::KtoSummary {
    fn report(&self, out: &Path) -> (usize, serde_json::Value) {
        let line = reference_run_line(out, ("kto", "examples"), self, None);
        (self.train.steps, line)
    }
}

/// The JSON line `elastica train` prints for an SFT run.
fn sft_summary(out: &std::path::Path, s: &crate::train::TrainSummary) -> serde_json::Value {
    serde_json::json!({
        "out": out, "steps": s.steps, "records": s.records, "truncated": s.truncated,
        "mean_loss": s.mean_loss, "final_loss": s.log.last().map(|l| l.loss),
        "resumed_from": s.resumed_from,
    })
}

/// A step log's fields that `train`'s JSON line reports from the last step (null before
/// any step).
trait FinalFields: Sized {
    fn finals(last: Option<&Self>) -> serde_json::Value;
}

impl FinalFields for dpo::DpoStepLog {
    fn finals(last: Option<&Self>) -> serde_json::Value {
        let mut f = serde_json::json!({
            "final_margin": last.map(|l| l.margin),
            "final_accuracy": last.map(|l| l.accuracy),
        });
        // KTO's reference point at the last step (the policy's estimated KL from the start).
        if let Some(kl) = last.and_then(|l| l.kl) {
            f["final_kl"] = kl.into();
        }
        f
    }
}

impl FinalFields for kto::KtoStepLog {
    fn finals(last: Option<&Self>) -> serde_json::Value {
        serde_json::json!({
            "final_desirable_reward": last.and_then(|l| l.desirable_reward),
            "final_undesirable_reward": last.and_then(|l| l.undesirable_reward),
            "final_kl": last.map(|l| l.kl),
        })
    }
}

/// The JSON line `elastica train` prints for a run against a reference model (DPO on pairs:
/// `("dpo", "pairs")`; KTO on unpaired feedback: `("kto", "examples")`), with the backend
/// and device when it ran off the default path.
fn reference_run_line<L: FinalFields>(
    out: &std::path::Path,
    (method, unit): (&str, &str),
    r: &crate::train::reference::ReferenceRunSummary<L>,
    on: Option<serde_json::Value>,
) -> serde_json::Value {
    let s = &r.train;
    let mut line = serde_json::json!({
        "out": out, "method": method, "steps": s.steps, unit: s.records,
        "truncated": s.truncated, "mean_loss": s.mean_loss,
        "final_loss": s.log.last().map(|l| l.loss),
        "reference_cached": r.reference_cached, "resumed_from": s.resumed_from,
    });
    let finals = L::finals(r.log.last());
    if let (Some(line), Some(finals)) = (line.as_object_mut(), finals.as_object()) {
        line.extend(finals.clone());
    }
    with_backend(line, on)
}

/// `line` with the backend and device it ran on, when it ran off the default path.
fn with_backend(mut line: serde_json::Value, on: Option<serde_json::Value>) -> serde_json::Value {
    if let Some(on) = on {
        line["backend"] = on["backend"].clone();
        line["device"] = on["device"].clone();
    }
    line
}
