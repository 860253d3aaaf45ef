//! The alphabet of the code stream and the entropy model of each kind of symbol.
//!
//! At every token step the coder uses one categorical distribution over `vocab_size + 1`
//! symbols: the model's tokens, scaled by `1 - 2^-ESCAPE_BITS`, plus an **escape** symbol of
//! mass `2^-ESCAPE_BITS`. After an escape comes a control symbol (raw run, piece break or end),
//! coded uniformly; a raw run carries an Elias-gamma length and uniform 256-way bytes.
//!
//! Quantisation to fixed point is deterministic: `exp` is [`exp_det`] (plain IEEE-754
//! arithmetic, the same bits on every platform, unlike the system libm), sums run left to
//! right in f64, and constriction's
//! `from_floating_point_probabilities_fast` gives every symbol a nonzero probability, so any
//! token can be coded even where the model says `-inf`.

use anyhow::{bail, Result};
use constriction::stream::model::{ContiguousCategoricalEntropyModel, UniformModel};

/// Fixed-point precision of the token distributions (probabilities are multiples of
/// `2^-26`). With constriction's 32/64-bit range coder the coder's own rounding loss grows
/// with the precision (about `2^(P-33)/ln2` bits per symbol) while the leak that keeps every
/// token codeable shrinks (`V·2^-P/ln2` bits per token for a vocabulary of V); 26 balances
/// the two for V between 32k and 152k (about 0.001 to 0.004 bits per token in all).
pub const PRECISION: usize = 26;

/// Precision of the uniform side models (raw bytes, bits, control symbols).
pub const SIDE_PRECISION: usize = 24;

/// The escape symbol costs this many bits (its probability is `2^-ESCAPE_BITS`); every token
/// pays `-log2(1 - 2^-ESCAPE_BITS)` ≈ 1.4e-6 bits for its existence.
pub const ESCAPE_BITS: u32 = 20;

/// Token distribution at one step, quantised for the range coder.
pub type TokenModel = ContiguousCategoricalEntropyModel<u32, Vec<u32>, PRECISION>;

/// Uniform model used for raw bytes, single bits and control symbols.
pub type SideModel = UniformModel<u32, SIDE_PRECISION>;

/// What follows an escape symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// A run of raw bytes: Elias-gamma length, then the bytes.
    Raw = 0,
    /// The current text piece ends; the next tokens start a new piece (the tokenizer decodes
    /// each piece on its own).
    Break = 1,
    /// End of the stream.
    End = 2,
}

impl Control {
    pub const COUNT: usize = 3;

    pub fn from_index(i: usize) -> Option<Control> {
        match i {
            0 => Some(Control::Raw),
            1 => Some(Control::Break),
            2 => Some(Control::End),
            _ => None,
        }
    }
}

/// The quantised distribution of one token step, with what the reports need.
pub struct TokenDist {
    pub model: TokenModel,
    /// `max + ln(sum exp(lp - max))` of the model's log-probs: the ideal code length of
    /// token `t` is `(log_norm - lp[t]) / ln 2` bits.
    log_norm: f64,
    log_probs: Vec<f32>,
}

impl TokenDist {
    /// Quantise the predictor's log-probabilities (length `vocab_size`) into a model over
    /// `vocab_size + 1` symbols, the last being the escape.
    pub fn new(log_probs: Vec<f32>, vocab_size: usize) -> Result<TokenDist> {
        if log_probs.len() != vocab_size {
            bail!(
                "the predictor returned {} log-probabilities but its vocab_size is {vocab_size}",
                log_probs.len()
            );
        }
        let (max, mut weights, sum) = softmax_parts(&log_probs)?;
        let token_mass = (1.0 - escape_probability()) / sum;
        for w in weights.iter_mut() {
            *w *= token_mass;
        }
        weights.push(escape_probability());
        let model = TokenModel::from_floating_point_probabilities_fast::<f64>(&weights, None)
            .map_err(|()| {
                anyhow::anyhow!(
                    "cannot quantise a distribution over {} symbols",
                    weights.len()
                )
            })?;
        Ok(TokenDist {
            model,
            log_norm: max + sum.ln(),
            log_probs,
        })
    }

    /// Index of the escape symbol.
    pub fn escape(&self) -> usize {
        self.log_probs.len()
    }

