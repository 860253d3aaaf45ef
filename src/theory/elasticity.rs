//! The elasticity experiment (paper §2, elasticity theorem), computed exactly.
//!
//! **Set-up.** Base distributions D1, D2, D3 (Zipf masses, seeded placements). Pre-training
//! data D_p is the equal mixture of D1, D2, D3; alignment data D_a ~ D2; perturbation data
//! D_t ~ D3. Sizes are measured in units of |D_a|: |D_p| = k, |D_a| = 1, |D_t| = l. The
//! model trained on D_p ∪ D_a ∪ D_t is the size-weighted mixture
//! `q(l) = (k p_p + p_a + l p_t) / N`, with `N = k + 1 + l`.
//!
//! **Rates.** gamma(D)(l) is D's compression rate under q(l) in bits per token (see
//! [`super::rate`]). Larger gamma means worse compression. The theorem says that, for
//! k >> 1 and l << 1, `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl` and
//! `d gamma(D_a)/dl = Theta(-k d gamma(D_p)/dl)`: the perturbation undoes alignment about
//! k times faster than it improves the fit to pre-training. The measured **ratio** is
//! `(d gamma(D_a)/dl) / (-d gamma(D_p)/dl)`, positive when the signs are as the theorem says.
//!
//! **Ideal rates** are smooth in l and differentiated analytically:
//! `d gamma(D)/dl = (1 - sum_x p_D(x) p_t(x) / q(x)) / (d N ln 2)`
//! (from `dq/dl = (p_t - q) / N`). Summing with the sizes as weights gives
//! `k gamma_p' + gamma_a' + l gamma_t' = 0` *identically*: the mixture minimises the
//! size-weighted total code length, so the "forces" balance (springs in series). Hence the
//! ratio is exactly k at l = 0, and `k + l |gamma_t'| / |gamma_p'|` for l > 0. The experiment
//! reports the l -> 0 ratio, the secant ratio over the sweep [0, l_max] (the headline: the
//! same finite-difference treatment the Huffman rates get), the derivative along the sweep,
//! and l*, the perturbation size at which gamma(D_p) stops improving (there the ratio
//! diverges and the theorem's sign pattern ends).
//!
//! **Huffman rates** are step functions of l (integer code lengths; the code only changes
//! when q crosses a tie between subtrees). Their derivative is 0 or undefined, so they are
//! handled by the secant over the whole sweep: the Huffman code is built at l = 0 and at
//! l = l_max, and the ratio is `Δgamma_a / -Δgamma_p`. When the code does not change over the
//! sweep (typical for large k, where q moves by O(l/k)) the ratio is undefined and reported
//! as such, not forced.
//!
//! **Springs in series.** At the first sweep step l_1, `|D_i| ΔKL(D_i || model)` for
//! D_p and D_a (forward KL, which is exactly d times the change in compression rate) should
//! be equal and opposite; the reverse direction `|D_i| ΔKL(model || D_i)` named in the
//! paper's analogy is reported too.

use super::mixture::mixture;
use super::pareto::{base_distributions, validate_alpha};
use super::protocol::HuffmanCode;
use super::rate::{compression_rates, CompressionRate};
use super::token_tree::{validate_depth, TokenTree};
use crate::report::stats::{linear_fit, mean_ci95, LinearFit, MeanCi};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

/// Parameters of the elasticity experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoryConfig {
    /// k = |D_p| / |D_a| values to compare (each > 0; the theorem is about k >> 1).
    pub ks: Vec<f64>,
    /// Depth d of the pruned token tree (M = 2^d responses).
    pub depth: u32,
    /// Pareto (Zipf) exponent of the leaf masses.
    pub alpha: f64,
    /// Number of seeds (independent placements of D1, D2, D3).
    pub seeds: usize,
    /// First seed; seeds are first_seed, first_seed + 1, ...
    pub first_seed: u64,
    /// Largest perturbation l = |D_t| / |D_a| of the sweep (the theorem needs l << 1).
    pub l_max: f64,
    /// Number of equal steps from 0 to l_max.
    pub l_steps: usize,
}

impl Default for TheoryConfig {
    fn default() -> Self {
        TheoryConfig {
            ks: vec![10.0, 100.0, 1000.0, 10000.0],
            depth: 12,
            alpha: 1.5,
            seeds: 5,
            first_seed: 0,
            l_max: 0.1,
            l_steps: 10,
        }
    }
}

