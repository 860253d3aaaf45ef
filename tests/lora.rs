//! LoRA adapters: PEFT's adapters score as transformers + peft; the hand-written LoRA
//! backward equals autograd and a finite difference, with and without a dropout mask; a
//! LoRA run (with or without dropout) trains only the adapter and resumes bit-identically; merge equals the adapter applied on the fly; the CLI's
//! `--adapter`, `--lora-rank` and `merge`.

mod common;
use common::{
    lora_expected as expected, lora_ids_and_targets as ids_and_targets,
    with_lora_adapter as with_adapter,
};

use candle_core::{DType, Device, Tensor};
use elastica::model::adapted::{attach, for_training, save_merged};
use elastica::model::checkpoint::{init_model, load_model};
use elastica::model::lora::{FoldedAdapter, LoraConfig, LoraDropout, PeftAdapter};
use elastica::model::LoadedModel;
use elastica::train::backprop::{nll_and_grads, scoring_nll, usable};
use elastica::train::batch::Batch;
use elastica::train::loss::nll_sum;
use elastica::train::optim::{AdamW, AdamWConfig, Grads};
use elastica::train::sft::optimizer_step;
use elastica::train::{train, TrainConfig, TrainRun};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture's path, as a string for the CLI.
fn fixture_path(rel: &str) -> String {
    fixtures().join(rel).to_string_lossy().into_owned()
}

/// `lm` gives the LoRA fixture's ids the summed NLL `want` (transformers + peft's) within
/// 1e-5, on the fused and on the graph path.
fn scores_as(name: &str, lm: &LoadedModel, want: f64) {
    let (ids, targets) = ids_and_targets();
    let fused = scoring_nll(&lm.model, &ids, &targets).unwrap();
    let graph = nll_sum(&lm.model.forward(&ids).unwrap(), &targets)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    for (path, got) in [("fused", fused), ("graph", graph)] {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{name} ({path}): elastica {got} vs transformers+peft {want}"
        );
    }
}

#[test]
fn peft_adapters_score_as_transformers_plus_peft_on_both_paths() {
    let (ids, targets) = ids_and_targets();
    for name in common::LORA_FIXTURES {
        let want = expected()["nll_sum"][name].as_f64().unwrap();
        let lm = with_adapter(name);
        assert!(usable(&lm.model), "{name}: the fused path should take it");
        scores_as(name, &lm, want);
        // Without the adapter the score differs: the adapter is really applied.
        let base = load_model(&lm.dir.to_string_lossy(), &Device::Cpu).unwrap();
        let plain = scoring_nll(&base.model, &ids, &targets).unwrap();
        assert!((plain - want).abs() > 1e-2, "{name}: adapter had no effect");
    }
}

/// The gradient of the adapted model's NLL through candle's autograd, adapter tensors only.
fn autograd(lm: &LoadedModel, ids: &Tensor, targets: &Tensor, scale: f64) -> Grads {
    let nll = nll_sum(&lm.model.forward(ids).unwrap(), targets).unwrap();
    let store = (nll * scale).unwrap().backward().unwrap();
    Grads::from_store(lm.model.trainable(), &store).unwrap()
}

/// Autograd's gradient `auto` and the hand-written `by_hand` agree: every tensor has a
/// gradient, and they differ by at most 1e-4 of its largest entry.
fn assert_same_grads(name: &str, auto: &Grads, by_hand: &Grads) {
    for ((n, a), (_, b)) in auto.0.iter().zip(&by_hand.0) {
        let top = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(top > 0.0, "{name}: {n} has no gradient");
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * top,
            "{name}: {n} differs by {diff} (top {top})"
        );
    }
}

#[test]
fn the_lora_backward_equals_autograd_and_a_finite_difference() {
    let (ids, targets) = ids_and_targets();
    for name in ["peft-llama", "peft-qwen2-rslora", "peft-qwen2-patterns"] {
        let lm = with_adapter(name);
        let (_, by_hand) = nll_and_grads(&lm.model, &ids, &targets, 0.5, None).unwrap();
        let auto = autograd(&lm, &ids, &targets, 0.5);
        let names: Vec<&String> = lm.model.trainable().names().iter().collect();
        assert_eq!(by_hand.0.len(), names.len(), "{name}: only adapter tensors");
        assert!(names.iter().all(|n| n.contains(".lora_")), "{name}");
        assert_same_grads(name, &auto, &by_hand);
        // Central differences of 0.5 * NLL on the largest entries of two tensors.
        let params = lm.model.trainable().clone();
        for (pi, (n, g)) in by_hand.0.iter().enumerate().filter(|(i, _)| *i < 2) {
            let var = params.get(n).unwrap();
            let (k, &gk) = g
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap();
            let fd = common::central_difference(var, k, 1e-2, || {
                0.5 * scoring_nll(&lm.model, &ids, &targets).unwrap()
            });
            assert!(
                (fd - gk as f64).abs() <= 2e-2 * (gk as f64).abs(),
                "{name}: tensor {pi} {n}[{k}]: finite difference {fd} vs backward {gk}"
            );
        }
    }
}

/// `name`'s fixture adapter with dropout `p` and dropout seed `seed` (its tensors as loaded).
fn with_dropout(name: &str, p: f64, seed: u64) -> LoadedModel {
    let lm = with_adapter(name);
    let mut adapter = lm.model.adapter().unwrap().clone();
    adapter.cfg.dropout = p;
    adapter.seed = seed;
    attach(lm, adapter).unwrap()
}

