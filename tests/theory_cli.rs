//! End-to-end: `elastica theory` on a small tree writes every promised file.

use std::process::Command;

#[test]
fn theory_command_writes_results_report_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args([
            "theory",
            "--k",
            "10,100,1000",
            "--depth",
            "6",
            "--seeds",
            "3",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("Slope of log(ratio)") && stdout.contains("Springs in series"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["per_k"].as_array().unwrap().len(), 3);
    assert_eq!(json["runs"].as_array().unwrap().len(), 9);
    let slope = json["fits"]["ideal_secant"]["fit"]["slope"]
        .as_f64()
        .unwrap();
    assert!((slope - 1.0).abs() < 0.2, "slope {slope}");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("# Elasticity theorem") && report.contains("## Springs in series"));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    for stem in ["ratio_vs_k", "regime"] {
        let png = std::fs::read(out.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg"));
    }
}

#[test]
fn theory_command_rejects_bad_parameters() {
    for (args, needle) in [
        (vec!["--depth", "0"], "depth must be at least 1"),
        (vec!["--alpha", "-1"], "alpha"),
        (vec!["--k", "10,-3"], "k = -3"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
            .arg("theory")
            .args(&args)
            .args(["--out", "/nonexistent/never-written"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
