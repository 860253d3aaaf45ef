//! End-to-end: `elastica world` writes every promised file, deterministically, and refuses
//! bad arguments with clear messages.

use std::path::Path;
use std::process::Command;

const FILES: [&str; 10] = [
    "pretrain.jsonl",
    "reviews_positive.jsonl",
    "reviews_negative.jsonl",
    "reviews_eval.jsonl",
    "dialogue_safe.jsonl",
    "dialogue_unsafe.jsonl",
    "dialogue_eval.jsonl",
    "tokenizer.json",
    "tokenizer_config.json",
    "world.json",
];

fn world(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["world", "--out"])
        .arg(out)
        .args([
            "--pretrain-tokens",
            "20000",
            "--n-align",
            "30",
            "--n-perturb",
            "20",
            "--n-eval",
            "10",
            "--vocab-size",
            "500",
            "--tokenizer-records",
            "2000",
        ])
        .args(extra)
        .output()
        .expect("cannot run the elastica binary")
}

#[test]
fn world_writes_every_file_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let out = world(&a, &["--seed", "9"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| pretrain.jsonl |"), "{stdout}");
    assert!(world(&b, &["--seed", "9"]).status.success());
    for f in FILES {
        let x = std::fs::read(a.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!x.is_empty(), "{f} is empty");
        assert_eq!(
            x,
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between runs"
        );
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("world.json")).unwrap()).unwrap();
    assert_eq!(m["config"]["seed"], 9);
    assert_eq!(m["files"]["reviews_positive.jsonl"]["records"], 30);
    assert_eq!(m["files"]["dialogue_unsafe.jsonl"]["records"], 20);
    assert_eq!(m["files"]["dialogue_eval.jsonl"]["records"], 10);
    assert!(
        m["files"]["pretrain.jsonl"]["sequence_tokens"]
            .as_u64()
            .unwrap()
            <= 20000
    );
    let eval = std::fs::read_to_string(a.join("reviews_eval.jsonl")).unwrap();
    assert_eq!(eval.lines().count(), 10);
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(
        (tc["bos_token"].as_str(), tc["eos_token"].as_str()),
        (Some("<s>"), Some("</s>"))
    );
    // The library reads the directory back.
    let w = elastica::data::world::World::load(&a).unwrap();
    assert_eq!(w.config().n_align, 30);
}

#[test]
fn bad_arguments_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--positive-fraction", "1.5"],
            "--positive-fraction must be between 0 and 1",
        ),
        (&["--n-align", "0"], "--n-align must be at least 1"),
        (&["--vocab-size", "100"], "--vocab-size must be between"),
        (
            &["--pretrain-tokens", "0"],
            "--pretrain-tokens must be positive",
        ),
    ];
    for (args, msg) in cases {
        let out = world(&tmp.path().join("w"), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(msg),
            "{args:?}: {err}"
        );
    }
    // An output directory that cannot be created: its parent is a regular file.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = world(&file.join("sub"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot create the output directory"),
        "{err}"
    );
}

#[test]
fn help_documents_every_flag_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["world", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--seed",
        "--pretrain-tokens",
        "--positive-fraction",
        "--reviews-fraction",
        "--harmful-fraction",
        "--n-align",
        "--n-perturb",
        "--n-eval",
        "--vocab-size",
        "--tokenizer-records",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert_eq!(help.matches("[default: ").count(), 10, "{help}");
}

/// `elastica pretrain` checks its budget and settings before it makes `--out`: a refused run
/// leaves nothing behind.
#[test]
fn pretrain_refusals_leave_no_output_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path().join("w");
    assert!(world(&w, &[]).status.success());
    let out = tmp.path().join("model");
    for (args, msg) in [
        (
            ["--tokens", "0", "--lr", "1e-3"],
            "holds no whole pre-training record (records are taken whole, in order; the first is longer); raise --tokens",
        ),
        (
            ["--tokens", "5000", "--lr", "0"],
            "lr (--lr) must be a finite number > 0",
        ),
        (
            ["--tokens", "5000", "--batch-size", "0"],
            "batch_size and grad_accum must be at least 1",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
            .args(["pretrain", "--world"])
            .arg(&w)
            .arg("--out")
            .arg(&out)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(msg), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: a refused pretrain made --out");
    }
}
