//! The core commands end to end through the binary (train -> eval-loss -> generate, with a
//! TOML --config), and every bad input named in the core issue giving a clear error, never a
//! panic.

mod common;
use common::{elastica, snapshot};

use std::path::{Path, PathBuf};
use std::process::Command;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn copy_model(dst: &Path) -> PathBuf {
    common::copy_model_dir(&Path::new(FIX).join("models/tiny-llama"), dst)
}

fn data() -> String {
    format!("{FIX}/sft/data.jsonl")
}

#[test]
fn train_eval_generate_end_to_end_with_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = dir.path().join("train.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = \"{FIX}/models/tiny-llama\"\ndata = \"{}\"\ntemplate = \"raw\"\nlr = 0.003\nbatch_size = 2\ngrad_accum = 1\nepochs = 2\nno_shuffle = true\n",
            data()
        ),
    )
    .unwrap();
    let (ok, stdout, err) = elastica(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["steps"], 8);
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for k in ["step", "loss", "lr", "tokens", "grad_norm"] {
        assert!(lines[0].get(k).is_some(), "train_log lacks {k}");
    }
    assert_eq!(lines[0]["lr"], 0.003, "the config file's lr was not used");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} not saved");
    }

    let eval = |model: &str| -> f64 {
        let (ok, stdout, err) = common::eval_loss(model, &data(), &["--template", "raw"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(
            v["bits_per_token"].as_f64().unwrap() > 0.0
                && v["bits_per_byte"].as_f64().unwrap() > 0.0
        );
        assert_eq!(v["tokens"], 97);
        v["mean_nll"].as_f64().unwrap()
    };
    let before = eval(&format!("{FIX}/models/tiny-llama"));
    let after = eval(out.to_str().unwrap());
    assert!(
        after < before,
        "training did not lower the loss on its data: {before} -> {after}"
    );

    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\":\"The movie\"}\n{\"prompt\":\"I think\"}\n",
    )
    .unwrap();
    let gen = dir.path().join("gen.jsonl");
    let (ok, _, err) = elastica(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        gen.to_str().unwrap(),
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.7",
        "--seed",
        "1",
    ]);
    assert!(ok, "{err}");
    let recs = elastica::data::records::read_jsonl(&gen).unwrap();
    assert_eq!(recs.len(), 2);
    let (ok, stdout, err) = elastica(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "The movie",
        "--max-new-tokens",
        "4",
    ]);
    assert!(ok && !stdout.is_empty(), "{err}");
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let case = |name: &str, edit: &dyn Fn(&Path), expect: &[&str]| {
        let m = copy_model(&dir.path().join(name));
        edit(&m);
        let (ok, _, err) = common::eval_loss(m.to_str().unwrap(), &data(), &[]);
        assert!(!ok, "{name}: should fail");
        for e in expect {
            assert!(err.contains(e), "{name}: error lacks \"{e}\": {err}");
        }
    };
    let set_config = |m: &Path, f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let p = m.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(v.as_object_mut().unwrap());
        std::fs::write(&p, v.to_string()).unwrap();
    };
    case(
        "arch",
        &|m| {
            set_config(m, &|c| {
                c.insert("model_type".into(), "gpt2".into());
            })
        },
        &["gpt2", "config.json", "llama"],
    );
    case(
        "key",
        &|m| {
            set_config(m, &|c| {
                c.remove("hidden_size");
            })
        },
        &["hidden_size", "config.json"],
    );
    case(
        "shape",
        &|m| {
            set_config(m, &|c| {
                c.insert("intermediate_size".into(), 100.into());
            })
        },
        &["shape", "mlp"],
    );
    case(
        "missing",
        &|m| {
            set_config(m, &|c| {
                c.insert("num_hidden_layers".into(), 3.into());
            })
        },
        &["model.layers.2", "missing"],
    );
    case(
        "truncated",
        &|m| {
            let p = m.join("model.safetensors");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        },
        &["model.safetensors"],
    );
    case(
        "pickle",
        &|m| {
            std::fs::remove_file(m.join("model.safetensors")).unwrap();
            std::fs::write(m.join("pytorch_model.bin"), b"not really").unwrap();
        },
        &["pickle", "arbitrary code", "safe_serialization"],
    );
    let (ok, _, err) = common::eval_loss("/nonexistent/dir", &data(), &[]);
    assert!(!ok && err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn bad_data_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let run = |content: &str, extra: &[&str]| -> (bool, String) {
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, content).unwrap();
        let mut args = vec![
            "train",
            "--model",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/models/tiny-llama"
            ),
            "--data",
            p.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "1",
            "--template",
            "raw",
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = elastica(&args);
        (ok, err)
    };
    let (ok, err) = run(
        "{\"prompt\":\"a\",\"response\":\"b\"}\n{\"prompt\": 3, \"response\": \"x\"}\n",
        &[],
    );
    assert!(
        !ok && err.contains("line 2") && err.contains("d.jsonl") && err.contains("prompt"),
        "{err}"
    );
    let (ok, err) = run("not json\n", &[]);
    assert!(!ok && err.contains("line 1"), "{err}");
    let (ok, err) = run("", &[]);
    assert!(!ok && err.contains("no records"), "{err}");
    let long = "word ".repeat(200);
    let (ok, err) = run(&format!("{{\"prompt\":\"a\",\"response\":\"{long}\"}}\n{{\"prompt\":\"a\",\"response\":\"b\"}}\n"), &["--max-length", "32"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("1 of 2 records") && err.contains("truncated"),
        "{err}"
    );
    let (ok, err) = run(
        "{\"prompt\":\"a\",\"response\":\"b\"}\n",
        &["--template", "chat"],
    );
    assert!(!ok && err.contains("chat_template"), "{err}");
}