/// Summed NLL of a forward with dropout `drop`.
fn nll_with(lm: &LoadedModel, ids: &Tensor, targets: &Tensor, drop: Option<&LoraDropout>) -> f64 {
    nll_sum(&lm.model.forward_train(ids, drop).unwrap(), targets)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn lora_dropout_masks_are_inverted_keyed_and_reproducible() {
    let d = LoraDropout {
        p: 0.25,
        seed: 5,
        step: 2,
        micro: 1,
    };
    let m = d.mask(1, 3, 20_000);
    let dropped = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
    assert!((dropped - 0.25).abs() < 0.02, "dropped fraction {dropped}");
    assert!(m.iter().all(|&x| x == 0.0 || x == (1.0f64 / 0.75) as f32));
    assert_eq!(m, d.mask(1, 3, 20_000), "the same key draws the same mask");
    for other in [
        LoraDropout { seed: 6, ..d },
        LoraDropout { step: 3, ..d },
        LoraDropout { micro: 0, ..d },
    ] {
        assert_ne!(m, other.mask(1, 3, 20_000), "{other:?}");
    }
    assert_ne!(m, d.mask(0, 3, 20_000), "another layer");
    assert_ne!(m, d.mask(1, 4, 20_000), "another projection");
    // Only a training step has dropout, and only with p > 0.
    let lm = with_dropout("peft-llama", 0.5, 9);
    let got = lm.model.lora_dropout(4, 2).unwrap();
    assert_eq!((got.p, got.seed, got.step, got.micro), (0.5, 9, 4, 2));
    assert!(with_dropout("peft-llama", 0.0, 9)
        .model
        .lora_dropout(4, 2)
        .is_none());
}

#[test]
fn the_lora_backward_with_a_dropout_mask_equals_autograd_and_a_finite_difference() {
    let (ids, targets) = ids_and_targets();
    for name in ["peft-llama", "peft-qwen2-rslora", "peft-qwen2-patterns"] {
        let lm = with_dropout(name, 0.5, 11);
        let drop = lm.model.lora_dropout(3, 1).unwrap();
        // The mask is really applied: the masked loss is not the model's loss.
        let masked = nll_with(&lm, &ids, &targets, Some(&drop));
        let plain = scoring_nll(&lm.model, &ids, &targets).unwrap();
        assert!(
            (masked - plain).abs() > 1e-3 * plain,
            "{name}: {masked} vs {plain}"
        );
        let none = nll_with(&lm, &ids, &targets, None);
        assert!(
            (none - plain).abs() <= 1e-5 * plain,
            "{name}: no dropout {none} vs {plain}"
        );
        let (nll, by_hand) = nll_and_grads(&lm.model, &ids, &targets, 0.5, Some(&drop)).unwrap();
        assert!(
            (nll - masked).abs() <= 1e-5 * masked,
            "{name}: {nll} vs {masked}"
        );
        let loss = nll_sum(
            &lm.model.forward_train(&ids, Some(&drop)).unwrap(),
            &targets,
        )
        .unwrap();
        let store = (loss * 0.5).unwrap().backward().unwrap();
        let auto = Grads::from_store(lm.model.trainable(), &store).unwrap();
        assert_same_grads(name, &auto, &by_hand);
        // Central differences of 0.5 * NLL under the same mask, on the largest entries of
        // an A (its gradient goes through the mask) and a B.
        let params = lm.model.trainable().clone();
        for (n, g) in by_hand.0.iter().take(2) {
            let var = params.get(n).unwrap();
            let (k, &gk) = g
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap();
            // Smaller than above: the doubled (kept) inputs bend the loss more.
            let fd = common::central_difference(var, k, 3e-3, || {
                0.5 * nll_with(&lm, &ids, &targets, Some(&drop))
            });
            assert!(
                (fd - gk as f64).abs() <= 2e-2 * (gk as f64).abs(),
                "{name}: {n}[{k}]: finite difference {fd} vs backward {gk}"
            );
        }
    }
}

#[test]
fn a_dropout_step_reports_the_masked_loss_and_differs_from_a_dropout_free_step() {
    let (ids, targets) = ids_and_targets();
    let n_targets = targets
        .flatten_all()
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .iter()
        .filter(|&&t| t >= 0)
        .count();
    let batch = Batch {
        ids: ids.clone(),
        targets: targets.clone(),
        n_targets,
        n_tokens: ids.elem_count(),
    };
    let step = |p: f64| {
        let lm = with_dropout("peft-llama", p, 3);
        // The first update's mask: AdamW has done 0 updates, micro-batch 0.
        let want = nll_with(&lm, &ids, &targets, lm.model.lora_dropout(0, 0).as_ref());
        let mut opt = AdamW::new(AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        });
        let (nll, _) =
            optimizer_step(&lm.model, std::slice::from_ref(&batch), &mut opt, 1e-2, 1.0).unwrap();
        assert!(
            (nll - want).abs() <= 1e-5 * want,
            "p = {p}: {nll} vs {want}"
        );
        let after: Vec<Vec<f32>> = lm
            .model
            .trainable()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (nll, after)
    };
    let (nll0, after0) = step(0.0);
    let (nll5, after5) = step(0.5);
    assert!((nll0 - nll5).abs() > 1e-3 * nll0, "{nll0} vs {nll5}");
    assert_ne!(
        after0, after5,
        "the dropout step updated the adapter as the plain one"
    );
}

