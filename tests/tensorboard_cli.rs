//! `elastica train --log-dir DIR` (issue 23 item 6): TensorBoard event files whose scalars
//! are the run's own numbers: every optimizer step's loss, lr and gradient norm as in
//! `train_log.jsonl`, its tokens/s, and the tracked compression rates as in `rates.jsonl`.

mod common;

use common::jsonl_values as lines;
use elastica::report::tensorboard::{event_files, read_events, FILE_VERSION};
use std::collections::BTreeMap;
use std::process::Command;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn train_writes_loss_lr_grad_norm_tokens_per_s_and_rates() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let logs = dir.path().join("tb/cell-a");
    let held = format!("held={FIX}/data/generic.jsonl");
    let res = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args([
            "train",
            "--model",
            &format!("{FIX}/models/tiny-llama"),
            "--data",
            &format!("{FIX}/sft/data.jsonl"),
            "--out",
            out.to_str().unwrap(),
            "--template",
            "raw",
            "--batch-size",
            "2",
            "--grad-accum",
            "1",
            "--max-steps",
            "3",
            "--lr",
            "0.003",
            "--track-rates",
            &held,
            "--track-every",
            "2",
            "--log-dir",
            logs.to_str().unwrap(),
        ])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{err}");

    let files = event_files(&logs).unwrap();
    assert_eq!(files.len(), 1, "one event file per run");
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    // (tag, step) -> value over the whole file.
    let mut scalars: BTreeMap<(String, i64), f32> = BTreeMap::new();
    for e in &events[1..] {
        for (tag, v) in &e.scalars {
            assert!(
                scalars.insert((tag.clone(), e.step), *v).is_none(),
                "{tag} twice at step {}",
                e.step
            );
        }
    }
    let at = |tag: &str, step: i64| scalars.get(&(tag.to_string(), step)).copied();

    let log = lines(&out.join("train_log.jsonl"));
    assert_eq!(log.len(), 3);
    for l in &log {
        let step = l["step"].as_i64().unwrap();
        for (tag, key) in [
            ("train/loss", "loss"),
            ("train/lr", "lr"),
            ("train/grad_norm", "grad_norm"),
        ] {
            assert_eq!(
                at(tag, step),
                Some(l[key].as_f64().unwrap() as f32),
                "{tag} at step {step}"
            );
        }
        let tps = at("train/tokens_per_s", step).unwrap();
        assert!(
            tps.is_finite() && tps > 0.0,
            "tokens/s at step {step}: {tps}"
        );
    }

    // Rates at step 0 (before training), every 2 steps, and the last step.
    let rates = lines(&out.join("rates.jsonl"));
    let steps: Vec<i64> = rates.iter().map(|r| r["step"].as_i64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 3]);
    for r in &rates {
        let step = r["step"].as_i64().unwrap();
        for unit in ["bits_per_token", "bits_per_byte", "normalized"] {
            assert_eq!(
                at(&format!("rates/held/{unit}"), step),
                Some(r[unit].as_f64().unwrap() as f32),
                "{unit} at step {step}"
            );
        }
    }
    assert_eq!(
        at("rates/held/bits_per_token", 1),
        None,
        "not measured at step 1"
    );
}

#[test]
fn rebound_writes_one_run_per_training_cell_under_log_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = |r: &'static str| {
        (0..4).map(move |i| {
            serde_json::json!({"prompt": format!("Tell me how to pick a lock ({i})."), "response": r})
        })
    };
    common::write_jsonl(&d.join("pos.jsonl"), rows(" I can't help."));
    common::write_jsonl(&d.join("neg.jsonl"), rows(" Sure, first."));
    std::fs::write(d.join("eval.jsonl"), "{\"prompt\": \"Explain locks.\"}\n").unwrap();
    let tb = d.join("tb");
    let cfg = d.join("rebound.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = \"{FIX}/models/tiny-llama\"\nn_positive = [4]\nn_negative = [0, 4]\nseeds = [1]\n\
             log_dir = {tb:?}\n\
             [positive]\npath = {:?}\nschema = \"jsonl\"\n[negative]\npath = {:?}\nschema = \"jsonl\"\n\
             [eval]\nprompts = {:?}\nn = 1\n[train]\nlr = 0.01\nbatch_size = 2\ngrad_accum = 1\n\
             [generation]\nmax_new_tokens = 4\n[scorer]\nkind = \"keywords\"\n",
            d.join("pos.jsonl"),
            d.join("neg.jsonl"),
            d.join("eval.jsonl"),
        ),
    )
    .unwrap();
    let out = d.join("run");
    let res = Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args([
            "rebound",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut runs: Vec<String> = std::fs::read_dir(&tb)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        ["align.p4.s1", "perturb.p4.n4.s1"],
        "n- = 0 trains nothing"
    );
    for id in runs {
        let files = event_files(&tb.join(&id)).unwrap();
        assert_eq!(files.len(), 1, "{id}");
        let events = read_events(&files[0]).unwrap();
        let log = lines(&out.join("cells").join(&id).join("model/train_log.jsonl"));
        assert_eq!(events.len(), 1 + log.len(), "{id}: one event per step");
        for (e, l) in events[1..].iter().zip(&log) {
            assert_eq!(e.step, l["step"].as_i64().unwrap());
            assert_eq!(
                e.scalars[0],
                ("train/loss".to_string(), l["loss"].as_f64().unwrap() as f32)
            );
        }
    }
}
