//! YaRN rope scaling (`rope_scaling` of type yarn, Qwen2.5's long-context setting) against
//! transformers (`scripts/make_yarn_fixture.py`, fixture `tests/fixtures/rope/yarn.json`):
//! the inverse frequencies and attention factor, the logits inside and past the original
//! context, KV-cache greedy decoding, and the hand-written backward against autograd.

mod common;

use candle_core::{DType, Device, Tensor};
use elastica::model::checkpoint::load_model;
use elastica::model::config::RopeScaling;
use elastica::model::generate::{generate, GenConfig};
use elastica::model::rope::{attention_scaling, inv_freq};
use elastica::model::LoadedModel;
use elastica::train::backprop::nll_and_grads;
use elastica::train::loss::nll_sum;
use elastica::train::optim::Grads;
use std::path::Path;

/// The case's fixture model with its `rope_scaling`, loaded.
fn model_of(case: &serde_json::Value, dir: &Path) -> LoadedModel {
    common::write_yarn_model(case, dir);
    load_model(dir.to_str().unwrap(), &Device::Cpu).unwrap()
}

fn ids_of(case: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(case["ids"].clone()).unwrap()
}

#[test]
fn yarn_frequencies_logits_and_greedy_decoding_match_transformers() {
    for (i, case) in common::yarn_cases().iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let lm = model_of(case, dir.path());
        let cfg = &lm.model.cfg;
        assert!(
            matches!(cfg.rope_scaling, RopeScaling::Yarn { .. }),
            "case {i}"
        );
        let want: Vec<f32> = serde_json::from_value(case["inv_freq"].clone()).unwrap();
        assert_eq!(inv_freq(cfg), want, "case {i}: inverse frequencies");
        let factor = case["attention_factor"].as_f64().unwrap() as f32;
        assert_eq!(attention_scaling(cfg), factor, "case {i}: attention factor");

        let ids = ids_of(case);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<Vec<f32>> = lm
            .model
            .forward(&input)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let positions: Vec<usize> = serde_json::from_value(case["positions"].clone()).unwrap();
        let want: Vec<Vec<f32>> = serde_json::from_value(case["logits"].clone()).unwrap();
        for (&p, w) in positions.iter().zip(&want) {
            let scale = w.iter().fold(1f32, |m, x| m.max(x.abs()));
            let worst = logits[p]
                .iter()
                .zip(w)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 1e-5 * scale,
                "case {i}, position {p}: logits differ by {worst}"
            );
        }

        let greedy: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
        let gen = GenConfig {
            max_new_tokens: greedy.len(),
            ..Default::default()
        };
        let prompt = ids[..12].to_vec();
        let out = generate(
            &lm.model,
            &[prompt],
            &[],
            lm.tokenizer.pad_id(),
            &gen,
            |_| {},
        )
        .unwrap();
        assert_eq!(out[0], greedy, "case {i}: greedy decoding");
    }
}

/// Training sees the scaled rotation too: the hand-written backward (the fused kernels'
/// tables) equals autograd through the graph forward, on every weight.
#[test]
fn the_backward_under_yarn_equals_autograd() {
    let case = &common::yarn_cases()[1];
    let dir = tempfile::tempdir().unwrap();
    let lm = model_of(case, dir.path());
    let ids = ids_of(case);
    let n = ids.len() - 1;
    let input = Tensor::new(&ids[..n], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let next: Vec<i64> = ids[1..].iter().map(|&t| i64::from(t)).collect();
    let targets = Tensor::new(next.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let (nll, by_hand) = nll_and_grads(&lm.model, &input, &targets, 1.0, None).unwrap();
    let loss = nll_sum(&lm.model.forward(&input).unwrap(), &targets).unwrap();
    let auto_nll = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(
        (nll - auto_nll).abs() <= 1e-5 * auto_nll,
        "{nll} vs {auto_nll}"
    );
    let auto = Grads::from_store(lm.model.trainable(), &loss.backward().unwrap()).unwrap();
    assert_eq!(auto.0.len(), by_hand.0.len());
    for ((name, a), (_, b)) in auto.0.iter().zip(&by_hand.0) {
        let top = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            top > 0.0 && diff <= 1e-4 * top,
            "{name}: {diff} (top {top})"
        );
    }
}