#[test]
fn the_cli_trains_with_lora_dropout_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("models/tiny-llama");
    let data = fixtures().join("sft/data.jsonl");
    let out = dir.path().join("run");
    let (ok, _, err) = common::train_cli(
        base.to_str().unwrap(),
        data.to_str().unwrap(),
        &out,
        &[
            "--lora-rank",
            "2",
            "--lora-dropout",
            "0.1",
            "--batch-size",
            "2",
            "--max-steps",
            "2",
        ],
    );
    assert!(ok, "{err}");
    let cfg: serde_json::Value = common::read_json(&out.join("adapter_config.json"));
    assert_eq!(cfg["lora_dropout"], 0.1);
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}

#[test]
fn merging_equals_the_adapter_on_the_fly() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, _) = ids_and_targets();
    for name in ["peft-llama", "peft-qwen2-rslora", "peft-qwen2-patterns"] {
        let lm = with_adapter(name);
        let out = dir.path().join(name);
        save_merged(&lm, &out, None).unwrap();
        let merged = load_model(&out.to_string_lossy(), &Device::Cpu).unwrap();
        assert!(merged.model.adapter().is_none());
        let a = lm.model.forward(&ids).unwrap();
        let b = merged.model.forward(&ids).unwrap();
        let top = common::max_abs(&a);
        let diff = common::max_abs(&(a - b).unwrap());
        // f32 rounding of W + s B A against x W^T + s (x A^T) B^T.
        assert!(
            diff <= 1e-5 * top,
            "{name}: merged logits differ by {diff} (largest {top})"
        );
    }
}

fn lora_cfg() -> TrainConfig {
    TrainConfig {
        template: elastica::data::template::Template::Raw,
        lr: 1e-2,
        batch_size: 2,
        grad_accum: 1,
        epochs: 4,
        save_every: 3,
        lora: LoraConfig {
            rank: 2,
            alpha: 4.0,
            ..LoraConfig::default()
        },
        ..Default::default()
    }
}

fn tiny_lora(dir: &Path, cfg: &TrainConfig) -> LoadedModel {
    let c = common::tiny_setup(dir, "llama");
    let lm = init_model(&c, dir, 7, &Device::Cpu).unwrap();
    for_training(lm, &cfg.lora, cfg.seed, "tiny").unwrap().0
}

#[test]
fn a_lora_run_trains_only_the_adapter_and_resumes_bit_identically() {
    let plain = lora_run_and_resume(lora_cfg());
    // With dropout the same holds (masks keyed by seed, step, micro-batch, layer and
    // projection), and the masks change what the adapter learns.
    let mut cfg = lora_cfg();
    cfg.lora.dropout = 0.25;
    let dropped = lora_run_and_resume(cfg);
    assert_ne!(
        plain, dropped,
        "lora dropout 0.25 trained the same adapter as 0"
    );
}

/// Trains `cfg` (LoRA) on the tiny model, then kills a second run after step 7 and resumes
/// it, checking it ends bit-identical; returns the finished adapter's bytes.
fn lora_run_and_resume(cfg: TrainConfig) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let recs = common::sft_records();
    let lm = tiny_lora(dir.path(), &cfg);
    let base_before: Vec<Vec<f32>> = lm
        .model
        .params
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let full = dir.path().join("full");
    let s = train(&lm, &recs, &cfg, common::quiet_run(&full, false)).unwrap();
    assert_eq!(s.steps, 12);
    assert!(s.log.last().unwrap().loss < s.log[0].loss, "{:?}", s.log);
    for ((n, v), before) in lm.model.params.iter().zip(&base_before) {
        let now: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&now, before, "base tensor {n} changed in a LoRA run");
    }
    assert!(full.join("adapter_config.json").is_file());
    assert!(
        !full.join("model.safetensors").exists(),
        "a LoRA run saves no base copy"
    );
    let final_full = std::fs::read(full.join("adapter_model.safetensors")).unwrap();

    // Killed after step 7 (checkpoint at 6), then resumed in a fresh model.
    let part = dir.path().join("part");
    let lm = tiny_lora(dir.path(), &cfg);
    let mut hook = |_: &LoadedModel, l: &elastica::train::sft::StepLog| -> anyhow::Result<()> {
        if l.step == 7 {
            anyhow::bail!("killed")
        }
        Ok(())
    };
    assert!(train(
        &lm,
        &recs,
        &cfg,
        TrainRun {
            out: &part,
            resume: false,
            hook: Some(&mut hook),
            progress: false
        }
    )
    .is_err());
    let ckpt = part.join("checkpoints/step-6");
    let moments =
        candle_core::safetensors::load(ckpt.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    assert!(!moments.is_empty());
    assert!(
        moments.keys().all(|k| k.contains(".lora_")),
        "AdamW state outside the adapter: {:?}",
        moments.keys().collect::<Vec<_>>()
    );
    let lm = tiny_lora(dir.path(), &cfg);
    let r = train(&lm, &recs, &cfg, common::quiet_run(&part, true)).unwrap();
    assert_eq!(r.resumed_from, Some(6));
    assert_eq!(
        std::fs::read(part.join("adapter_model.safetensors")).unwrap(),
        final_full,
        "LoRA resume is not bit-identical"
    );
    // A finished run with the same settings is left alone, and its adapter reloads.
    let lm = tiny_lora(dir.path(), &cfg);
    let again = train(&lm, &recs, &cfg, common::quiet_run(&part, true)).unwrap();
    assert_eq!(again.resumed_from, Some(12));
    final_full
}

