//! Core model behaviour on tiny random models: gradients reach every tensor and match finite
//! differences, cached generation equals the uncached argmax, batching and padding change
//! nothing, save/load round-trips, and resume is bit-identical.

mod common;

use candle_core::{DType, Device, Tensor};
use elastica::data::template::Template;
use elastica::model::checkpoint::{init_model, load_model, save_model};
use elastica::model::generate::{argmax, generate, GenConfig};
use elastica::train::batch::{collate, tokenize};
use elastica::train::loss::nll_sum;
use elastica::train::{train, TrainConfig, TrainRun};

fn tiny(family: &str, dir: &std::path::Path) -> elastica::model::LoadedModel {
    let cfg = common::tiny_setup(dir, family);
    init_model(&cfg, dir, 7, &Device::Cpu).unwrap()
}

fn batch_loss(lm: &elastica::model::LoadedModel) -> (Tensor, usize) {
    let (ex, _) = tokenize(&common::sft_records(), &lm.tokenizer, Template::Raw, 64).unwrap();
    let refs: Vec<_> = ex.iter().collect();
    let b = collate(&refs, lm.tokenizer.pad_id(), &Device::Cpu).unwrap();
    let logits = lm.model.forward(&b.ids).unwrap();
    (nll_sum(&logits, &b.targets).unwrap(), b.n_targets)
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    for family in ["llama", "qwen2", "gemma"] {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(family, dir.path());
        let (loss, _) = batch_loss(&lm);
        let grads = loss.backward().unwrap();
        for (name, var) in lm.model.params.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{family}: no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{family}: zero/NaN gradient for {name}"
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    for family in ["llama", "qwen2", "gemma"] {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(family, dir.path());
        let (loss, _) = batch_loss(&lm);
        let grads = loss.backward().unwrap();
        // Probe a few coordinates of different tensor kinds (norms, attention, mlp, embeddings).
        let probes = [
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.1.mlp.gate_proj.weight",
            "model.norm.weight",
        ];
        for name in probes {
            let var = lm.model.params.get(name).unwrap();
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // the coordinate with the largest gradient, for a well-conditioned check
            let i = argmax(&g.iter().map(|x| x.abs()).collect::<Vec<_>>()) as usize;
            let fd = common::central_difference(var, i, 1e-2, || {
                let (l, _) = batch_loss(&lm);
                l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
            });
            let an = g[i] as f64;
            let rel = (fd - an).abs() / an.abs().max(1e-3);
            assert!(
                rel < 2e-2,
                "{family} {name}[{i}]: analytic {an} vs finite-difference {fd}"
            );
        }
    }
}

#[test]
fn cached_greedy_generation_equals_uncached_argmax_and_batching_changes_nothing() {
    for family in ["llama", "qwen2", "gemma"] {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(family, dir.path());
        let prompts: Vec<Vec<u32>> = ["the movie was", "i", "the plot and the acting was very"]
            .iter()
            .map(|p| lm.tokenizer.encode(p, true).unwrap())
            .collect();
        let cfg = GenConfig {
            max_new_tokens: 6,
            batch_size: 3,
            ..Default::default()
        };
        // No EOS stop so every row decodes the full length.
        let batched = generate(&lm.model, &prompts, &[], 0, &cfg, |_| {}).unwrap();
        let single_cfg = GenConfig {
            batch_size: 1,
            ..cfg.clone()
        };
        let single = generate(&lm.model, &prompts, &[], 0, &single_cfg, |_| {}).unwrap();
        assert_eq!(
            batched, single,
            "{family}: left-padded batch differs from one-by-one"
        );
        for (p, out) in prompts.iter().zip(&batched) {
            let mut seq = p.clone();
            for &t in out {
                let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let logits = lm.model.forward(&ids).unwrap();
                let last: Vec<f32> = logits
                    .squeeze(0)
                    .unwrap()
                    .get(seq.len() - 1)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(
                    argmax(&last),
                    t,
                    "{family}: cached greedy token differs from full forward"
                );
                seq.push(t);
            }
        }
    }
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny("llama", dir.path());
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|_| lm.tokenizer.encode("the movie", true).unwrap())
        .collect();
    let cfg = GenConfig {
        max_new_tokens: 8,
        temperature: 1.0,
        top_p: 0.9,
        top_k: 10,
        seed: 3,
        batch_size: 2,
    };
    let a = generate(&lm.model, &prompts, &[], 0, &cfg, |_| {}).unwrap();
    let b = generate(
        &lm.model,
        &prompts,
        &[],
        0,
        &GenConfig {
            batch_size: 4,
            ..cfg.clone()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(
        a, b,
        "same seed must give the same samples, whatever the batching"
    );
    let c = generate(
        &lm.model,
        &prompts,
        &[],
        0,
        &GenConfig {
            seed: 4,
            ..cfg.clone()
        },
        |_| {},
    )
    .unwrap();
    assert_ne!(a, c, "a different seed should give different samples");
    assert_ne!(a[0], a[1], "each prompt draws its own stream");
}

#[test]
fn save_then_load_gives_the_same_logits() {
    for family in ["llama", "qwen2", "gemma"] {
        let dir = tempfile::tempdir().unwrap();
        let lm = tiny(family, dir.path());
        let out = dir.path().join("saved");
        save_model(&lm.model, dir.path(), &out, None).unwrap();
        assert!(out.join("tokenizer.json").exists() && out.join("config.json").exists());
        let lm2 = load_model(out.to_str().unwrap(), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 4, 5, 6, 7]], &Device::Cpu).unwrap();
        let a = lm
            .model
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = lm2
            .model
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b, "{family}");
        let names: Vec<String> =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
                .unwrap()
                .into_keys()
                .collect();
        assert_eq!(
            names.iter().any(|n| n == "lm_head.weight"),
            family == "llama",
            "{family}: tied models omit lm_head"
        );
    }
}

