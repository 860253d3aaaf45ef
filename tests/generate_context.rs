//! Generation never runs past the model's context (issue 23 item 4): rows stop when prompt +
//! response fill `max_position_embeddings`, with a warning, and a prompt that alone fills it
//! is refused up front, in the library (the experiments' path) and in `elastica generate`.

use elastica::model::generate::{generate, GenConfig};
use std::process::Command;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/models/tiny-llama"
);

#[test]
fn rows_stop_at_the_context_and_long_prompts_are_refused() {
    let lm = elastica::model::load_model(MODEL, &candle_core::Device::Cpu).unwrap();
    let context = lm.model.cfg.max_position_embeddings;
    assert_eq!(context, 128, "the fixture's context");
    // No EOS id, so only max_new_tokens or the context can stop a row; two prompt lengths in
    // one left-padded batch.
    let prompts = vec![
        vec![5u32, 6, 7, 8, 9],
        (0..100).map(|i| 10 + i % 50).collect(),
    ];
    let cfg = |max_new_tokens| GenConfig {
        max_new_tokens,
        temperature: 1.0,
        seed: 3,
        ..GenConfig::default()
    };
    let outs = generate(&lm.model, &prompts, &[], 0, &cfg(400), |_| {}).unwrap();
    assert_eq!(outs[0].len(), context - 5);
    assert_eq!(outs[1].len(), context - 100);
    let outs = generate(&lm.model, &prompts, &[], 0, &cfg(20), |_| {}).unwrap();
    assert_eq!(
        (outs[0].len(), outs[1].len()),
        (20, 20),
        "within the context: unchanged"
    );

    let full: Vec<u32> = (0..context as u32).map(|i| 10 + i % 50).collect();
    let e = format!(
        "{:#}",
        generate(&lm.model, &[vec![5], full], &[], 0, &cfg(4), |_| {}).unwrap_err()
    );
    assert!(
        e.contains("prompt 2 is 128 tokens") && e.contains("max_position_embeddings"),
        "{e}"
    );
}

/// `elastica generate` on the fixture with the raw template: PROMPT, up to MAX_NEW tokens.
fn generate_cli(prompt: &str, max_new: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_elastica"))
        .args(["generate", "--model", MODEL, "--template", "raw"])
        .args(["--prompt", prompt, "--max-new-tokens", max_new])
        .output()
        .unwrap()
}

#[test]
fn the_cli_stops_at_the_context_with_a_warning() {
    // Greedy decoding of this fixture never emits EOS, so 400 tokens would run past 128.
    let out = generate_cli("the movie was", "400");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 of 1 generation(s) stopped at the model's context")
            && err.contains("max_position_embeddings = 128"),
        "{err}"
    );
}

#[test]
fn the_cli_refuses_a_prompt_longer_than_the_context() {
    let out = generate_cli(
        &"the quick brown fox jumps over the lazy dog ".repeat(40),
        "4",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("max_position_embeddings") && err.contains("shorten the prompt"),
        "{err}"
    );
}
