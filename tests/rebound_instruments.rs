//! The instruments beyond score and KL in a real rebound grid on the tiny-llama fixture:
//! capability kept (checked against `elastica eval-loss` on the same model and data), KL by
//! position (averaging back to the cell's total KL), KL to the aligned model, coherence,
//! the refusal rate (equal to the keyword scorer's mean, which counts the same thing) and
//! weight space, in results, CSVs, report and plots.

mod common;

use common::{cell_result, refusal_rebound_config};
use common::{tiny_llama, write_refusal_data};
use std::path::Path;

/// The refusal data (8 pairs), general text for the capability measure, and the grid.
fn write_inputs(dir: &Path) -> std::path::PathBuf {
    write_refusal_data(dir, 8);
    common::write_jsonl(
        &dir.join("general.jsonl"),
        (0..8).map(|i| {
            serde_json::json!({"text": format!("The weather on day {i} was mild and the market was busy.")})
        }),
    );
    let top = format!(
        "model = \"{}\"\nn_positive = [4]\nn_negative = [0, 4]\nseeds = [1]",
        tiny_llama()
    );
    let d = dir.display();
    let tables = format!(
        "[capability]\npath = \"{d}/general.jsonl\"\nschema = \"jsonl\"\n\
         [measures]\ncapability_n = 6\nrefusal_rate = true"
    );
    refusal_rebound_config(dir, &top, "", &tables)
}

#[test]
fn every_instrument_reaches_results_report_and_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_inputs(tmp.path());
    let out = tmp.path().join("run");
    let (ok, _, err) = common::rebound(&cfg, &out);
    assert!(ok, "{err}");

    // Capability of the base model = eval-loss of the same model on the frozen set.
    let frozen = out.join("data/capability.jsonl");
    assert_eq!(std::fs::read_to_string(&frozen).unwrap().lines().count(), 6);
    let want = common::eval_loss_one_thread(&tiny_llama(), frozen.to_str().unwrap(), &[]);
    let base = &cell_result(&out, "base.s1")["output"];
    let got = base["capability"]["mean_nll"].as_f64().unwrap();
    let want = want["mean_nll"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    assert!(base["eval"]["coherence_nll"].as_f64().unwrap() > 0.0);

    for id in ["perturb.p4.n0.s1", "perturb.p4.n4.s1"] {
        let o = &cell_result(&out, id)["output"];
        let ev = &o["eval"];
        // KL by position, weighted by the prompts reaching each position, is the total KL.
        let pos = ev["kl_by_position"].as_array().unwrap();
        let (mut sum, mut n) = (0.0, 0.0);
        for p in pos {
            let k = p["sequences"].as_f64().unwrap();
            sum += p["mean"].as_f64().unwrap() * k;
            n += k;
        }
        assert_eq!(n as u64, ev["kl_positions"].as_u64().unwrap());
        let kl = ev["kl"].as_f64().unwrap();
        assert!(
            kl > 0.0 && (sum / n - kl).abs() < 1e-9 * kl,
            "{} vs {kl}",
            sum / n
        );
        // Keyword refusals are exactly what the keyword scorer scores.
        assert_eq!(ev["refusal_rate"]["mean"], ev["score"]["mean"]);
        assert_eq!(ev["refusal_keywords"], "v1");
        assert!(o["capability"]["mean_nll"].as_f64().unwrap() > 0.0);
    }
    let aligned = &cell_result(&out, "perturb.p4.n0.s1")["output"];
    assert!(aligned.get("weight_space").is_none());
    assert!(aligned["eval"].get("kl_to_aligned").is_none());
    let p = &cell_result(&out, "perturb.p4.n4.s1")["output"];
    assert!(p["eval"]["kl_to_aligned"].as_f64().unwrap() > 0.0);
    assert!(!p["eval"]["kl_to_aligned_by_position"]
        .as_array()
        .unwrap()
        .is_empty());
    let w = &p["weight_space"];
    let total = &w["total"];
    let (dot, a2) = (
        total["dot"].as_f64().unwrap(),
        total["align_sq"].as_f64().unwrap(),
    );
    assert!(a2 > 0.0);
    assert!((total["fraction_undone"].as_f64().unwrap() + dot / a2).abs() < 1e-12);
    // Per layer sums add up to the total.
    let layer_sum: f64 = w["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["align_sq"].as_f64().unwrap())
        .sum();
    assert!((layer_sum - a2).abs() < 1e-9 * a2);

    // Results, CSVs, report and plots.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let head = csv.lines().next().unwrap();
    for c in [
        "kl_to_aligned",
        "coherence_nll",
        "capability_nll",
        "refusal_rate",
        "weight_fraction_undone",
        "weight_cosine",
        "weight_norm_ratio",
    ] {
        assert!(head.contains(c), "results.csv lacks {c}: {head}");
    }
    let by_pos = std::fs::read_to_string(out.join("kl_by_position.csv")).unwrap();
    assert!(
        by_pos.contains(",4,0,base,1,") && by_pos.contains(",4,4,aligned,1,"),
        "{by_pos}"
    );
    let ws = std::fs::read_to_string(out.join("weight_space.csv")).unwrap();
    assert!(
        ws.contains(",layer,0,") && ws.contains(",kind,q_proj,") && ws.contains(",total,total,"),
        "{ws}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in [
        "Capability kept",
        "Coherence",
        "Refusal rate",
        "Refusal keyword list (v1)",
        "I'm sorry",
        "fraction of the alignment update undone",
        "Weight space by layer and projection",
        "KL(model ‖ base) by response position",
        "KL(model ‖ aligned) by response position",
    ] {
        assert!(report.contains(s), "report.md lacks {s:?}");
    }
    for f in [
        "capability_vs_negatives",
        "coherence_vs_negatives",
        "refusal_vs_negatives",
        "weight_space_vs_negatives",
        "kl_to_aligned_vs_negatives",
        "kl_by_position",
        "kl_to_aligned_by_position",
    ] {
        assert!(
            out.join(format!("{f}.png")).exists() && out.join(format!("{f}.svg")).exists(),
            "{f} missing"
        );
    }
}
