//! `elastica resist` with `[align] method = "dpo"` and with LoRA stages (issue 20), end to end
//! on the tiny-llama fixture, plus the refusals of combinations that would not do what they
//! say (each refused before anything is written under the run directory).

mod common;

use std::path::{Path, PathBuf};

fn tiny_llama() -> String {
    format!(
        "{}/tests/fixtures/models/tiny-llama",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `n` preference pairs (short, so the byte-level tokenizer keeps them small).
fn write_pairs(path: &Path, n: usize) {
    let topics = ["a lock", "a car", "a door", "a safe", "a phone", "a bike"];
    let mut text = String::new();
    for i in 0..n {
        text += &serde_json::json!({
            "prompt": format!("open {} ({i})", topics[i % 6]),
            "chosen": " no, I can't",
            "rejected": " sure, here is how",
        })
        .to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// `n` prompt/response records.
fn write_records(path: &Path, n: usize) {
    let words = ["the cat sat", "a dog ran", "birds fly", "fish swim"];
    let mut text = String::new();
    for i in 0..n {
        text += &serde_json::json!({
            "prompt": format!("about {}", words[i % 4]),
            "response": format!("{} and {}", words[(i + 1) % 4], words[(i * 3) % 4]),
        })
        .to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// A 2-slice, 1-seed config on `data` with `extra` appended (tables last).
fn config(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    let p = dir.join("resist.toml");
    std::fs::write(
        &p,
        format!(
            "model = {:?}\nslices = 2\neval_prompts = 2\nseeds = [5]\n\
             [data]\npath = {:?}\nschema = \"jsonl\"\n\
             [generate]\nmax_new_tokens = 6\n\
             [train]\nlr = 1e-2\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\n\
             template = \"raw\"\n{extra}\n",
            tiny_llama(),
            data.display()
        ),
    )
    .unwrap();
    p
}

fn resist(cfg: &Path, out: &Path) -> (bool, String, String) {
    common::experiment("resist", cfg, out, &[])
}

fn log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `resist` on `n` written pairs with the `align` table, into `tmp/run`: (out, ok, stderr).
fn resist_on_pairs(tmp: &Path, n: usize, align: &str) -> (std::path::PathBuf, bool, String) {
    let data = tmp.join("pairs.jsonl");
    write_pairs(&data, n);
    let out = tmp.join("run");
    let (ok, _, err) = resist(&config(tmp, &data, align), &out);
    (out, ok, err)
}

#[test]
fn resist_with_dpo_slices_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let align = "[align]\nmethod = \"dpo\"\ndpo_beta = 0.5\n";
    let (out, ok, err) = resist_on_pairs(tmp.path(), 10, align);
    assert!(ok, "{err}");
    // 10 pairs - 2 held-out prompts = 8, split 4 / 4; the slices hold the pairs.
    let slice = std::fs::read_to_string(out.join("slices/slice_2.jsonl")).unwrap();
    assert_eq!(slice.lines().count(), 4);
    assert!(slice.contains("\"rejected\""), "{slice}");
    let prompts = std::fs::read_to_string(out.join("prompts.jsonl")).unwrap();
    assert!(prompts.contains("open a door (8)") && prompts.contains("(9)"));
    // Each slice stage trained by DPO with its own start as the reference: its first step's
    // loss is ln 2 (policy = reference), also for θ2, which starts from θ1, not the base.
    for k in [1, 2] {
        let dir = out.join(format!("cells/seed5-theta{k}"));
        assert!(dir.join("dpo_reference.json").is_file(), "θ{k}");
        let l = log(&dir.join("train_log.jsonl"));
        assert_eq!(l.len(), 2, "θ{k}: {l:?}");
        let first = l[0]["loss"].as_f64().unwrap();
        assert!(
            (first - std::f64::consts::LN_2).abs() < 1e-5,
            "θ{k}: {first}"
        );
        assert!(l[1]["margin"].as_f64().unwrap() > 0.0, "θ{k}: {l:?}");
    }
    // The pair fine-tunes stay SFT on the answers: no reward columns.
    for d in ["forward", "inverse"] {
        let l = log(&out.join(format!("cells/seed5-pair1-2-{d}/train_log.jsonl")));
        assert!(!l.is_empty() && l[0].get("margin").is_none(), "{d}: {l:?}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("slice fine-tunes: DPO on the slice's preference pairs (beta 0.5, sigmoid")
            && report.contains("reference is its starting model")
            && report.contains("pair fine-tunes: SFT on the other checkpoint's answers"),
        "{report}"
    );
    assert!(out.join("results.csv").is_file());
}

/// The raw bytes of one tensor of a safetensors file.
fn tensor(file: &Path, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(name).unwrap().data().to_vec()
}

#[test]
fn resist_with_lora_stages_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    write_records(&data, 10);
    let cfg = config(
        tmp.path(),
        &data,
        "[align]\nlora = { rank = 2, alpha = 4, targets = [\"q_proj\", \"v_proj\"] }\n\
         [pair_train]\nlr = 1e-2\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\n\
         template = \"raw\"\n[pair_train.lora]\nrank = 2\nalpha = 8\n",
    );
    let out = tmp.path().join("run");
    let (ok, _, err) = resist(&cfg, &out);
    assert!(ok, "{err}");
    // θ1: the adapter in adapter/ (PEFT's layout), θ1 itself the base with it merged in:
    // the targeted projections moved, everything else is the base's, bit for bit.
    let theta1 = out.join("cells/seed5-theta1");
    assert!(theta1.join("adapter/adapter_config.json").is_file());
    assert!(theta1.join("adapter/adapter_model.safetensors").is_file());
    let base = PathBuf::from(tiny_llama()).join("model.safetensors");
    let merged = theta1.join("model.safetensors");
    let q = "model.layers.0.self_attn.q_proj.weight";
    assert_ne!(tensor(&base, q), tensor(&merged, q), "q_proj is a target");
    for same in [
        "model.layers.0.self_attn.k_proj.weight",
        "model.embed_tokens.weight",
    ] {
        assert_eq!(tensor(&base, same), tensor(&merged, same), "{same}");
    }
    // θ2 starts from the merged θ1: its adapter's base is θ1's directory.
    let cfg2 = std::fs::read_to_string(out.join("cells/seed5-theta2/adapter/adapter_config.json"))
        .unwrap();
    assert!(cfg2.contains("seed5-theta1"), "{cfg2}");
    // The pair fine-tunes trained rank-2 adapters, whose weights go once the loss is kept.
    let pair = out.join("cells/seed5-pair1-2-inverse");
    let acfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pair.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (acfg["r"].as_u64(), acfg["lora_alpha"].as_f64()),
        (Some(2), Some(8.0))
    );
    assert!(!pair.join("adapter_model.safetensors").exists());
    assert!(!pair.join("model.safetensors").exists());
    assert!(!log(&pair.join("train_log.jsonl")).is_empty());
    let result = std::fs::read_to_string(pair.join("result.json")).unwrap();
    assert!(!result.contains("weight_space"), "{result}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains(
            "slice fine-tunes: SFT on the slice's records, LoRA adapter (rank 2, alpha 4, \
             targets q_proj,v_proj), merged into θk"
        ) && report.contains("(the compared loss), LoRA adapter (rank 2, alpha 8")
            && report.contains("weight-space movement not measured"),
        "{report}"
    );
}

#[test]
fn bad_stage_combinations_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let records = tmp.path().join("data.jsonl");
    write_records(&records, 10);
    let cases = [
        ("[train.lora]\nrank = 2\n", "[align] lora"),
        (
            "[pair_train.dpo]\nmethod = \"dpo\"\n",
            "[pair_train] sets the DPO objective",
        ),
        (
            "[train.dpo]\nmethod = \"dpo\"\n",
            "[train] sets the DPO objective",
        ),
        (
            "[align]\nmethod = \"dpo\"\nprefer = \"safer\"\n",
            "only there",
        ),
        (
            "[align]\nlora = { rank = 0, alpha = 4 }\nprefer = \"safer\"\n",
            "dpo",
        ),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let cfg = config(tmp.path(), &records, extra);
        let out = tmp.path().join(format!("run{i}"));
        let (ok, _, err) = resist(&cfg, &out);
        assert!(!ok && err.contains(want), "{extra}: {err}");
        assert!(err.contains("resist.toml"), "names the file: {err}");
        assert!(!out.exists(), "{extra}: the run directory was created");
    }
    // DPO needs a preference schema for [data].
    let cfg = config(tmp.path(), &records, "[align]\nmethod = \"dpo\"\n");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("schema = \"jsonl\"", "schema = \"alpaca\"");
    std::fs::write(&cfg, text).unwrap();
    let (ok, _, err) = resist(&cfg, &tmp.path().join("runx"));
    assert!(
        !ok && err.contains("preference pairs") && err.contains("hh-rlhf"),
        "{err}"
    );
    assert!(!tmp.path().join("runx").exists());
    // The example parses and asks for DPO and LoRA stages.
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resist-dpo.toml");
    let c = elastica::experiments::resist::ResistConfig::from_file(Path::new(ex)).unwrap();
    assert!(c.align.is_dpo() && c.align.lora.enabled());
}

/// KTO's reference point needs mismatched pairs: slices of 1 pair are refused before
/// anything is written.
#[test]
fn resist_refuses_kto_slices_of_one_pair() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 pairs - 2 held-out prompts = 2, split 1 / 1.
    let align = "[align]\nmethod = \"dpo\"\ndpo_loss = \"kto\"\n";
    let (out, ok, err) = resist_on_pairs(tmp.path(), 4, align);
    assert!(
        !ok && err.contains("at least 2 pairs") && err.contains("slice 1 has 1"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());
}
