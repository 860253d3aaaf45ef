//! Conversations (TRL's conversational formats, `--schema conversation`): SFT rows and
//! preference pairs rendered by the model's chat template build the token ids and loss masks
//! TRL builds, and score as transformers scores them (`scripts/make_chat_fixture.py`,
//! fixture `tests/fixtures/chat`, on tiny-qwen2, whose tokenizer has a chat template).

mod common;

use elastica::data::schemas::{load, DataSpec};
use elastica::data::template::Template;
use elastica::model::checkpoint::load_model;
use elastica::train::batch::tokenize;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> serde_json::Value {
    common::read_json(&fixtures().join("chat/expected.json"))
}

/// transformers' mean NLL of the SFT rows' answer tokens, and how many there are.
fn expected_mean_nll() -> (f64, u64) {
    common::rows_mean_nll(expected()["sft"].as_array().unwrap())
}

/// `elastica train` of tiny-qwen2 on the conversation file `data` into `out` for `steps`
/// steps of 3 rows, with `extra` flags; its stdout.
fn train(data: &str, out: &Path, steps: &str, extra: &[&str]) -> String {
    let (model, data) = (path("models/tiny-qwen2"), path(data));
    let mut args = vec!["train", "--model", &model, "--data", &data];
    args.extend(["--schema", "conversation", "--out", out.to_str().unwrap()]);
    args.extend(["--max-steps", steps, "--batch-size", "3"]);
    args.extend(extra);
    let (ok, stdout, err) = common::elastica(&args);
    assert!(ok, "{extra:?}: {err}");
    stdout
}

/// `elastica eval-loss` of tiny-qwen2 on the SFT conversations, with `extra` flags: its JSON.
fn eval_loss_on_conversations(model: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
    let (model, data) = (path(model), path("chat/sft.jsonl"));
    let mut args = vec!["eval-loss", "--model", &model, "--data", &data];
    args.extend(["--schema", "conversation"]);
    args.extend(extra);
    match common::elastica(&args) {
        (true, stdout, _) => Ok(serde_json::from_str(stdout.trim()).unwrap()),
        (false, _, err) => Err(err),
    }
}

/// A fixture row's ids and labels.
fn ids_and_labels(w: &serde_json::Value) -> (Vec<u32>, Vec<i64>) {
    (
        serde_json::from_value(w["ids"].clone()).unwrap(),
        serde_json::from_value(w["labels"].clone()).unwrap(),
    )
}

fn path(rel: &str) -> String {
    fixtures().join(rel).to_string_lossy().into_owned()
}

#[test]
fn conversations_tokenize_as_trl_builds_them() {
    let lm = load_model(&path("models/tiny-qwen2"), &candle_core::Device::Cpu).unwrap();
    let ds = load(&DataSpec::new(path("chat/sft.jsonl"), "conversation")).unwrap();
    let (examples, cut) = tokenize(&ds.records, &lm.tokenizer, Template::Chat, 512).unwrap();
    assert_eq!(cut, 0);
    let want = expected()["sft"].as_array().unwrap().clone();
    assert_eq!(examples.len(), want.len());
    for (i, (e, w)) in examples.iter().zip(&want).enumerate() {
        let (ids, labels) = ids_and_labels(w);
        assert_eq!(e.ids, ids, "record {i}: ids");
        assert_eq!(e.labels, labels, "record {i}: labels");
    }
    // safe-rlhf cannot render the system turn of record 1: refused, naming the record and the fix.
    let e = format!(
        "{:#}",
        tokenize(&ds.records, &lm.tokenizer, Template::SafeRlhf, 512).unwrap_err()
    );
    assert!(
        e.contains("record 1") && e.contains("--template chat"),
        "{e}"
    );
}

