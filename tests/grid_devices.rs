//! Devices through the grid, through the binary as a user types it: the rebound config's
//! `device`, `backend` and `dtype` keys, `--devices` (one cell per device at once), `cell
//! run --device`, and Slurm's `gpus`. Without the torch feature every request for a GPU must
//! fail before anything is written or submitted, saying how to build with it; with it,
//! `backend = "torch"` on the CPU stands in for CUDA and must train like the fused path.

mod common;
use common::{elastica_env, snapshot, tiny_rebound as config};
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

/// `a` and `b` agree to `rel` relative (absolute below 1e-3, where a KL or an NLL is ~0).
#[cfg(feature = "torch")]
fn close(a: &serde_json::Value, b: &serde_json::Value, rel: f64, what: &str) {
    let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!(
        (x - y).abs() <= rel * x.abs().max(1e-3),
        "{what}: torch {x} vs fused {y}"
    );
}

/// Evaluate again on the fused path, on the same (kept) weights, every cell of `out` whose
/// kind is in `kinds`: its result.json is moved aside and `cell run --backend fused` redoes
/// it (a finished training stage is not redone). Returns (torch output, fused output, id).
#[cfg(feature = "torch")]
fn reevaluated_on_fused(
    out: &Path,
    kinds: &[&str],
) -> Vec<(serde_json::Value, serde_json::Value, String)> {
    let manifest = out.join("manifest.json");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let mut pairs = Vec::new();
    for (i, cell) in m["cells"].as_array().unwrap().iter().enumerate() {
        if !kinds.contains(&cell["kind"].as_str().unwrap()) {
            continue;
        }
        let id = cell["id"].as_str().unwrap().to_string();
        let cell_dir = out.join("cells").join(&id);
        let read = |p: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let torch = read(&cell_dir.join("result.json"));
        assert_eq!(torch["device"]["backend"], "torch", "{torch}");
        let mut files = std::collections::BTreeMap::new();
        for e in std::fs::read_dir(&cell_dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                files.insert(p.clone(), std::fs::read_to_string(&p).unwrap());
            }
        }
        std::fs::remove_file(cell_dir.join("result.json")).unwrap();
        let index = i.to_string();
        let args = ["cell", "run", "--manifest", manifest.to_str().unwrap()];
        let (ok, _, err) = elastica_env(
            &[&args[..], &["--index", &index, "--backend", "fused"]].concat(),
            &[("RAYON_NUM_THREADS", "1")],
        );
        assert!(ok, "{err}");
        let fused = read(&cell_dir.join("result.json"));
        assert_eq!(fused["device"]["backend"], "fused", "{fused}");
        // The same greedy tokens, so the same responses; their NLL and KL to 1e-5.
        for (p, text) in files {
            let again = std::fs::read_to_string(&p).unwrap();
            assert_eq!(
                again.lines().count(),
                text.lines().count(),
                "{}",
                p.display()
            );
            for (t, f) in text.lines().zip(again.lines()) {
                let t: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(t).unwrap();
                let f: serde_json::Value = serde_json::from_str(f).unwrap();
                for (key, v) in &t {
                    if ["base_nll", "kl", "kl_aligned"].contains(&key.as_str()) {
                        close(v, &f[key], 1e-5, &format!("{} {key}", p.display()));
                    } else {
                        assert_eq!(v, &f[key], "{} {key}", p.display());
                    }
                }
            }
        }
        pairs.push((torch["output"].clone(), fused["output"].clone(), id));
    }
    pairs
}

