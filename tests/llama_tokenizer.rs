//! A Llama-2-style legacy `tokenizer.json` under each tokenizer config reads as transformers 5
//! reads it: rebuilt with a Metaspace pre-tokenizer when the config names `LlamaTokenizer`
//! (prepend scheme by `legacy` and `add_prefix_space`), as written under
//! `PreTrainedTokenizerFast` (`scripts/make_llama_tokenizer_fixture.py`, fixture
//! `tests/fixtures/tokenizers/llama_legacy.json`).

mod common;

use elastica::model::TextTokenizer;
use std::path::Path;

#[test]
fn a_legacy_llama_tokenizer_reads_as_transformers_5_reads_it() {
    let fix = common::read_json(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/llama_legacy.json"),
    );
    let texts: Vec<String> = serde_json::from_value(fix["texts"].clone()).unwrap();
    let variants = fix["variants"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        fix["tokenizer"].to_string(),
    )
    .unwrap();
    let written = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let mut rebuilt = 0;
    for v in variants {
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            v["config"].to_string(),
        )
        .unwrap();
        let tok = TextTokenizer::from_dir(dir.path(), &[1], None).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
        let decoded: Vec<String> = serde_json::from_value(v["decoded"].clone()).unwrap();
        let mut differs_from_file = false;
        for (i, t) in texts.iter().enumerate() {
            let got = tok.encode(t, true).unwrap();
            assert_eq!(got, ids[i], "{}: {t:?}", v["config"]);
            assert_eq!(
                tok.decode(&got, false).unwrap(),
                decoded[i],
                "{}: decoding {t:?}",
                v["config"]
            );
            differs_from_file |= written.encode(t.as_str(), true).unwrap().get_ids() != got;
        }
        rebuilt += usize::from(differs_from_file);
    }
    assert!(
        rebuilt >= 5,
        "only {rebuilt} configs change the tokens: the test cannot fail"
    );
}
