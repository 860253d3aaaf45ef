//! The container format of a compressed file: a fixed 124-byte header, then the range
//! coder's payload (little-endian 32-bit words).
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `8E 45 4C 5A 0D 0A 1A 0A` (`\x8EELZ\r\n\x1A\n`: catches text-mode mangling) |
//! | 8 | 2 | format version (2; version 1 files are still read) |
//! | 10 | 1 | token precision in bits ([`PRECISION`]) |
//! | 11 | 1 | escape cost in bits ([`ESCAPE_BITS`]) |
//! | 12 | 4 | chunk length in tokens (the model restarts after this many token steps) |
//! | 16 | 32 | model fingerprint: SHA-256 of weights, tokenizer and config |
//! | 48 | 8 | original length in bytes |
//! | 56 | 8 | number of tokens in the stream |
//! | 64 | 8 | payload length in bytes |
//! | 72 | 8 | first 8 bytes of SHA-256 of the payload |
//! | 80 | 32 | SHA-256 of the original bytes |
//! | 112 | 4 | numerics probe ([`super::probe`]); version 1: reserved, zero |
//! | 116 | 8 | first 8 bytes of SHA-256 of bytes 0..116 (header check) |
//!
//! The checks are ordered so that each failure gets the right name: a wrong magic is "not a
//! compressed file", a header-check mismatch is "corrupt header", a fingerprint mismatch is
//! "different model", a length mismatch is "truncated" or "trailing data", a payload-hash
//! mismatch is "corrupt payload", and the SHA-256 of the decoded bytes is the final guard
//! against wrong output. Version 2 adds the numerics probe: the decoder recomputes it
//! before decoding, and a mismatch means the same model computes different probabilities
//! here ("numerics differ", with the settings that cause it), not that the file is damaged.
//!
//! Raw fallback: input the model codes worse than 8 bits per byte is stored as raw runs
//! inside the stream (an escape, a length, the bytes; see [`super::coder`]), so it needs no
//! flag here and version 1 decoders read such streams too.

use super::symbols::{ESCAPE_BITS, PRECISION};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub const MAGIC: [u8; 8] = [0x8E, b'E', b'L', b'Z', b'\r', b'\n', 0x1A, b'\n'];
pub const VERSION: u16 = 2;
/// Oldest version this build reads (version 1 has no numerics probe).
pub const MIN_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 124;
const CHECKED_LEN: usize = 116;

/// Everything the decoder needs besides the payload and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version the header was written with ([`VERSION`] for new files).
    pub version: u16,
    pub chunk_tokens: u32,
    pub fingerprint: [u8; 32],
    pub original_len: u64,
    pub token_count: u64,
    pub payload_len: u64,
    pub payload_hash: [u8; 8],
    pub content_sha256: [u8; 32],
    /// The encoder's [`super::probe::numerics_probe`]; `None` in version 1 files.
    pub numerics_probe: Option<[u8; 4]>,
}

/// Why a file cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not an elastica-compressed file (the first bytes are not the magic number)")]
    BadMagic,
    #[error("the file is truncated: it has {found} bytes, the header alone needs {HEADER_LEN}")]
    TruncatedHeader { found: usize },
    #[error("the header is corrupt (its check value does not match)")]
    CorruptHeader,
    #[error(
        "format version {found} is not supported (this build reads versions {MIN_VERSION} to \
         {VERSION})"
    )]
    UnsupportedVersion { found: u16 },
    #[error(
        "the file uses token precision {precision} and escape cost {escape}, this build codes \
         with {PRECISION} and {ESCAPE_BITS}"
    )]
    UnsupportedParams { precision: u8, escape: u8 },
    #[error(
        "the file was compressed with a different model (fingerprint {file}…), the given model \
         has fingerprint {model}…; decompress with the same weights and tokenizer"
    )]
    ModelMismatch { file: String, model: String },
    #[error(
        "the file is truncated: the header announces {expected} payload bytes, {found} are present"
    )]
    TruncatedPayload { expected: u64, found: u64 },
    #[error("the file has {extra} bytes of trailing data after the payload")]
    TrailingData { extra: u64 },
    #[error("the payload is corrupt (its hash does not match the header)")]
    CorruptPayload,
    #[error(
        "the model's numerics differ from the ones that compressed this file: the weights, \
         tokenizer and config are the same, but this machine computes different \
         probabilities from them (numerics probe {here}, the file's {file}), so the file \
         cannot be decoded here. It is not damaged. Decompress it with the settings and \
         machine kind that compressed it: the same ELASTICA_KERNELS and ELASTICA_BLAS, the \
         same elastica build and CPU kind (here: {settings})"
    )]
    NumericsMismatch {
        file: String,
        here: String,
        settings: String,
    },
}

