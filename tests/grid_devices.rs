//! Devices through the grid, through the binary as a user types it: the rebound config's
//! `device`, `backend` and `dtype` keys, `--devices` (one cell per device at once), `cell
//! run --device`, and Slurm's `gpus`. Without the torch feature every request for a GPU must
//! fail before anything is written or submitted, saying how to build with it; with it,
//! `backend = "torch"` on the CPU stands in for CUDA and must train like the fused path.

mod common;
use common::{elastica_env, tiny_rebound as config};
use std::path::Path;

fn rebound(cfg: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "rebound",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    elastica_env(&args, &[("RAYON_NUM_THREADS", "1")])
}

fn results(out: &Path) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(out.join("cells")).unwrap() {
        let p = e.unwrap().path().join("result.json");
        v.push(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
    }
    v
}

#[test]
fn devices_run_one_cell_per_device_and_every_result_records_its_device() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "");
    let out = dir.path().join("run");
    let (ok, _, err) = rebound(&cfg, &out, &["--devices", "cpu,cpu"]);
    assert!(ok, "{err}");
    assert!(err.contains("with 2 job(s) on cpu, cpu"), "{err}");
    let r = results(&out);
    assert_eq!(r.len(), 4);
    for res in &r {
        assert_eq!(res["device"], serde_json::json!({"device": "cpu"}), "{res}");
    }
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("device.json")).unwrap()).unwrap();
    assert_eq!(recorded["device"], "cpu");

    // --jobs that disagrees with the devices, and a GPU listed twice, are refused before
    // anything is written.
    let fresh = dir.path().join("fresh");
    let (ok, _, err) = rebound(&cfg, &fresh, &["--devices", "cpu,cpu", "--jobs", "3"]);
    assert!(
        !ok && err.contains("jobs = 3") && err.contains("2 devices"),
        "{err}"
    );
    assert!(!fresh.exists());
    let (ok, _, err) = rebound(
        &cfg,
        &fresh,
        &["--devices", "cpu,cpu", "--executor", "slurm"],
    );
    assert!(
        !ok && err.contains("--devices applies to the local executor only"),
        "{err}"
    );
    assert!(!fresh.exists());
}

/// Every way of asking for a GPU, in a build without libtorch: a clear error that says how
/// to build with it, and nothing written, planned or submitted.
#[cfg(not(feature = "torch"))]
#[test]
fn without_the_torch_feature_gpu_requests_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let hint = "--features torch";
    let cuda = config(dir.path(), "device = \"cuda\"", "");
    let (ok, _, err) = rebound(&cuda, &out, &[]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("rebound.toml: device = \"cuda\"") && err.contains(hint),
        "{err}"
    );
    assert!(!out.exists());

    let cfg = config(dir.path(), "", "");
    let (ok, _, err) = rebound(&cfg, &out, &["--devices", "cuda:0,cuda:1"]);
    assert!(
        !ok && err.contains("--devices") && err.contains(hint),
        "{err}"
    );
    assert!(!out.exists());

    // Slurm with gpus = 1: refused before sbatch is called (a fake one records calls).
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let called = dir.path().join("sbatch-called");
    let sbatch = bin.join("sbatch");
    std::fs::write(
        &sbatch,
        format!("#!/bin/sh\ntouch {}\necho 1\n", called.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gpus = config(dir.path(), "", "[slurm]\ngpus = 1");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, _, err) = elastica_env(
        &[
            "rebound",
            "--config",
            gpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--executor",
            "slurm",
            "--no-wait",
        ],
        &[("PATH", path.as_str())],
    );
    assert!(!ok, "{err}");
    assert!(
        err.contains("[slurm] gpus >= 1") && err.contains(hint),
        "{err}"
    );
    assert!(!called.exists(), "sbatch was called");
    assert!(!out.exists());

    // `cell run --device cuda` on a planned grid: refused before the cell counts an attempt.
    let (ok, stdout, err) = rebound(&cfg, &out, &["--plan-only"]);
    assert!(ok, "{err}");
    let manifest = stdout.trim();
    let (ok, _, err) = elastica_env(
        &[
            "cell",
            "run",
            "--manifest",
            manifest,
            "--index",
            "0",
            "--device",
            "cuda",
        ],
        &[],
    );
    assert!(
        !ok && err.contains("on cuda") && err.contains(hint),
        "{err}"
    );
    assert!(
        !out.join("cells").exists() || std::fs::read_dir(out.join("cells")).unwrap().count() == 0
    );
}

