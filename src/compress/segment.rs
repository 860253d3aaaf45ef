//! The byte scheme: how any byte string is cut into **text pieces** (coded as tokens) and
//! **raw runs** (coded as uniform bytes), so that every input round-trips exactly.
//!
//! 1. The input is split into maximal valid-UTF-8 runs and the invalid bytes between them; a
//!    NUL byte counts as invalid (no text holds one, binary files are full of them, and a
//!    model would spend a forward on each only for the run to end up raw).
//! 2. A valid run becomes text if it is the whole input or at least [`MIN_TEXT_RUN`] bytes
//!    long; shorter runs between invalid bytes join the raw run around them (an escape costs
//!    about 25 bits, more than coding a few bytes raw), so binary junk stays near 8 bits/byte.
//! 3. Text runs are cut into pieces of at most [`MAX_PIECE_BYTES`], before a whitespace
//!    character where one is near, which bounds the tokenizer's work per call.
//! 4. A piece stays text only if the tokenizer round-trips it: `decode(encode(piece))` equals
//!    the piece byte for byte. Otherwise it is bisected (again before whitespace where
//!    possible) and each half tried on its own, down to single characters; a character the
//!    tokenizer cannot reproduce (an unknown-token character, one a normaliser rewrites) is
//!    coded raw.
//!
//! The decoder needs none of these rules: the stream says where each piece ends (a break,
//! raw-run or end symbol), and each piece decodes on its own. Only the encoder chooses.

use super::predictor::Tokenization;
use anyhow::{bail, Context, Result};
use std::ops::Range;

/// Valid UTF-8 runs shorter than this, between invalid bytes, are coded raw.
pub const MIN_TEXT_RUN: usize = 16;

/// Longest text piece handed to the tokenizer in one call.
pub const MAX_PIECE_BYTES: usize = 1 << 16;

/// One stretch of the input, in order; together the segments cover the input exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `bytes` of the input coded as `tokens`; `decode(tokens)` reproduces them exactly.
    Text {
        bytes: Range<usize>,
        tokens: Vec<u32>,
    },
    /// `bytes` of the input coded one by one.
    Raw { bytes: Range<usize> },
}

impl Segment {
    pub fn bytes(&self) -> &Range<usize> {
        match self {
            Segment::Text { bytes, .. } | Segment::Raw { bytes } => bytes,
        }
    }
}

/// Cut `input` into segments (see the module doc). Every token id is below `vocab_size`.
pub fn plan(input: &[u8], tok: &dyn Tokenization, vocab_size: usize) -> Result<Vec<Segment>> {
    let mut out = Planner {
        tok,
        vocab_size,
        segments: Vec::new(),
    };
    let runs = utf8_runs(input);
    let whole = runs.len() == 1;
    for (range, valid) in runs {
        if valid && (whole || range.len() >= MIN_TEXT_RUN) {
            // Valid by construction of `utf8_runs`.
            let text = std::str::from_utf8(&input[range.clone()])
                .context("internal error: a UTF-8 run is not valid UTF-8")?;
            out.text_run(text, range.start)?;
        } else {
            out.raw(range);
        }
    }
    Ok(out.segments)
}

struct Planner<'a> {
    tok: &'a dyn Tokenization,
    vocab_size: usize,
    segments: Vec<Segment>,
}

