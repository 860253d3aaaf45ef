//! [`Tokenization`] for a Hugging Face `tokenizers::Tokenizer` (a `tokenizer.json`).
//!
//! Encoding adds no special tokens (the predictor's `start` supplies BOS); decoding keeps
//! special tokens, so text that happens to spell one (`</s>`) still round-trips. A bare
//! `Tokenizer` does not know which id is EOS (that lives in `tokenizer_config.json`), so
//! [`Tokenization::eos_id`] is `None` here; a model's own tokenizer type should report it.

use super::predictor::Tokenization;
use anyhow::{anyhow, Result};

impl Tokenization for tokenizers::Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // `**self` is the inner `TokenizerImpl`, whose inherent methods this trait shadows.
        let enc = (**self)
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizer cannot encode the text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        (**self)
            .decode(ids, false)
            .map_err(|e| anyhow!("tokenizer cannot decode {} ids: {e}", ids.len()))
    }

    fn eos_id(&self) -> Option<u32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::compress::format::sha256;
    use crate::compress::testing::NgramPredictor;
    use crate::compress::{compress, decompress, CompressOptions};
    use std::path::Path;

    fn fixture_tokenizer() -> (tokenizers::Tokenizer, [u8; 32]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer.json");
        let bytes = std::fs::read(&path).unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(&bytes).unwrap();
        (tok, sha256(&bytes))
    }

    #[test]
    fn byte_level_bpe_keeps_all_valid_utf8_as_text_and_round_trips_everything() {
        let (tok, id) = fixture_tokenizer();
        let vocab = tok.get_vocab_size(true);
        let cases: Vec<Vec<u8>> = vec![
            b"The model answered the question, then stopped.</s> And <s> again.".to_vec(),
            "naïve café — 東京 🚀 done, with unicode the training text never saw".into(),
            b"text long enough to be a text run \xff\xfe and then more text after the junk"
                .to_vec(),
            vec![],
            vec![0x80],
        ];
        for input in &cases {
            let make =
                || NgramPredictor::with_tokenizer(tok.clone(), id, vocab, vocab, 64).unwrap();
            let mut pred = make();
            let (file, report) = compress(input, &mut pred, &CompressOptions::default()).unwrap();
            if std::str::from_utf8(input).is_ok() {
                assert_eq!(
                    report.stream.raw_bytes,
                    0,
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            }
            let (back, _) = decompress(&file, &mut make(), false).unwrap();
            assert_eq!(&back, input);
        }
    }
}
