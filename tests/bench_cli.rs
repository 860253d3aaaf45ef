//! `elastica bench train` as a user types it: rows whose estimated memory does not fit are
//! skipped with a message (not killed by the out-of-memory killer), and the MFU column says
//! which peak it divides by, with a warning when a ratio exceeds 1.

use std::process::Command;

fn bench(extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args([
            "bench", "train", "--layers", "1", "--hidden", "32", "--heads", "2",
        ])
        .args(["--ff", "64", "--vocab", "64", "--seq", "8", "--batch", "2"])
        .args([
            "--steps",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--threads",
            "1",
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
