//! A check of every page header of a parquet file before the `parquet` crate reads its pages.
//!
//! The crate (56) trusts the sizes a page header declares: it reads the header's thrift
//! binary fields (the page statistics' min / max) into a buffer of the declared length before
//! reading a byte of them (18 MB from a 1 KB file, found by `tests/fuzz.rs`), and sizes the
//! decompression buffer from the declared uncompressed page size. Walking the headers first,
//! with a reader that allocates nothing and refuses any length larger than the bytes left in
//! the column chunk, bounds every allocation of the later read by the file's size: a hostile
//! or damaged file gets an error naming the file, the column chunk and the page.
//!
//! The walk is the crate's own: each column chunk from its first page (the dictionary page
//! if any, else the first data page) for its `total_compressed_size` bytes, header after
//! header, each followed by its `compressed_page_size` bytes.

use anyhow::{anyhow, bail, Context, Result};
use parquet::basic::Compression;
use parquet::file::metadata::ParquetMetaData;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Snappy output is at most ~21.3x its input (a 3-byte copy element yields 64 bytes), so a
/// snappy page that declares more than this many times its stored size is corrupt.
const SNAPPY_MAX_EXPANSION: u64 = 22;

/// Nesting of thrift structs and containers a page header may use (the format needs 3).
const MAX_DEPTH: usize = 32;

/// Check every page header of every column chunk of the parquet file at `path` (`meta` is its
/// footer, as the crate read it).
pub fn check_page_headers(path: &Path, meta: &ParquetMetaData) -> Result<()> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open data file {}", path.display()))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    let mut reader = BufReader::with_capacity(8 << 10, file);
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for (c, col) in rg.columns().iter().enumerate() {
            let at = || format!("{}: row group {g}, column chunk {c}", path.display());
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let len = col.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l))
                .filter(|&e| e <= file_len)
                .ok_or_else(|| {
                    anyhow!(
                        "{}: the footer places it at bytes {start}..+{len}, outside the \
                         {file_len}-byte file: the file is corrupt or truncated",
                        at()
                    )
                })?;
            check_chunk(&mut reader, start as u64, end, col.compression())
                .with_context(|| format!("{}: corrupt page header", at()))?;
        }
    }
    Ok(())
}

/// The sizes of one page that the later read relies on.
#[derive(Debug, Default, PartialEq)]
struct PageSizes {
    uncompressed: i64,
    compressed: i64,
    /// A dictionary page's value count.
    dictionary_values: Option<i64>,
}

fn check_chunk<R: Read + Seek>(
    reader: &mut R,
    start: u64,
    end: u64,
    codec: Compression,
) -> Result<()> {
    let mut pos = start;
    let mut page = 0usize;
    while pos < end {
        reader.seek(SeekFrom::Start(pos))?;
        let remaining = end - pos;
        let mut header = Thrift {
            input: reader.take(remaining),
            read: 0,
        };
        let sizes = header
            .page_header()
            .with_context(|| format!("page {page} (at byte {pos})"))?;
        let after_header = remaining - header.read;
        let (Ok(compressed), Ok(uncompressed)) = (
            u64::try_from(sizes.compressed),
            u64::try_from(sizes.uncompressed),
        ) else {
            bail!(
                "page {page} (at byte {pos}) declares a negative size ({} stored, {} \
                 uncompressed)",
                sizes.compressed,
                sizes.uncompressed
            );
        };
        if compressed > after_header {
            bail!(
                "page {page} (at byte {pos}) declares {compressed} stored bytes, but only \
                 {after_header} are left in its column chunk"
            );
        }
        let max_uncompressed = match codec {
            Compression::UNCOMPRESSED => Some(compressed),
            Compression::SNAPPY => Some(compressed.saturating_mul(SNAPPY_MAX_EXPANSION)),
            // Other codecs are refused by the crate (not built in) before any page is read.
            _ => None,
        };
        if let Some(max) = max_uncompressed.filter(|&m| uncompressed > m) {
            bail!(
                "page {page} (at byte {pos}) declares {uncompressed} bytes uncompressed from \
                 {compressed} stored {codec} bytes (at most {max} possible)"
            );
        }
        // PLAIN dictionary values take at least a byte each.
        if let Some(n) = sizes
            .dictionary_values
            .filter(|&n| n < 0 || n as u64 > uncompressed)
        {
            bail!(
                "dictionary page {page} (at byte {pos}) declares {n} values in {uncompressed} \
                 bytes"
            );
        }
        pos += header.read + compressed;
        page += 1;
    }
    Ok(())
}

