//! Small-sample statistics for experiment reports: mean, sample standard deviation, the 95%
//! confidence interval of a mean from the Student t distribution, the exact two-sided sign
//! test, an ordinary least-squares line with the slope's standard error, and linear
//! interpolation of the first crossing of a level, the one-sample (paired) t test, the exact
//! sign-flip permutation test, three-outcome verdicts (held / reversed / undecided) on a
//! directional effect, and the power of such a test (units needed for 80% power, the
//! smallest effect detectable at the units run).
//!
//! Experiments here run a handful of seeds, so the t quantile is computed exactly (by
//! inverting the t CDF, written with the regularised incomplete beta function) rather than
//! taken from the normal approximation, which is badly off for n < 30.
//!
//! Convention: a quantity that needs more data than it was given is `None` (serialised as
//! JSON `null`), never NaN: the mean of nothing, the standard deviation of one value, the
//! confidence interval of one value, the slope's standard error from two points.

use anyhow::{bail, Result};
use serde::Serialize;

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    Some(xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation (divisor n - 1); `None` when fewer than two values.
pub fn sample_std(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    Some((ss / (xs.len() - 1) as f64).sqrt())
}

/// Mean of a sample with its spread and the half-width of its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct MeanCi {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation; `None` when n = 1.
    pub std: Option<f64>,
    /// Half-width `t_{(1+level)/2, n-1} * std / sqrt(n)`; `None` when n = 1 (no interval
    /// can be estimated from one value).
    pub half_width: Option<f64>,
    /// Confidence level of `half_width`, e.g. 0.95.
    pub level: f64,
}

impl MeanCi {
    /// Lower and upper ends of the interval, if there is one.
    pub fn bounds(&self) -> Option<(f64, f64)> {
        self.half_width.map(|h| (self.mean - h, self.mean + h))
    }
}

/// Mean with a 95% Student-t confidence interval; `None` for an empty slice.
pub fn mean_ci95(xs: &[f64]) -> Option<MeanCi> {
    mean_ci(xs, 0.95)
}

/// Mean with a two-sided Student-t confidence interval at `level` (in (0, 1)).
pub fn mean_ci(xs: &[f64], level: f64) -> Option<MeanCi> {
    let m = mean(xs)?;
    let n = xs.len();
    let std = sample_std(xs);
    let half_width = match std {
        Some(s) if level > 0.0 && level < 1.0 => {
            let t = student_t_quantile(0.5 + level / 2.0, (n - 1) as f64);
            Some(t * s / (n as f64).sqrt())
        }
        _ => None,
    };
    Some(MeanCi {
        n,
        mean: m,
        std,
        half_width,
        level,
    })
}

/// 95% confidence interval of the ratio of sums `R = Σ nums / Σ dens` (a pooled rate such as
/// bits per token over records), by the linearised (delta-method) variance of a ratio
/// estimator with the records as the sampling unit: `Var R ≈ n/(n-1) Σ (num_i - R den_i)² /
/// (Σ dens)²`, and a Student t with n - 1 degrees of freedom. With equal denominators it is
/// the mean's interval. `None` with fewer than two records or a zero denominator sum.
pub fn ratio_ci95(nums: &[f64], dens: &[f64]) -> Option<(f64, f64)> {
    let n = nums.len();
    let total: f64 = dens.iter().sum();
    if n < 2 || n != dens.len() || total == 0.0 {
        return None;
    }
    let r = nums.iter().sum::<f64>() / total;
    let sq: f64 = nums
        .iter()
        .zip(dens)
        .map(|(y, x)| (y - r * x).powi(2))
        .sum();
    let se = (n as f64 / (n - 1) as f64 * sq).sqrt() / total.abs();
    let h = student_t_quantile(0.975, (n - 1) as f64) * se;
    Some((r - h, r + h))
}

/// Natural log of the gamma function (Lanczos, g = 7, 9 terms; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised incomplete beta function I_x(a, b), by the continued fraction (modified
/// Lentz), using the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) where it converges faster.
pub fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// Where the continued fraction's partial terms are clamped away from zero (modified Lentz).
const TINY: f64 = 1e-300;

