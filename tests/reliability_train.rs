//! What a user can rely on from `elastica train` (issue 17; issue 23 items 5, 13, 16), tested
//! through the binary as a user types it: a checkpoint cut short while being removed is
//! skipped and the run resumes to the same weights; a resume with other settings or data is
//! refused; a finished run is not redone; a second process on one --out is refused; bad
//! numbers, dtypes, sizes and shard paths are refused before the first step; a diverging run
//! stops without saving; progress lines appear off a terminal.

mod common;
use common::{elastica, elastica_env, snapshot};

use elastica::data::records::read_jsonl;
use elastica::data::records::Record;
use elastica::data::template::Template;
use elastica::model::checkpoint::load_model;
use elastica::train::{train, TrainConfig, TrainRun, TrainSummary};
use std::path::{Path, PathBuf};
use std::process::Command;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn model() -> String {
    format!("{FIX}/models/tiny-llama")
}

fn data() -> String {
    format!("{FIX}/sft/data.jsonl")
}

fn copy_model(dst: &Path) -> PathBuf {
    common::copy_model_dir(Path::new(&model()), dst)
}

fn set_config(m: &Path, key: &str, value: serde_json::Value) {
    let p = m.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v.as_object_mut().unwrap().insert(key.into(), value);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// The run every test shares: 8 records, 2 per step, 3 epochs = 12 steps, a checkpoint
/// every 2 steps. The CLI's defaults are TrainConfig's.
const ARGS: &[&str] = &[
    "--template",
    "raw",
    "--lr",
    "3e-3",
    "--batch-size",
    "2",
    "--grad-accum",
    "1",
    "--epochs",
    "3",
    "--save-every",
    "2",
];

fn cfg() -> TrainConfig {
    TrainConfig {
        template: Template::Raw,
        lr: 3e-3,
        batch_size: 2,
        grad_accum: 1,
        epochs: 3,
        save_every: 2,
        ..Default::default()
    }
}

fn train_cli(out: &Path, extra: &[&str]) -> (bool, String, String) {
    train_cli_env(out, extra, &[])
}

fn train_cli_env(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let m = model();
    let d = data();
    let mut args = vec![
        "train",
        "--model",
        &m,
        "--data",
        &d,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(ARGS);
    args.extend_from_slice(extra);
    elastica_env(&args, env)
}

/// Which training loop a test drives: the fused path's own entry point (`train::train`, what
/// `elastica train` runs on the CPU) or the backend loop (`backend::train::train`, on the
/// fused backend here; tests/torch_backend.rs drives it on torch).
#[derive(Clone, Copy)]
enum Loop {
    Fused,
    Backend,
}

/// Train the fixture model on `recs` with `c` into `out`; with `kill_after`, the run dies
/// once that step is logged (the hook fails, as a SIGKILL would: no final model, no
/// clean-up), leaving the newest checkpoint.
fn run_loop(
    which: Loop,
    out: &Path,
    c: &TrainConfig,
    recs: &[Record],
    resume: bool,
    kill_after: Option<usize>,
) -> anyhow::Result<TrainSummary> {
    let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
    let mut kill = |l: &elastica::train::sft::StepLog| -> anyhow::Result<()> {
        anyhow::ensure!(Some(l.step) != kill_after, "killed");
        Ok(())
    };
    match which {
        Loop::Fused => {
            let mut hook = |_: &elastica::model::LoadedModel, l: &_| kill(l);
            let run = TrainRun {
                out,
                resume,
                hook: Some(&mut hook),
                progress: false,
            };
            train(&lm, recs, c, run)
        }
        Loop::Backend => {
            let mut model = elastica::backend::fused::FusedModel::new(lm);
            let run = elastica::train::driver::Run {
                out,
                resume,
                progress: false,
                hook: Some(&mut kill),
            };
            elastica::backend::train::train(&mut model, recs, c, run)
        }
    }
}

/// The shared settings' run on `which` loop, killed once step `stop` is logged.
fn killed_after(which: Loop, out: &Path, stop: usize) {
    let recs = read_jsonl(Path::new(&data())).unwrap();
    let e = run_loop(which, out, &cfg(), &recs, false, Some(stop)).unwrap_err();
    assert!(format!("{e:#}").contains("killed"), "{e:#}");
}

/// The fused loop's run, killed once step `stop` is logged.
fn train_killed_after(out: &Path, stop: usize) {
    killed_after(Loop::Fused, out, stop);
}

fn summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn a_checkpoint_cut_short_while_removed_is_skipped_and_resume_ends_on_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let (ok, _, err) = train_cli(&full, &[]);
    assert!(ok, "{err}");
    let want = std::fs::read(full.join("model.safetensors")).unwrap();

    // A complete step-2 checkpoint, from a run killed at step 3.
    let early = dir.path().join("early");
    train_killed_after(&early, 3);
    let step2 = early.join("checkpoints/step-2");
    assert!(step2.join("complete").is_file());

    // A run killed at step 5 holds step-4; put step-2 beside it, then cut step-4 as a kill
    // during its removal does (the marker goes first, then some files).
    let run = dir.path().join("run");
    train_killed_after(&run, 5);
    let ck = run.join("checkpoints");
    std::fs::rename(&step2, ck.join("step-2")).unwrap();
    std::fs::remove_file(ck.join("step-4/complete")).unwrap();
    std::fs::remove_file(ck.join("step-4/optimizer.safetensors")).unwrap();
    let (ok, stdout, err) = train_cli(&run, &["--resume"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("step-4") && err.contains("incomplete"),
        "no warning about the incomplete checkpoint: {err}"
    );
    assert_eq!(summary(&stdout)["resumed_from"], 2);
    assert_eq!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        want,
        "the resumed run does not end on the uninterrupted run's weights"
    );

    // Only an incomplete checkpoint: it is cleaned and the run starts over.
    let only = dir.path().join("only");
    train_killed_after(&only, 5);
    std::fs::remove_file(only.join("checkpoints/step-4/complete")).unwrap();
    let (ok, stdout, err) = train_cli(&only, &["--resume"]);
    assert!(ok, "{err}");
    assert!(summary(&stdout)["resumed_from"].is_null());
    assert_eq!(std::fs::read(only.join("model.safetensors")).unwrap(), want);
    assert!(!only.join("checkpoints").exists());
}

#[test]
fn resume_refuses_other_settings_or_data_and_a_finished_run_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train_killed_after(&run, 5);
    // The CLI's lock file is created by its first call and stays; it holds no data.
    std::fs::File::create(run.join(".train.lock")).unwrap();
    let before = snapshot(&run);
    let other_data = dir.path().join("other.jsonl");
    let mut text = std::fs::read_to_string(data()).unwrap();
    text = text.replacen("blue", "green", 1);
    std::fs::write(&other_data, text).unwrap();
    let refused = |extra: &[&str], expect: &[&str]| {
        let (ok, _, err) = train_cli(&run, extra);
        assert!(!ok, "{extra:?} should be refused");
        for e in expect {
            assert!(err.contains(e), "{extra:?}: error lacks \"{e}\": {err}");
        }
        assert_eq!(
            snapshot(&run),
            before,
            "{extra:?}: a refused resume changed files"
        );
    };
    refused(
        &["--resume", "--lr", "2e-3"],
        &["cannot resume", "lr: 0.003 -> 0.002"],
    );
    refused(&["--resume", "--seed", "7"], &["seed: 42 -> 7"]);
    refused(
        &["--resume", "--batch-size", "4", "--grad-accum", "1"],
        &["batch_size: 2 -> 4"],
    );
    refused(
        &["--resume", "--data", other_data.to_str().unwrap()],
        &["data: 8 examples"],
    );
    let other_model = copy_model(&dir.path().join("other-model"));
    let w = other_model.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let n = "model.norm.weight";
    t.insert(n.into(), (&t[n] * 1.5).unwrap());
    candle_core::safetensors::save(&t, &w).unwrap();
    refused(
        &["--resume", "--model", other_model.to_str().unwrap()],
        &["starting weights (--model / --init)"],
    );
    refused(
        &["--resume", "--max-steps", "3"],
        &["step 4", "past this run's 3 steps", "--max-steps 4"],
    );

    // The same settings resume and finish; a second --resume does nothing at all.
    let (ok, stdout, err) = train_cli(&run, &["--resume"]);
    assert!(ok, "{err}");
    assert_eq!(summary(&stdout)["resumed_from"], 4);
    let finished = snapshot(&run);
    let (ok, stdout, err) = train_cli(&run, &["--resume"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("finished") && err.contains("nothing to do"),
        "{err}"
    );
    assert_eq!(summary(&stdout)["steps"], 12);
    assert_eq!(
        snapshot(&run),
        finished,
        "--resume of a finished run changed files"
    );
    // ...and with other settings it is refused rather than trained over.
    let (ok, _, err) = train_cli(&run, &["--resume", "--lr", "1e-3"]);
    assert!(
        !ok && err.contains("finished run with other settings"),
        "{err}"
    );
    assert_eq!(snapshot(&run), finished);
}

/// Issue 19 item 5: the backend loop checks a resume exactly as the fused loop does, and
/// ends on the fused loop's own bytes.
#[test]
fn the_backend_loop_refuses_and_resumes_as_the_fused_loop() {
    let recs = read_jsonl(Path::new(&data())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The fused loop's run, uninterrupted: the reference bytes.
    let reference = dir.path().join("reference");
    run_loop(Loop::Fused, &reference, &cfg(), &recs, false, None).unwrap();

    let run = dir.path().join("run");
    killed_after(Loop::Backend, &run, 5);
    assert!(run.join("checkpoints/step-4/trainer_state.json").is_file());
    let before = snapshot(&run);
    let backend =
        |c: &TrainConfig, recs: &[Record]| run_loop(Loop::Backend, &run, c, recs, true, None);
    let refused = |c: &TrainConfig, recs: &[Record], expect: &[&str]| {
        let e = format!("{:#}", backend(c, recs).unwrap_err());
        for x in expect {
            assert!(e.contains(x), "error lacks \"{x}\": {e}");
        }
        assert_eq!(snapshot(&run), before, "a refused resume changed files");
    };
    refused(
        &TrainConfig { lr: 2e-3, ..cfg() },
        &recs,
        &["cannot resume", "lr: 0.003 -> 0.002"],
    );
    refused(&TrainConfig { seed: 7, ..cfg() }, &recs, &["seed: 42 -> 7"]);
    refused(&cfg(), &recs[..6], &["data: 8 examples"]);
    refused(
        &TrainConfig {
            max_steps: 3,
            ..cfg()
        },
        &recs,
        &["step 4", "past this run's 3 steps"],
    );

    // The same settings resume and end on the fused loop's bytes.
    let s = backend(&cfg(), &recs).unwrap();
    assert_eq!(s.resumed_from, Some(4));
    assert_eq!(s.steps, 12);
    for f in ["model.safetensors", "train_log.jsonl", "train_config.toml"] {
        assert_eq!(
            std::fs::read(run.join(f)).unwrap(),
            std::fs::read(reference.join(f)).unwrap(),
            "{f} differs from the fused loop's"
        );
    }
    // A second resume does nothing; with other settings it is refused.
    let finished = snapshot(&run);
    let s = backend(&cfg(), &recs).unwrap();
    assert_eq!((s.steps, s.resumed_from), (12, Some(12)));
    assert_eq!(
        snapshot(&run),
        finished,
        "resuming a finished run changed files"
    );
    let e = backend(&TrainConfig { lr: 1e-3, ..cfg() }, &recs).unwrap_err();
    assert!(
        format!("{e:#}").contains("finished run with other settings"),
        "{e:#}"
    );
    assert_eq!(snapshot(&run), finished);
}

#[test]
fn a_second_train_on_one_out_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let held = elastica::util::fsx::try_lock(&out.join(".train.lock"))
        .unwrap()
        .unwrap();
    let (ok, _, err) = train_cli(&out, &[]);
    assert!(!ok, "the second process was not refused");
    assert!(
        err.contains("another elastica process is training into"),
        "{err}"
    );
    assert!(!out.join("train_log.jsonl").exists());
    drop(held);
    let (ok, _, err) = train_cli(&out, &["--max-steps", "1"]);
    assert!(ok, "{err}");
}

#[test]
fn bad_settings_are_refused_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--lr", "inf"],
            "lr (--lr) must be a finite number > 0, got inf",
        ),
        (&["--lr", "NaN"], "lr (--lr)"),
        (&["--lr", "0"], "lr (--lr)"),
        (&["--eps", "0"], "eps (--eps)"),
        (&["--betas", "1,0.95"], "beta1 (--betas) must be in [0, 1)"),
        (&["--clip=-1"], "clip (--clip)"),
        (&["--weight-decay", "nan"], "weight_decay (--weight-decay)"),
        (&["--save-dtype", "int8"], "int8"),
        (
            &["--lora-rank", "4", "--lora-alpha", "1e39"],
            "lora alpha (--lora-alpha) must be a finite number > 0 within float32's range",
        ),
        (
            &["--batch-size", "4294967296", "--grad-accum", "4294967296"],
            "batch_size x grad_accum = 4294967296 x 4294967296 does not fit",
        ),
        (
            &["--epochs", "9223372036854775808"],
            "epochs x steps per epoch = 9223372036854775808 x",
        ),
    ];
    for (extra, expect) in cases {
        let (ok, _, err) = train_cli(&out, extra);
        assert!(!ok, "{extra:?} was accepted");
        assert!(
            err.contains(expect),
            "{extra:?}: error lacks \"{expect}\": {err}"
        );
        assert!(
            !out.join("model.safetensors").exists() && !out.join("train_log.jsonl").exists(),
            "{extra:?}: something was trained"
        );
    }

    // config.json values that cannot run, refused at load with the key named.
    for (key, value, expect) in [
        ("rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps"),
        ("rope_theta", serde_json::json!(0.0), "rope_theta"),
        (
            "max_position_embeddings",
            serde_json::json!(0),
            "max_position_embeddings",
        ),
    ] {
        let m = copy_model(&dir.path().join(key));
        set_config(&m, key, value);
        let (ok, _, err) = common::eval_loss(m.to_str().unwrap(), &data(), &[]);
        assert!(
            !ok && err.contains(expect) && err.contains("config.json"),
            "{key}: {err}"
        );
    }

    // A dtype the model cannot be saved in is found before the first step, not at the end.
    let m = copy_model(&dir.path().join("int8"));
    set_config(&m, "torch_dtype", "int8".into());
    let (ok, _, err) = common::train_cli(m.to_str().unwrap(), &data(), &out, &["--max-steps", "1"]);
    assert!(
        !ok && err.contains("\"int8\"") && err.contains("--save-dtype"),
        "{err}"
    );
    assert!(
        !out.join("train_log.jsonl").exists(),
        "it trained before refusing"
    );
    let (ok, _, err) = common::train_cli(
        m.to_str().unwrap(),
        &data(),
        &out,
        &["--max-steps", "1", "--save-dtype", "bfloat16"],
    );
    assert!(ok, "{err}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["torch_dtype"], "bfloat16");
    let t =
        candle_core::safetensors::load(out.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(t.values().all(|t| t.dtype() == candle_core::DType::BF16));
}

#[test]
fn a_diverging_run_stops_at_its_step_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, _, err) = train_cli(&out, &["--lr", "1e30", "--clip", "0"]);
    assert!(!ok, "a diverging run exited 0");
    assert!(
        err.contains("training stopped at step 2 of 12") && err.contains("not finite"),
        "{err}"
    );
    assert!(
        !out.join("model.safetensors").exists(),
        "non-finite weights were saved"
    );
    let steps = std::fs::read_to_string(out.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(steps, 1, "only the step before the divergence is logged");
    // No checkpoint holds a non-finite value either (checked at every save).
    if let Ok(rd) = std::fs::read_dir(out.join("checkpoints")) {
        for e in rd.flatten() {
            let p = e.path().join("model.safetensors");
            if let Ok(t) = candle_core::safetensors::load(&p, &candle_core::Device::Cpu) {
                for v in t.values() {
                    let x: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
                    assert!(x.iter().all(|x| x.is_finite()), "{}", p.display());
                }
            }
        }
    }
}

