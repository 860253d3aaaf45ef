//! What transformers 5 makes of a `tokenizer.json` by the class `tokenizer_config.json` names.
//!
//! transformers 5 reads the file as written for `PreTrainedTokenizerFast` (its
//! `TokenizersBackend`), but a class with a constructor of its own keeps only the file's
//! vocabulary, merges and added tokens and builds the rest itself. Of the families elastica
//! loads, that changes the tokens for:
//! - `LlamaTokenizer` (Llama-2, Mistral, TinyLlama): no normalizer and a Metaspace
//!   pre-tokenizer (the file's post-processor is kept), so Llama-2's own legacy file
//!   (SentencePiece's "prepend '▁' to every piece" as a normalizer) tokenizes otherwise on
//!   leading spaces and after special tokens. A byte-level file under this class
//!   (Llama-3-style) is read as written, as transformers reads it;
//! - the classifiers' `BertTokenizer` / `DistilBertTokenizer` and `RobertaTokenizer`, also
//!   chosen by `config.json`'s `model_type` where the config names no class: BERT's normalizer
//!   comes from the config's `do_lower_case` (default true), `strip_accents` and
//!   `tokenize_chinese_chars`, RoBERTa's byte-level pre-tokenizer from `add_prefix_space`
//!   (default false), whatever the file holds; both rebuild their special-token template.
//!
//! Qwen2's and Gemma's constructors rebuild what their files already hold.

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
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
    anyhow!("the tokenizers library: {e}")
}

/// A special token named in a tokenizer config: a string, or an AddedToken written as a dict
/// (`{"content": "</s>", ...}`).
pub fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// `tok` (loaded from a file whose text is `file_text`) as transformers 5 reads it under the
/// tokenizer config `cfg` (`Null` when there is none) for a model of `model_type` (given for
/// the classifiers' encoders). Returns whether it was rebuilt.
pub fn as_transformers_reads(
    tok: &mut Tokenizer,
    cfg: &Value,
    file_text: &str,
    model_type: Option<&str>,
) -> Result<bool> {
    let named = cfg.get("tokenizer_class").and_then(|c| c.as_str());
    // With no class named, AutoTokenizer takes the model type's (of the encoders here; a
    // decoder's file is then read as written, measured with transformers 5.25).
    let class = match (named, model_type) {
        (Some(c), _) => c.strip_suffix("Fast").unwrap_or(c),
        (None, Some("bert" | "distilbert")) => "BertTokenizer",
        (None, Some("roberta")) => "RobertaTokenizer",
        (None, _) => return Ok(false),
    };
    // The encoders' constructors: edits of the file, which is then loaded again.
    let rebuild: fn(&mut Value, &Value, &Tokenizer) -> Result<()> = match (class, tok.get_model()) {
        ("LlamaTokenizer", ModelWrapper::BPE(_)) => return llama(tok, cfg, file_text),
        ("BertTokenizer" | "DistilBertTokenizer", ModelWrapper::WordPiece(_)) => bert,
        ("RobertaTokenizer", ModelWrapper::BPE(_)) => roberta,
        _ => return Ok(false),
    };
    let mut tj: Value = serde_json::from_str(file_text)?;
    rebuild(&mut tj, cfg, tok)?;
    *tok = parsed(&tj)?;
    Ok(true)
}

/// A special token of `cfg` (else `default`) and its id in `tok`.
fn special(cfg: &Value, key: &str, default: &str, tok: &Tokenizer) -> Result<(String, u32)> {
    let t = token_string(cfg.get(key)).unwrap_or_else(|| default.to_string());
    let id = tok
        .token_to_id(&t)
        .with_context(|| format!("the {key} {t:?} is not in the tokenizer's vocabulary"))?;
    Ok((t, id))
}

