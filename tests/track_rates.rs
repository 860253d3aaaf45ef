//! `elastica train --track-rates`: the tracked rates appear at the requested steps, and they
//! are the rates `eval-loss` (before training) and the token-by-token `rates` command (after
//! training) give for the same sets.

mod common;

use common::jsonl_values as rows;
use std::path::Path;

/// `elastica ARGS` on one rayon thread: (success, stdout, stderr).
fn elastica(args: &[&str]) -> (bool, String, String) {
    common::elastica_env(args, &[("RAYON_NUM_THREADS", "1")])
}

fn write_pairs(path: &Path, pairs: &[(&str, &str)]) {
    let text: String = pairs
        .iter()
        .map(|(p, r)| serde_json::json!({"prompt": p, "response": r}).to_string() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn tracked_rates_appear_at_the_requested_steps_and_equal_eval_loss_and_rates() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-llama");
    let model = model.to_str().unwrap();
    let train = dir.path().join("train.jsonl");
    let words = ["good", "fine", "great", "nice", "kind", "warm"];
    let pairs: Vec<(String, String)> = (0..12)
        .map(|i| {
            (
                format!("the film {i} was"),
                format!(" {} and {}", words[i % 6], words[(i + 1) % 6]),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_pairs(&train, &refs);
    let pos = dir.path().join("pos.jsonl");
    write_pairs(
        &pos,
        &[("the play was", " good and warm"), ("it was", " great")],
    );
    let neg = dir.path().join("neg.jsonl");
    write_pairs(
        &neg,
        &[("the play was", " bad and cold"), ("it was", " awful")],
    );
    let out = dir.path().join("run");
    let track = format!("pos={},neg={}", pos.display(), neg.display());
    // `train --model MODEL --data TRAIN --out OUT EXTRA..`
    let run = |out: &Path, extra: &[&str]| {
        let (data, out) = (train.to_str().unwrap(), out.to_str().unwrap());
        elastica(
            &[
                &["train", "--model", model, "--data", data, "--out", out],
                extra,
            ]
            .concat(),
        )
    };
    let (ok, so, se) = run(
        &out,
        &[
            "--template",
            "raw",
            "--lr",
            "1e-2",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--track-rates",
            &track,
            "--track-every",
            "4",
        ],
    );
    assert!(ok, "{so}\n{se}");
    let got = rows(&out.join("rates.jsonl"));
    let steps: Vec<(u64, &str)> = got
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["set"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            (0, "pos"),
            (0, "neg"),
            (4, "pos"),
            (4, "neg"),
            (6, "pos"),
            (6, "neg")
        ],
        "12 records at 2 per step = 6 steps, measured at 0, every 4, and at the end"
    );
    assert!(out.join("rates.png").exists() && out.join("rates.svg").exists());
    // Before training: the base model's eval-loss on each set.
    for (i, set) in [(0usize, &pos), (1, &neg)] {
        let (ok, so, se) = elastica(&[
            "eval-loss",
            "--model",
            model,
            "--data",
            set.to_str().unwrap(),
            "--template",
            "raw",
        ]);
        assert!(ok, "{so}\n{se}");
        let line = so.lines().rev().find(|l| l.starts_with('{')).unwrap();
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        let nats = got[i]["bits_per_token"].as_f64().unwrap() * std::f64::consts::LN_2;
        let nll = ev["mean_nll"].as_f64().unwrap();
        assert!(
            ((nats - nll) / nll).abs() < 1e-5,
            "{nats} vs eval-loss {nll}"
        );
        assert_eq!(got[i]["tokens"], ev["tokens"]);
    }
    // After training: the exact code length of the trained model (`rates`, token by token).
    let rates_dir = dir.path().join("rates");
    let (ok, so, se) = elastica(&[
        "rates",
        "--models",
        out.to_str().unwrap(),
        "--data",
        &track,
        "--template",
        "raw",
        "--out",
        rates_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{so}\n{se}");
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rates_dir.join("rates.json")).unwrap())
            .unwrap();
    let exact = exact.as_array().unwrap();
    for (i, name) in ["pos", "neg"].iter().enumerate() {
        let e = exact.iter().find(|r| r["dataset"] == *name).unwrap();
        let t = &got[4 + i];
        let (a, b) = (
            t["bits_per_token"].as_f64().unwrap(),
            e["bits_per_token"].as_f64().unwrap(),
        );
        assert!(
            ((a - b) / b).abs() < 1e-4,
            "{name}: tracked {a} vs rates {b}"
        );
        assert_eq!(t["tokens"], e["tokens"]);
    }
    // Training moved the rates: the trained-on positive words got cheaper.
    let p0 = got[0]["bits_per_token"].as_f64().unwrap();
    let p6 = got[4]["bits_per_token"].as_f64().unwrap();
    assert!(p6 < p0, "pos rate {p0} -> {p6}");
    // A malformed spec is named.
    let (ok, _, se) = run(&dir.path().join("bad"), &["--track-rates", "pos.jsonl"]);
    assert!(!ok && se.contains("NAME=FILE"), "{se}");
}

/// A tracked set may hold conversations (as `generate` writes them), measured under the chat
/// template as `eval-loss --schema conversation` measures them; a set that cannot be read,
/// or conversations under another template, are refused before `--out` exists.
#[test]
fn tracked_conversations_equal_eval_loss_and_bad_sets_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = fixtures.join("models/tiny-qwen2");
    let model = model.to_str().unwrap();
    let chat = fixtures.join("chat/sft.jsonl");
    let text = std::fs::read_to_string(&chat).unwrap();
    let convs = dir.path().join("convs.jsonl");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("messages")).collect();
    std::fs::write(&convs, lines.join("\n") + "\n").unwrap();
    let train = dir.path().join("train.jsonl");
    write_pairs(&train, &[("a", " b"), ("c", " d")]);
    let run = |out: &Path, track: &str, template: &str| {
        let (data, out) = (train.to_str().unwrap(), out.to_str().unwrap());
        elastica(&[
            "train",
            "--model",
            model,
            "--data",
            data,
            "--out",
            out,
            "--template",
            template,
            "--max-steps",
            "1",
            "--batch-size",
            "2",
            "--track-rates",
            track,
        ])
    };
    let track = format!("chat={}", convs.display());
    let out = dir.path().join("run");
    let (ok, so, se) = run(&out, &track, "chat");
    assert!(ok, "{so}\n{se}");
    let got = rows(&out.join("rates.jsonl"));
    let (ok, so, se) = elastica(&[
        "eval-loss",
        "--model",
        model,
        "--data",
        convs.to_str().unwrap(),
        "--schema",
        "conversation",
    ]);
    assert!(ok, "{so}\n{se}");
    let line = so.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let ev: serde_json::Value = serde_json::from_str(line).unwrap();
    let nats = got[0]["bits_per_token"].as_f64().unwrap() * std::f64::consts::LN_2;
    let nll = ev["mean_nll"].as_f64().unwrap();
    assert!(
        ((nats - nll) / nll).abs() < 1e-5,
        "{nats} vs eval-loss {nll}"
    );
    assert_eq!(got[0]["tokens"], ev["tokens"]);

    for (track, template, says) in [
        (track.as_str(), "raw", "holds conversations"),
        ("x=/nonexistent/set.jsonl", "chat", "/nonexistent/set.jsonl"),
    ] {
        let fresh = dir.path().join("fresh");
        let (ok, _, se) = run(&fresh, track, template);
        assert!(!ok && se.contains(says), "{se}");
        assert!(!fresh.exists(), "a refused run created --out");
    }
    // So are a measuring interval of 0 and a log directory that cannot be made.
    let fresh = dir.path().join("fresh");
    let (t, f) = (train.to_str().unwrap(), fresh.to_str().unwrap());
    let not_a_dir = train.join("logs");
    for (extra, says) in [
        (["--track-every", "0"], "--track-every must be at least 1"),
        (
            ["--track-records", "0"],
            "--track-records must be at least 1",
        ),
        (
            ["--log-dir", not_a_dir.to_str().unwrap()],
            "cannot create the log directory",
        ),
    ] {
        let (ok, _, se) = elastica(
            &[
                &["train", "--model", model, "--data", t, "--out", f][..],
                &["--track-rates", &track, "--template", "chat"],
                &extra,
            ]
            .concat(),
        );
        assert!(!ok && se.contains(says), "{se}");
        assert!(!fresh.exists(), "a refused run created --out");
    }
}

/// A tracked set whose records are cut to `--max-length` is reported once, not at each of
/// the run's measurements (the set does not change between them).
#[test]
fn a_cut_tracked_set_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-llama");
    let train = dir.path().join("train.jsonl");
    write_pairs(
        &train,
        &[("a", " b"), ("c", " d"), ("e", " f"), ("g", " h")],
    );
    let long = dir.path().join("long.jsonl");
    let words = " the film was good and warm".repeat(20);
    write_pairs(&long, &[("the play was", &words)]);
    let out = dir.path().join("run");
    let (ok, so, se) = elastica(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        train.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--template",
        "raw",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--max-length",
        "24",
        "--track-rates",
        &format!("long={}", long.display()),
        "--track-every",
        "1",
    ]);
    assert!(ok, "{so}\n{se}");
    assert_eq!(rows(&out.join("rates.jsonl")).len(), 5, "steps 0..=4");
    let said = se
        .matches("1 of 1 records were longer than max_length = 24")
        .count();
    assert_eq!(said, 1, "{se}");
}
