//! Fuzzing of every loader of user files (issue 17, "Fuzzing as part of the test suite"):
//! property tests that mutate a small valid seed (bit flips, byte overwrites, truncation,
//! extension, insertion, deletion, and random numbers in the places that declare lengths
//! and sizes) and load the result.
//!
//! The property, for every loader: it returns (an error or a value) and never panics
//! (checked with `catch_unwind`); no single allocation it makes exceeds what the input's
//! size justifies (a counting global allocator records the largest request of the loading
//! thread); and it writes nothing (the input directory is unchanged afterwards).
//!
//! Inputs fuzzed: safetensors weights, a sharded model's index, config.json, tokenizer.json,
//! PEFT adapters' adapter_model.safetensors and adapter_config.json (DoRA; LoRA on the head
//! with whole tensors), JSONL / BeaverTails JSONL / Alpaca JSON / IMDb parquet data, KTO's
//! unpaired feedback, conversations (SFT rows and preference pairs, rendered by a chat
//! template), compressed files (also with their checksums recomputed after the mutation, so
//! the decoder itself sees garbage), grid manifests and cell result files.
//! `ELASTICA_FUZZ_CASES` sets the cases per input (default [`DEFAULT_CASES`]; the whole file
//! runs in well under a minute in release).
//! Failures proptest finds are kept in `proptest-regressions/` and replayed first.

mod common;
use common::snapshot;

use elastica::compress::testing::NgramPredictor;
use elastica::compress::{compress, decompress, CompressOptions};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const DEFAULT_CASES: u32 = 600;

// ---------------------------------------------------------------------------------------
// Allocation tracking: the largest single request made by the armed thread.

struct Tracking;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator (e.g. during thread teardown).
    let _ = ARMED.try_with(|a| {
        if a.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Panics while a load is tracked are the findings, reported by the property; printing
/// each one (with a backtrace) would only slow thousands of cases down.
fn quiet_panics_while_tracked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !ARMED.try_with(|a| a.get()).unwrap_or(false) {
                default(info)
            }
        }));
    });
}

/// Run `f` with allocation tracking; returns its result (or the panic message) and the
/// largest single allocation it requested.
fn tracked<T>(f: impl FnOnce() -> T) -> (Result<T, String>, usize) {
    quiet_panics_while_tracked();
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    ARMED.with(|a| a.set(false));
    let peak = PEAK.with(|p| p.get());
    let r = r.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    });
    (r, peak)
}

// ---------------------------------------------------------------------------------------
// Mutations.

/// Numbers written where a header declares a length, size, count or offset.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "255",
    "65536",
    "2147483647",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "99999999999999999999999",
    "1e30",
    "1e-30",
    "0.5",
    "NaN",
    "null",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Replace the `n`-th run of ASCII digits with a number from [`NUMBERS`] (or a random one).
    Number(Index, Index, u64),
    /// Overwrite 8 bytes at a position in the first `hot` bytes with a little-endian u64:
    /// binary length fields.
    Word(Index, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = proptest::collection::vec(any::<u8>(), 1..64);
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => bytes.clone().prop_map(Mutation::Extend),
        1 => (any::<Index>(), bytes).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Delete(i, n)),
        3 => (any::<Index>(), any::<Index>(), any::<u64>()).prop_map(|(i, j, r)| Mutation::Number(i, j, r)),
        2 => (any::<Index>(), prop_oneof![
            Just(0u64), Just(1), Just(u64::MAX), Just(1 << 32), Just(1 << 40), any::<u64>()
        ]).prop_map(|(i, v)| Mutation::Word(i, v)),
    ]
}

