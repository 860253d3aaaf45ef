//! Whole-file compression with a language model: segment the input
//! ([`super::segment`]), range-code it ([`super::coder`]), and wrap the payload in the
//! checked header ([`super::format`]); and the inverse, which verifies the SHA-256 of what
//! it decoded before returning a single byte.
//!
//! Raw fallback: a text piece the model codes worse than storing its bytes (an ELF's zero
//! runs and symbol names under a model of English) is stored as a raw run instead, after a
//! first pass measured each piece's code length; and if the whole stream still costs more
//! than [`RAW_SLACK`] bytes over the input, the input is stored as one raw run. So a file
//! never grows by more than the header plus [`RAW_SLACK`] bytes.

use super::coder::{self, Encoded, Expect, Inconsistent, StreamStats};
use super::format::{hash8, sha256, FormatError, Header, HEADER_LEN, VERSION};
use super::predictor::TokenPredictor;
use super::probe::{numerics_probe, numerics_settings};
use super::segment::{self, Segment};
use super::symbols::{elias_gamma_bits, Control, ESCAPE_BITS};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

/// Knobs of the encoder (the decoder reads everything from the header).
#[derive(Debug, Clone, Default)]
pub struct CompressOptions {
    /// Token steps per chunk; default and maximum: the model's `max_context()`.
    pub chunk_tokens: Option<usize>,
    /// Draw a progress bar (tokens, with throughput) on stderr.
    pub progress: bool,
}

/// Payload bytes allowed over the input before the whole input is stored as one raw run
/// (that run costs the input plus about 8 bytes: escapes, its length, the coder's flush).
pub const RAW_SLACK: usize = 16;

/// Sizes and code lengths of one compressed file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompressReport {
    pub original_bytes: u64,
    pub compressed_bytes: u64,
    pub header_bytes: u64,
    pub payload_bytes: u64,
    pub chunk_tokens: u64,
    pub stream: StreamStats,
    /// What the encoder stored raw because the model coded it worse (zeros when
    /// decompressing: the decoder cannot tell a fallback run from any other raw run).
    pub raw_fallback: RawFallback,
}

/// Text the model would have coded worse than its raw bytes, stored raw instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RawFallback {
    /// Text pieces stored as raw runs.
    pub pieces: u64,
    pub bytes: u64,
    /// The whole input was stored as one raw run.
    pub whole_file: bool,
}

impl CompressReport {
    /// Size of the whole file (header included) in bits per original byte.
    pub fn bits_per_byte(&self) -> f64 {
        per(self.compressed_bytes as f64 * 8.0, self.original_bytes)
    }

    /// Ideal code length (sum of -log2 p over every coded symbol) per original byte.
    pub fn ideal_bits_per_byte(&self) -> f64 {
        per(self.stream.ideal_bits(), self.original_bytes)
    }

    /// Ideal code length of the tokens alone, per token.
    pub fn bits_per_token(&self) -> f64 {
        per(self.stream.ideal_token_bits, self.stream.tokens)
    }

    /// Relative excess of the payload over the ideal code length: quantisation, the
    /// escape's reserved mass, the range coder's rounding and its final words. The header
    /// is not included (it is a constant [`HEADER_LEN`] bytes).
    pub fn overhead(&self) -> f64 {
        let ideal = self.stream.ideal_bits();
        if ideal <= 0.0 {
            return 0.0;
        }
        self.payload_bytes as f64 * 8.0 / ideal - 1.0
    }
}

fn per(x: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        x / n as f64
    }
}

fn progress_bar(show: bool, tokens: u64, what: &str) -> ProgressBar {
    if show {
        crate::util::progress::bar(tokens, what)
    } else {
        ProgressBar::hidden()
    }
}

