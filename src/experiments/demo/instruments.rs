//! The demo's look beyond the paper (issue 22), on one base and one seed: where along the
//! response the alignment and the perturbation act, and where in weight space the
//! perturbation goes.
//!
//! The unit repeats the rebound grid's alignment and perturbation pass for the largest tiny
//! base, the first seed and the first n+ (the same data, order and settings, so the same
//! models as that rebound unit), and at every n- of the grid measures
//! - the KL by response position ([`crate::experiments::kl`]): KL(model ‖ pre-trained base)
//!   and KL(model ‖ aligned model) at response positions 1, 2, ..., on the model's own
//!   samples of the eval openings (Qi et al. 2024: alignment acts mainly on the first
//!   tokens);
//! - the weight-space elasticity ([`crate::experiments::weight_space`]): the share of the
//!   alignment update Δa = θ_aligned − θ_base that the perturbation Δp = θ_perturbed −
//!   θ_aligned undoes, −⟨Δp, Δa⟩ / ‖Δa‖², the cosine of Δp with −Δa and ‖Δp‖ / ‖Δa‖.
//!
//! It writes `instruments/<base>-seed<S>/outcome.json` atomically with a fingerprint, as the
//! rebound units do, so a rerun reuses it.

use super::rebound::{aligned, draw, train_config, Alignment, UnitInputs, PERTURB_STRIDE};
use crate::data::prompts::Prompt;
use crate::data::template::Template;
use crate::experiments::evaluate::generate_responses;
use crate::experiments::kl::{by_position, sequence_kl, Continuation, PositionKl};
use crate::experiments::weight_space::{self, Movement};
use crate::grid::manifest::sha256_hex;
use crate::model::checkpoint::{load_model, save_model, LoadedModel};
use crate::model::generate::GenConfig;
use crate::report::plot::Series;
use crate::report::table::Table;
use crate::report::{LinePlot, RunDir};
use crate::train::sft::StepLog;
use crate::train::{train, TrainRun};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

/// The instruments at one point of the perturbation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentPoint {
    pub n_minus: usize,
    /// KL(model ‖ pre-trained base) by response position.
    pub kl_to_base: Vec<PositionKl>,
    /// KL(model ‖ aligned model) by response position (0 at n- = 0).
    pub kl_to_aligned: Vec<PositionKl>,
    /// Weight-space movement in total (`None` at n- = 0, where Δp = 0).
    pub weight_space: Option<Movement>,
}

/// What the instruments unit measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstrumentsOutcome {
    pub fingerprint: String,
    pub base: String,
    pub n_plus: usize,
    pub seed: u64,
    pub points: Vec<InstrumentPoint>,
}

/// Run (or reuse) the instruments on the base and seed of `u`.
pub fn run_instruments(u: &UnitInputs) -> Result<InstrumentsOutcome> {
    let (cfg, base, seed, data) = (u.cfg, u.base, u.seed, u.data);
    let fp = sha256_hex(serde_json::to_string(&(u.fingerprint()?, "instruments", 1))?.as_bytes());
    let dir = u.unit_dir("instruments", &format!("{}-seed{seed}", base.name()), fp);
    if let Some(done) = dir.finished() {
        return Ok(done);
    }
    let unit_dir = &dir.path;
    let np = *cfg.n_plus.first().context("no n+")?;
    let base_lm = load_model(&u.base_spec(), &Device::Cpu)?;
    let (lm, _, _) = aligned(u, np, unit_dir, Alignment::Sft)?;
    let aligned_dir = unit_dir.join("aligned");
    let aligned_lm = load_model(&aligned_dir.to_string_lossy(), &Device::Cpu)?;
    let gen = u.gen_config();
    let snapshot = unit_dir.join("snapshot");
    let mut points = Vec::new();
    let mut measure = |m: &LoadedModel, nm: usize| -> Result<()> {
        let (kl_to_base, kl_to_aligned) =
            kl_by_position(m, &base_lm, &aligned_lm, data.prompts, &gen)?;
        let weight_space = if nm > 0 {
            // Written, measured streaming from disk as for any checkpoint, then overwritten.
            save_model(&m.model, &m.dir, &snapshot, None)?;
            Some(weight_space::measure(&u.base_dir(), &aligned_dir, &snapshot)?.total)
        } else {
            None
        };
        points.push(InstrumentPoint {
            n_minus: nm,
            kl_to_base,
            kl_to_aligned,
            weight_space,
        });
        Ok(())
    };
    measure(&lm, 0)?;
    let max_minus = cfg.n_minus.iter().copied().max().unwrap_or(0);
    if max_minus > 0 {
        let neg = draw(data.perturb, max_minus, seed, PERTURB_STRIDE);
        let bs = cfg.batch_size;
        let mut hook = |m: &LoadedModel, l: &StepLog| -> Result<()> {
            let seen = l.step * bs;
            if cfg.n_minus.contains(&seen) {
                measure(m, seen)?;
            }
            Ok(())
        };
        let tc = train_config(cfg, cfg.align_lr, seed);
        let out = unit_dir.join("perturbed");
        let run = TrainRun {
            hook: Some(&mut hook),
            ..TrainRun::fresh(&out)
        };
        train(&lm, &neg, &tc, run)?;
    }
    let outcome = InstrumentsOutcome {
        fingerprint: dir.fingerprint.clone(),
        base: base.name(),
        n_plus: np,
        seed,
        points,
    };
    dir.save(&outcome)?;
    Ok(outcome)
}

