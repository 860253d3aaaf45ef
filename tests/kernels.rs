//! The fused CPU kernels against the reference path on whole tiny models of each family:
//! the same loss, gradients, decoding logits and greedy generations with `ELASTICA_KERNELS`
//! all vs none. One test in its own binary, because the kernel switch is process-wide.

mod common;

use candle_core::{Device, Tensor};
use elastica::data::template::Template;
use elastica::model::checkpoint::init_model;
use elastica::model::fused::{set_enabled, Kernel};
use elastica::model::generate::{generate, GenConfig};
use elastica::model::{KvCache, Llama};
use elastica::train::batch::{collate, tokenize};
use elastica::train::loss::nll_sum;

fn loss_and_grads(lm: &elastica::model::LoadedModel) -> (f32, Vec<(String, Tensor)>) {
    let (ex, _) = tokenize(&common::sft_records(), &lm.tokenizer, Template::Raw, 64).unwrap();
    let refs: Vec<_> = ex.iter().collect();
    let b = collate(&refs, lm.tokenizer.pad_id(), &Device::Cpu).unwrap();
    let loss = nll_sum(&lm.model.forward(&b.ids).unwrap(), &b.targets).unwrap();
    let store = loss.backward().unwrap();
    let grads = lm
        .model
        .params
        .iter()
        .map(|(n, v)| (n.clone(), store.get(v.as_tensor()).unwrap().clone()))
        .collect();
    (loss.to_scalar::<f32>().unwrap(), grads)
}

/// Logits of a left-padded two-row prefill, then three decoding steps, through
/// `forward_cached` (the fused path decodes on raw buffers, the reference on candle ops).
fn decoding_logits(model: &Llama) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let t = |v: Vec<u32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &dev).unwrap();
    let mut cache = KvCache::new(model.cfg.num_hidden_layers);
    let mut mask = vec![0u32, 0, 1, 1, 1, 1, 1, 1];
    let mut out = Vec::new();
    let logits = model
        .forward_cached(
            &t(vec![0, 0, 5, 6, 7, 8, 9, 10], (2, 4)),
            &t(vec![0, 0, 0, 1, 0, 1, 2, 3], (2, 4)),
            &t(mask.clone(), (2, 4)),
            &mut cache,
        )
        .unwrap();
    out.push(logits.flatten_all().unwrap().to_vec1().unwrap());
    for step in 0..3u32 {
        // Row 1 has finished: its new key is masked out, as generation does.
        mask = [
            &mask[..4 + step as usize],
            &[1],
            &mask[4 + step as usize..],
            &[0],
        ]
        .concat();
        let total = 5 + step as usize;
        let logits = model
            .forward_cached(
                &t(vec![11 + step, 3], (2, 1)),
                &t(vec![2 + step, 4 + step], (2, 1)),
                &t(mask.clone(), (2, total)),
                &mut cache,
            )
            .unwrap();
        out.push(logits.flatten_all().unwrap().to_vec1().unwrap());
    }
    assert_eq!(cache.len(), 7);
    out
}

#[test]
fn fused_kernels_match_the_reference_path_on_every_family() {
    for family in ["llama", "qwen2", "gemma"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::tiny_setup(dir.path(), family);
        let lm = init_model(&cfg, dir.path(), 7, &Device::Cpu).unwrap();
        // Qwen2's projection biases start at zero; give them values so they are checked.
        for (name, v) in lm.model.params.iter() {
            if name.ends_with(".bias") {
                let noise = Tensor::randn(0f32, 0.2, v.shape(), &Device::Cpu).unwrap();
                v.set(&noise).unwrap();
            }
        }
        let prompts: Vec<Vec<u32>> = vec![vec![5, 6, 7], vec![8, 9, 10, 11, 12]];
        let g = GenConfig {
            max_new_tokens: 6,
            batch_size: 2,
            ..Default::default()
        };
        let mut runs = Vec::new();
        for on in [vec![], Kernel::ALL.to_vec()] {
            set_enabled(&on);
            let (loss, grads) = loss_and_grads(&lm);
            let gen = generate(&lm.model, &prompts, &[], 0, &g, |_| {}).unwrap();
            runs.push((loss, grads, gen, decoding_logits(&lm.model)));
        }
        let (reference, fused) = (&runs[0], &runs[1]);
        for (step, (a, b)) in reference.3.iter().zip(&fused.3).enumerate() {
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err < 1e-4,
                "{family}: decoding logits of call {step} differ by {err}"
            );
        }
        // A cache filled on one path is refused by the other.
        let dev = Device::Cpu;
        let one = |v: u32| Tensor::from_vec(vec![v], (1, 1), &dev).unwrap();
        let mut cache = KvCache::new(lm.model.cfg.num_hidden_layers);
        lm.model
            .forward_cached(&one(5), &one(0), &one(1), &mut cache)
            .unwrap();
        set_enabled(&[]);
        let mask = Tensor::from_vec(vec![1u32, 1], (1, 2), &dev).unwrap();
        let err = lm
            .model
            .forward_cached(&one(6), &one(1), &mask, &mut cache)
            .unwrap_err();
        assert!(format!("{err:#}").contains("start a new cache"), "{err:#}");
        set_enabled(&Kernel::ALL);
        assert!(
            (reference.0 - fused.0).abs() <= 1e-4 * reference.0.abs().max(1.0),
            "{family}: loss {} vs {}",
            reference.0,
            fused.0
        );
        for ((name, a), (_, b)) in reference.1.iter().zip(&fused.1) {
            let err = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err < 1e-4, "{family}: gradient of {name} differs by {err}");
        }
        assert_eq!(reference.2, fused.2, "{family}: greedy generations differ");
    }
}
