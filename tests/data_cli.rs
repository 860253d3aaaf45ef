//! The data flags of `train`, `eval-loss` and `rates` as a user types them (issue 23 items 1-3):
//! the published schemas load with `--schema`/`--select` or `--data-config`, a file that looks
//! like one without a schema is refused with the flag to add, split names match the HF
//! datasets cache's shard names, and IMDb defaults to the raw template.

mod common;

use std::path::Path;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// One worker thread, as the CLI tests of the data flags were written for.
fn elastica(args: &[&str]) -> (bool, String, String) {
    common::elastica_env(args, &[("RAYON_NUM_THREADS", "1")])
}

fn model() -> String {
    format!("{FIX}/models/tiny-llama")
}

fn data(rel: &str) -> String {
    format!("{FIX}/data/{rel}")
}

/// `train` for one optimizer step on `data_flags`; the number of records it trained on, or
/// its error.
fn train(out: &Path, data_flags: &[&str]) -> Result<u64, String> {
    let m = model();
    let mut args = vec![
        "train",
        "--model",
        &m,
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "1",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--max-length",
        "128",
    ];
    args.extend_from_slice(data_flags);
    let (ok, stdout, stderr) = elastica(&args);
    if !ok {
        return Err(stderr);
    }
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    Ok(summary["records"].as_u64().unwrap())
}

/// `eval-loss`'s mean NLL.
fn eval_loss(flags: &[&str]) -> f64 {
    let m = model();
    let mut args = vec!["eval-loss", "--model", &m];
    args.extend_from_slice(flags);
    let (ok, stdout, stderr) = elastica(&args);
    assert!(ok, "{stderr}");
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["mean_nll"].as_f64().unwrap()
}

#[test]
fn train_reads_alpaca_imdb_and_beavertails_with_a_schema_and_says_which_flag_without() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.as_path();

    // Alpaca's JSON list: refused without a schema (it used to fail "EOF while parsing").
    let alpaca = data("alpaca/alpaca_data.json");
    let e = train(out, &["--data", &alpaca]).unwrap_err();
    assert!(
        e.contains("looks like alpaca") && e.contains("--schema alpaca"),
        "{e}"
    );
    assert_eq!(
        train(out, &["--data", &alpaca, "--schema", "alpaca"]),
        Ok(3)
    );

    // IMDb parquet (it used to fail "stream did not contain valid UTF-8").
    let imdb = data("imdb");
    let e = train(out, &["--data", &imdb, "--files", "train"]).unwrap_err();
    assert!(
        e.contains("looks like imdb") && e.contains("--schema imdb --select positive"),
        "{e}"
    );
    let pos = train(
        out,
        &[
            "--data", &imdb, "--files", "train", "--schema", "imdb", "--select", "positive",
        ],
    )
    .unwrap();
    let neg = train(
        out,
        &[
            "--data", &imdb, "--files", "train", "--schema", "imdb", "--select", "negative",
        ],
    )
    .unwrap();
    let all = train(
        out,
        &["--data", &imdb, "--files", "train", "--schema", "imdb"],
    )
    .unwrap();
    assert!(
        pos > 0 && neg > 0 && pos + neg == all,
        "{pos} + {neg} != {all}"
    );

    // BeaverTails JSONL: is_safe selects (it used to train on every row).
    let bt = data("beavertails");
    let e = train(out, &["--data", &bt, "--files", "train"]).unwrap_err();
    assert!(
        e.contains("looks like beavertails")
            && e.contains("--schema beavertails --select safe")
            && e.contains("--schema jsonl"),
        "{e}"
    );
    let flags = |select: &'static str| -> Vec<String> {
        let mut f: Vec<String> = ["--data", &bt, "--files", "train", "--schema", "beavertails"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !select.is_empty() {
            f.extend(["--select".to_string(), select.to_string()]);
        }
        f
    };
    let run = |f: Vec<String>| {
        let refs: Vec<&str> = f.iter().map(String::as_str).collect();
        train(out, &refs)
    };
    let safe = run(flags("safe")).unwrap();
    let unsafe_ = run(flags("unsafe")).unwrap();
    let every = train(
        out,
        &["--data", &bt, "--files", "train", "--schema", "jsonl"],
    )
    .unwrap();
    assert!(
        safe > 0 && unsafe_ > 0 && safe + unsafe_ == every,
        "safe {safe} + unsafe {unsafe_} != all rows {every}"
    );
    let e = run(flags("positive")).unwrap_err();
    assert!(
        e.contains("no \"positive\" rows") && e.contains("safe"),
        "{e}"
    );
    let e = train(out, &["--data", &bt, "--schema", "csv"]).unwrap_err();
    assert!(
        e.contains("unknown data schema") && e.contains("beavertails"),
        "{e}"
    );
    let e = train(out, &["--data", &bt, "--select", "good"]).unwrap_err();
    assert!(e.contains("good") && e.contains("unsafe"), "{e}");
}

