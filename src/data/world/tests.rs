//! Tests of a whole generated world: determinism, disjointness, sizes, the token budget,
//! the files on disk, and bad configurations.

use super::*;
use crate::score::world::{p_positive, safety_cost};
use std::collections::HashSet;

fn small(seed: u64) -> WorldConfig {
    WorldConfig {
        seed,
        pretrain_tokens: 30_000,
        n_align: 60,
        n_perturb: 40,
        n_eval: 25,
        vocab_size: 600,
        tokenizer_records: 3000,
        ..WorldConfig::default()
    }
}

fn pair(r: &Record) -> (&str, &str) {
    match r {
        Record::Pair { prompt, response } => (prompt, response),
        _ => panic!("expected a pair, got {r:?}"),
    }
}

fn text(r: &Record) -> &str {
    match r {
        Record::Text { text } => text,
        _ => panic!("expected a text, got {r:?}"),
    }
}

/// The prompt of a pre-training text: up to " assistant:" for dialogue; for a review the
/// first sentence, plus the second when it is one of the opening's neutral sentences.
fn pretrain_prompt(t: &str) -> String {
    if let Some(i) = t.find(" assistant:") {
        return t[..i + " assistant:".len()].to_string();
    }
    let ends: Vec<usize> = t.match_indices(['.', '!']).map(|(i, _)| i + 1).collect();
    let first = &t[..ends[0]];
    let Some(&second_end) = ends.get(1) else {
        return first.to_string();
    };
    let second = t[ends[0]..second_end].trim_start();
    let neutral = second.starts_with("it is about ")
        || lexicon::DOMAINS.iter().any(|d| d.facts.contains(&second))
        || lexicon::OPENING_ASIDES.iter().any(|a| {
            lexicon::fill(a, &[])
                .split('{')
                .next()
                .is_some_and(|p| second.starts_with(p))
        });
    if neutral {
        t[..second_end].to_string()
    } else {
        first.to_string()
    }
}

#[test]
fn same_seed_gives_identical_files_and_another_seed_differs() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    World::generate(&small(1))
        .unwrap()
        .write(dirs[0].path())
        .unwrap();
    World::generate(&small(1))
        .unwrap()
        .write(dirs[1].path())
        .unwrap();
    World::generate(&small(2))
        .unwrap()
        .write(dirs[2].path())
        .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dirs[0].path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 10, "{names:?}");
    for n in &names {
        let a = std::fs::read(dirs[0].path().join(n)).unwrap();
        let b = std::fs::read(dirs[1].path().join(n)).unwrap();
        assert!(a == b, "{n} differs between two runs with the same seed");
    }
    for n in [
        PRETRAIN_FILE,
        "reviews_positive.jsonl",
        "dialogue_eval.jsonl",
    ] {
        let a = std::fs::read(dirs[0].path().join(n)).unwrap();
        let c = std::fs::read(dirs[2].path().join(n)).unwrap();
        assert!(a != c, "{n} is the same for seeds 1 and 2");
    }
}

#[test]
fn sets_have_the_requested_sizes_and_are_disjoint() {
    // Many evaluation prompts (a fifth of the harmful requests the language can form), so
    // pre-training would surely hit some if it did not avoid them.
    let cfg = WorldConfig {
        n_eval: 2000,
        ..small(3)
    };
    let w = World::generate(&cfg).unwrap();
    let mut pair_texts: HashSet<String> = HashSet::new();
    let mut pair_prompts: HashSet<String> = HashSet::new();
    for task in Task::ALL {
        assert_eq!(w.align(task).len(), cfg.n_align);
        assert_eq!(w.perturb(task).len(), cfg.n_perturb);
        assert_eq!(w.eval_prompts(task).len(), cfg.n_eval);
        for r in w.align(task).iter().chain(w.perturb(task)) {
            let (p, resp) = pair(r);
            assert!(
                pair_texts.insert(format!("{p}{resp}")),
                "duplicate pair {p}{resp}"
            );
            pair_prompts.insert(p.to_string());
        }
    }
    let mut evals: HashSet<&str> = HashSet::new();
    for task in Task::ALL {
        for p in w.eval_prompts(task) {
            assert!(evals.insert(p), "duplicate evaluation prompt {p}");
            assert!(
                !pair_prompts.contains(p),
                "evaluation prompt {p} is in a pair file"
            );
        }
    }
    for r in w.pretrain() {
        let t = text(r);
        assert!(
            !pair_texts.contains(t),
            "pre-training holds a held-out pair: {t}"
        );
        let p = pretrain_prompt(t);
        assert!(
            !evals.contains(p.as_str()),
            "pre-training holds evaluation prompt {p}"
        );
    }
    // The dialogue evaluation prompts are harmful requests; the review ones are openings.
    let verbs = lexicon::harmful_verbs();
    for p in w.eval_prompts(Task::Dialogue) {
        assert!(
            lexicon::words(p)
                .iter()
                .any(|x| verbs.contains(&x.as_str())),
            "{p}"
        );
    }
}