#[test]
fn weights_with_nan_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model(&dir.path().join("nan"));
    let p = m.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&p, &candle_core::Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let w = &t[name];
    let mut v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
    v[5] = f32::NAN;
    let bad = candle_core::Tensor::from_vec(v, w.dims(), &candle_core::Device::Cpu).unwrap();
    t.insert(name.to_string(), bad);
    candle_core::safetensors::save(&t, &p).unwrap();
    let (ok, _, err) = common::eval_loss(m.to_str().unwrap(), &data(), &[]);
    assert!(
        !ok && err.contains(name) && err.contains("non-finite"),
        "{err}"
    );
}

#[test]
fn a_shard_index_may_not_leave_the_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("other");
    copy_model(&outside);
    let case = |name: &str, shard: &str, expect: &str| {
        let m = copy_model(&dir.path().join(name));
        std::fs::remove_file(m.join("model.safetensors")).unwrap();
        let t = candle_core::safetensors::load(
            outside.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let map: serde_json::Map<String, serde_json::Value> =
            t.keys().map(|k| (k.clone(), shard.into())).collect();
        std::fs::write(
            m.join("model.safetensors.index.json"),
            serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
        )
        .unwrap();
        let (ok, _, err) = common::eval_loss(m.to_str().unwrap(), &data(), &[]);
        assert!(!ok, "{name}: the shard outside was read");
        assert!(
            err.contains(expect) && err.contains("index.json"),
            "{name}: {err}"
        );
        m
    };
    case(
        "dotdot",
        "../other/model.safetensors",
        "not a plain file path",
    );
    let abs = outside.join("model.safetensors");
    case("absolute", abs.to_str().unwrap(), "not a plain file path");
    #[cfg(unix)]
    {
        let m = dir.path().join("link");
        copy_model(&m);
        std::os::unix::fs::symlink(&abs, m.join("shard.safetensors")).unwrap();
        case("link", "shard.safetensors", "outside the model directory");
    }
}

