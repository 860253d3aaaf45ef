//! End-to-end tests of `elastica rebound`, `elastica scaling` and `elastica cell` on the
//! tiny-llama fixture with tiny data (refusals as the positive behaviour, compliance as the
//! negative one, the keyword refusal scorer), a few optimizer steps per cell.

mod common;

use common::{cell_result, stderr, tiny_llama, write_refusal_data};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_elastica")
}

/// A config over the data in `dir`; `head` holds the top-level keys.
fn config(dir: &Path, head: &str) -> PathBuf {
    let top = format!("{head}\nkl_epsilon = 0.05");
    common::refusal_rebound_config(dir, &top, "save_every = 2", "")
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).env("RAYON_NUM_THREADS", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// `elastica CMD --config CFG --out OUT EXTRA..` (rebound or scaling) on one rayon thread.
fn grid(cmd: &str, cfg: &Path, out: &Path, extra: &[&str]) -> Output {
    let (cfg, out) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    run(
        &[&[cmd, "--config", cfg, "--out", out], extra].concat(),
        &[],
    )
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

const GRID_2X2: &str = "model = \"MODEL\"\nn_positive = [4, 8]\nn_negative = [0, 4]\nseeds = [1]";

#[test]
fn two_by_two_grid_end_to_end_then_rerun_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let cfg = config(tmp.path(), &GRID_2X2.replace("MODEL", &tiny_llama()));
    let out = tmp.path().join("run");
    let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let r = run(&["rebound", "--config", c, "--out", o], &[]);
    assert!(r.status.success(), "{}", stderr(&r));

    // 1 base + 2 aligned + 2 perturbed rows.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 6, "{csv}");
    assert!(lines[0].starts_with("model,stage,n_positive,n_negative,seed,score"));
    assert!(lines[1].starts_with("base,base,0,0,1,"));
    assert!(csv.contains(",aligned,8,0,1,") && csv.contains(",perturbed,4,4,1,"));
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 5);
    for f in [
        "report.md",
        "tables.tex",
        "summary.json",
        "manifest.json",
        "status.json",
        "config.toml",
        "score_vs_negatives.png",
        "score_vs_negatives.svg",
        "kl_vs_negatives.png",
        "kl_vs_negatives.svg",
        "data/positive.jsonl",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in [
        "Table 3 analogue",
        "Rebound strength",
        "n+ = 8",
        "Definitions",
    ] {
        assert!(report.contains(s), "report.md lacks {s:?}");
    }
    // The aligned model moved away from the base; the base itself has KL 0.
    let aligned = cell_result(&out, "perturb.p8.n0.s1");
    assert!(aligned["output"]["eval"]["kl"].as_f64().unwrap() > 0.0);
    assert_eq!(cell_result(&out, "base.s1")["output"]["eval"]["kl"], 0.0);
    // Perturbed weights are deleted after scoring; aligned ones are kept.
    assert!(!out
        .join("cells/perturb.p8.n4.s1/model/model.safetensors")
        .exists());
    assert!(out
        .join("cells/align.p8.s1/model/model.safetensors")
        .exists());
    // Frozen data: the largest n+.
    let frozen = std::fs::read_to_string(out.join("data/positive.jsonl")).unwrap();
    assert_eq!(frozen.lines().count(), 8);

    // A rerun finds every cell done, trains nothing and rewrites no result.
    let before = mtime(&out.join("cells/align.p8.s1/result.json"));
    let r = run(&["rebound", "--config", c, "--out", o], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("7 already done, 0 finished now"),
        "{}",
        stderr(&r)
    );
    assert_eq!(before, mtime(&out.join("cells/align.p8.s1/result.json")));
    assert_eq!(
        std::fs::read_to_string(out.join("cells/align.p8.s1/attempts"))
            .unwrap()
            .trim(),
        "1"
    );

    // Same seed, same results: a second run directory reproduces the scores and KLs.
    let out2 = tmp.path().join("run2");
    let r = run(
        &["rebound", "--config", c, "--out", out2.to_str().unwrap()],
        &[],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        jsonl,
        std::fs::read_to_string(out2.join("results.jsonl")).unwrap()
    );
}

#[test]
fn a_killed_grid_resumes_without_retraining_finished_cells() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let cfg = config(tmp.path(), &GRID_2X2.replace("MODEL", &tiny_llama()));
    let out = tmp.path().join("run");
    let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let r = run(&["rebound", "--config", c, "--out", o, "--plan-only"], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let manifest = out.join("manifest.json");
    let m = manifest.to_str().unwrap();
    let ids: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&manifest).unwrap())
            .unwrap()["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(ids[1], "align.p4.s1");

    // The grid ran one cell (as a cluster task would), then died.
    let r = run(&["cell", "run", "--manifest", m, "--index", "1"], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let first = mtime(&out.join("cells/align.p4.s1/result.json"));
    // A dependent cell refuses to run before its dependency.
    let p8 = ids
        .iter()
        .position(|i| i == "perturb.p8.n0.s1")
        .unwrap()
        .to_string();
    let r = run(&["cell", "run", "--manifest", m, "--index", &p8], &[]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("needs cell align.p8.s1"),
        "{}",
        stderr(&r)
    );

    // The next attempt dies inside align.p8 after optimizer step 3 of 4 (a checkpoint was
    // written at step 2): that cell fails, its dependents are skipped, the rest finish.
    let r = run(
        &["rebound", "--config", c, "--out", o],
        &[("ELASTICA_INJECT_FAULT", "align.p8.s1@train-step-3")],
    );
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(err.contains("1 failed, 2 skipped"), "{err}");
    assert!(err.contains("injected fault"), "{err}");
    let e = std::fs::read_to_string(out.join("cells/align.p8.s1/error.txt")).unwrap();
    assert!(e.contains("train-step-3"), "{e}");
    assert!(out
        .join("cells/align.p8.s1/model/checkpoints/step-2")
        .exists());
    assert!(out.join("cells/perturb.p4.n4.s1/result.json").exists());
    assert!(
        !out.join("cells/perturb.p8.n0.s1").exists(),
        "dependents are skipped"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Missing cells") && report.contains("perturb.p8.n4.s1"));

    // The rerun resumes align.p8 from its checkpoint and finishes everything, without
    // touching the cells that were done.
    let r = run(&["rebound", "--config", c, "--out", o], &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(first, mtime(&out.join("cells/align.p4.s1/result.json")));
    assert_eq!(cell_result(&out, "align.p4.s1")["attempts"], 1);
    let a8 = cell_result(&out, "align.p8.s1");
    assert_eq!(a8["attempts"], 2);
    assert_eq!(a8["output"]["train"]["resumed_from"], 2);
    assert_eq!(a8["output"]["train"]["steps"], 4);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
}

#[test]
fn cell_run_refuses_a_bad_index_and_an_edited_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let cfg = config(tmp.path(), &GRID_2X2.replace("MODEL", &tiny_llama()));
    let out = tmp.path().join("run");
    let r = grid("rebound", &cfg, &out, &["--plan-only"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let manifest = out.join("manifest.json");
    let m = manifest.to_str().unwrap();
    let r = run(&["cell", "run", "--manifest", m, "--index", "7"], &[]);
    assert!(
        stderr(&r).contains("out of range") && stderr(&r).contains("0 to 6"),
        "{}",
        stderr(&r)
    );
    let r = run(&["cell", "status", "--manifest", m], &[]);
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(
        table.contains("| 6 | perturb.p8.n4.s1 | rebound.perturb | pending | 0 |"),
        "{table}"
    );
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"lr\": 0.01", "\"lr\": 0.02");
    std::fs::write(&manifest, text).unwrap();
    let r = run(&["cell", "run", "--manifest", m, "--index", "0"], &[]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("edited after the grid was planned"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn bad_configs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let check = |head: &str, edit: &dyn Fn(String) -> String, want: &[&str]| {
        let p = config(tmp.path(), head);
        let text = edit(std::fs::read_to_string(&p).unwrap());
        std::fs::write(&p, text).unwrap();
        let r = grid("rebound", &p, &tmp.path().join("bad"), &[]);
        assert!(!r.status.success());
        let e = stderr(&r);
        for w in want {
            assert!(e.contains(w), "missing {w:?} in: {e}");
        }
    };
    let model = format!("model = \"{}\"", tiny_llama());
    // n+ larger than the positive set: both numbers named.
    check(
        &format!("{model}\nn_positive = [4, 50]\nn_negative = [0, 4]"),
        &|t| t,
        &["n_positive asks for up to 50", "has only 12"],
    );
    // An unknown scorer kind lists the valid ones.
    check(
        &format!("{model}\nn_positive = [4]\nn_negative = [0]"),
        &|t| t.replace("kind = \"keywords\"", "kind = \"sentiment\""),
        &["sentiment", "keywords", "classifier"],
    );
    // A missing data file is named.
    check(
        &format!("{model}\nn_positive = [4]\nn_negative = [0, 4]"),
        &|t| t.replace("neg.jsonl", "nope.jsonl"),
        &["nope.jsonl"],
    );
    // A missing model directory is named.
    check(
        "model = \"/nonexistent/model-dir\"\nn_positive = [4]",
        &|t| t,
        &["/nonexistent/model-dir"],
    );
    // Not enough evaluation prompts.
    check(
        &format!("{model}\nn_positive = [4]\nn_negative = [0]"),
        &|t| t.replace("n = 4", "n = 40"),
        &["n = 40", "hold only 4"],
    );
}

#[test]
fn scaling_over_two_models_plots_strength_against_x() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let m = tiny_llama();
    let head = format!(
        "x_label = \"parameters\"\nn_positive = [8]\nn_negative = [0, 4]\nseeds = [1]\n\
         models = [{{name = \"small\", path = \"{m}\", x = 1e5}}, {{name = \"large\", path = \"{m}\", x = 1e6}}]"
    );
    let cfg = config(tmp.path(), &head);
    let out = tmp.path().join("scale");
    let r = grid("scaling", &cfg, &out, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    for f in [
        "scaling.csv",
        "score_vs_negatives_small.png",
        "kl_vs_negatives_large.svg",
        "report.md",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(out.join("cells/small.align.p8.s1/result.json").exists());
    let csv = std::fs::read_to_string(out.join("scaling.csv")).unwrap();
    assert!(csv.starts_with("model,x,n_positive,gain"));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Scaling: rebound strength vs parameters"));
    // Scaling needs x on every model.
    let bad = config(tmp.path(), &head.replace(", x = 1e6", ""));
    let r = grid("scaling", &bad, &out, &[]);
    assert!(
        stderr(&r).contains("\"large\" has no `x`"),
        "{}",
        stderr(&r)
    );
}

/// A child process killed (and reaped) when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `elastica status DIR`: (exit code, stdout and stderr).
fn status(out: &Path) -> (Option<i32>, String) {
    let r = run(&["status", out.to_str().unwrap()], &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (r.status.code(), text)
}

/// `status` while a local run is under way: the cell its live process holds is running,
/// the cells it has still to run are pending, and nothing failed (exit 0). Once that
/// process is killed, the cell failed (exit 1) without a Slurm log to point at, and the
/// next step is the experiment command again.
#[test]
fn status_of_a_live_local_run_says_running_not_failed() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let cfg = config(tmp.path(), &GRID_2X2.replace("MODEL", &tiny_llama()));
    let out = tmp.path().join("run");
    let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    // align.p4.s1 hangs (holding its lock) once base.s1 is done.
    let child = Command::new(bin())
        .args(["rebound", "--config", c, "--out", o])
        .env("RAYON_NUM_THREADS", "1")
        .env("ELASTICA_INJECT_FAULT", "align.p4.s1@start:sleep=120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let running = "| align.p4.s1 | rebound.align | running |";
    let t0 = std::time::Instant::now();
    let (code, text) = loop {
        let (code, text) = status(&out);
        if text.contains(running) || t0.elapsed().as_secs() > 90 {
            break (code, text);
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the run ended: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(text.contains(running), "{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(", running 1, done 1, failed 0"), "{text}");
    assert!(
        text.contains("| perturb.p4.n0.s1 | rebound.perturb | pending |")
            && text.contains("| align.p8.s1 | rebound.align | pending |"),
        "{text}"
    );
    assert!(!text.contains("logs/cell-"), "{text}");

    // The run's process dies: its locks go with it.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let (code, text) = status(&out);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("| align.p4.s1 | rebound.align | failed |")
            && text.contains("the process that ran it ended without a result"),
        "{text}"
    );
    assert!(!text.contains("logs/cell-"), "{text}");
    assert!(
        text.contains("rerunning the experiment command") && !text.contains("resubmit"),
        "{text}"
    );
}

/// A truncated result.json is named as unreadable (not "stale"), and neither `collect` nor
/// the experiment command drops that cell from a report: both refuse, naming the file, with
/// the complete report left as it was. Deleting the cell's directory runs it again.
#[test]
fn a_damaged_result_is_named_and_never_dropped_from_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    write_refusal_data(tmp.path(), 12);
    let cfg = config(tmp.path(), &GRID_2X2.replace("MODEL", &tiny_llama()));
    let out = tmp.path().join("run");
    let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let r = grid("rebound", &cfg, &out, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let files = ["report.md", "results.csv", "results.jsonl"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let result = out.join("cells/perturb.p4.n4.s1/result.json");
    let text = std::fs::read_to_string(&result).unwrap();
    std::fs::write(&result, &text[..text.len() / 2]).unwrap();
    let named = result.display().to_string();

    let (code, t) = status(&out);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("| perturb.p4.n4.s1 | rebound.perturb | unreadable |")
            && t.contains(&named)
            && t.contains("not a valid cell result")
            && t.contains("unreadable result 1"),
        "{t}"
    );
    assert!(!t.contains("another definition"), "{t}");

    for args in [
        vec!["collect", o],
        vec!["rebound", "--config", c, "--out", o],
    ] {
        let r = run(&args, &[]);
        let e = stderr(&r);
        assert!(!r.status.success(), "{args:?}: {e}");
        assert!(
            e.contains(&named) && e.contains("not a valid cell result"),
            "{args:?}: {e}"
        );
        for (f, b) in files.iter().zip(&before) {
            assert_eq!(
                &std::fs::read(out.join(f)).unwrap(),
                b,
                "{args:?} changed {f}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(&result).unwrap(),
            text[..text.len() / 2]
        );
    }

    std::fs::remove_dir_all(result.parent().unwrap()).unwrap();
    let r = grid("rebound", &cfg, &out, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    let (code, t) = status(&out);
    assert_eq!(code, Some(0), "{t}");
    assert_eq!(std::fs::read(out.join("results.csv")).unwrap(), before[1]);
}