impl TheoryConfig {
    /// Check every parameter and say which one is wrong and what is allowed.
    pub fn validate(&self) -> Result<()> {
        validate_depth(self.depth)?;
        validate_alpha(self.alpha)?;
        if self.ks.is_empty() {
            bail!("no k values given; pass e.g. --k 10,100,1000");
        }
        if let Some(k) = self.ks.iter().find(|k| !(k.is_finite() && **k > 0.0)) {
            bail!("k = {k}: k = |D_p| / |D_a| must be a finite number greater than 0");
        }
        if self.seeds == 0 {
            bail!("seeds = 0: at least one seed is needed");
        }
        if !(self.l_max.is_finite() && self.l_max > 0.0) {
            bail!(
                "l_max = {}: the perturbation sweep needs a finite l_max > 0",
                self.l_max
            );
        }
        if self.l_steps == 0 || self.l_steps > 100_000 {
            bail!("l_steps = {}: use 1..=100000 steps", self.l_steps);
        }
        Ok(())
    }
}

/// The three data sets' leaf distributions for one seed, with their log-masses (computed
/// once: every reverse KL needs them, at every k and l).
#[derive(Debug, Clone)]
pub struct Setting {
    pub depth: u32,
    pub pretrain: TokenTree,
    pub align: TokenTree,
    pub perturb: TokenTree,
    log2_masses: [Vec<f64>; 3],
}

impl Setting {
    /// D_p = equal mixture of D1, D2, D3; D_a = D2; D_t = D3.
    pub fn from_base(base: &[TokenTree; 3]) -> Result<Self> {
        let [d1, d2, d3] = base;
        let pretrain = mixture(&[(1.0, d1), (1.0, d2), (1.0, d3)])?;
        let logs = |t: &TokenTree| -> Vec<f64> {
            t.leaves()
                .iter()
                .map(|&p| if p > 0.0 { p.log2() } else { f64::NEG_INFINITY })
                .collect()
        };
        let log2_masses = [logs(&pretrain), logs(d2), logs(d3)];
        Ok(Setting {
            depth: d1.depth(),
            pretrain,
            align: d2.clone(),
            perturb: d3.clone(),
            log2_masses,
        })
    }

    /// The model trained on D_p ∪ D_a ∪ D_t with sizes k, 1, l.
    pub fn model(&self, k: f64, l: f64) -> Result<TokenTree> {
        mixture(&[(k, &self.pretrain), (1.0, &self.align), (l, &self.perturb)])
    }

    /// The leaves where the model q(l) trained on sizes k, 1, l has mass (where it has none,
    /// every data set has none too): (leaf, q, the masses of D_p, D_a, D_t there).
    fn mixture_leaves(&self, k: f64, l: f64) -> impl Iterator<Item = (usize, f64, [f64; 3])> + '_ {
        let (pp, pa, pt) = (
            self.pretrain.leaves(),
            self.align.leaves(),
            self.perturb.leaves(),
        );
        let n = k + 1.0 + l;
        (0..pp.len()).filter_map(move |x| {
            let q = (k * pp[x] + pa[x] + l * pt[x]) / n;
            (q > 0.0).then_some((x, q, [pp[x], pa[x], pt[x]]))
        })
    }

    /// Ideal rates, their exact l-derivatives, and the reverse divergences KL(q(l) || D)
    /// under q(l), in one pass over the leaves.
    pub fn ideal_at(&self, k: f64, l: f64) -> IdealPoint {
        let n = k + 1.0 + l;
        let (mut ce, mut cross, mut rev) = ([0.0f64; 3], [0.0f64; 3], [0.0f64; 3]);
        for (x, q, masses) in self.mixture_leaves(k, l) {
            let lq = q.log2();
            let ptq = masses[2] / q;
            for (i, p) in masses.into_iter().enumerate() {
                ce[i] -= p * lq;
                cross[i] += p * ptq;
                rev[i] += q * (lq - self.log2_masses[i][x]);
            }
        }
        let d = self.depth as f64;
        let scale = 1.0 / (d * n * std::f64::consts::LN_2);
        IdealPoint {
            l,
            gamma_p: ce[0] / d,
            gamma_a: ce[1] / d,
            gamma_t: ce[2] / d,
            dgamma_p: (1.0 - cross[0]) * scale,
            dgamma_a: (1.0 - cross[1]) * scale,
            dgamma_t: (1.0 - cross[2]) * scale,
            ratio: ratio(1.0 - cross[1], cross[0] - 1.0),
            reverse_kl: rev,
        }
    }

    /// The exact l-derivatives alone (no logarithms: cheap enough for a fine sweep).
    pub fn slopes_at(&self, k: f64, l: f64) -> SlopePoint {
        let n = k + 1.0 + l;
        let mut cross = [0.0f64; 3];
        for (_, q, [pp, pa, pt]) in self.mixture_leaves(k, l) {
            let ptq = pt / q;
            cross[0] += pp * ptq;
            cross[1] += pa * ptq;
            cross[2] += pt * ptq;
        }
        let scale = 1.0 / (self.depth as f64 * n * std::f64::consts::LN_2);
        SlopePoint {
            l,
            dgamma_p: (1.0 - cross[0]) * scale,
            dgamma_a: (1.0 - cross[1]) * scale,
            dgamma_t: (1.0 - cross[2]) * scale,
            ratio: ratio(1.0 - cross[1], cross[0] - 1.0),
        }
    }

    /// d gamma(D_p)/dl alone (no logarithms: cheap enough for root finding).
    fn pretrain_slope(&self, k: f64, l: f64) -> f64 {
        let n = k + 1.0 + l;
        let mut cross = 0.0;
        for (_, q, [pp, _, pt]) in self.mixture_leaves(k, l) {
            cross += pp * pt / q;
        }
        (1.0 - cross) / (self.depth as f64 * n * std::f64::consts::LN_2)
    }

    /// l*: the smallest l >= 0 at which d gamma(D_p)/dl >= 0, i.e. where the pre-training
    /// rate stops improving and the theorem's sign pattern ends; `None` if it keeps
    /// improving up to l = 1e4. A scan by decades brackets the first sign change, then the
    /// Illinois variant of regula falsi (a handful of passes over the leaves) pins it down.
    pub fn l_star(&self, k: f64) -> Option<f64> {
        let f = |l: f64| self.pretrain_slope(k, l);
        let f0 = f(0.0);
        if f0 >= 0.0 {
            return Some(0.0);
        }
        let (mut a, mut fa) = (0.0, f0);
        let mut bracket = None;
        for j in -3..=4 {
            let l = 10f64.powi(j);
            let fl = f(l);
            if fl >= 0.0 {
                bracket = Some((l, fl));
                break;
            }
            (a, fa) = (l, fl);
        }
        let (mut b, mut fb) = bracket?;
        let mut side = 0i8;
        for _ in 0..100 {
            if fb == 0.0 || (b - a) <= 1e-12 * b {
                break;
            }
            let c = (a * fb - b * fa) / (fb - fa);
            let fc = f(c);
            if fc >= 0.0 {
                (b, fb) = (c, fc);
                if side == 1 {
                    fa *= 0.5; // Illinois: stop the stale end from stalling convergence
                }
                side = 1;
            } else {
                (a, fa) = (c, fc);
                if side == -1 {
                    fb *= 0.5;
                }
                side = -1;
            }
            if (fc.abs() < 1e-15 * f0.abs()) || (b - a) <= 1e-12 * b {
                break;
            }
        }
        Some(b)
    }
}

