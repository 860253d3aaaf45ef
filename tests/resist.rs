//! `elastica resist` end to end on the tiny Llama fixture: a 2-slice, 1-seed run writes the
//! table, plots and CSV; a rerun redoes nothing; a fine-tune killed midway resumes and ends
//! bit-identically; unreadable and too-small data sets get clear errors.

mod common;
use common::{stderr, tiny_llama, write_resist_data as write_data};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Write `<dir>/<name>` with the test settings plus `extra` top-level keys or tables.
fn write_config(dir: &Path, name: &str, data: &Path, extra: &str) -> PathBuf {
    write_config_for(dir, name, data, extra, &tiny_llama())
}

/// [`write_config`] with `model` as the base model.
fn write_config_for(dir: &Path, name: &str, data: &Path, extra: &str, model: &str) -> PathBuf {
    let cfg = dir.join(name);
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\nslices = 2\neval_prompts = 4\nseeds = [3]\n{extra}\n\
             [data]\npath = {:?}\nschema = \"jsonl\"\n\
             [generate]\nmax_new_tokens = 6\n\
             [train]\nlr = 1e-3\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\ntemplate = \"raw\"\nsave_every = 1\n",
            model,
            data.display()
        ),
    )
    .unwrap();
    cfg
}

/// Run `elastica resist`, optionally with an injected fault (`<cell>@<point>`).
fn resist(cfg: &Path, out: &Path, fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_elastica"));
    c.args(["resist", "--threads", "1", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .env_remove("ELASTICA_INJECT_FAULT");
    if let Some(f) = fault {
        c.env("ELASTICA_INJECT_FAULT", f);
    }
    c.output().unwrap()
}

#[test]
fn two_slices_one_seed_end_to_end_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.jsonl");
    write_data(&data, 12);
    let cfg = write_config(tmp.path(), "resist.toml", &data, "");
    let out = tmp.path().join("run");
    let o = resist(&cfg, &out, None);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "config.toml",
        "manifest.json",
        "prompts.jsonl",
        "slices/slice_1.jsonl",
        "slices/slice_2.jsonl",
        "cells/seed3-theta1/model.safetensors",
        "cells/seed3-theta2/model.safetensors",
        "cells/seed3-gen1/gen_1.jsonl",
        "cells/seed3-gen2/gen_2.jsonl",
        "cells/seed3-pair1-2-forward/train_log.jsonl",
        "cells/seed3-pair1-2-inverse/train_log.jsonl",
        "results.csv",
        "results.jsonl",
        "results.json",
        "pairs.csv",
        "table.tex",
        "report.md",
        "loss_1-2.png",
        "loss_1-2.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing; stderr: {}", stderr(&o));
    }
    // Pair fine-tunes keep their losses, not their weights.
    assert!(!out
        .join("cells/seed3-pair1-2-forward/model.safetensors")
        .exists());
    // 12 records - 4 held-out prompts = 8, split 4 / 4.
    let slice = std::fs::read_to_string(out.join("slices/slice_1.jsonl")).unwrap();
    assert_eq!(slice.lines().count(), 4);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines[0].starts_with("seed,k,l,samples,steps,inverse_loss,forward_loss"));
    // Seed 3, pair 1-2, 4 samples, 2 steps of 2.
    assert!(lines[1].starts_with("3,1,2,4,2,"), "{csv}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| θ1 vs θ2 |") && report.contains("Sign test"),
        "{report}"
    );
    assert!(std::fs::read_to_string(out.join("table.tex"))
        .unwrap()
        .contains("\\begin{tabular}"));

    // Rerun: every cell is already done and nothing is retrained.
    let theta1 = out.join("cells/seed3-theta1/model.safetensors");
    let mtime = std::fs::metadata(&theta1).unwrap().modified().unwrap();
    let o = resist(&cfg, &out, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("running"), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(&theta1).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv
    );

    // A different training setup is refused in the same directory.
    let cfg2 = write_config(tmp.path(), "changed.toml", &data, "[pair_train]\nlr = 0.5");
    let o = resist(&cfg2, &out, None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("different definition of 2 cell(s)"),
        "{}",
        stderr(&o)
    );

    // A run killed in the middle of a fine-tune: the inverse cell fails after its second
    // optimizer step (a checkpoint exists after the first, save_every = 1); every other cell
    // finishes. The rerun resumes that fine-tune from step 1 and ends on the same losses as
    // the uninterrupted run.
    let out2 = tmp.path().join("run2");
    let o = resist(&cfg, &out2, Some("seed3-pair1-2-inverse@train-step-2"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("seed3-pair1-2-inverse") && stderr(&o).contains("injected fault"),
        "{}",
        stderr(&o)
    );
    assert!(out2
        .join("cells/seed3-pair1-2-forward/result.json")
        .exists());
    let o = resist(&cfg, &out2, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("running 1 of 6 cells"),
        "{}",
        stderr(&o)
    );
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out2.join("cells/seed3-pair1-2-inverse/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["output"]["fine_tune"]["resumed_from"], 1, "{result}");
    assert_eq!(
        std::fs::read_to_string(out2.join("results.csv")).unwrap(),
        csv
    );
}

/// A project directory holding the base model beside the run (as the demo's does) moves
/// whole: the run records the base relative to itself, and the moved run resumes with
/// nothing to redo.
#[test]
fn a_run_and_its_base_model_move_together() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("project");
    let model = project.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(tiny_llama()).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let data = project.join("data.jsonl");
    write_data(&data, 12);
    let cfg = write_config_for(&project, "resist.toml", &data, "", model.to_str().unwrap());
    let o = resist(&cfg, &project.join("run"), None);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = std::fs::read_to_string(project.join("run/manifest.json")).unwrap();
    assert!(manifest.contains("\"../model\""), "{manifest}");
    let csv = std::fs::read_to_string(project.join("run/results.csv")).unwrap();

    let moved = tmp.path().join("moved");
    std::fs::rename(&project, &moved).unwrap();
    let model = moved.join("model");
    let data = moved.join("data.jsonl");
    let cfg = write_config_for(&moved, "resist.toml", &data, "", model.to_str().unwrap());
    let o = resist(&cfg, &moved.join("run"), None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("running"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(moved.join("run/results.csv")).unwrap(),
        csv
    );
}

#[test]
fn unreadable_and_too_small_data_sets_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("small.jsonl");
    write_data(&data, 5);
    let cfg = write_config(tmp.path(), "resist.toml", &data, "");
    let o = resist(&cfg, &tmp.path().join("a"), None);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("small.jsonl has 5 records")
            && e.contains("at least 2 records")
            && e.contains("6 in all"),
        "{e}"
    );

    let missing = tmp.path().join("missing.jsonl");
    let cfg = write_config(tmp.path(), "resist.toml", &missing, "");
    let o = resist(&cfg, &tmp.path().join("b"), None);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("missing.jsonl"), "{e}");

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"response\": \"b\"}\nnot json\n").unwrap();
    let cfg = write_config(tmp.path(), "resist.toml", &bad, "");
    let o = resist(&cfg, &tmp.path().join("c"), None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.jsonl: line 2"), "{}", stderr(&o));

    let o = resist(&tmp.path().join("nope.toml"), &tmp.path().join("d"), None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope.toml"), "{}", stderr(&o));
}

/// `schema = "truthfulqa"` (the paper's third data set) runs the whole experiment: the slices
/// hold (question, best answer) pairs in file order and the held-out prompts are the last
/// questions.
#[test]
fn truthfulqa_data_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("TruthfulQA.csv");
    let words = common::RESIST_WORDS;
    let mut csv = String::from(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n",
    );
    for i in 0..12 {
        csv += &format!(
            "Adversarial,Misconceptions,\"about {}, {i}?\",{} and {},a; b,c; d,https://x\n",
            words[i % 6],
            words[(i * 5 + 1) % 6],
            words[(i * 3) % 6]
        );
    }
    std::fs::write(&data, csv).unwrap();
    let cfg = write_config(tmp.path(), "resist.toml", &data, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("schema = \"jsonl\"", "schema = \"truthfulqa\""),
    )
    .unwrap();
    let out = tmp.path().join("run");
    let o = resist(&cfg, &out, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("results.json").exists());
    let slice = common::jsonl_values(&out.join("slices/slice_1.jsonl"));
    assert_eq!(slice.len(), 4);
    assert_eq!(
        slice[0],
        serde_json::json!({"prompt": "about the cat sat, 0?", "response": "a dog ran and the cat sat"})
    );
    let prompts = std::fs::read_to_string(out.join("prompts.jsonl")).unwrap();
    assert!(prompts.contains("about rain falls, 10?"), "{prompts}");
}
