//! TensorBoard event files, so `tensorboard --logdir DIR` shows training curves (one run per
//! directory, e.g. one per grid cell side by side).
//!
//! The format, written here directly (the Rust TensorBoard crates are unmaintained): a file
//! named `events.out.tfevents.<unix time>.<host>` holding TFRecord records, each
//! `u64 length | u32 masked_crc32c(length) | data | u32 masked_crc32c(data)` (little-endian),
//! whose data is a serialised `tensorflow.Event` protobuf. The first event carries
//! `file_version = "brain.Event:2"`; each later one a step, a wall time and a `Summary` of
//! `simple_value` scalars, which TensorBoard's scalar dashboard reads. Only the protobuf
//! fields used here are encoded: Event {1 wall_time: double, 2 step: int64, 3 file_version:
//! string, 5 summary: Summary}, Summary {1 value: repeated Value}, Value {1 tag: string,
//! 2 simple_value: float}.
//!
//! [`read_events`] parses such a file back (checking every CRC), for tests and tools.
//! [`TrainBoard`] turns an optimizer step's numbers into the scalars a training run logs.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The version string TensorBoard expects in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Create the log directory `dir` if it is missing (a command that can be refused makes it
/// before anything else, so that an unusable one refuses the run before it writes).
pub fn ensure_log_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the log directory {}", dir.display()))
}

/// Writes one event file; every event is flushed at once so a running `tensorboard` (or a
/// killed run) sees all steps written so far.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed). A file never overwrites another: a
    /// resumed run adds its own file, which TensorBoard reads together with the first.
    pub fn create(dir: &Path) -> Result<Self> {
        ensure_log_dir(dir)?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let host = hostname();
        let pid = std::process::id();
        let mut n = 0;
        let (path, file) = loop {
            let suffix = if n == 0 {
                String::new()
            } else {
                format!(".{n}")
            };
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}{suffix}"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create the event file {}", path.display())
                    })
                }
            }
        };
        let mut w = EventWriter {
            file: std::io::BufWriter::new(file),
            path,
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
        w.record(&event)?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding these scalars. Non-finite values are skipped (TensorBoard
    /// would draw them as gaps at best).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values.iter().filter(|(_, v)| v.is_finite()) {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_float(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        if summary.is_empty() {
            return Ok(());
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write the event file {}", self.path.display()))
    }
}

/// The scalars of a training run, one event per optimizer step: `train/loss`, `train/lr`,
/// `train/grad_norm`, `train/tokens_per_s` (loss tokens over the wall time since the previous
/// step), and `rates/<set>/<unit>` when compression rates are tracked.
pub struct TrainBoard {
    writer: EventWriter,
    last: Instant,
}

impl TrainBoard {
    pub fn create(dir: &Path) -> Result<Self> {
        Ok(TrainBoard {
            writer: EventWriter::create(dir)?,
            last: Instant::now(),
        })
    }

    pub fn path(&self) -> &Path {
        self.writer.path()
    }

    /// After optimizer step `step`: its mean loss, learning rate, gradient norm (before
    /// clipping) and the number of tokens its loss counted.
    pub fn step(
        &mut self,
        step: u64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        tokens: usize,
    ) -> Result<()> {
        let secs = self.last.elapsed().as_secs_f64();
        let tps = if secs > 0.0 {
            tokens as f64 / secs
        } else {
            f64::NAN
        };
        self.writer.scalars(
            step,
            &[
                ("train/loss", loss),
                ("train/lr", lr),
                ("train/grad_norm", grad_norm),
                ("train/tokens_per_s", tps),
            ],
        )?;
        self.restart_clock();
        Ok(())
    }

    /// Compression rates measured after `step`, as (set, unit, value), e.g.
    /// ("held_out", "bits_per_token", 5.1) -> `rates/held_out/bits_per_token`.
    pub fn rates(&mut self, step: u64, rates: &[(String, &str, f64)]) -> Result<()> {
        let tags: Vec<(String, f64)> = rates
            .iter()
            .map(|(set, unit, v)| (format!("rates/{set}/{unit}"), *v))
            .collect();
        let values: Vec<(&str, f64)> = tags.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.writer.scalars(step, &values)
    }

    /// Start timing the next step from now (call after work that is not training, such as a
    /// rate measurement, so it does not count against tokens/s).
    pub fn restart_clock(&mut self) {
        self.last = Instant::now();
    }
}

/// One event read back from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// (tag, simple_value) pairs of the event's summary.
    pub scalars: Vec<(String, f32)>,
}

/// Every event of an event file, in order; a bad CRC, a truncated record or a malformed
/// protobuf is an error naming the record.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read event file {}", path.display()))?;
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = events.len() + 1;
        let ctx = |what: &str| format!("{}: record {n}: {what}", path.display());
        let header = bytes
            .get(at..at + 12)
            .with_context(|| ctx("truncated header"))?;
        let (len, crc) = header.split_at(8);
        if u32::from_le_bytes(crc.try_into()?) != masked_crc32c(len) {
            bail!(ctx("length CRC mismatch"));
        }
        let len = usize::try_from(u64::from_le_bytes(len.try_into()?))?;
        let data = bytes
            .get(at + 12..at + 12 + len)
            .with_context(|| ctx("truncated data"))?;
        let crc = bytes
            .get(at + 12 + len..at + 16 + len)
            .with_context(|| ctx("truncated data CRC"))?;
        if u32::from_le_bytes(crc.try_into()?) != masked_crc32c(data) {
            bail!(ctx("data CRC mismatch"));
        }
        events.push(parse_event(data).with_context(|| ctx("not an Event protobuf"))?);
        at += 16 + len;
    }
    Ok(events)
}

