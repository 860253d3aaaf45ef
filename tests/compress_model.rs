//! End-to-end tests of `elastica compress | decompress | rates` with a real (tiny) Hugging Face
//! checkpoint as the probability source: exact round trips, header guards (wrong model,
//! flipped bits), and rates that equal `eval-loss`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn model(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
        .display()
        .to_string()
}

/// `elastica ARGS` on one rayon thread: (success, stdout, stderr).
fn elastica(args: &[&str]) -> (bool, String, String) {
    common::elastica_env(args, &[("RAYON_NUM_THREADS", "1")])
}

/// `elastica compress --model tiny-llama SRC PACKED`, which must succeed: its stdout.
fn compress(src: &Path, packed: &Path) -> String {
    let m = model("tiny-llama");
    let (src, packed) = (src.to_str().unwrap(), packed.to_str().unwrap());
    let (ok, so, se) = elastica(&["compress", "--model", &m, src, packed]);
    assert!(ok, "compress {src}: {so}\n{se}");
    so
}

fn round_trip(dir: &Path, name: &str, input: &[u8]) -> PathBuf {
    let src = dir.join(format!("{name}.bin"));
    let packed = dir.join(format!("{name}.elz"));
    let back = dir.join(format!("{name}.out"));
    std::fs::write(&src, input).unwrap();
    compress(&src, &packed);
    let m = model("tiny-llama");
    let (ok, so, se) = elastica(&[
        "decompress",
        "--model",
        &m,
        packed.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(ok, "decompress {name}: {so}\n{se}");
    assert_eq!(std::fs::read(&back).unwrap(), input, "{name}");
    packed
}

const ENGLISH: &str = "The committee met on Tuesday to review the proposal. After a long \
discussion about costs, schedules and the risks of delay, the members agreed that the plan \
was sound but needed more detail on how the work would be tested. ";

#[test]
fn round_trips_through_the_binary_and_guards_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    round_trip(tmp.path(), "empty", b"");
    round_trip(tmp.path(), "one", b"x");
    let mut state = 0x9e3779b97f4a7c15u64;
    let random: Vec<u8> = (0..300)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    round_trip(tmp.path(), "random", &random);
    let text = ENGLISH.repeat(2048 / ENGLISH.len() + 1);
    let packed = round_trip(tmp.path(), "english", text.as_bytes());

    // A different model: a clear error, and no output.
    let out = tmp.path().join("wrong.out");
    let (ok, _, se) = elastica(&[
        "decompress",
        "--model",
        &model("tiny-qwen2"),
        packed.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(se.to_lowercase().contains("model"), "{se}");
    assert!(!out.exists());

    // One flipped bit in the payload: refused, no output.
    let mut bytes = std::fs::read(&packed).unwrap();
    let i = bytes.len() - 10;
    bytes[i] ^= 0x10;
    let bad = tmp.path().join("flipped.elz");
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, _, se) = elastica(&[
        "decompress",
        "--model",
        &model("tiny-llama"),
        bad.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "a flipped bit decompressed");
    assert!(se.contains("flipped.elz"), "{se}");
    assert!(!out.exists());
}

#[test]
fn rates_equal_eval_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"text\": \"The cat sat on the mat and looked at the dog.\"}\n\
         {\"prompt\": \"What is the plan?\", \"response\": \" We test it first, then ship.\"}\n\
         {\"text\": \"Numbers like 12345 and words like naive cafe.\"}\n",
    )
    .unwrap();
    let m = model("tiny-llama");
    // The schema's default template (safe-rlhf for JSONL records) and raw, as eval-loss's.
    for template in [None, Some("raw")] {
        let out = tmp.path().join(format!("rates-{template:?}"));
        let t: Vec<&str> = template.map(|t| vec!["--template", t]).unwrap_or_default();
        let d = format!("d={}", data.display());
        let mut args = vec!["rates", "--models", &m, "--data", &d];
        args.extend(["--out", out.to_str().unwrap()]);
        let (ok, so, se) = elastica(&[&args[..], &t].concat());
        assert!(ok, "{so}\n{se}");
        let rows: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("rates.json")).unwrap())
                .unwrap();
        let row = &rows.as_array().unwrap()[0];
        assert_eq!(row["template"], template.unwrap_or("safe-rlhf"), "{row}");
        let bits = row["bits_per_token"].as_f64().unwrap();
        let args = ["eval-loss", "--model", &m, "--data", data.to_str().unwrap()];
        let (ok, so, se) = elastica(&[&args[..], &t].concat());
        assert!(ok, "{so}\n{se}");
        let line = so.lines().rev().find(|l| l.starts_with('{')).unwrap();
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        let nll = ev["mean_nll"].as_f64().unwrap();
        assert_eq!(
            row["tokens"].as_u64(),
            ev["tokens"].as_u64(),
            "{row} vs {ev}"
        );
        assert_eq!(row["bytes"].as_u64(), ev["bytes"].as_u64(), "{row} vs {ev}");
        let nats = bits * std::f64::consts::LN_2;
        assert!(
            ((nats - nll) / nll).abs() < 1e-4,
            "{template:?}: rates {nats} nats/token vs eval-loss {nll}"
        );
    }
    // A length that scores no token is refused as such (not as data without tokens).
    let (ok, _, se) = elastica(&[
        "eval-loss",
        "--model",
        &m,
        "--data",
        data.to_str().unwrap(),
        "--max-length",
        "1",
    ]);
    assert!(!ok && se.contains("max_length must be at least 2"), "{se}");
    // A model that cannot be loaded fails the run, which then writes no run directory.
    let failed = tmp.path().join("failed");
    let (ok, _, se) = elastica(&[
        "rates",
        "--models",
        &format!("{m},{}", tmp.path().join("no-model").display()),
        "--data",
        &format!("d={}", data.display()),
        "--out",
        failed.to_str().unwrap(),
    ]);
    assert!(!ok && se.contains("no-model"), "{se}");
    assert!(!failed.exists());
}