/// A reader of the thrift compact protocol that allocates nothing: every length it meets is
/// checked against the bytes its (bounded) input has left, and skipped data is read through.
struct Thrift<R> {
    input: std::io::Take<R>,
    /// Bytes consumed so far.
    read: u64,
}

// Compact-protocol type codes.
const T_TRUE: u8 = 1;
const T_FALSE: u8 = 2;
const T_BYTE: u8 = 3;
const T_I16: u8 = 4;
const T_I32: u8 = 5;
const T_I64: u8 = 6;
const T_DOUBLE: u8 = 7;
const T_BINARY: u8 = 8;
const T_LIST: u8 = 9;
const T_SET: u8 = 10;
const T_MAP: u8 = 11;
const T_STRUCT: u8 = 12;

impl<R: Read> Thrift<R> {
    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8];
        self.input
            .read_exact(&mut b)
            .context("the header runs past the end of its column chunk")?;
        self.read += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("a variable-length integer longer than 10 bytes")
    }

    fn zigzag(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// Skip `n` bytes, refusing more than the input has left.
    fn skip_bytes(&mut self, n: u64) -> Result<()> {
        if n > self.input.limit() {
            bail!(
                "a field declares {n} bytes, but only {} are left in the column chunk",
                self.input.limit()
            );
        }
        let copied = std::io::copy(&mut (&mut self.input).take(n), &mut std::io::sink())?;
        if copied != n {
            bail!("the header runs past the end of the file");
        }
        self.read += n;
        Ok(())
    }

    /// A count of elements, each at least one byte: no more than the bytes left.
    fn count(&mut self, n: u64) -> Result<u64> {
        if n > self.input.limit() {
            bail!(
                "a container declares {n} elements, but only {} bytes are left in the column \
                 chunk",
                self.input.limit()
            );
        }
        Ok(n)
    }

    /// Read a field header: `None` at the struct's end, else (field id, type).
    fn field(&mut self, last_id: i16) -> Result<Option<(i16, u8)>> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| anyhow!("a field id out of range"))?
        } else {
            last_id.wrapping_add(delta)
        };
        Ok(Some((id, b & 0x0f)))
    }

    fn skip(&mut self, ty: u8, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!("thrift values nested more than {MAX_DEPTH} deep");
        }
        match ty {
            T_TRUE | T_FALSE => Ok(()),
            T_BYTE => self.byte().map(drop),
            T_I16 | T_I32 | T_I64 => self.varint().map(drop),
            T_DOUBLE => self.skip_bytes(8),
            T_BINARY => {
                let n = self.varint()?;
                self.skip_bytes(n)
            }
            T_LIST | T_SET => {
                let h = self.byte()?;
                let n = match h >> 4 {
                    15 => self.varint()?,
                    n => u64::from(n),
                };
                let elem = h & 0x0f;
                for _ in 0..self.count(n)? {
                    // Booleans in a container take a byte each.
                    if elem == T_TRUE || elem == T_FALSE {
                        self.byte()?;
                    } else {
                        self.skip(elem, depth + 1)?;
                    }
                }
                Ok(())
            }
            T_MAP => {
                let n = self.varint()?;
                if n == 0 {
                    return Ok(());
                }
                let kv = self.byte()?;
                for _ in 0..self.count(n)? {
                    for t in [kv >> 4, kv & 0x0f] {
                        if t == T_TRUE || t == T_FALSE {
                            self.byte()?;
                        } else {
                            self.skip(t, depth + 1)?;
                        }
                    }
                }
                Ok(())
            }
            T_STRUCT => self.skip_struct(depth + 1),
            other => bail!("unknown thrift type {other}"),
        }
    }

    fn skip_struct(&mut self, depth: usize) -> Result<()> {
        let mut last = 0;
        while let Some((id, ty)) = self.field(last)? {
            self.skip(ty, depth)?;
            last = id;
        }
        Ok(())
    }

    /// A 32-bit integer field, or an error naming what it should have been.
    fn i32_field(&mut self, ty: u8, name: &str) -> Result<i64> {
        if ty != T_I32 {
            bail!("{name} has thrift type {ty}, not i32");
        }
        let v = self.zigzag()?;
        i32::try_from(v).map_err(|_| anyhow!("{name} = {v} does not fit in 32 bits"))?;
        Ok(v)
    }

    /// parquet.thrift's `PageHeader`: the sizes, the dictionary page's value count, and
    /// every other field skipped (with its lengths checked).
    fn page_header(&mut self) -> Result<PageSizes> {
        let mut sizes = PageSizes::default();
        let (mut have_uncompressed, mut have_compressed) = (false, false);
        let mut last = 0;
        while let Some((id, ty)) = self.field(last)? {
            match id {
                2 => {
                    sizes.uncompressed = self.i32_field(ty, "uncompressed_page_size")?;
                    have_uncompressed = true;
                }
                3 => {
                    sizes.compressed = self.i32_field(ty, "compressed_page_size")?;
                    have_compressed = true;
                }
                7 if ty == T_STRUCT => {
                    // DictionaryPageHeader: 1 = num_values.
                    let mut last = 0;
                    while let Some((id, ty)) = self.field(last)? {
                        if id == 1 {
                            sizes.dictionary_values = Some(self.i32_field(ty, "num_values")?);
                        } else {
                            self.skip(ty, 2)?;
                        }
                        last = id;
                    }
                }
                _ => self.skip(ty, 1)?,
            }
            last = id;
        }
        if !(have_uncompressed && have_compressed) {
            bail!("the header lacks its page sizes");
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A compact-protocol page header: sizes, then a data page header whose statistics
    /// hold one binary field of declared length `stat_len` (followed by `stat` bytes).
    fn header(uncompressed: u32, compressed: u32, stat_len: u32, stat: &[u8]) -> Vec<u8> {
        let zz = |v: u32| -> Vec<u8> { varint(u64::from(v) << 1) };
        let mut h = vec![0x15, 0x00]; // field 1 (type), i32 0 = DATA_PAGE
        h.push(0x15);
        h.extend(zz(uncompressed));
        h.push(0x15);
        h.extend(zz(compressed));
        h.push(0x2c); // field 5 (+2), struct: DataPageHeader
        h.extend([0x15, 0x02]); // num_values = 1
        h.push(0x4c); // field 5 (+4), struct: Statistics
        h.push(0x18); // field 1, binary (max)
        h.extend(varint(u64::from(stat_len)));
        h.extend(stat);
        h.extend([0x00, 0x00, 0x00]); // end of Statistics, DataPageHeader, PageHeader
        h
    }

    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn check(bytes: &[u8], codec: Compression) -> Result<()> {
        check_chunk(&mut Cursor::new(bytes), 0, bytes.len() as u64, codec)
    }

    #[test]
    fn a_sound_page_passes() {
        let mut chunk = header(4, 4, 2, b"ab");
        chunk.extend(b"data");
        check(&chunk, Compression::UNCOMPRESSED).unwrap();
        let mut two = chunk.clone();
        two.extend(&chunk);
        check(&two, Compression::UNCOMPRESSED).unwrap();
    }

    #[test]
    fn declared_lengths_beyond_the_chunk_are_refused() {
        // The fuzz finding: statistics declaring 18 MB in a 1 KB file.
        // A one-page chunk (the header, then a 4-byte body) and the error `check` gives it.
        let page = |uncompressed, compressed, stat_len| {
            let mut chunk = header(uncompressed, compressed, stat_len, b"ab");
            chunk.extend(b"data");
            chunk
        };
        let refusal = |chunk: &[u8], c| format!("{:#}", check(chunk, c).unwrap_err());
        let e = refusal(&page(4, 4, 18_000_000), Compression::UNCOMPRESSED);
        assert!(e.contains("declares 18000000 bytes"), "{e}");

        let e = refusal(&page(4, 40, 2), Compression::UNCOMPRESSED);
        assert!(e.contains("declares 40 stored bytes"), "{e}");

        let e = refusal(&page(2_000_000_000, 4, 2), Compression::SNAPPY);
        assert!(e.contains("2000000000 bytes uncompressed"), "{e}");
        let chunk = page(88, 4, 2);
        check(&chunk, Compression::SNAPPY).unwrap();
        assert!(check(&chunk, Compression::UNCOMPRESSED).is_err());

        // A header cut by the end of its chunk.
        let chunk = header(4, 4, 2, b"ab");
        let e = refusal(&chunk[..6], Compression::SNAPPY);
        assert!(e.contains("past the end of its column chunk"), "{e}");
    }

    #[test]
    fn deep_nesting_and_huge_containers_are_refused() {
        // Field 9 (unknown) holding structs nested 100 deep.
        let mut chunk = vec![0x15, 0x08, 0x15, 0x08, 0x7c];
        chunk.extend(std::iter::repeat_n(0x1c, 100));
        let e = format!(
            "{:#}",
            check(&chunk, Compression::UNCOMPRESSED).unwrap_err()
        );
        assert!(e.contains("nested more than"), "{e}");
        // A list declaring 2^40 elements.
        let mut chunk = vec![0x15, 0x08, 0x15, 0x08, 0x79, 0xf5];
        chunk.extend(varint(1 << 40));
        let e = format!(
            "{:#}",
            check(&chunk, Compression::UNCOMPRESSED).unwrap_err()
        );
        assert!(e.contains("1099511627776 elements"), "{e}");
    }
}