/// `x`, or [`TINY`] where `x` is closer to zero, so the next division stays finite.
fn away_from_zero(x: f64) -> f64 {
    if x.abs() < TINY {
        TINY
    } else {
        x
    }
}

/// One term `aa` of the modified Lentz recurrence: updates `c` and `d` and returns the
/// factor the fraction's value is multiplied by.
fn lentz_step(aa: f64, c: &mut f64, d: &mut f64) -> f64 {
    *d = 1.0 / away_from_zero(1.0 + aa * *d);
    *c = away_from_zero(1.0 + aa / *c);
    *d * *c
}

fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / away_from_zero(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= lentz_step(m * (b - m) * x / ((qam + m2) * (a + m2)), &mut c, &mut d);
        let del = lentz_step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            &mut c,
            &mut d,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// CDF of the Student t distribution with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * inc_beta(df / (df + t * t), df / 2.0, 0.5);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// Quantile of the Student t distribution: the t with `P(T <= t) = p`. Closed forms for
/// df = 1 and 2; otherwise the CDF is inverted by bisection to machine precision.
/// Returns NaN when p is outside (0, 1) or df is not positive.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    // Written so that NaN inputs also fail the check.
    let valid = p > 0.0 && p < 1.0 && df > 0.0;
    if !valid {
        return f64::NAN;
    }
    if df == 1.0 {
        return (std::f64::consts::PI * (p - 0.5)).tan();
    }
    if df == 2.0 {
        let a = 4.0 * p * (1.0 - p);
        return 2.0 * (p - 0.5) * (2.0 / a).sqrt();
    }
    if p < 0.5 {
        return -student_t_quantile(1.0 - p, df);
    }
    let mut hi = 1.0;
    while student_t_cdf(hi, df) < p && hi < 1e300 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Outcome of an exact two-sided sign test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SignTest {
    pub positive: usize,
    pub negative: usize,
    /// Zero differences, dropped before testing (the usual convention).
    pub ties: usize,
    /// Two-sided p-value `min(1, 2 P(X <= min(pos, neg)))`, X ~ Binomial(pos + neg, 1/2);
    /// 1.0 when every difference is a tie.
    pub p_value: f64,
}

/// Exact two-sided sign test of the differences `diffs` against a median of zero.
/// Non-finite differences are an error (they would silently count as neither sign).
pub fn sign_test(diffs: &[f64]) -> Result<SignTest> {
    let (mut positive, mut negative, mut ties) = (0usize, 0usize, 0usize);
    for (i, d) in diffs.iter().enumerate() {
        if !d.is_finite() {
            bail!("sign test: difference #{i} is {d}; every difference must be a finite number");
        }
        if *d > 0.0 {
            positive += 1;
        } else if *d < 0.0 {
            negative += 1;
        } else {
            ties += 1;
        }
    }
    let n = positive + negative;
    let m = positive.min(negative);
    // Sum the binomial pmf in log space so large n does not underflow 0.5^n.
    let ln2 = std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut terms = Vec::with_capacity(m + 1);
    for k in 0..=m {
        if k > 0 {
            ln_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
        }
        terms.push(ln_choose - n as f64 * ln2);
    }
    let top = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tail = top.exp() * terms.iter().map(|t| (t - top).exp()).sum::<f64>();
    let p_value = if n == 0 { 1.0 } else { (2.0 * tail).min(1.0) };
    Ok(SignTest {
        positive,
        negative,
        ties,
        p_value,
    })
}

/// Least-squares line `y = intercept + slope * x`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LinearFit {
    pub n: usize,
    pub slope: f64,
    pub intercept: f64,
    /// Standard error of the slope, `sqrt(SSR / (n - 2) / Sxx)`; `None` when n = 2.
    pub slope_se: Option<f64>,
    /// 95% confidence interval of the slope with the t quantile on n - 2 degrees of freedom;
    /// `None` when n = 2.
    pub slope_ci95: Option<(f64, f64)>,
    /// Coefficient of determination (1 when the points are exactly on a line).
    pub r2: f64,
}

