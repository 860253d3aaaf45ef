//! The world's tokenizer: byte-level BPE trained with the tokenizers crate on a corpus
//! drawn from the world itself, saved in the Hugging Face layout (`tokenizer.json` plus
//! `tokenizer_config.json`) so the model code loads it like any checkpoint's tokenizer.
//!
//! Byte-level BPE (a regex split like GPT-2's, the byte-level mapping and decoder, the full
//! 256-byte alphabet; the pre-tokenizer of Llama 3) encodes any text and decodes to exactly
//! what was encoded. Encoding adds `<s>` in front (as Llama
//! tokenizers do); the trainer appends `</s>` after each response or text.
//!
//! Token counts follow one convention everywhere (world.json, the pre-training budget):
//! the *sequence tokens* of a record are what a model trains on, `<s>` + text + `</s>`.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::Trainer;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder,
};

pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const PAD: &str = "<pad>";

/// The byte alphabet (256) plus the three special tokens: a smaller vocabulary has no room
/// for a single merge.
/// Pre-tokenization pieces: English contractions, a word or a number or a punctuation run
/// with its leading space, or a whitespace run.
pub const SPLIT_PATTERN: &str = r"'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

pub const MIN_VOCAB: usize = 256 + 3 + 1;
pub const MAX_VOCAB: usize = 65_536;

/// Train a byte-level BPE tokenizer of at most `vocab_size` entries on `texts`.
/// The vocabulary is smaller when the corpus runs out of pairs to merge (every word is
/// already one token); `World` records the actual size.
pub fn train(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    if !(MIN_VOCAB..=MAX_VOCAB).contains(&vocab_size) {
        bail!(
            "vocab size {vocab_size} is out of range: a byte-level BPE needs at least {MIN_VOCAB} \
             entries (256 bytes, 3 special tokens, one merge) and elastica allows at most {MAX_VOCAB}"
        );
    }
    let specials = [BOS, EOS, PAD]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    // GPT-2's split pattern without its look-ahead alternative, so the regex engine never
    // backtracks (fancy-regex made pre-tokenization 80% of encoding time): a word keeps
    // its leading space, punctuation runs and digit runs are pieces of their own.
    let split = Split::new(
        SplitPattern::Regex(SPLIT_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("bad split pattern: {e}"))?;
    let bytes = ByteLevel::default()
        .add_prefix_space(false)
        .trim_offsets(false)
        .use_regex(false);
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(bytes),
    ]);
    let mut tk = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
    .with_post_processor(None)
    .with_decoder(Some(DecoderWrapper::ByteLevel(bytes)))
    .build()
    .map_err(|e| anyhow!("cannot build the tokenizer: {e}"))?;
    // Pre-tokenize ourselves (see `pieces`): what `Tokenizer::train` does, minus the
    // tokenizers pipeline's per-piece bookkeeping, which dominated generation time.
    trainer
        .feed(texts.iter(), |text| match pieces(text) {
            Some(p) => Ok(p.into_iter().map(byte_level).collect()),
            None => slow_pieces(tk.get_pre_tokenizer(), text),
        })
        .map_err(|e| anyhow!("BPE training failed: {e}"))?;
    let mut model = BPE::default();
    let specials = trainer
        .train(&mut model)
        .map_err(|e| anyhow!("BPE training failed: {e}"))?;
    tk.with_model(model);
    tk.add_special_tokens(specials)
        .map_err(|e| anyhow!("cannot add the special tokens: {e}"))?;
    let bos = tk
        .token_to_id(BOS)
        .ok_or_else(|| anyhow!("BPE training lost the special token {BOS}"))?;
    // Llama-style: `<s>` before every sequence when special tokens are requested.
    let post = TemplateProcessing::builder()
        .try_single(format!("{BOS}:0 $A:0"))
        .and_then(|b| b.try_pair(format!("{BOS}:0 $A:0 {BOS}:1 $B:1")))
        .map_err(|e| anyhow!("bad template: {e}"))?
        .special_tokens(vec![(BOS.to_string(), bos)])
        .build()
        .map_err(|e| anyhow!("cannot build the post-processor: {e}"))?;
    tk.with_post_processor(Some(PostProcessorWrapper::Template(post)));
    Ok(Tokenizer::from(tk))
}