#[test]
fn a_named_blas_that_cannot_be_used_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_blas = dir.path().join("libnot-blas.so");
    std::fs::write(&not_blas, "not a shared library").unwrap();
    for lib in [not_blas.to_str().unwrap(), "/no/such/libopenblas.so.0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_elastica"))
            .args(["bench", "sgemm", "--rounds", "1"])
            .env("ELASTICA_BLAS", lib)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ELASTICA_BLAS={lib} was accepted");
        assert!(
            err.contains("ELASTICA_BLAS") && err.contains(lib) && !err.contains("panicked"),
            "{err}"
        );
    }
}

/// `rebound`, `scaling` and `resist` take one shared set of grid arguments.
#[test]
fn grid_commands_share_their_grid_arguments() {
    for cmd in ["rebound", "scaling", "resist"] {
        let (ok, stdout, err) = elastica(&[cmd, "--help"]);
        assert!(ok, "{cmd}: {err}");
        for flag in ["--out", "--jobs", "--threads", "--executor", "--no-wait"] {
            assert!(
                stdout.contains(flag),
                "{cmd} --help lacks {flag}:\n{stdout}"
            );
        }
    }
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(&dir.path().join("model"));
    let adapter = common::copy_model_dir(
        &Path::new(FIX).join("lora/peft-llama"),
        &dir.path().join("ad"),
    );
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"hello\"}\n").unwrap();
    let text = dir.path().join("in.txt");
    std::fs::write(&text, "hello world").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    let before = snapshot(dir.path());
    let (m, d, p, t) = (
        model.to_str().unwrap(),
        data(),
        prompts.to_str().unwrap(),
        text.to_str().unwrap(),
    );
    let dot = format!("{m}/.");
    let l = link.to_str().unwrap();
    let a = adapter.to_str().unwrap();
    let gen = [
        "generate",
        "--model",
        m,
        "--prompts",
        p,
        "--out",
        p,
        "--max-new-tokens",
        "2",
    ];
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["merge", "--model", m, "--adapter", a, "--out", l],
        vec!["merge", "--model", m, "--adapter", a, "--out", a],
        gen.to_vec(),
        vec!["score", "--data", p, "--scorer", "keywords", "--out", p],
        vec!["compress", "--model", m, t, t],
    ];
    for out in [dot.as_str(), l] {
        let train = [
            "train",
            "--model",
            m,
            "--data",
            &d,
            "--out",
            out,
            "--max-steps",
            "1",
        ];
        cases.push(train.to_vec());
    }
    for args in cases {
        let (ok, _, err) = elastica(&args);
        assert!(!ok && err.contains("destroy the input"), "{args:?}: {err}");
    }
    assert!(
        snapshot(dir.path()) == before,
        "a refused command changed its input"
    );
}