#[test]
fn the_cli_trains_an_adapter_scores_it_and_merges_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = fixtures().join("models/tiny-llama");
    let data = fixtures().join("sft/data.jsonl");
    let (base_s, data_s) = (base.to_str().unwrap(), data.to_str().unwrap());
    let out = d.join("run");
    let (ok, _, err) = common::train_cli(
        base_s,
        data_s,
        &out,
        &[
            "--lora-rank",
            "4",
            "--lora-alpha",
            "8",
            "--lora-targets",
            "q_proj,v_proj",
            "--lr",
            "1e-2",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--max-steps",
            "3",
        ],
    );
    assert!(ok, "{err}");
    let cfg: serde_json::Value = common::read_json(&out.join("adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let adapted = eval_loss_cli(data_s, base_s, Some(&out));
    let plain = eval_loss_cli(data_s, base_s, None);
    assert!(
        adapted < plain,
        "training the adapter did not lower the loss: {adapted} vs {plain}"
    );
    merge_equals_on_the_fly(base_s, &out, &d.join("merged"), data_s, adapted);
    // Continuing the adapter with other settings is refused, naming them.
    let flags = ["--adapter", out.to_str().unwrap(), "--lora-rank", "8"];
    let (ok, _, err) = common::train_cli(base_s, data_s, &d.join("more"), &flags);
    assert!(!ok && err.contains("r = 4"), "{err}");
}

/// Adapters PEFT made with `layers_to_transform = [1]` and with `rank_pattern` /
/// `alpha_pattern` continue training on their own modules (the same tensor names and
/// shapes), are saved with the same layout keys (so PEFT builds the same modules with the
/// same scales), and merge to what they compute on the fly.
#[test]
fn peft_layouts_train_save_and_merge_as_they_load() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("models/tiny-qwen2");
    let data = fixtures().join("sft/data.jsonl");
    let (base_s, data_s) = (base.to_str().unwrap(), data.to_str().unwrap());
    for name in ["peft-qwen2-layers", "peft-qwen2-patterns"] {
        let src = fixtures().join("lora").join(name);
        let out = dir.path().join(name);
        let flags = [
            "--adapter",
            src.to_str().unwrap(),
            "--lr",
            "1e-2",
            "--max-steps",
            "2",
        ];
        let (ok, _, err) = common::train_cli(base_s, data_s, &out, &flags);
        assert!(ok, "{name}: {err}");
        let was: serde_json::Value = common::read_json(&src.join("adapter_config.json"));
        let cfg: serde_json::Value = common::read_json(&out.join("adapter_config.json"));
        for key in ["layers_to_transform", "rank_pattern", "alpha_pattern"] {
            assert_eq!(cfg[key], was[key], "{name}: {key}");
        }
        let before = safetensors_shapes(&src.join("adapter_model.safetensors"));
        let after = safetensors_shapes(&out.join("adapter_model.safetensors"));
        assert_eq!(after, before, "{name}: the same modules and ranks");
        let start = eval_loss_cli(data_s, base_s, Some(&src));
        let trained = eval_loss_cli(data_s, base_s, Some(&out));
        assert!(
            trained < start,
            "{name}: training did not lower the loss: {trained} vs {start}"
        );
        let merged = dir.path().join(format!("{name}-merged"));
        merge_equals_on_the_fly(base_s, &out, &merged, data_s, trained);
    }
}

