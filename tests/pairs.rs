//! Plain prompt-response pairs (SFT rows, DPO preference pairs, KTO feedback) build the token
//! ids and loss masks TRL 1.x builds, and score as transformers scores them, under a
//! SentencePiece-style tokenizer where tokenizing an answer on its own would differ
//! (`scripts/make_sp_pair_fixture.py`, fixture `tests/fixtures/chat/sp`, tiny-llama's weights).

mod common;

use elastica::data::schemas::{load, DataSpec};
use elastica::data::template::Template;
use elastica::data::{feedback, prefs};
use elastica::model::checkpoint::load_model;
use elastica::model::LoadedModel;
use elastica::train::batch::{mismatched, share_prompt, tokenize, Example};
use std::path::{Path, PathBuf};

fn sp(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat/sp")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// tiny-llama's weights beside the chat/sp tokenizer, in a folder of their own.
fn sp_model(dir: &Path) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join("models/tiny-llama").join(f), dir.join(f)).unwrap();
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(sp(f), dir.join(f)).unwrap();
    }
    dir.to_path_buf()
}

fn expected() -> serde_json::Value {
    common::read_json(Path::new(&sp("pairs_expected.json")))
}

const TEMPLATES: [(Template, &str); 2] =
    [(Template::Raw, "raw"), (Template::SafeRlhf, "safe-rlhf")];

fn assert_example(e: &Example, w: &serde_json::Value, what: &str) {
    let ids: Vec<u32> = serde_json::from_value(w["ids"].clone()).unwrap();
    let labels: Vec<i64> = serde_json::from_value(w["labels"].clone()).unwrap();
    assert_eq!((&e.ids, &e.labels), (&ids, &labels), "{what}");
}