/// A `--config` file spells `--no-shuffle` as the run stores it (`shuffle = false`), and a
/// key that is no flag is refused naming the file, before `--out` exists.
#[test]
fn config_files_spell_negated_switches_and_refuse_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("train.toml");
    let model = format!("{FIX}/models/tiny-llama");
    let run = |body: &str, out: &Path| {
        std::fs::write(&cfg, body).unwrap();
        let (c, o) = (cfg.to_str().unwrap(), out.to_str().unwrap());
        let args = [
            "train",
            "--config",
            c,
            "--model",
            &model,
            "--data",
            &data(),
            "--out",
            o,
        ];
        elastica(&[&args[..], &["--max-steps", "1", "--batch-size", "2"]].concat())
    };
    let out = dir.path().join("run");
    let (ok, _, err) = run("shuffle = false\n", &out);
    assert!(ok, "{err}");
    let stored = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(stored.contains("shuffle = false"), "{stored}");
    let bad = dir.path().join("bad");
    let (ok, _, err) = run("shufle = false\n", &bad);
    assert!(
        !ok && err.contains("train.toml") && err.contains("unknown key `shufle`"),
        "{err}"
    );
    assert!(!bad.exists());
}

/// A tied checkpoint (tiny-qwen2) that also stores an `lm_head.weight`: loaded when the head
/// equals the embedding, refused, naming the key, when it differs (transformers 4 and 5
/// would read two different models from it).
#[test]
fn a_tied_checkpoint_with_a_different_stored_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::copy_model_dir(
        &Path::new(FIX).join("models/tiny-qwen2"),
        &dir.path().join("m"),
    );
    let file = model.join("model.safetensors");
    let dev = candle_core::Device::Cpu;
    let mut ts = candle_core::safetensors::load(&file, &dev).unwrap();
    let embed = ts.get("model.embed_tokens.weight").unwrap().clone();
    let eval = || {
        let m = model.to_str().unwrap();
        elastica(&["eval-loss", "--model", m, "--data", &data()])
    };
    let (ok, want, err) = eval();
    assert!(ok, "{err}");
    ts.insert("lm_head.weight".into(), embed.clone());
    candle_core::safetensors::save(&ts, &file).unwrap();
    let (ok, got, err) = eval();
    assert!(ok && got == want, "{err}");
    ts.insert("lm_head.weight".into(), (embed * 2.0).unwrap());
    candle_core::safetensors::save(&ts, &file).unwrap();
    let (ok, _, err) = eval();
    assert!(
        !ok && err.contains("tie_word_embeddings") && err.contains("lm_head.weight"),
        "{err}"
    );
}

/// A checkpoint whose forward overflows (finite weights, logits past f32) is refused by
/// `eval-loss` and `generate`, not reported as a null loss or answered with garbage.
#[test]
fn a_forward_that_overflows_is_refused_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(&dir.path().join("model"));
    let file = model.join("model.safetensors");
    let dev = candle_core::Device::Cpu;
    let mut ts = candle_core::safetensors::load(&file, &dev).unwrap();
    let head = ts.get("lm_head.weight").unwrap();
    ts.insert("lm_head.weight".into(), (head * 1e38).unwrap());
    candle_core::safetensors::save(&ts, &file).unwrap();
    let m = model.to_str().unwrap();
    let (ok, out, err) = elastica(&["eval-loss", "--model", m, "--data", &data()]);
    assert!(
        !ok && err.contains("NLL of records 1..") && err.contains("overflows"),
        "{out}\n{err}"
    );
    for temp in ["0", "1"] {
        let args = [
            "generate",
            "--model",
            m,
            "--prompt",
            "hello",
            "--temperature",
            temp,
        ];
        let (ok, out, err) = elastica(&args);
        assert!(
            !ok && err.contains("non-finite logits"),
            "{temp}: {out}\n{err}"
        );
    }
}

