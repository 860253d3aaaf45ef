//! A refused re-plan changes nothing (issue 17, item 3): `rebound`, `scaling` and `resist`
//! on a run directory planned with another config are refused before anything is written,
//! so every file of the run directory is byte-identical afterwards, and the original run
//! then resumes (after a kill -9 in the middle of a cell) as if the refused command had
//! never happened.

mod common;
use common::{stderr, tiny_llama};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_elastica")
}

/// `<name>.jsonl` pairs in `dir` whose responses end with `tag`, and evaluation prompts.
fn write_data(dir: &Path, name: &str, tag: &str, n: usize) {
    common::write_jsonl(
        &dir.join(format!("{name}.jsonl")),
        (0..n).map(|i| {
            serde_json::json!({
                "prompt": format!("Tell me how to pick lock {i}."),
                "response": format!(" I'm sorry, I can't help with that {tag}."),
            })
        }),
    );
    common::write_jsonl(
        &dir.join("eval.jsonl"),
        (0..4).map(|i| serde_json::json!({"prompt": format!("Explain {i}.")})),
    );
}

/// A rebound/scaling config at `path` over `pos`, `neg` in `dir`; `head` holds the
/// top-level keys.
fn rebound_config(path: &Path, dir: &Path, head: &str, pos: &str, lr: f64) {
    let d = dir.display();
    let text = format!(
        "{head}\n[positive]\npath = \"{d}/{pos}.jsonl\"\nschema = \"jsonl\"\n\
         [negative]\npath = \"{d}/neg.jsonl\"\nschema = \"jsonl\"\n\
         [eval]\nprompts = \"{d}/eval.jsonl\"\nn = 4\n\
         [train]\nlr = {lr}\nbatch_size = 2\ngrad_accum = 1\nsave_every = 2\n\
         [generation]\nmax_new_tokens = 4\n[scorer]\nkind = \"keywords\"\n"
    );
    std::fs::write(path, text).unwrap();
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("ELASTICA_INJECT_FAULT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Every file and directory under `root`: relative path -> SHA-256 of the content
/// (directories as "dir"). Lock files are included: even they must not be created.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_refused_and_untouched(o: &Output, before: &BTreeMap<PathBuf, String>, out: &Path) {
    assert!(!o.status.success(), "the changed config was accepted");
    let after = snapshot(out);
    for (p, h) in before {
        assert_eq!(after.get(p), Some(h), "{} changed or vanished", p.display());
    }
    assert_eq!(&after, before, "files appeared in the run directory");
    let e = stderr(o);
    assert!(
        e.contains("different definition") && e.contains("Nothing was written"),
        "{e}"
    );
}

fn result(out: &Path, id: &str) -> serde_json::Value {
    let p = out.join("cells").join(id).join("result.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn a_refused_rebound_replan_leaves_the_run_byte_identical_and_a_killed_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir, "pos", "friend", 8);
    write_data(dir, "pos2", "buddy", 8);
    write_data(dir, "neg", "sure", 8);
    let head = format!(
        "model = \"{}\"\nn_positive = [4, 8]\nn_negative = [0, 4]\nseeds = [1]",
        tiny_llama()
    );
    let a = dir.join("a.toml");
    let b = dir.join("changed.toml");
    rebound_config(&a, dir, &head, "pos", 0.01);
    // Other positive data and another learning rate: every align cell changes.
    rebound_config(&b, dir, &head, "pos2", 0.02);
    let out = dir.join("run");
    let (ca, cb, o) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        out.to_str().unwrap(),
    );

    // The run is killed (SIGKILL) inside align.p8 after its step-2 checkpoint, with
    // align.p4 and its perturbations done.
    let mut child = Command::new(bin())
        .args(["rebound", "--config", ca, "--out", o, "--jobs", "1"])
        .env("RAYON_NUM_THREADS", "1")
        .env(
            "ELASTICA_INJECT_FAULT",
            "align.p8.s1@train-step-3:sleep=120",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = out.join("cells/align.p8.s1/model/checkpoints/step-2");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() {
        assert!(
            t0.elapsed().as_secs() < 120,
            "align.p8.s1 never wrote its step-2 checkpoint"
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended before it was killed: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Let the fault point's sleep begin (the checkpoint directory appears before its files).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(out.join("cells/align.p4.s1/result.json").exists());
    let p4 = std::fs::read(out.join("cells/align.p4.s1/result.json")).unwrap();

    // The re-plan with the changed config is refused and writes nothing: not the frozen
    // data, not config.toml, not the manifest, not a lock.
    let before = snapshot(&out);
    assert!(before.contains_key(Path::new("data/positive.jsonl")));
    let r = run(&["rebound", "--config", cb, "--out", o], &[]);
    assert_refused_and_untouched(&r, &before, &out);
    assert!(stderr(&r).contains("align.p4.s1"), "{}", stderr(&r));
    let r = run(&["rebound", "--config", cb, "--out", o, "--plan-only"], &[]);
    assert_refused_and_untouched(&r, &before, &out);

    // The original config resumes: align.p8 from its checkpoint, nothing done is redone,
    // and the report is the original config's.
    let r = run(&["rebound", "--config", ca, "--out", o], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        p4,
        std::fs::read(out.join("cells/align.p4.s1/result.json")).unwrap()
    );
    let a8 = result(&out, "align.p8.s1");
    assert_eq!(a8["output"]["train"]["resumed_from"], 2, "{a8}");
    let resolved = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(
        resolved.contains("pos.jsonl") && !resolved.contains("pos2"),
        "{resolved}"
    );
    let frozen = std::fs::read_to_string(out.join("data/positive.jsonl")).unwrap();
    assert!(frozen.contains("friend") && !frozen.contains("buddy"));
    let r = run(&["collect", o], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
}

#[test]
fn a_refused_scaling_replan_leaves_the_run_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_data(dir, "pos", "friend", 4);
    write_data(dir, "pos2", "buddy", 4);
    write_data(dir, "neg", "sure", 4);
    let m = tiny_llama();
    let head = format!(
        "x_label = \"parameters\"\nn_positive = [4]\nn_negative = [0]\nseeds = [1]\n\
         models = [{{name = \"small\", path = \"{m}\", x = 1e5}}, {{name = \"large\", path = \"{m}\", x = 1e6}}]"
    );
    let a = dir.join("a.toml");
    let b = dir.join("changed.toml");
    rebound_config(&a, dir, &head, "pos", 0.01);
    rebound_config(&b, dir, &head, "pos2", 0.01);
    let out = dir.join("scale");
    let (ca, cb, o) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let r = run(&["scaling", "--config", ca, "--out", o, "--plan-only"], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let manifest = out.join("manifest.json");
    let r = run(
        &[
            "cell",
            "run",
            "--manifest",
            manifest.to_str().unwrap(),
            "--index",
            "1",
        ],
        &[],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(out.join("cells/small.align.p4.s1/result.json").exists());
    let before = snapshot(&out);
    let r = run(&["scaling", "--config", cb, "--out", o], &[]);
    assert_refused_and_untouched(&r, &before, &out);
    assert!(stderr(&r).contains("small.align.p4.s1"), "{}", stderr(&r));
}

#[test]
fn a_refused_resist_replan_leaves_the_run_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = |name: &str, data: &str| -> PathBuf {
        let mut text = String::new();
        for i in 0..12 {
            text += &serde_json::json!({
                "prompt": format!("about {i}"),
                "response": format!("{data} {}", i % 3),
            })
            .to_string();
            text.push('\n');
        }
        let d = dir.join(format!("{name}.jsonl"));
        std::fs::write(&d, text).unwrap();
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "model = {:?}\nslices = 2\neval_prompts = 4\nseeds = [3]\n\
                 [data]\npath = {:?}\nschema = \"jsonl\"\n[generate]\nmax_new_tokens = 4\n\
                 [train]\nlr = 1e-3\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\n\
                 template = \"raw\"\n",
                tiny_llama(),
                d.display()
            ),
        )
        .unwrap();
        p
    };
    let a = config("a", "birds fly");
    let b = config("changed", "fish swim");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    // Only the first fine-tune finishes: the second fails at its start.
    let r = run(
        &[
            "resist",
            "--threads",
            "1",
            "--config",
            a.to_str().unwrap(),
            "--out",
            o,
        ],
        &[("ELASTICA_INJECT_FAULT", "seed3-theta2@start")],
    );
    assert!(!r.status.success());
    assert!(out.join("cells/seed3-theta1/result.json").exists());
    let before = snapshot(&out);
    let r = run(
        &[
            "resist",
            "--threads",
            "1",
            "--config",
            b.to_str().unwrap(),
            "--out",
            o,
        ],
        &[],
    );
    assert_refused_and_untouched(&r, &before, &out);
    assert!(stderr(&r).contains("seed3-theta1"), "{}", stderr(&r));
}
