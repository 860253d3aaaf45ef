//! KTO on unpaired feedback (TRL's `{"prompt", "completion", "label"}`): the tokens, the
//! reference log-probs, z0, the loss, rewards and gradient norms of every step equal a PyTorch
//! computation of TRL's formula with unequal weights (tests/fixtures/dpo/kto_unpaired.json,
//! written by scripts/make_kto_fixture.py; no Python here); a killed run resumes bit-identical
//! from its cached reference, and a resume on flipped labels or other weights is refused;
//! `elastica train --method dpo --dpo-loss kto` on such a file, and its refusals.

mod common;

use elastica::data::feedback::{self, FeedbackRecord};
use elastica::data::schemas::DataSpec;
use elastica::data::template::Template;
use elastica::model::checkpoint::load_model;
use elastica::train::kto::{self, KtoStepLog, REFERENCE_FILE};
use elastica::train::objective::{DpoConfig, DpoLoss, Method};
use elastica::train::schedule::Schedule;
use elastica::train::{TrainConfig, TrainRun};
use std::path::Path;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn model() -> String {
    format!("{FIX}/models/tiny-llama")
}

fn data_path() -> String {
    format!("{FIX}/dpo/kto_unpaired.jsonl")
}

fn examples() -> Vec<FeedbackRecord> {
    feedback::load(&DataSpec::new(data_path(), "jsonl"))
        .unwrap()
        .records
}

fn fixture() -> serde_json::Value {
    common::read_json(Path::new(&format!("{FIX}/dpo/kto_unpaired.json")))
}

/// The fixture's hyper-parameters.
fn cfg() -> TrainConfig {
    TrainConfig {
        template: Template::Raw,
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.01,
        schedule: Schedule::Constant,
        batch_size: 2,
        grad_accum: 2,
        epochs: 2,
        clip: 1.0,
        shuffle: false,
        save_every: 1,
        save_dtype: Some("float32".into()),
        dpo: DpoConfig {
            method: Method::Dpo,
            dpo_beta: 0.1,
            dpo_loss: DpoLoss::Kto,
            kto_undesirable_weight: 1.5,
            ..DpoConfig::DEFAULT
        },
        ..Default::default()
    }
}

fn close(got: f64, want: f64, rel: f64, abs: f64) -> bool {
    (got - want).abs() <= abs + rel * want.abs()
}

/// Run `c` on `examples` into `out`, killed (the hook fails) at step `stop` when given, else
/// resuming.
fn run_on(
    examples: &[FeedbackRecord],
    out: &Path,
    stop: Option<usize>,
    c: &TrainConfig,
) -> anyhow::Result<kto::KtoSummary> {
    let lm = load_model(&model(), &candle_core::Device::Cpu).unwrap();
    let mut hook = common::kill_at(stop);
    let run = TrainRun {
        out,
        resume: stop.is_none(),
        hook: Some(&mut hook),
        progress: false,
    };
    elastica::train::train(&lm, examples, c, run)
}

/// The log (as returned and on disk) against the script's.
fn assert_log_matches(out: &Path, log: &[KtoStepLog], want: &[serde_json::Value]) {
    assert_eq!(log.len(), want.len());
    let on_disk: Vec<KtoStepLog> =
        elastica::train::dpo::read_log(&out.join("train_log.jsonl")).unwrap();
    assert_eq!(on_disk, log);
    for (got, w) in log.iter().zip(want) {
        let f = |k: &str| w[k].as_f64();
        let step = got.base.step;
        for (g, k, rel, abs) in [
            (Some(got.base.loss), "loss", 1e-4, 1e-6),
            (Some(got.base.grad_norm), "grad_norm", 1e-3, 0.0),
            (Some(got.kl), "kl", 1e-3, 1e-5),
            (got.desirable_reward, "desirable_reward", 1e-3, 1e-5),
            (got.undesirable_reward, "undesirable_reward", 1e-3, 1e-5),
        ] {
            match (g, f(k)) {
                (Some(g), Some(x)) => {
                    assert!(close(g, x, rel, abs), "step {step}: {k} {g} vs {x}")
                }
                (g, x) => assert_eq!(g, x, "step {step}: {k}"),
            }
        }
        assert_eq!(got.base.tokens as u64, w["tokens"].as_u64().unwrap());
    }
}

