//! The training loop (`train::driver`) on any [`LanguageModel`]: SFT and DPO with the
//! schedule, data order, log (`train_log.jsonl`), atomic checkpoints and exact resume that
//! the fused path has, the steps left to the backend. `elastica train` runs the fused
//! path's own entry points (`train::sft::train`, `train::dpo::train`: their hooks see the
//! candle model) on the default CPU backend and these on any other; both resolve a run the
//! same way, so a resume with other settings, data or starting weights is refused here
//! exactly as there, and a finished run is not redone.

use super::LanguageModel;
use crate::data::prefs::PrefRecord;
use crate::data::records::Record;
use crate::train::batch::Batch;
use crate::train::driver::{drive, Run, Trainee, Weigh};
use crate::train::optim::AdamWConfig;
use crate::train::sft::{
    prepare_run, summarize, write_checkpoint_with, RunSettings, SftStep, TrainSummary,
};
use crate::train::TrainConfig;
use anyhow::{Context, Result};
use std::path::Path;

/// Fine-tune `model` on `records` into `run.out` (final model, `train_log.jsonl`,
/// checkpoints every `save_every` steps); with `run.resume`, continue from the newest
/// complete checkpoint (refused when it was written with other settings, data or starting
/// weights). A finished run with the same settings is not redone: its summary is returned
/// and `model` keeps the weights it was given (the trained ones are in `out`).
pub fn train(
    model: &mut dyn LanguageModel,
    records: &[Record],
    cfg: &TrainConfig,
    run: Run<'_>,
) -> Result<TrainSummary> {
    // Settings first: fingerprinting the weights is a pass over all of them.
    cfg.validate()?;
    let p = prepare_run(
        model.tokenizer(),
        &model.config().torch_dtype,
        "the model's config.json",
        model.weights_sha256()?,
        records,
        cfg,
    )?;
    p.warn_truncated("records");
    let mut method = SftStep {
        examples: &p.examples,
        cfg,
    };
    let o = drive(&mut OnBackend(model), &mut method, &p.plan(), run)?;
    Ok(summarize(
        p.total,
        p.examples.len(),
        p.truncated,
        o.resumed_from,
        o.log,
    ))
}

/// Train `model` with DPO on `pairs` into `run.out`, as `train::dpo::train` does on the
/// fused path (the reference log-probs cached in the run, resume, refusals).
pub fn train_dpo(
    model: &mut dyn LanguageModel,
    pairs: &[PrefRecord],
    cfg: &TrainConfig,
    run: Run<'_>,
) -> Result<crate::train::dpo::DpoSummary> {
    cfg.validate()?;
    let p = crate::train::dpo::prepare_pairs(
        model.tokenizer(),
        &model.config().torch_dtype,
        model.weights_sha256()?,
        pairs,
        cfg,
    )?;
    let mut method = crate::train::dpo::DpoStep::new(&p);
    let o = drive(&mut OnBackend(model), &mut method, &p.plan(), run)?;
    Ok(method.summary(o))
}

/// Any backend as the loop's [`Trainee`].
pub struct OnBackend<'a>(pub &'a mut dyn LanguageModel);

impl Trainee for OnBackend<'_> {
    fn pad_id(&self) -> u32 {
        self.0.tokenizer().pad_id()
    }
    fn sft_step(
        &mut self,
        micro: &[Batch],
        opt: &AdamWConfig,
        lr: f64,
        clip: f64,
    ) -> Result<(f64, f64)> {
        self.0.sft_step(micro, opt, lr, clip)
    }
    fn seq_nll(&mut self, batch: &Batch) -> Result<Vec<f64>> {
        self.0.seq_nll(batch)
    }
    fn weighted_step(
        &mut self,
        micro: &[Batch],
        weigh: &mut Weigh<'_>,
        opt: &AdamWConfig,
        lr: f64,
        clip: f64,
    ) -> Result<f64> {
        self.0.weighted_step(micro, weigh, opt, lr, clip)
    }
    fn restore(&mut self, dir: &Path, step: usize, opt: &AdamWConfig) -> Result<()> {
        let p = dir.join("trainer_state.json");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let state: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", p.display()))?;
        let adam_step = state["adam_step"].as_u64().unwrap_or(step as u64);
        self.0.load_train_state(dir, opt, adam_step)
    }
    /// `checkpoints/step-N` in the layout `train::sft` writes and reads.
    fn checkpoint(&self, out: &Path, step: usize, settings: &RunSettings) -> Result<()> {
        let state = serde_json::json!({
            "step": step, "adam_step": self.0.adam_step(), "settings": settings,
        });
        write_checkpoint_with(out, step, &state, |dir| self.0.save_train_state(dir))
    }
    fn save_final(&self, out: &Path, save_dtype: &str) -> Result<()> {
        self.0.save(out, Some(save_dtype))
    }
    /// The model keeps the weights it was given: the finished run's are in `out`.
    fn load_final(&mut self, _out: &Path) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fused::FusedModel;
    use crate::data::records::read_jsonl;
    use crate::data::template::Template;
    use crate::train::sft::FINISHED_SETTINGS;
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

    /// A quiet run into `out`, with `hook` after each step.
    fn at<'a>(out: &'a Path, resume: bool, hook: Option<&'a mut StepFn<'a>>) -> Run<'a> {
        Run {
            out,
            resume,
            progress: false,
            hook,
        }
    }

    type StepFn<'a> = dyn FnMut(&crate::train::sft::StepLog) -> Result<()> + 'a;

    /// A hook that kills the run once step `n` is logged (before its checkpoint).
    fn kill_after(n: usize) -> impl FnMut(&crate::train::sft::StepLog) -> Result<()> {
        move |l| {
            anyhow::ensure!(l.step < n, "killed");
            Ok(())
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
        let mut kill = kill_after(5);
        let e = train(
            &mut fused(),
            &recs,
            &cfg(),
            at(&run, false, Some(&mut kill)),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
        assert!(run.join("checkpoints/step-4/trainer_state.json").is_file());
        let before = snapshot(&run);
        let refused = |c: &TrainConfig, recs: &[Record], expect: &[&str]| {
            let e = train(&mut fused(), recs, c, at(&run, true, None)).unwrap_err();
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
        let s = train(&mut fused(), &recs, &cfg(), at(&run, true, None)).unwrap();
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
        let s = train(&mut fused(), &recs, &cfg(), at(&run, true, None)).unwrap();
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
            at(&run, true, None),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("finished run with other settings"),
            "{e:#}"
        );
        assert_eq!(snapshot(&run), finished);
    }
}