impl Planner<'_> {
    fn raw(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        if let Some(Segment::Raw { bytes }) = self.segments.last_mut() {
            if bytes.end == range.start {
                bytes.end = range.end;
                return;
            }
        }
        self.segments.push(Segment::Raw { bytes: range });
    }

    fn text_run(&mut self, mut text: &str, mut offset: usize) -> Result<()> {
        while text.len() > MAX_PIECE_BYTES {
            let cut = cut_near(text, MAX_PIECE_BYTES);
            self.piece(&text[..cut], offset)?;
            offset += cut;
            text = &text[cut..];
        }
        self.piece(text, offset)
    }

    /// Code `text` as tokens if the tokenizer round-trips it, else bisect.
    fn piece(&mut self, text: &str, offset: usize) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let tokens = self.tok.encode(text).with_context(|| {
            format!(
                "the tokenizer failed on input bytes {offset}..{}",
                offset + text.len()
            )
        })?;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            bail!(
                "the tokenizer produced token id {bad} but the model's vocabulary has {} entries; \
                 the tokenizer does not belong to this model",
                self.vocab_size
            );
        }
        let round_trips = !tokens.is_empty()
            && self.tok.decode(&tokens).with_context(|| {
                format!(
                    "the tokenizer cannot decode the tokens of input bytes {offset}..{}",
                    offset + text.len()
                )
            })? == text;
        if round_trips {
            self.segments.push(Segment::Text {
                bytes: offset..offset + text.len(),
                tokens,
            });
            return Ok(());
        }
        let mut chars = text.char_indices();
        chars.next();
        if chars.next().is_none() {
            // A single character the tokenizer cannot reproduce.
            self.raw(offset..offset + text.len());
            return Ok(());
        }
        let cut = cut_near(text, text.len() / 2);
        self.piece(&text[..cut], offset)?;
        self.piece(&text[cut..], offset + cut)
    }
}

/// Maximal runs of valid UTF-8 without NUL bytes (`true`) and of bytes that are not (`false`),
/// in order.
pub fn utf8_runs(input: &[u8]) -> Vec<(Range<usize>, bool)> {
    let mut runs: Vec<(Range<usize>, bool)> = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        match std::str::from_utf8(&input[pos..]) {
            Ok(_) => {
                push_valid(&mut runs, input, pos..input.len());
                pos = input.len();
            }
            Err(e) => {
                let valid_end = pos + e.valid_up_to();
                push_valid(&mut runs, input, pos..valid_end);
                let bad_end = match e.error_len() {
                    Some(n) => valid_end + n,
                    None => input.len(), // an incomplete sequence at the very end
                };
                push_run(&mut runs, valid_end..bad_end, false);
                pos = bad_end;
            }
        }
    }
    runs
}

/// Append a valid-UTF-8 stretch `r` of `input`, its NUL bytes as invalid ones.
fn push_valid(runs: &mut Vec<(Range<usize>, bool)>, input: &[u8], r: Range<usize>) {
    let mut start = r.start;
    for i in r.clone().filter(|&i| input[i] == 0) {
        push_run(runs, start..i, true);
        push_run(runs, i..i + 1, false);
        start = i + 1;
    }
    push_run(runs, start..r.end, true);
}

/// Append `r`, merged into the last run when that one is of the same kind and ends where it
/// starts.
fn push_run(runs: &mut Vec<(Range<usize>, bool)>, r: Range<usize>, valid: bool) {
    if r.is_empty() {
        return;
    }
    match runs.last_mut() {
        Some((last, v)) if *v == valid && last.end == r.start => last.end = r.end,
        _ => runs.push((r, valid)),
    }
}