/// Ordinary least-squares fit of `ys` on `xs`. Errors: different lengths, fewer than two
/// points, non-finite values, or all `xs` equal (the slope is undefined).
pub fn linear_fit(xs: &[f64], ys: &[f64]) -> Result<LinearFit> {
    if xs.len() != ys.len() {
        bail!(
            "linear fit: {} x values but {} y values; they must pair up",
            xs.len(),
            ys.len()
        );
    }
    let n = xs.len();
    if n < 2 {
        bail!("linear fit: needs at least 2 points, got {n}");
    }
    if let Some(i) = (0..n).find(|&i| !xs[i].is_finite() || !ys[i].is_finite()) {
        bail!(
            "linear fit: point #{i} is ({}, {}); all points must be finite",
            xs[i],
            ys[i]
        );
    }
    let mx = xs.iter().sum::<f64>() / n as f64;
    let my = ys.iter().sum::<f64>() / n as f64;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let syy: f64 = ys.iter().map(|y| (y - my) * (y - my)).sum();
    if sxx <= 0.0 {
        bail!("linear fit: all x values are equal ({mx}), so the slope is undefined");
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ssr: f64 = xs
        .iter()
        .zip(ys)
        .map(|(x, y)| {
            let r = y - intercept - slope * x;
            r * r
        })
        .sum();
    let r2 = if syy > 0.0 { 1.0 - ssr / syy } else { 1.0 };
    let (slope_se, slope_ci95) = if n > 2 {
        let se = (ssr / (n - 2) as f64 / sxx).sqrt();
        let t = student_t_quantile(0.975, (n - 2) as f64);
        (Some(se), Some((slope - t * se, slope + t * se)))
    } else {
        (None, None)
    };
    Ok(LinearFit {
        n,
        slope,
        intercept,
        slope_se,
        slope_ci95,
        r2,
    })
}

/// The x at which the piecewise-linear curve through `(xs[i], ys[i])` first reaches `level`
/// (touching counts), scanning in the given order; `None` if it never does, if the
/// lengths differ, or if the curve is empty. Segments with a non-finite end are skipped.
pub fn first_crossing(xs: &[f64], ys: &[f64], level: f64) -> Option<f64> {
    if xs.len() != ys.len() || xs.is_empty() {
        return None;
    }
    if ys[0] == level && xs[0].is_finite() {
        return Some(xs[0]);
    }
    for i in 1..xs.len() {
        let (x0, y0, x1, y1) = (xs[i - 1], ys[i - 1], xs[i], ys[i]);
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            continue;
        }
        let (a, b) = (y0 - level, y1 - level);
        if b == 0.0 {
            return Some(x1);
        }
        if a * b < 0.0 {
            return Some(x0 + (x1 - x0) * a / (a - b));
        }
    }
    None
}

/// A one-sample Student t test of the mean against zero, with the mean's confidence
/// interval; applied to per-seed differences it is the paired t test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct TTest {
    pub n: usize,
    pub mean: f64,
    /// Two-sided 95% interval of the mean.
    pub ci95: (f64, f64),
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value `2 P(T >= |t|)`.
    pub p_value: f64,
}

/// One-sample t test of `xs` against a mean of zero (two-sided). `None` with fewer than two
/// values or a non-finite one. With zero spread the interval is the point itself and the
/// p-value is 0 (a non-zero mean) or 1 (all zero).
pub fn t_test(xs: &[f64]) -> Option<TTest> {
    if xs.len() < 2 || xs.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let n = xs.len();
    let m = mean(xs)?;
    let s = sample_std(xs)?;
    let df = (n - 1) as f64;
    let se = s / (n as f64).sqrt();
    let q = student_t_quantile(0.975, df);
    let (t, p_value) = if se > 0.0 {
        let t = m / se;
        (
            t,
            (2.0 * (1.0 - student_t_cdf(t.abs(), df))).clamp(0.0, 1.0),
        )
    } else if m == 0.0 {
        (0.0, 1.0)
    } else {
        (f64::INFINITY.copysign(m), 0.0)
    };
    Some(TTest {
        n,
        mean: m,
        ci95: (m - q * se, m + q * se),
        t,
        df,
        p_value,
    })
}

/// Largest sample the exact sign-flip test enumerates (2^n sign patterns).
pub const MAX_SIGN_FLIP_N: usize = 20;