/// `eval-loss`'s mean NLL of `data` under `model`, with `adapter` when given.
fn eval_loss_cli(data: &str, model: &str, adapter: Option<&Path>) -> f64 {
    let mut args = vec!["eval-loss", "--data", data, "--model", model];
    let a = adapter.map(|a| a.to_string_lossy().into_owned());
    if let Some(a) = &a {
        args.extend(["--adapter", a]);
    }
    let (ok, stdout, err) = common::elastica(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v["mean_nll"].as_f64().unwrap()
}

/// `elastica merge` of `adapter` into `base` at `merged` scores `on_the_fly` (the adapter
/// applied on the fly) within 1e-5.
fn merge_equals_on_the_fly(base: &str, adapter: &Path, merged: &Path, data: &str, on_the_fly: f64) {
    // A dtype it cannot write is refused before the output directory is made.
    let (a, m) = (adapter.to_str().unwrap(), merged.to_str().unwrap());
    let bad = [
        "merge",
        "--model",
        base,
        "--adapter",
        a,
        "--out",
        m,
        "--save-dtype",
        "fp8",
    ];
    let (ok, _, err) = common::elastica(&bad);
    assert!(
        !ok && err.contains("--save-dtype") && !merged.exists(),
        "{err}"
    );
    let (ok, _, err) = common::elastica(&[
        "merge",
        "--model",
        base,
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let m = eval_loss_cli(data, merged.to_str().unwrap(), None);
    assert!(
        (m - on_the_fly).abs() <= 1e-5 * on_the_fly,
        "merged {m} vs on the fly {on_the_fly}"
    );
}

/// The tensor names of a safetensors file with their shapes, sorted by name.
fn safetensors_shapes(path: &Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    names.sort();
    names
}

/// `eval-loss` of `base` with the adapter in `adapter` fails; its stderr.
fn refused_adapter(base: &Path, adapter: &Path) -> String {
    let (ok, _, err) = common::elastica(&[
        "eval-loss",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        fixtures().join("sft/data.jsonl").to_str().unwrap(),
    ]);
    assert!(!ok, "{} was accepted", adapter.display());
    err
}

#[test]
fn unsupported_or_broken_adapters_are_refused_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("models/tiny-llama");
    let src = fixtures().join("lora/peft-llama");
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(&str, Edit, &str); 8] = [
        ("dora", &|c| c["use_dora"] = true.into(), "use_dora"),
        ("bias", &|c| c["bias"] = "some".into(), "bias = \"some\""),
        (
            "tokens",
            &|c| c["trainable_token_indices"] = serde_json::json!([3]),
            "trainable_token_indices",
        ),
        (
            "layers-range",
            &|c| c["layers_to_transform"] = serde_json::json!([0, 1, 5]),
            "names layer 5, but the base model has 2 layers",
        ),
        (
            "layers-type",
            &|c| c["layers_to_transform"] = "1".into(),
            "must be a layer index",
        ),
        // PEFT builds LoRA layers only where target_modules (less exclude_modules) names a
        // module, and raises when it names none.
        (
            "targets-none",
            &|c| c["target_modules"] = ".*nomatch.*".into(),
            "matches no module of the base model",
        ),
        (
            "targets-empty",
            &|c| c["target_modules"] = serde_json::json!([]),
            "matches no module of the base model",
        ),
        (
            "targets-regex",
            &|c| c["target_modules"] = "(unclosed".into(),
            "is not a regular expression",
        ),
    ];
    for (name, edit, word) in cases {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            d.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut c: serde_json::Value = common::read_json(&src.join("adapter_config.json"));
        edit(&mut c);
        std::fs::write(d.join("adapter_config.json"), c.to_string()).unwrap();
        let err = refused_adapter(&base, &d);
        assert!(
            err.contains(word) && err.contains("adapter_config.json"),
            "{name}: {err}"
        );
    }
    // An adapter for another base model: the shape error names the tensor and the file.
    let (ok, _, err) = common::elastica(&[
        "eval-loss",
        "--model",
        fixtures().join("models/tiny-qwen2").to_str().unwrap(),
        "--adapter",
        src.to_str().unwrap(),
        "--data",
        fixtures().join("sft/data.jsonl").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("lora_"),
        "{err}"
    );
}

/// PEFT builds LoRA layers only on the modules `target_modules` names, `exclude_modules`
/// does not, on the layers `layers_to_transform` lists, and leaves the file's other tensors
/// unused: such an adapter computes what the same adapter without those tensors computes,
/// and elastica says which it left.
#[test]
fn tensors_on_modules_peft_does_not_adapt_are_left_unused_as_peft_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("models/tiny-llama");
    let src = fixtures().join("lora/peft-llama");
    let tensors =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let nll = |adapter: &Path| {
        let data = fixtures().join("sft/data.jsonl");
        let adapter = adapter.to_str().unwrap();
        let (ok, out, err) = common::eval_loss(
            base.to_str().unwrap(),
            data.to_str().unwrap(),
            &["--adapter", adapter],
        );
        assert!(ok, "{err}");
        (out, err)
    };
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    type Used<'a> = &'a dyn Fn(&str) -> bool;
    // (config edit, the tensors PEFT uses, how many modules it leaves)
    let cases: [(&str, Edit, Used, usize); 5] = [
        (
            "q-only",
            &|c| c["target_modules"] = serde_json::json!(["q_proj"]),
            &|k| k.contains("q_proj"),
            12,
        ),
        (
            "regex",
            &|c| c["target_modules"] = r".*\.(q|v)_proj".into(),
            &|k| k.contains("q_proj") || k.contains("v_proj"),
            10,
        ),
        (
            "all-linear",
            &|c| c["target_modules"] = "all-linear".into(),
            &|_| true,
            0,
        ),
        (
            "excluded",
            &|c| c["exclude_modules"] = serde_json::json!(["mlp.down_proj"]),
            &|k| !k.contains("down_proj"),
            2,
        ),
        (
            "layers",
            &|c| c["layers_to_transform"] = serde_json::json!([0]),
            &|k| k.contains("layers.0."),
            7,
        ),
    ];
    for (name, edit, used, unused) in cases {
        let edited = dir.path().join(name);
        let kept = dir.path().join(format!("{name}-kept"));
        for d in [&edited, &kept] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut c: serde_json::Value = common::read_json(&src.join("adapter_config.json"));
        std::fs::write(kept.join("adapter_config.json"), c.to_string()).unwrap();
        edit(&mut c);
        std::fs::write(edited.join("adapter_config.json"), c.to_string()).unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            edited.join("adapter_model.safetensors"),
        )
        .unwrap();
        let only: std::collections::HashMap<String, candle_core::Tensor> = tensors
            .iter()
            .filter(|(k, _)| used(k))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        candle_core::safetensors::save(&only, kept.join("adapter_model.safetensors")).unwrap();
        let (got, err) = nll(&edited);
        assert_eq!(got, nll(&kept).0, "{name}");
        if unused > 0 {
            assert!(
                err.contains(&format!("on {unused} module(s)")) && err.contains("left unused"),
                "{name}: {err}"
            );
        } else {
            assert!(!err.contains("left unused"), "{name}: {err}");
        }
    }
}

#[test]
fn bench_lora_times_a_lora_step_against_a_full_step() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("lora.json");
    let json_arg = json.to_str().unwrap();
    let (ok, stdout, err) = common::bench_tiny("lora", &["--lora-rank", "2", "--json", json_arg]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("| LoRA |") && stdout.contains("| full |"),
        "{stdout}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // rank 2 on 7 projections of one layer: 2 * (in + out) each.
    let (h, ff) = (32, 64);
    let want = 2 * (4 * (h + h) + 2 * (h + ff) + (ff + h));
    assert_eq!(v["adapter_params"], want);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["tok_s"].as_f64().unwrap() > 0.0));
}