impl Header {
    /// Serialise to exactly [`HEADER_LEN`] bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10] = PRECISION as u8;
        b[11] = ESCAPE_BITS as u8;
        b[12..16].copy_from_slice(&self.chunk_tokens.to_le_bytes());
        b[16..48].copy_from_slice(&self.fingerprint);
        b[48..56].copy_from_slice(&self.original_len.to_le_bytes());
        b[56..64].copy_from_slice(&self.token_count.to_le_bytes());
        b[64..72].copy_from_slice(&self.payload_len.to_le_bytes());
        b[72..80].copy_from_slice(&self.payload_hash);
        b[80..112].copy_from_slice(&self.content_sha256);
        if let Some(p) = self.numerics_probe {
            b[112..116].copy_from_slice(&p);
        }
        let check = hash8(&b[..CHECKED_LEN]);
        b[CHECKED_LEN..HEADER_LEN].copy_from_slice(&check);
        b
    }

    /// Parse and check the header of `file`, then check the payload that follows it
    /// against the header (length, hash) and the model's fingerprint. Returns the header
    /// and the payload bytes.
    pub fn parse<'a>(
        file: &'a [u8],
        model_fingerprint: &[u8; 32],
    ) -> Result<(Header, &'a [u8]), FormatError> {
        let n = file.len().min(MAGIC.len());
        if file[..n] != MAGIC[..n] {
            return Err(FormatError::BadMagic);
        }
        if file.len() < 10 {
            return Err(FormatError::TruncatedHeader { found: file.len() });
        }
        // The version comes before the header check: another version may lay out (and
        // check) its header differently.
        let version = u16::from_le_bytes([file[8], file[9]]);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        if file.len() < HEADER_LEN {
            return Err(FormatError::TruncatedHeader { found: file.len() });
        }
        let b = &file[..HEADER_LEN];
        if hash8(&b[..CHECKED_LEN]) != b[CHECKED_LEN..HEADER_LEN] {
            return Err(FormatError::CorruptHeader);
        }
        if b[10] as usize != PRECISION || b[11] as u32 != ESCAPE_BITS {
            return Err(FormatError::UnsupportedParams {
                precision: b[10],
                escape: b[11],
            });
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let probe = [b[112], b[113], b[114], b[115]];
        let mut h = Header {
            version,
            chunk_tokens: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            fingerprint: [0; 32],
            original_len: u64_at(48),
            token_count: u64_at(56),
            payload_len: u64_at(64),
            payload_hash: [0; 8],
            content_sha256: [0; 32],
            numerics_probe: (version >= 2).then_some(probe),
        };
        h.fingerprint.copy_from_slice(&b[16..48]);
        h.payload_hash.copy_from_slice(&b[72..80]);
        h.content_sha256.copy_from_slice(&b[80..112]);
        if &h.fingerprint != model_fingerprint {
            return Err(FormatError::ModelMismatch {
                file: hex::encode(&h.fingerprint[..8]),
                model: hex::encode(&model_fingerprint[..8]),
            });
        }
        let found = (file.len() - HEADER_LEN) as u64;
        if found < h.payload_len {
            return Err(FormatError::TruncatedPayload {
                expected: h.payload_len,
                found,
            });
        }
        if found > h.payload_len {
            return Err(FormatError::TrailingData {
                extra: found - h.payload_len,
            });
        }
        let payload = &file[HEADER_LEN..];
        if hash8(payload) != h.payload_hash {
            return Err(FormatError::CorruptPayload);
        }
        Ok((h, payload))
    }
}

/// First 8 bytes of SHA-256.
pub fn hash8(bytes: &[u8]) -> [u8; 8] {
    let d = Sha256::digest(bytes);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<u8>) {
        let payload = vec![1u8, 2, 3, 4, 5, 6, 7, 8];
        let h = Header {
            version: VERSION,
            numerics_probe: Some([1, 2, 3, 4]),
            chunk_tokens: 2048,
            fingerprint: [7; 32],
            original_len: 1234,
            token_count: 300,
            payload_len: payload.len() as u64,
            payload_hash: hash8(&payload),
            content_sha256: sha256(b"x"),
        };
        let mut file = h.to_bytes().to_vec();
        file.extend_from_slice(&payload);
        (h, file)
    }

    #[test]
    fn header_round_trips() {
        let (h, file) = sample();
        let (back, payload) = Header::parse(&file, &[7; 32]).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, &file[HEADER_LEN..]);
    }

    #[test]
    fn version_1_files_are_read_without_a_probe() {
        let (mut h, file) = sample();
        h.version = 1;
        h.numerics_probe = None;
        let mut v1 = h.to_bytes().to_vec();
        v1.extend_from_slice(&file[HEADER_LEN..]);
        assert_eq!(&v1[112..116], &[0; 4]);
        let (back, _) = Header::parse(&v1, &[7; 32]).unwrap();
        assert_eq!(back, h);
        let mut v3 = file.clone();
        v3[8] = 3;
        assert_eq!(
            Header::parse(&v3, &[7; 32]),
            Err(FormatError::UnsupportedVersion { found: 3 })
        );
    }

    #[test]
    fn each_kind_of_damage_gets_its_own_error() {
        let (_, file) = sample();
        let fp = [7; 32];
        assert_eq!(
            Header::parse(b"PK\x03\x04", &fp),
            Err(FormatError::BadMagic)
        );
        assert_eq!(
            Header::parse(&file[..5], &fp),
            Err(FormatError::TruncatedHeader { found: 5 })
        );
        assert!(matches!(
            Header::parse(&file, &[8; 32]),
            Err(FormatError::ModelMismatch { .. })
        ));
        assert!(matches!(
            Header::parse(&file[..file.len() - 1], &fp),
            Err(FormatError::TruncatedPayload {
                expected: 8,
                found: 7
            })
        ));
        let mut long = file.clone();
        long.push(0);
        assert_eq!(
            Header::parse(&long, &fp),
            Err(FormatError::TrailingData { extra: 1 })
        );
        // Every single-bit flip anywhere in the file is caught.
        for byte in 0..file.len() {
            for bit in 0..8 {
                let mut f = file.clone();
                f[byte] ^= 1 << bit;
                assert!(
                    Header::parse(&f, &fp).is_err(),
                    "flip at byte {byte} bit {bit}"
                );
            }
        }
        let mut f = file.clone();
        f[HEADER_LEN + 2] ^= 0x10;
        assert_eq!(Header::parse(&f, &fp), Err(FormatError::CorruptPayload));
        let mut f = file.clone();
        f[50] ^= 0x01;
        assert_eq!(Header::parse(&f, &fp), Err(FormatError::CorruptHeader));
    }
}