/// A tokenizer token past the model's vocab_size is refused when a text holds it, naming the
/// token and config.json, before `train` makes its --out.
#[test]
fn a_token_the_model_has_no_embedding_for_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::copy_model_dir(
        &Path::new(FIX).join("models/tiny-qwen2"),
        &dir.path().join("m"),
    );
    let tj = model.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": 4000,
        "content": "<extra>", "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": false}));
    std::fs::write(&tj, tok.to_string()).unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"hi <extra>\", \"response\": \"ok\"}\n",
    )
    .unwrap();
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    for args in [
        vec!["eval-loss", "--model", m, "--data", d],
        vec![
            "train",
            "--model",
            m,
            "--data",
            d,
            "--out",
            o,
            "--max-steps",
            "1",
        ],
        vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "hi <extra>",
            "--max-new-tokens",
            "2",
        ],
    ] {
        let (ok, _, err) = elastica(&args);
        assert!(
            !ok && err.contains("\"<extra>\" (id 300)") && err.contains("vocab_size = 300"),
            "{args:?}: {err}"
        );
    }
    assert!(!out.exists());
    // Text without it runs.
    let (ok, _, err) = elastica(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    assert!(ok, "{err}");
}

/// A record cut by --max-length is scored per byte of what was kept (not of the whole
/// response), with a warning; a cut that keeps no counted token says so.
#[test]
fn a_cut_record_counts_only_the_bytes_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.jsonl");
    let response = "word ".repeat(100);
    let rows = [
        serde_json::json!({"prompt": "Hi", "response": response}),
        serde_json::json!({"text": response}),
    ];
    common::write_jsonl(&data, rows);
    let (m, d) = (
        format!("{FIX}/models/tiny-llama"),
        data.to_str().unwrap().to_string(),
    );
    let run = |extra: &[&str]| {
        let (ok, out, err) = common::eval_loss(&m, &d, &[&["--template", "raw"], extra].concat());
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        (v, err)
    };
    let (full, err) = run(&[]);
    assert!(!err.contains("were cut"), "{err}");
    assert_eq!(full["bytes"], 2 * response.len());
    let (cut, err) = run(&["--max-length", "20"]);
    assert!(
        err.contains("2 of 2 records were longer than max_length = 20"),
        "{err}"
    );
    let (tokens, bytes) = (
        cut["tokens"].as_u64().unwrap(),
        cut["bytes"].as_u64().unwrap(),
    );
    // Each kept "word " token pair stands for at most 5 bytes; nothing like the 1000 in all.
    assert!(tokens > 0 && bytes > 0 && bytes <= 5 * tokens, "{cut}");
    let bpb = cut["bits_per_byte"].as_f64().unwrap();
    let want =
        cut["mean_nll"].as_f64().unwrap() * tokens as f64 / std::f64::consts::LN_2 / bytes as f64;
    assert!((bpb - want).abs() < 1e-9 * want, "{cut}");
}

/// `generate --data` answers the prompts of preference pairs too (README: "a data set in any
/// schema"): each pair's prompt, once, in order.
#[test]
fn generate_answers_the_prompts_of_preference_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.jsonl");
    let pairs = format!("{FIX}/dpo/pairs.jsonl");
    let (ok, _, err) = elastica(&[
        "generate",
        "--model",
        &format!("{FIX}/models/tiny-llama"),
        "--data",
        &pairs,
        "--out",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "2",
    ]);
    assert!(ok, "{err}");
    let want: Vec<serde_json::Value> = common::jsonl_values(Path::new(&pairs));
    let got = common::jsonl_values(&out);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["prompt"], w["prompt"]);
    }
}

/// Run elastica with its stdout a pipe that is already closed (`elastica ... | head -1` once
/// head has exited): stderr, and the exit status.
fn with_closed_stdout(args: &[&str]) -> (String, std::process::ExitStatus) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status,
    )
}

/// A closed stdout ends a command quietly, as it does other Unix tools: no panic, no
/// "Broken pipe" message, whether the command prints a table of results or of cells.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = common::tiny_rebound(tmp.path(), "", "");
    let run = tmp.path().join("run");
    let (c, r) = (cfg.to_str().unwrap(), run.to_str().unwrap());
    let (ok, _, err) = elastica(&["rebound", "--config", c, "--out", r, "--plan-only"]);
    assert!(ok, "{err}");
    let theory = tmp.path().join("theory");
    for args in [
        vec!["theory", "--out", theory.to_str().unwrap()],
        vec!["status", r],
    ] {
        let (err, status) = with_closed_stdout(&args);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert_ne!(status.code(), Some(101), "{args:?} panicked: {err}");
    }
}