/// The cells evaluate on their backend: a torch run's generations, KL (by position), the
/// samples' coherence and the capability kept equal the fused path's on the same weights
/// (greedy tokens the same; NLL and KL to 1e-5 relative, the suite's torch-vs-fused bar).
#[cfg(feature = "torch")]
#[test]
fn the_torch_backend_evaluates_the_cells_like_the_fused_path() {
    let dir = tempfile::tempdir().unwrap();
    let general: String = (0..4)
        .map(|i| format!("{{\"text\": \"The market on day {i} was busy.\"}}\n"))
        .collect();
    std::fs::write(dir.path().join("general.jsonl"), general).unwrap();
    let tail = format!(
        "[capability]\npath = \"{}/general.jsonl\"\nschema = \"jsonl\"\n\
         [measures]\ncapability_n = 4\nkl_to_aligned = true\nweight_space = false\n",
        dir.path().display()
    );
    let cfg = config(dir.path(), "backend = \"torch\"\nkeep_models = true", &tail);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "max_new_tokens = 4",
        "max_new_tokens = 6\ntemperature = 0.0",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("rebound");
    let (ok, _, err) = rebound(&cfg, &out, &[]);
    assert!(ok, "{err}");
    let cells = reevaluated_on_fused(&out, &["rebound.base", "rebound.perturb"]);
    assert_eq!(cells.len(), 3);
    for (t, f, id) in &cells {
        let (te, fe) = (&t["eval"], &f["eval"]);
        assert_eq!(
            te["mean_response_tokens"], fe["mean_response_tokens"],
            "{id}"
        );
        close(&te["coherence_nll"], &fe["coherence_nll"], 1e-5, id);
        close(
            &t["capability"]["mean_nll"],
            &f["capability"]["mean_nll"],
            1e-5,
            id,
        );
        close(&te["kl"], &fe["kl"], 1e-5, id);
        let by_pos =
            |e: &serde_json::Value, key: &str| e[key].as_array().cloned().unwrap_or_default();
        for key in ["kl_by_position", "kl_to_aligned_by_position"] {
            let (a, b) = (by_pos(te, key), by_pos(fe, key));
            assert_eq!(a.len(), b.len(), "{id} {key}");
            for (x, y) in a.iter().zip(&b) {
                close(&x["mean"], &y["mean"], 1e-5, &format!("{id} {key}"));
            }
        }
    }
    // The torch run did evaluate on libtorch: its NLLs are not the fused path's bits (another
    // summation order), only equal to 1e-5.
    let bits = |c: &(serde_json::Value, serde_json::Value, String)| {
        c.0["eval"]["coherence_nll"] != c.1["eval"]["coherence_nll"]
    };
    assert!(
        cells.iter().any(bits),
        "the torch run evaluated on the fused path"
    );
    // The perturbed model differs from the base and the aligned one: the KLs compared are
    // real measurements, not zeros.
    let n4 = &cells.iter().find(|c| c.2.contains("n4")).unwrap().0["eval"];
    assert!(n4["kl"].as_f64().unwrap() > 1e-3 && n4["kl_to_aligned"].as_f64().unwrap() > 1e-3);

    // resist: the generation cells (answers, KL to θ0 by position, coherence, capability).
    let words = ["the cat sat", "a dog ran", "birds fly", "fish swim"];
    common::write_jsonl(
        &dir.path().join("data.jsonl"),
        (0..8).map(|i| {
            serde_json::json!({"prompt": format!("about {}", words[i % 4]),
                "response": format!("{} and {}", words[(i + 1) % 4], words[(i * 3) % 4])})
        }),
    );
    let d = dir.path().display();
    let cfg = dir.path().join("resist.toml");
    let model = format!(
        "{}/tests/fixtures/models/tiny-llama",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::write(
        &cfg,
        format!(
            "model = {model:?}\nbackend = \"torch\"\nslices = 2\ninclude_base = true\neval_prompts = 3\nseeds = [3]\n\
             [data]\npath = \"{d}/data.jsonl\"\nschema = \"jsonl\"\n\
             [capability]\npath = \"{d}/general.jsonl\"\nschema = \"jsonl\"\n\
             [measures]\ncapability_n = 4\n\
             [generate]\nmax_new_tokens = 6\ntemperature = 0.0\n\
             [train]\nlr = 1e-2\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\ntemplate = \"raw\"\n"
        ),
    )
    .unwrap();
    let out = dir.path().join("resist");
    let (ok, _, err) = common::experiment("resist", &cfg, &out, &[]);
    assert!(ok, "{err}");
    let cells = reevaluated_on_fused(&out, &["resist.generate"]);
    assert_eq!(cells.len(), 3);
    for (t, f, id) in &cells {
        let (tm, fm) = (&t["measures"], &f["measures"]);
        close(&tm["kl_to_base"], &fm["kl_to_base"], 1e-5, id);
        close(&tm["coherence_nll"], &fm["coherence_nll"], 1e-5, id);
        close(
            &t["capability"]["mean_nll"],
            &f["capability"]["mean_nll"],
            1e-5,
            id,
        );
    }
    assert!(cells
        .iter()
        .any(|c| c.0["measures"]["kl_to_base"].as_f64().unwrap() > 1e-3));
    let bits = |c: &(serde_json::Value, serde_json::Value, String)| {
        c.0["capability"]["mean_nll"] != c.1["capability"]["mean_nll"]
    };
    assert!(
        cells.iter().any(bits),
        "the torch run evaluated on the fused path"
    );
}

/// A run holds one precision: asking for another dtype on a planned run (the experiment
/// command again, or `cell run --dtype`) is refused before anything is written, naming
/// device.json, both dtypes and the way out (a new --out); the same dtype spelled out resumes.
#[test]
fn a_run_refuses_cells_in_another_dtype_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "");
    let out = dir.path().join("run");
    let (ok, stdout, err) = rebound(&cfg, &out, &["--plan-only"]);
    assert!(ok, "{err}");
    let manifest = stdout.trim().to_string();
    let before = snapshot(&out);
    let refused = |err: &str, was: &str, want: &str| {
        assert!(
            err.contains("device.json")
                && err.contains(&format!("dtype = \"{was}\""))
                && err.contains(&format!("dtype = \"{want}\""))
                && err.contains("new --out"),
            "{err}"
        );
    };
    // `cell run --dtype bf16` on an f32 run: refused before the cell counts an attempt
    // (in this build bf16 is not even runnable; the run's precision is said first).
    let (ok, _, err) = elastica_env(
        &[
            "cell",
            "run",
            "--manifest",
            &manifest,
            "--index",
            "0",
            "--dtype",
            "bf16",
        ],
        &[],
    );
    assert!(!ok);
    refused(&err, "f32", "bf16");
    assert_eq!(snapshot(&out), before, "a refused cell run changed the run");

    // A run made in bf16 (device.json as a GPU machine writes it) resumed with the default
    // f32 config: refused, nothing changed.
    let device = out.join("device.json");
    std::fs::write(&device, r#"{"device": "cuda", "dtype": "bf16"}"#).unwrap();
    let before = snapshot(&out);
    let (ok, _, err) = rebound(&cfg, &out, &[]);
    assert!(!ok);
    refused(&err, "bf16", "f32");
    assert_eq!(snapshot(&out), before, "a refused run changed the run");
    if cfg!(feature = "torch") {
        // With libtorch the bf16 request itself is runnable: the run's f32 still refuses it.
        std::fs::write(&device, r#"{"device": "cpu"}"#).unwrap();
        let bf16 = config(dir.path(), "backend = \"torch\"\ndtype = \"bf16\"", "");
        let before = snapshot(&out);
        let (ok, _, err) = rebound(&bf16, &out, &["--plan-only"]);
        assert!(!ok);
        refused(&err, "f32", "bf16");
        assert_eq!(snapshot(&out), before);
    }

    // The same precision spelled out resumes the run.
    std::fs::write(&device, r#"{"device": "cpu"}"#).unwrap();
    let f32_cfg = config(dir.path(), "dtype = \"f32\"", "");
    let (ok, _, err) = rebound(&f32_cfg, &out, &["--plan-only"]);
    assert!(ok, "{err}");
}

/// `collect` merges only results of the run's precision: a result from a bf16 run copied
/// into an f32 run is refused, naming the cell, and the report stays as it was.
#[test]
fn collect_refuses_a_result_of_another_precision() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "");
    let out = dir.path().join("run");
    let (ok, _, err) = rebound(&cfg, &out, &[]);
    assert!(ok, "{err}");
    let o = out.to_str().unwrap();
    let (ok, _, err) = elastica_env(&["collect", o], &[]);
    assert!(ok, "{err}");

    let cell = std::fs::read_dir(out.join("cells"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let path = cell.join("result.json");
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    r["device"] = serde_json::json!({"device": "cuda", "dtype": "bf16"});
    std::fs::write(&path, r.to_string()).unwrap();
    let before = snapshot(&out);
    let (ok, _, err) = elastica_env(&["collect", o], &[]);
    let id = cell.file_name().unwrap().to_str().unwrap();
    assert!(
        !ok && err.contains(id) && err.contains("dtype = \"bf16\"") && err.contains("device.json"),
        "{err}"
    );
    assert_eq!(snapshot(&out), before, "a refused collect changed the run");
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
    } // A resist run made in bf16 elsewhere: the default f32 config is refused before the
      // data is read or anything is written.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("device.json"),
        r#"{"device": "cpu", "dtype": "bf16"}"#,
    )
    .unwrap();
    let cfg = dir.path().join("resist.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {model:?}\n[data]\npath = \"{}/none.jsonl\"\nschema = \"jsonl\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let before = snapshot(&out);
    let (cfg, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
    let (ok, _, err) = elastica_env(&["resist", "--config", cfg, "--out", o], &[]);
    assert!(
        !ok && err.contains("device.json")
            && err.contains("dtype = \"bf16\"")
            && err.contains("new --out"),
        "{err}"
    );
    assert_eq!(snapshot(&out), before);
}