#[test]
fn absurd_sizes_and_thread_counts_are_refused_or_capped() {
    let dir = tempfile::tempdir().unwrap();
    let m = copy_model(&dir.path().join("m"));
    let out = dir.path().join("run");
    for (key, value) in [
        ("hidden_size", serde_json::json!(1_000_000_000u64)),
        ("vocab_size", serde_json::json!(1_000_000_000_000u64)),
        ("num_hidden_layers", serde_json::json!(1_000_000u64)),
    ] {
        let cfg = dir.path().join(format!("{key}.json"));
        std::fs::copy(m.join("config.json"), &cfg).unwrap();
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v[key] = value;
        std::fs::write(&cfg, v.to_string()).unwrap();
        let (ok, _, err) = elastica(&[
            "train",
            "--init",
            cfg.to_str().unwrap(),
            "--tokenizer",
            m.to_str().unwrap(),
            "--data",
            &data(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!ok, "{key}: accepted");
        assert!(
            err.contains("training this model needs about") && err.contains("GiB of memory"),
            "{key}: {err}"
        );
    }
    let (ok, _, err) = train_cli(
        &out,
        &["--max-steps", "1", "--threads", "18446744073709551615"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("per core") && err.contains("using"), "{err}");
}

#[test]
fn off_a_terminal_progress_is_logged_as_lines_and_help_names_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, _, err) = train_cli_env(&out, &[], &[("ELASTICA_PROGRESS_SECS", "0")]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("train: step "))
        .collect();
    assert_eq!(lines.len(), 13, "a line per step and one at the end: {err}");
    assert!(
        lines[0].starts_with("train: step 1/12 (8.3%) loss "),
        "{}",
        lines[0]
    );
    assert!(
        lines[12].starts_with("train: step 12/12 (100.0%)"),
        "{}",
        lines[12]
    );
    assert!(lines[12].contains("tok/s") && lines[12].contains("eta 0s"));
    // The default interval (30 s) prints only the closing line on a run this short.
    let out2 = dir.path().join("run2");
    let (ok, _, err) = train_cli(&out2, &[]);
    assert!(ok, "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("train: step "))
            .count(),
        1
    );

    let (ok, stdout, _) = elastica(&["train", "--help"]);
    assert!(ok);
    assert!(stdout.contains("--config FILE"), "{stdout}");
    assert!(stdout.contains("--save-dtype"), "{stdout}");
}

/// The dtype named by a saved model's config.json, and whether every tensor is f32.
fn saved_dtype(dir: &Path) -> (String, bool) {
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let t =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    (
        c["torch_dtype"].as_str().unwrap().to_string(),
        t.values().all(|t| t.dtype() == candle_core::DType::F32),
    )
}

#[test]
fn stages_that_are_trained_further_save_float32_from_a_bf16_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = copy_model(&dir.path().join("base"));
    set_config(&base, "torch_dtype", "bfloat16".into());
    let rows = |r: &'static str| {
        (0..4).map(move |i| serde_json::json!({"prompt": format!("Tell me a thing ({i})."), "response": r}))
    };
    common::write_jsonl(&dir.path().join("pos.jsonl"), rows(" No."));
    common::write_jsonl(&dir.path().join("neg.jsonl"), rows(" Yes."));
    std::fs::write(dir.path().join("eval.jsonl"), "{\"prompt\": \"Say it.\"}\n").unwrap();
    let d = dir.path().display();
    let rebound = dir.path().join("rebound.toml");
    std::fs::write(
        &rebound,
        format!(
            "model = {:?}\nn_positive = [4]\nn_negative = [0, 2]\nseeds = [1]\nkeep_models = true\n\
             [positive]\npath = \"{d}/pos.jsonl\"\nschema = \"jsonl\"\n\
             [negative]\npath = \"{d}/neg.jsonl\"\nschema = \"jsonl\"\n\
             [eval]\nprompts = \"{d}/eval.jsonl\"\nn = 1\n\
             [train]\nlr = 0.01\nbatch_size = 2\ngrad_accum = 1\n\
             [generation]\nmax_new_tokens = 2\n[scorer]\nkind = \"keywords\"\n",
            base.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("rebound");
    let (ok, _, err) = common::experiment("rebound", &rebound, &out, &[]);
    assert!(ok, "{err}");
    let cells = out.join("cells");
    let align = cells.join("align.p4.s1/model");
    assert_eq!(saved_dtype(&align), ("float32".to_string(), true));
    let perturb = std::fs::read_dir(&cells)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("perturb.p4.n2"))
        .unwrap()
        .path()
        .join("model");
    assert_eq!(saved_dtype(&perturb), ("float32".to_string(), true));

    let data = dir.path().join("resist.jsonl");
    common::write_jsonl(
        &data,
        (0..12).map(
            |i| serde_json::json!({"prompt": format!("about {i}"), "response": "the cat sat"}),
        ),
    );
    let resist = dir.path().join("resist.toml");
    std::fs::write(
        &resist,
        format!(
            "model = {:?}\nslices = 2\neval_prompts = 4\nseeds = [3]\n\
             [data]\npath = {:?}\nschema = \"jsonl\"\n[generate]\nmax_new_tokens = 2\n\
             [train]\nlr = 1e-3\nbatch_size = 2\ngrad_accum = 1\nmax_length = 96\ntemplate = \"raw\"\n",
            base.display(),
            data.display()
        ),
    )
    .unwrap();
    let out = dir.path().join("resist");
    let (ok, _, err) = common::experiment("resist", &resist, &out, &[]);
    assert!(ok, "{err}");
    for k in [1, 2] {
        let theta = out.join("cells").join(format!("seed3-theta{k}"));
        assert_eq!(saved_dtype(&theta), ("float32".to_string(), true), "θ{k}");
    }
}

