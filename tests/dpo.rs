//! DPO (issue 20): the loss, rewards, gradient norm and the weights after an AdamW step equal
//! a PyTorch computation of the same formula (tests/fixtures/dpo, written by
//! scripts/make_dpo_fixture.py; no Python here); the first step's loss is ln 2; a killed run
//! resumes from its checkpoint and cached reference to bit-identical weights, and a resume
//! with another beta, loss or method is refused; `elastica train --method dpo` as a user types
//! it, with its log fields and its errors.

mod common;

use elastica::data::prefs::{self, PrefRecord};
use elastica::data::schemas::DataSpec;
use elastica::data::template::Template;
use elastica::model::checkpoint::load_model;
use elastica::train::batch::tokenize;
use elastica::train::dpo::{self, DpoStepLog, REFERENCE_FILE};
use elastica::train::objective::{DpoConfig, DpoLoss, Method};
use elastica::train::schedule::Schedule;
use elastica::train::{TrainConfig, TrainRun};
use std::path::Path;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn model() -> String {
    format!("{FIX}/models/tiny-llama")
}

fn pairs_path() -> String {
    format!("{FIX}/dpo/pairs.jsonl")
}

fn pairs() -> Vec<PrefRecord> {
    prefs::load(&DataSpec::new(pairs_path(), "jsonl"), None)
        .unwrap()
        .records
}

fn trajectory() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/dpo/trajectory.json")).unwrap())
        .unwrap()
}

/// The fixture's hyper-parameters.
fn cfg(loss: DpoLoss) -> TrainConfig {
    TrainConfig {
        template: Template::Raw,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.01,
        schedule: Schedule::Constant,
        batch_size: 2,
        grad_accum: 2,
        epochs: 2,
        clip: 1.0,
        shuffle: false,
        // SimPO's own beta (its authors use about 2) and gamma, as the script's.
        dpo: DpoConfig {
            method: Method::Dpo,
            dpo_beta: if loss == DpoLoss::Simpo { 2.0 } else { 0.1 },
            dpo_loss: loss,
            simpo_gamma: 0.5,
            ..DpoConfig::DEFAULT
        },
        ..Default::default()
    }
}

fn close(got: f64, want: f64, rel: f64, abs: f64) -> bool {
    (got - want).abs() <= abs + rel * want.abs()
}

#[test]
fn loss_rewards_and_first_step_match_pytorch() {
    let traj = trajectory();
    let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
    let pairs = pairs();
    // The same token ids and loss labels as the script.
    for (side, answer) in [
        (
            "chosen",
            (|p: &PrefRecord| p.chosen.clone()) as fn(&PrefRecord) -> String,
        ),
        ("rejected", |p: &PrefRecord| p.rejected.clone()),
    ] {
        let recs: Vec<_> = pairs
            .iter()
            .map(|p| elastica::data::records::Record::pair(p.prompt.clone(), answer(p)))
            .collect();
        let (ex, _) = tokenize(&recs, &lm.tokenizer, Template::Raw, 2048).unwrap();
        for (e, want) in ex.iter().zip(traj[side].as_array().unwrap()) {
            let ids: Vec<u32> = serde_json::from_value(want["input_ids"].clone()).unwrap();
            let labels: Vec<i64> = serde_json::from_value(want["labels"].clone()).unwrap();
            assert_eq!((&e.ids, &e.labels), (&ids, &labels), "{side} tokens");
        }
    }
    for loss in [DpoLoss::Sigmoid, DpoLoss::Ipo, DpoLoss::Simpo] {
        let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
        let out = tempfile::tempdir().unwrap();
        let s = elastica::train::train(
            &lm,
            &pairs,
            &cfg(loss),
            common::quiet_run(out.path(), false),
        )
        .unwrap();
        assert!(!s.reference_cached);
        if loss == DpoLoss::Simpo {
            // SimPO has no reference model: nothing computed, nothing cached.
            assert!(!out.path().join(REFERENCE_FILE).exists());
        } else {
            assert_reference(
                out.path(),
                &traj,
                &[("chosen", "chosen"), ("rejected", "rejected")],
            );
        }
        let name = loss.name();
        assert_log_matches(name, out.path(), &s.log, traj[name].as_array().unwrap());
        if loss == DpoLoss::Sigmoid {
            // Policy = reference at the first step: loss ln 2, rewards 0.
            let first = &s.log[0];
            assert!((first.base.loss - std::f64::consts::LN_2).abs() < 1e-6);
            assert!(first.margin.abs() < 1e-5);
            assert!(s.log[1].margin > 1.0 && s.log[1].accuracy == 1.0);
        }
        assert!(s.log.iter().all(|l| l.kl.is_none()), "{name} logs no z0");
    }
}