    /// Ideal code length of `token` in bits under the model's own (unquantised, unescaped)
    /// probability. A token the model gives zero probability is charged the code length of
    /// its quantised leak probability instead of infinity.
    pub fn token_bits(&self, token: usize) -> f64 {
        let lp = self.log_probs[token] as f64;
        if lp == f64::NEG_INFINITY {
            return (PRECISION as f64) + 1.0;
        }
        (self.log_norm - lp) / std::f64::consts::LN_2
    }
}

/// `(max, w, sum(w))` with `w = exp(lp - max)` of a vector of log-probabilities, checking
/// that it is a distribution (no NaN or `+inf`, some mass). `max + ln(sum)` is the log
/// normaliser.
fn softmax_parts(log_probs: &[f32]) -> Result<(f64, Vec<f64>, f64)> {
    let mut max = f64::NEG_INFINITY;
    for (i, &lp) in log_probs.iter().enumerate() {
        if lp.is_nan() || lp == f32::INFINITY {
            bail!("the predictor returned a non-finite log-probability ({lp}) for token {i}");
        }
        max = max.max(lp as f64);
    }
    if max == f64::NEG_INFINITY {
        bail!(
            "the predictor returned a distribution with no mass (all log-probabilities are -inf)"
        );
    }
    let weights: Vec<f64> = log_probs
        .iter()
        .map(|&lp| exp_det(lp as f64 - max))
        .collect();
    let sum = weights.iter().sum();
    Ok((max, weights, sum))
}

/// `-log2 p(token)` under the renormalised softmax of `log_probs`, in f64 (what
/// [`TokenDist::token_bits`] charges, without building the quantised model).
pub fn ideal_bits(log_probs: &[f32], token: usize) -> Result<f64> {
    let Some(&lp) = log_probs.get(token) else {
        bail!(
            "token {token} is outside the distribution of {} entries",
            log_probs.len()
        );
    };
    let (max, _, sum) = softmax_parts(log_probs)?;
    if lp == f32::NEG_INFINITY {
        bail!("the model gives token {token} zero probability: its code length is infinite");
    }
    Ok((max + sum.ln() - lp as f64) / std::f64::consts::LN_2)
}

/// `e^x` from IEEE-754 additions and multiplications only, so every platform computes the
/// same bits (the system `exp` may differ in the last bit between libm versions, which would
/// change a quantised probability and break decoding on another machine). Relative error
/// below 1e-14; underflows to 0 below -708.
///
/// `x = (64 m + j) ln2/64 + r` with `|r| <= ln2/128`; `e^x = 2^m * 2^(j/64) * e^r`, the 64
/// powers `2^(j/64)` from a table built once by [`exp_taylor`], `e^r` by a degree-5 Taylor
/// polynomial (truncation error < 1e-16 at that range).
pub fn exp_det(x: f64) -> f64 {
    // Cody-Waite split of ln2/64: the high part has trailing zero bits, so k * HI is exact.
    // fdlibm's ln2_hi and ln2_lo, bit for bit.
    const HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000) / 64.0;
    const LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76) / 64.0;
    // Round to nearest by adding and subtracting 1.5 * 2^52 (exact IEEE arithmetic; much
    // faster than `f64::round`, a library call on baseline x86-64).
    const SHIFTER: f64 = 6_755_399_441_055_744.0;
    static TABLE: std::sync::OnceLock<[f64; 64]> = std::sync::OnceLock::new();
    if x.is_nan() {
        return x;
    }
    if x < -708.0 {
        return 0.0;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|j| exp_taylor(j as f64 * std::f64::consts::LN_2 / 64.0))
    });
    let kf = (x * (64.0 * std::f64::consts::LOG2_E) + SHIFTER) - SHIFTER;
    let r = (x - kf * HI) - kf * LO;
    let k = kf as i64;
    let (m, j) = (k >> 6, (k & 63) as usize);
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0)))));
    // 2^m is exact: m is in [-1022, 1023] here, a normal exponent. Split it in two so that
    // results near the bottom of the range do not need 2^-1023.
    let half = m / 2;
    let scale_a = f64::from_bits(((half + 1023) as u64) << 52);
    let scale_b = f64::from_bits(((m - half + 1023) as u64) << 52);
    table[j] * p * scale_a * scale_b
}

