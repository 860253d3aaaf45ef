//! Parity with transformers on tiny random Llama, Qwen2 and Gemma checkpoints
//! (tests/fixtures, made by scripts/make_fixtures.py): logits, loss, greedy generation, and a
//! whole SFT trajectory with AdamW, warm-up, clipping and accumulation.

mod common;

use candle_core::{DType, Device, Tensor};
use common::parity_fixture as fixture;
use elastica::data::records::read_jsonl;
use elastica::data::template::Template;
use elastica::model::checkpoint::load_model;
use elastica::model::generate::{generate, GenConfig};
use elastica::train::batch::{collate, tokenize};
use elastica::train::loss::nll_sum;
use elastica::train::train;
use std::path::Path;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn check_model(name: &str) {
    let lm = load_model(&format!("{FIX}/models/{name}"), &Device::Cpu).unwrap();
    let f = fixture(name);
    let ids = f["input_ids"].to_dtype(DType::U32).unwrap();
    let mask: Vec<Vec<i64>> = f["attention_mask"].to_vec2().unwrap();
    let want: Vec<Vec<Vec<f32>>> = f["logits"].to_vec3().unwrap();
    let got: Vec<Vec<Vec<f32>>> = lm.model.forward(&ids).unwrap().to_vec3().unwrap();
    let mut worst = 0f32;
    for b in 0..want.len() {
        for t in 0..want[b].len() {
            if mask[b][t] == 0 {
                continue;
            }
            let scale = want[b][t].iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
            for v in 0..want[b][t].len() {
                worst = worst.max((got[b][t][v] - want[b][t][v]).abs() / scale);
            }
        }
    }
    assert!(
        worst < 1e-4,
        "{name}: logits differ from transformers by {worst} (relative)"
    );

    // Loss with labels = ids where mask == 1: our shifted masked NLL over the same tokens.
    let mut targets = vec![-100i64; 24];
    let raw: Vec<Vec<i64>> = f["input_ids"].to_vec2().unwrap();
    for b in 0..2 {
        for t in 0..11 {
            if mask[b][t + 1] == 1 {
                targets[b * 12 + t] = raw[b][t + 1];
            }
        }
    }
    let n = targets.iter().filter(|&&x| x >= 0).count();
    let tt = Tensor::from_vec(targets, (2, 12), &Device::Cpu).unwrap();
    let logits = lm.model.forward(&ids).unwrap();
    let loss = nll_sum(&logits, &tt).unwrap().to_scalar::<f32>().unwrap() / n as f32;
    let want_loss = f["loss"].to_scalar::<f32>().unwrap();
    assert!(
        (loss - want_loss).abs() / want_loss < 1e-4,
        "{name}: loss {loss} vs {want_loss}"
    );

    // Greedy generation (KV cache) from the unpadded first row, no EOS stop.
    let greedy: Vec<Vec<i64>> = f["greedy_ids"].to_vec2().unwrap();
    let prompt: Vec<u32> = raw[0].iter().map(|&x| x as u32).collect();
    let cfg = GenConfig {
        max_new_tokens: greedy[0].len() - prompt.len(),
        ..Default::default()
    };
    let out = generate(
        &lm.model,
        std::slice::from_ref(&prompt),
        &[],
        lm.tokenizer.pad_id(),
        &cfg,
        |_| {},
    )
    .unwrap();
    let want_new: Vec<u32> = greedy[0][prompt.len()..]
        .iter()
        .map(|&x| x as u32)
        .collect();
    assert_eq!(
        out[0], want_new,
        "{name}: greedy generation differs from transformers"
    );
}

#[test]
fn llama_matches_transformers() {
    check_model("tiny-llama");
}

#[test]
fn qwen2_matches_transformers() {
    check_model("tiny-qwen2");
}

#[test]
fn gemma_matches_transformers() {
    check_model("tiny-gemma");
}

fn trajectory() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIX}/sft/trajectory.json")).unwrap())
        .unwrap()
}