/// The run's cached reference log-probs (`out`'s [`REFERENCE_FILE`], keys as named first in
/// `sides`) are the script's (`reference_` + the second name, in `traj`).
fn assert_reference(out: &Path, traj: &serde_json::Value, sides: &[(&str, &str)]) {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(REFERENCE_FILE)).unwrap()).unwrap();
    for (ours, theirs) in sides {
        let got: Vec<f64> = serde_json::from_value(r[ours].clone()).unwrap();
        let want: Vec<f64> =
            serde_json::from_value(traj[format!("reference_{theirs}")].clone()).unwrap();
        assert_eq!(got.len(), want.len(), "reference {ours}");
        for (g, w) in got.iter().zip(&want) {
            assert!(close(*g, *w, 1e-5, 0.0), "reference {ours}: {g} vs {w}");
        }
    }
}

/// A run's log (as returned and as on disk in `out`) against the script's `want`.
fn assert_log_matches(name: &str, out: &Path, log: &[DpoStepLog], want: &[serde_json::Value]) {
    assert_eq!(log.len(), want.len());
    let on_disk: Vec<DpoStepLog> = dpo::read_log(&out.join("train_log.jsonl")).unwrap();
    assert_eq!(on_disk, log);
    for (got, w) in log.iter().zip(want) {
        let f = |k: &str| w[k].as_f64().unwrap();
        let step = got.base.step;
        assert!(
            close(got.base.loss, f("loss"), 1e-4, 1e-6),
            "{name} step {step}: loss {} vs {}",
            got.base.loss,
            f("loss")
        );
        assert!(
            close(got.base.grad_norm, f("grad_norm"), 1e-3, 0.0),
            "{name} step {step}: grad_norm {} vs {}",
            got.base.grad_norm,
            f("grad_norm")
        );
        for (g, k) in [
            (got.chosen_reward, "chosen_reward"),
            (got.rejected_reward, "rejected_reward"),
            (got.margin, "margin"),
        ] {
            assert!(
                close(g, f(k), 1e-3, 1e-5),
                "{name} step {step}: {k} {g} vs {}",
                f(k)
            );
        }
        if let Some(want_kl) = w.get("kl") {
            let kl = got.kl.expect("a KTO step logs its z0");
            let want_kl = want_kl.as_f64().unwrap();
            assert!(
                close(kl, want_kl, 1e-3, 1e-5),
                "{name} step {step}: kl {kl} vs {want_kl}"
            );
        }
        assert_eq!(got.base.tokens as u64, w["tokens"].as_u64().unwrap());
        if step > 1 {
            // At step 1 the rewards are 0 up to float noise, so accuracy is noise too.
            assert_eq!(got.accuracy, f("accuracy"), "{name} step {step}");
        }
    }
}