/// The event files in `dir` (not recursive), sorted by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name (TensorBoard's convention), restricted to safe characters.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

// --- CRC32C (Castagnoli), as TFRecord framing uses it ---

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            // Reflected polynomial 0x1EDC6F41.
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

const CRC32C_TABLE: [u32; 256] = crc32c_table();

fn crc32c(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC32C_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC: rotated right by 15 bits plus a constant, so a CRC stored inside
/// data that is itself checksummed does not cancel out.
fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

// --- a minimal protobuf encoder and decoder for the fields above ---

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const BYTES: u64 = 2;
const FIXED32: u64 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3 | VARINT);
    put_varint(out, v);
}

fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    put_varint(out, field << 3 | FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u64, v: f32) {
    put_varint(out, field << 3 | FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u64, v: &[u8]) {
    put_varint(out, field << 3 | BYTES);
    put_varint(out, v.len() as u64);
    out.extend_from_slice(v);
}

/// A field's value as read from the wire.
enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// The (field number, value) pairs of one protobuf message.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>> {
    fn varint(buf: &mut &[u8]) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().context("truncated varint")?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes")
    }
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if buf.len() < n {
            bail!("truncated field ({n} bytes wanted, {} left)", buf.len());
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let value = match key & 7 {
            VARINT => Wire::Varint(varint(&mut buf)?),
            FIXED64 => Wire::Fixed64(take(&mut buf, 8)?.try_into()?),
            BYTES => {
                let n = usize::try_from(varint(&mut buf)?)?;
                Wire::Bytes(take(&mut buf, n)?)
            }
            FIXED32 => Wire::Fixed32(take(&mut buf, 4)?.try_into()?),
            other => bail!("unsupported wire type {other}"),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn parse_event(data: &[u8]) -> Result<Event> {
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        scalars: Vec::new(),
    };
    for (field, v) in fields(data)? {
        match (field, v) {
            (1, Wire::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Wire::Varint(s)) => e.step = s as i64,
            (3, Wire::Bytes(b)) => e.file_version = Some(String::from_utf8(b.to_vec())?),
            (5, Wire::Bytes(summary)) => {
                for (f, value) in fields(summary)? {
                    let (1, Wire::Bytes(value)) = (f, value) else {
                        continue;
                    };
                    let (mut tag, mut x) = (None, None);
                    for (f, v) in fields(value)? {
                        match (f, v) {
                            (1, Wire::Bytes(b)) => tag = Some(String::from_utf8(b.to_vec())?),
                            (2, Wire::Fixed32(b)) => x = Some(f32::from_le_bytes(b)),
                            _ => {}
                        }
                    }
                    if let (Some(t), Some(x)) = (tag, x) {
                        e.scalars.push((t, x));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answers() {
        // The check value of CRC-32C, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b""), 0);
        // TensorBoard's own masked_crc32c (tensorflow_stub.pywrap_tensorflow) gives these;
        // eight zero bytes are the length header of an empty record.
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(&[0u8; 8]), 0x0798_0329);
    }

    #[test]
    fn events_round_trip_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("train/loss", 2.5), ("train/lr", 1e-5)])
            .unwrap();
        w.scalars(300, &[("rates/x/bits_per_token", 0.125), ("nan", f64::NAN)])
            .unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        assert_eq!(event_files(dir.path()).unwrap(), vec![path.clone()]);
        let ev = read_events(&path).unwrap();
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].file_version.as_deref(), Some(FILE_VERSION));
        assert!(ev[0].wall_time > 1.6e9, "wall time in seconds since 1970");
        assert_eq!(ev[1].step, 1);
        assert_eq!(
            ev[1].scalars,
            vec![
                ("train/loss".to_string(), 2.5),
                ("train/lr".to_string(), 1e-5)
            ]
        );
        assert_eq!(ev[2].step, 300, "a step over 127 takes a 2-byte varint");
        assert_eq!(
            ev[2].scalars,
            vec![("rates/x/bits_per_token".to_string(), 0.125)],
            "non-finite values are left out"
        );

        // A second writer in the same directory opens its own file.
        let w2 = EventWriter::create(dir.path()).unwrap();
        assert_ne!(w2.path(), path);

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", read_events(&path).unwrap_err());
        assert!(e.contains("record 3") && e.contains("CRC"), "{e}");
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).unwrap();
        let e = format!("{:#}", read_events(&path).unwrap_err());
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn train_board_writes_the_step_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = TrainBoard::create(dir.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        b.step(1, 3.0, 1e-3, 0.5, 100).unwrap();
        b.rates(1, &[("held".into(), "bits_per_byte", 1.5)])
            .unwrap();
        let ev = read_events(b.path()).unwrap();
        let tags: Vec<&str> = ev[1].scalars.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            tags,
            [
                "train/loss",
                "train/lr",
                "train/grad_norm",
                "train/tokens_per_s"
            ]
        );
        let tps = ev[1].scalars[3].1;
        assert!(tps > 0.0 && tps < 100.0 / 0.005, "{tps}");
        assert_eq!(
            ev[2].scalars,
            vec![("rates/held/bits_per_byte".to_string(), 1.5)]
        );
    }
}