/// `num / den` when that is a finite number, else `None`.
fn ratio(num: f64, den: f64) -> Option<f64> {
    let r = num / den;
    (den != 0.0 && r.is_finite()).then_some(r)
}

/// Ideal rates (bits/token) of D_p, D_a, D_t under q(l), their exact l-derivatives, the
/// ratio `gamma_a' / -gamma_p'`, and the reverse divergences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IdealPoint {
    pub l: f64,
    pub gamma_p: f64,
    pub gamma_a: f64,
    pub gamma_t: f64,
    pub dgamma_p: f64,
    pub dgamma_a: f64,
    pub dgamma_t: f64,
    pub ratio: Option<f64>,
    /// KL(q(l) || D) in bits for D_p, D_a, D_t (infinite where D lacks support).
    pub reverse_kl: [f64; 3],
}

/// The exact l-derivatives of the ideal rates at one l, and their ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlopePoint {
    pub l: f64,
    pub dgamma_p: f64,
    pub dgamma_a: f64,
    pub dgamma_t: f64,
    pub ratio: Option<f64>,
}

/// Finite change of the rates of D_p and D_a over [0, l_max] and the resulting ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Secant {
    /// Δgamma(D_p) / l_max, bits per token per unit l.
    pub slope_p: f64,
    /// Δgamma(D_a) / l_max.
    pub slope_a: f64,
    /// `slope_a / -slope_p`; `None` when gamma(D_p) did not change.
    pub ratio: Option<f64>,
}

impl Secant {
    fn new(p0: f64, p1: f64, a0: f64, a1: f64, dl: f64) -> Self {
        let (slope_p, slope_a) = ((p1 - p0) / dl, (a1 - a0) / dl);
        Secant {
            slope_p,
            slope_a,
            ratio: ratio(slope_a, -slope_p),
        }
    }
}

/// Huffman rates of D_p, D_a, D_t at both ends of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HuffmanEnds {
    /// Rates at l = 0 for D_p, D_a, D_t (with the ideal and normalised versions).
    pub at_0: [CompressionRate; 3],
    /// Rates at l = l_max.
    pub at_l_max: [CompressionRate; 3],
    /// Leaves whose code length differs between the two codes (0: the code did not change).
    pub leaves_changed: usize,
    pub secant: Secant,
}