/// `backend = "torch"` on the CPU (CUDA's stand-in): the training cells go through the
/// libtorch backend, record it, and train like the fused path; `cell run --backend fused`
/// overrides the recorded backend for one cell.
#[cfg(feature = "torch")]
#[test]
fn the_torch_backend_trains_the_cells_like_the_fused_path() {
    let dir = tempfile::tempdir().unwrap();
    let torch = config(dir.path(), "backend = \"torch\"", "");
    let out_t = dir.path().join("torch");
    let (ok, _, err) = rebound(&torch, &out_t, &["--devices", "cpu,cpu"]);
    assert!(ok, "{err}");
    let fused = config(dir.path(), "", "");
    let out_f = dir.path().join("fused");
    let (ok, _, err) = rebound(&fused, &out_f, &[]);
    assert!(ok, "{err}");
    let align = |out: &Path| -> serde_json::Value {
        results(out)
            .into_iter()
            .find(|r| r["kind"] == "rebound.align")
            .unwrap()
    };
    let (t, f) = (align(&out_t), align(&out_f));
    assert_eq!(t["device"]["backend"], "torch", "{t}");
    assert!(f["device"].get("backend").is_none(), "{f}");
    let loss = |r: &serde_json::Value| r["output"]["train"]["final_loss"].as_f64().unwrap();
    let (lt, lf) = (loss(&t), loss(&f));
    assert!(
        ((lt - lf) / lf).abs() < 1e-4,
        "torch {lt} vs fused {lf}: the backends trained differently"
    );

    // A LoRA stage trains on the torch backend too, like the fused path, and saves a PEFT
    // adapter there.
    let lora_t = config(
        dir.path(),
        "backend = \"torch\"",
        "[align]\nlora = { rank = 2 }",
    );
    let (out_lt, out_lf) = (dir.path().join("lora-torch"), dir.path().join("lora-fused"));
    let (ok, _, err) = rebound(&lora_t, &out_lt, &[]);
    assert!(ok, "{err}");
    // (config() rewrites the same file: write the fused one after the torch run.)
    let lora_f = config(dir.path(), "", "[align]\nlora = { rank = 2 }");
    let (ok, _, err) = rebound(&lora_f, &out_lf, &[]);
    assert!(ok, "{err}");
    let (t, f) = (align(&out_lt), align(&out_lf));
    assert_eq!(t["device"]["backend"], "torch", "{t}");
    let (lt, lf) = (loss(&t), loss(&f));
    assert!(
        ((lt - lf) / lf).abs() < 1e-4,
        "LoRA: torch {lt} vs fused {lf}: the backends trained differently"
    );
}

/// `elastica resist` reads the same keys: a device this build cannot use is refused before
/// the run directory is made, naming the config.
#[test]
fn resist_checks_its_device_keys_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = format!(
        "{}/tests/fixtures/models/tiny-llama",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut cases = vec![("device = \"tpu\"", "unknown device \"tpu\"")];
    if !cfg!(feature = "torch") {
        cases.push(("device = \"cuda:1\"", "--features torch"));
    }
    for (keys, want) in cases {
        let cfg = dir.path().join("resist.toml");
        let text = format!(
            "model = {model:?}\n{keys}\n[data]\npath = \"{}/none.jsonl\"\nschema = \"jsonl\"\n",
            dir.path().display()
        );
        std::fs::write(&cfg, text).unwrap();
        let (cfg, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
        let (ok, _, err) = elastica_env(&["resist", "--config", cfg, "--out", o], &[]);
        assert!(
            !ok && err.contains("resist.toml: ") && err.contains(want),
            "{err}"
        );
        assert!(!out.exists());
    }
}