/// KTO on its own pairs (one shared chosen answer, so z0 leaves its floor): the mismatched
/// sequences' reference log-probs, z0, the loss, rewards and gradient norms over both steps
/// equal the script's; the first step's loss is 1/2 (each answer 1 - sigmoid(0)).
#[test]
fn kto_matches_pytorch() {
    let traj = &trajectory()["kto"];
    let pairs = prefs::load(
        &DataSpec::new(format!("{FIX}/dpo/kto_pairs.jsonl"), "jsonl"),
        None,
    )
    .unwrap()
    .records;
    let c = TrainConfig {
        save_every: 1,
        save_dtype: Some("float32".into()),
        ..cfg(DpoLoss::Kto)
    };
    let out = tempfile::tempdir().unwrap();
    let s = run_on(&pairs, out.path(), None, &c).unwrap();
    assert_reference(
        out.path(),
        traj,
        &[
            ("chosen", "chosen"),
            ("rejected", "rejected"),
            ("kl_chosen", "mismatched_chosen"),
            ("kl_rejected", "mismatched_rejected"),
        ],
    );
    let want = traj["log"].as_array().unwrap();
    assert_log_matches("kto", out.path(), &s.log, want);
    assert!((s.log[0].base.loss - 0.5).abs() < 1e-6);
    assert!(
        s.log[1].kl.unwrap() > 1.0,
        "z0 left its floor: {:?}",
        s.log[1].kl
    );
    // Killed at step 2, resumed from step 1's checkpoint with the cached reference (its
    // mismatched sequences' log-probs included): the same log and weights to the bit.
    let cut = tempfile::tempdir().unwrap();
    assert!(run_on(&pairs, cut.path(), Some(2), &c).is_err());
    let resumed = run_on(&pairs, cut.path(), None, &c).unwrap();
    assert_eq!(resumed.train.resumed_from, Some(1));
    assert!(resumed.reference_cached);
    assert_eq!(resumed.log, s.log);
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(weights(cut.path()) == weights(out.path()));
    // One pair has no other pair's answers to mismatch with.
    let e = run_on(
        &pairs[..1],
        tempfile::tempdir().unwrap().path(),
        Some(9),
        &c,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least 2 pairs"), "{e}");
}

#[test]
fn weights_after_one_adamw_step_match_pytorch() {
    let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    let one = TrainConfig {
        max_steps: 1,
        save_dtype: Some("float32".into()),
        ..cfg(DpoLoss::Sigmoid)
    };
    elastica::train::train(&lm, &pairs(), &one, common::quiet_run(out.path(), false)).unwrap();
    let dev = candle_core::Device::Cpu;
    let want =
        candle_core::safetensors::load(format!("{FIX}/dpo/step1.safetensors"), &dev).unwrap();
    let got = candle_core::safetensors::load(out.path().join("model.safetensors"), &dev).unwrap();
    let start =
        candle_core::safetensors::load(format!("{}/model.safetensors", model()), &dev).unwrap();
    for (name, w) in &want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("saved model lacks {name}"));
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (g, w, s) = (flat(g), flat(w), flat(&start[name]));
        // The step moved the weights (so the comparison says something) ...
        let moved = w
            .iter()
            .zip(&s)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 1e-4, "{name}: the reference step did not move it");
        // ... and elastica's step is PyTorch's: relative distance of the update, plus a loose
        // element bound (AdamW moves coordinates whose gradients are float noise by up to lr).
        let num: f64 = g
            .iter()
            .zip(&w)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = w
            .iter()
            .zip(&s)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let max = g
            .iter()
            .zip(&w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            (num / den).sqrt() < 1e-2 && max < 1e-3,
            "{name}: update differs from PyTorch's (relative {}, max {max})",
            (num / den).sqrt()
        );
    }
}

/// Run `c` on `pairs`, killed (the hook fails) at step `stop` when given, else resuming.
fn run_on(
    pairs: &[PrefRecord],
    out: &Path,
    stop: Option<usize>,
    c: &TrainConfig,
) -> anyhow::Result<dpo::DpoSummary> {
    let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
    let mut hook = common::kill_at(stop);
    let run = TrainRun {
        out,
        resume: stop.is_none(),
        hook: Some(&mut hook),
        progress: false,
    };
    elastica::train::train(&lm, pairs, c, run)
}

/// [`run_on`] the fixture's pairs.
fn run(out: &Path, stop: Option<usize>, c: &TrainConfig) -> anyhow::Result<dpo::DpoSummary> {
    run_on(&pairs(), out, stop, c)
}