/// `|D_i|` times the change of a divergence for D_p, D_a, D_t between l = 0 and l_1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Forces {
    pub pretrain: Option<f64>,
    pub align: Option<f64>,
    pub perturb: Option<f64>,
    /// `-align / pretrain`: 1 when the two springs carry equal and opposite forces.
    pub balance: Option<f64>,
}

impl Forces {
    fn new(sizes: [f64; 3], before: [f64; 3], after: [f64; 3]) -> Self {
        let f = |i: usize| {
            let v = sizes[i] * (after[i] - before[i]);
            v.is_finite().then_some(v)
        };
        let (pretrain, align, perturb) = (f(0), f(1), f(2));
        let balance = match (pretrain, align) {
            (Some(p), Some(a)) => ratio(-a, p),
            _ => None,
        };
        Forces {
            pretrain,
            align,
            perturb,
            balance,
        }
    }
}

/// The springs-in-series check at l = l_1 (bits per response times data set size).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SpringCheck {
    pub l: f64,
    /// `|D_i| ΔKL(D_i || model)` = `|D_i| d Δgamma(D_i)`.
    pub forward: Forces,
    /// `|D_i| ΔKL(model || D_i)`.
    pub reverse: Forces,
}

/// Everything measured for one (k, seed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub k: f64,
    pub seed: u64,
    /// Ideal rates and derivatives at l = 0.
    pub at_0: IdealPoint,
    /// `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl` at l = 0, as the theorem says.
    pub signs_as_theorem: bool,
    /// Overlap `sum_x p_a p_t / q` at l = 0: gamma(D_a) rises with l exactly when it is < 1.
    pub overlap_a_t: f64,
    /// `(k gamma_p' + gamma_a') / |gamma_a'|` at l = 0: zero up to rounding (force balance).
    pub balance_residual: f64,
    /// Ideal rates at the first sweep step l_1 and at l_max.
    pub at_l1: IdealPoint,
    pub at_l_max: IdealPoint,
    /// The exact derivatives along the sweep l = 0, l_max/steps, ..., l_max.
    pub sweep: Vec<SlopePoint>,
    /// Ideal secant over [0, l_max] (the headline ratio).
    pub ideal_secant: Secant,
    pub huffman: HuffmanEnds,
    pub spring: SpringCheck,
    /// Where gamma(D_p) stops improving.
    pub l_star: Option<f64>,
}

/// Analyse one setting at one k.
pub fn analyse(setting: &Setting, k: f64, seed: u64, cfg: &TheoryConfig) -> Result<RunRecord> {
    let steps = cfg.l_steps;
    let sweep: Vec<SlopePoint> = (0..=steps)
        .map(|i| setting.slopes_at(k, cfg.l_max * i as f64 / steps as f64))
        .collect();
    let l1 = sweep[1].l;
    let (first, at_l1, last) = (
        setting.ideal_at(k, 0.0),
        setting.ideal_at(k, l1),
        setting.ideal_at(k, cfg.l_max),
    );
    let ideal_secant = Secant::new(
        first.gamma_p,
        last.gamma_p,
        first.gamma_a,
        last.gamma_a,
        cfg.l_max,
    );

    let huffman_rates = |l: f64| -> Result<(Vec<u32>, [CompressionRate; 3])> {
        let q = setting.model(k, l)?;
        let code = HuffmanCode::for_model(&q)?;
        let r = compression_rates(
            &[&setting.pretrain, &setting.align, &setting.perturb],
            &q,
            &code,
        )?;
        Ok((code.lengths().to_vec(), [r[0], r[1], r[2]]))
    };
    let (len0, at_0) = huffman_rates(0.0)?;
    let (len1, at_l_max) = huffman_rates(cfg.l_max)?;
    let leaves_changed = len0.iter().zip(&len1).filter(|(a, b)| a != b).count();
    let huffman = HuffmanEnds {
        at_0,
        at_l_max,
        leaves_changed,
        secant: Secant::new(
            at_0[0].huffman,
            at_l_max[0].huffman,
            at_0[1].huffman,
            at_l_max[1].huffman,
            cfg.l_max,
        ),
    };

    let d = setting.depth as f64;
    let sizes = [k, 1.0, l1];
    let forward = Forces::new(
        sizes,
        [first.gamma_p * d, first.gamma_a * d, first.gamma_t * d],
        [at_l1.gamma_p * d, at_l1.gamma_a * d, at_l1.gamma_t * d],
    );
    let reverse = Forces::new(sizes, first.reverse_kl, at_l1.reverse_kl);

    let balance_residual = (k * first.dgamma_p + first.dgamma_a) / first.dgamma_a.abs();
    let overlap_a_t = 1.0 - first.dgamma_a * d * (k + 1.0) * std::f64::consts::LN_2;
    Ok(RunRecord {
        k,
        seed,
        at_0: first,
        signs_as_theorem: first.dgamma_p < 0.0 && first.dgamma_a > 0.0,
        overlap_a_t,
        balance_residual,
        at_l1,
        at_l_max: last,
        sweep,
        ideal_secant,
        huffman,
        spring: SpringCheck {
            l: l1,
            forward,
            reverse,
        },
        l_star: setting.l_star(k),
    })
}