/// BertTokenizer's constructor: the file's WordPiece vocabulary, a BertNormalizer from the
/// config's flags, the BERT pre-tokenizer and decoder, `[CLS] A [SEP]` (`[CLS] A [SEP] B [SEP]`).
fn bert(tj: &mut Value, cfg: &Value, tok: &Tokenizer) -> Result<()> {
    let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool());
    let (cls, cls_id) = special(cfg, "cls_token", "[CLS]", tok)?;
    let (sep, sep_id) = special(cfg, "sep_token", "[SEP]", tok)?;
    let unk = token_string(cfg.get("unk_token")).unwrap_or_else(|| "[UNK]".into());
    tj["normalizer"] = json!({
        "type": "BertNormalizer",
        "clean_text": true,
        "handle_chinese_chars": flag("tokenize_chinese_chars").unwrap_or(true),
        "strip_accents": flag("strip_accents"),
        "lowercase": flag("do_lower_case").unwrap_or(true),
    });
    tj["pre_tokenizer"] = json!({"type": "BertPreTokenizer"});
    tj["decoder"] = json!({"type": "WordPiece", "prefix": "##", "cleanup": true});
    let piece = |kind: &str, id: &str, type_id: u32| json!({kind: {"id": id, "type_id": type_id}});
    tj["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [piece("SpecialToken", &cls, 0), piece("Sequence", "A", 0),
                   piece("SpecialToken", &sep, 0)],
        "pair": [piece("SpecialToken", &cls, 0), piece("Sequence", "A", 0),
                 piece("SpecialToken", &sep, 0), piece("Sequence", "B", 1),
                 piece("SpecialToken", &sep, 1)],
        "special_tokens": {
            &cls: {"id": &cls, "ids": [cls_id], "tokens": [&cls]},
            &sep: {"id": &sep, "ids": [sep_id], "tokens": [&sep]},
        },
    });
    let model = model_of(tj)?;
    model.insert("unk_token".into(), unk.into());
    model.insert("continuing_subword_prefix".into(), "##".into());
    model.insert("max_input_chars_per_word".into(), 100.into());
    Ok(())
}

/// RobertaTokenizer's constructor: the file's byte-level BPE vocabulary and merges, no
/// normalizer, a ByteLevel pre-tokenizer with the config's `add_prefix_space`, `<s> A </s>`.
fn roberta(tj: &mut Value, cfg: &Value, tok: &Tokenizer) -> Result<()> {
    let flag = |k: &str| cfg.get(k).and_then(|v| v.as_bool());
    let prefix_space = flag("add_prefix_space").unwrap_or(false);
    let trim = flag("trim_offsets").unwrap_or(true);
    let (cls, cls_id) = special(cfg, "cls_token", "<s>", tok)?;
    let (sep, sep_id) = special(cfg, "sep_token", "</s>", tok)?;
    tj["normalizer"] = Value::Null;
    tj["pre_tokenizer"] = json!({"type": "ByteLevel", "add_prefix_space": prefix_space,
                                 "trim_offsets": true, "use_regex": true});
    tj["decoder"] = json!({"type": "ByteLevel", "add_prefix_space": true,
                           "trim_offsets": true, "use_regex": true});
    tj["post_processor"] = json!({"type": "RobertaProcessing", "sep": [sep, sep_id],
                                  "cls": [cls, cls_id], "trim_offsets": trim,
                                  "add_prefix_space": prefix_space});
    let model = model_of(tj)?;
    model.insert("dropout".into(), Value::Null);
    model.insert("unk_token".into(), Value::Null);
    model.insert("continuing_subword_prefix".into(), "".into());
    model.insert("end_of_word_suffix".into(), "".into());
    model.insert("fuse_unk".into(), false.into());
    model.insert("byte_fallback".into(), false.into());
    Ok(())
}

/// The rebuilt file, loaded (a panic of the tokenizers library becomes an error, as where the
/// file itself is read).
fn parsed(tj: &Value) -> Result<Tokenizer> {
    let text = tj.to_string();
    std::panic::catch_unwind(|| text.parse::<Tokenizer>())
        .map_err(|_| anyhow!("the tokenizers library panicked on the rebuilt file"))?
        .map_err(lib)
}

fn model_of(tj: &mut Value) -> Result<&mut serde_json::Map<String, Value>> {
    tj.get_mut("model")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| anyhow!("the file has no \"model\" object"))
}

/// LlamaTokenizer's constructor (see the module doc); the file's post-processor is kept.
fn llama(tok: &mut Tokenizer, cfg: &Value, file_text: &str) -> Result<bool> {
    // transformers' own test: a byte-level file under this class is a Llama-3-style one.
    if file_text.contains("\"ByteLevel\"") {
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