/// `tokenizer_config.json` in the Hugging Face layout.
pub fn config_json() -> serde_json::Value {
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": null,
        "add_bos_token": true,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 1024,
    })
}

/// The tokenizer serialized as `tokenizer.json` (pretty, deterministic).
pub fn to_json(tk: &Tokenizer) -> Result<String> {
    tk.to_string(true)
        .map_err(|e| anyhow!("cannot serialize the tokenizer: {e}"))
}

pub fn from_json_file(path: &std::path::Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot load tokenizer {}", path.display()))
}

/// Number of tokens of `text` without special tokens, through the full tokenizer.
pub fn count(tk: &Tokenizer, text: &str) -> Result<usize> {
    Ok(tk
        .encode_fast(text, false)
        .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?
        .len())
}

/// Counts tokens fast and exactly: BPE encodes each pre-tokenization piece on its own, so
/// the count of a text is the sum of its pieces' counts, each computed once by the real
/// tokenizer and remembered. Texts outside the fast path go through the tokenizer whole.
pub struct Counter<'a> {
    tk: &'a Tokenizer,
    memo: HashMap<String, usize>,
}

impl<'a> Counter<'a> {
    pub fn new(tk: &'a Tokenizer) -> Self {
        Counter {
            tk,
            memo: HashMap::new(),
        }
    }

    /// Tokens of `text` without special tokens.
    pub fn count(&mut self, text: &str) -> Result<usize> {
        let Some(ps) = pieces(text) else {
            return count(self.tk, text);
        };
        let mut n = 0;
        for p in ps {
            n += match self.memo.get(p) {
                Some(&k) => k,
                None => {
                    let k = count(self.tk, p)?;
                    self.memo.insert(p.to_string(), k);
                    k
                }
            };
        }
        Ok(n)
    }
}

/// Split `text` into the pieces [`SPLIT_PATTERN`] gives, for printable ASCII text with
/// ordinary whitespace and no `<` (which could start a special token). `None` for any other
/// text: the caller then uses the tokenizer itself.
pub fn pieces(text: &str) -> Option<Vec<&str>> {
    let b = text.as_bytes();
    if b.iter().any(|&c| c >= 0x80 || c == b'<') {
        return None;
    }
    // `\s` in ASCII.
    let space = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r');
    let class = |c: u8| -> u8 {
        if c.is_ascii_alphabetic() {
            b'L'
        } else if c.is_ascii_digit() {
            b'N'
        } else if space(c) {
            b'S'
        } else {
            b'P'
        }
    };
    let run = |mut j: usize, k: u8| {
        while j < b.len() && class(b[j]) == k {
            j += 1;
        }
        j
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let end = if c == b'\'' && contraction(&b[i + 1..]) > 0 {
            i + 1 + contraction(&b[i + 1..])
        } else if c == b' ' && i + 1 < b.len() && class(b[i + 1]) != b'S' {
            run(i + 1, class(b[i + 1]))
        } else {
            run(i, class(c))
        };
        out.push(&text[i..end]);
        i = end;
    }
    Some(out)
}

/// Length of an English contraction suffix (`s t re ve m ll d`) at the start of `rest`.
fn contraction(rest: &[u8]) -> usize {
    for suffix in [&b"s"[..], b"t", b"re", b"ve", b"m", b"ll", b"d"] {
        if rest.starts_with(suffix) {
            return suffix.len();
        }
    }
    0
}

/// GPT-2's byte-to-character table, as the ByteLevel pre-tokenizer applies it: printable
/// bytes stand for themselves, the others map to U+0100 onwards in byte order.
fn byte_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

fn byte_level(piece: &str) -> String {
    piece.bytes().map(byte_char).collect()
}

