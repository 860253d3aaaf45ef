//! The libtorch backend (`--features torch`), run on the CPU: against the transformers
//! fixtures (logits, mean NLL, greedy tokens), against the fused path (eval NLL, an SFT loss
//! trajectory, sampled generation), resume bit-identical on the same backend, bf16 mixed
//! precision keeping f32 master weights, and the commands through the binary. Without the
//! feature, the flags that need it must say how to build with it.
//!
//! PATH=/work/venv-torch/bin:$PATH LIBTORCH_USE_PYTORCH=1 \
//!     cargo test --release --features torch --test torch_backend

mod common;
use common::elastica;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[cfg(not(feature = "torch"))]
#[test]
fn without_the_feature_torch_flags_say_how_to_build() {
    let model = format!("{FIX}/models/tiny-llama");
    let data = format!("{FIX}/sft/data.jsonl");
    for extra in [
        &["--device", "cuda"][..],
        &["--backend", "torch"][..],
        &["--device", "cuda:1", "--dtype", "bf16"][..],
    ] {
        let mut args = vec!["eval-loss", "--model", &model, "--data", &data];
        args.extend_from_slice(extra);
        let (ok, _, err) = elastica(&args);
        assert!(!ok, "{extra:?} ran without libtorch");
        assert!(
            err.contains("--features torch") && err.contains("LIBTORCH_USE_PYTORCH"),
            "{extra:?}: {err}"
        );
    }
    let (ok, _, err) = elastica(&[
        "generate", "--model", &model, "--prompt", "hi", "--dtype", "bf16",
    ]);
    assert!(
        !ok && err.contains("bf16") && err.contains("--backend torch"),
        "{err}"
    );
    let (ok, _, err) = common::eval_loss(&model, &data, &["--device", "tpu"]);
    assert!(!ok && err.contains("unknown device \"tpu\""), "{err}");

    // `rates` resolves the device before it reads anything: the build hint, not the
    // missing data file.
    let (ok, _, err) = elastica(&[
        "rates",
        "--models",
        &model,
        "--data",
        "d=/nonexistent/held-out.jsonl",
        "--device",
        "cuda",
    ]);
    assert!(
        !ok && err.contains("--features torch") && !err.contains("nonexistent"),
        "{err}"
    );
    // Gradient checkpointing is the torch backend's; the fused path refuses it up front.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let (ok, _, err) = common::train_cli(&model, &data, &out, &["--grad-checkpoint"]);
    assert!(
        !ok && err.contains("--grad-checkpoint needs the torch backend"),
        "{err}"
    );
    assert!(!out.join("model.safetensors").exists());
}

#[cfg(feature = "torch")]
mod torch {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use common::{fixture_sft_config as sft_config, l2, parity_fixture as fixture};
    use elastica::backend::{
        self, BackendChoice, BackendKind, DeviceSpec, LanguageModel, Precision,
    };
    use elastica::data::records::read_jsonl;
    use elastica::data::template::Template;
    use elastica::model::generate::GenConfig;
    use elastica::model::ModelConfig;
    use elastica::train::batch::Batch;
    use elastica::train::driver::Run;
    use elastica::train::schedule::Schedule;
    use elastica::train::sft::StepLog;
    use elastica::train::TrainConfig;
    use std::path::Path;

    fn choice(kind: BackendKind, precision: Precision) -> BackendChoice {
        BackendChoice::new(DeviceSpec::Cpu, Some(kind), precision).unwrap()
    }

    fn load(name: &str, kind: BackendKind, precision: Precision) -> Box<dyn LanguageModel> {
        backend::load(&format!("{FIX}/models/{name}"), &choice(kind, precision)).unwrap()
    }

    fn torch(name: &str) -> Box<dyn LanguageModel> {
        load(name, BackendKind::Torch, Precision::F32)
    }

    fn check_against_transformers(name: &str) {
        let m = torch(name);
        let f = fixture(name);
        let raw: Vec<Vec<i64>> = f["input_ids"].to_vec2().unwrap();
        let mask: Vec<Vec<i64>> = f["attention_mask"].to_vec2().unwrap();
        let want: Vec<Vec<Vec<f32>>> = f["logits"].to_vec3().unwrap();
        let (b, t, v) = (raw.len(), raw[0].len(), want[0][0].len());
        let ids: Vec<u32> = raw.iter().flatten().map(|&x| x as u32).collect();
        let got = m.logits(&ids, b, t).unwrap();
        let mut worst = 0f32;
        for r in 0..b {
            for p in 0..t {
                if mask[r][p] == 0 {
                    continue;
                }
                let w = &want[r][p];
                let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
                for k in 0..v {
                    worst = worst.max((got[(r * t + p) * v + k] - w[k]).abs() / scale);
                }
            }
        }
        assert!(
            worst < 1e-5,
            "{name}: logits differ from transformers by {worst} (relative)"
        );

        // Mean NLL over the fixture's 19 shifted labels, to 1e-5 relative.
        let mut targets = vec![-100i64; b * t];
        for r in 0..b {
            for p in 0..t - 1 {
                if mask[r][p + 1] == 1 {
                    targets[r * t + p] = raw[r][p + 1];
                }
            }
        }
        let n = targets.iter().filter(|&&x| x >= 0).count();
        let batch = Batch {
            ids: Tensor::from_vec(ids.clone(), (b, t), &Device::Cpu).unwrap(),
            targets: Tensor::from_vec(targets, (b, t), &Device::Cpu).unwrap(),
            n_targets: n,
            n_tokens: b * t,
        };
        let mean = m.nll_sum(&batch).unwrap() / n as f64;
        let want_loss = f["loss"].to_scalar::<f32>().unwrap() as f64;
        assert!(
            (mean - want_loss).abs() / want_loss < 1e-5,
            "{name}: mean NLL {mean} vs transformers {want_loss}"
        );
        // Per-token log-probs add up to the same NLL.
        let lp: f64 = m
            .token_logprobs(&batch)
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .sum();
        assert!(
            (-lp / n as f64 - mean).abs() / mean < 1e-5,
            "{name}: log-probs {lp}"
        );

        // Greedy decoding with the KV cache, no EOS stop.
        let greedy: Vec<Vec<i64>> = f["greedy_ids"].to_vec2().unwrap();
        let prompt: Vec<u32> = raw[0].iter().map(|&x| x as u32).collect();
        let want_new: Vec<u32> = greedy[0][t..].iter().map(|&x| x as u32).collect();
        let cfg = GenConfig {
            max_new_tokens: want_new.len(),
            ..Default::default()
        };
        let out = NoEos(&*m).generate(&[prompt], &cfg);
        assert_eq!(
            out[0], want_new,
            "{name}: greedy tokens differ from transformers"
        );
    }

