//! The SFT loop over any [`LanguageModel`]: the schedule, data order, token-weighted loss,
//! log (`train_log.jsonl`), atomic checkpoints and exact resume of `train::sft`, whose
//! public pieces it reuses, with the step itself left to the backend. `elastica train`
//! runs `train::sft::train` on the fused path (its rate-tracking hook needs the candle
//! model) and this loop on any other backend; both write the same files and resolve a run
//! with the same `train::sft::prepare_run`, so a resume with other settings, data or starting
//! weights is refused here exactly as there, and a finished run is not redone.

use super::LanguageModel;
use crate::data::records::Record;
use crate::train::batch::{collate, loss_tokens, Batch, Example};
use crate::train::optim::AdamWConfig;
use crate::train::schedule::{lr_at, warmup_steps};
use crate::train::sft::{
    prepare_run, read_log, remove_checkpoints, resume_point_of, step_indices, summarize,
    write_checkpoint_with, Prepared, ResumePoint, RunSettings, StepLog, TrainSummary,
    FINISHED_SETTINGS,
};
use crate::train::TrainConfig;
use anyhow::{Context, Result};
use candle_core::Device;
use std::io::Write;
use std::path::Path;

/// Fine-tune `model` on `records` into `out` (final model, `train_log.jsonl`, checkpoints
/// every `save_every` steps); with `resume`, continue from the newest complete checkpoint in
/// `out` (refused when it was written with other settings, data or starting weights). A
/// finished run with the same settings is not redone: its summary is returned and `model`
/// keeps the weights it was given (the trained ones are in `out`).
pub fn train(
    model: &mut dyn LanguageModel,
    records: &[Record],
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary> {
    // Settings first: fingerprinting the weights is a pass over all of them.
    cfg.validate()?;
    let start_sha256 = model.weights_sha256()?;
    let Prepared {
        examples,
        truncated,
        total,
        steps_per_epoch,
        settings,
        save_dtype,
    } = prepare_run(
        model.tokenizer(),
        &model.config().torch_dtype,
        "the model's config.json",
        start_sha256,
        records,
        cfg,
    )?;
    if truncated > 0 {
        eprintln!(
            "warning: {truncated} of {} records were longer than max_length = {} tokens and were truncated",
            examples.len(),
            cfg.max_length
        );
    }
    // Resume's checks come before anything is written into `out`.
    let point = if resume {
        resume_point_of(out, &settings, total)?
    } else {
        ResumePoint::Fresh
    };
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output directory {}", out.display()))?;
    let warmup = warmup_steps(cfg.warmup_ratio, total);
    let opt = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
    };
    let log_path = out.join("train_log.jsonl");
    let mut log: Vec<StepLog> = Vec::new();
    let mut start = 0;
    let mut resumed_from = None;
    match point {
        ResumePoint::Finished => {
            eprintln!(
                "{} already holds this run, finished ({total} steps, same settings and data); \
                 nothing to do",
                out.display()
            );
            return Ok(summarize(
                total,
                examples.len(),
                truncated,
                Some(total),
                read_log(&log_path)?,
            ));
        }
        ResumePoint::Checkpoint { step, dir } => {
            let state = read_state(&dir)?;
            let adam_step = state["adam_step"].as_u64().unwrap_or(step as u64);
            model.load_train_state(&dir, &opt, adam_step)?;
            log = read_log(&log_path)?
                .into_iter()
                .filter(|l| l.step <= step)
                .collect();
            start = step;
            resumed_from = Some(step);
        }
        ResumePoint::Fresh => {}
    }
    write_log(&log_path, &log, false)?;
    let pb = crate::util::progress::bar(total as u64, "train");
    if !progress {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    pb.set_position(start as u64);
    let pad = model.tokenizer().pad_id();
    for step in start..total {
        let lr = lr_at(cfg.schedule, cfg.lr, step, warmup, total);
        let idx = step_indices(examples.len(), cfg, step, steps_per_epoch);
        let step_examples: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        let n_step: usize = step_examples.iter().map(|e| loss_tokens(e)).sum();
        let micro: Vec<Batch> = step_examples
            .chunks(cfg.batch_size)
            .map(|m| collate(m, pad, &Device::Cpu))
            .collect::<Result<_>>()?;
        let stopped = || {
            format!(
                "training stopped at step {} of {total} (lr {lr:e}); nothing was saved for it",
                step + 1
            )
        };
        let (nll, grad_norm) = model
            .sft_step(&micro, &opt, lr, cfg.clip)
            .with_context(stopped)?;
        // The backend has applied the step; the weights it made are never saved.
        if !nll.is_finite() {
            return Err(anyhow::anyhow!(
                "the loss is {nll} (not finite); lower the learning rate or check the weights \
                 and data"
            ))
            .with_context(stopped);
        }
        if !grad_norm.is_finite() {
            return Err(anyhow::anyhow!(
                "the gradient norm is {grad_norm} (not finite); lower the learning rate or set \
                 --clip"
            ))
            .with_context(stopped);
        }
        let entry = StepLog {
            step: step + 1,
            loss: if n_step > 0 { nll / n_step as f64 } else { 0.0 },
            lr,
            tokens: n_step,
            grad_norm,
        };
        write_log(&log_path, std::slice::from_ref(&entry), true)?;
        pb.set_message(format!("loss {:.4}", entry.loss));
        pb.inc(1);
        log.push(entry);
        let done = step + 1;
        if cfg.save_every > 0 && done % cfg.save_every == 0 && done < total {
            // The log lines up to this step must survive whatever the checkpoint survives.
            std::fs::File::open(&log_path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", log_path.display()))?;
            write_checkpoint(&*model, out, done, &settings)?;
        }
    }
    pb.finish_and_clear();
    model.save(out, Some(&save_dtype))?;
    // Written after the model: its presence (with equal settings) marks the run finished.
    crate::util::fsx::atomic_write(
        &out.join(FINISHED_SETTINGS),
        toml::to_string(&settings)?.as_bytes(),
    )?;
    remove_checkpoints(out)?;
    Ok(summarize(
        total,
        examples.len(),
        truncated,
        resumed_from,
        log,
    ))
}

fn read_state(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join("trainer_state.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))
}

/// `checkpoints/step-N` in the layout `train::sft` writes and reads (completion marker last,
/// one rename, older checkpoints removed marker first).
fn write_checkpoint(
    model: &dyn LanguageModel,
    out: &Path,
    step: usize,
    settings: &RunSettings,
) -> Result<()> {
    let state = serde_json::json!({
        "step": step, "adam_step": model.adam_step(), "settings": settings,
    });
    write_checkpoint_with(out, step, &state, |dir| model.save_train_state(dir))
}

/// Rewrite the log with `entries`, or append them.
fn write_log(path: &Path, entries: &[StepLog], append: bool) -> Result<()> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    if !append {
        return crate::util::fsx::atomic_write(path, text.as_bytes());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot append to {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot append to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fused::FusedModel;
    use crate::data::records::read_jsonl;
    use crate::data::template::Template;
    use crate::model::generate::GenConfig;
    use crate::model::{ModelConfig, TextTokenizer};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    fn fused() -> FusedModel {
        let lm = crate::model::load_model(
            &format!("{FIX}/models/tiny-llama"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        FusedModel::new(lm)
    }

    /// 8 records, 2 per step, 3 epochs = 12 steps, a checkpoint every 2.
    fn cfg() -> TrainConfig {
        TrainConfig {
            template: Template::Raw,
            lr: 3e-3,
            batch_size: 2,
            grad_accum: 1,
            epochs: 3,
            save_every: 2,
            ..TrainConfig::default()
        }
    }

    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// A model whose step fails after `left` steps: a run killed part-way.
    struct Killed {
        inner: FusedModel,
        left: usize,
    }

    impl LanguageModel for Killed {
        fn backend_name(&self) -> &'static str {
            "killed"
        }
        fn device_name(&self) -> String {
            self.inner.device_name()
        }
        fn config(&self) -> &ModelConfig {
            self.inner.config()
        }
        fn tokenizer(&self) -> &TextTokenizer {
            self.inner.tokenizer()
        }
        fn logits(&self, ids: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
            self.inner.logits(ids, b, t)
        }
        fn nll_sum(&self, batch: &Batch) -> Result<f64> {
            self.inner.nll_sum(batch)
        }
        fn token_logprobs(&self, batch: &Batch) -> Result<Vec<f32>> {
            self.inner.token_logprobs(batch)
        }
        fn sft_step(
            &mut self,
            m: &[Batch],
            o: &AdamWConfig,
            lr: f64,
            clip: f64,
        ) -> Result<(f64, f64)> {
            anyhow::ensure!(self.left > 0, "killed");
            self.left -= 1;
            self.inner.sft_step(m, o, lr, clip)
        }
        fn weights_sha256(&self) -> Result<String> {
            self.inner.weights_sha256()
        }
        fn adam_step(&self) -> u64 {
            self.inner.adam_step()
        }
        fn generate(&self, p: &[Vec<u32>], c: &GenConfig) -> Result<Vec<Vec<u32>>> {
            self.inner.generate(p, c)
        }
        fn save(&self, out: &Path, dtype: Option<&str>) -> Result<()> {
            self.inner.save(out, dtype)
        }
        fn save_train_state(&self, dir: &Path) -> Result<()> {
            self.inner.save_train_state(dir)
        }
        fn load_train_state(&mut self, dir: &Path, o: &AdamWConfig, s: u64) -> Result<()> {
            self.inner.load_train_state(dir, o, s)
        }
    }

    /// Issue 19 item 5: the backend loop checks a resume exactly as `train::sft` does, and
    /// ends on the fused loop's own bytes.
    #[test]
    fn resume_refuses_changed_settings_and_a_finished_run_is_left_alone() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // The fused loop's run, uninterrupted: the reference bytes.
        let reference = dir.path().join("reference");
        let lm = crate::model::load_model(
            &format!("{FIX}/models/tiny-llama"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let run = crate::train::TrainRun {
            out: &reference,
            resume: false,
            hook: None,
            progress: false,
        };
        crate::train::sft::train(&lm, &recs, &cfg(), run).unwrap();

        let run = dir.path().join("run");
        let mut killed = Killed {
            inner: fused(),
            left: 5,
        };
        let e = train(&mut killed, &recs, &cfg(), &run, false, false).unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
        assert!(run.join("checkpoints/step-4/trainer_state.json").is_file());
        let before = snapshot(&run);
        let refused = |c: &TrainConfig, recs: &[Record], expect: &[&str]| {
            let e = train(&mut fused(), recs, c, &run, true, false).unwrap_err();
            let e = format!("{e:#}");
            for x in expect {
                assert!(e.contains(x), "error lacks \"{x}\": {e}");
            }
            assert_eq!(snapshot(&run), before, "a refused resume changed files");
        };
        refused(
            &TrainConfig { lr: 2e-3, ..cfg() },
            &recs,
            &["cannot resume", "lr: 0.003 -> 0.002"],
        );
        refused(&TrainConfig { seed: 7, ..cfg() }, &recs, &["seed: 42 -> 7"]);
        refused(&cfg(), &recs[..6], &["data: 8 examples"]);
        refused(
            &TrainConfig {
                max_steps: 3,
                ..cfg()
            },
            &recs,
            &["step 4", "past this run's 3 steps"],
        );

        // The same settings resume and end on the fused loop's bytes.
        let s = train(&mut fused(), &recs, &cfg(), &run, true, false).unwrap();
        assert_eq!(s.resumed_from, Some(4));
        assert_eq!(s.steps, 12);
        for f in ["model.safetensors", "train_log.jsonl", FINISHED_SETTINGS] {
            assert_eq!(
                std::fs::read(run.join(f)).unwrap(),
                std::fs::read(reference.join(f)).unwrap(),
                "{f} differs from the fused loop's"
            );
        }
        // A second resume does nothing; with other settings it is refused.
        let finished = snapshot(&run);
        let s = train(&mut fused(), &recs, &cfg(), &run, true, false).unwrap();
        assert_eq!((s.steps, s.resumed_from), (12, Some(12)));
        assert_eq!(
            snapshot(&run),
            finished,
            "resuming a finished run changed files"
        );
        let e = train(
            &mut fused(),
            &recs,
            &TrainConfig { lr: 1e-3, ..cfg() },
            &run,
            true,
            false,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("finished run with other settings"),
            "{e:#}"
        );
        assert_eq!(snapshot(&run), finished);
    }
}