#[cfg(unix)]
#[test]
fn an_output_that_is_a_symlink_or_fifo_is_written_through_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hello\"}\n{\"prompt\": \"sky\"}\n").unwrap();
    let gen = |out: &Path| {
        let m = model();
        elastica(&[
            "generate",
            "--model",
            &m,
            "--prompts",
            prompts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "3",
        ])
    };
    // A symlink stays a symlink; its target gets the generations.
    let target = dir.path().join("real.jsonl");
    std::fs::write(&target, "old\n").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (ok, _, err) = gen(&link);
    assert!(ok, "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), 2);

    // A FIFO is written into and stays a FIFO.
    let fifo = dir.path().join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(&fifo).unwrap())
    };
    let (ok, _, err) = gen(&fifo);
    assert!(ok, "{err}");
    assert_eq!(reader.join().unwrap().lines().count(), 2);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    // A directory is refused by name, and left as it was.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (ok, _, err) = gen(&sub);
    assert!(!ok && err.contains("is a directory"), "{err}");
    assert!(sub.is_dir());
}

/// A run that replaces an earlier one in its --out clears what that run left, its finished
/// marker first: a replacement that dies midway never passes for the earlier run finished
/// (a `--resume` with the earlier settings trains it again, to the same weights), and a full
/// run leaves no earlier LoRA adapter for `rates` or `--adapter` to read, nor a LoRA run an
/// earlier model.
#[test]
fn a_replacing_run_clears_the_earlier_runs_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (ok, _, err) = train_cli(&out, &[]);
    assert!(ok, "{err}");
    let first = std::fs::read(out.join("model.safetensors")).unwrap();
    // The replacement diverges at its second step.
    let (ok, _, err) = train_cli(&out, &["--lr", "1e30", "--clip", "0"]);
    assert!(!ok && err.contains("training stopped"), "{err}");
    assert!(!out.join("train_config.toml").exists());
    assert!(!out.join("model.safetensors").exists());
    let (ok, _, err) = train_cli(&out, &["--resume"]);
    assert!(ok && !err.contains("nothing to do"), "{err}");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), first);
    // LoRA over the full run, then full over the LoRA run.
    let (ok, _, err) = train_cli(&out, &["--lora-rank", "2"]);
    assert!(ok, "{err}");
    assert!(out.join("adapter_model.safetensors").exists());
    assert!(
        !out.join("model.safetensors").exists(),
        "the full run's model stayed"
    );
    let (ok, _, err) = train_cli(&out, &[]);
    assert!(ok, "{err}");
    assert!(
        !out.join("adapter_config.json").exists(),
        "the LoRA run's adapter stayed"
    );
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), first);
}

/// A checkpoint whose AdamW moments hold a NaN (a damaged file) is refused at resume, on
/// both loops, naming the tensor and the file, not found steps later as a non-finite loss.
#[test]
fn a_checkpoint_with_a_nan_moment_is_refused_at_resume() {
    let dir = tempfile::tempdir().unwrap();
    for which in [Loop::Fused, Loop::Backend] {
        let run = dir.path().join(match which {
            Loop::Fused => "fused",
            Loop::Backend => "backend",
        });
        killed_after(which, &run, 3);
        let file = run.join("checkpoints/step-2/optimizer.safetensors");
        let dev = candle_core::Device::Cpu;
        let mut ts = candle_core::safetensors::load(&file, &dev).unwrap();
        let name = ts.keys().min().unwrap().clone();
        let t = ts.get(&name).unwrap();
        let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
        ts.insert(name.clone(), nan);
        candle_core::safetensors::save(&ts, &file).unwrap();
        let recs = read_jsonl(Path::new(&data())).unwrap();
        let e = run_loop(which, &run, &cfg(), &recs, true, None).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains(&name) && e.contains("optimizer.safetensors") && e.contains("non-finite"),
            "{e}"
        );
    }
}