    /// Generation with EOS stopping off (the fixtures' greedy runs ignore EOS): the model's
    /// generate with an EOS id no token has.
    struct NoEos<'a>(&'a dyn LanguageModel);

    impl NoEos<'_> {
        fn generate(&self, prompts: &[Vec<u32>], cfg: &GenConfig) -> Vec<Vec<u32>> {
            // The tiny fixtures' EOS is 1; a prompt continuation may produce it (gemma's 8th
            // token does). Decode token by token with max_new_tokens = 1 would re-run the
            // prompt; instead generate and, if EOS ended a row early, continue from there.
            let mut out: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
            for (r, p) in prompts.iter().enumerate() {
                let mut ctx = p.clone();
                while out[r].len() < cfg.max_new_tokens {
                    let c = GenConfig {
                        max_new_tokens: cfg.max_new_tokens - out[r].len(),
                        ..cfg.clone()
                    };
                    let got = self.0.generate(std::slice::from_ref(&ctx), &c).unwrap();
                    out[r].extend(&got[0]);
                    ctx.extend(&got[0]);
                    if out[r].len() < cfg.max_new_tokens {
                        // Stopped at EOS: record it and go on after it.
                        let eos = self.0.tokenizer().eos_id();
                        out[r].push(eos);
                        ctx.push(eos);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn llama_matches_transformers() {
        check_against_transformers("tiny-llama");
    }

    #[test]
    fn qwen2_matches_transformers() {
        check_against_transformers("tiny-qwen2");
    }

    /// YaRN's scaled rotation on libtorch: the logits transformers gives a model with a yarn
    /// `rope_scaling` (tests/rope_scaling.rs checks the fused path against the same fixture).
    #[test]
    fn yarn_rope_scaling_matches_transformers() {
        for case in common::yarn_cases() {
            let dir = tempfile::tempdir().unwrap();
            common::write_yarn_model(&case, dir.path());
            let m = backend::load(
                dir.path().to_str().unwrap(),
                &choice(BackendKind::Torch, Precision::F32),
            )
            .unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let got = m.logits(&ids, 1, ids.len()).unwrap();
            let positions: Vec<usize> = serde_json::from_value(case["positions"].clone()).unwrap();
            let want: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
            let v = want[0].len();
            for (&p, w) in positions.iter().zip(&want) {
                let scale = w.iter().fold(1f32, |m, x| m.max(x.abs()));
                let row = &got[p * v..(p + 1) * v];
                let worst = row
                    .iter()
                    .zip(w)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    worst <= 1e-5 * scale,
                    "{}: position {p}: {worst}",
                    case["rope_scaling"]
                );
            }
        }
    }

    #[test]
    fn gemma_matches_transformers() {
        check_against_transformers("tiny-gemma");
    }

    #[test]
    fn eval_nll_and_sampling_match_the_fused_path() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        for name in ["tiny-llama", "tiny-qwen2", "tiny-gemma"] {
            let f = load(name, BackendKind::Fused, Precision::F32);
            let t = torch(name);
            let a = backend::run::eval_loss(&*f, &recs, Template::Raw, 2048, 3).unwrap();
            let b = backend::run::eval_loss(&*t, &recs, Template::Raw, 2048, 3).unwrap();
            assert_eq!(a.tokens, b.tokens);
            assert!(
                (a.mean_nll - b.mean_nll).abs() / a.mean_nll < 1e-5,
                "{name}: fused {} vs torch {}",
                a.mean_nll,
                b.mean_nll
            );
            // Sampled, left-padded batch of prompts of different lengths: same RNG streams,
            // same tokens.
            let tok = t.tokenizer();
            let prompts: Vec<Vec<u32>> = ["The film", "A quiet evening with the", "I"]
                .iter()
                .map(|p| tok.encode(p, true).unwrap())
                .collect();
            let cfg = GenConfig {
                max_new_tokens: 12,
                temperature: 0.9,
                top_p: 0.95,
                top_k: 50,
                seed: 7,
                batch_size: 3,
            };
            let gf = f.generate(&prompts, &cfg).unwrap();
            let gt = t.generate(&prompts, &cfg).unwrap();
            assert_eq!(
                gf, gt,
                "{name}: sampled generation differs between backends"
            );
            assert!(
                gt.iter().any(|g| !g.is_empty()),
                "{name}: nothing generated"
            );
        }
    }

    #[test]
    fn generation_on_torch_stops_at_the_context_as_the_fused_path() {
        // The fixture's context is 128 tokens and its greedy decoding never emits EOS, so
        // only the context can stop a 400-token request; a prompt that fills it is refused.
        let (f, t) = (
            load("tiny-llama", BackendKind::Fused, Precision::F32),
            torch("tiny-llama"),
        );
        let context = t.config().max_position_embeddings;
        assert_eq!(context, 128, "the fixture's context");
        let prompts = vec![
            vec![5u32, 6, 7, 8, 9],
            (0..100).map(|i| 10 + i % 50).collect(),
        ];
        let cfg = GenConfig {
            max_new_tokens: 400,
            temperature: 0.0,
            batch_size: 2,
            ..GenConfig::default()
        };
        let gt = t.generate(&prompts, &cfg).unwrap();
        assert_eq!((gt[0].len(), gt[1].len()), (context - 5, context - 100));
        assert_eq!(gt, f.generate(&prompts, &cfg).unwrap());
        let full: Vec<u32> = (0..context as u32).map(|i| 10 + i % 50).collect();
        let refusal = |m: &dyn LanguageModel| {
            format!(
                "{:#}",
                m.generate(&[vec![5], full.clone()], &cfg).unwrap_err()
            )
        };
        let e = refusal(&*t);
        assert!(e.contains("prompt 2 is 128 tokens"), "{e}");
        assert_eq!(e, refusal(&*f));
    }

    #[test]
    fn sft_trajectory_matches_the_fused_path_and_pytorch() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let cfg = sft_config();
        let dir = tempfile::tempdir().unwrap();
        let mut f = load("tiny-llama", BackendKind::Fused, Precision::F32);
        let mut t = torch("tiny-llama");
        let sf =
            backend::train::train(&mut *f, &recs, &cfg, at(&dir.path().join("f"), false, None))
                .unwrap();
        let st =
            backend::train::train(&mut *t, &recs, &cfg, at(&dir.path().join("t"), false, None))
                .unwrap();
        let traj: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIX}/sft/trajectory.json")).unwrap(),
        )
        .unwrap();
        let want = traj["steps"].as_array().unwrap();
        assert_eq!(st.log.len(), want.len());
        for ((a, b), w) in sf.log.iter().zip(&st.log).zip(want) {
            assert!(
                (a.loss - b.loss).abs() / a.loss < 1e-4,
                "step {}: fused loss {} vs torch {}",
                a.step,
                a.loss,
                b.loss
            );
            assert!(
                (a.grad_norm - b.grad_norm).abs() / a.grad_norm < 1e-4,
                "step {}: grad norm",
                a.step
            );
            let wl = w["loss"].as_f64().unwrap();
            assert!(
                (b.loss - wl).abs() / wl < 1e-4,
                "step {}: torch {} vs PyTorch {wl}",
                b.step,
                b.loss
            );
            assert_eq!((a.tokens, a.lr), (b.tokens, b.lr));
        }
        // The saved models: HF names, float32, and equal weights to rounding.
        let wf =
            candle_core::safetensors::load(dir.path().join("f/model.safetensors"), &Device::Cpu)
                .unwrap();
        let wt =
            candle_core::safetensors::load(dir.path().join("t/model.safetensors"), &Device::Cpu)
                .unwrap();
        let mut names: Vec<_> = wt.keys().collect();
        names.sort();
        let mut fnames: Vec<_> = wf.keys().collect();
        fnames.sort();
        assert_eq!(names, fnames);
        for (n, a) in &wf {
            let b = &wt[n];
            assert_eq!(b.dtype(), DType::F32, "{n}");
            let rel = l2(&(a - b).unwrap()) / l2(a);
            assert!(
                rel < 1e-4,
                "{n}: fused and torch weights differ by {rel} (relative)"
            );
        }
        let cfg_saved = ModelConfig::from_file(&dir.path().join("t/config.json")).unwrap();
        assert_eq!(cfg_saved.torch_dtype, "float32");
        assert!(dir.path().join("t/tokenizer.json").exists());
    }

    /// A quiet run into `out` (no progress bar), with `hook` after each step.
    fn at<'a>(out: &'a Path, resume: bool, hook: Option<&'a mut StepFn<'a>>) -> Run<'a> {
        Run {
            out,
            resume,
            progress: false,
            hook,
        }
    }

    type StepFn<'a> = dyn FnMut(&StepLog) -> anyhow::Result<()> + 'a;

    /// A hook that stops the run once step `n` is logged, as a kill would: no final save,
    /// the checkpoints stay.
    fn kill_after(n: usize) -> impl FnMut(&StepLog) -> anyhow::Result<()> {
        move |l| {
            anyhow::ensure!(l.step < n, "killed");
            Ok(())
        }
    }

    #[test]
    fn resume_on_torch_is_bit_identical() {
        let cfg = TrainConfig {
            batch_size: 2,
            grad_accum: 1,
            epochs: 3,
            save_every: 5,
            ..sft_config()
        };
        check_resume(&|| torch("tiny-qwen2"), &cfg, 12, "model.safetensors");
    }

    /// An SFT run of `cfg` on `model()` (`steps` steps) killed after the step past its
    /// first checkpoint and resumed from that checkpoint ends as the uninterrupted run: `file`
    /// byte for byte, the same log. A resume with other settings is refused.
    fn check_resume(
        model: &dyn Fn() -> Box<dyn LanguageModel>,
        cfg: &TrainConfig,
        steps: usize,
        file: &str,
    ) {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full");
        let s = backend::train::train(&mut *model(), &recs, cfg, at(&full, false, None)).unwrap();
        assert_eq!(s.steps, steps);
        let part = dir.path().join("part");
        let mut kill = kill_after(cfg.save_every + 2);
        let e = backend::train::train(&mut *model(), &recs, cfg, at(&part, false, Some(&mut kill)))
            .unwrap_err();
        assert!(format!("{e:#}").contains("killed"));
        assert!(part
            .join(format!("checkpoints/step-{}", cfg.save_every))
            .is_dir());
        // Other settings are refused as the fused loop refuses them (issue 19 item 5).
        let other = TrainConfig {
            lr: cfg.lr * 2.0,
            ..cfg.clone()
        };
        let e =
            backend::train::train(&mut *model(), &recs, &other, at(&part, true, None)).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot resume") && format!("{e:#}").contains("lr: "),
            "{e:#}"
        );
        let r = backend::train::train(&mut *model(), &recs, cfg, at(&part, true, None)).unwrap();
        assert_eq!(r.resumed_from, Some(cfg.save_every));
        assert_eq!(
            std::fs::read(part.join(file)).unwrap(),
            std::fs::read(full.join(file)).unwrap(),
            "resume on the torch backend is not bit-identical"
        );
        assert_eq!(r.log, s.log);
    }

    /// `--grad-checkpoint` recomputes blocks in the backward: the same losses, gradient
    /// norms and weights as the plain backward, up to summation order.
    #[test]
    fn grad_checkpointing_trains_as_the_plain_backward() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let cfg = TrainConfig {
            max_steps: 4,
            ..sft_config()
        };
        let dir = tempfile::tempdir().unwrap();
        for name in ["tiny-llama", "tiny-qwen2"] {
            let mut plain = torch(name);
            let mut ckpt = torch(name);
            ckpt.set_grad_checkpoint(true).unwrap();
            let a = backend::train::train(
                &mut *plain,
                &recs,
                &cfg,
                at(&dir.path().join(format!("{name}-plain")), false, None),
            )
            .unwrap();
            let b = backend::train::train(
                &mut *ckpt,
                &recs,
                &cfg,
                at(&dir.path().join(format!("{name}-ckpt")), false, None),
            )
            .unwrap();
            assert_eq!(a.log.len(), 4);
            assert_logs_close(
                &a.log,
                &b.log,
                (1e-6, 1e-5),
                &format!("{name}: plain vs checkpointed"),
            );
            let weights = |run: &str| {
                let p = dir.path().join(format!("{name}-{run}/model.safetensors"));
                candle_core::safetensors::load(p, &Device::Cpu).unwrap()
            };
            let (wa, wb) = (weights("plain"), weights("ckpt"));
            for (k, ta) in &wa {
                let d = common::max_abs(
                    &(ta.to_dtype(DType::F32).unwrap() - wb[k].to_dtype(DType::F32).unwrap())
                        .unwrap(),
                );
                assert!(d < 1e-5, "{name}: {k} differs by {d}");
            }
        }
    }

    #[test]
    fn bf16_is_mixed_precision_with_f32_master_weights() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let f32m = torch("tiny-llama");
        let mut bf = load("tiny-llama", BackendKind::Torch, Precision::Bf16);
        let a = backend::run::eval_loss(&*f32m, &recs, Template::Raw, 2048, 4).unwrap();
        let b = backend::run::eval_loss(&*bf, &recs, Template::Raw, 2048, 4).unwrap();
        let rel = (a.mean_nll - b.mean_nll).abs() / a.mean_nll;
        // bf16 has 8 bits of mantissa: close, but not equal (it does run in bf16).
        assert!(
            rel < 2e-2 && rel > 1e-7,
            "bf16 NLL {} vs f32 {} ({rel})",
            b.mean_nll,
            a.mean_nll
        );
        // A tiny update survives in the saved f32 weights (a bf16 master would round most of
        // it away): lr 1e-6 moves each weight by ~1e-6, far below bf16's spacing at ~0.3.
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            lr: 1e-6,
            schedule: Schedule::Constant,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_steps: 2,
            ..sft_config()
        };
        backend::train::train(&mut *bf, &recs, &cfg, at(dir.path(), false, None)).unwrap();
        let before = candle_core::safetensors::load(
            format!("{FIX}/models/tiny-llama/model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let after =
            candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)
                .unwrap();
        let w0: Vec<f32> = before["model.layers.0.mlp.up_proj.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w1 = &after["model.layers.0.mlp.up_proj.weight"];
        assert_eq!(w1.dtype(), DType::F32);
        let w1: Vec<f32> = w1.flatten_all().unwrap().to_vec1().unwrap();
        let changed = w0.iter().zip(&w1).filter(|(x, y)| x != y).count();
        assert!(
            changed * 10 > w0.len() * 9,
            "only {changed} of {} weights moved",
            w0.len()
        );
        let max = w0
            .iter()
            .zip(&w1)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "an lr-1e-6 step moved a weight by {max}");
    }

    #[test]
    fn commands_run_on_the_torch_backend() {
        let model = format!("{FIX}/models/tiny-llama");
        let data = format!("{FIX}/sft/data.jsonl");
        let (ok, fused, err) = common::eval_loss(&model, &data, &["--template", "raw"]);
        assert!(ok, "{err}");
        let (ok, torch, err) =
            common::eval_loss(&model, &data, &["--template", "raw", "--backend", "torch"]);
        assert!(ok, "{err}");
        let nll = |s: &str| {
            serde_json::from_str::<serde_json::Value>(s).unwrap()["mean_nll"]
                .as_f64()
                .unwrap()
        };
        assert!(
            (nll(&fused) - nll(&torch)).abs() / nll(&fused) < 1e-5,
            "{fused} vs {torch}"
        );

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        let (ok, so, err) = common::train_cli(
            &model,
            &data,
            &out,
            &[
                common::TWO_STEPS,
                &["--backend", "torch", "--dtype", "bf16"],
            ]
            .concat(),
        );
        assert!(ok, "{err}");
        assert!(so.contains("\"backend\":\"torch\""), "{so}");
        assert!(out.join("model.safetensors").exists() && out.join("train_log.jsonl").exists());
        // The trained checkpoint loads and generates on both backends, token for token.
        let m = out.to_str().unwrap();
        let g = |extra: &[&str]| {
            let mut args = vec![
                "generate",
                "--model",
                m,
                "--prompt",
                "The movie",
                "--max-new-tokens",
                "8",
            ];
            args.extend_from_slice(extra);
            let (ok, o, e) = elastica(&args);
            assert!(ok, "{e}");
            o
        };
        assert_eq!(g(&[]), g(&["--backend", "torch"]));

        // No GPU here: CUDA is a clear error, not a crash.
        if !tch::Cuda::is_available() {
            let (ok, _, err) = common::eval_loss(&model, &data, &["--device", "cuda"]);
            assert!(!ok && err.contains("no CUDA GPU"), "{err}");
        }
        let (ok, _, err) =
            common::eval_loss(&model, &data, &["--device", "cuda", "--backend", "fused"]);
        assert!(!ok && err.contains("CPU only"), "{err}");

        // `rates` on the torch backend: the coder's bits per token, to float rounding.
        let held_out = format!("d={FIX}/sft/data.jsonl");
        let rates = |extra: &[&str]| {
            let out = dir.path().join(format!("rates{}", extra.len()));
            let mut args = vec![
                "rates",
                "--models",
                &model,
                "--data",
                &held_out,
                "--out",
                out.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            let (ok, _, err) = elastica(&args);
            assert!(ok, "{err}");
            let rows: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("rates.json")).unwrap())
                    .unwrap();
            rows[0]["bits_per_token"].as_f64().unwrap()
        };
        let (coder, torch) = (rates(&[]), rates(&["--backend", "torch"]));
        assert!((coder - torch).abs() / coder < 1e-5, "{coder} vs {torch}");
    }

    // ---- LoRA and DPO on the torch backend (issue 20 on issue 19's backend) ----

    use elastica::data::prefs::{self, PrefRecord};
    use elastica::data::schemas::DataSpec;
    use elastica::model::lora::LoraConfig;
    use elastica::train::objective::{DpoConfig, DpoLoss, Method};

    /// `name` (a fixture model) with a fresh LoRA adapter of `cfg`, on `kind` in f32 or bf16.
    fn with_lora(
        name: &str,
        cfg: &TrainConfig,
        kind: BackendKind,
        precision: Precision,
    ) -> Box<dyn LanguageModel> {
        let lm =
            elastica::model::load_model(&format!("{FIX}/models/{name}"), &Device::Cpu).unwrap();
        let (lm, _) =
            elastica::model::adapted::for_training(lm, &cfg.lora, cfg.seed, name).unwrap();
        backend::from_loaded(lm, &choice(kind, precision)).unwrap()
    }

    fn lora_config() -> TrainConfig {
        TrainConfig {
            lr: 1e-2,
            max_steps: 4,
            lora: LoraConfig {
                rank: 4,
                alpha: 8.0,
                ..LoraConfig::default()
            },
            ..sft_config()
        }
    }

    fn dpo_pairs() -> Vec<PrefRecord> {
        pairs_from("pairs.jsonl")
    }

    /// A file of tests/fixtures/dpo (`kto_pairs.jsonl` moves KTO's z0 off its floor).
    fn pairs_from(name: &str) -> Vec<PrefRecord> {
        let spec = DataSpec::new(format!("{FIX}/dpo/{name}"), "jsonl");
        prefs::load(&spec, None).unwrap().records
    }

    /// tests/dpo.rs's fixture settings.
    fn dpo_config(loss: DpoLoss) -> TrainConfig {
        TrainConfig {
            schedule: Schedule::Constant,
            warmup_ratio: 0.0,
            epochs: 2,
            dpo: DpoConfig {
                method: Method::Dpo,
                dpo_beta: 0.1,
                dpo_loss: loss,
                ..DpoConfig::default()
            },
            ..sft_config()
        }
    }

    /// A fused and a torch run logged the same steps: each loss to 1e-5 and gradient norm to
    /// 1e-4, relative.
    fn assert_logs_match(fused: &[StepLog], torch: &[StepLog]) {
        assert_logs_close(fused, torch, (1e-5, 1e-4), "fused vs torch");
    }

    /// Two runs (`what`) logged the same steps: each loss and gradient norm within `tol`
    /// (loss, norm), relative.
    fn assert_logs_close(a: &[StepLog], b: &[StepLog], tol: (f64, f64), what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x.loss - y.loss).abs() / x.loss < tol.0
                    && (x.grad_norm - y.grad_norm).abs() / x.grad_norm < tol.1,
                "{what}, step {}: ({}, {}) vs ({}, {})",
                x.step,
                x.loss,
                x.grad_norm,
                y.loss,
                y.grad_norm
            );
        }
    }

    /// Largest relative difference (L2 norm of the difference over the norm) between the
    /// tensors of two safetensors files, which must hold the same names.
    fn weights_rel_diff(a: &Path, b: &Path) -> f32 {
        let wa = candle_core::safetensors::load(a, &Device::Cpu).unwrap();
        let wb = candle_core::safetensors::load(b, &Device::Cpu).unwrap();
        let (mut ka, mut kb): (Vec<_>, Vec<_>) = (wa.keys().collect(), wb.keys().collect());
        ka.sort();
        kb.sort();
        assert_eq!(
            ka,
            kb,
            "{} and {} hold other tensors",
            a.display(),
            b.display()
        );
        wa.iter()
            .map(|(n, x)| {
                let y = wb[n].to_dtype(DType::F32).unwrap();
                let d = l2(&(x.to_dtype(DType::F32).unwrap() - y).unwrap());
                d / l2(x).max(1e-30)
            })
            .fold(0f32, f32::max)
    }

    #[test]
    fn fixture_adapters_score_as_transformers_plus_peft_on_torch() {
        let expected = common::lora_expected();
        let (ids, targets) = common::lora_ids_and_targets();
        let (b, t) = ids.dims2().unwrap();
        let batch = Batch {
            ids,
            targets,
            n_targets: b * (t - 1),
            n_tokens: b * t,
        };
        for name in common::LORA_FIXTURES {
            let want = expected["nll_sum"][name].as_f64().unwrap();
            let base = expected["base"][name].as_str().unwrap();
            let lm = common::with_lora_adapter(name);
            let m = backend::from_loaded(lm, &choice(BackendKind::Torch, Precision::F32)).unwrap();
            let got = m.nll_sum(&batch).unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{name}: torch {got} vs transformers+peft {want}"
            );
            let plain = torch(base).nll_sum(&batch).unwrap();
            assert!((plain - want).abs() > 1e-2, "{name}: adapter had no effect");
        }
    }

    /// A LoRA run on torch trains as the fused path's does: the same losses, gradient norms
    /// and adapter; the base stays frozen and only the adapter is saved (PEFT's files).
    #[test]
    fn lora_on_torch_matches_the_fused_path() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let cfg = lora_config();
        let dir = tempfile::tempdir().unwrap();
        let (fo, to) = (dir.path().join("f"), dir.path().join("t"));
        let mut f = with_lora("tiny-llama", &cfg, BackendKind::Fused, Precision::F32);
        let mut t = with_lora("tiny-llama", &cfg, BackendKind::Torch, Precision::F32);
        assert_eq!(f.weights_sha256().unwrap(), t.weights_sha256().unwrap());
        let a = backend::train::train(&mut *f, &recs, &cfg, at(&fo, false, None)).unwrap();
        let b = backend::train::train(&mut *t, &recs, &cfg, at(&to, false, None)).unwrap();
        assert_eq!(a.log.len(), 4);
        assert_logs_match(&a.log, &b.log);
        // The loss moved: the adapter really trains.
        assert!(b.log[3].loss < b.log[0].loss, "{:?}", b.log);
        for out in [&fo, &to] {
            assert!(out.join("adapter_config.json").is_file());
            assert!(
                !out.join("model.safetensors").exists(),
                "the frozen base was saved"
            );
        }
        let rel = weights_rel_diff(
            &fo.join("adapter_model.safetensors"),
            &to.join("adapter_model.safetensors"),
        );
        assert!(rel < 1e-4, "fused and torch adapters differ by {rel}");
        // The torch-trained adapter loads back and scores as the torch model it came from.
        let recs_b = elastica::train::batch::tokenize(&recs[..2], t.tokenizer(), Template::Raw, 64)
            .unwrap()
            .0;
        let refs: Vec<_> = recs_b.iter().collect();
        let batch =
            elastica::train::batch::collate(&refs, t.tokenizer().pad_id(), &Device::Cpu).unwrap();
        let back = elastica::model::adapted::load_model_with(
            &format!("{FIX}/models/tiny-llama"),
            Some(&to),
            &Device::Cpu,
        )
        .unwrap();
        let back = backend::from_loaded(back, &choice(BackendKind::Torch, Precision::F32)).unwrap();
        let (x, y) = (t.nll_sum(&batch).unwrap(), back.nll_sum(&batch).unwrap());
        assert!((x - y).abs() <= 1e-6 * x, "{x} vs reloaded {y}");
    }

    /// bf16 with LoRA: mixed precision, the adapter's master weights and the saved adapter
    /// in f32, the losses near the f32 run's.
    #[test]
    fn lora_in_bf16_keeps_f32_adapter_weights() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let cfg = lora_config();
        let dir = tempfile::tempdir().unwrap();
        let mut f = with_lora("tiny-llama", &cfg, BackendKind::Torch, Precision::F32);
        let mut h = with_lora("tiny-llama", &cfg, BackendKind::Torch, Precision::Bf16);
        let a = backend::train::train(&mut *f, &recs, &cfg, at(&dir.path().join("f"), false, None))
            .unwrap();
        let b = backend::train::train(&mut *h, &recs, &cfg, at(&dir.path().join("h"), false, None))
            .unwrap();
        for (x, y) in a.log.iter().zip(&b.log) {
            assert!(
                (x.loss - y.loss).abs() / x.loss < 3e-2,
                "step {}: f32 {} vs bf16 {}",
                x.step,
                x.loss,
                y.loss
            );
        }
        let w = candle_core::safetensors::load(
            dir.path().join("h/adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert!(!w.is_empty());
        let mut moved = 0;
        for (n, t) in &w {
            assert_eq!(t.dtype(), DType::F32, "{n}");
            if n.contains("lora_B") {
                // B starts at zero; small f32 updates survive (bf16 would round many away).
                let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
                moved += v.iter().filter(|x| **x != 0.0).count();
                let bf: Vec<f32> = t
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    v.iter().zip(&bf).any(|(a, b)| a != b),
                    "{n}: the saved adapter holds bf16-rounded values"
                );
            }
        }
        assert!(moved > 0, "no adapter weight moved");
    }

    /// DPO on torch: the fused path's losses, rewards, KTO's z0 and weights (every loss);
    /// the first step's loss is ln 2 (policy = reference).
    #[test]
    fn dpo_on_torch_matches_the_fused_path() {
        let dir = tempfile::tempdir().unwrap();
        for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo, DpoLoss::Simpo, DpoLoss::Kto] {
            let cfg = dpo_config(loss);
            let pairs = match loss {
                DpoLoss::Kto => pairs_from("kto_pairs.jsonl"),
                _ => dpo_pairs(),
            };
            let (fo, to) = (
                dir.path().join(format!("{loss:?}-f")),
                dir.path().join(format!("{loss:?}-t")),
            );
            let mut f = load("tiny-llama", BackendKind::Fused, Precision::F32);
            let mut t = torch("tiny-llama");
            let a = backend::train::train(&mut *f, &pairs, &cfg, at(&fo, false, None)).unwrap();
            let b = backend::train::train(&mut *t, &pairs, &cfg, at(&to, false, None)).unwrap();
            assert!(a.log.len() >= 2 && a.log.len() == b.log.len());
            if loss == DpoLoss::Kto {
                assert!(
                    a.log[1].kl.unwrap() > 1.0,
                    "z0 left its floor: {:?}",
                    a.log[1]
                );
            }
            if loss == DpoLoss::Sigmoid {
                let first = b.log[0].base.loss;
                assert!(
                    (first - std::f64::consts::LN_2).abs() < 1e-6,
                    "first loss {first}"
                );
            }
            for (x, y) in a.log.iter().zip(&b.log) {
                let close = |p: f64, q: f64| (p - q).abs() <= 1e-5 * p.abs().max(1e-3);
                let kl_close = match (x.kl, y.kl) {
                    (Some(p), Some(q)) => close(p, q),
                    (p, q) => p.is_none() && q.is_none() && loss != DpoLoss::Kto,
                };
                assert!(
                    close(x.base.loss, y.base.loss)
                        && close(x.margin, y.margin)
                        && close(x.chosen_reward, y.chosen_reward)
                        && kl_close,
                    "{loss:?} step {}: fused {x:?} vs torch {y:?}",
                    x.base.step
                );
                assert_eq!(x.base.tokens, y.base.tokens);
            }
            let rel =
                weights_rel_diff(&fo.join("model.safetensors"), &to.join("model.safetensors"));
            assert!(
                rel < 1e-4,
                "{loss:?}: fused and torch weights differ by {rel}"
            );
        }
    }

    /// KTO on unpaired feedback on torch: the fused path's losses, rewards, z0 and weights.
    #[test]
    fn unpaired_kto_on_torch_matches_the_fused_path() {
        let dir = tempfile::tempdir().unwrap();
        let spec = DataSpec::new(format!("{FIX}/dpo/kto_unpaired.jsonl"), "jsonl");
        let examples = elastica::data::feedback::load(&spec).unwrap().records;
        let mut cfg = dpo_config(DpoLoss::Kto);
        cfg.dpo.kto_undesirable_weight = 1.5;
        let (fo, to) = (dir.path().join("f"), dir.path().join("t"));
        let mut f = load("tiny-llama", BackendKind::Fused, Precision::F32);
        let mut t = torch("tiny-llama");
        let a = backend::train::train(&mut *f, &examples, &cfg, at(&fo, false, None)).unwrap();
        let b = backend::train::train(&mut *t, &examples, &cfg, at(&to, false, None)).unwrap();
        assert!(a.log.len() >= 2 && a.log.len() == b.log.len());
        assert!(a.log.iter().any(|l| l.kl > 1.0), "z0 never left its floor");
        // As tests/kto.rs holds the fused path to PyTorch: the rewards and z0 are differences
        // of summed log-probs, so their relative noise is larger than the loss's.
        let close = |p: f64, q: f64, rel: f64| (p - q).abs() <= 1e-5 + rel * p.abs();
        let both = |p: Option<f64>, q: Option<f64>| match (p, q) {
            (Some(p), Some(q)) => close(p, q, 1e-3),
            (p, q) => p == q,
        };
        for (x, y) in a.log.iter().zip(&b.log) {
            assert!(
                close(x.base.loss, y.base.loss, 1e-4)
                    && close(x.kl, y.kl, 1e-3)
                    && both(x.desirable_reward, y.desirable_reward)
                    && both(x.undesirable_reward, y.undesirable_reward),
                "step {}: fused {x:?} vs torch {y:?}",
                x.base.step
            );
            assert_eq!(x.base.tokens, y.base.tokens);
        }
        let rel = weights_rel_diff(&fo.join("model.safetensors"), &to.join("model.safetensors"));
        assert!(rel < 1e-4, "fused and torch weights differ by {rel}");
    }

    /// DPO with a LoRA adapter on torch, killed after a checkpoint and resumed: the cached
    /// reference is read, and the adapter is bit-identical to the uninterrupted run's.
    #[test]
    fn lora_dpo_resume_on_torch_is_bit_identical() {
        let pairs = dpo_pairs();
        let cfg = TrainConfig {
            batch_size: 1,
            grad_accum: 1,
            save_every: 2,
            lr: 1e-2,
            lora: lora_config().lora,
            ..dpo_config(DpoLoss::Sigmoid)
        };
        let dir = tempfile::tempdir().unwrap();
        let (full, part) = (dir.path().join("full"), dir.path().join("part"));
        let model = || with_lora("tiny-qwen2", &cfg, BackendKind::Torch, Precision::F32);
        let s = backend::train::train(&mut *model(), &pairs, &cfg, at(&full, false, None)).unwrap();
        assert!(s.train.steps >= 4, "{} steps", s.train.steps);
        let mut kill = kill_after(3);
        let e = backend::train::train(
            &mut *model(),
            &pairs,
            &cfg,
            at(&part, false, Some(&mut kill)),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("killed"), "{e:#}");
        assert!(part.join("checkpoints/step-2").is_dir());
        let r = backend::train::train(&mut *model(), &pairs, &cfg, at(&part, true, None)).unwrap();
        assert_eq!(r.train.resumed_from, Some(2));
        assert!(
            r.reference_cached,
            "the resumed run recomputed the reference"
        );
        assert_eq!(
            std::fs::read(part.join("adapter_model.safetensors")).unwrap(),
            std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
            "a resumed LoRA DPO run on torch is not bit-identical"
        );
        assert_eq!(r.log, s.log);
    }

    /// `lora_config()` with LoRA dropout 0.1.
    fn dropout_config() -> TrainConfig {
        let mut cfg = lora_config();
        cfg.lora.dropout = 0.1;
        cfg
    }

    /// LoRA dropout on torch draws the fused path's masks (keyed by seed, update count,
    /// micro-batch, layer and projection): the same losses, norms and adapter, and not those
    /// of a run without dropout.
    #[test]
    fn lora_dropout_on_torch_matches_the_fused_path() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let cfg = dropout_config();
        let dir = tempfile::tempdir().unwrap();
        let (fo, to, no) = (
            dir.path().join("f"),
            dir.path().join("t"),
            dir.path().join("none"),
        );
        let mut f = with_lora("tiny-llama", &cfg, BackendKind::Fused, Precision::F32);
        let mut t = with_lora("tiny-llama", &cfg, BackendKind::Torch, Precision::F32);
        let a = backend::train::train(&mut *f, &recs, &cfg, at(&fo, false, None)).unwrap();
        let b = backend::train::train(&mut *t, &recs, &cfg, at(&to, false, None)).unwrap();
        assert_eq!(b.log.len(), 4);
        assert_logs_match(&a.log, &b.log);
        let rel = weights_rel_diff(
            &fo.join("adapter_model.safetensors"),
            &to.join("adapter_model.safetensors"),
        );
        assert!(rel < 1e-4, "fused and torch adapters differ by {rel}");
        // The masks really apply: without dropout the run goes elsewhere.
        let mut plain = with_lora(
            "tiny-llama",
            &lora_config(),
            BackendKind::Torch,
            Precision::F32,
        );
        let c = backend::train::train(&mut *plain, &recs, &lora_config(), at(&no, false, None))
            .unwrap();
        let moved = b
            .log
            .iter()
            .zip(&c.log)
            .skip(1)
            .any(|(x, y)| (x.loss - y.loss).abs() / y.loss > 1e-4);
        assert!(moved, "dropout changed nothing: {:?} vs {:?}", b.log, c.log);
        let rel = weights_rel_diff(
            &no.join("adapter_model.safetensors"),
            &to.join("adapter_model.safetensors"),
        );
        assert!(
            rel > 1e-3,
            "with and without dropout the adapters differ by {rel} only"
        );
    }

    /// A LoRA run with dropout on torch, killed after a checkpoint and resumed, ends
    /// bit-identical to the uninterrupted run: the masks are keyed by the restored update
    /// count.
    #[test]
    fn lora_dropout_resume_on_torch_is_bit_identical() {
        let cfg = TrainConfig {
            save_every: 2,
            ..dropout_config()
        };
        let model = || with_lora("tiny-llama", &cfg, BackendKind::Torch, Precision::F32);
        check_resume(&model, &cfg, 4, "adapter_model.safetensors");
    }

    /// LoRA settings that disagree with the model's adapter are refused by the backend loop
    /// on both backends, with the fused path's own message (`model::adapted`'s check).
    #[test]
    fn lora_settings_against_the_adapter_are_refused_alike() {
        let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let refusal = |kind: BackendKind, cfg: &TrainConfig, lora: bool| {
            let lm = elastica::model::load_model(&format!("{FIX}/models/tiny-llama"), &Device::Cpu)
                .unwrap();
            let lm = match lora {
                true => {
                    elastica::model::adapted::for_training(lm, &lora_config().lora, 1, "t")
                        .unwrap()
                        .0
                }
                false => lm,
            };
            let mut m = backend::from_loaded(lm, &choice(kind, Precision::F32)).unwrap();
            let out = dir.path().join(format!("{kind:?}"));
            let e = backend::train::train(&mut *m, &recs, cfg, at(&out, false, None)).unwrap_err();
            assert!(
                !out.exists(),
                "{kind:?} wrote {} before refusing",
                out.display()
            );
            format!("{e:#}")
        };
        // An adapter with the LoRA settings off; LoRA settings without an adapter; an
        // adapter of another rank.
        let other_rank = TrainConfig {
            lora: LoraConfig {
                rank: 2,
                ..lora_config().lora
            },
            ..lora_config()
        };
        for (cfg, lora, says) in [
            (sft_config(), true, "the LoRA settings are off"),
            (lora_config(), false, "has no adapter"),
            (other_rank, true, "r = 4"),
        ] {
            let (f, t) = (
                refusal(BackendKind::Fused, &cfg, lora),
                refusal(BackendKind::Torch, &cfg, lora),
            );
            assert!(f.contains(says), "{f}");
            assert_eq!(f, t, "the backends refuse differently");
        }
    }

    /// `elastica train --backend torch` through the binary: a LoRA run (with dropout)
    /// writes an adapter that `eval-loss` reads on either backend, and a DPO run writes its
    /// log; the losses are the fused runs' within 1e-4.
    #[test]
    fn lora_and_dpo_train_through_the_binary_on_torch() {
        let model = format!("{FIX}/models/tiny-llama");
        let sft = format!("{FIX}/sft/data.jsonl");
        let pairs = format!("{FIX}/dpo/pairs.jsonl");
        let dir = tempfile::tempdir().unwrap();
        let train = |name: &str, backend: &str, data: &str, extra: &[&str]| {
            let out = dir.path().join(name);
            let fixed =
                "train --template raw --batch-size 2 --grad-accum 2 --max-steps 3 --lr 1e-2";
            let mut args: Vec<&str> = fixed.split(' ').collect();
            let run = [
                "--model",
                model.as_str(),
                "--data",
                data,
                "--backend",
                backend,
            ];
            args.extend(run.into_iter().chain(["--out", out.to_str().unwrap()]));
            args.extend_from_slice(extra);
            let (ok, so, err) = elastica(&args);
            assert!(ok, "{err}");
            let summary: serde_json::Value = serde_json::from_str(so.trim()).unwrap();
            let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
            assert_eq!(log.lines().count(), 3, "{log}");
            (out, summary)
        };
        let close = |a: &serde_json::Value, b: &serde_json::Value, what: &str| {
            let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (x - y).abs() / x.abs() < 1e-4,
                "{what}: fused {x} vs torch {y}"
            );
        };
        let lora = [
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-dropout",
            "0.1",
        ];
        let (fo, fs) = train("lora-fused", "fused", &sft, &lora);
        let (to, ts) = train("lora-torch", "torch", &sft, &lora);
        assert_eq!(ts["backend"], "torch", "{ts}");
        close(&fs["final_loss"], &ts["final_loss"], "LoRA final loss");
        assert!(to.join("adapter_model.safetensors").is_file());
        assert!(
            !to.join("model.safetensors").exists(),
            "the frozen base was saved"
        );
        let eval = |adapter: Option<&Path>, extra: &[&str]| {
            let mut args = vec![
                "eval-loss",
                "--model",
                model.as_str(),
                "--data",
                sft.as_str(),
                "--template",
                "raw",
            ];
            if let Some(a) = adapter {
                args.extend(["--adapter", a.to_str().unwrap()]);
            }
            args.extend_from_slice(extra);
            let (ok, so, err) = elastica(&args);
            assert!(ok, "{err}");
            serde_json::from_str::<serde_json::Value>(so.trim()).unwrap()["mean_nll"].clone()
        };
        let base = eval(None, &[]).as_f64().unwrap();
        let (on_fused, on_torch) = (eval(Some(&fo), &[]), eval(Some(&to), &[]));
        close(&on_fused, &on_torch, "eval-loss of the two adapters");
        assert!(
            on_torch.as_f64().unwrap() < base,
            "the adapter was not read: {on_torch} vs the base's {base}"
        );
        let torch_reads = eval(Some(&to), &["--backend", "torch"]);
        close(&on_torch, &torch_reads, "eval-loss of the adapter on torch");

        let dpo = ["--method", "dpo"];
        let (_, fd) = train("dpo-fused", "fused", &pairs, &dpo);
        let (_, td) = train("dpo-torch", "torch", &pairs, &dpo);
        assert_eq!(
            (td["method"].as_str(), td["backend"].as_str()),
            (Some("dpo"), Some("torch"))
        );
        close(&fd["final_loss"], &td["final_loss"], "DPO final loss");
        close(&fd["final_margin"], &td["final_margin"], "DPO final margin");
    }
}