/// `e^x` for `|x| <= ln 2` by a degree-17 Taylor series (error below 1e-16), used to build
/// [`exp_det`]'s table.
fn exp_taylor(x: f64) -> f64 {
    let mut p = 1.0;
    for n in (1..=17).rev() {
        p = 1.0 + x * p / n as f64;
    }
    p
}

/// Probability of the escape symbol.
pub fn escape_probability() -> f64 {
    (-(ESCAPE_BITS as f64)).exp2()
}

pub fn byte_model() -> SideModel {
    SideModel::new(256)
}

pub fn bit_model() -> SideModel {
    SideModel::new(2)
}

pub fn control_model() -> SideModel {
    SideModel::new(Control::COUNT)
}

/// Elias-gamma code of `n >= 1`: `b = floor(log2 n)` zeros, a one, then the low `b` bits of
/// `n`, most significant first. Costs `2b + 1` bits.
pub fn elias_gamma_bits(n: u64) -> Vec<bool> {
    debug_assert!(n >= 1);
    let b = 63 - n.leading_zeros();
    let mut bits = vec![false; b as usize];
    bits.push(true);
    for i in (0..b).rev() {
        bits.push((n >> i) & 1 == 1);
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use constriction::stream::model::EncoderModel;

    #[test]
    fn every_symbol_gets_nonzero_probability_even_at_minus_infinity() {
        let mut lp = vec![f32::NEG_INFINITY; 1000];
        lp[3] = 0.0;
        let d = TokenDist::new(lp, 1000).unwrap();
        for s in 0..=1000 {
            assert!(
                d.model.left_cumulative_and_probability(s).is_some(),
                "symbol {s}"
            );
        }
        assert_eq!(d.escape(), 1000);
        assert!(d.token_bits(3) < 1e-9);
        assert!(d.token_bits(4) > 20.0);
    }

    #[test]
    fn quantisation_is_deterministic_and_close_to_the_floats() {
        let lp: Vec<f32> = (0..5000).map(|i| -((i % 97) as f32) * 0.13 - 3.0).collect();
        let a = TokenDist::new(lp.clone(), 5000).unwrap();
        let b = TokenDist::new(lp.clone(), 5000).unwrap();
        let norm = a.log_norm;
        // Tokens with mass well above the 2^-26 grid are reproduced to within 1%.
        for t in [0usize, 1, 10, 20, 97, 4947] {
            let pa = a.model.left_cumulative_and_probability(t).unwrap();
            let pb = b.model.left_cumulative_and_probability(t).unwrap();
            assert_eq!(pa.0, pb.0);
            assert_eq!(pa.1.get(), pb.1.get());
            let q = pa.1.get() as f64 / (1u64 << PRECISION) as f64;
            let p = ((lp[t] as f64) - norm).exp();
            assert!(
                (q / p - 1.0).abs() < 0.01,
                "token {t}: quantised {q} vs {p}"
            );
        }
    }

    #[test]
    fn bad_predictor_outputs_are_errors() {
        assert!(TokenDist::new(vec![0.0; 3], 4).is_err());
        assert!(TokenDist::new(vec![0.0, f32::NAN], 2).is_err());
        assert!(TokenDist::new(vec![f32::NEG_INFINITY; 2], 2).is_err());
        assert!(TokenDist::new(vec![0.0, f32::INFINITY], 2).is_err());
    }

    #[test]
    fn exp_det_matches_the_system_exp() {
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            let x = -(i as f64) * 0.003_517; // 0 down to about -703
            let (a, b) = (exp_det(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 1e-14, "relative error {worst}");
        for x in [1.0, 0.5, 10.0, 700.0] {
            assert!(((exp_det(x) - x.exp()) / x.exp()).abs() < 1e-14, "{x}");
        }
        assert_eq!(exp_det(-800.0), 0.0);
        assert_eq!(exp_det(0.0), 1.0);
        assert!(exp_det(-707.9) > 0.0);
    }

    #[test]
    fn elias_gamma_lengths() {
        assert_eq!(elias_gamma_bits(1), vec![true]);
        assert_eq!(elias_gamma_bits(2), vec![false, true, false]);
        assert_eq!(elias_gamma_bits(5), vec![false, false, true, false, true]);
        assert_eq!(elias_gamma_bits(u64::MAX).len(), 127);
        assert!(byte_model()
            .left_cumulative_and_probability(255usize)
            .is_some());
    }
}
