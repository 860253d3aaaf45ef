//! What transformers 5 makes of a `tokenizer.json` by the class `tokenizer_config.json` names.
//!
//! transformers 5 reads the file as written for `PreTrainedTokenizerFast` (its
//! `TokenizersBackend`), but a class with a constructor of its own keeps only the file's
//! vocabulary, merges, added tokens and post-processor and builds the rest itself. Of the
//! families elastica loads, that changes the tokens for one: `LlamaTokenizer` (Llama-2,
//! Mistral, TinyLlama) builds no normalizer and a Metaspace
//! pre-tokenizer, so Llama-2's own legacy file (SentencePiece's "prepend '▁' to every piece"
//! as a normalizer) tokenizes otherwise on leading spaces and after special tokens. Qwen2's and
//! Gemma's constructors rebuild what their files already hold. A `LlamaTokenizer` file that is
//! byte-level (Llama-3-style) is read as written, as transformers reads it.

use anyhow::Result;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{ModelWrapper, Tokenizer};

const SPACE: char = '\u{2581}';

fn lib(e: tokenizers::Error) -> anyhow::Error {
    anyhow::anyhow!("the tokenizers library: {e}")
}

/// `tok` (loaded from a file whose text is `file_text`) as transformers 5 reads it under the
/// tokenizer config `cfg` (`Null` when there is none). Returns whether it was rebuilt.
pub fn as_transformers_reads(
    tok: &mut Tokenizer,
    cfg: &serde_json::Value,
    file_text: &str,
) -> Result<bool> {
    let class = cfg.get("tokenizer_class").and_then(|c| c.as_str());
    let llama = class.is_some_and(|c| c.strip_suffix("Fast").unwrap_or(c) == "LlamaTokenizer");
    // transformers' own test: a byte-level file under this class is a Llama-3-style one.
    let byte_level = file_text.contains("\"ByteLevel\"");
    if !llama || byte_level || !matches!(tok.get_model(), ModelWrapper::BPE(_)) {
        return Ok(false);
    }
    // LlamaTokenizer's defaults: add_prefix_space true, legacy false.
    let prefix_space = cfg.get("add_prefix_space").and_then(|v| v.as_bool()) != Some(false);
    let legacy = cfg.get("legacy").and_then(|v| v.as_bool()) == Some(true);
    let scheme = match (prefix_space, legacy) {
        (false, _) => PrependScheme::Never,
        (true, true) => PrependScheme::Always,
        (true, false) => PrependScheme::First,
    };
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPACE.to_string(), " ").map_err(lib)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if prefix_space {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tok.with_normalizer(None::<NormalizerWrapper>)
        .map_err(lib)?;
    tok.with_pre_tokenizer(Some(Metaspace::new(SPACE, scheme, false)));
    tok.with_decoder(Some(DecoderWrapper::Sequence(Sequence::new(decoders))));
    Ok(true)
}