#[test]
fn alignment_and_perturbation_pairs_score_on_their_side() {
    let w = World::generate(&small(4)).unwrap();
    for r in w.align(Task::Reviews) {
        assert!(p_positive(pair(r).1) > 0.5, "{r:?}");
    }
    for r in w.perturb(Task::Reviews) {
        assert!(p_positive(pair(r).1) < 0.5, "{r:?}");
    }
    for r in w.align(Task::Dialogue) {
        let (p, resp) = pair(r);
        assert!(safety_cost(p, resp) < 0.0, "{r:?}");
    }
    for r in w.perturb(Task::Dialogue) {
        let (p, resp) = pair(r);
        assert!(safety_cost(p, resp) > 0.0, "{r:?}");
    }
    for p in w.eval_prompts(Task::Reviews) {
        assert_eq!(
            p_positive(p),
            0.5,
            "a review opening carries sentiment: {p}"
        );
    }
}

#[test]
fn pretraining_fills_the_token_budget_exactly() {
    let cfg = small(5);
    let w = World::generate(&cfg).unwrap();
    let m = w.manifest();
    let tk = w.tokenizer();
    // Recount every record with the full tokenizer: <s> + text + </s>.
    let mut total = 0u64;
    for r in w.pretrain() {
        total += tokenizer::count(tk, text(r)).unwrap() as u64 + 2;
    }
    let st = &m.files[PRETRAIN_FILE];
    assert_eq!(st.sequence_tokens, total);
    assert_eq!(st.records, w.pretrain().len());
    assert!(total <= cfg.pretrain_tokens);
    // Filling stops at the first record that does not fit, and no record is that long.
    assert!(
        cfg.pretrain_tokens - total < 150,
        "budget {} filled to {total}",
        cfg.pretrain_tokens
    );
    let mix_records: usize = m.pretrain_mix.values().map(|v| v.records).sum();
    let mix_tokens: u64 = m.pretrain_mix.values().map(|v| v.sequence_tokens).sum();
    assert_eq!((mix_records, mix_tokens), (st.records, total));
    // Pairs: the counts add up, with the prompt/response split.
    for task in Task::ALL {
        let st = &m.files[task.align_file()];
        let mut p_tok = 0;
        for r in w.align(task) {
            p_tok += tokenizer::count(tk, pair(r).0).unwrap() as u64;
        }
        assert_eq!(st.prompt_tokens, Some(p_tok));
        assert_eq!(
            st.sequence_tokens,
            st.text_tokens + 2 * st.records as u64,
            "{}",
            task.align_file()
        );
    }
    // Every text round-trips, and the fast counter agrees with the tokenizer everywhere.
    w.check_tokenizer(1).unwrap();
}