/// Exact two-sided sign-flip permutation test of `xs` against a mean of zero: the share of
/// the 2^n sign patterns whose |sum| is at least the observed |sum|. Valid when each value
/// is symmetric about zero under the null, e.g. a per-seed difference whose two arms could
/// be swapped. Errors: an empty sample, more than [`MAX_SIGN_FLIP_N`] values, or a
/// non-finite value.
pub fn sign_flip_test(xs: &[f64]) -> Result<f64> {
    let n = xs.len();
    if n == 0 || n > MAX_SIGN_FLIP_N {
        bail!("sign-flip test: needs 1 to {MAX_SIGN_FLIP_N} values, got {n}");
    }
    if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
        bail!(
            "sign-flip test: value #{i} is {}; every value must be finite",
            xs[i]
        );
    }
    let observed = xs.iter().sum::<f64>().abs();
    // Sums that differ only by rounding count as equal.
    let tol = 1e-12 * xs.iter().map(|x| x.abs()).sum::<f64>();
    let mut extreme = 0u64;
    for mask in 0u64..(1u64 << n) {
        let s: f64 = xs
            .iter()
            .enumerate()
            .map(|(i, x)| if mask >> i & 1 == 1 { -x } else { *x })
            .sum();
        if s.abs() >= observed - tol {
            extreme += 1;
        }
    }
    Ok(extreme as f64 / (1u64 << n) as f64)
}

/// The three outcomes of a directional claim judged by a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The interval excludes zero on the predicted side.
    Held,
    /// The interval excludes zero on the other side.
    Reversed,
    /// The interval includes zero (or there is no interval): the data cannot tell.
    Undecided,
}

impl Verdict {
    /// The verdict on an effect predicted to be positive (`predicted_positive`) or negative,
    /// given its interval.
    pub fn of_interval(ci: Option<(f64, f64)>, predicted_positive: bool) -> Verdict {
        let Some((lo, hi)) = ci else {
            return Verdict::Undecided;
        };
        let (above, below) = (lo > 0.0, hi < 0.0);
        match (above, below, predicted_positive) {
            (true, _, true) | (_, true, false) => Verdict::Held,
            (true, _, false) | (_, true, true) => Verdict::Reversed,
            _ => Verdict::Undecided,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Verdict::Held => "held",
            Verdict::Reversed => "reversed",
            Verdict::Undecided => "undecided",
        }
    }
}

/// A directional effect estimated from independent per-unit values (per seed): its size,
/// 95% interval, p-value and verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Effect {
    pub n: usize,
    pub estimate: f64,
    pub ci95: Option<(f64, f64)>,
    /// Two-sided t-test p-value; `None` with fewer than two units.
    pub p_value: Option<f64>,
    /// Exact sign-flip permutation p-value over the units (when n <= [`MAX_SIGN_FLIP_N`]).
    pub p_permutation: Option<f64>,
    pub verdict: Verdict,
    /// What the units' spread lets the test detect; `None` with fewer than two units.
    pub power: Option<Power>,
}

impl Effect {
    /// The effect whose per-unit values are `xs` (for a paired design, the per-seed
    /// differences), predicted positive or negative. `None` for an empty sample.
    pub fn of(xs: &[f64], predicted_positive: bool) -> Option<Effect> {
        let estimate = mean(xs)?;
        let t = t_test(xs);
        let ci95 = t.map(|t| t.ci95);
        Some(Effect {
            n: xs.len(),
            estimate,
            ci95,
            p_value: t.map(|t| t.p_value),
            p_permutation: sign_flip_test(xs).ok(),
            verdict: Verdict::of_interval(ci95, predicted_positive),
            power: power80(xs),
        })
    }

    /// For an undecided effect, why: `; across-seed SD 0.099: 80% power at this effect
    /// needs 11 seeds; at 5 seeds the smallest detectable effect is 0.125` (`unit` names the
    /// units, e.g. "seed"). Empty for a decided effect or without a spread.
    pub fn power_phrase(&self, unit: &str, digits: usize) -> String {
        let Some(pw) = self.power.filter(|_| self.verdict == Verdict::Undecided) else {
            return String::new();
        };
        let needed = match pw.units_needed {
            Some(n) => format!("80% power at this effect needs {n} {unit}s"),
            None => format!("80% power at this effect needs more than {MAX_POWER_UNITS} {unit}s"),
        };
        format!(
            "; across-{unit} SD {:.digits$}: {needed}; at {} {unit}s the smallest detectable effect is {:.digits$}",
            pw.sd, self.n, pw.min_detectable
        )
    }