/// KL(m ‖ base) and KL(m ‖ aligned) by response position, on m's own samples of `prompts`.
fn kl_by_position(
    m: &LoadedModel,
    base: &LoadedModel,
    aligned: &LoadedModel,
    prompts: &[String],
    gen: &GenConfig,
) -> Result<(Vec<PositionKl>, Vec<PositionKl>)> {
    let gens = generate_responses(m, &Prompt::texts(prompts), Template::Raw, gen, false)?;
    let seqs: Vec<Continuation<'_>> = gens
        .iter()
        .map(|g| Continuation {
            prompt: &g.prompt_ids,
            tokens: &g.tokens,
            ended: g.ended,
        })
        .collect();
    let pad = m.tokenizer.pad_id();
    let to = |r: &LoadedModel| -> Result<Vec<PositionKl>> {
        Ok(by_position(&sequence_kl(m, r, &seqs, pad, 16, |_| {})?))
    };
    Ok((to(base)?, to(aligned)?))
}

/// Response positions shown one by one in the table; later ones are pooled.
const TABLE_POSITIONS: usize = 4;

impl InstrumentsOutcome {
    /// The section's Markdown, and its two plots written into `run`.
    pub fn section(&self, run: &RunDir) -> Result<String> {
        let mut md = String::from("## Beyond the paper: where the perturbation acts\n\n");
        md.push_str(&format!(
            "On {} (n+ = {}, seed {}), the alignment and perturbation pass of the rebound grid repeated with snapshots. **KL by response position**: KL(model ‖ pre-trained base) and KL(model ‖ aligned model) at each position of the model's own samples of the eval openings (nats; position 1 = the first response token; Qi et al. 2024 find alignment concentrated in the first tokens). **Weight space**: with Δa = θ_aligned − θ_base and Δp = θ_perturbed − θ_aligned, the fraction of the alignment update undone −⟨Δp, Δa⟩ / ‖Δa‖² (1 = back to the base along Δa), the cosine of Δp with −Δa, and ‖Δp‖ / ‖Δa‖. One seed: these numbers describe, they do not test.\n\n",
            self.base, self.n_plus, self.seed
        ));
        md.push_str(&self.table()?.to_markdown());
        md.push('\n');
        let mut kl = LinePlot::new(
            format!("KL(model ‖ base) by response position, {}", self.base),
            "response position",
            "KL (nats)",
        );
        for p in &self.points {
            kl = kl.series(Series::new(
                format!("n-={}", p.n_minus),
                p.kl_to_base
                    .iter()
                    .map(|k| (k.position as f64, k.mean))
                    .collect(),
            ));
        }
        run.plot("kl_by_position", &kl)?;
        let ws: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter_map(|p| {
                let f = p.weight_space.as_ref()?.fraction_undone?;
                Some((p.n_minus as f64, f))
            })
            .collect();
        let plot = LinePlot::new(
            format!("Alignment update undone in weight space, {}", self.base),
            "negative samples n-",
            "−⟨Δp, Δa⟩ / ‖Δa‖²",
        )
        .series(Series::new("fraction undone", ws));
        run.plot("weight_space", &plot)?;
        md.push_str(
            "\n![KL by position](kl_by_position.png) ![weight space](weight_space.png)\n\n",
        );
        Ok(md)
    }

    /// One row per n-: KL at the first positions and pooled after them, and weight space.
    fn table(&self) -> Result<Table> {
        let mut head: Vec<String> = vec!["n-".into()];
        for i in 1..=TABLE_POSITIONS {
            head.push(format!("KL to base, pos {i}"));
        }
        head.extend([
            format!("KL to base, pos > {TABLE_POSITIONS}"),
            "KL to aligned, pos 1".into(),
            format!("KL to aligned, pos > {TABLE_POSITIONS}"),
            "fraction undone".into(),
            "cos(Δp, −Δa)".into(),
            "‖Δp‖ / ‖Δa‖".into(),
        ]);
        let mut t = Table::new(head);
        let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        for p in &self.points {
            let at = |k: &[PositionKl], i: usize| f(k.get(i).map(|k| k.mean));
            let mut row = vec![p.n_minus.to_string()];
            for i in 0..TABLE_POSITIONS {
                row.push(at(&p.kl_to_base, i));
            }
            let ws = p.weight_space.as_ref();
            row.extend([
                f(pooled_after(&p.kl_to_base, TABLE_POSITIONS)),
                at(&p.kl_to_aligned, 0),
                f(pooled_after(&p.kl_to_aligned, TABLE_POSITIONS)),
                f(ws.and_then(|w| w.fraction_undone)),
                f(ws.and_then(|w| w.cosine)),
                f(ws.and_then(|w| w.norm_ratio)),
            ]);
            t.push_row(row)?;
        }
        Ok(t)
    }
}

/// The token-weighted mean KL over the positions after the first `skip` (each position's
/// mean weighted by the samples that reach it); `None` when no sample is that long.
fn pooled_after(k: &[PositionKl], skip: usize) -> Option<f64> {
    let rest = k.get(skip..)?;
    let n: usize = rest.iter().map(|p| p.sequences).sum();
    (n > 0).then(|| {
        rest.iter()
            .map(|p| p.mean * p.sequences as f64)
            .sum::<f64>()
            / n as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooled_after_weights_positions_by_their_samples() {
        let p = |position, mean, sequences| PositionKl {
            position,
            mean,
            sequences,
        };
        let k = [p(1, 9.0, 4), p(2, 1.0, 3), p(3, 3.0, 1)];
        assert_eq!(pooled_after(&k, 1), Some((1.0 * 3.0 + 3.0) / 4.0));
        assert_eq!(pooled_after(&k, 3), None);
        assert_eq!(pooled_after(&k, 5), None);
    }
}