/// Apply `muts` to `seed`; positions of flips, sets and words fall in the first `hot` bytes
/// half of the time (headers are where lengths live).
fn apply(seed: &[u8], muts: &[Mutation], hot: usize) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in muts {
        let pos = |i: &Index, b: &[u8]| -> usize {
            if b.is_empty() {
                0
            } else {
                let n = if i.index(2) == 0 {
                    hot.min(b.len())
                } else {
                    b.len()
                };
                i.index(n.max(1)).min(b.len() - 1)
            }
        };
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => {
                let p = pos(i, &b);
                b[p] ^= 1 << bit;
            }
            Mutation::Set(i, v) if !b.is_empty() => {
                let p = pos(i, &b);
                b[p] = *v;
            }
            Mutation::Truncate(i) => {
                let n = i.index(b.len() + 1);
                b.truncate(n);
            }
            Mutation::Extend(x) => b.extend_from_slice(x),
            Mutation::Insert(i, x) => {
                let p = i.index(b.len() + 1);
                b.splice(p..p, x.iter().copied());
            }
            Mutation::Delete(i, n) if !b.is_empty() => {
                let p = i.index(b.len());
                let e = (p + n).min(b.len());
                b.drain(p..e);
            }
            Mutation::Number(which, pick, r) => {
                let runs = digit_runs(&b);
                if runs.is_empty() {
                    continue;
                }
                let (s, e) = runs[which.index(runs.len())];
                let k = pick.index(NUMBERS.len() + 1);
                let n = if k == NUMBERS.len() {
                    r.to_string()
                } else {
                    NUMBERS[k].to_string()
                };
                b.splice(s..e, n.into_bytes());
            }
            Mutation::Word(i, v) if b.len() >= 8 => {
                let p = pos(i, &b).min(b.len() - 8);
                b[p..p + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The harness.

/// The cases come from a fixed seed, so `cargo test` is repeatable (CI must not pass or fail
/// by chance); `ELASTICA_FUZZ_SEED=N` picks another, `ELASTICA_FUZZ_SEED=random` a fresh one
/// each run, to search further. Regressions found either way are replayed first.
fn rng_seed() -> RngSeed {
    match std::env::var("ELASTICA_FUZZ_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(v) => RngSeed::Fixed(
            v.parse()
                .expect("ELASTICA_FUZZ_SEED: a number or \"random\""),
        ),
        None => RngSeed::Fixed(20261206),
    }
}

fn cases() -> u32 {
    std::env::var("ELASTICA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Fuzz one input: `seed` is written (mutated) to `dir/<file>` before each call of `load`,
/// which reads `dir`. No single allocation may exceed `budget(input length)`.
fn fuzz(
    name: &str,
    dir: &Path,
    file: &str,
    seed: &[u8],
    hot: usize,
    budget: impl Fn(usize) -> usize,
    load: impl Fn(&Path) -> anyhow::Result<()>,
) {
    // The seed itself loads.
    std::fs::write(dir.join(file), seed).unwrap();
    if let Err(e) = load(dir) {
        panic!("{name}: the valid seed does not load: {e:#}");
    }
    let mut config = Config::with_cases(cases());
    config.rng_seed = rng_seed();
    config.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(leak(format!(
        "proptest-regressions/fuzz-{name}.txt"
    )))));
    let mut runner = TestRunner::new(config);
    let errors = AtomicU64::new(0);
    let tried = AtomicU64::new(0);
    let strategy = proptest::collection::vec(mutation(), 1..4);
    let result = runner.run(&strategy, |muts| {
        let bytes = apply(seed, &muts, hot);
        std::fs::write(dir.join(file), &bytes).unwrap();
        let before = snapshot(dir);
        let (r, peak) = tracked(|| load(dir));
        tried.fetch_add(1, Ordering::Relaxed);
        match r {
            Err(panic) => {
                return Err(TestCaseError::fail(format!(
                    "{name}: the loader panicked: {panic}"
                )))
            }
            Ok(Err(_)) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(())) => {}
        }
        let limit = budget(bytes.len());
        prop_assert!(
            peak <= limit,
            "{}: one allocation of {} bytes for an input of {} bytes (limit {}); input: {:?}",
            name,
            peak,
            bytes.len(),
            limit,
            String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
        );
        prop_assert!(snapshot(dir) == before, "{}: the loader wrote files", name);
        Ok(())
    });
    eprintln!(
        "fuzz {name}: {} cases, {} refused with an error",
        tried.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Allocations a loader may make regardless of the input (buffers, tables, a thread's
/// stack-sized scratch).
const FIXED: usize = 16 << 20;

fn linear(k: usize) -> impl Fn(usize) -> usize {
    move |n| FIXED + k * n
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A tiny Llama (hidden 16, 2 layers) saved in the HF layout in `dir`: config.json,
/// tokenizer files, model.safetensors (a few KB, so most bytes are header).
fn tiny_model(dir: &Path) {
    common::write_tokenizer(dir);
    std::fs::write(dir.join("config.json"), common::tiny_config("llama")).unwrap();
    let lm = elastica::model::checkpoint::init_model(
        &dir.join("config.json"),
        dir,
        1,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    elastica::model::checkpoint::save_model(&lm.model, dir, dir, None).unwrap();
}

fn load_model(dir: &Path) -> anyhow::Result<()> {
    elastica::model::checkpoint::load_model(dir.to_str().unwrap(), &candle_core::Device::Cpu)
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Targets.

#[test]
fn fuzz_safetensors_weights() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let seed = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize + 8;
    // Weights are read into f32 tensors: at most 2x the file for f16/bf16 sources.
    fuzz(
        "safetensors",
        tmp.path(),
        "model.safetensors",
        &seed,
        header,
        linear(4),
        load_model,
    );
}

#[test]
fn fuzz_shard_index() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let d = tmp.path();
    std::fs::rename(
        d.join("model.safetensors"),
        d.join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let st = std::fs::read(d.join("model-00001-of-00001.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = meta
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), "model-00001-of-00001.safetensors".into()))
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": st.len()}, "weight_map": map});
    let seed = serde_json::to_vec_pretty(&index).unwrap();
    let model_bytes = st.len();
    fuzz(
        "shard-index",
        d,
        "model.safetensors.index.json",
        &seed,
        seed.len(),
        move |n| FIXED + 4 * (n + model_bytes),
        load_model,
    );
}

#[test]
fn fuzz_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_model(tmp.path());
    let seed = std::fs::read(tmp.path().join("config.json")).unwrap();
    let weights = std::fs::metadata(tmp.path().join("model.safetensors"))
        .unwrap()
        .len() as usize;
    // The config alone is read, then the whole model: the weights bound what loading may
    // allocate (a config may not make elastica allocate beyond its checkpoint).
    fuzz(
        "config.json",
        tmp.path(),
        "config.json",
        &seed,
        seed.len(),
        move |n| FIXED + 4 * (n + weights),
        |d| {
            elastica::model::ModelConfig::from_file(&d.join("config.json"))?;
            load_model(d)
        },
    );
}

#[test]
fn fuzz_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture(f), d.join(f)).unwrap();
    }
    let seed = std::fs::read(d.join("tokenizer.json")).unwrap();
    fuzz(
        "tokenizer.json",
        d,
        "tokenizer.json",
        &seed,
        seed.len(),
        linear(64),
        |d| {
            let t = elastica::model::tokenizer::TextTokenizer::from_dir(d, &[2], Some(0))?;
            let ids = t.encode("Hello world, a test.", true)?;
            t.decode(&ids, false)?;
            Ok(())
        },
    );
}

/// A PEFT adapter (a tiny-llama one of tests/fixtures/lora) in `dir`, read against
/// tiny-llama's config and merged into its weights.
fn load_adapter(dir: &Path) -> anyhow::Result<()> {
    let base = elastica::model::checkpoint::load_model(
        fixture("models/tiny-llama").to_str().unwrap(),
        &candle_core::Device::Cpu,
    )?;
    let cfg = &base.model.cfg;
    elastica::model::lora::PeftAdapter::load(dir, cfg)?.merged(cfg, &base.model.params)?;
    Ok(())
}

fn adapter_dir(dir: &Path, adapter: &str) {
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("lora").join(adapter).join(f), dir.join(f)).unwrap();
    }
}

