//! `elastica demo --quick` end to end: every promised file is written, and the same seed
//! gives the same results.

use std::process::Command;

#[test]
fn quick_demo_writes_every_promised_file_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let run = |out: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
            .args(["demo", "--quick", "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && !err.contains("panicked"), "{err}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let a = dir.path().join("a");
    let summary = run(&a);
    assert!(summary.contains("report.md"), "{summary}");
    for f in [
        "report.md",
        "results.csv",
        "results.jsonl",
        "world.json",
        "rebound_tiny-20k.png",
        "rebound_tiny-20k.svg",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(
        report.contains("Pre-trained score") && report.contains("n-=60"),
        "{report}"
    );
    let rows = std::fs::read_to_string(a.join("results.jsonl")).unwrap();
    assert_eq!(
        rows.lines().count(),
        2 * 3,
        "2 bases x 3 n- values x 1 seed"
    );
    let b = dir.path().join("b");
    run(&b);
    assert_eq!(
        rows,
        std::fs::read_to_string(b.join("results.jsonl")).unwrap(),
        "same seed, different results"
    );
}