/// Compress `input` with `pred`; returns the file's bytes and its report.
pub fn compress(
    input: &[u8],
    pred: &mut dyn TokenPredictor,
    opts: &CompressOptions,
) -> Result<(Vec<u8>, CompressReport)> {
    let chunk_tokens = opts.chunk_tokens.unwrap_or_else(|| pred.max_context());
    if chunk_tokens == 0 || chunk_tokens > pred.max_context() || chunk_tokens > u32::MAX as usize {
        bail!(
            "chunk length {chunk_tokens} must be between 1 and the model's context of {} tokens",
            pred.max_context()
        );
    }
    let segments = segment::plan(input, pred.tokenization(), pred.vocab_size())
        .context("cannot split the input into text and raw bytes")?;
    let mut best = encode_pass(
        input,
        pred,
        &segments,
        chunk_tokens,
        opts.progress,
        "compress",
    )?;
    let mut fallback = RawFallback::default();
    let (demoted, pieces, bytes) = demote(&segments, &best.segment_bits);
    if pieces > 0 {
        let second = encode_pass(input, pred, &demoted, chunk_tokens, opts.progress, "recode")?;
        // Demoting changes the context of the pieces after it: keep whichever is shorter.
        if second.words.len() < best.words.len() {
            best = second;
            fallback = RawFallback {
                pieces,
                bytes,
                whole_file: false,
            };
        }
    }
    if !input.is_empty() && best.words.len() * 4 > input.len() + RAW_SLACK {
        let whole = [Segment::Raw {
            bytes: 0..input.len(),
        }];
        let raw = encode_pass(input, pred, &whole, chunk_tokens, false, "")?;
        if raw.words.len() < best.words.len() {
            best = raw;
            fallback = RawFallback {
                pieces: segments
                    .iter()
                    .filter(|s| matches!(s, Segment::Text { .. }))
                    .count() as u64,
                bytes: input.len() as u64,
                whole_file: true,
            };
        }
    }
    let payload: Vec<u8> = best.words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let header = Header {
        version: VERSION,
        chunk_tokens: chunk_tokens as u32,
        fingerprint: pred.fingerprint(),
        original_len: input.len() as u64,
        token_count: best.stats.tokens,
        payload_len: payload.len() as u64,
        payload_hash: hash8(&payload),
        content_sha256: sha256(input),
        numerics_probe: Some(numerics_probe(pred)?),
    };
    let mut file = Vec::with_capacity(HEADER_LEN + payload.len());
    file.extend_from_slice(&header.to_bytes());
    file.extend_from_slice(&payload);
    let report = CompressReport {
        original_bytes: input.len() as u64,
        compressed_bytes: file.len() as u64,
        header_bytes: HEADER_LEN as u64,
        payload_bytes: payload.len() as u64,
        chunk_tokens: chunk_tokens as u64,
        stream: best.stats,
        raw_fallback: fallback,
    };
    Ok((file, report))
}

/// One encoding of `segments`, with a progress bar over its tokens when `progress`.
fn encode_pass(
    input: &[u8],
    pred: &mut dyn TokenPredictor,
    segments: &[Segment],
    chunk_tokens: usize,
    progress: bool,
    what: &str,
) -> Result<Encoded> {
    let total_tokens: u64 = segments
        .iter()
        .map(|s| match s {
            Segment::Text { tokens, .. } => tokens.len() as u64,
            Segment::Raw { .. } => 0,
        })
        .sum();
    let pb = progress_bar(
        progress && total_tokens > 0,
        total_tokens,
        &format!("{what} tok"),
    );
    let out = coder::encode(pred, input, segments, chunk_tokens, &pb)?;
    pb.finish_and_clear();
    Ok(out)
}

/// `segments` with every text piece that cost more than its bytes coded raw (escape,
/// control symbol, Elias-gamma length, 8 bits a byte) turned into a raw run, adjacent raw
/// runs merged; with the number of pieces and bytes demoted.
fn demote(segments: &[Segment], bits: &[f64]) -> (Vec<Segment>, u64, u64) {
    let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
    let (mut pieces, mut bytes) = (0u64, 0u64);
    let side = ESCAPE_BITS as f64 + (Control::COUNT as f64).log2();
    for (seg, &b) in segments.iter().zip(bits) {
        let range = seg.bytes().clone();
        let len = range.len() as u64;
        let raw_cost = 8.0 * len as f64 + side + elias_gamma_bits(len.max(1)).len() as f64;
        let as_raw = match seg {
            Segment::Raw { .. } => true,
            Segment::Text { .. } if b > raw_cost => {
                pieces += 1;
                bytes += len;
                true
            }
            Segment::Text { .. } => false,
        };
        match out.last_mut() {
            Some(Segment::Raw { bytes: last }) if as_raw && last.end == range.start => {
                last.end = range.end;
            }
            _ if as_raw => out.push(Segment::Raw { bytes: range }),
            _ => out.push(seg.clone()),
        }
    }
    (out, pieces, bytes)
}

