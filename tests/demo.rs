//! `elastica demo --quick` end to end: every promised file is written, the positive controls
//! hold (so a broken measurement cannot pass as "undecided"), every claim is a three-outcome
//! verdict, the same seed gives the same results.json, and a rerun in the same directory
//! reuses the finished work. Also: bases whose budgets round to the same name stay apart, and
//! off a terminal the demo writes progress lines a log can follow. A refused demo (bad
//! settings, another demo's settings in --out, another demo running there) changes nothing.

mod common;

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

/// `demo --quick --settings SETTINGS --out OUT`, which must be refused: its stderr.
fn refused(settings: &Path, out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["demo", "--quick", "--settings"])
        .arg(settings)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    err
}

#[test]
fn quick_demo_writes_every_promised_file_is_deterministic_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (summary, _) = run(&a, &[]);
    assert!(summary.contains("report.md"), "{summary}");
    for claim in [
        "Compression, dγ(D_p)/dl < 0",
        "Resistance",
        "Theory",
        "More pre-training, stronger rebound",
    ] {
        assert!(summary.contains(claim), "{claim} missing from\n{summary}");
    }
    // Positive controls (alignment raises the margin, negatives lower it, for each base):
    // true by construction, so anything but "held" means the measurement is broken.
    let controls: Vec<&str> = summary.lines().filter(|l| l.contains("Control:")).collect();
    assert_eq!(controls.len(), 4, "{summary}");
    for c in &controls {
        assert!(c.ends_with("-> held"), "positive control failed: {c}");
    }
    // Every judged claim ends in one of the three outcomes, with an interval and a p-value.
    for l in summary.lines().filter(|l| l.contains("rebound (")) {
        assert!(
            ["-> held", "-> reversed", "-> undecided"]
                .iter()
                .any(|v| l.ends_with(v)),
            "{l}"
        );
        assert!(
            (l.contains("p = ") || l.contains("p < ")) && l.contains("(n = 3)"),
            "{l}"
        );
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
        "rebound_tiny-20k_margin.png",
        "rebound_tiny-20k_first_word.svg",
        "compression_rates.png",
        "compression_rates.svg",
        "resist/report.md",
        "resist/results.csv",
        "theory/report.md",
        "theory/results.json",
        "kl_by_position.png",
        "weight_space.svg",
        "instruments/tiny-60k-seed1/outcome.json",
    ] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let report = std::fs::read_to_string(a.join("report.md")).unwrap();
    for section in [
        "Pre-trained score",
        "n-=60",
        "## Settings",
        "### Precision of the measures",
        "### Rebound strength",
        "### Positive controls",
        "## Compression",
        "## Resistance",
        "## Theory",
        "## Beyond the paper",
        "## Summary",
    ] {
        assert!(report.contains(section), "{section} missing from\n{report}");
    }
    let rows = std::fs::read_to_string(a.join("results.jsonl")).unwrap();
    assert_eq!(
        rows.lines().count(),
        2 * 3 * 3,
        "2 bases x 3 n- values x 3 seeds"
    );
    // D_p, its two parts, D_a and D_t at each of the 3 n- points and after the first step,
    // for each base and seed.
    let rates = std::fs::read_to_string(a.join("rates.jsonl")).unwrap();
    assert_eq!(rates.lines().count(), 2 * 3 * 4 * 5);
    // The exact measures are in every row, finite, and the first-word one a probability.
    for l in rows.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let fw = v["first_word"].as_f64().unwrap();
        assert!(
            v["margin"].as_f64().unwrap().is_finite() && (0.0..=1.0).contains(&fw),
            "{l}"
        );
    }
    let results = std::fs::read_to_string(a.join("results.json")).unwrap();
    // The instruments beyond the paper, on the larger tiny base and the first seed: KL by
    // position at every n-, 0 against the aligned model before the perturbation (the same
    // weights), positive against the base; the weight-space numbers after it, finite.
    let v: serde_json::Value = serde_json::from_str(&results).unwrap();
    let ins = &v["instruments"];
    assert_eq!(ins["base"], "tiny-60k", "{ins}");
    let points = ins["points"].as_array().unwrap();
    assert_eq!(points.len(), 3, "one per n-: {ins}");
    let kl = |p: &serde_json::Value, to: &str| -> Vec<f64> {
        p[to]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["mean"].as_f64().unwrap())
            .collect()
    };
    assert!(
        kl(&points[0], "kl_to_aligned")
            .iter()
            .all(|k| k.abs() < 1e-6),
        "{ins}"
    );
    assert!(
        kl(&points[0], "kl_to_base").iter().all(|k| *k > 0.0),
        "{ins}"
    );
    assert!(points[0]["weight_space"].is_null(), "{ins}");
    for p in &points[1..] {
        assert!(kl(p, "kl_to_aligned").iter().any(|k| *k > 0.0), "{ins}");
        let ws = &p["weight_space"];
        for f in ["fraction_undone", "cosine", "norm_ratio"] {
            assert!(ws[f].as_f64().unwrap().is_finite(), "{ins}");
        }
        assert!(ws["cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-9, "{ins}");
    }

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
    let err = refused(&bad, &dir.path().join("c"));
    assert!(err.contains("n+ = 100000"), "{err}");
    std::fs::write(&bad, "n_pluss = [1]\n").unwrap();
    let err = refused(&bad, &dir.path().join("c"));
    assert!(err.contains("bad.toml") && err.contains("n_pluss"), "{err}");
}

/// Issue 17 item 10: budgets of 2000 and 2500 tokens were both "tiny-2k" and shared their
/// model and cell directories; now each has its own, and a true duplicate is refused.
#[test]
fn bases_with_the_same_rounded_budget_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("s.toml");
    let small = "seeds = [1]\nn_plus = [10]\nn_minus = [0, 5]\nresist_slice_records = 0\ntheory = false\neval_prompts = 4\nmax_new_tokens = 4\nprobe_records = 4\nrate_records = 4\ndrop_fit_points = 2\n";
    std::fs::write(
        &settings,
        format!("{small}bases = [{{size = \"tiny\", tokens = 2000}}, {{size = \"tiny\", tokens = 2500}}]\n"),
    )
    .unwrap();
    let out = dir.path().join("run");
    run(&out, &["--settings", settings.to_str().unwrap()]);
    for d in [
        "models/tiny-2k",
        "models/tiny-2500",
        "cells/tiny-2k-seed1",
        "cells/tiny-2500-seed1",
    ] {
        assert!(out.join(d).is_dir(), "{d} missing");
    }
    let rows = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    for (base, tokens) in [("tiny-2k", 2000), ("tiny-2500", 2500)] {
        let mine: Vec<serde_json::Value> = rows
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["base"] == base)
            .collect();
        assert_eq!(mine.len(), 2, "{rows}");
        assert!(
            mine.iter().all(|v| v["pretrain_tokens"] == tokens),
            "{rows}"
        );
    }
    std::fs::write(
        &settings,
        format!("{small}bases = [{{size = \"tiny\", tokens = 2000}}, {{size = \"tiny\", tokens = 2000}}]\n"),
    )
    .unwrap();
    let err = refused(&settings, &dir.path().join("dup"));
    assert!(
        err.contains("tiny-2k") && err.contains("#0 and #1"),
        "{err}"
    );
}