#[test]
fn unpaired_kto_matches_pytorch_and_resumes_bit_identical() {
    let fix = fixture();
    let examples = examples();
    assert_eq!(examples.iter().filter(|e| e.desirable).count(), 3);
    let out = tempfile::tempdir().unwrap();
    let s = run_on(&examples, out.path(), None, &cfg()).unwrap();
    // The reference log-probs of the completions and the mismatched sequences.
    let r = common::read_json(&out.path().join(REFERENCE_FILE));
    for (ours, theirs) in [
        ("completions", "reference_completions"),
        ("mismatched", "reference_mismatched"),
    ] {
        let got: Vec<f64> = serde_json::from_value(r[ours].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(fix[theirs].clone()).unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(close(*g, *w, 1e-5, 0.0), "{ours}: {g} vs {w}");
        }
    }
    assert_log_matches(out.path(), &s.log, fix["log"].as_array().unwrap());
    // Step 1: policy = reference, so each loss is its weight / 2: (1 + 1.5 + 1 + 1.5) / 8.
    assert!((s.log[0].base.loss - 0.625).abs() < 1e-6);
    assert!(s.log.iter().any(|l| l.kl > 1.0), "z0 never left its floor");
    // Killed at step 3, resumed from step 2's checkpoint with the cached reference.
    let cut = tempfile::tempdir().unwrap();
    assert!(run_on(&examples, cut.path(), Some(3), &cfg()).is_err());
    // Flipped labels or another weight are other data or settings: refused.
    let mut flipped = examples.clone();
    flipped[1].desirable = true;
    let e = format!(
        "{:#}",
        run_on(&flipped, cut.path(), None, &cfg()).unwrap_err()
    );
    assert!(e.contains("cannot resume") && e.contains("data"), "{e}");
    let mut other = cfg();
    other.dpo.kto_desirable_weight = 2.0;
    let e = format!(
        "{:#}",
        run_on(&examples, cut.path(), None, &other).unwrap_err()
    );
    assert!(
        e.contains("cannot resume") && e.contains("kto_desirable_weight"),
        "{e}"
    );
    let resumed = run_on(&examples, cut.path(), None, &cfg()).unwrap();
    assert_eq!(resumed.train.resumed_from, Some(2));
    assert!(resumed.reference_cached);
    assert_eq!(resumed.log, s.log);
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(weights(cut.path()) == weights(out.path()));
    // One example has no other example's completion to mismatch with.
    let e = run_on(
        &examples[..1],
        tempfile::tempdir().unwrap().path(),
        Some(9),
        &cfg(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at least 2 examples"), "{e}");
}

#[test]
fn train_kto_on_unpaired_feedback_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (m, d) = (model(), data_path());
    let kto = [
        &["--method", "dpo", "--dpo-loss", "kto"][..],
        common::TWO_STEPS,
        // The fixture's other settings: its first two steps.
        &[
            "--kto-undesirable-weight",
            "1.5",
            "--weight-decay",
            "0.01",
            "--no-shuffle",
        ],
    ]
    .concat();
    let out = dir.path().join("kto");
    let (ok, stdout, err) = common::train_cli(&m, &d, &out, &kto);
    assert!(ok, "{err}");
    assert!(err.contains("3 desirable, 3 undesirable"), "{err}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["method"], "kto");
    assert_eq!(line["examples"], 6);
    assert_eq!(line["steps"], 2);
    let want = &fixture()["log"][1];
    let got = line["final_loss"].as_f64().unwrap();
    assert!(
        close(got, want["loss"].as_f64().unwrap(), 1e-4, 1e-6),
        "{got}"
    );
    assert!(out.join(REFERENCE_FILE).is_file());
    // Another loss on unpaired rows, or --prefer, is refused before anything is written.
    for (flags, word) in [
        (&["--method", "dpo"][..], "--dpo-loss kto"),
        (
            &[
                "--method",
                "dpo",
                "--dpo-loss",
                "kto",
                "--kto-undesirable-weight",
                "0",
            ][..],
            "kto_undesirable_weight must be",
        ),
        (
            &[
                "--method",
                "dpo",
                "--dpo-loss",
                "sigmoid",
                "--kto-desirable-weight",
                "2",
            ][..],
            "applies to the kto loss only",
        ),
        (
            &["--method", "dpo", "--dpo-loss", "kto", "--prefer", "safer"][..],
            "--prefer",
        ),
    ] {
        let out = dir.path().join("refused");
        let (ok, _, err) = common::train_cli(&m, &d, &out, flags);
        assert!(!ok && err.contains(word), "{flags:?}: {err}");
        assert!(!out.exists(), "{flags:?} wrote {}", out.display());
    }
}