    /// `+0.123 [0.050, 0.196], p = 0.004 (n = 5)`, with `digits` decimals.
    pub fn describe(&self, digits: usize) -> String {
        let ci = self
            .ci95
            .map(|(lo, hi)| format!(" [{lo:.digits$}, {hi:.digits$}]"))
            .unwrap_or_else(|| " [no interval]".into());
        let p = self
            .p_value
            .map(|p| format!(", {}", p_phrase(p)))
            .unwrap_or_default();
        format!("{:+.digits$}{ci}{p} (n = {})", self.estimate, self.n)
    }
}

/// Most units [`power80`] searches for.
pub const MAX_POWER_UNITS: usize = 10_000;

/// The power of the two-sided 5% one-sample (paired) t test, from the per-unit values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Power {
    /// Across-unit standard deviation of the values.
    pub sd: f64,
    /// The smallest |mean| the test finds with 80% power at the units run.
    pub min_detectable: f64,
    /// Units needed for 80% power if the true mean were the observed one; `None` when the
    /// mean is 0 or more than [`MAX_POWER_UNITS`] would be needed.
    pub units_needed: Option<usize>,
}

/// The smallest |mean| that the two-sided 5% t test on `n` units of standard deviation
/// `sd` detects with 80% power: (t(0.975, n-1) + t(0.80, n-1)) sd / sqrt(n), the usual
/// central-t approximation to the noncentral t (it gives G*Power's 34 units at d = 0.5 and
/// 10 at d = 1).
pub fn min_detectable_effect(sd: f64, n: usize) -> Option<f64> {
    if n < 2 || !sd.is_finite() || sd < 0.0 {
        return None;
    }
    let df = (n - 1) as f64;
    Some((student_t_quantile(0.975, df) + student_t_quantile(0.8, df)) * sd / (n as f64).sqrt())
}

/// [`Power`] of `xs`: its SD, the smallest detectable effect at its size, and the units
/// an effect of its mean would need. `None` with fewer than two values or a non-finite one.
pub fn power80(xs: &[f64]) -> Option<Power> {
    if xs.len() < 2 || xs.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let sd = sample_std(xs)?;
    let m = mean(xs)?.abs();
    let units_needed = if m > 0.0 {
        // The detectable effect falls monotonically with n: bisect for the first n <= m.
        let ok = |n: usize| min_detectable_effect(sd, n).is_some_and(|e| e <= m);
        if ok(2) {
            Some(2)
        } else if !ok(MAX_POWER_UNITS) {
            None
        } else {
            let (mut lo, mut hi) = (2, MAX_POWER_UNITS);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if ok(mid) {
                    hi = mid
                } else {
                    lo = mid
                }
            }
            Some(hi)
        }
    } else {
        None
    };
    Some(Power {
        sd,
        min_detectable: min_detectable_effect(sd, xs.len())?,
        units_needed,
    })
}