#[test]
fn a_killed_run_resumes_bit_identical_from_its_cached_reference_and_other_settings_are_refused() {
    let c = TrainConfig {
        epochs: 4,
        save_every: 1,
        save_dtype: Some("float32".into()),
        ..cfg(DpoLoss::Sigmoid)
    };
    let whole = tempfile::tempdir().unwrap();
    let a = run(whole.path(), None, &c).unwrap();
    let cut = tempfile::tempdir().unwrap();
    let e = run(cut.path(), Some(3), &c).unwrap_err();
    assert!(format!("{e:#}").contains("killed"));
    // The checkpoint of step 2 stands; a resume with another beta, loss or method is refused.
    for (other, what) in [
        (
            DpoConfig {
                dpo_beta: 0.2,
                ..c.dpo.clone()
            },
            "dpo_beta",
        ),
        (
            DpoConfig {
                dpo_loss: DpoLoss::Ipo,
                ..c.dpo.clone()
            },
            "ipo",
        ),
    ] {
        let changed = TrainConfig {
            dpo: other,
            ..c.clone()
        };
        let e = format!("{:#}", run(cut.path(), None, &changed).unwrap_err());
        assert!(e.contains("cannot resume") && e.contains(what), "{e}");
    }
    let b = run(cut.path(), None, &c).unwrap();
    assert_eq!(b.train.resumed_from, Some(2));
    assert!(
        b.reference_cached,
        "the resumed run recomputed the reference"
    );
    assert_eq!(a.log, b.log);
    let (wa, wb) = (
        std::fs::read(whole.path().join("model.safetensors")).unwrap(),
        std::fs::read(cut.path().join("model.safetensors")).unwrap(),
    );
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run's"
    );
    // A finished run is left as it is.
    let again = run(cut.path(), None, &c).unwrap();
    assert_eq!(again.log, a.log);
}

fn cli(out: &Path, extra: &[&str]) -> (bool, String, String) {
    let (m, d) = (model(), pairs_path());
    let flags = [&["--method", "dpo"], common::TWO_STEPS, extra].concat();
    common::train_cli(&m, &d, out, &flags)
}

#[test]
fn train_method_dpo_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, stdout, stderr) = cli(&out, &["--no-shuffle"]);
    assert!(ok, "{stderr}");
    let s: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(s["method"], "dpo");
    assert_eq!(s["pairs"], 4);
    assert!(s["final_margin"].as_f64().unwrap() > 0.0, "{s}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for k in [
        "loss",
        "chosen_reward",
        "rejected_reward",
        "margin",
        "accuracy",
        "grad_norm",
    ] {
        assert!(first[k].is_number(), "{k} missing: {first}");
    }
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(out.join(REFERENCE_FILE).is_file() && out.join("model.safetensors").is_file());
    let settings = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(settings.contains("method = \"dpo\""), "{settings}");

    // --resume of the finished run with another beta is refused, naming the setting.
    let (ok, _, stderr) = cli(&out, &["--no-shuffle", "--resume", "--dpo-beta", "0.5"]);
    assert!(!ok && stderr.contains("dpo_beta"), "{stderr}");

    // SFT records given to --method dpo: the file, the line and the missing field.
    let sft = format!("{FIX}/sft/data.jsonl");
    let m = model();
    let other = dir.path().join("other");
    let (ok, _, stderr) = common::train_cli(&m, &sft, &other, &["--method", "dpo"]);
    assert!(
        !ok && stderr.contains("data.jsonl")
            && stderr.contains("line 1")
            && stderr.contains("\"chosen\""),
        "{stderr}"
    );
    // Bad beta and a stray --prefer are refused before anything runs.
    let (ok, _, stderr) = cli(&other, &["--dpo-beta", "0"]);
    assert!(!ok && stderr.contains("--dpo-beta"), "{stderr}");
    let (ok, _, stderr) = common::train_cli(&m, &sft, &other, &["--prefer", "safer"]);
    assert!(!ok && stderr.contains("--method dpo"), "{stderr}");
    // The default SimPO gamma stays out of a DPO run's settings (older runs compare equal).
    assert!(!settings.contains("simpo_gamma"), "{settings}");

    // SimPO: no reference model is computed or cached, its gamma is a checked setting, and a
    // gamma given to another loss is refused.
    let simpo = dir.path().join("simpo");
    let flags = [
        "--no-shuffle",
        "--dpo-loss",
        "simpo",
        "--dpo-beta",
        "2",
        "--simpo-gamma",
        "0.3",
    ];
    let (ok, _, stderr) = cli(&simpo, &flags);
    assert!(ok, "{stderr}");
    assert!(!simpo.join(REFERENCE_FILE).exists());
    let settings = std::fs::read_to_string(simpo.join("train_config.toml")).unwrap();
    assert!(
        settings.contains("dpo_loss = \"simpo\"") && settings.contains("simpo_gamma = 0.3"),
        "{settings}"
    );
    let (ok, _, stderr) = cli(&other, &["--simpo-gamma", "1"]);
    assert!(
        !ok && stderr.contains("simpo_gamma") && stderr.contains("sigmoid"),
        "{stderr}"
    );

    // KTO: each log line carries its z0 (`kl`), the first loss is 1/2, and the cache holds
    // the mismatched sequences' reference log-probs too.
    let kto = dir.path().join("kto");
    let (ok, stdout, stderr) = cli(&kto, &["--no-shuffle", "--dpo-loss", "kto"]);
    assert!(ok, "{stderr}");
    let log = common::jsonl_values(&kto.join("train_log.jsonl"));
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["final_kl"], log[1]["kl"], "{summary}");
    assert!(
        (log[0]["loss"].as_f64().unwrap() - 0.5).abs() < 1e-6,
        "{}",
        log[0]
    );
    assert!(log
        .iter()
        .all(|l| l["kl"].as_f64().is_some_and(|z| z >= 0.0)));
    let r = common::read_json(&kto.join(REFERENCE_FILE));
    assert_eq!(r["kl_chosen"].as_array().map(Vec::len), Some(4), "{r}");
    assert_eq!(r["kl_rejected"].as_array().map(Vec::len), Some(4), "{r}");
}