/// Statistics over seeds for one k.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KSummary {
    pub k: f64,
    /// Ideal ratio at l -> 0 (equals k by the force balance).
    pub ratio_l0: Option<MeanCi>,
    /// Ideal secant ratio over [0, l_max]: the headline.
    pub ratio_secant: Option<MeanCi>,
    /// Its median over seeds: robust where D_a and D_t overlap, both slopes are near zero and
    /// one seed's ratio can take any size or sign (the mean is then heavy-tailed).
    pub ratio_secant_median: Option<f64>,
    /// Huffman secant ratio over the seeds where the code changed.
    pub ratio_huffman: Option<MeanCi>,
    /// Seeds whose Huffman code changed over the sweep (so the ratio is defined).
    pub huffman_defined: usize,
    pub dgamma_a_l0: Option<MeanCi>,
    pub dgamma_p_l0: Option<MeanCi>,
    /// Seeds with `d gamma(D_p)/dl < 0 < d gamma(D_a)/dl` at l = 0.
    pub signs_as_theorem: usize,
    pub seeds: usize,
    pub l_star: Option<MeanCi>,
    pub spring_forward_balance: Option<MeanCi>,
    pub spring_reverse_balance: Option<MeanCi>,
    /// Mean forward forces |D_i| ΔKL(D_i || model) for D_p, D_a, D_t.
    pub force_pretrain: Option<f64>,
    pub force_align: Option<f64>,
    pub force_perturb: Option<f64>,
}

fn ci(v: impl Iterator<Item = Option<f64>>) -> Option<MeanCi> {
    let v: Vec<f64> = v.flatten().filter(|x| x.is_finite()).collect();
    mean_ci95(&v)
}

/// The median of the finite values (the mean of the middle two for an even count).
fn median(v: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let h = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[h]
    } else {
        (v[h - 1] + v[h]) / 2.0
    })
}

fn summarise(k: f64, runs: &[&RunRecord]) -> KSummary {
    let mean =
        |f: &dyn Fn(&RunRecord) -> Option<f64>| ci(runs.iter().map(|r| f(r))).map(|c| c.mean);
    KSummary {
        k,
        ratio_l0: ci(runs.iter().map(|r| r.at_0.ratio)),
        ratio_secant: ci(runs.iter().map(|r| r.ideal_secant.ratio)),
        ratio_secant_median: median(runs.iter().filter_map(|r| r.ideal_secant.ratio)),
        ratio_huffman: ci(runs.iter().map(|r| r.huffman.secant.ratio)),
        huffman_defined: runs
            .iter()
            .filter(|r| r.huffman.secant.ratio.is_some())
            .count(),
        dgamma_a_l0: ci(runs.iter().map(|r| Some(r.at_0.dgamma_a))),
        dgamma_p_l0: ci(runs.iter().map(|r| Some(r.at_0.dgamma_p))),
        signs_as_theorem: runs.iter().filter(|r| r.signs_as_theorem).count(),
        seeds: runs.len(),
        l_star: ci(runs.iter().map(|r| r.l_star)),
        spring_forward_balance: ci(runs.iter().map(|r| r.spring.forward.balance)),
        spring_reverse_balance: ci(runs.iter().map(|r| r.spring.reverse.balance)),
        force_pretrain: mean(&|r| r.spring.forward.pretrain),
        force_align: mean(&|r| r.spring.forward.align),
        force_perturb: mean(&|r| r.spring.forward.perturb),
    }
}

/// Least-squares slope of ln(ratio) against ln(k), pooled over all (k, seed) points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlopeFit {
    pub fit: Option<LinearFit>,
    /// Points used (positive, finite ratios).
    pub points: usize,
    /// Points left out because the ratio was undefined or not positive.
    pub excluded: usize,
    /// Why there is no fit, if there is none.
    pub note: Option<String>,
}

