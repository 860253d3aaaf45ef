//! The committed tokenizer fixtures, read by the Rust crates elastica builds on, give exactly
//! what Python's `tokenizers` and transformers' `apply_chat_template` gave when
//! `scripts/make_fixtures.py` wrote them (tests/fixtures/README.md).
//! If these fail, the fixtures or a crate upgrade changed, not elastica's code.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Value {
    let path = fixtures().join("tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).expect("read tokenizer_cases.json");
    serde_json::from_str(&text).expect("parse tokenizer_cases.json")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn rust_tokenizers_match_python_ids_and_round_trip() {
    let tok = Tokenizer::from_file(fixtures().join("tokenizer.json")).expect("load tokenizer.json");
    assert_eq!(tok.get_vocab_size(true), 300);
    let c = cases();
    let texts = c["texts"].as_array().expect("texts");
    assert!(texts.len() >= 10);
    for case in texts {
        let text = case["text"].as_str().expect("text");
        let with = tok.encode(text, true).expect("encode");
        assert_eq!(
            with.get_ids(),
            ids(&case["ids_with_special"]).as_slice(),
            "{text:?}"
        );
        let without = tok.encode(text, false).expect("encode");
        assert_eq!(
            without.get_ids(),
            ids(&case["ids_without_special"]).as_slice(),
            "{text:?}"
        );
        let decoded = tok.decode(without.get_ids(), false).expect("decode");
        assert_eq!(
            decoded,
            case["decoded_without_special"].as_str().expect("decoded")
        );
    }
}

/// transformers renders chat templates with jinja2 `trim_blocks` and `lstrip_blocks` on and a
/// `raise_exception` function; minijinja reproduces that byte for byte when set up the same way.
#[test]
fn minijinja_renders_chat_template_like_transformers() {
    let cfg_path = fixtures().join("models/tiny-qwen2/tokenizer_config.json");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(cfg_path).expect("read")).expect("parse");
    let template = cfg["chat_template"].as_str().expect("chat_template");

    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template).expect("template parses");
    let tmpl = env.get_template("chat").expect("template");

    let c = cases();
    let chats = c["chats"].as_array().expect("chats");
    assert!(!chats.is_empty());
    for case in chats {
        let rendered = tmpl
            .render(minijinja::context! {
                messages => case["messages"].clone(),
                add_generation_prompt => case["add_generation_prompt"].as_bool().expect("flag"),
                bos_token => cfg["bos_token"].as_str().expect("bos"),
                eos_token => cfg["eos_token"].as_str().expect("eos"),
            })
            .expect("render");
        assert_eq!(rendered, case["rendered"].as_str().expect("rendered"));
    }

    // Without lstrip/trim the same template renders differently: the fixture has teeth.
    let plain = minijinja::Environment::new();
    let first = &chats[0];
    let loose = plain
        .render_str(
            template,
            minijinja::context! {
                messages => first["messages"].clone(),
                add_generation_prompt => first["add_generation_prompt"].as_bool(),
                bos_token => "<s>", eos_token => "</s>",
            },
        )
        .expect("render");
    assert_ne!(loose, first["rendered"].as_str().expect("rendered"));
}
