//! Where an experiment's cells compute: the config's `device`, `backend` and `dtype` keys
//! (recorded for the cells as a `grid::device::CellDevice`), checked before anything is
//! written, the training stage and the models evaluated on the backend they name.
//!
//! On the default (the fused CPU path) a stage trains through `train::sft` / `train::dpo` as
//! it always did. On any other choice (`device = "cuda"`, or `backend = "torch"` on the CPU)
//! it goes through `backend::train` (SFT or DPO, full or LoRA), which writes the same files
//! (log, checkpoints, final model or adapter) and resumes the same way. The per-step hook
//! (TensorBoard, fault points) runs on both; [`train_cell`] is the stage as every rebound and
//! resist cell runs it (LoRA set-up, that hook, then [`train_stage`]). Evaluation
//! (generation, log-probs, KL, NLL) runs on the same backend ([`eval_model`],
//! [`load_eval_model`]); the scorers (classifiers, keyword lists, the world's scorers) always
//! run on the CPU.

use crate::backend::{self, BackendChoice, BackendKind, DeviceSpec, Precision};
use crate::data::prefs::PrefRecord;
use crate::data::records::{read_run_records, Record};
use crate::data::template::Template;
use crate::grid::cell::CellContext;
use crate::grid::config::ExecutorSpec;
use crate::grid::device::CellDevice;
use crate::grid::slurm::SlurmConfig;
use crate::model::adapted;
use crate::model::checkpoint::load_model;
use crate::model::LoadedModel;
use crate::report::tensorboard::TrainBoard;
use crate::train::driver::{AfterStep, Run};
use crate::train::eval::EvalLoss;
use crate::train::sft::{StepLog, TrainSummary};
use crate::train::{train, TrainConfig, TrainRun};
use anyhow::{Context, Result};
use clap::ValueEnum;
use std::path::Path;

/// The default of the configs' `device` key.
pub fn default_device() -> String {
    crate::grid::device::CPU.to_string()
}

/// The configs' `device`, `backend` and `dtype` keys as one value.
pub fn cell_device(device: &str, backend: &Option<String>, dtype: &Option<String>) -> CellDevice {
    CellDevice {
        device: device.to_string(),
        backend: backend.clone(),
        dtype: dtype.clone(),
    }
}

/// The backend `d` names; errors say which key is wrong and what it may be.
pub fn choice(d: &CellDevice) -> Result<BackendChoice> {
    let device = DeviceSpec::parse(&d.device).context("device")?;
    let backend = match &d.backend {
        None => None,
        Some(b) => Some(BackendKind::from_str(b, true).map_err(|_| {
            anyhow::anyhow!("backend = \"{b}\" is not a backend; use \"fused\" or \"torch\"")
        })?),
    };
    let precision = match &d.dtype {
        None => Precision::F32,
        Some(t) => Precision::from_str(t, true).map_err(|_| {
            anyhow::anyhow!("dtype = \"{t}\" is not a precision; use \"f32\" or \"bf16\"")
        })?,
    };
    BackendChoice::new(device, backend, precision)
}

/// `d` is a device this build can use (`cpu`, or `cuda`/`cuda:N` with `--features torch`).
pub fn check_device_name(d: &str) -> Result<()> {
    BackendChoice::new(DeviceSpec::parse(d)?, None, Precision::F32)?;
    Ok(())
}