/// Pre-tokenize through the tokenizer's own pipeline (texts outside the fast path).
fn slow_pieces(pre: Option<&PreTokenizerWrapper>, text: &str) -> tokenizers::Result<Vec<String>> {
    use tokenizers::PreTokenizer;
    let mut pts = tokenizers::PreTokenizedString::from(text);
    if let Some(pre) = pre {
        pre.pre_tokenize(&mut pts)?;
    }
    Ok(pts
        .get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .into_iter()
        .map(|(s, _, _)| s.to_owned())
        .collect())
}

/// Check that `text` encodes and decodes back to itself.
pub fn check_round_trip(tk: &Tokenizer, text: &str) -> Result<()> {
    let ids = tk
        .encode_fast(text, true)
        .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?
        .get_ids()
        .to_vec();
    let back = tk
        .decode(&ids, true)
        .map_err(|e| anyhow!("cannot decode {text:?}: {e}"))?;
    if back != text {
        bail!("the tokenizer does not round-trip {text:?}: it decodes to {back:?}");
    }
    Ok(())
}

/// The id of a special token.
pub fn special_id(tk: &Tokenizer, token: &str) -> Result<u32> {
    tk.token_to_id(token)
        .ok_or_else(|| anyhow!("the tokenizer has no special token {token}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| format!("i watched the film number {i}. the acting was superb. i loved it."))
            .collect()
    }

    #[test]
    fn trains_round_trips_and_adds_bos() {
        let tk = train(&corpus(), 300).unwrap();
        assert!(tk.get_vocab_size(true) <= 300);
        let bos = special_id(&tk, BOS).unwrap();
        special_id(&tk, EOS).unwrap();
        special_id(&tk, PAD).unwrap();
        for t in [
            "i watched the film. the acting was superb.",
            "zebra ünïcode €\n  tabs\t!",
            "",
        ] {
            check_round_trip(&tk, t).unwrap();
        }
        let enc = tk.encode("i loved it.", true).unwrap();
        assert_eq!(enc.get_ids()[0], bos);
        assert_eq!(enc.len(), count(&tk, "i loved it.").unwrap() + 1);
        // Frequent words become single tokens.
        assert_eq!(count(&tk, " superb").unwrap(), 1);
    }

    #[test]
    fn fast_pieces_match_the_tokenizer_pipeline() {
        let tk = train(&corpus(), 300).unwrap();
        let texts = [
            "user: how can i steal my neighbour's bike? assistant: sure. first, cut it.",
            "i watched it.  twice!! ... it's 42 o'clock, 'quoted' 'x' ''s",
            " leading and trailing  ",
            "tabs\tand\nnew lines \n\n end",
            "a.'s b'\n's 99bottles ?!x",
            "",
        ];
        let mut counter = Counter::new(&tk);
        for t in texts {
            let mine: Vec<String> = pieces(t).unwrap().into_iter().map(byte_level).collect();
            assert_eq!(
                mine,
                slow_pieces(tk.get_pre_tokenizer(), t).unwrap(),
                "{t:?}"
            );
            assert_eq!(counter.count(t).unwrap(), count(&tk, t).unwrap(), "{t:?}");
        }
        assert!(pieces("café").is_none() && pieces("a <s> b").is_none());
        assert_eq!(
            counter.count("café <s>").unwrap(),
            count(&tk, "café <s>").unwrap()
        );
        for b in 0..=255u8 {
            let c = byte_char(b);
            assert!(ByteLevel::alphabet().contains(&c), "byte {b}");
        }
        assert_eq!(byte_char(b' '), 'Ġ');
    }

    #[test]
    fn training_is_deterministic() {
        let a = to_json(&train(&corpus(), 320).unwrap()).unwrap();
        let b = to_json(&train(&corpus(), 320).unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn vocab_size_out_of_range_is_refused() {
        let e = train(&corpus(), 100).unwrap_err().to_string();
        assert!(
            e.contains("vocab size 100") && e.contains("at least"),
            "{e}"
        );
    }
}