fn lm() -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().unwrap();
    let lm = load_model(
        sp_model(dir.path()).to_str().unwrap(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    (dir, lm)
}

#[test]
fn sft_pairs_are_tokenized_once_as_trl_and_score_as_transformers() {
    let (dir, lm) = lm();
    let want = expected();
    assert!(want["answers_alone_differing"].as_u64().unwrap() > 0);
    assert!(want["boundary_merges"].as_u64().unwrap() > 0);
    let ds = load(&DataSpec::new(sp("pair_sft.jsonl"), "jsonl")).unwrap();
    for (template, name) in TEMPLATES {
        let rows = want[name]["sft"].as_array().unwrap();
        let (examples, cut) = tokenize(&ds.records, &lm.tokenizer, template, 512).unwrap();
        assert_eq!((examples.len(), cut), (rows.len(), 0));
        for (i, (e, w)) in examples.iter().zip(rows).enumerate() {
            assert_example(e, w, &format!("{name} row {i}"));
        }
        let (ok, stdout, err) = common::eval_loss(
            dir.path().to_str().unwrap(),
            &sp("pair_sft.jsonl"),
            &["--template", name],
        );
        assert!(ok, "{err}");
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        common::assert_eval_matches_rows(&v, rows, name);
    }
}

/// A cut pair still counts the bytes of the response its kept tokens stand for.
#[test]
fn a_cut_pair_counts_the_bytes_of_its_kept_response() {
    let (_dir, lm) = lm();
    let ds = load(&DataSpec::new(sp("pair_sft.jsonl"), "jsonl")).unwrap();
    let (whole, _) = tokenize(&ds.records, &lm.tokenizer, Template::Raw, 512).unwrap();
    // Row 2: "Tell me a story: " + "a fox met a crow." (its first answer token merges "▁a").
    let e = &whole[2];
    let start = e.labels.iter().position(|&l| l >= 0).unwrap();
    let (cut, n) = tokenize(&ds.records[2..3], &lm.tokenizer, Template::Raw, start + 3).unwrap();
    assert_eq!(n, 1);
    let kept = lm.tokenizer.decode(&cut[0].ids[start..], true).unwrap();
    // The kept tokens decode to the response's first bytes, after the prompt's last space.
    let response = "a fox met a crow.";
    assert!(response.starts_with(kept.trim_start()), "{kept:?}");
    assert_eq!(cut[0].scored_bytes, kept.trim_start().len(), "{kept:?}");
    assert!(cut[0].scored_bytes < response.len());
}

#[test]
fn dpo_pairs_share_the_prompt_as_trl() {
    let (_dir, lm) = lm();
    let want = expected();
    let pairs = prefs::load(&DataSpec::new(sp("pair_prefs.jsonl"), "jsonl"), None).unwrap();
    let mut moved = 0;
    for (template, name) in TEMPLATES {
        let rows = want[name]["prefs"].as_array().unwrap();
        let side = |f: fn(&prefs::PrefRecord) -> &str| {
            let recs: Vec<_> = pairs.records.iter().map(|p| p.record(f(p))).collect();
            tokenize(&recs, &lm.tokenizer, template, 512).unwrap().0
        };
        let (mut chosen, mut rejected) = (side(|p| &p.chosen), side(|p| &p.rejected));
        for (i, (c, r)) in chosen.iter_mut().zip(&mut rejected).enumerate() {
            let before = (c.labels.clone(), r.labels.clone());
            share_prompt(c, r);
            moved += usize::from(before != (c.labels.clone(), r.labels.clone()));
            assert_example(c, &rows[i]["chosen"], &format!("{name} pair {i} chosen"));
            assert_example(
                r,
                &rows[i]["rejected"],
                &format!("{name} pair {i} rejected"),
            );
        }
    }
    assert!(
        moved > 0,
        "no pair's answers start apart: the rule is untested"
    );
}

#[test]
fn kto_completions_and_kl_sequences_are_trls() {
    let (_dir, lm) = lm();
    let want = expected();
    let ds = feedback::load(&DataSpec::new(sp("pair_feedback.jsonl"), "jsonl")).unwrap();
    let recs: Vec<_> = ds.records.iter().map(|e| e.record(&e.completion)).collect();
    for (template, name) in TEMPLATES {
        let rows = want[name]["feedback"].as_array().unwrap();
        let (examples, _) = tokenize(&recs, &lm.tokenizer, template, usize::MAX).unwrap();
        let kl = mismatched(&examples, 512, &lm.tokenizer).unwrap();
        for (i, w) in rows.iter().enumerate() {
            assert_example(&examples[i], w, &format!("{name} row {i}"));
            assert_example(&kl[i], &w["kl"], &format!("{name} row {i} KL"));
        }
        // Cut to max_length as TRL's collator cuts: the start is kept.
        let short = mismatched(&examples, 12, &lm.tokenizer).unwrap();
        for (s, k) in short.iter().zip(&kl) {
            assert_eq!(s.ids[..], k.ids[..12]);
        }
    }
}

/// `rates` codes a pair as training tokenizes it under the template it is given (the JSONL
/// schema's default is safe-rlhf), so its bits per token are eval-loss's NLL.
#[test]
fn rates_code_pairs_as_eval_loss_scores_them() {
    let (dir, _lm) = lm();
    let want = expected();
    for (template, given) in [("raw", Some("raw")), ("safe-rlhf", None)] {
        let rows = want[template]["sft"].as_array().unwrap();
        let out = dir.path().join(format!("rates-{template}"));
        let data = format!("d={}", sp("pair_sft.jsonl"));
        let mut args = vec!["rates", "--models", dir.path().to_str().unwrap()];
        args.extend(["--data", &data, "--out", out.to_str().unwrap()]);
        args.extend(given.map(|t| ["--template", t]).into_iter().flatten());
        let (ok, so, se) = common::elastica(&args);
        assert!(ok, "{so}\n{se}");
        let rates = common::read_json(&out.join("rates.json"));
        let row = &rates.as_array().unwrap()[0];
        assert_eq!(row["template"], template, "{row}");
        common::assert_rates_match_rows(row, rows, template);
        let bits_per_token = row["bits_per_token"].as_f64().unwrap();
        // The interval over records is that of transformers' per-row code lengths.
        let ln2 = std::f64::consts::LN_2;
        let bits: Vec<f64> = rows
            .iter()
            .map(|w| w["nll_sum"].as_f64().unwrap() / ln2)
            .collect();
        let counts: Vec<f64> = rows.iter().map(|w| w["tokens"].as_f64().unwrap()).collect();
        let (lo, hi) = elastica::report::stats::ratio_ci95(&bits, &counts).unwrap();
        let ci = &row["bits_per_token_ci95"];
        for (got, want) in [(&ci[0], lo), (&ci[1], hi)] {
            let got = got.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs(),
                "{template}: {ci} vs ({lo}, {hi})"
            );
        }
        assert!(
            lo < bits_per_token && bits_per_token < hi,
            "{template}: {ci}"
        );
    }
}

/// As TRL: an answer or text that already ends with the EOS text gets no second EOS, in
/// training and in rates alike.
#[test]
fn an_eos_already_written_is_not_added_again() {
    use elastica::compress::rates::ScoredSequence;
    use elastica::data::records::Record;
    let (_dir, lm) = lm();
    let pair = |r: &str| Record::Pair {
        prompt: "Say hello\n".into(),
        response: r.into(),
    };
    let text = |t: &str| Record::Text { text: t.into() };
    for (plain, with_eos) in [
        (pair("hello there"), pair("hello there</s>")),
        (text("hello there"), text("hello there</s>")),
    ] {
        let recs = [plain, with_eos];
        let (e, _) = tokenize(&recs, &lm.tokenizer, Template::Raw, 512).unwrap();
        assert_eq!(e[0].ids, e[1].ids);
        assert_eq!(
            e[0].ids.iter().filter(|&&t| t == 1).count(),
            1,
            "{:?}",
            e[0].ids
        );
        let seq = |r| ScoredSequence::raw(r, &lm.tokenizer).unwrap();
        assert_eq!(seq(&recs[0]).ids, seq(&recs[1]).ids);
    }
}