/// Check an experiment config's device keys against its executor before anything is
/// written: the device itself, each of the local executor's `devices` with the config's
/// backend and dtype, and under Slurm the GPU the tasks of a kind with `gpus >= 1` run on
/// (`cuda`, which needs a build with the torch feature). `config` names the file for errors.
pub fn check(
    d: &CellDevice,
    executor: &ExecutorSpec,
    slurm: &SlurmConfig,
    config: &Path,
) -> Result<()> {
    let within = || {
        format!(
            "{}: device = \"{}\"{}{}",
            config.display(),
            d.device,
            d.backend
                .as_ref()
                .map_or(String::new(), |b| format!(", backend = \"{b}\"")),
            d.dtype
                .as_ref()
                .map_or(String::new(), |t| format!(", dtype = \"{t}\"")),
        )
    };
    choice(d).with_context(within)?;
    match executor {
        ExecutorSpec::Local { jobs, devices, .. } => {
            crate::grid::launch::check_devices(*jobs, devices)
                .with_context(|| format!("{}: [executor] devices", config.display()))?;
            for dev in devices {
                choice(&d.on(dev)).with_context(|| format!("{} on {dev}", within()))?;
            }
        }
        ExecutorSpec::Slurm { resources, .. } => {
            let gpus = slurm.gpus > 0 || resources.values().any(|r| r.gpus > Some(0));
            if gpus {
                choice(&d.on("cuda")).with_context(|| {
                    format!(
                        "{}: [slurm] gpus >= 1 runs the cells with --device cuda",
                        config.display()
                    )
                })?;
            }
        }
    }
    Ok(())
}

/// `lm` (loaded on the CPU, with its adapter if any) on the backend `d` names, to evaluate.
pub fn eval_model(d: &CellDevice, lm: LoadedModel) -> Result<Box<dyn backend::LanguageModel>> {
    backend::from_loaded(lm, &choice(d)?)
}

/// The model saved in `dir` on the backend `d` names, to evaluate.
pub fn load_eval_model(d: &CellDevice, dir: &Path) -> Result<Box<dyn backend::LanguageModel>> {
    eval_model(d, load_cpu(dir)?)
}

/// The model saved in `dir`, on the CPU in f32: what a training stage starts from, an
/// adapter sits on, or [`eval_model`] puts on the backend.
pub fn load_cpu(dir: &Path) -> Result<LoadedModel> {
    load_model(&dir.to_string_lossy(), &candle_core::Device::Cpu)
}

/// The capability `lm` kept: its mean NLL on the cell's `capability` input (records read
/// with `template`, cut to `max_length`, `batch_size` a forward), on `lm`'s backend.
pub fn capability_kept(
    ctx: &CellContext<'_>,
    lm: &dyn backend::LanguageModel,
    template: Template,
    max_length: usize,
    batch_size: usize,
) -> Result<EvalLoss> {
    let path = ctx.input("capability")?;
    let records = read_run_records(&path)?;
    backend::run::eval_loss(lm, &records, template, max_length, batch_size)
        .with_context(|| format!("capability kept on {}", path.display()))
}

/// What a training stage learns from: SFT records, or DPO's preference pairs.
pub enum StageData {
    Records(Vec<Record>),
    Pairs(Vec<PrefRecord>),
}

/// Fine-tune `lm` on `data` into `out` on the backend `d` names (SFT or DPO, full or LoRA as
/// `cfg` and `lm`'s adapter say), resuming from `out`'s newest checkpoint; `hook` is called
/// after every step on either path.
pub fn train_stage(
    d: &CellDevice,
    lm: LoadedModel,
    data: &StageData,
    cfg: &TrainConfig,
    out: &Path,
    hook: &mut AfterStep<'_>,
    progress: bool,
) -> Result<TrainSummary> {
    let c = choice(d)?;
    if c.is_default_cpu() {
        let mut fused_hook = |_: &LoadedModel, s: &StepLog| hook(s);
        let run = TrainRun {
            out,
            resume: true,
            hook: Some(&mut fused_hook),
            progress,
        };
        return match data {
            StageData::Records(r) => train(&lm, r, cfg, run),
            StageData::Pairs(p) => train(&lm, p, cfg, run).map(|s| s.train),
        };
    }
    let mut model = backend::from_loaded(lm, &c)?;
    let run = Run {
        out,
        resume: true,
        progress,
        hook: Some(hook),
    };
    match data {
        StageData::Records(r) => backend::train::train(model.as_mut(), r, cfg, run),
        StageData::Pairs(p) => backend::train::train(model.as_mut(), p, cfg, run).map(|s| s.train),
    }
}