/// Off a terminal (stderr piped, as under nohup or Slurm) the demo writes a progress line per
/// `ELASTICA_PROGRESS_SECS` (0 here: one per job), each naming the job that finished, the
/// last one at 100%.
#[test]
fn demo_writes_progress_lines_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("s.toml");
    std::fs::write(
        &settings,
        "seeds = [1]\nn_plus = [10]\nn_minus = [0, 5]\nresist_slice_records = 0\ntheory = false\neval_prompts = 4\nmax_new_tokens = 4\nprobe_records = 4\nrate_records = 4\ndrop_fit_points = 2\nbases = [{size = \"tiny\", tokens = 2000}]\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["demo", "--quick", "--settings", settings.to_str().unwrap()])
        .arg("--out")
        .arg(dir.path().join("run"))
        .env("ELASTICA_PROGRESS_SECS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err
        .lines()
        // Lines for finished jobs; a "running:" line comes at most once a second, so a
        // fast run may have none.
        .filter(|l| l.starts_with("demo: job ") && l.contains(" done: "))
        .collect();
    // Pre-training, the rebound unit, and the instruments unit of the one base.
    let total = 3;
    assert_eq!(lines.len(), total, "{err}");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(&format!("demo: job {}/{total} (", i + 1)) && l.contains("elapsed"),
            "{l}"
        );
    }
    assert!(lines[0].contains("done: pre-training tiny-2k"), "{err}");
    assert!(lines[total - 1].contains("(100.0%)"), "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("done: rebound unit tiny-2k seed 1")),
        "{err}"
    );
}