/// `p = 0.0123` (three significant digits, as tables print it), or `p < 1e-6`.
pub fn p_phrase(p: f64) -> String {
    let s = crate::report::table::fmt_p(p);
    if s.starts_with('<') {
        format!("p {s}")
    } else {
        format!("p = {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_interval_is_the_means_for_equal_denominators_and_widens_with_spread() {
        let ys = [3.0, 5.0, 4.0, 8.0];
        let (lo, hi) = ratio_ci95(&ys, &[2.0; 4]).unwrap();
        let m = mean_ci95(&ys.map(|y| y / 2.0)).unwrap().bounds().unwrap();
        assert!((lo - m.0).abs() < 1e-12 && (hi - m.1).abs() < 1e-12);
        // By hand: R = 20/9, residuals y - R x = (7, -13, -4, 10)/9, t(0.975, 3).
        let (lo, hi) = ratio_ci95(&[3.0, 3.0, 4.0, 10.0], &[1.0, 2.0, 2.0, 4.0]).unwrap();
        let h = 3.182446305284263 * (4.0 / 3.0 * 334.0 / 81.0f64).sqrt() / 9.0;
        assert!((lo - (20.0 / 9.0 - h)).abs() < 1e-9, "{lo}");
        assert!((hi - (20.0 / 9.0 + h)).abs() < 1e-9, "{hi}");
        assert!(ratio_ci95(&[1.0], &[1.0]).is_none());
        assert!(ratio_ci95(&[1.0, 2.0], &[0.0, 0.0]).is_none());
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    #[test]
    fn mean_and_std_by_hand() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(sample_std(&[4.0]), None);
        // Deviations -2, -1, 3 -> SS = 14, /2 = 7.
        assert!(close(
            sample_std(&[1.0, 2.0, 6.0]).unwrap(),
            7f64.sqrt(),
            1e-15
        ));
    }

    #[test]
    fn t_quantiles_match_tables() {
        // Standard two-sided 95% critical values.
        for (df, want) in [
            (1.0, 12.706_204_736_174_7),
            (2.0, 4.302_652_729_749_464),
            (3.0, 3.182_446_305_283_709_6),
            (4.0, 2.776_445_105_197_794_4),
            (9.0, 2.262_157_162_798_205_5),
            (30.0, 2.042_272_456_301_238),
            (1000.0, 1.962_339_080_826_408_5),
        ] {
            let got = student_t_quantile(0.975, df);
            assert!(close(got, want, 1e-10), "df {df}: {got} vs {want}");
            assert!(close(student_t_quantile(0.025, df), -want, 1e-10));
        }
        assert!(close(
            student_t_quantile(0.995, 5.0),
            4.032_142_983_555_228,
            1e-10
        ));
        assert!(student_t_quantile(0.5, 7.0).abs() < 1e-12);
        assert!(student_t_quantile(1.0, 3.0).is_nan());
        assert!(student_t_quantile(0.9, 0.0).is_nan());
    }

    #[test]
    fn mean_ci_by_hand() {
        // 1..5: mean 3, std sqrt(2.5), se sqrt(0.5), t(0.975, 4) = 2.776445105.
        let ci = mean_ci95(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!(ci.mean, 3.0);
        assert!(close(
            ci.half_width.unwrap(),
            2.776_445_105_197_794_4 * 0.5f64.sqrt(),
            1e-10
        ));
        let one = mean_ci95(&[0.7]).unwrap();
        assert_eq!(
            (one.n, one.mean, one.std, one.half_width),
            (1, 0.7, None, None)
        );
        assert!(one.bounds().is_none());
        assert!(mean_ci95(&[]).is_none());
    }

    #[test]
    fn sign_test_exact_by_hand() {
        // 8 positive, 2 negative, 1 tie: 2 * (C(10,0)+C(10,1)+C(10,2)) / 2^10 = 112/1024.
        let mut d = vec![1.0; 8];
        d.extend([-0.5, -2.0, 0.0]);
        let s = sign_test(&d).unwrap();
        assert_eq!((s.positive, s.negative, s.ties), (8, 2, 1));
        assert!(close(s.p_value, 112.0 / 1024.0, 1e-13));
        // 27 of 27 (the paper's resistance count): 2 / 2^27.
        let s = sign_test(&[0.1; 27]).unwrap();
        assert!(close(s.p_value, 2.0 / 2f64.powi(27), 1e-12));
        assert_eq!(sign_test(&[1.0, -1.0, 2.0, -2.0]).unwrap().p_value, 1.0);
        assert_eq!(sign_test(&[0.0, 0.0]).unwrap().p_value, 1.0);
        // Large n must not underflow.
        let p = sign_test(&vec![1.0; 3000]).unwrap().p_value;
        assert!(p.is_finite() && p >= 0.0);
        assert!(sign_test(&[1.0, f64::NAN]).is_err());
    }

    #[test]
    fn linear_fit_by_hand() {
        // x̄ = 2.5, ȳ = 4.75, Sxx = 5, Sxy = 9.5 -> slope 1.9, intercept 0;
        // residuals 0.1, 0.2, -0.7, 0.4 -> SSR 0.7, se = sqrt(0.35 / 5).
        let f = linear_fit(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 5.0, 8.0]).unwrap();
        assert!(close(f.slope, 1.9, 1e-14));
        assert!(f.intercept.abs() < 1e-12);
        let se = 0.07f64.sqrt();
        assert!(close(f.slope_se.unwrap(), se, 1e-12));
        let (lo, hi) = f.slope_ci95.unwrap();
        assert!(close(hi - 1.9, 4.302_652_729_749_464 * se, 1e-9));
        assert!(close(1.9 - lo, 4.302_652_729_749_464 * se, 1e-9));
        assert!(close(f.r2, 1.0 - 0.7 / 18.75, 1e-12));
        let two = linear_fit(&[0.0, 1.0], &[1.0, 3.0]).unwrap();
        assert_eq!((two.slope, two.slope_se), (2.0, None));
        assert!(linear_fit(&[1.0], &[1.0]).is_err());
        assert!(linear_fit(&[1.0, 1.0], &[1.0, 2.0]).is_err());
        assert!(linear_fit(&[1.0, 2.0], &[1.0]).is_err());
        assert!(linear_fit(&[1.0, f64::INFINITY], &[1.0, 2.0]).is_err());
    }

    #[test]
    fn first_crossing_interpolates() {
        let xs = [0.0, 100.0, 200.0, 500.0];
        let ys = [0.9, 0.7, 0.4, 0.2];
        // Between (100, 0.7) and (200, 0.4): 0.5 is 2/3 of the way.
        assert!(close(
            first_crossing(&xs, &ys, 0.5).unwrap(),
            100.0 + 200.0 / 3.0,
            1e-12
        ));
        assert_eq!(first_crossing(&xs, &ys, 0.9), Some(0.0));
        assert_eq!(first_crossing(&xs, &ys, 0.4), Some(200.0));
        assert_eq!(first_crossing(&xs, &ys, 0.1), None);
        // Rising crossings count too, and only the first one is reported.
        assert_eq!(
            first_crossing(&[0.0, 1.0, 2.0], &[0.0, 2.0, 0.0], 1.0),
            Some(0.5)
        );
        assert_eq!(first_crossing(&[0.0], &[1.0, 2.0], 1.5), None);
    }
    #[test]
    fn t_test_matches_r() {
        // R: t.test(1:5): t = 4.2426, df = 4, p-value = 0.01324, CI 1.036757 4.963243.
        let t = t_test(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!(close(t.t, 18f64.sqrt(), 1e-12));
        assert_eq!(t.df, 4.0);
        assert!((t.p_value - 0.01324).abs() < 5e-6, "{}", t.p_value);
        assert!((t.ci95.0 - 1.036757).abs() < 1e-6 && (t.ci95.1 - 4.963243).abs() < 1e-6);
        // R: t.test(c(-1, 0.5, 2)): t = 0.57735, df = 2, p-value = 0.6220.
        let t = t_test(&[-1.0, 0.5, 2.0]).unwrap();
        assert!((t.p_value - 0.6220).abs() < 5e-5, "{}", t.p_value);
        assert!(t_test(&[1.0]).is_none());
        assert!(t_test(&[1.0, f64::NAN]).is_none());
        let flat = t_test(&[2.0, 2.0, 2.0]).unwrap();
        assert_eq!((flat.p_value, flat.ci95), (0.0, (2.0, 2.0)));
        assert_eq!(t_test(&[0.0, 0.0]).unwrap().p_value, 1.0);
    }

    #[test]
    fn sign_flip_test_by_hand() {
        // Sums of the 8 patterns of (1, 2, 3): 6 4 2 0 0 -2 -4 -6; |sum| >= 6 in 2.
        assert!(close(
            sign_flip_test(&[1.0, 2.0, 3.0]).unwrap(),
            0.25,
            1e-15
        ));
        // (1, 2, -3): observed |sum| 0, every pattern is as extreme.
        assert_eq!(sign_flip_test(&[1.0, 2.0, -3.0]).unwrap(), 1.0);
        // Six positive values: only the two all-same-sign patterns reach the total.
        assert!(close(sign_flip_test(&[1.0; 6]).unwrap(), 2.0 / 64.0, 1e-15));
        // (3, -1, 1, 1): |sum| 4; patterns reaching 4: +3 with the rest summing >= 1 or
        // its mirror -> (3,-1,1,1) (3,1,1,1) (3,1,-1,1) (3,1,1,-1) and mirrors = 8 of 16.
        assert!(close(
            sign_flip_test(&[3.0, -1.0, 1.0, 1.0]).unwrap(),
            0.5,
            1e-15
        ));
        assert!(sign_flip_test(&[]).is_err());
        assert!(sign_flip_test(&[1.0; 21]).is_err());
        assert!(sign_flip_test(&[1.0, f64::INFINITY]).is_err());
    }

    #[test]
    fn power_matches_g_power_tables() {
        // G*Power, one-sample t, two-sided 5%, 80% power: d = 1 needs 10, d = 0.5 needs 34.
        let with_d = |d: f64| {
            // Ten values with SD 1 (±1 about the mean, n/(n-1) corrected) and mean d.
            let c = (9.0f64 / 10.0).sqrt();
            (0..10)
                .map(|i| d + if i % 2 == 0 { c } else { -c })
                .collect::<Vec<f64>>()
        };
        let p = power80(&with_d(1.0)).unwrap();
        assert!(close(p.sd, 1.0, 1e-12), "{p:?}");
        assert_eq!(p.units_needed, Some(10));
        assert_eq!(power80(&with_d(0.5)).unwrap().units_needed, Some(34));
        // At n = 10 the detectable effect is (2.262 + 0.883) / sqrt(10) SDs.
        assert!(close(
            p.min_detectable,
            (2.2622 + 0.8834) / 10f64.sqrt(),
            1e-3
        ));
        // No effect: no number of units; a tiny one: more than the search.
        assert_eq!(power80(&with_d(0.0)).unwrap().units_needed, None);
        assert_eq!(power80(&with_d(1e-4)).unwrap().units_needed, None);
        assert!(power80(&[1.0]).is_none() && power80(&[1.0, f64::NAN]).is_none());
        // The phrase appears only for an undecided effect.
        let undecided = Effect::of(&[0.1, -0.05, 0.2, -0.1, 0.05], true).unwrap();
        assert_eq!(undecided.verdict, Verdict::Undecided);
        let s = undecided.power_phrase("seed", 3);
        assert!(
            s.contains("seeds; at 5 seeds the smallest detectable effect is"),
            "{s}"
        );
        let held = Effect::of(&[1.0, 1.1, 0.9], true).unwrap();
        assert_eq!(held.power_phrase("seed", 3), "");
    }

    #[test]
    fn verdicts_have_three_outcomes() {
        use Verdict::*;
        assert_eq!(Verdict::of_interval(Some((0.1, 0.3)), true), Held);
        assert_eq!(Verdict::of_interval(Some((0.1, 0.3)), false), Reversed);
        assert_eq!(Verdict::of_interval(Some((-0.3, -0.1)), false), Held);
        assert_eq!(Verdict::of_interval(Some((-0.3, -0.1)), true), Reversed);
        assert_eq!(Verdict::of_interval(Some((-0.1, 0.3)), true), Undecided);
        assert_eq!(Verdict::of_interval(None, true), Undecided);
        // A planted effect is found, its mirror is reversed, pure noise is undecided.
        let planted = [0.9, 1.1, 1.0, 0.95, 1.05];
        assert_eq!(Effect::of(&planted, true).unwrap().verdict, Held);
        let mirrored: Vec<f64> = planted.iter().map(|x| -x).collect();
        assert_eq!(Effect::of(&mirrored, true).unwrap().verdict, Reversed);
        let noise = [0.5, -0.4, 0.1, -0.3, 0.2];
        let e = Effect::of(&noise, true).unwrap();
        assert_eq!(e.verdict, Undecided);
        assert!(e.p_value.unwrap() > 0.05 && e.p_permutation.unwrap() > 0.05);
        let one = Effect::of(&[1.0], true).unwrap();
        assert_eq!(
            (one.verdict, one.ci95, one.p_value),
            (Undecided, None, None)
        );
        assert!(Effect::of(&planted, true)
            .unwrap()
            .describe(2)
            .starts_with("+1.00 ["));
        assert_eq!(p_phrase(1e-9), "p < 1e-6");
        assert_eq!(p_phrase(0.0123), "p = 0.0123");
    }
}
