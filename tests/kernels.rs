//! The fused CPU kernels against the reference path on whole tiny models of each family:
//! the same loss, gradients and greedy generations with `ELASTICA_KERNELS` all vs none. One
//! test in its own binary, because the kernel switch is process-wide.

mod common;

use candle_core::{Device, Tensor};
use elastica::data::template::Template;
use elastica::model::checkpoint::init_model;
use elastica::model::fused::{set_enabled, Kernel};
use elastica::model::generate::{generate, GenConfig};
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

#[test]
fn fused_kernels_match_the_reference_path_on_every_family() {
    for family in ["llama", "qwen2", "gemma"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::tiny_setup(dir.path(), family);
        let lm = init_model(&cfg, dir.path(), 7, &Device::Cpu).unwrap();
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
            runs.push((loss, grads, gen));
        }
        set_enabled(&Kernel::ALL);
        let (reference, fused) = (&runs[0], &runs[1]);
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