#[test]
fn dpo_trains_a_lora_adapter_with_the_base_frozen() {
    // Most DPO runs train an adapter: the reference is the starting model (base + an adapter
    // whose B is zero), only the adapter moves, and it is saved in PEFT's layout.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let lora = ["--no-shuffle", "--lora-rank", "4", "--lora-alpha", "8"];
    let (ok, stdout, stderr) = cli(&out, &lora);
    assert!(ok, "{stderr}");
    let s: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(s["final_margin"].as_f64().unwrap() > 0.0, "{s}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(out.join("adapter_config.json").is_file());
    assert!(
        !out.join("model.safetensors").exists(),
        "the frozen base was saved"
    );
    let tensors = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(!tensors.is_empty());
    assert!(tensors
        .keys()
        .all(|k| k.contains(".lora_A.") || k.contains(".lora_B.")));
    // The adapter moved: some B is no longer zero.
    let moved = tensors
        .iter()
        .filter(|(k, _)| k.contains(".lora_B."))
        .any(|(_, t)| common::max_abs(t) > 0.0);
    assert!(moved, "no lora_B moved");
    // Finished with these settings: left alone; with another rank: refused.
    let (ok, _, stderr) = cli(&out, &[&lora[..], &["--resume"]].concat());
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = cli(
        &out,
        &[
            "--no-shuffle",
            "--lora-rank",
            "8",
            "--lora-alpha",
            "8",
            "--resume",
        ],
    );
    assert!(!ok && stderr.contains("lora"), "{stderr}");
}

#[test]
fn lora_settings_that_disagree_with_the_model_are_refused_before_anything_is_written() {
    // The library's DPO entry point checks what `sft::train` checks: LoRA settings on a
    // model without an adapter would otherwise train every weight, silently.
    let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut c = cfg(DpoLoss::Sigmoid);
    c.lora.rank = 4;
    c.lora.alpha = 8.0;
    let e = elastica::train::train(&lm, &pairs(), &c, common::quiet_run(&out, false)).unwrap_err();
    assert!(format!("{e:#}").contains("has no adapter"), "{e:#}");
    assert!(!out.exists(), "the refused run wrote {}", out.display());
}
