//! General-purpose compressors as baselines for the model's code: gzip (-9), xz (-9) and
//! zstd (-19) sizes of the same input. Each result is decompressed and compared with the
//! input before it is reported, so a size never comes from a broken round trip.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{Read, Write};

/// One baseline's compressed size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Name with level, e.g. `gzip -9`.
    pub name: String,
    pub bytes: u64,
}

impl Baseline {
    pub fn bits_per_byte(&self, original: u64) -> f64 {
        if original == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / original as f64
        }
    }
}

/// Compress `input` with gzip, xz and zstd, verify each round trip, return the sizes.
pub fn baselines(input: &[u8]) -> Result<Vec<Baseline>> {
    let codecs: [(&str, Codec); 3] = [("gzip -9", gzip), ("xz -9", xz), ("zstd -19", zstd)];
    codecs
        .iter()
        .map(|(name, codec)| {
            let (packed, unpacked) = codec(input).with_context(|| format!("baseline {name}"))?;
            if unpacked != input {
                bail!("baseline {name} did not round-trip the input");
            }
            Ok(Baseline {
                name: name.to_string(),
                bytes: packed.len() as u64,
            })
        })
        .collect()
}

/// Compress, then decompress what came out.
type Codec = fn(&[u8]) -> Result<(Vec<u8>, Vec<u8>)>;

fn gzip(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    streamed(input, enc, flate2::write::GzEncoder::finish, |packed| {
        Box::new(flate2::read::GzDecoder::new(packed))
    })
}

fn xz(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let enc = xz2::write::XzEncoder::new(Vec::new(), 9);
    streamed(input, enc, xz2::write::XzEncoder::finish, |packed| {
        Box::new(xz2::read::XzDecoder::new(packed))
    })
}

/// A [`Codec`] from a streaming encoder (`finish` ends its stream and returns the bytes) and
/// the matching decoder over the packed bytes.
fn streamed<E: Write>(
    input: &[u8],
    mut enc: E,
    finish: fn(E) -> std::io::Result<Vec<u8>>,
    decoder: fn(&[u8]) -> Box<dyn Read + '_>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    enc.write_all(input)?;
    let packed = finish(enc)?;
    let mut unpacked = Vec::with_capacity(input.len());
    decoder(&packed).read_to_end(&mut unpacked)?;
    Ok((packed, unpacked))
}

fn zstd(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let packed = zstd::stream::encode_all(input, 19)?;
    let unpacked = zstd::stream::decode_all(&packed[..])?;
    Ok((packed, unpacked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_round_trip_and_compress_redundant_text() {
        let text = "the quick brown fox jumps over the lazy dog. ".repeat(200);
        let b = baselines(text.as_bytes()).unwrap();
        assert_eq!(b.len(), 3);
        for x in &b {
            assert!(x.bytes > 0 && x.bytes < text.len() as u64 / 10, "{x:?}");
            assert!(x.bits_per_byte(text.len() as u64) < 0.8);
        }
        // Edge cases still round-trip (checked inside) and give a size.
        for input in [&b""[..], &b"x"[..], &[0xffu8, 0, 0x80, 7][..]] {
            assert_eq!(baselines(input).unwrap().len(), 3);
        }
    }
}