#[test]
fn data_config_files_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let spec = dir.path().join("safe.toml");
    std::fs::write(
        &spec,
        format!(
            "path = {:?}\nfiles = \"train\"\nschema = \"beavertails\"\nselect = \"safe\"\nlimit = 2\n",
            data("beavertails")
        ),
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    assert_eq!(train(&out, &["--data-config", spec]), Ok(2));
    // The same set through flags gives the same loss.
    let bt = data("beavertails");
    let by_flags = [
        "--data",
        &bt,
        "--files",
        "train",
        "--schema",
        "beavertails",
        "--select",
        "safe",
        "--limit",
        "2",
    ];
    assert_eq!(
        eval_loss(&["--data-config", spec]),
        eval_loss(&by_flags),
        "--data-config and the flags name the same records"
    );
    // The flags and a data config do not mix.
    let e = train(&out, &["--data-config", spec, "--schema", "imdb"]).unwrap_err();
    assert!(e.contains("--data-config") && e.contains("--schema"), "{e}");
    let e = train(&out, &[]).unwrap_err();
    assert!(e.contains("--data"), "{e}");

    // rates: one named set per table.
    let two = dir.path().join("two.toml");
    std::fs::write(
        &two,
        format!(
            "[safe]\npath = {bt:?}\nfiles = \"train\"\nschema = \"beavertails\"\nselect = \"safe\"\nlimit = 2\n\
             [unsafe]\npath = {bt:?}\nfiles = \"train\"\nschema = \"beavertails\"\nselect = \"unsafe\"\nlimit = 2\n"
        ),
    )
    .unwrap();
    let rates = dir.path().join("rates");
    let m = model();
    let (ok, _, err) = elastica(&[
        "rates",
        "--models",
        &m,
        "--data-config",
        two.to_str().unwrap(),
        "--out",
        rates.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rates.join("rates.json")).unwrap()).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["safe", "unsafe"]);
    // rates --data NAME=PATH with the schema flags.
    let (ok, _, err) = elastica(&[
        "rates",
        "--models",
        &m,
        "--data",
        &format!("pos={}", data("imdb")),
        "--files",
        "test",
        "--schema",
        "imdb",
        "--select",
        "positive",
        "--out",
        rates.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
}

#[test]
fn split_names_match_the_datasets_cache_and_the_miss_lists_what_it_saw() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("imdb");
    std::fs::create_dir_all(&cache).unwrap();
    for split in ["train", "test"] {
        std::fs::copy(
            data(&format!("imdb/plain_text/{split}-00000-of-00001.parquet")),
            cache.join(format!("imdb-{split}-00000-of-00001.parquet")),
        )
        .unwrap();
    }
    let out = dir.path().join("run");
    let c = cache.to_str().unwrap();
    let hub = data("imdb");
    let flags = |path: &str, files: &str| -> Vec<String> {
        ["--data", path, "--files", files, "--schema", "imdb"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |f: Vec<String>| {
        let refs: Vec<&str> = f.iter().map(String::as_str).collect();
        train(&out, &refs)
    };
    let cached = run(flags(c, "train")).unwrap();
    assert_eq!(
        Ok(cached),
        run(flags(&hub, "train")),
        "the same train split"
    );
    assert!(run(flags(c, "test")).is_ok());
    let e = run(flags(c, "validation")).unwrap_err();
    assert!(
        e.contains("imdb-test-00000-of-00001.parquet, imdb-train-00000-of-00001.parquet"),
        "{e}"
    );

    // The same through a data config (an experiment's `files = "train"`).
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        format!("path = {c:?}\nfiles = \"train\"\nschema = \"imdb\"\n"),
    )
    .unwrap();
    assert_eq!(
        train(&out, &["--data-config", spec.to_str().unwrap()]),
        Ok(cached)
    );
}

#[test]
fn imdb_defaults_to_the_raw_template() {
    let imdb = data("imdb");
    let base = ["--data", &imdb, "--files", "test", "--schema", "imdb"];
    let with = |t: Option<&str>| {
        let mut f: Vec<&str> = base.to_vec();
        if let Some(t) = t {
            f.extend(["--template", t]);
        }
        eval_loss(&f)
    };
    let unset = with(None);
    assert_eq!(
        unset,
        with(Some("raw")),
        "imdb without --template is raw text"
    );
    assert_ne!(unset, with(Some("safe-rlhf")));
    // Generic records keep the paper's SFT template.
    let generic = data("generic.jsonl");
    let g = |t: Option<&str>| {
        let mut f = vec!["--data", generic.as_str()];
        if let Some(t) = t {
            f.extend(["--template", t]);
        }
        eval_loss(&f)
    };
    assert_eq!(g(None), g(Some("safe-rlhf")));
}

/// TruthfulQA, the paper's third SFT set of the resistance experiment: the hub's `generation`
/// parquet and the original CSV train and score alike, and a directory holding both configs
/// says which selector to use.
#[test]
fn truthfulqa_reads_from_the_hub_layout_and_the_original_csv() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (hub, csv) = (data("truthfulqa"), data("TruthfulQA.csv"));
    let e = train(&out, &["--data", &csv]).unwrap_err();
    assert!(
        e.contains("looks like truthfulqa") && e.contains("--schema truthfulqa"),
        "{e}"
    );
    let hub_flags = [
        "--data",
        &hub,
        "--schema",
        "truthfulqa",
        "--files",
        "generation/*",
    ];
    assert_eq!(train(&out, &hub_flags), Ok(4));
    let csv_flags = ["--data", &csv, "--schema", "truthfulqa"];
    assert_eq!(train(&out, &csv_flags), Ok(4));
    // The same (question, best answer) pairs, so the same loss to the last bit.
    assert_eq!(
        eval_loss(&hub_flags).to_bits(),
        eval_loss(&csv_flags).to_bits()
    );

    let e = train(&out, &["--data", &hub, "--schema", "truthfulqa"]).unwrap_err();
    assert!(
        e.contains("multiple_choice/validation-00000-of-00001.parquet")
            && e.contains("files = \"generation/*\""),
        "{e}"
    );
}