/// An experiment cell's training stage: `start` made trainable (the whole model, a new LoRA
/// adapter on it when `cfg.lora` is on, or its own adapter continued), then [`train_stage`]
/// (SFT, or DPO with `start` as the reference when `cfg.dpo` says so) on the cell's backend
/// into `out`, resuming a killed attempt; every step is written to TensorBoard under
/// `log_dir` (when given) and passes the cell's fault point `train-step-N`. `base` is the
/// directory `start` was loaded from (the adapter's config names it).
pub fn train_cell(
    ctx: &CellContext<'_>,
    start: LoadedModel,
    base: &Path,
    data: &StageData,
    cfg: &TrainConfig,
    out: &Path,
    log_dir: Option<&str>,
) -> Result<TrainSummary> {
    let (lm, _) = adapted::for_training(start, &cfg.lora, cfg.seed, &base.to_string_lossy())?;
    let mut board = log_dir
        .map(|d| TrainBoard::create(Path::new(d)))
        .transpose()?;
    let mut hook = |log: &StepLog| -> Result<()> {
        if let Some(b) = board.as_mut() {
            b.step(log.step as u64, log.loss, log.lr, log.grad_norm, log.tokens)?;
        }
        ctx.fault_point(&format!("train-step-{}", log.step))
    };
    train_stage(&ctx.device, lm, data, cfg, out, &mut hook, ctx.progress)
        .with_context(|| format!("fine-tuning {} into {}", base.display(), out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_resolve_or_name_the_bad_key() {
        assert!(choice(&CellDevice::default()).unwrap().is_default_cpu());
        let bad = |device: &str, backend: Option<&str>, dtype: Option<&str>| {
            let d = CellDevice {
                device: device.into(),
                backend: backend.map(Into::into),
                dtype: dtype.map(Into::into),
            };
            format!("{:#}", choice(&d).unwrap_err())
        };
        assert!(bad("tpu", None, None).contains("unknown device \"tpu\""));
        let e = bad("cpu", Some("jax"), None);
        assert!(
            e.contains("backend = \"jax\"") && e.contains("torch"),
            "{e}"
        );
        let e = bad("cpu", None, Some("f16"));
        assert!(e.contains("dtype = \"f16\""), "{e}");
        let e = bad("cpu", Some("fused"), Some("bf16"));
        assert!(e.contains("bf16"), "{e}");
        let cuda = CellDevice {
            device: "cuda:1".into(),
            ..CellDevice::default()
        };
        let slurm_gpu = SlurmConfig {
            gpus: 1,
            ..SlurmConfig::default()
        };
        let slurm = ExecutorSpec::default().with_kind(crate::grid::config::ExecutorKind::Slurm);
        let cfg = Path::new("x.toml");
        if cfg!(feature = "torch") {
            assert_eq!(choice(&cuda).unwrap().kind, BackendKind::Torch);
            check(&CellDevice::default(), &slurm, &slurm_gpu, cfg).unwrap();
        } else {
            let e = format!(
                "{:#}",
                check(
                    &cuda,
                    &ExecutorSpec::default(),
                    &SlurmConfig::default(),
                    cfg
                )
                .unwrap_err()
            );
            assert!(
                e.contains("x.toml: device = \"cuda:1\"") && e.contains("--features torch"),
                "{e}"
            );
            let e = format!(
                "{:#}",
                check(&CellDevice::default(), &slurm, &slurm_gpu, cfg).unwrap_err()
            );
            assert!(
                e.contains("[slurm] gpus >= 1") && e.contains("--features torch"),
                "{e}"
            );
            assert!(check_device_name("cuda:0").is_err());
        }
        check(&CellDevice::default(), &slurm, &SlurmConfig::default(), cfg).unwrap();
        check_device_name("cpu").unwrap();
    }
}