#[test]
fn training_lowers_the_loss_and_resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny("llama", dir.path());
    let recs = common::sft_records();
    let cfg = TrainConfig {
        template: Template::Raw,
        lr: 3e-3,
        batch_size: 2,
        grad_accum: 1,
        epochs: 4,
        save_every: 3,
        ..Default::default()
    };
    let full = dir.path().join("full");
    let s = train(&lm, &recs, &cfg, common::quiet_run(&full, false)).unwrap();
    assert_eq!(s.steps, 12);
    assert!(
        s.log.last().unwrap().loss < s.log[0].loss,
        "loss did not fall: {:?}",
        s.log
    );
    let final_full = std::fs::read(full.join("model.safetensors")).unwrap();

    // Interrupted run: stop after 7 steps (max_steps), keeping the step-6 checkpoint...
    let lm = tiny("llama", dir.path());
    let part = dir.path().join("part");
    let cut = TrainConfig {
        max_steps: 7,
        ..cfg.clone()
    };
    // Same data order as the full run requires the same steps_per_epoch, which max_steps keeps.
    let _ = train_until_killed(&lm, &recs, &cut, &part);
    assert!(part.join("checkpoints/step-6").is_dir());
    // ...then resume with the full config from a fresh process state.
    let lm = tiny("llama", dir.path());
    let r = train(&lm, &recs, &cfg, common::quiet_run(&part, true)).unwrap();
    assert_eq!(r.resumed_from, Some(6));
    assert_eq!(
        std::fs::read(part.join("model.safetensors")).unwrap(),
        final_full,
        "resume is not bit-identical"
    );
    let log: Vec<_> = elastica::train::sft::read_log(&part.join("train_log.jsonl")).unwrap();
    assert_eq!(log.len(), 12);
    assert_eq!(
        log, s.log,
        "train_log after resume differs from the uninterrupted run"
    );
}

/// Run training but simulate a kill after `max_steps`: the hook fails on the last step, so
/// the final model and cleanup never happen (as with SIGKILL), leaving the checkpoints.
fn train_until_killed(
    lm: &elastica::model::LoadedModel,
    recs: &[elastica::data::records::Record],
    cfg: &TrainConfig,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let stop = cfg.max_steps;
    let full = TrainConfig {
        max_steps: 0,
        ..cfg.clone()
    };
    let mut hook = |_: &elastica::model::LoadedModel,
                    l: &elastica::train::sft::StepLog|
     -> anyhow::Result<()> {
        if l.step == stop {
            anyhow::bail!("killed")
        }
        Ok(())
    };
    train(
        lm,
        recs,
        &full,
        TrainRun {
            out,
            resume: false,
            hook: Some(&mut hook),
            progress: false,
        },
    )
    .map(|_| ())
}

/// generation_config.json's end-of-turn ids stop generation, as transformers' `generate`
/// stops at them; the id training appends stays config.json's.
#[test]
fn generation_config_eos_ids_stop_generation() {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-llama");
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let spec = dir.path().to_str().unwrap();
    let cfg = GenConfig {
        max_new_tokens: 12,
        ..GenConfig::default()
    };
    let lm = load_model(spec, &Device::Cpu).unwrap();
    let prompt = lm.tokenizer.encode("hello", true).unwrap();
    let free = lm
        .generate(std::slice::from_ref(&prompt), &cfg, |_| {})
        .unwrap()
        .remove(0);
    assert_eq!(
        free.len(),
        12,
        "the plain model runs to max_new_tokens: {free:?}"
    );
    // Name the fourth generated token an end of turn: generation stops before it.
    let stop = free[3];
    assert!(!free[..3].contains(&stop));
    let gen_cfg = dir.path().join("generation_config.json");
    let mut g: serde_json::Value = common::read_json(&gen_cfg);
    g["eos_token_id"] = serde_json::json!([1, stop]);
    std::fs::write(&gen_cfg, g.to_string()).unwrap();
    let lm = load_model(spec, &Device::Cpu).unwrap();
    assert_eq!(lm.tokenizer.eos_ids(), &[1, stop]);
    assert_eq!(lm.tokenizer.eos_id(), 1);
    let stopped = lm.generate(&[prompt], &cfg, |_| {}).unwrap().remove(0);
    assert_eq!(stopped, free[..3].to_vec());
    // An id outside the vocabulary is refused naming the file.
    g["eos_token_id"] = serde_json::json!(100000);
    std::fs::write(&gen_cfg, g.to_string()).unwrap();
    let e = format!("{:#}", load_model(spec, &Device::Cpu).err().unwrap());
    assert!(
        e.contains("generation_config.json") && e.contains("vocab_size"),
        "{e}"
    );
}
