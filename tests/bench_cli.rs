//! `elastica bench train` as a user types it: rows whose estimated memory does not fit are
//! skipped with a message (not killed by the out-of-memory killer), and the MFU column says
//! which peak it divides by, with a warning when a ratio exceeds 1.

mod common;

fn bench(extra: &[&str]) -> (bool, String, String) {
    common::bench_tiny("train", extra)
}

#[test]
fn rows_that_do_not_fit_are_skipped_with_a_message() {
    // 1 kB for the step: no row fits.
    let (ok, out, err) = bench(&["--mem-available", "0.000001", "--peak-gflops", "100"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("| reference (no fused kernels) | skipped: needs about")
            && out.contains("GB available"),
        "{out}"
    );
    assert!(err.contains("9 row(s) skipped"), "{err}");
    // Enough memory: the all-fused step is timed.
    let (ok, out, err) = bench(&["--table", "false", "--mem-available", "1"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("kernels on |") && !out.contains("skipped"),
        "{out}"
    );
    assert!(out.contains("best of 7 runs"), "{out}");
}

#[test]
fn mfu_names_its_peak_and_warns_above_one() {
    let (ok, out, err) = bench(&["--table", "false", "--peak-gflops", "0.000001"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("(stated with --peak-gflops)"), "{out}");
    assert!(out.contains("warning: an MFU above 1"), "{out}");
    let (ok, out, _) = bench(&["--table", "false", "--peak-gflops", "1e9"]);
    assert!(ok);
    assert!(!out.contains("MFU above 1"), "{out}");
    let (ok, _, err) = bench(&["--peak-gflops", "0"]);
    assert!(
        !ok && err.contains("--peak-gflops must be a positive"),
        "{err}"
    );
}

#[test]
fn bench_dpo_times_a_dpo_step_against_sft_on_the_same_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let (json, torch) = (dir.path().join("dpo.json"), dir.path().join("torch.json"));
    // The PyTorch side's JSON line (scripts/bench_torch.py --only dpo), for the ratio column.
    std::fs::write(
        &torch,
        r#"{"dpo_tok_s_eager": 1e-9, "dpo_tok_s_sdpa": 2e-9, "sft_same_tok_s_eager": 3e-9}"#,
    )
    .unwrap();
    let (json_s, torch_s) = (json.to_str().unwrap(), torch.to_str().unwrap());
    let (ok, stdout, stderr) = common::bench_tiny("dpo", &["--json", json_s, "--torch", torch_s]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("2 pairs (4 sequences)"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows[0]["step"], "DPO");
    assert_eq!(rows[1]["step"], "SFT, same sequences");
    assert_eq!(rows[2]["step"], "KTO");
    for r in rows {
        assert!(r["tok_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["cpu_s_per_step"].as_f64().unwrap() >= 0.0, "{r}");
    }
    // The best of PyTorch's figures under the keys bench_torch.py --only dpo writes.
    assert_eq!(rows[0]["torch_tok_s"].as_f64(), Some(2e-9));
    assert_eq!(rows[1]["torch_tok_s"].as_f64(), Some(3e-9));
    assert!(!stdout.contains("| DPO | 0 |"), "{stdout}");
    // The reference is the starting policy (cached before the first step), so that step's
    // loss is -log sigmoid(0) = ln 2: the reference log-probs line up with the pairs.
    let first = v["first_dpo_loss"].as_f64().unwrap();
    assert!((first - std::f64::consts::LN_2).abs() < 1e-4, "{first}");
    assert_eq!(
        rows[2]["torch_tok_s"],
        serde_json::Value::Null,
        "no KTO figure was given"
    );
}