/// One command never writes into another's run, and two processes never write one run at
/// once: theory into a grid's run, train into theory's, a rebound into a train run are
/// refused, leaving each folder as it was; a theory run whose folder is held is refused.
#[test]
fn a_command_refuses_another_commands_run_and_a_held_folder() {
    let dir = tempfile::tempdir().unwrap();
    let theory = |out: &Path| {
        elastica(&[
            "theory",
            "--depth",
            "3",
            "--seeds",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let grid = dir.path().join("grid");
    std::fs::create_dir_all(&grid).unwrap();
    std::fs::write(grid.join("manifest.json"), "{}").unwrap();
    let before = snapshot(dir.path());
    let (ok, _, err) = theory(&grid);
    assert!(!ok && err.contains("holds a `grid` run"), "{err}");
    assert!(
        snapshot(dir.path()) == before,
        "a refused theory changed a folder"
    );

    let th = dir.path().join("th");
    let (ok, _, err) = theory(&th);
    assert!(ok, "{err}");
    let before = snapshot(dir.path());
    let (ok, _, err) = elastica(&[
        "train",
        "--model",
        &format!("{FIX}/models/tiny-llama"),
        "--data",
        &data(),
        "--out",
        th.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(!ok && err.contains("holds a `theory` run"), "{err}");
    assert!(
        snapshot(dir.path()) == before,
        "a refused train changed a folder"
    );
    let (ok, _, err) = theory(&th);
    assert!(ok, "theory again into its own run: {err}");

    let lock = elastica::util::fsx::try_lock(&th.join(".elastica.lock")).unwrap();
    assert!(lock.is_some());
    let (ok, _, err) = theory(&th);
    assert!(!ok && err.contains("another elastica process"), "{err}");
    drop(lock);

    let run = dir.path().join("run");
    let (ok, _, err) = elastica(&[
        "train",
        "--model",
        &format!("{FIX}/models/tiny-llama"),
        "--data",
        &data(),
        "--out",
        run.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(ok, "{err}");
    let rb = dir.path().join("rb");
    std::fs::create_dir_all(&rb).unwrap();
    let cfg = common::tiny_rebound(&rb, "", "");
    let (ok, _, err) = elastica(&[
        "rebound",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("holds a `train` run"), "{err}");
}

/// `generate` refuses 0 new tokens (as rebound does) and an unusable temperature before it
/// loads a model or writes --out.
#[test]
fn generate_refuses_settings_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answers.jsonl");
    let model = format!("{FIX}/models/tiny-llama");
    for (flag, value, want) in [
        ("--max-new-tokens", "0", "max_new_tokens"),
        ("--temperature", "nan", "temperature"),
    ] {
        let (ok, _, err) = elastica(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "hi",
            flag,
            value,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!ok && err.contains(want), "{flag}: {err}");
        assert!(!out.exists(), "{flag}: --out written");
    }
}

/// A sequence past the model's context (tiny-llama: 128 positions) is scored as transformers
/// scores it, with one warning naming the context; cut to it by --max-length, no warning.
#[test]
fn a_sequence_past_the_context_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("long.jsonl");
    let text = "the film was good and warm ".repeat(60);
    let line = serde_json::json!({ "text": text }).to_string();
    std::fs::write(&data, format!("{line}\n{line}\n")).unwrap();
    let model = format!("{FIX}/models/tiny-llama");
    let eval = |extra: &[&str]| {
        let args = [
            "eval-loss",
            "--model",
            &model,
            "--data",
            data.to_str().unwrap(),
        ];
        elastica(&[&args[..], extra].concat())
    };
    let (ok, _, err) = eval(&[]);
    assert!(ok, "{err}");
    assert_eq!(
        err.matches("max_position_embeddings = 128").count(),
        1,
        "{err}"
    );
    let (ok, _, err) = eval(&["--max-length", "128"]);
    assert!(ok && !err.contains("max_position_embeddings"), "{err}");
    #[cfg(feature = "torch")]
    {
        let (ok, _, err) = eval(&["--backend", "torch"]);
        assert!(ok, "{err}");
        assert_eq!(
            err.matches("max_position_embeddings = 128").count(),
            1,
            "torch: {err}"
        );
    }
}