/// The adapter's weights (mutations kept to the header, as for a model's) and its config, of
/// a DoRA adapter and of one with LoRA on the head and whole tensors (modules_to_save).
#[test]
fn fuzz_adapter_files() {
    let base = std::fs::metadata(fixture("models/tiny-llama/model.safetensors"))
        .unwrap()
        .len() as usize;
    for (name, file, adapter) in [
        (
            "adapter-safetensors",
            "adapter_model.safetensors",
            "peft-llama-dora",
        ),
        ("adapter-config", "adapter_config.json", "peft-llama-dora"),
        (
            "folded-safetensors",
            "adapter_model.safetensors",
            "peft-llama-save",
        ),
        ("folded-config", "adapter_config.json", "peft-llama-save"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        adapter_dir(tmp.path(), adapter);
        let seed = std::fs::read(tmp.path().join(file)).unwrap();
        let hot = if file.ends_with(".safetensors") {
            u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize + 8
        } else {
            seed.len()
        };
        fuzz(
            name,
            tmp.path(),
            file,
            &seed,
            hot,
            move |n| FIXED + 4 * (n + base),
            load_adapter,
        );
    }
}

fn load_data(schema: &'static str, file: &'static str) -> impl Fn(&Path) -> anyhow::Result<()> {
    move |d| {
        let spec = elastica::data::schemas::DataSpec::new(d.join(file).to_string_lossy(), schema);
        let ds = elastica::data::schemas::load(&spec)?;
        ds.prompts()?;
        Ok(())
    }
}

/// Fuzz one data file of a schema, seeded with the fixture at `rel` (under tests/fixtures)
/// and mutated anywhere (a parquet footer sits at the end, a JSON list's close at the end).
fn fuzz_data_file(name: &str, rel: &str, schema: &'static str) {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::fs::read(fixture(rel)).unwrap();
    let file = leak(
        Path::new(rel)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
    );
    fuzz(
        name,
        tmp.path(),
        file,
        &seed,
        seed.len(),
        linear(64),
        load_data(schema, file),
    );
}

/// Conversations (`--schema conversation`, SFT rows and preference pairs), read and then
/// rendered by tiny-qwen2's chat template into token ids.
fn load_conversations(pairs: bool) -> impl Fn(&Path) -> anyhow::Result<()> {
    let lm = elastica::model::checkpoint::load_model(
        fixture("models/tiny-qwen2").to_str().unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    move |d| {
        let name = if pairs { "pairs.jsonl" } else { "sft.jsonl" };
        let spec =
            elastica::data::schemas::DataSpec::new(d.join(name).to_string_lossy(), "conversation");
        let records = if pairs {
            let ds = elastica::data::prefs::load(&spec, None)?;
            ds.records
                .iter()
                .flat_map(|p| [p.record(&p.chosen), p.record(&p.rejected)])
                .collect()
        } else {
            elastica::data::schemas::load(&spec)?.records
        };
        let chat = elastica::data::template::Template::Chat;
        elastica::train::batch::tokenize(&records, &lm.tokenizer, chat, 512)?;
        Ok(())
    }
}

#[test]
fn fuzz_conversations() {
    for (pairs, file) in [(false, "sft.jsonl"), (true, "pairs.jsonl")] {
        let tmp = tempfile::tempdir().unwrap();
        let seed = std::fs::read(fixture("chat").join(file)).unwrap();
        fuzz(
            &format!("conversation-{file}"),
            tmp.path(),
            file,
            &seed,
            seed.len(),
            linear(64),
            load_conversations(pairs),
        );
    }
}

/// Unpaired feedback (KTO's `{"prompt", "completion", "label"}`), sniffed and loaded.
#[test]
fn fuzz_feedback() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::fs::read(fixture("dpo/kto_unpaired.jsonl")).unwrap();
    fuzz(
        "feedback",
        tmp.path(),
        "kto.jsonl",
        &seed,
        seed.len(),
        linear(64),
        |d| {
            let spec = elastica::data::schemas::DataSpec::new(
                d.join("kto.jsonl").to_string_lossy(),
                "jsonl",
            );
            elastica::data::feedback::is_unpaired(&spec)?;
            elastica::data::feedback::load(&spec)?;
            Ok(())
        },
    );
}

/// Prompt files (texts and conversations to answer) and run-record files (what `generate`
/// writes and `score` reads), seeded with two conversations and a pair, which both read.
#[test]
fn fuzz_prompt_and_run_record_files() {
    let tmp = tempfile::tempdir().unwrap();
    let sft = std::fs::read_to_string(fixture("chat/sft.jsonl")).unwrap();
    let conversations: Vec<&str> = sft.lines().filter(|l| l.contains("messages")).collect();
    let seed = format!(
        "{}\n{{\"prompt\": \"p\", \"response\": \"r\"}}\n",
        conversations.join("\n")
    )
    .into_bytes();
    fuzz(
        "prompts",
        tmp.path(),
        "p.jsonl",
        &seed,
        seed.len(),
        linear(64),
        |d| {
            let path = d.join("p.jsonl");
            let prompts = elastica::data::prompts::read_prompts(&path);
            let records = elastica::data::records::read_run_records(&path);
            prompts?;
            records?;
            Ok(())
        },
    );
}

#[test]
fn fuzz_jsonl_data() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::fs::read(fixture("data/generic.jsonl")).unwrap();
    fuzz(
        "jsonl",
        tmp.path(),
        "data.jsonl",
        &seed,
        seed.len(),
        linear(64),
        |d| {
            elastica::data::records::read_jsonl(&d.join("data.jsonl"))?;
            load_data("jsonl", "data.jsonl")(d)
        },
    );
}