/// Issue 23 item 14: a 6 KB ELF (the first bytes of this very binary) is stored raw where
/// the model codes it worse than its bytes; the file never grows by more than the header
/// and a few bytes, the command says so, and the round trip is exact.
#[test]
fn an_elf_binary_never_grows_more_than_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let elf = std::fs::read(env!("CARGO_BIN_EXE_elastica")).unwrap()[..6144].to_vec();
    assert_eq!(&elf[..4], b"\x7fELF");
    let src = tmp.path().join("elf.bin");
    let packed = tmp.path().join("elf.elz");
    std::fs::write(&src, &elf).unwrap();
    let so = compress(&src, &packed);
    assert!(so.contains("stored raw"), "{so}");
    let size = std::fs::metadata(&packed).unwrap().len() as usize;
    eprintln!("6144-byte ELF -> {size} bytes");
    assert!(size <= elf.len() + 124 + 16, "{size} bytes");
    round_trip(tmp.path(), "elf", &elf);
}

/// Issue 17 item 11: a file decompressed with other arithmetic (the reference kernels
/// instead of the fused ones) is refused as "numerics differ", never as a corrupt file,
/// and nothing is written. Where the two paths happen to agree bit for bit on this
/// machine, the file must decode exactly instead.
#[test]
fn other_kernels_are_named_as_different_numerics() {
    let tmp = tempfile::tempdir().unwrap();
    let text = ENGLISH.repeat(4);
    let packed = round_trip(tmp.path(), "kernels", text.as_bytes());
    let out = tmp.path().join("kernels.none");
    let o = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["decompress", "--model", &model("tiny-llama")])
        .arg(&packed)
        .arg(&out)
        .env("RAYON_NUM_THREADS", "1")
        .env("ELASTICA_KERNELS", "none")
        .output()
        .unwrap();
    let se = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        assert_eq!(std::fs::read(&out).unwrap(), text.as_bytes());
        eprintln!("note: ELASTICA_KERNELS=none computes the same numbers on this machine");
    } else {
        assert!(se.contains("numerics differ"), "{se}");
        assert!(se.contains("ELASTICA_KERNELS=none"), "{se}");
        assert!(!se.contains("corrupt"), "{se}");
        assert!(!out.exists());
    }
}
