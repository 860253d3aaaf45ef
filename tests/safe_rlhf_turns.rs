//! Conversations under the `safe-rlhf` template: safe-rlhf's own multi-turn format
//! (`BEGINNING OF CONVERSATION: USER: u ASSISTANT:a</s>USER: ...`) builds the token ids and
//! loss masks safe-rlhf's SFT data set builds, and answers as transformers answers
//! (`scripts/make_safe_rlhf_fixture.py`, fixture `tests/fixtures/chat/safe_rlhf*`, on
//! tiny-llama).

mod common;

use elastica::data::records::{Message, Record, Turns};
use elastica::data::schemas::{load, DataSpec};
use elastica::data::template::Template;
use elastica::model::checkpoint::load_model;
use elastica::train::batch::tokenize;
use std::path::Path;

fn path(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

fn expected() -> serde_json::Value {
    common::read_json(Path::new(&path("chat/safe_rlhf.json")))
}

fn tiny_llama() -> elastica::model::LoadedModel {
    load_model(&path("models/tiny-llama"), &candle_core::Device::Cpu).unwrap()
}

#[test]
fn conversations_tokenize_as_safe_rlhf_builds_them_for_each_turns_setting() {
    let lm = tiny_llama();
    let want = expected()["rows"].as_array().unwrap().clone();
    for (turns, key) in [
        (Turns::Last, "last"),
        (Turns::Assistant, "assistant"),
        (Turns::All, "all"),
    ] {
        let mut spec = DataSpec::new(path("chat/safe_rlhf.jsonl"), "conversation");
        spec.turns = turns;
        let ds = load(&spec).unwrap();
        let (examples, cut) =
            tokenize(&ds.records, &lm.tokenizer, Template::SafeRlhf, 512).unwrap();
        assert_eq!((cut, examples.len()), (0, want.len()));
        for (i, (e, w)) in examples.iter().zip(&want).enumerate() {
            let ids: Vec<u32> = serde_json::from_value(w[key]["ids"].clone()).unwrap();
            let labels: Vec<i64> = serde_json::from_value(w[key]["labels"].clone()).unwrap();
            assert_eq!(e.ids, ids, "{key}, conversation {}: ids", i + 1);
            assert_eq!(e.labels, labels, "{key}, conversation {}: labels", i + 1);
        }
    }
}

#[test]
fn a_one_turn_conversation_trains_as_the_prompt_response_pair() {
    let lm = tiny_llama();
    let (p, r) = ("Is the sky blue?", "Yes, on a clear day.");
    let chat = Record::conversation(vec![Message::new("user", p), Message::new("assistant", r)]);
    let pair = Record::pair(p, r);
    let enc = |rec: Record| {
        tokenize(&[rec], &lm.tokenizer, Template::SafeRlhf, 512)
            .unwrap()
            .0
    };
    let (a, b) = (enc(chat), enc(pair));
    assert_eq!(a[0].ids, b[0].ids);
    assert_eq!(a[0].labels, b[0].labels);
}

#[test]
fn turns_safe_rlhf_cannot_render_are_refused_naming_the_record_and_the_fix() {
    let lm = tiny_llama();
    let system = Record::conversation(vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello"),
    ]);
    let twice = Record::conversation(vec![
        Message::new("user", "Hi"),
        Message::new("user", "Hello?"),
        Message::new("assistant", "Hello"),
    ]);
    for (rec, turn) in [
        (system, "turn 1 is a \"system\""),
        (twice, "turn 2 is a \"user\""),
    ] {
        let ok = Record::pair("p", "r");
        let e = format!(
            "{:#}",
            tokenize(&[ok, rec], &lm.tokenizer, Template::SafeRlhf, 512).unwrap_err()
        );
        assert!(
            e.contains("record 2") && e.contains(turn) && e.contains("--template chat"),
            "{e}"
        );
    }
    // The raw template renders no conversation.
    let chat = Record::conversation(vec![
        Message::new("user", "Hi"),
        Message::new("assistant", "Yo"),
    ]);
    let e = format!(
        "{:#}",
        tokenize(&[chat], &lm.tokenizer, Template::Raw, 512).unwrap_err()
    );
    assert!(e.contains("raw template renders no conversation"), "{e}");
}

#[test]
fn generate_answers_conversations_under_safe_rlhf_as_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gen.jsonl");
    let (model, prompts) = (
        path("models/tiny-llama"),
        path("chat/safe_rlhf_prompts.jsonl"),
    );
    let (ok, _, err) = common::elastica(&[
        "generate",
        "--model",
        &model,
        "--prompts",
        &prompts,
        "--template",
        "safe-rlhf",
        "--max-new-tokens",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let want = expected()["rows"].as_array().unwrap().clone();
    assert_eq!(text.lines().count(), want.len());
    for (line, w) in text.lines().zip(&want) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let answer = row["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(answer["role"], "assistant", "{row}");
        assert_eq!(answer["content"], w["greedy"], "{row}");
    }
}

/// `eval-loss` and `train` take safe-rlhf conversations from the CLI: the loss counts the
/// tokens safe-rlhf's SFT counts, and a training run finishes.
#[test]
fn eval_loss_and_train_read_conversations_under_safe_rlhf() {
    let (model, data) = (path("models/tiny-llama"), path("chat/safe_rlhf.jsonl"));
    let common_args = ["--schema", "conversation", "--template", "safe-rlhf"];
    let mut args = vec!["eval-loss", "--model", &model, "--data", &data];
    args.extend(common_args);
    args.extend(["--turns", "assistant"]);
    let (ok, stdout, err) = common::elastica(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let counted: usize = expected()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let labels = w["assistant"]["labels"].as_array().unwrap();
            labels.iter().filter(|l| l.as_i64() != Some(-100)).count()
        })
        .sum();
    assert_eq!(v["tokens"].as_u64().unwrap() as usize, counted, "{v}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut args = vec!["train", "--model", &model, "--data", &data];
    args.extend(common_args);
    args.extend([
        "--max-steps",
        "2",
        "--batch-size",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (ok, _, err) = common::elastica(&args);
    assert!(ok, "{err}");
    assert!(out.join("model.safetensors").is_file());
}

/// A run refused for its data (turns the template cannot render) is refused before --out
/// exists, on SFT and on DPO pairs.
#[test]
fn train_refused_for_its_turns_leaves_no_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = path("models/tiny-llama");
    let sft = dir.path().join("sys.jsonl");
    let system = serde_json::json!({"messages": [{"role": "system", "content": "Be nice"},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]});
    common::write_jsonl(&sft, [system]);
    let pairs = dir.path().join("pairs.jsonl");
    let pair = serde_json::json!({"prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Go away"}]});
    common::write_jsonl(&pairs, [pair.clone(), pair]);
    for (data, extra, want) in [
        (&sft, &["--template", "safe-rlhf"][..], "\"system\" turn"),
        (
            &pairs,
            &["--method", "dpo", "--template", "raw"][..],
            "renders no conversation",
        ),
    ] {
        let out = dir.path().join("run");
        let (data, out_s) = (data.to_str().unwrap(), out.to_str().unwrap());
        let mut args = vec!["train", "--model", &model, "--data", data, "--out", out_s];
        args.extend(["--schema", "conversation", "--max-steps", "1"]);
        args.extend(extra);
        let (ok, _, err) = common::elastica(&args);
        assert!(
            !ok && err.contains("record 1") && err.contains(want),
            "{err}"
        );
        assert!(!out.exists(), "{extra:?} left {}", out.display());
    }
}
