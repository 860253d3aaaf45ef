//! `elastica rebound` with `[align] method = "dpo"` (issue 20), end to end on the tiny-llama
//! fixture: the align cell trains by DPO on preference pairs (with its cached reference and
//! per-step rewards), the perturbation by SFT, and the report says which method aligned.
//! Also: examples/rebound-dpo.toml parses, and DPO set under [train] is refused.

mod common;

use std::path::Path;

/// The refusal data with preference pairs as the positive set: each prompt with the refusal
/// chosen over compliance.
fn write_data(dir: &Path) {
    common::write_refusal_data(dir, 4);
    let pos = dir.join("pos.jsonl");
    let pairs = common::jsonl_values(&pos).into_iter().map(|v| {
        serde_json::json!({"prompt": v["prompt"], "chosen": v["response"],
            "rejected": " Sure, first get the tools."})
    });
    common::write_jsonl(&pos, pairs.collect::<Vec<_>>());
}

fn config(dir: &Path, train_extra: &str) -> std::path::PathBuf {
    config_with(dir, "", "", train_extra)
}

/// The config, with lines added at the top level, in `[align]` and in `[train]`.
fn config_with(dir: &Path, top: &str, align: &str, train_extra: &str) -> std::path::PathBuf {
    let top = format!(
        "model = \"{}\"\nn_positive = [4]\nn_negative = [0, 4]\nseeds = [1]\n{top}",
        common::tiny_llama()
    );
    let train = format!("template = \"raw\"\n{train_extra}");
    let align = format!("[align]\nmethod = \"dpo\"\ndpo_beta = 0.5\n{align}");
    common::refusal_rebound_config(dir, &top, &train, &align)
}