/// Decompress `file` with `pred`, which must be the model it was compressed with. Never
/// returns bytes that differ from the original: the header, the payload and the decoded
/// output are all checked, and a model that computes different probabilities here than
/// where the file was written is named as such (not as damage).
pub fn decompress(
    file: &[u8],
    pred: &mut dyn TokenPredictor,
    progress: bool,
) -> Result<(Vec<u8>, CompressReport)> {
    let (header, payload) = Header::parse(file, &pred.fingerprint())?;
    let chunk_tokens = header.chunk_tokens as usize;
    if chunk_tokens == 0 || chunk_tokens > pred.max_context() {
        bail!(
            "the file was coded in chunks of {chunk_tokens} tokens; this model's context \
             allows 1 to {}",
            pred.max_context()
        );
    }
    if let Some(file_probe) = header.numerics_probe {
        let here = numerics_probe(pred)?;
        if here != file_probe {
            return Err(FormatError::NumericsMismatch {
                file: hex::encode(file_probe),
                here: hex::encode(here),
                settings: numerics_settings(),
            }
            .into());
        }
    }
    if payload.len() % 4 != 0 {
        bail!(
            "corrupt payload: {} bytes is not a whole number of 32-bit words",
            payload.len()
        );
    }
    let words: Vec<u32> = payload
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let pb = progress_bar(progress, header.token_count, "decompress tok");
    let expect = Expect {
        original_len: header.original_len,
        token_count: header.token_count,
    };
    // The payload's hash matched, so a stream that does not decode, or decodes to other
    // bytes, means this model's probabilities differ from the encoder's somewhere the probe
    // does not reach (or, for a version 1 file, anywhere).
    let differs = |what: &str| {
        anyhow!(
            "the payload is intact (its hash matches the header) but {what}: the model's \
             numerics differ from the ones that compressed this file (same weights, tokenizer \
             and config, different arithmetic). Decompress it with the settings and machine \
             kind that compressed it: the same ELASTICA_KERNELS and ELASTICA_BLAS, the same \
             elastica build and CPU kind (here: {})",
            numerics_settings()
        )
    };
    let (out, stream) = coder::decode(pred, words, chunk_tokens, &expect, &pb).map_err(|e| {
        match e.downcast_ref::<Inconsistent>() {
            Some(i) => differs(&format!("it does not decode under this model ({i})")),
            None => e,
        }
    })?;
    pb.finish_and_clear();
    if sha256(&out) != header.content_sha256 {
        return Err(differs(
            "the decoded bytes do not match the original's SHA-256",
        ));
    }
    let report = CompressReport {
        original_bytes: header.original_len,
        compressed_bytes: file.len() as u64,
        header_bytes: HEADER_LEN as u64,
        payload_bytes: payload.len() as u64,
        chunk_tokens: chunk_tokens as u64,
        stream,
        raw_fallback: RawFallback::default(),
    };
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testing::NgramPredictor;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn round_trip(input: &[u8], vocab: usize, chunk: usize) -> (Vec<u8>, CompressReport) {
        let mut pred = NgramPredictor::new(vocab, 4096).unwrap();
        let opts = CompressOptions {
            chunk_tokens: Some(chunk),
            progress: false,
        };
        let (file, report) = compress(input, &mut pred, &opts).unwrap();
        let mut fresh = NgramPredictor::new(vocab, 4096).unwrap();
        let (back, dreport) = decompress(&file, &mut fresh, false).unwrap();
        assert_eq!(back, input);
        assert_eq!(
            dreport.stream, report.stream,
            "decoder saw a different stream"
        );
        assert_eq!(report.compressed_bytes, file.len() as u64);
        (file, report)
    }

    /// Pseudo-English: Zipf-distributed words from a fixed list, with punctuation and line
    /// breaks, deterministic in `seed`.
    pub(crate) fn english(bytes: usize, seed: u64) -> String {
        const WORDS: &[&str] = &[
            "the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with",
            "as", "his", "on", "be", "at", "by", "had", "not", "are", "but", "from", "or", "have",
            "an", "they", "which", "one", "you", "were", "her", "all", "she", "there", "would",
            "their", "we", "him", "been", "has", "when", "who", "will", "more", "no", "if", "out",
            "so", "said", "what", "up", "its", "about", "into", "than", "them", "can", "only",
            "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first",
            "any", "my", "now", "such", "like", "our", "over", "man", "me", "even", "most", "made",
            "after", "also", "did", "many", "before", "must", "through", "back", "years", "where",
            "much", "your", "way", "well", "down", "should", "because", "each", "just", "those",
            "people", "how", "too", "little", "state", "good", "very", "make", "world", "still",
            "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being",
            "under", "never", "day", "same", "another", "know", "while", "last", "might", "us",
            "great", "old", "year", "off", "come", "since", "against", "go", "came", "right",
            "used", "take", "three",
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let weights: Vec<f64> = (1..=WORDS.len()).map(|r| 1.0 / r as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut s = String::new();
        let mut in_sentence = 0;
        while s.len() < bytes {
            let mut x = rng.random::<f64>() * total;
            let mut i = 0;
            while x > weights[i] && i + 1 < WORDS.len() {
                x -= weights[i];
                i += 1;
            }
            if in_sentence == 0 {
                let mut w = WORDS[i].to_string();
                w[..1].make_ascii_uppercase();
                s.push_str(&w);
            } else {
                s.push(' ');
                s.push_str(WORDS[i]);
            }
            in_sentence += 1;
            if in_sentence > 6 && rng.random::<f64>() < 0.15 {
                s.push_str(if rng.random::<f64>() < 0.2 {
                    ".\n"
                } else {
                    ". "
                });
                in_sentence = 0;
            } else if rng.random::<f64>() < 0.05 {
                s.push(',');
            }
        }
        s.truncate(bytes);
        s
    }

    #[test]
    fn edge_cases_round_trip() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"a".to_vec(),
            vec![0xff],
            vec![0],
            b"\xe2\x82".to_vec(),    // truncated multi-byte sequence
            "é".as_bytes().to_vec(), // one char the toy tokenizer cannot reproduce
            "naïve café — 東京 🚀 done".as_bytes().to_vec(),
            b"line one\r\nline two\r\n\x00\x01\x02 tail".to_vec(),
            b"valid text run long enough \xff\xfe\xfd and again valid text here".to_vec(),
            (0..=255u8).collect(),
        ];
        for c in &cases {
            for chunk in [1, 3, 4096] {
                round_trip(c, 400, chunk);
            }
        }
    }

    #[test]
    fn binary_junk_round_trips_at_about_eight_bits_per_byte() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let junk: Vec<u8> = (0..20_000).map(|_| rng.random()).collect();
        let (_, r) = round_trip(&junk, 400, 64);
        assert!(r.bits_per_byte() < 8.1, "{}", r.bits_per_byte());
        assert!(r.stream.raw_bytes > 19_000);
    }

    #[test]
    fn compression_is_deterministic() {
        let text = english(3000, 1);
        let (a, _) = round_trip(text.as_bytes(), 400, 100);
        let (b, _) = round_trip(text.as_bytes(), 400, 100);
        assert_eq!(a, b);
    }

    #[test]
    fn code_length_is_within_one_percent_of_the_ideal_on_ten_kilobytes() {
        let text = english(10 * 1024, 3);
        // A Llama-2-sized vocabulary, so the leak every token pays is realistic. (Round trips
        // are checked by the other tests; coding 10 KiB twice at this size is slow.)
        let mut pred = NgramPredictor::new(32_000, 4096).unwrap();
        let (file, r) = compress(text.as_bytes(), &mut pred, &CompressOptions::default()).unwrap();
        let overhead = r.overhead();
        eprintln!(
            "10 KiB pseudo-English: {} tokens, ideal {:.0} bits, payload {} bits, overhead {:.4}%, \
             {:.3} bits/byte with header, {:.3} ideal",
            r.stream.tokens,
            r.stream.ideal_bits(),
            r.payload_bytes * 8,
            overhead * 100.0,
            r.bits_per_byte(),
            r.ideal_bits_per_byte()
        );
        assert!(overhead > 0.0, "the code cannot beat the ideal: {overhead}");
        assert!(
            overhead < 0.01,
            "overhead {:.3}% exceeds 1%",
            overhead * 100.0
        );
        assert_eq!(r.stream.raw_bytes, 0);
        assert!(file.len() < text.len() / 2);
    }

    #[test]
    fn long_text_round_trips_across_many_chunks() {
        let text = english(12 * 1024, 4);
        let (_, r) = round_trip(text.as_bytes(), 400, 500);
        assert!(r.stream.chunks >= 10, "{} chunks", r.stream.chunks);
        assert!(r.overhead() < 0.01);
    }

    #[test]
    fn header_guards_name_the_problem_and_never_return_wrong_output() {
        let text = english(2000, 5);
        let mut pred = NgramPredictor::new(400, 4096).unwrap();
        let (file, _) = compress(text.as_bytes(), &mut pred, &CompressOptions::default()).unwrap();
        let msg = |f: &[u8], p: &mut NgramPredictor| match decompress(f, p, false) {
            Ok((out, _)) => panic!("decoded {} bytes from a damaged file", out.len()),
            Err(e) => format!("{e:#}"),
        };
        let mut other = NgramPredictor::new(401, 4096).unwrap();
        assert!(msg(&file, &mut other).contains("different model"));
        assert!(msg(&file[..60], &mut pred).contains("truncated"));
        assert!(msg(&file[..file.len() - 4], &mut pred).contains("truncated"));
        assert!(msg(b"hello world, not compressed", &mut pred).contains("not an elastica"));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..200 {
            let mut f = file.clone();
            let i = rng.random_range(0..f.len());
            f[i] ^= 1 << rng.random_range(0..8);
            msg(&f, &mut pred);
        }
        let mut f = file.clone();
        let last = f.len() - 1;
        f[last] ^= 1;
        assert!(msg(&f, &mut pred).contains("payload is corrupt"));
        let mut f = file.clone();
        f[50] ^= 4;
        assert!(msg(&f, &mut pred).contains("header is corrupt"));
    }

    #[test]
    fn a_payload_that_decodes_to_different_bytes_is_refused_by_the_checksum() {
        // Simulate a machine whose model arithmetic differs: keep the header (and its
        // payload hash) consistent but change the content hash.
        let text = english(500, 9);
        let mut pred = NgramPredictor::new(400, 4096).unwrap();
        let (file, _) = compress(text.as_bytes(), &mut pred, &CompressOptions::default()).unwrap();
        let (mut h, payload) = Header::parse(&file, &pred.fingerprint()).unwrap();
        h.content_sha256[0] ^= 1;
        let mut forged = h.to_bytes().to_vec();
        forged.extend_from_slice(payload);
        let err = decompress(&forged, &mut pred, false).unwrap_err();
        assert!(format!("{err:#}").contains("SHA-256"), "{err:#}");
    }

    /// The ngram predictor with its log-probs changed: `skew` shifts them a little (the same
    /// model computed with other arithmetic: same fingerprint, other floats); `uniform`
    /// replaces them by a flat distribution (a model that predicts nothing).
    struct Altered {
        inner: NgramPredictor,
        skew: f32,
        uniform: bool,
    }

    impl TokenPredictor for Altered {
        fn vocab_size(&self) -> usize {
            self.inner.vocab_size()
        }
        fn max_context(&self) -> usize {
            self.inner.max_context()
        }
        fn fingerprint(&self) -> [u8; 32] {
            self.inner.fingerprint()
        }
        fn tokenization(&self) -> &dyn crate::compress::Tokenization {
            self.inner.tokenization()
        }
        fn start(&mut self) -> Result<()> {
            self.inner.start()
        }
        fn next_log_probs(&mut self, prev: Option<u32>) -> Result<Vec<f32>> {
            let mut lp = self.inner.next_log_probs(prev)?;
            if self.uniform {
                lp.iter_mut().for_each(|x| *x = 0.0);
            }
            for (i, x) in lp.iter_mut().enumerate() {
                *x += self.skew * (i % 5) as f32;
            }
            Ok(lp)
        }
    }

    fn altered(vocab: usize, skew: f32, uniform: bool) -> Altered {
        Altered {
            inner: NgramPredictor::new(vocab, 4096).unwrap(),
            skew,
            uniform,
        }
    }

    /// `file` rewritten as format version 1 (no numerics probe), as older builds wrote it.
    fn as_version_1(file: &[u8], fingerprint: &[u8; 32]) -> Vec<u8> {
        let (mut h, payload) = Header::parse(file, fingerprint).unwrap();
        h.version = 1;
        h.numerics_probe = None;
        let mut v1 = h.to_bytes().to_vec();
        v1.extend_from_slice(payload);
        v1
    }

    #[test]
    fn other_numerics_are_named_as_such_not_as_damage() {
        let text = english(3000, 12);
        let mut pred = NgramPredictor::new(400, 4096).unwrap();
        let (file, _) = compress(text.as_bytes(), &mut pred, &CompressOptions::default()).unwrap();
        let msg = |f: &[u8]| {
            format!(
                "{:#}",
                decompress(f, &mut altered(400, 1e-3, false), false).unwrap_err()
            )
        };
        // Version 2: the header's probe refuses before decoding.
        let e = msg(&file);
        assert!(
            e.contains("numerics differ") && e.contains("It is not damaged"),
            "{e}"
        );
        assert!(e.contains("ELASTICA_KERNELS"), "{e}");
        assert!(!e.contains("corrupt"), "{e}");
        // Version 1 (no probe): still readable with the right model, and a decode that goes
        // wrong under other numerics says so instead of "corrupt payload".
        let v1 = as_version_1(&file, &pred.fingerprint());
        let (back, _) = decompress(&v1, &mut pred, false).unwrap();
        assert_eq!(back, text.as_bytes());
        let e = msg(&v1);
        assert!(
            e.contains("payload is intact") && e.contains("numerics differ"),
            "{e}"
        );
        assert!(!e.contains("corrupt"), "{e}");
    }

    #[test]
    fn input_the_model_codes_worse_than_raw_is_stored_raw() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // Lowercase gibberish under a flat model over 16384 tokens costs 14 bits a token,
        // about 10 bits a byte with the toy tokenizer's two-letter fragments.
        let gibberish: Vec<u8> = (0..3000)
            .map(|_| b'a' + rng.random_range(0..26u8))
            .collect();
        let random: Vec<u8> = (0..5000).map(|_| rng.random()).collect();
        let mut elf_like = b"\x7fELF\x02\x01\x01\0".to_vec();
        elf_like.extend(std::iter::repeat_n(0u8, 600));
        elf_like.extend_from_slice(b"__libc_start_main\0printf\0GLIBC_2.34\0.text\0.bss\0");
        elf_like.extend(&random[..2000]);
        // Pieces end at invalid bytes: the English piece stays text, the gibberish goes raw.
        let mixed = [english(2000, 3).into_bytes(), vec![0xff], gibberish.clone()].concat();
        for (name, input, mut pred) in [
            ("gibberish", &gibberish, altered(16384, 0.0, true)),
            ("random", &random, altered(400, 0.0, false)),
            ("elf-like", &elf_like, altered(16384, 0.0, true)),
            ("english+gibberish", &mixed, altered(16384, 0.0, true)),
        ] {
            let (file, r) = compress(input, &mut pred, &CompressOptions::default()).unwrap();
            assert!(
                file.len() <= input.len() + HEADER_LEN + RAW_SLACK,
                "{name}: {} bytes became {}",
                input.len(),
                file.len()
            );
            let (back, _) = decompress(&file, &mut pred, false).unwrap();
            assert_eq!(&back, input, "{name}");
            if name != "random" {
                assert!(r.raw_fallback.bytes > 0, "{name}: {:?}", r.raw_fallback);
                let s = crate::compress::summary::CompressSummary::new(name, r.clone(), vec![]);
                assert!(s.notes().contains("stored raw"), "{}", s.notes());
            }
            if name == "english+gibberish" {
                assert_eq!(r.raw_fallback.bytes, gibberish.len() as u64);
                assert!(r.stream.tokens > 300, "the English stayed text");
            }
        }
        // Text the model predicts well stays text.
        let text = english(3000, 4);
        let (_, r) = round_trip(text.as_bytes(), 400, 4096);
        assert_eq!(r.raw_fallback, RawFallback::default());
        assert_eq!(r.stream.raw_bytes, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_round_trip(input in proptest::collection::vec(any::<u8>(), 0..600), chunk in 1usize..40) {
            let (file, _) = round_trip(&input, 300, chunk);
            prop_assert!(file.len() <= input.len() + HEADER_LEN + RAW_SLACK);
        }

        #[test]
        fn random_text_round_trips(input in "\\PC{0,300}", chunk in 1usize..40) {
            round_trip(input.as_bytes(), 300, chunk);
        }

        #[test]
        fn text_with_junk_round_trips(a in "[a-z .,\n]{0,120}", junk in proptest::collection::vec(any::<u8>(), 0..20), b in "[ -~]{0,120}") {
            let mut input = a.into_bytes();
            input.extend_from_slice(&junk);
            input.extend_from_slice(b.as_bytes());
            round_trip(&input, 300, 17);
        }
    }
}