#[test]
fn fuzz_beavertails_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    let xz = std::fs::read(fixture("data/beavertails/round0/30k/test.jsonl.xz")).unwrap();
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(&xz[..]), &mut text).unwrap();
    // Two records are plenty of structure; keep the seed small.
    let seed: Vec<u8> = text
        .split_inclusive(|&b| b == b'\n')
        .take(2)
        .flatten()
        .copied()
        .collect();
    fuzz(
        "beavertails",
        tmp.path(),
        "train.jsonl",
        &seed,
        seed.len(),
        linear(64),
        load_data("beavertails", "train.jsonl"),
    );
}

#[test]
fn fuzz_alpaca_json() {
    fuzz_data_file("alpaca", "data/alpaca/alpaca_data.json", "alpaca");
}

#[test]
fn fuzz_imdb_parquet() {
    fuzz_data_file(
        "imdb-parquet",
        "data/imdb/plain_text/test-00000-of-00001.parquet",
        "imdb",
    );
}

#[test]
fn fuzz_truthfulqa_csv() {
    fuzz_data_file("truthfulqa-csv", "data/TruthfulQA.csv", "truthfulqa");
}

#[test]
fn fuzz_truthfulqa_parquet() {
    // List columns (correct_answers, incorrect_answers): nested pages the IMDb seed lacks.
    let rel = "data/truthfulqa/generation/validation-00000-of-00001.parquet";
    fuzz_data_file("truthfulqa-parquet", rel, "truthfulqa");
}