/// A small grid for the DPO variant's tests (its `dpo` line added by each).
const SMALL_DPO: &str = "seeds = [1, 2]\nn_plus = [10]\nn_minus = [0, 5]\nresist_slice_records = 0\ntheory = false\ninstruments = false\neval_prompts = 4\nmax_new_tokens = 4\nprobe_records = 4\nrate_records = 4\ndrop_fit_points = 2\nbases = [{size = \"tiny\", tokens = 2000}]\n";

/// [`SMALL_DPO`] plus `extra` written to `dir/s.toml`.
fn small_settings(dir: &Path, extra: &str) -> std::path::PathBuf {
    let settings = dir.join("s.toml");
    std::fs::write(&settings, format!("{SMALL_DPO}{extra}")).unwrap();
    settings
}

/// `out`'s results.json.
fn results(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

/// The DPO variant (issue 20; on in `--full`, here through `--settings`): the same units
/// aligned by DPO on the world's preference pairs, perturbed by the same SFT, reported
/// beside the SFT rebound with its own claims; without it results.json has no such key.
#[test]
fn the_dpo_variant_aligns_by_dpo_and_is_reported_beside_sft() {
    let dir = tempfile::tempdir().unwrap();
    let settings = small_settings(dir.path(), "dpo = { beta = 0.1, lr = 0.002 }\n");
    let out = dir.path().join("run");
    let (summary, _) = run(&out, &["--settings", settings.to_str().unwrap()]);
    // DPO trained each seed's alignment (its reference cache) and the perturbation was SFT.
    for seed in [1, 2] {
        let cell = out.join(format!("cells/tiny-2k-seed{seed}-dpo/nplus10"));
        assert!(cell.join("aligned/dpo_reference.json").is_file(), "{seed}");
        let log = std::fs::read_to_string(cell.join("aligned/train_log.jsonl")).unwrap();
        assert!(log.contains("\"margin\""), "{log}");
        let log = std::fs::read_to_string(cell.join("perturbed/train_log.jsonl")).unwrap();
        assert!(!log.contains("\"margin\""), "{log}");
    }
    let results = results(&out);
    let dpo = &results["dpo_rebound"];
    assert_eq!(dpo["beta"], 0.1, "{dpo}");
    let rows = dpo["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{dpo}");
    // The DPO-aligned model (n- = 0) is not the pre-trained one: the in-memory model trained.
    let base_margin = results["base_scores"][0]["margin"].as_f64().unwrap();
    for r in rows.iter().filter(|r| r["n_minus"] == 0) {
        assert!(r["margin"].as_f64().unwrap() != base_margin, "{r}");
    }
    let sft_rows = results["rebound"].as_array().unwrap();
    assert_ne!(sft_rows[0]["margin"], rows[0]["margin"]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## Rebound after DPO alignment")
            && report.contains("DPO variant: alignment by DPO (sigmoid loss, beta 0.1, lr 0.002"),
        "{report}"
    );
    let line = summary
        .lines()
        .find(|l| l.contains("DPO vs SFT alignment, tiny-2k"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        [
            "-> DPO-aligned models rebound faster",
            "-> DPO-aligned models rebound slower",
            "-> cannot tell"
        ]
        .iter()
        .any(|v| line.ends_with(v))
            && line.contains("(n = 2)"),
        "{line}"
    );
    assert!(summary.contains("DPO control:") && summary.contains("Rebound after DPO:"));
    // Without the variant results.json has no DPO key (the default demo's file is unchanged).
    let plain = dir.path().join("plain");
    std::fs::write(
        &settings,
        std::fs::read_to_string(&settings)
            .unwrap()
            .replace("dpo = { beta = 0.1, lr = 0.002 }\n", ""),
    )
    .unwrap();
    run(&plain, &["--settings", settings.to_str().unwrap()]);
    let text = std::fs::read_to_string(plain.join("results.json")).unwrap();
    assert!(!text.contains("dpo"), "{text}");
}

/// The variant under another preference loss (`[dpo] loss = "kto"`): KTO trains each seed's
/// alignment (z0 in its log) and the section, claims and settings line name KTO; a SimPO
/// gamma given to another loss is refused before anything runs.
#[test]
fn the_dpo_variant_takes_the_kto_loss() {
    let dir = tempfile::tempdir().unwrap();
    let settings = small_settings(
        dir.path(),
        "dpo = { beta = 0.1, lr = 0.002, loss = \"kto\" }\n",
    );
    let out = dir.path().join("run");
    let (summary, _) = run(&out, &["--settings", settings.to_str().unwrap()]);
    for seed in [1, 2] {
        let cell = out.join(format!("cells/tiny-2k-seed{seed}-dpo/nplus10"));
        let log = std::fs::read_to_string(cell.join("aligned/train_log.jsonl")).unwrap();
        assert!(log.contains("\"kl\""), "{log}");
    }
    assert_eq!(results(&out)["dpo_rebound"]["loss"], "kto");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## Rebound after KTO alignment")
            && report.contains("aligned by **KTO** instead of SFT: kto loss")
            && report.contains("DPO variant: alignment by KTO (kto loss"),
        "{report}"
    );
    assert!(summary.contains("KTO control:") && summary.contains("Rebound after KTO:"));
    assert!(
        summary.contains("KTO vs SFT alignment, tiny-2k"),
        "{summary}"
    );
    let settings = small_settings(
        dir.path(),
        "dpo = { beta = 0.1, lr = 0.002, simpo_gamma = 1.0 }\n",
    );
    let not_run = dir.path().join("refused");
    let err = refused(&settings, &not_run);
    assert!(err.contains("simpo_gamma"), "{err}");
    assert!(!not_run.exists());
}

/// [`SMALL_DPO`] with the lines of `lines`' keys replaced by `lines` (TOML refuses a key given
/// twice, which would be refused for the wrong reason), written to `dir/<name>.toml`.
fn small_with(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
    let keys: Vec<String> = lines.iter().map(|l| key(l)).collect();
    let mut text: String = SMALL_DPO
        .lines()
        .filter(|l| !keys.contains(&key(l)))
        .map(|l| format!("{l}\n"))
        .collect();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// `demo --quick --out OUT EXTRA...`: success and stderr.
fn demo(out: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["demo", "--quick", "--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    (o.status.success(), err)
}

/// Bad settings were refused only after the world and the models were written (and
/// rewrote an existing run's demo_config.json, NaN as null): now every one is refused before
/// anything is written, leaving an existing run byte for byte as it was and creating nothing
/// in a new directory. A budget too small for one pre-training record needs the world, which
/// is generated in memory and checked before it is written.
#[test]
fn a_demo_refused_for_its_settings_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let good = small_settings(dir.path(), "");
    run(&out, &["--settings", good.to_str().unwrap()]);
    let before = common::snapshot(&out);
    let cases: &[(&[&str], &str)] = &[
        (
            &["align_lr = nan"],
            "align_lr must be a finite number above 0",
        ),
        (&["seeds = []"], "seeds is empty"),
        (&["n_plus = [0]"], "n_plus holds 0"),
        (&["n_minus = [5]"], "n_minus must start at 0"),
        (&["bases = []"], "bases is empty"),
        (&["temperature = -1.0"], "temperature"),
        (&["positive_fraction = 2.0"], "positive_fraction"),
        (&["eval_prompts = 0"], "eval_prompts"),
        (&["drop_fit_points = 3"], "drop_fit_points = 3"),
        (
            &["resist_slice_records = 4", "resist_seeds = []"],
            "resist_seeds is empty",
        ),
        (
            &["bases = [{size = \"tiny\", tokens = 5}]"],
            "base tiny-5: a budget of 5 tokens holds no whole pre-training record (records \
             are taken whole, in order; the first is longer); raise the base's `tokens` in the \
             demo settings' `bases`",
        ),
    ];
    for (i, (lines, want)) in cases.iter().enumerate() {
        let bad = small_with(dir.path(), &format!("bad{i}"), lines);
        let fresh = dir.path().join(format!("fresh{i}"));
        let err = refused(&bad, &fresh);
        assert!(err.contains(want), "{lines:?}: {err}");
        assert!(!fresh.exists(), "{lines:?} created {}", fresh.display());
        // Over the run (the world-dependent one as other settings, before its world).
        refused(&bad, &out);
        assert!(
            common::snapshot(&out) == before,
            "{lines:?} changed the run"
        );
    }
}

/// A demo with other settings over an existing run overwrote its world, models and cells
/// and was refused only at the resistance section, leaving a run of two settings. Now it is
/// refused before anything is written, naming what differs; the same settings still resume.
#[test]
fn other_settings_over_an_existing_run_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let good = small_settings(dir.path(), "");
    let good = good.to_str().unwrap();
    run(&out, &["--settings", good]);
    let before = common::snapshot(&out);
    let (ok, err) = demo(&out, &["--settings", good, "--seed", "7"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("holds a demo run made with other settings")
            && err.contains("seed 42 there, 7 here")
            && err.contains("another --out"),
        "{err}"
    );
    let other = small_with(dir.path(), "other", &["seeds = [1]"]);
    let (ok, err) = demo(&out, &["--settings", other.to_str().unwrap()]);
    assert!(!ok && err.contains("seeds [1,2] there, [1] here"), "{err}");
    assert!(
        common::snapshot(&out) == before,
        "a refused demo changed the run"
    );
    // The same settings again: the finished run is reused, its results unchanged.
    run(&out, &["--settings", good]);
    assert_eq!(
        std::fs::read(out.join("results.json")).unwrap(),
        before[&out.join("results.json")]
    );
}

/// Two demos into one --out raced (the second wiped the first's models): a demo holds
/// `--out/.demo.lock` (the lock `train --out` and grid cells take) and a second is refused
/// while it is held, changing nothing.
#[test]
fn a_second_demo_into_a_run_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let good = small_settings(dir.path(), "");
    let good = good.to_str().unwrap();
    run(&out, &["--settings", good]);
    let before = common::snapshot(&out);
    let held = elastica::util::fsx::try_lock(&out.join(".demo.lock"))
        .unwrap()
        .unwrap();
    let (ok, err) = demo(&out, &["--settings", good]);
    assert!(!ok, "the second demo was not refused");
    assert!(
        err.contains("another elastica demo is running into"),
        "{err}"
    );
    assert!(
        common::snapshot(&out) == before,
        "a refused demo changed the run"
    );
    drop(held);
    run(&out, &["--settings", good]);
}