/// `generate --data` reads a published schema with the data flags: the IMDb review openings it
/// answers are the loader's prompts, under the raw template IMDb defaults to (the same
/// answers as those prompts given as a `--prompts` file with `--template raw`).
#[test]
fn generate_answers_the_prompts_of_a_data_set_under_its_schemas_template() {
    let dir = tempfile::tempdir().unwrap();
    let (by_data, by_file) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let (m, imdb) = (model(), data("imdb"));
    let flags = ["--max-new-tokens", "4", "--temperature", "0"];
    let (ok, _, err) = elastica(
        &[
            &[
                "generate", "--model", &m, "--data", &imdb, "--schema", "imdb", "--select",
                "positive", "--files", "train", "--limit", "2", "--out",
            ][..],
            &[by_data.to_str().unwrap()],
            &flags,
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let mut spec = elastica::data::schemas::DataSpec::new(&imdb, "imdb");
    spec.select = elastica::data::schemas::Select::Positive;
    spec.files = Some("train".into());
    spec.limit = Some(2);
    let want = elastica::data::schemas::load(&spec)
        .unwrap()
        .prompts()
        .unwrap();
    let rows = common::jsonl_values(&by_data);
    let got: Vec<&str> = rows.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    let want: Vec<&str> = want.iter().map(|p| p.text()).collect();
    assert_eq!(got, want);

    let prompts = dir.path().join("prompts.jsonl");
    common::write_jsonl(
        &prompts,
        want.iter().map(|p| serde_json::json!({ "prompt": p })),
    );
    let (ok, _, err) = elastica(
        &[
            &[
                "generate",
                "--model",
                &m,
                "--prompts",
                prompts.to_str().unwrap(),
            ][..],
            &["--template", "raw", "--out", by_file.to_str().unwrap()],
            &flags,
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    assert_eq!(common::jsonl_values(&by_file), rows);
}