/// The compressed-file fuzz target: the file as mutated, or (`resign`) with its header check
/// and payload hash recomputed, so that the mutated payload reaches the decoder.
fn load_compressed(resign: bool) -> impl Fn(&Path) -> anyhow::Result<()> {
    use elastica::compress::format::{hash8, HEADER_LEN};
    move |d| {
        let mut f = std::fs::read(d.join("in.elz"))?;
        if resign && f.len() >= HEADER_LEN {
            let payload_len = (f.len() - HEADER_LEN) as u64;
            f[64..72].copy_from_slice(&payload_len.to_le_bytes());
            let h = hash8(&f[HEADER_LEN..]);
            f[72..80].copy_from_slice(&h);
            let c = hash8(&f[..116]);
            f[116..124].copy_from_slice(&c);
        }
        let mut pred = NgramPredictor::new(400, 64)?;
        decompress(&f, &mut pred, false).map(|_| ())
    }
}

#[test]
fn fuzz_compressed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let text = b"The committee met on Tuesday to review the plan; \xff\xfe raw bytes, and the \
                 members agreed that the work would be tested first. "
        .repeat(3);
    let mut pred = NgramPredictor::new(400, 64).unwrap();
    let opts = CompressOptions {
        chunk_tokens: Some(40),
        progress: false,
    };
    let (seed, _) = compress(&text, &mut pred, &opts).unwrap();
    for resign in [false, true] {
        fuzz(
            if resign {
                "compressed-resigned"
            } else {
                "compressed"
            },
            tmp.path(),
            "in.elz",
            &seed,
            124,
            linear(16),
            load_compressed(resign),
        );
    }
}

#[test]
fn fuzz_manifest_and_cell_result() {
    use elastica::grid::manifest::{CellSpec, Manifest};
    let tmp = tempfile::tempdir().unwrap();
    let cell = |id: &str, deps: &[&str]| CellSpec {
        id: id.into(),
        kind: "rebound.align".into(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        inputs: BTreeMap::from([(
            "data".to_string(),
            elastica::grid::manifest::Input::pinned_bytes("data/a.jsonl", b"{}"),
        )]),
        params: serde_json::json!({"n_positive": 8, "lr": 0.01, "seed": 1}),
    };
    let m = Manifest::new("rebound", vec![cell("a", &[]), cell("b", &["a"])]).unwrap();
    let seed = serde_json::to_vec_pretty(&m).unwrap();
    fuzz(
        "manifest",
        tmp.path(),
        "manifest.json",
        &seed,
        seed.len(),
        linear(64),
        |d| {
            let g = elastica::grid::rundir::Grid::open(&d.join("manifest.json"))?;
            g.manifest().stages();
            Ok(())
        },
    );
    let result = serde_json::json!({
        "id": "a", "kind": "rebound.align", "cell_hash": m.cells[0].hash(), "attempts": 1,
        "seconds": 1.5, "finished_unix": 1764979200u64,
        "output": {"train": {"steps": 4, "resumed_from": null, "losses": [1.0, 0.5]}}
    });
    let seed = serde_json::to_vec_pretty(&result).unwrap();
    fuzz(
        "cell-result",
        tmp.path(),
        "result.json",
        &seed,
        seed.len(),
        linear(64),
        |d| elastica::grid::rundir::CellResult::read(&d.join("result.json")).map(|_| ()),
    );
}