#[test]
fn lora_settings_on_a_model_without_an_adapter_are_refused_before_training() {
    // What an experiment stage with `[train.lora]` reaches: a clear refusal, nothing written.
    let dir = tempfile::tempdir().unwrap();
    let c = common::tiny_setup(dir.path(), "llama");
    let lm = init_model(&c, dir.path(), 7, &Device::Cpu).unwrap();
    let out = dir.path().join("out");
    let Err(e) = train(
        &lm,
        &common::sft_records(),
        &lora_cfg(),
        common::quiet_run(&out, false),
    ) else {
        panic!("LoRA settings without an adapter trained the full model");
    };
    let e = format!("{e:#}");
    assert!(e.contains("lora rank 2") && e.contains("no adapter"), "{e}");
    assert!(!out.exists(), "something was written: {e}");
}

#[test]
fn compress_decompress_and_rates_take_an_adapter() {
    // A PEFT-written adapter on the tiny base: compress/decompress round-trip with it, the file
    // is refused without it (nothing written), and `rates` scores an adapter entry of
    // --models as the merged model scores.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = fixtures().join("models/tiny-llama");
    let adapter = fixtures().join("lora/peft-llama");
    let (base_s, adapter_s) = (base.to_str().unwrap(), adapter.to_str().unwrap());
    let input = d.join("in.txt");
    std::fs::write(
        &input,
        "the cat sat on the mat and the dog ran after it. ".repeat(6),
    )
    .unwrap();
    let (packed, back, never) = (d.join("in.elz"), d.join("back.txt"), d.join("never.txt"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = |args: &[&str]| common::elastica(args);
    let (ok, _, err) = run(&[
        "compress",
        "--model",
        base_s,
        "--adapter",
        adapter_s,
        &s(&input),
        &s(&packed),
        "--no-baselines",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "decompress",
        "--model",
        base_s,
        "--adapter",
        adapter_s,
        &s(&packed),
        &s(&back),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&input).unwrap()
    );
    let (ok, _, err) = run(&["decompress", "--model", base_s, &s(&packed), &s(&never)]);
    assert!(
        !ok && !never.exists(),
        "the base alone decoded an adapter's file: {err}"
    );

    let merged = d.join("merged");
    let (ok, _, err) = run(&[
        "merge",
        "--model",
        base_s,
        "--adapter",
        adapter_s,
        "--out",
        &s(&merged),
    ]);
    assert!(ok, "{err}");
    let data = d.join("held.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"the cat sat on the mat\"}\n{\"text\": \"a dog ran in the park\"}\n",
    )
    .unwrap();
    let out = d.join("rates");
    let models = format!("{base_s},{adapter_s},{}", s(&merged));
    let held = format!("held={}", s(&data));
    let (ok, _, err) = run(&[
        "rates",
        "--models",
        &models,
        "--base",
        base_s,
        "--data",
        &held,
        "--out",
        &s(&out),
    ]);
    assert!(ok, "{err}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("rates.json")).unwrap()).unwrap();
    let bpt = |i: usize| rows[i]["bits_per_token"].as_f64().unwrap();
    let (b, a, m) = (bpt(0), bpt(1), bpt(2));
    // The fixture's adapter is small (PEFT's init plus a little noise): it moves the rate by
    // about 4e-4 relative, far above the merge's rounding.
    assert!((a - m).abs() <= 1e-5 * m, "adapter {a} vs merged {m}");
    assert!(
        (a - b).abs() > 1e-4 * b,
        "the adapter did not change the rate: {a} vs {b}"
    );
}

/// The DoRA fixtures' expectations (`scripts/make_dora_fixture.py`).
fn dora_expected() -> serde_json::Value {
    common::read_json(&fixtures().join("lora/dora.json"))
}

const DORA_FIXTURES: [&str; 2] = ["peft-llama-dora", "peft-qwen2-dora"];

#[test]
fn dora_adapters_score_as_transformers_plus_peft_folded_into_the_weights() {
    let (ids, targets) = ids_and_targets();
    for name in DORA_FIXTURES {
        let want = dora_expected()["nll_sum"][name].as_f64().unwrap();
        let base = fixtures()
            .join("models")
            .join(dora_expected()["base"][name].as_str().unwrap());
        let base = base.to_str().unwrap();
        let dir = fixtures().join("lora").join(name);
        let lm = elastica::model::adapted::load_model_with(base, Some(&dir), &Device::Cpu).unwrap();
        assert!(lm.model.adapter().is_none(), "{name}: DoRA is folded in");
        scores_as(name, &lm, want);
        // The magnitudes matter: the same A and B as plain LoRA score otherwise.
        let plain = load_model(base, &Device::Cpu).unwrap();
        let cfg = plain.model.cfg.clone();
        let PeftAdapter::Folded(dora) = PeftAdapter::load(&dir, &cfg).unwrap() else {
            panic!("{name} read as plain LoRA")
        };
        assert_eq!(dora.magnitudes.len() * 2, dora.lora.params.iter().count());
        let as_lora = attach(plain, dora.lora).unwrap();
        let lora_only = scoring_nll(&as_lora.model, &ids, &targets).unwrap();
        assert!(
            (lora_only - want).abs() > 1e-2,
            "{name}: the magnitudes had no effect"
        );
    }
}

#[test]
fn dora_adapters_evaluate_merge_and_generate_through_the_cli_but_do_not_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = &fixture_path("sft/data.jsonl");
    let base = fixtures().join("models/tiny-qwen2");
    let base = base.to_str().unwrap();
    let adapter = fixtures().join("lora/peft-qwen2-dora");
    let on_the_fly = eval_loss_cli(data, base, Some(&adapter));
    assert!((on_the_fly - eval_loss_cli(data, base, None)).abs() > 1e-3);
    merge_equals_on_the_fly(base, &adapter, &dir.path().join("merged"), data, on_the_fly);
    let (ok, stdout, err) = common::elastica(&[
        "generate",
        "--model",
        base,
        "--adapter",
        adapter.to_str().unwrap(),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "4",
    ]);
    assert!(ok && !stdout.trim().is_empty(), "{err}");
    // Training one is refused before anything is written, naming where it loads instead.
    let out = dir.path().join("train");
    let (ok, _, err) = common::elastica(&[
        "train",
        "--model",
        base,
        "--adapter",
        adapter.to_str().unwrap(),
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("DoRA")
            && err.contains("elastica merge")
            && err.contains("adapter_config.json"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}

/// An edit of an adapter's config and tensors.
type AdapterEdit<'a> = &'a dyn Fn(&mut serde_json::Value, &mut Vec<(String, Tensor)>);

/// A copy of the adapter in `src` at `dst`, its config and tensors edited by `edit`.
fn edited_adapter(src: &Path, dst: &Path, edit: AdapterEdit) {
    std::fs::create_dir_all(dst).unwrap();
    let mut c: serde_json::Value = common::read_json(&src.join("adapter_config.json"));
    let weights = src.join("adapter_model.safetensors");
    let mut t: Vec<(String, Tensor)> = candle_core::safetensors::load(&weights, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    edit(&mut c, &mut t);
    std::fs::write(dst.join("adapter_config.json"), c.to_string()).unwrap();
    candle_core::safetensors::save(
        &t.into_iter().collect::<std::collections::HashMap<_, _>>(),
        dst.join("adapter_model.safetensors"),
    )
    .unwrap();
}

#[test]
fn broken_dora_adapters_are_refused_naming_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("models/tiny-llama");
    let src = fixtures().join("lora/peft-llama-dora");
    let key = "base_model.model.model.layers.1.mlp.up_proj.lora_magnitude_vector";
    let cases: [(&str, AdapterEdit, &str); 4] = [
        (
            "flag-off",
            &|c, _| c["use_dora"] = false.into(),
            "does not set use_dora = true",
        ),
        (
            "no-magnitude",
            &|_, t| t.retain(|(k, _)| !k.contains("magnitude")),
            "holds no lora_magnitude_vector",
        ),
        (
            "one-missing",
            &|_, t| t.retain(|(k, _)| k != key),
            "\"model.layers.1.mlp.up_proj\" has lora_A / lora_B but no lora_magnitude_vector",
        ),
        (
            "shape",
            &|_, t| {
                for (k, v) in t.iter_mut() {
                    if k == key {
                        *v = v.narrow(0, 0, 3).unwrap();
                    }
                }
            },
            "has shape [3], expected [",
        ),
    ];
    for (name, edit, word) in cases {
        let d = dir.path().join(name);
        edited_adapter(&src, &d, edit);
        let err = refused_adapter(&base, &d);
        assert!(
            err.contains(word) && err.contains("adapter_"),
            "{name}: {err}"
        );
    }
}

/// The fixtures of adapters with more than LoRA on the projections
/// (`scripts/make_peft_extras_fixture.py`) and their expectations.
const EXTRAS_FIXTURES: [&str; 3] = ["peft-qwen2-extras", "peft-gemma-embed", "peft-llama-save"];

fn extras_expected() -> serde_json::Value {
    common::read_json(&fixtures().join("lora/extras.json"))
}

fn extras_base(name: &str) -> String {
    let base = extras_expected()["base"][name]
        .as_str()
        .unwrap()
        .to_string();
    fixtures()
        .join("models")
        .join(base)
        .to_string_lossy()
        .into_owned()
}

/// The adapter in `lora/{name}` as read, which folds.
fn folded(name: &str) -> FoldedAdapter {
    let cfg = load_model(&extras_base(name), &Device::Cpu)
        .unwrap()
        .model
        .cfg;
    match PeftAdapter::load(&fixtures().join("lora").join(name), &cfg) {
        Ok(PeftAdapter::Folded(f)) => f,
        Ok(_) => panic!("{name} read as plain LoRA"),
        Err(e) => panic!("{name}: {e:#}"),
    }
}

#[test]
fn folded_adapters_score_as_transformers_plus_peft() {
    let (ids, targets) = ids_and_targets();
    for name in EXTRAS_FIXTURES {
        let want = extras_expected()["nll_sum"][name].as_f64().unwrap();
        let base = extras_base(name);
        let dir = fixtures().join("lora").join(name);
        let lm = elastica::model::adapted::load_model_with(&base, Some(&dir), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(lm.model.adapter().is_none(), "{name}: folded in");
        // Each adapter changes the embedding or the head, which PEFT unties from a tied one.
        assert!(!lm.model.cfg.tie_word_embeddings, "{name}");
        scores_as(name, &lm, want);
        // Each part counts: without it the score moves.
        let f = folded(name);
        let without = |g: &dyn Fn(&mut FoldedAdapter)| {
            let mut f = f.clone();
            g(&mut f);
            let base = load_model(&base, &Device::Cpu).unwrap();
            let (cfg, params) = f.merged(&base.model.cfg, &base.model.params).unwrap();
            let m = elastica::model::Llama::new(cfg, params, &Device::Cpu).unwrap();
            scoring_nll(&m, &ids, &targets).unwrap()
        };
        // The whole tensors of modules_to_save (PEFT's copies of an adapted embedding or head
        // are the base's own, and count for nothing).
        let saved =
            |k: &str| !k.ends_with(".bias") && !f.outer.contains_key(k.trim_end_matches(".weight"));
        type Part<'a> = (&'a str, &'a dyn Fn(&mut FoldedAdapter));
        let no_outer = |f: &mut FoldedAdapter| f.outer.clear();
        let no_biases = |f: &mut FoldedAdapter| f.whole.retain(|k, _| !k.ends_with(".bias"));
        let no_saved = |f: &mut FoldedAdapter| f.whole.retain(|k, _| !saved(k));
        let mut parts: Vec<Part> = Vec::new();
        if !f.outer.is_empty() {
            parts.push(("outer LoRA", &no_outer));
        }
        if f.whole.keys().any(|k| k.ends_with(".bias")) {
            parts.push(("biases", &no_biases));
        }
        if f.whole.keys().any(|k| saved(k)) {
            parts.push(("whole modules", &no_saved));
        }
        assert!(!parts.is_empty(), "{name}");
        for (part, g) in parts {
            let got = without(g);
            assert!(
                (got - want).abs() > 1e-2,
                "{name}: {part} had no effect ({got})"
            );
        }
    }
}

#[test]
fn folded_adapters_merge_untied_and_are_not_trained() {
    let dir = tempfile::tempdir().unwrap();
    let data = &fixture_path("sft/data.jsonl");
    for name in ["peft-gemma-embed", "peft-qwen2-extras"] {
        let base = extras_base(name);
        let adapter = fixtures().join("lora").join(name);
        let on_the_fly = eval_loss_cli(data, &base, Some(&adapter));
        assert!((on_the_fly - eval_loss_cli(data, &base, None)).abs() > 1e-3);
        let merged = dir.path().join(format!("{name}-merged"));
        merge_equals_on_the_fly(&base, &adapter, &merged, data, on_the_fly);
        // The tied base comes out untied, with a head tensor of its own.
        let cfg = common::read_json(&merged.join("config.json"));
        assert_eq!(cfg["tie_word_embeddings"], false, "{name}");
        let names = safetensors_shapes(&merged.join("model.safetensors"));
        assert!(names.iter().any(|(n, _)| n == "lm_head.weight"), "{name}");
        let out = dir.path().join(format!("{name}-train"));
        let (ok, _, err) = common::elastica(&[
            "train",
            "--model",
            &base,
            "--adapter",
            adapter.to_str().unwrap(),
            "--data",
            data,
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
        ]);
        assert!(!ok);
        assert!(
            err.contains("elastica merge") && err.contains("adapter_config.json"),
            "{err}"
        );
        assert!(!out.exists(), "a refused run wrote {}", out.display());
    }
}

#[test]
fn broken_folded_adapters_are_refused_naming_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let rename = |from: &'static str, to: &'static str| {
        move |_: &mut serde_json::Value, t: &mut Vec<(String, Tensor)>| {
            for (k, _) in t.iter_mut() {
                *k = k.replace(from, to);
            }
        }
    };
    let unknown = rename(
        "model.layers.0.self_attn.q_proj.base_layer.bias",
        "model.layers.0.self_attn.x_proj.bias",
    );
    let cases: [(&str, &str, AdapterEdit, &str); 6] = [
        (
            "unsaved",
            "peft-qwen2-extras",
            &|c, _| c["modules_to_save"] = serde_json::Value::Null,
            "\"lm_head.weight\" is a whole tensor of the base model, but",
        ),
        (
            "untrained-bias",
            "peft-qwen2-extras",
            &|c, _| c["bias"] = "none".into(),
            "self_attn.q_proj.bias\" is a whole tensor",
        ),
        (
            "unknown",
            "peft-qwen2-extras",
            &unknown,
            "is not a tensor of the base model",
        ),
        (
            "half",
            "peft-gemma-embed",
            &|_, t| t.retain(|(k, _)| !k.ends_with("lm_head.lora_B.weight")),
            "LoRA on lm_head has only one of A and B",
        ),
        (
            "embed-rank",
            "peft-gemma-embed",
            &|c, _| c["rank_pattern"] = serde_json::json!({}),
            "LoRA on model.embed_tokens has A [3, 300]",
        ),
        (
            "tying",
            "peft-gemma-embed",
            &|c, _| c["ensure_weight_tying"] = true.into(),
            "ensure_weight_tying",
        ),
    ];
    for (case, src, edit, word) in cases {
        let d = dir.path().join(case);
        edited_adapter(&fixtures().join("lora").join(src), &d, edit);
        let err = refused_adapter(Path::new(&extras_base(src)), &d);
        assert!(
            err.contains(word) && err.contains("adapter_"),
            "{case}: {err}"
        );
    }
}

#[test]
fn lora_flags_without_a_rank_are_refused_before_anything_is_written() {
    // Rank 0 is a full fine-tune (with --adapter: the adapter's own settings), which would
    // drop the other LoRA flags without a word.
    let dir = tempfile::tempdir().unwrap();
    let base = fixtures().join("models/tiny-llama");
    let data = fixtures().join("sft/data.jsonl");
    let adapter = fixtures().join("lora/peft-llama");
    for flags in [
        vec!["--lora-alpha", "32"],
        vec!["--lora-dropout", "0.1"],
        vec!["--lora-rslora"],
        vec!["--lora-alpha", "32", "--adapter", adapter.to_str().unwrap()],
    ] {
        let out = dir.path().join("run");
        let mut args = flags.clone();
        args.extend(["--max-steps", "1"]);
        let (ok, _, err) =
            common::train_cli(base.to_str().unwrap(), data.to_str().unwrap(), &out, &args);
        assert!(
            !ok && err.contains("without --lora-rank"),
            "{flags:?}: {err}"
        );
        assert!(!out.exists(), "{flags:?}: something was written");
    }
}
