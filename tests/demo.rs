//! `elastica demo --quick` end to end: every promised file is written, the same seed gives
//! the same results.json, and a rerun in the same directory reuses the finished work.

use std::path::Path;
use std::process::Command;

fn run(out: &Path, extra: &[&str]) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["demo", "--quick", "--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success() && !err.contains("panicked"), "{err}");
    (String::from_utf8_lossy(&o.stdout).into_owned(), err)
}

#[test]
fn quick_demo_writes_every_promised_file_is_deterministic_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (summary, _) = run(&a, &[]);
    assert!(summary.contains("report.md"), "{summary}");
    for claim in ["Compression, signs", "Resistance", "Theory"] {
        assert!(summary.contains(claim), "{claim} missing from\n{summary}");
    }
    for f in [
        "report.md",
        "results.json",
        "results.csv",
        "results.jsonl",
        "rates.csv",
        "rates.jsonl",
        "elasticity.csv",
        "world.json",
        "rebound_tiny-20k.png",
        "rebound_tiny-20k.svg",
        "compression_rates.png",
        "compression_rates.svg",
        "resist/report.md",
        "resist/results.csv",
        "theory/report.md",
        "theory/results.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    for section in [
        "Pre-trained score",
        "n-=60",
        "## Compression",
        "## Resistance",
        "## Theory",
        "## Summary",
    ] {
        assert!(report.contains(section), "{section} missing from\n{report}");
    }
    let rows = std::fs::read_to_string(a.join("results.jsonl")).unwrap();
    assert_eq!(
        rows.lines().count(),
        2 * 3,
        "2 bases x 3 n- values x 1 seed"
    );
    // D_p, D_a and D_t at each of the 3 n- points, for each base.
    let rates = std::fs::read_to_string(a.join("rates.jsonl")).unwrap();
    assert_eq!(rates.lines().count(), 2 * 3 * 3);
    let results = std::fs::read_to_string(a.join("results.json")).unwrap();

    // Same seed, another directory, one worker instead of several: the same numbers.
    let b = dir.path().join("b");
    run(&b, &["--threads", "1"]);
    assert_eq!(
        results,
        std::fs::read_to_string(b.join("results.json")).unwrap(),
        "same seed, different results"
    );

    // A rerun in the same directory reuses the pre-trained bases and the finished units.
    let unit = a.join("cells/tiny-20k-seed1/outcome.json");
    let model = a.join("models/tiny-20k/model.safetensors");
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (unit_t, model_t) = (stamp(&unit), stamp(&model));
    run(&a, &[]);
    assert_eq!(stamp(&unit), unit_t, "a finished unit was recomputed");
    assert_eq!(stamp(&model), model_t, "a pre-trained base was retrained");
    assert_eq!(
        results,
        std::fs::read_to_string(a.join("results.json")).unwrap()
    );

    // Bad settings are named.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "n_plus = [100000]\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args([
            "demo",
            "--quick",
            "--settings",
            bad.to_str().unwrap(),
            "--out",
        ])
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("n+ = 100000"), "{err}");
    std::fs::write(&bad, "n_pluss = [1]\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args([
            "demo",
            "--quick",
            "--settings",
            bad.to_str().unwrap(),
            "--out",
        ])
        .arg(dir.path().join("c"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("bad.toml") && err.contains("n_pluss"),
        "{err}"
    );
}