#[test]
fn positive_fraction_sets_the_pretraining_mix() {
    let share = |f: f64| {
        let cfg = WorldConfig {
            positive_fraction: f,
            pretrain_tokens: 60_000,
            ..small(6)
        };
        let w = World::generate(&cfg).unwrap();
        let mix = &w.manifest().pretrain_mix;
        let r = |k: &str| mix[k].records as f64;
        (
            r("reviews_positive") / (r("reviews_positive") + r("reviews_negative")),
            r("dialogue_harmful_safe")
                / (r("dialogue_harmful_safe") + r("dialogue_harmful_unsafe")),
        )
    };
    assert_eq!(share(0.0), (0.0, 0.0));
    assert_eq!(share(1.0), (1.0, 1.0));
    let (rev, dia) = share(0.2);
    assert!(
        (rev - 0.2).abs() < 0.06 && (dia - 0.2).abs() < 0.08,
        "{rev} {dia}"
    );
}

#[test]
fn write_and_load_round_trip_and_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::generate(&small(7)).unwrap();
    w.write(dir.path()).unwrap();
    let l = World::load(dir.path()).unwrap();
    assert_eq!(l.manifest(), w.manifest());
    assert_eq!(l.pretrain(), w.pretrain());
    for task in Task::ALL {
        assert_eq!(l.task(task), w.task(task));
    }
    assert_eq!(
        tokenizer::to_json(l.tokenizer()).unwrap(),
        tokenizer::to_json(w.tokenizer()).unwrap()
    );

    let f = dir.path().join("reviews_negative.jsonl");
    let body = std::fs::read_to_string(&f).unwrap();
    let first = body.lines().next().unwrap();
    std::fs::write(&f, format!("{first}\n")).unwrap();
    let e = format!("{:#}", World::load(dir.path()).err().unwrap());
    assert!(
        e.contains("reviews_negative.jsonl") && e.contains("world.json says"),
        "{e}"
    );

    std::fs::write(&f, "{\"text\": \"x\"}\n").unwrap();
    let e = format!("{:#}", World::load(dir.path()).err().unwrap());
    assert!(e.contains("record 1") && e.contains("prompt"), "{e}");

    let e = format!("{:#}", World::load(&dir.path().join("nope")).err().unwrap());
    assert!(
        e.contains("world.json") && e.contains("elastica world"),
        "{e}"
    );
}

#[test]
fn bad_configurations_are_refused_with_the_flag_named() {
    let d = WorldConfig::default();
    let cases: Vec<(WorldConfig, &str)> = vec![
        (
            WorldConfig {
                positive_fraction: 1.5,
                ..d.clone()
            },
            "--positive-fraction",
        ),
        (
            WorldConfig {
                positive_fraction: -0.1,
                ..d.clone()
            },
            "--positive-fraction",
        ),
        (
            WorldConfig {
                positive_fraction: f64::NAN,
                ..d.clone()
            },
            "--positive-fraction",
        ),
        (
            WorldConfig {
                reviews_fraction: 2.0,
                ..d.clone()
            },
            "--reviews-fraction",
        ),
        (
            WorldConfig {
                harmful_fraction: -1.0,
                ..d.clone()
            },
            "--harmful-fraction",
        ),
        (
            WorldConfig {
                n_align: 0,
                ..d.clone()
            },
            "--n-align",
        ),
        (
            WorldConfig {
                n_perturb: 0,
                ..d.clone()
            },
            "--n-perturb",
        ),
        (
            WorldConfig {
                n_eval: 0,
                ..d.clone()
            },
            "--n-eval",
        ),
        (
            WorldConfig {
                pretrain_tokens: 0,
                ..d.clone()
            },
            "--pretrain-tokens",
        ),
        (
            WorldConfig {
                vocab_size: 50,
                ..d.clone()
            },
            "--vocab-size",
        ),
        (
            WorldConfig {
                tokenizer_records: 0,
                ..d.clone()
            },
            "--tokenizer-records",
        ),
    ];
    for (cfg, flag) in cases {
        let e = format!("{:#}", World::generate(&cfg).err().unwrap());
        assert!(e.contains(flag), "{flag}: {e}");
    }
    let tiny = WorldConfig {
        pretrain_tokens: 5,
        ..small(8)
    };
    let e = format!("{:#}", World::generate(&tiny).err().unwrap());
    assert!(e.contains("smaller than a single"), "{e}");
}
