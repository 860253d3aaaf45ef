//! `elastica rebound` with LoRA stages (issue 20), end to end on the tiny-llama fixture:
//! `[align] lora` aligns with an adapter, `[perturb] lora` perturbs with one, starting from
//! the merged aligned model (`from = "merged"`) or continuing the align stage's adapter
//! (`from = "adapter"`). The cells save adapters (not full models), the evaluation scores the
//! model with its adapter, the weight-space elasticity compares the merged weights, and the
//! report names the settings. Bad layouts are refused.

mod common;

use common::{cell_result, tiny_llama, write_refusal_data};
use std::path::Path;

/// The grid over the refusal data; `stages` are the `[align]`/`[perturb]` tables and
/// `train_extra` more `[train]` lines.
fn config(dir: &Path, stages: &str, train_extra: &str) -> std::path::PathBuf {
    let top = format!(
        "model = \"{}\"\nn_positive = [4]\nn_negative = [0, 4]\nseeds = [1]\nkeep_models = true",
        tiny_llama()
    );
    let train = format!("template = \"raw\"\n{train_extra}");
    common::refusal_rebound_config(dir, &top, &train, stages)
}

/// Runs the grid and checks what both `from` choices share; returns the report.
fn run_lora_grid(stages: &str) -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 4);
    let out = tmp.path().join("run");
    let (ok, _, err) = common::rebound(&config(tmp.path(), stages, ""), &out);
    assert!(ok, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for cell in ["align.p4.s1", "perturb.p4.n4.s1"] {
        let model = out.join("cells").join(cell).join("model");
        assert!(
            model.join("adapter_model.safetensors").is_file()
                && model.join("adapter_config.json").is_file(),
            "{cell} saved no adapter"
        );
        assert!(
            !model.join("model.safetensors").exists(),
            "{cell} saved a full model"
        );
    }
    // The perturbation moved the model away from the aligned one.
    // The evaluation applied the adapters: the aligned model (its adapter's B starts at 0,
    // so the adapter is all that moves it) has KL > 0 to the base, and the perturbed another.
    let aligned = &cell_result(&out, "perturb.p4.n0.s1")["output"];
    let perturbed = &cell_result(&out, "perturb.p4.n4.s1")["output"];
    let kl = |v: &serde_json::Value| v["eval"]["kl"].as_f64().unwrap();
    assert!(kl(aligned) > 0.0 && kl(aligned).is_finite(), "{aligned}");
    assert!(kl(perturbed).is_finite() && kl(perturbed) != kl(aligned));
    assert!(perturbed["eval"]["kl_to_aligned"].as_f64().unwrap() > 0.0);
    assert!(perturbed["train"]["steps"].as_u64().unwrap() > 0);
    // Weight-space elasticity on the merged weights: present and finite.
    let ws = &perturbed["weight_space"]["total"];
    for key in ["fraction_undone", "cosine", "norm_ratio"] {
        assert!(ws[key].as_f64().is_some_and(f64::is_finite), "{key}: {ws}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("- align stage: LoRA adapter (rank 2, alpha 4"),
        "{report}"
    );
    assert!(
        report.contains("weight-space elasticity: on the merged weights")
            && report.contains("aligned = the base with the align stage's adapter"),
        "{report}"
    );
    (tmp, report)
}

#[test]
fn lora_perturbation_from_the_merged_aligned_model() {
    let (tmp, report) = run_lora_grid(
        "[align]\nlora = { rank = 2, alpha = 4 }\n[perturb]\nlora = { rank = 4, alpha = 8 }",
    );
    assert!(
        report.contains("perturb stage: LoRA adapter (rank 4, alpha 8")
            && report.contains("starting from the aligned model with its adapter merged")
            && report.contains("perturbed = the aligned weights with the perturbation's adapter"),
        "{report}"
    );
    // A new adapter: rank 4, not the align stage's 2.
    let cfg = std::fs::read_to_string(
        tmp.path()
            .join("run/cells/perturb.p4.n4.s1/model/adapter_config.json"),
    )
    .unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["r"], 4, "{cfg}");
}

#[test]
fn lora_perturbation_continues_the_aligned_adapter() {
    let (tmp, report) =
        run_lora_grid("[align]\nlora = { rank = 2, alpha = 4 }\n[perturb]\nfrom = \"adapter\"");
    assert!(
        report.contains("perturb stage: LoRA adapter (rank 2, alpha 4")
            && report.contains("continuing the align stage's adapter")
            && report.contains("perturbed = the base with the continued adapter"),
        "{report}"
    );
    // The same adapter, trained further: its A matrices moved from the aligned ones.
    let read = |cell: &str| {
        std::fs::read(
            tmp.path()
                .join("run/cells")
                .join(cell)
                .join("model/adapter_model.safetensors"),
        )
        .unwrap()
    };
    assert_ne!(read("align.p4.s1"), read("perturb.p4.n4.s1"));
}

#[test]
fn bad_lora_layouts_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 4);
    for (stages, extra, want) in [
        ("", "[train.lora]\nrank = 2", "[train.lora] would apply to both stages"),
        (
            "[perturb]\nfrom = \"adapter\"",
            "",
            "[align] has no lora",
        ),
        (
            "[align]\nlora = { rank = 2, alpha = 4 }\n[perturb]\nfrom = \"adapter\"\nlora = { rank = 4 }",
            "",
            "must be left out or equal [align] lora",
        ),
        ("[perturb]\nfrom = \"both\"", "", "from"),
        (
            "[align]\nlora = { rank = 0, alpha = 32 }",
            "",
            "[align] lora: rank = 0 means a full fine-tune",
        ),
        (
            "[perturb]\nlora = { targets = [\"q_proj\"] }",
            "",
            "[perturb] lora: rank = 0 means a full fine-tune",
        ),
    ] {
        let out = tmp.path().join("run");
        let (ok, _, err) = common::rebound(&config(tmp.path(), stages, extra), &out);
        assert!(!ok && err.contains(want), "{stages}: {err}");
        assert!(!out.join("cells").exists(), "{stages}: cells ran");
    }
}