#[test]
fn rebound_aligns_by_dpo_and_the_report_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let out = tmp.path().join("run");
    let (ok, _, err) = common::rebound(&config(tmp.path(), ""), &out);
    assert!(ok, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The frozen positive file holds the pairs.
    let frozen = std::fs::read_to_string(out.join("data/positive.jsonl")).unwrap();
    assert_eq!(frozen.lines().count(), 4);
    assert!(frozen.contains("\"rejected\""), "{frozen}");
    // The align cell trained by DPO: its reference cache and reward columns exist, and its
    // first step's loss is ln 2 (policy = reference = base).
    let model = out.join("cells/align.p4.s1/model");
    assert!(model.join("dpo_reference.json").is_file());
    let log = std::fs::read_to_string(model.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!((lines[0]["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-5);
    assert!(lines[1]["margin"].as_f64().unwrap() > 0.0, "{log}");
    // The perturbation stayed SFT: no reward columns in its log.
    let plog = std::fs::read_to_string(out.join("cells/perturb.p4.n4.s1/model/train_log.jsonl"))
        .unwrap_or_default();
    assert!(!plog.is_empty() && !plog.contains("margin"), "{plog}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("alignment: DPO on preference pairs (beta 0.5, sigmoid loss"),
        "{report}"
    );
}

#[test]
fn dpo_under_train_is_refused_and_the_example_parses() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let cfg = config(tmp.path(), "[train.dpo]\nmethod = \"dpo\"");
    let (ok, _, err) = common::rebound(&cfg, &tmp.path().join("run"));
    assert!(!ok && err.contains("under [align]"), "{err}");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/rebound-dpo.toml"
    ))
    .unwrap();
    let c = elastica::experiments::rebound::config::ReboundConfig::from_toml(&text).unwrap();
    assert!(c.align.is_dpo());
    assert_eq!(c.align.prefer, Some(elastica::data::prefs::Prefer::Safer));
}

/// The tensor names in a safetensors file's header.
fn tensor_names(file: &Path) -> Vec<String> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut names: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort();
    names
}

/// DPO with a LoRA adapter aligns, a new LoRA adapter perturbs (on the merged aligned
/// model): the cells save PEFT adapters, the report names both, and the weight-space
/// elasticity is measured on the merged weights.
#[test]
fn rebound_aligns_by_dpo_with_lora_and_perturbs_with_lora() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let out = tmp.path().join("run");
    let cfg = config_with(
        tmp.path(),
        "keep_models = true",
        "lora = { rank = 2, alpha = 4 }\n[perturb]\nlora = { rank = 4, alpha = 8 }",
        "",
    );
    let (ok, _, err) = common::rebound(&cfg, &out);
    assert!(ok, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for (cell, rank) in [("align.p4.s1", 2), ("perturb.p4.n4.s1", 4)] {
        let model = out.join("cells").join(cell).join("model");
        assert!(!model.join("model.safetensors").exists(), "{cell}");
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(model.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(c["peft_type"], "LORA", "{cell}: {c}");
        assert_eq!(c["task_type"], "CAUSAL_LM", "{cell}: {c}");
        assert_eq!(c["r"], rank, "{cell}: {c}");
        let names = tensor_names(&model.join("adapter_model.safetensors"));
        assert!(!names.is_empty(), "{cell}");
        for n in &names {
            assert!(
                n.starts_with("base_model.model.model.layers.")
                    && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")),
                "{cell}: {n}"
            );
        }
    }
    // The align stage trained by DPO (reward columns in its log), the perturbation by SFT.
    let log = |cell: &str| {
        std::fs::read_to_string(out.join("cells").join(cell).join("model/train_log.jsonl")).unwrap()
    };
    assert!(log("align.p4.s1").contains("\"margin\""));
    assert!(!log("perturb.p4.n4.s1").contains("margin"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for want in [
        "alignment: DPO on preference pairs (beta 0.5, sigmoid loss",
        "- align stage: LoRA adapter (rank 2, alpha 4",
        "perturb stage: LoRA adapter (rank 4, alpha 8",
        "weight-space elasticity: on the merged weights",
    ] {
        assert!(report.contains(want), "{want}\n{report}");
    }
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("cells/perturb.p4.n4.s1/result.json")).unwrap(),
    )
    .unwrap();
    let ws = &result["output"]["weight_space"];
    for key in ["fraction_undone", "cosine", "norm_ratio"] {
        let v = ws["total"][key].as_f64();
        assert!(v.is_some_and(f64::is_finite), "{key}: {ws}");
    }
    // Only the adapted projections moved: the embeddings' group moved by nothing.
    assert!(ws["total"]["align_sq"].as_f64().unwrap() > 0.0, "{ws}");
    let other = ws["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "other")
        .unwrap();
    assert_eq!(other["align_sq"], 0.0, "{other}");
    assert_eq!(other["perturb_sq"], 0.0, "{other}");
    let csv = std::fs::read_to_string(out.join("weight_space.csv")).unwrap();
    assert!(csv.lines().count() > 1, "{csv}");
}

/// `[align] dpo_loss = "kto"`: the align cell trains by KTO (first loss 1/2, a z0 per step,
/// the mismatched sequences' reference cached) and the report names it.
#[test]
fn rebound_aligns_by_kto() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path());
    let out = tmp.path().join("run");
    let cfg = config_with(tmp.path(), "", "dpo_loss = \"kto\"", "");
    let (ok, _, err) = common::rebound(&cfg, &out);
    assert!(ok, "{err}");
    let model = out.join("cells/align.p4.s1/model");
    let log = common::jsonl_values(&model.join("train_log.jsonl"));
    assert_eq!(log.len(), 2);
    assert!(
        (log[0]["loss"].as_f64().unwrap() - 0.5).abs() < 1e-5,
        "{}",
        log[0]
    );
    assert!(log.iter().all(|l| l["kl"].is_number()), "{log:?}");
    let r = common::read_json(&model.join("dpo_reference.json"));
    assert_eq!(r["kl_chosen"].as_array().map(Vec::len), Some(4), "{r}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("alignment: KTO on the answers of preference pairs"),
        "{report}"
    );
}