/// A char boundary strictly inside `text` (which has at least two chars) near `target`,
/// preferring the position just before a whitespace character (so words keep their leading
/// space, as BPE tokenizers expect).
fn cut_near(text: &str, target: usize) -> usize {
    const WINDOW: usize = 256;
    let bytes = text.as_bytes();
    let target = target.clamp(1, text.len() - 1);
    let lo = target.saturating_sub(WINDOW).max(1);
    let hi = (target + WINDOW).min(text.len() - 1);
    // ASCII whitespace bytes are always char boundaries in UTF-8.
    if let Some(i) = (lo..=target)
        .rev()
        .find(|&i| bytes[i].is_ascii_whitespace())
    {
        return i;
    }
    if let Some(i) = (target..=hi).find(|&i| bytes[i].is_ascii_whitespace()) {
        return i;
    }
    let mut cut = target;
    while cut > 0 && !text.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        cut = target;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testing::ToyTokenizer;

    fn covers(input: &[u8], segs: &[Segment]) {
        let mut pos = 0;
        for s in segs {
            assert_eq!(s.bytes().start, pos);
            assert!(!s.bytes().is_empty());
            pos = s.bytes().end;
        }
        assert_eq!(pos, input.len());
    }

    #[test]
    fn utf8_runs_split_valid_and_invalid_bytes() {
        let input = b"ab\xffcd\xe2\x82";
        assert_eq!(
            utf8_runs(input),
            vec![(0..2, true), (2..3, false), (3..5, true), (5..7, false)]
        );
        assert!(utf8_runs(b"").is_empty());
        // NUL bytes are no text.
        assert_eq!(
            utf8_runs(b"ab\0\0cd\xff\0"),
            vec![(0..2, true), (2..4, false), (4..6, true), (6..8, false)]
        );
    }

    #[test]
    fn a_run_of_nul_bytes_is_raw_without_asking_the_tokenizer() {
        let tok = ToyTokenizer::new();
        let input = vec![0u8; 5000];
        let segs = plan(&input, &tok, tok.vocab_len()).unwrap();
        assert_eq!(segs, vec![Segment::Raw { bytes: 0..5000 }]);
    }

    #[test]
    fn plain_ascii_is_one_text_piece_and_short_valid_runs_between_junk_are_raw() {
        let tok = ToyTokenizer::new();
        let segs = plan(b"hello world", &tok, tok.vocab_len()).unwrap();
        assert!(matches!(&segs[..], [Segment::Text { .. }]));

        let input = b"\xff\xfeabc\xfflong enough text run here\x80";
        let segs = plan(input, &tok, tok.vocab_len()).unwrap();
        covers(input, &segs);
        assert!(matches!(&segs[0], Segment::Raw { bytes } if *bytes == (0..6)));
        assert!(matches!(&segs[1], Segment::Text { .. }));
        assert!(matches!(&segs[2], Segment::Raw { .. }));
    }

    #[test]
    fn characters_the_tokenizer_cannot_reproduce_go_raw_and_the_rest_stays_text() {
        let tok = ToyTokenizer::new();
        let input = "the cat sat on the mat, é, and the dog ran away".as_bytes();
        let segs = plan(input, &tok, tok.vocab_len()).unwrap();
        covers(input, &segs);
        let raw: Vec<_> = segs
            .iter()
            .filter_map(|s| match s {
                Segment::Raw { bytes } => Some(&input[bytes.clone()]),
                _ => None,
            })
            .collect();
        assert_eq!(raw, vec!["é".as_bytes()]);
        let text_bytes: usize = segs
            .iter()
            .filter(|s| matches!(s, Segment::Text { .. }))
            .map(|s| s.bytes().len())
            .sum();
        assert_eq!(text_bytes, input.len() - 2);
    }

    #[test]
    fn long_text_is_cut_before_whitespace() {
        let tok = ToyTokenizer::new();
        let text = "word ".repeat(MAX_PIECE_BYTES / 5 * 3);
        let segs = plan(text.as_bytes(), &tok, tok.vocab_len()).unwrap();
        covers(text.as_bytes(), &segs);
        assert!(segs.len() >= 3);
        for s in &segs[..segs.len() - 1] {
            let r = s.bytes();
            assert!(r.len() <= MAX_PIECE_BYTES);
            assert_eq!(
                text.as_bytes()[r.end - 1],
                b'd',
                "cut inside a word at {r:?}"
            );
        }
    }

    #[test]
    fn a_tokenizer_with_ids_beyond_the_model_vocabulary_is_an_error() {
        let tok = ToyTokenizer::new();
        let err = plan(b"hello", &tok, 3).unwrap_err();
        assert!(
            format!("{err:#}").contains("does not belong to this model"),
            "{err:#}"
        );
    }
}
