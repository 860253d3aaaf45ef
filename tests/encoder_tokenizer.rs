//! A classifier's BERT, DistilBERT or RoBERTa tokenizer reads as transformers 5 reads it: as
//! written under `PreTrainedTokenizerFast`, rebuilt from `tokenizer_config.json`'s flags under
//! `BertTokenizer` / `DistilBertTokenizer` / `RobertaTokenizer` or, with no class named, by
//! `config.json`'s `model_type` (`scripts/make_encoder_tokenizer_fixture.py`, fixture
//! `tests/fixtures/tokenizers/encoders.json`, on the scorer fixtures).

mod common;

use elastica::score::classifier::{ClassifierOptions, ClassifierScorer};
use std::path::Path;

#[test]
fn classifier_tokenizers_read_as_transformers_5_reads_them() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let fix = common::read_json(&fixtures.join("tokenizers/encoders.json"));
    let texts: Vec<String> = serde_json::from_value(fix["texts"].clone()).unwrap();
    let mut differing = 0;
    for v in fix["variants"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures
            .join("scorers")
            .join(v["fixture"].as_str().unwrap());
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let mut tj = common::read_json(&src.join("tokenizer.json"));
        for edit in v["edits"].as_array().unwrap() {
            *tj.pointer_mut(edit[0].as_str().unwrap()).unwrap() = edit[1].clone();
        }
        std::fs::write(dir.path().join("tokenizer.json"), tj.to_string()).unwrap();
        if !v["config"].is_null() {
            let cfg = dir.path().join("tokenizer_config.json");
            std::fs::write(cfg, v["config"].to_string()).unwrap();
        }
        let written = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let opts = ClassifierOptions::new("POSITIVE");
        let scorer = ClassifierScorer::load(
            dir.path().to_str().unwrap(),
            opts,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let want: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
        for (t, w) in texts.iter().zip(&want) {
            assert_eq!(&scorer.encode(t).unwrap(), w, "{name}: {t:?}");
            differing += usize::from(written.encode(t.as_str(), true).unwrap().get_ids() != w);
        }
    }
    // Read as written, the files would fail the test.
    assert!(
        differing >= 20,
        "{differing} texts differ from the files as written"
    );
}