fn slope_fit(runs: &[RunRecord], pick: impl Fn(&RunRecord) -> Option<f64>) -> SlopeFit {
    let (mut xs, mut ys, mut excluded) = (Vec::new(), Vec::new(), 0);
    for r in runs {
        match pick(r) {
            Some(v) if v > 0.0 && v.is_finite() => {
                xs.push(r.k.ln());
                ys.push(v.ln());
            }
            _ => excluded += 1,
        }
    }
    let points = xs.len();
    let distinct_k = {
        let mut v = xs.clone();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v.len()
    };
    if distinct_k < 2 {
        return SlopeFit {
            fit: None,
            points,
            excluded,
            note: Some(format!(
                "needs defined ratios at 2 or more distinct k; have {distinct_k}"
            )),
        };
    }
    match linear_fit(&xs, &ys) {
        Ok(fit) => SlopeFit {
            fit: Some(fit),
            points,
            excluded,
            note: None,
        },
        Err(e) => SlopeFit {
            fit: None,
            points,
            excluded,
            note: Some(e.to_string()),
        },
    }
}

/// Slope fits of log(ratio) against log(k); the theorem predicts about 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fits {
    pub ideal_l0: SlopeFit,
    pub ideal_secant: SlopeFit,
    pub huffman_secant: SlopeFit,
}

/// The rates over a wide l range for one (k, seed), showing where the theorem's regime ends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegimeCurve {
    pub k: f64,
    pub seed: u64,
    pub l_star: Option<f64>,
    /// `(l, gamma_a(l) - gamma_a(0), -k (gamma_p(l) - gamma_p(0)))`, bits per token.
    pub points: Vec<(f64, f64, f64)>,
}

fn regime_curve(setting: &Setting, k: f64, seed: u64) -> RegimeCurve {
    let l_star = setting.l_star(k);
    let l_end = match l_star {
        Some(s) if s > 0.0 => (3.0 * s).min(1e4),
        _ => 1.0,
    };
    let base = setting.ideal_at(k, 0.0);
    let points = (0..=40)
        .map(|i| {
            let p = setting.ideal_at(k, l_end * i as f64 / 40.0);
            (
                p.l,
                p.gamma_a - base.gamma_a,
                -k * (p.gamma_p - base.gamma_p),
            )
        })
        .collect();
    RegimeCurve {
        k,
        seed,
        l_star,
        points,
    }
}

/// Everything the experiment produced; serialises to results.json.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TheoryResults {
    pub config: TheoryConfig,
    pub per_k: Vec<KSummary>,
    pub fits: Fits,
    /// Largest |force-balance residual| over all runs (rounding level when all is well).
    pub max_balance_residual: f64,
    pub regime: RegimeCurve,
    pub runs: Vec<RunRecord>,
}

/// Run the experiment: every seed's base distributions, every k. Seeds run in parallel;
/// the result does not depend on the thread count.
pub fn run_experiment(cfg: &TheoryConfig) -> Result<TheoryResults> {
    run_experiment_with_progress(cfg, &|| {})
}