#[test]
fn sft_tokenization_and_eval_match_the_reference() {
    let lm = load_model(&format!("{FIX}/models/tiny-llama"), &Device::Cpu).unwrap();
    let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
    let traj = trajectory();
    let (ex, _) = tokenize(&recs, &lm.tokenizer, Template::Raw, 2048).unwrap();
    for (i, (e, r)) in ex
        .iter()
        .zip(traj["records"].as_array().unwrap())
        .enumerate()
    {
        let ids: Vec<u32> = serde_json::from_value(r["input_ids"].clone()).unwrap();
        let labels: Vec<i64> = serde_json::from_value(r["labels"].clone()).unwrap();
        assert_eq!(e.ids, ids, "record {i} ids");
        assert_eq!(e.labels, labels, "record {i} labels");
    }
    let refs: Vec<_> = ex.iter().collect();
    let b = collate(&refs, lm.tokenizer.pad_id(), &Device::Cpu).unwrap();
    let nll = nll_sum(&lm.model.forward(&b.ids).unwrap(), &b.targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    let want = traj["eval_mean_nll"].as_f64().unwrap();
    assert_eq!(b.n_targets as u64, traj["eval_tokens"].as_u64().unwrap());
    assert!(
        (nll / b.n_targets as f64 - want).abs() / want < 1e-5,
        "eval nll {} vs {want}",
        nll / b.n_targets as f64
    );
    let e = elastica::train::eval::eval_loss(&lm, &recs, Template::Raw, 2048, 3, false).unwrap();
    assert!(
        (e.mean_nll - want).abs() / want < 1e-5,
        "eval-loss {} vs {want}",
        e.mean_nll
    );
}

#[test]
fn sft_trajectory_matches_pytorch() {
    let lm = load_model(&format!("{FIX}/models/tiny-llama"), &Device::Cpu).unwrap();
    let recs = read_jsonl(Path::new(&format!("{FIX}/sft/data.jsonl"))).unwrap();
    let cfg = common::fixture_sft_config();
    let out = tempfile::tempdir().unwrap();
    let s = train(&lm, &recs, &cfg, common::quiet_run(out.path(), false)).unwrap();
    let traj = trajectory();
    let steps = traj["steps"].as_array().unwrap();
    assert_eq!(s.log.len(), steps.len());
    for (got, want) in s.log.iter().zip(steps) {
        let wl = want["loss"].as_f64().unwrap();
        let wg = want["grad_norm"].as_f64().unwrap();
        assert!(
            (got.loss - wl).abs() / wl < 1e-3,
            "step {}: loss {} vs {wl}",
            got.step,
            got.loss
        );
        assert!(
            (got.grad_norm - wg).abs() / wg < 1e-3,
            "step {}: grad_norm {} vs {wg}",
            got.step,
            got.grad_norm
        );
        assert!(
            (got.lr - want["lr"].as_f64().unwrap()).abs() < 1e-12,
            "step {}: lr",
            got.step
        );
        assert_eq!(got.tokens as u64, want["tokens"].as_u64().unwrap());
    }
    let want_w =
        candle_core::safetensors::load(format!("{FIX}/sft/final.safetensors"), &Device::Cpu)
            .unwrap();
    let got_w =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, w) in &want_w {
        let g = got_w
            .get(name)
            .unwrap_or_else(|| panic!("saved model lacks {name}"));
        // Relative Frobenius distance, plus a loose element bound: AdamW divides by
        // sqrt(v) + eps, so coordinates whose gradients are ~1e-8 (float noise in either
        // implementation) can move by up to lr per step; 2 of 19k embedding entries do.
        let diff = (g - w).unwrap();
        let rel = common::l2(&diff) / common::l2(w);
        let d = common::max_abs(&diff);
        assert!(
            rel < 1e-5 && d < 1e-3,
            "{name}: final weights differ (relative {rel}, max {d})"
        );
    }
}
