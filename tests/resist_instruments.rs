//! The resistance experiment's instruments on the tiny Llama fixture (2 slices, 1 seed, a
//! kept pair model): KL by position averaging back to each checkpoint's total KL, θ0's KL
//! to itself 0, capability of θ0 equal to `elastica eval-loss` on the frozen set, and the
//! weight-space gap closed recomputed from the kept weights with plain loops.

mod common;
use common::{tiny_llama, RESIST_WORDS};
use std::path::Path;

fn output(out: &Path, id: &str) -> serde_json::Value {
    let p = out.join("cells").join(id).join("result.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["output"].clone()
}

/// Every tensor of a model directory's model.safetensors as f64 values, by name.
fn weights(dir: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let vals: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F32 => v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                    .collect(),
                safetensors::Dtype::BF16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                safetensors::Dtype::F16 => v
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())
                    .collect(),
                d => panic!("unexpected dtype {d:?}"),
            };
            (name, vals)
        })
        .collect()
}

#[test]
fn checkpoints_and_pairs_carry_the_instruments() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_resist_data(&tmp.path().join("data.jsonl"), 12);
    common::write_jsonl(
        &tmp.path().join("general.jsonl"),
        (0..12).map(|i| serde_json::json!({"text": format!("{} today", RESIST_WORDS[i % 6])})),
    );
    let d = tmp.path().display();
    let cfg = tmp.path().join("resist.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nslices = 2\ninclude_base = true\neval_prompts = 4\nseeds = [3]\nkeep_pair_models = true\n\
             [data]\npath = \"{d}/data.jsonl\"\nschema = \"jsonl\"\n\
             [capability]\npath = \"{d}/general.jsonl\"\nschema = \"jsonl\"\n\
             [measures]\ncapability_n = 5\n\
             [generate]\nmax_new_tokens = 6\ntemperature = 1.0\ntop_p = 1.0\n\
             [train]\nlr = 1e-2\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\ntemplate = \"raw\"\n",
            tiny_llama()
        ),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let (ok, _, err) = common::experiment("resist", &cfg, &out, &[]);
    assert!(ok, "{err}");

    // θ0: KL to itself 0, capability = eval-loss of the base on the frozen set.
    let g0 = output(&out, "seed3-gen0");
    assert_eq!(g0["measures"]["kl_to_base"], 0.0);
    assert!(g0["measures"]["coherence_nll"].as_f64().unwrap() > 0.0);
    let frozen = out.join("capability.jsonl");
    let eval_flags = ["--template", "raw", "--max-length", "96"];
    let want = common::eval_loss_one_thread(&tiny_llama(), frozen.to_str().unwrap(), &eval_flags);
    let (got, want) = (
        g0["capability"]["mean_nll"].as_f64().unwrap(),
        want["mean_nll"].as_f64().unwrap(),
    );
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    // θ2: KL by position, weighted by the answers reaching each position, is the total.
    let g2 = output(&out, "seed3-gen2");
    let m = &g2["measures"];
    let (mut s, mut n) = (0.0, 0.0);
    for p in m["kl_by_position"].as_array().unwrap() {
        s += p["mean"].as_f64().unwrap() * p["sequences"].as_f64().unwrap();
        n += p["sequences"].as_f64().unwrap();
    }
    let kl = m["kl_to_base"].as_f64().unwrap();
    assert!(
        kl > 0.0 && (s / n - kl).abs() < 1e-9 * kl,
        "{} vs {kl}",
        s / n
    );

    // The inverse run of pair 1-2 (θ2 on θ1's answers): gap to θ1 closed, by plain loops.
    let inv = output(&out, "seed3-pair1-2-inverse");
    let got = inv["weight_space"]["total"]["fraction_undone"]
        .as_f64()
        .unwrap();
    let (target, start, end) = (
        weights(&out.join("cells/seed3-theta1")),
        weights(&out.join("cells/seed3-theta2")),
        weights(&out.join("cells/seed3-pair1-2-inverse")),
    );
    let (mut dot, mut a2) = (0.0, 0.0);
    for (name, s) in &start {
        for ((x, t), e) in s.iter().zip(&target[name]).zip(&end[name]) {
            let (a, p) = (x - t, e - x);
            dot += p * a;
            a2 += a * a;
        }
    }
    let want = -dot / a2;
    assert!(
        (got - want).abs() < 1e-9 * want.abs().max(1e-6),
        "{got} vs {want}"
    );

    for f in [
        "checkpoints.csv",
        "weight_space.csv",
        "kl_by_position_checkpoints.png",
        "gap_closed.png",
        "gap_closed.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in [
        "## Instruments",
        "KL(θk ‖ θ0) by response position",
        "share of the gap closed",
        "θ0 vs θ1",
    ] {
        assert!(report.contains(s), "report.md lacks {s:?}");
    }
}
