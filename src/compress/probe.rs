//! The numerics probe: a short hash of the quantised distributions the predictor gives a
//! fixed token sequence, recorded in the header (format version 2).
//!
//! Decoding needs bit-identical probabilities (see [`super::predictor`]). The model
//! fingerprint proves the weights, tokenizer and config are the same; it cannot prove the
//! *arithmetic* is: another kernel setting (`ELASTICA_KERNELS`), BLAS library
//! (`ELASTICA_BLAS`), CPU or elastica build may round differently. Without the probe such a
//! file fails somewhere inside the stream with an error that looks like damage. With it, the
//! decoder compares before decoding anything and says what differs and what to do.
//!
//! The probe hashes what the coder uses (the quantised [`TokenDist`] models, not the raw
//! floats), so a rounding difference that quantises away does not refuse a decodable file.

use super::predictor::TokenPredictor;
use super::symbols::TokenDist;
use anyhow::{Context, Result};
use constriction::stream::model::EncoderModel;
use sha2::{Digest, Sha256};

/// Token steps of the probe (fewer when the model's context is shorter): enough positions
/// that attention over several keys and the KV cache are exercised.
pub const PROBE_STEPS: usize = 8;

/// The probe of `pred`: the first 4 bytes of SHA-256 over the quantised distribution of
/// each step of a fixed sequence (from a fresh `start`). Never all zero (zero means "no
/// probe" in the header).
pub fn numerics_probe(pred: &mut dyn TokenPredictor) -> Result<[u8; 4]> {
    let vocab = pred.vocab_size();
    let steps = PROBE_STEPS.min(pred.max_context());
    pred.start()
        .context("the model failed to start the numerics probe")?;
    let mut h = Sha256::new();
    let mut prev = None;
    for i in 0..steps {
        let lp = pred
            .next_log_probs(prev)
            .context("the model failed during the numerics probe")?;
        let dist = TokenDist::new(lp, vocab)?;
        for s in 0..=vocab {
            // Every symbol has a nonzero probability (see `symbols`); a missing one hashes
            // as zeros, which still differs between two different models.
            let (left, p) = dist
                .model
                .left_cumulative_and_probability(s)
                .map_or((0, 0), |(l, p)| (l, p.get()));
            h.update(left.to_le_bytes());
            h.update(p.to_le_bytes());
        }
        // A fixed, spread-out token sequence (never the escape).
        prev = Some(((i as u64 * 7919 + 13) % vocab as u64) as u32);
    }
    let d = h.finalize();
    let mut out = [d[0], d[1], d[2], d[3]];
    if out == [0; 4] {
        out[0] = 1;
    }
    Ok(out)
}

/// The settings that change a model's arithmetic on this machine, for error messages.
pub fn numerics_settings() -> String {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
    format!(
        "ELASTICA_KERNELS={}, ELASTICA_BLAS={}, elastica {}",
        var("ELASTICA_KERNELS"),
        var("ELASTICA_BLAS"),
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::testing::NgramPredictor;

    #[test]
    fn the_probe_is_deterministic_and_tells_models_apart() {
        let a = numerics_probe(&mut NgramPredictor::new(300, 64).unwrap()).unwrap();
        let b = numerics_probe(&mut NgramPredictor::new(300, 64).unwrap()).unwrap();
        let c = numerics_probe(&mut NgramPredictor::new(301, 64).unwrap()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, [0; 4]);
        // A context shorter than the probe still works.
        numerics_probe(&mut NgramPredictor::new(300, 2).unwrap()).unwrap();
    }
}