/// [`run_experiment`] calling `tick` after each (k, seed).
pub fn run_experiment_with_progress(
    cfg: &TheoryConfig,
    tick: &(dyn Fn() + Sync),
) -> Result<TheoryResults> {
    cfg.validate()?;
    let seeds: Vec<u64> = (0..cfg.seeds as u64).map(|i| cfg.first_seed + i).collect();
    let mid_k = {
        let mut ks = cfg.ks.clone();
        ks.sort_by(f64::total_cmp);
        ks[(ks.len() - 1) / 2]
    };
    let per_seed: Vec<(Vec<RunRecord>, Option<RegimeCurve>)> = seeds
        .par_iter()
        .map(|&seed| -> Result<_> {
            let base = base_distributions(cfg.depth, cfg.alpha, seed)
                .with_context(|| format!("building the base distributions for seed {seed}"))?;
            let setting = Setting::from_base(&base)?;
            drop(base);
            let runs = cfg
                .ks
                .par_iter()
                .map(|&k| {
                    let r = analyse(&setting, k, seed, cfg)
                        .with_context(|| format!("k = {k}, seed {seed}"));
                    tick();
                    r
                })
                .collect::<Result<Vec<_>>>()?;
            let regime = (seed == cfg.first_seed).then(|| regime_curve(&setting, mid_k, seed));
            Ok((runs, regime))
        })
        .collect::<Result<_>>()?;

    let mut runs = Vec::new();
    let mut regime = None;
    for (r, g) in per_seed {
        runs.extend(r);
        regime = regime.or(g);
    }
    let regime = match regime {
        Some(r) => r,
        None => bail!("internal error: the first seed produced no regime curve"),
    };
    let per_k = cfg
        .ks
        .iter()
        .map(|&k| {
            let rs: Vec<&RunRecord> = runs.iter().filter(|r| r.k == k).collect();
            summarise(k, &rs)
        })
        .collect();
    let fits = Fits {
        ideal_l0: slope_fit(&runs, |r| r.at_0.ratio),
        ideal_secant: slope_fit(&runs, |r| r.ideal_secant.ratio),
        huffman_secant: slope_fit(&runs, |r| r.huffman.secant.ratio),
    };
    let max_balance_residual = runs
        .iter()
        .map(|r| r.balance_residual.abs())
        .fold(0.0, f64::max);
    Ok(TheoryResults {
        config: cfg.clone(),
        per_k,
        fits,
        max_balance_residual,
        regime,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::theory::protocol::ideal_length;
    use proptest::prelude::*;

    fn tree(v: [f64; 8]) -> TokenTree {
        TokenTree::from_leaves(3, &v.map(|x| x / 36.0)).unwrap()
    }

    /// The depth-3 tree of scripts/theory_depth3_reference.py.
    fn hand_setting() -> Setting {
        let base = [
            tree([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
            tree([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
            tree([5.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0]),
        ];
        Setting::from_base(&base).unwrap()
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn depth3_tree_matches_values_computed_by_hand() {
        // Reference: scripts/theory_depth3_reference.py (mpmath, 40 digits, numerical
        // differentiation of the cross-entropy written from the definitions).
        let s = hand_setting();
        let cfg = TheoryConfig {
            ks: vec![10.0, 100.0, 1000.0],
            l_max: 0.1,
            l_steps: 2,
            ..Default::default()
        };
        let want = [
            (
                10.0,
                0.002_147_336_278_788_389,
                -0.000_214_733_627_878_838_9,
                11.512_425_975_057_52,
            ),
            (
                100.0,
                0.000_151_872_695_136_443_93,
                -1.518_726_951_364_439_3e-6,
                123.647_312_478_526_57,
            ),
            (
                1000.0,
                1.431_775_548_096_656_9e-5,
                -1.431_775_548_096_656_9e-8,
                1_256.021_344_080_909,
            ),
        ];
        let mut runs = Vec::new();
        for (k, dga, dgp, secant) in want {
            let r = analyse(&s, k, 0, &cfg).unwrap();
            assert!(
                rel(r.at_0.dgamma_a, dga) < 1e-10,
                "k {k}: {} vs {dga}",
                r.at_0.dgamma_a
            );
            assert!(
                rel(r.at_0.dgamma_p, dgp) < 1e-9,
                "k {k}: {} vs {dgp}",
                r.at_0.dgamma_p
            );
            let got = r.ideal_secant.ratio.unwrap();
            assert!(rel(got, secant) < 1e-9, "k {k}: secant {got} vs {secant}");
            assert!(r.signs_as_theorem);
            runs.push(r);
        }
        let fit = slope_fit(&runs, |r| r.ideal_secant.ratio).fit.unwrap();
        assert!(
            (fit.slope - 1.018_915_084_453_852_9).abs() < 1e-9,
            "slope {}",
            fit.slope
        );
        let l_star = s.l_star(100.0).unwrap();
        assert!(rel(l_star, 0.263_452_969_148_380_47) < 1e-8, "l* {l_star}");
    }

    #[test]
    fn analytic_derivatives_match_finite_differences() {
        let [a, b, c] = base_distributions(7, 1.3, 11).unwrap();
        let s = Setting::from_base(&[a, b, c]).unwrap();
        for (k, l) in [(10.0f64, 0.0f64), (300.0, 0.05), (5.0, 2.0)] {
            let h = 1e-5;
            let (lo, hi) = (s.ideal_at(k, (l - h).max(0.0)), s.ideal_at(k, l + h));
            let dl = hi.l - lo.l;
            let p = s.ideal_at(k, l);
            let sl = s.slopes_at(k, l);
            for (fd, exact, slope) in [
                ((hi.gamma_p - lo.gamma_p) / dl, p.dgamma_p, sl.dgamma_p),
                ((hi.gamma_a - lo.gamma_a) / dl, p.dgamma_a, sl.dgamma_a),
                ((hi.gamma_t - lo.gamma_t) / dl, p.dgamma_t, sl.dgamma_t),
            ] {
                assert!(
                    rel(fd, exact) < 1e-4,
                    "k {k} l {l}: fd {fd} vs analytic {exact}"
                );
                assert_eq!(exact, slope);
            }
        }
    }

    #[test]
    fn fused_rates_agree_with_the_rate_module_and_forces_balance() {
        let [a, b, c] = base_distributions(6, 1.5, 3).unwrap();
        let s = Setting::from_base(&[a, b, c]).unwrap();
        let (k, l) = (50.0, 0.3);
        let p = s.ideal_at(k, l);
        let q = s.model(k, l).unwrap();
        for (t, g) in [
            (&s.pretrain, p.gamma_p),
            (&s.align, p.gamma_a),
            (&s.perturb, p.gamma_t),
        ] {
            assert!((ideal_length(t.leaves(), q.leaves()) / 6.0 - g).abs() < 1e-12);
        }
        let rev = crate::theory::protocol::kl_divergence(q.leaves(), s.align.leaves());
        assert!((rev - p.reverse_kl[1]).abs() < 1e-12);
        // k gamma_p' + gamma_a' + l gamma_t' = 0 (the mixture minimises total code length).
        let total = k * p.dgamma_p + p.dgamma_a + l * p.dgamma_t;
        assert!(total.abs() < 1e-12 * p.dgamma_a.abs(), "residual {total}");
        assert!((p.ratio.unwrap() - (k + l * (-p.dgamma_t) / (-p.dgamma_p))).abs() < 1e-6 * k);
    }

    #[test]
    fn l_star_is_where_the_pretraining_slope_turns() {
        let [a, b, c] = base_distributions(8, 1.5, 5).unwrap();
        let s = Setting::from_base(&[a, b, c]).unwrap();
        let l = s.l_star(1000.0).unwrap();
        assert!(l > 0.0);
        assert!(s.slopes_at(1000.0, l * 0.999).dgamma_p < 0.0);
        assert!(s.slopes_at(1000.0, l * 1.001).dgamma_p > 0.0);
    }

    #[test]
    fn invalid_parameters_give_clear_errors() {
        let bad = |f: &dyn Fn(&mut TheoryConfig)| {
            let mut c = TheoryConfig {
                depth: 4,
                seeds: 1,
                ..Default::default()
            };
            f(&mut c);
            run_experiment(&c).unwrap_err().to_string()
        };
        assert!(bad(&|c| c.depth = 0).contains("depth must be at least 1"));
        assert!(bad(&|c| c.depth = 23).contains("1..=22"));
        assert!(bad(&|c| c.alpha = 0.0).contains("alpha = 0"));
        assert!(bad(&|c| c.alpha = -2.0).contains("greater than 0"));
        assert!(bad(&|c| c.ks = vec![10.0, 0.0]).contains("k = 0"));
        assert!(bad(&|c| c.ks = vec![-5.0]).contains("k = -5"));
        assert!(bad(&|c| c.ks = vec![]).contains("no k values"));
        assert!(bad(&|c| c.seeds = 0).contains("seeds = 0"));
        assert!(bad(&|c| c.l_max = 0.0).contains("l_max"));
        assert!(bad(&|c| c.l_steps = 0).contains("l_steps"));
    }

    #[test]
    fn experiment_is_deterministic_and_complete() {
        let cfg = TheoryConfig {
            ks: vec![10.0, 1000.0],
            depth: 8,
            seeds: 3,
            ..Default::default()
        };
        let a = run_experiment(&cfg).unwrap();
        let b = run_experiment(&cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.runs.len(), 6);
        assert_eq!(a.per_k.len(), 2);
        assert!(a.max_balance_residual < 1e-9);
        for r in &a.runs {
            // A code is never shorter on average than the data's entropy (the ideal rate of
            // the data under its own distribution), and Huffman beats that by < 1 bit under q.
            let base = base_distributions(8, cfg.alpha, r.seed).unwrap();
            let s = Setting::from_base(&base).unwrap();
            for (c, t) in r
                .huffman
                .at_0
                .iter()
                .zip([&s.pretrain, &s.align, &s.perturb])
            {
                assert!(c.huffman >= crate::theory::protocol::entropy(t.leaves()) / 8.0 - 1e-12);
            }
            assert_eq!(r.sweep.len(), cfg.l_steps + 1);
        }
        let slope = a.fits.ideal_secant.fit.as_ref().unwrap().slope;
        assert!((slope - 1.0).abs() < 0.1, "slope {slope}");
    }

    #[test]
    fn median_by_hand() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median([f64::NAN, 5.0].into_iter()), Some(5.0));
        assert_eq!(median(std::iter::empty()), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn ratio_grows_with_k_in_expectation(
            depth in 4u32..9,
            alpha in 0.8f64..2.5,
            first_seed in 0u64..100_000,
        ) {
            let cfg = TheoryConfig {
                ks: vec![10.0, 100.0, 1000.0],
                depth,
                alpha,
                seeds: 6,
                first_seed,
                ..Default::default()
            };
            let res = run_experiment(&cfg).unwrap();
            // The median over seeds, not the mean: when D_a and D_t happen to overlap, both
            // slopes at l = 0 are near zero and one seed's secant ratio can be any size or
            // sign (CI failure at depth 5, alpha 1.6: means 12.7, 1397, -712).
            let medians: Vec<f64> =
                res.per_k.iter().map(|s| s.ratio_secant_median.unwrap()).collect();
            prop_assert!(
                medians[0] < medians[1] && medians[1] < medians[2],
                "medians {medians:?}"
            );
        }
    }
}