#[test]
fn eval_loss_scores_conversations_as_transformers() {
    let v = eval_loss_on_conversations("models/tiny-qwen2", &[]).unwrap();
    let (want_mean, tokens) = expected_mean_nll();
    assert_eq!(v["tokens"].as_u64().unwrap(), tokens, "{v}");
    let mean = v["mean_nll"].as_f64().unwrap();
    assert!(
        (mean - want_mean).abs() <= 1e-5 * want_mean,
        "elastica {mean} vs transformers {want_mean}"
    );
    // A model without a chat template cannot render them, and says so.
    let err = eval_loss_on_conversations("models/tiny-llama", &[]).unwrap_err();
    assert!(err.contains("chat_template"), "{err}");
}

/// A SentencePiece-style tokenizer (Metaspace, prepend_scheme "first", as Llama-2, Mistral
/// and Zephyr have) gives an answer tokenized alone a leading '▁' the whole rendering does not
/// have; the conversation is tokenized once, as TRL does, and scores as transformers scores it
/// (`scripts/make_sp_chat_fixture.py`: tiny-llama's weights with `chat/sp`'s tokenizer).
#[test]
fn a_sentencepiece_tokenizer_tokenizes_the_conversation_once_as_trl() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixtures().join("models/tiny-llama").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(fixtures().join("chat/sp").join(f), dir.path().join(f)).unwrap();
    }
    let want = common::read_json(&fixtures().join("chat/sp/expected.json"));
    let want = want["sft"].as_array().unwrap();
    let lm = load_model(dir.path().to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let ds = load(&DataSpec::new(path("chat/sft.jsonl"), "conversation")).unwrap();
    let (examples, _) = tokenize(&ds.records, &lm.tokenizer, Template::Chat, 512).unwrap();
    for (i, (e, w)) in examples.iter().zip(want).enumerate() {
        let (ids, labels) = ids_and_labels(w);
        assert_eq!((&e.ids, &e.labels), (&ids, &labels), "record {i}");
        let alone: Vec<u32> = serde_json::from_value(w["answer_alone"].clone()).unwrap();
        let counted: Vec<u32> = e.ids[e.labels.iter().position(|&l| l >= 0).unwrap()..].to_vec();
        assert_ne!(
            counted, alone,
            "record {i}: the fixture tells the two ways apart"
        );
    }
    let (ok, stdout, err) = common::elastica(&[
        "eval-loss",
        "--model",
        dir.path().to_str().unwrap(),
        "--data",
        &path("chat/sft.jsonl"),
        "--schema",
        "conversation",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    common::assert_eval_matches_rows(&v, want, "sp");
}

#[test]
fn dpo_on_conversational_pairs_takes_transformers_reference_log_probs() {
    let dir = tempfile::tempdir().unwrap();
    for loss in ["sigmoid", "kto"] {
        let out = dir.path().join(loss);
        train(
            "chat/pairs.jsonl",
            &out,
            "1",
            &["--method", "dpo", "--dpo-loss", loss],
        );
        let r = common::read_json(&out.join("dpo_reference.json"));
        let want = expected()["pairs"].as_array().unwrap().clone();
        for (i, w) in want.iter().enumerate() {
            for side in ["chosen", "rejected"] {
                let got = r[side][i].as_f64().unwrap();
                let w = w[format!("{side}_logp")].as_f64().unwrap();
                assert!(
                    (got - w).abs() <= 1e-5 * w.abs(),
                    "{loss} pair {i} {side}: elastica {got} vs transformers {w}"
                );
            }
        }
    }
}

#[test]
fn sft_trains_on_conversations_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sft");
    let stdout = train("chat/sft.jsonl", &out, "2", &[]);
    assert!(stdout.contains("final_loss"), "{stdout}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    // The first step's loss is the starting model's mean NLL of the answer tokens.
    let (want, _) = expected_mean_nll();
    let loss = first["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() <= 1e-5 * loss,
        "first loss {loss} vs {want}"
    );
}

#[test]
fn generate_answers_a_conversation_under_the_chat_template_as_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.jsonl");
    let args = |template: &'static str| {
        let mut v = vec![
            "generate".to_string(),
            "--model".into(),
            path("models/tiny-qwen2"),
            "--prompts".into(),
            path("chat/prompts.jsonl"),
            "--out".into(),
            out.to_string_lossy().into_owned(),
            "--max-new-tokens".into(),
            "8".into(),
        ];
        v.extend(["--template".into(), template.into()]);
        v
    };
    let run = |template| {
        let a = args(template);
        common::elastica(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // safe-rlhf's format has no system turn, and says so before generating.
    let (ok, _, err) = run("safe-rlhf");
    assert!(
        !ok && err.contains("prompt 1") && err.contains("--template chat"),
        "{err}"
    );
    assert!(!out.exists());
    let (ok, _, err) = run("chat");
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    // Unset, the template of a file of conversations is the chat template.
    let mut unset = args("chat");
    unset.truncate(unset.len() - 2);
    let unset: Vec<&str> = unset.iter().map(String::as_str).collect();
    let (ok, _, err) = common::elastica(&unset);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    let row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let turns = row["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "{row}");
    assert_eq!(turns[2]["role"], "assistant");
    assert_eq!(turns[2]["content"], expected()["greedy"]["text"], "{row}");
}

/// `generate --data` answers a conversation data set's records from their turns before the
/// answer, under the chat template its schema defaults to: transformers' greedy answer again.
#[test]
fn generate_answers_the_prompts_of_a_conversation_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("conversations.jsonl");
    let prompts = std::fs::read_to_string(fixtures().join("chat/prompts.jsonl")).unwrap();
    let mut row: serde_json::Value = serde_json::from_str(prompts.trim()).unwrap();
    let turns = row["messages"].as_array_mut().unwrap();
    turns.push(serde_json::json!({"role": "assistant", "content": "An old answer."}));
    std::fs::write(&data, format!("{row}\n")).unwrap();
    let out = dir.path().join("gen.jsonl");
    let (model, data, out_s) = (
        path("models/tiny-qwen2"),
        data.to_string_lossy().into_owned(),
        out.to_string_lossy().into_owned(),
    );
    let (ok, _, err) = common::elastica(&[
        "generate",
        "--model",
        &model,
        "--data",
        &data,
        "--schema",
        "conversation",
        "--out",
        &out_s,
        "--max-new-tokens",
        "8",
    ]);
    assert!(ok, "{err}");
    let got: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    let turns = got["messages"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "the old answer is replaced: {got}");
    assert_eq!(turns[2]["content"], expected()["greedy"]["text"], "{got}");
    // A data config needs --out too, and the data flags read --data only.
    let config = dir.path().join("data.toml");
    let spec = format!("path = {data:?}\nschema = \"conversation\"\n");
    std::fs::write(&config, spec).unwrap();
    let c = config.to_string_lossy().into_owned();
    let (ok, _, err) = common::elastica(&["generate", "--model", &model, "--data-config", &c]);
    assert!(!ok && err.contains("give --out"), "{err}");
    let (ok, _, err) = common::elastica(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "hi",
        "--schema",
        "conversation",
    ]);
    assert!(!ok && err.contains("give --data PATH"), "{err}");
}

/// `--turns assistant` (every assistant turn counts) and `--turns all` (every token) build the
/// ids and labels transformers builds (its assistant mask over a generation-marked copy of the
/// template; its whole-conversation tokens) and score as transformers scores them, through the
/// library and `eval-loss`; other schemas and preference pairs refuse the setting.
#[test]
fn every_assistant_turn_or_every_token_counts_as_transformers_counts_them() {
    let lm = load_model(&path("models/tiny-qwen2"), &candle_core::Device::Cpu).unwrap();
    let all_rows = expected()["turns"].as_array().unwrap().clone();
    for (turns, flag) in [
        (elastica::data::records::Turns::Assistant, "assistant"),
        (elastica::data::records::Turns::All, "all"),
    ] {
        let mut spec = DataSpec::new(path("chat/sft.jsonl"), "conversation");
        spec.turns = turns;
        let ds = load(&spec).unwrap();
        let (examples, _) = tokenize(&ds.records, &lm.tokenizer, Template::Chat, 512).unwrap();
        let (mut nll, mut tokens) = (0.0, 0);
        for (i, (e, w)) in examples.iter().zip(&all_rows).enumerate() {
            let w = &w[flag];
            let (ids, labels) = ids_and_labels(w);
            assert_eq!(e.ids, ids, "{flag} record {i}: ids");
            assert_eq!(e.labels, labels, "{flag} record {i}: labels");
            nll += w["nll_sum"].as_f64().unwrap();
            tokens += w["tokens"].as_u64().unwrap();
        }
        let v = eval_loss_on_conversations("models/tiny-qwen2", &["--turns", flag]).unwrap();
        assert_eq!(v["tokens"].as_u64().unwrap(), tokens, "{flag}: {v}");
        let (mean, want) = (v["mean_nll"].as_f64().unwrap(), nll / tokens as f64);
        assert!(
            (mean - want).abs() <= 1e-5 * want,
            "{flag}: {mean} vs {want}"
        );
    }
    // The multi-turn row counts more under `assistant` than under the default.
    let last = expected()["sft"][1]["tokens"].as_u64().unwrap();
    assert!(all_rows[1]["assistant"]["tokens"].as_u64().unwrap() > last);
    for (data, schema, word) in [
        ("sft/data.jsonl", "jsonl", "applies to conversations"),
        (
            "chat/pairs.jsonl",
            "conversation",
            "a preference pair's answers",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut args = vec!["train", "--model", "", "--data", "", "--schema", schema];
        let (model, data) = (path("models/tiny-qwen2"), path(data));
        (args[2], args[4]) = (&model, &data);
        args.extend(["--turns", "all", "--out", out.path().to_str().unwrap()]);
        if data.contains("pairs") {
            args.extend(["--method", "dpo"]);
        }
        let (ok, _, err) = common::elastica(&args);
        assert!(!ok && err.contains(word), "{schema}: {err}");
    }
}

/// A template that marks the assistant's text with transformers' `{% generation %}` renders as
/// the plain one does, and `--turns assistant` counts what it marks: on tiny-qwen2 with the
/// fixture's marked copies of its template, the ids and labels of transformers' assistant
/// mask, also where the marks leave out the newline after each turn (the copy "tight", which
/// the turns' own text would count).
#[test]
fn templates_with_generation_markers_render_and_mark_the_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    for (template, key) in [
        ("marked_template", "assistant"),
        ("marked_tight_template", "assistant_tight"),
    ] {
        let model = dir.path().join(template);
        std::fs::create_dir(&model).unwrap();
        for f in std::fs::read_dir(fixtures().join("models/tiny-qwen2")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
        }
        let cfg_path = model.join("tokenizer_config.json");
        let mut cfg = common::read_json(&cfg_path);
        cfg["chat_template"] = expected()[template].clone();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let lm = load_model(model.to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
        for (turns, key) in [
            (elastica::data::records::Turns::Last, None),
            (elastica::data::records::Turns::Assistant, Some(key)),
        ] {
            let mut spec = DataSpec::new(path("chat/sft.jsonl"), "conversation");
            spec.turns = turns;
            let ds = load(&spec).unwrap();
            let (examples, _) = tokenize(&ds.records, &lm.tokenizer, Template::Chat, 512).unwrap();
            for (i, e) in examples.iter().enumerate() {
                let w = match key {
                    Some(k) => expected()["turns"][i][k].clone(),
                    None => expected()["sft"][i].clone(),
                };
                let (ids, labels) = ids_and_labels(&w);
                assert_eq!(
                    (&e.ids, &e.labels),
                    (&ids, &labels),
                    "{template} {key:?} {i}"
                );
            }
        }
    }
}

/// Llama 3.1's templates write "Today Date" from `strftime_now` when it is defined, else
/// from their own fallback; elastica leaves it undefined, so the rendering (and a run's data
/// fingerprint) does not depend on the day.
#[test]
fn a_template_asking_for_todays_date_renders_its_fallback() {
    let tok_dir = fixtures().join("models/tiny-qwen2");
    let mut tok = elastica::model::tokenizer::TextTokenizer::from_dir(&tok_dir, &[], None).unwrap();
    tok.chat_template = Some(
        "{%- if not date_string is defined %}{%- if strftime_now is defined %}\
         {%- set date_string = strftime_now(\"%d %b %Y\") %}{%- else %}\
         {%- set date_string = \"26 Jul 2024\" %}{%- endif %}{%- endif %}\
         Today Date: {{ date_string }}\n{% for m in messages %}{{ m.content }}\n{% endfor %}"
            .into(),
    );
    let text = Template::Chat.render("hi", &tok).unwrap();
    assert_eq!(text, "Today Date: 26 Jul 2024\nhi\n");
}

/// `rates` codes conversations under the chat template as training counts them (the
/// conversation schema's default template; each `--turns`), so its bits per token are
/// transformers' NLL of the fixture rows.
#[test]
fn rates_code_conversations_as_transformers_scores_them() {
    let dir = tempfile::tempdir().unwrap();
    let rows = expected();
    for (flag, want) in [
        ("last", rows["sft"].as_array().unwrap().clone()),
        ("assistant", turn_rows(&rows, "assistant")),
        ("all", turn_rows(&rows, "all")),
    ] {
        let row = rates_on_conversations(&path("models/tiny-qwen2"), dir.path(), flag);
        assert_eq!(row["template"], "chat", "{row}");
        common::assert_rates_match_rows(&row, &want, flag);
    }
}

/// A chat template that writes no BOS where the tokenizer adds one (TinyLlama-Chat's, for
/// one): training sees no BOS, so `rates` codes the rendering from an empty context rather
/// than after the tokenizer's start state, and equals `eval-loss` (tiny-qwen2 with its
/// template's `{{ bos_token }}` taken out).
#[test]
fn rates_follow_a_chat_template_that_writes_no_bos() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("no-bos");
    std::fs::create_dir(&model).unwrap();
    let src = fixtures().join("models/tiny-qwen2");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let cfg_path = model.join("tokenizer_config.json");
    let mut cfg = common::read_json(&cfg_path);
    let template = cfg["chat_template"].as_str().unwrap().to_string();
    assert!(template.starts_with("{{ bos_token }}"), "{template}");
    cfg["chat_template"] = template.replacen("{{ bos_token }}", "", 1).into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let model = model.to_str().unwrap();
    for flag in ["last", "all"] {
        let row = rates_on_conversations(model, dir.path(), flag);
        let v = eval_loss_on_conversations(model, &["--turns", flag]).unwrap();
        assert_eq!(row["tokens"], v["tokens"], "{flag}: {row} vs {v}");
        let nats = row["bits_per_token"].as_f64().unwrap() * std::f64::consts::LN_2;
        let nll = v["mean_nll"].as_f64().unwrap();
        assert!(
            (nats - nll).abs() <= 1e-5 * nll,
            "{flag}: rates {nats} vs eval-loss {nll} nats per token"
        );
    }
}

/// The fixture's per-row expectations under `--turns flag` (`assistant` or `all`).
fn turn_rows(rows: &serde_json::Value, flag: &str) -> Vec<serde_json::Value> {
    let turns = rows["turns"].as_array().unwrap();
    turns.iter().map(|r| r[flag].clone()).collect()
}

/// `elastica rates` of `model` on the SFT conversations under `--turns flag`: its one row.
fn rates_on_conversations(model: &str, dir: &Path, flag: &str) -> serde_json::Value {
    let out = dir.join(format!("rates-{flag}-{}", model.len()));
    let data = format!("c={}", path("chat/sft.jsonl"));
    let mut args = vec!["rates", "--models", model, "--data", &data];
    args.extend(["--schema", "conversation", "--turns", flag]);
    args.extend(["--out", out.to_str().unwrap()]);
    let (ok, so, se) = common::elastica(&args);
    assert!(ok, "{so}\n{se}");
    common::read_json(&out.join("rates.json"))[0].clone()
}
