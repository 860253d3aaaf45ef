//! The demo's rebound cells: for one (base model, seed), score the base, then for each n+
//! align on n+ positive reviews and perturb on negative reviews, scoring the model (the
//! sampled score and the two exact measures of [`super::measures`]) and measuring the
//! compression rates of D_p (split into its reviews and its dialogue), D_a and D_t at every
//! n- of the grid and after each of the first optimizer steps (small l). The compression
//! ablation's units ([`run_ablation_unit`]) repeat the perturbation pass with another
//! learning rate or perturbation set and track the rates only.
//!
//! The DPO variant ([`Alignment::Dpo`]) runs the same unit with DPO alignment on preference
//! pairs (a positive and a negative continuation of one opening) and tracks no rates.
//!
//! The n- grid is evaluated along ONE perturbation pass per (base, n+, seed): with a constant
//! learning rate, no shuffling and a batch size dividing every n-, the model after the first
//! n- negatives of the pass is exactly the model a separate run on those n- samples would
//! give, so snapshots replace separate runs at no loss of rigour.
//!
//! Each (base, seed) unit writes `cells/<base>-seed<S>/outcome.json` atomically, stamped with
//! a fingerprint of everything that determines it; a rerun reuses a unit whose fingerprint
//! matches, so a killed demo resumes where it stopped.

use super::config::{AblationArm, BaseSpec, DemoConfig, DpoVariant};
use super::measures::{self, Exact, Probes};
use crate::compress::tracking::{measure_sets, TrackedSet};
use crate::data::prefs::PrefRecord;
use crate::data::prompts::Prompt;
use crate::data::records::Record;
use crate::data::template::Template;
use crate::experiments::evaluate::{generate_responses, Generation};
use crate::grid::manifest::sha256_hex;
use crate::model::checkpoint::{load_model, LoadedModel};
use crate::model::generate::GenConfig;
use crate::model::TextTokenizer;
use crate::report::stats::mean_ci95;
use crate::score::{Sample, Scorer};

use crate::train::schedule::Schedule;
use crate::train::sft::StepLog;
use crate::train::{train, TrainConfig, TrainRun};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One point of the demo's rebound grid, (base, n+, n-, seed): its three measures. (The
/// grid runner's `CellResult` is a different thing: one cell's files.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReboundRow {
    pub base: String,
    pub size: String,
    pub pretrain_tokens: usize,
    pub n_plus: usize,
    pub n_minus: usize,
    pub seed: u64,
    pub score: f64,
    pub score_ci: Option<f64>,
    /// Likelihood margin (nats/token, positive minus negative held-out reviews).
    pub margin: f64,
    /// Exact P(positive) at the first sentiment-bearing word.
    pub first_word: f64,
}

impl ReboundRow {
    /// The value of measure `name` (one of `config::REBOUND_MEASURES`).
    pub fn measure(&self, name: &str) -> f64 {
        match name {
            "margin" => self.margin,
            "first_word" => self.first_word,
            _ => self.score,
        }
    }
}

/// The compression rate of one tracked set at one point of the perturbation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatePoint {
    pub base: String,
    pub n_plus: usize,
    pub seed: u64,
    pub n_minus: usize,
    /// l = |D_t| / |D_a| in sequence tokens.
    pub l: f64,
    /// k = |D_p| / |D_a| in sequence tokens.
    pub k: f64,
    /// `D_p` (held-out pre-training text), its parts `D_p:reviews` and `D_p:dialogue`, `D_a`
    /// (the alignment pairs) or `D_t` (the perturbation pairs).
    pub set: String,
    pub bits_per_token: f64,
}

/// Everything one (base, seed) unit measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitOutcome {
    pub fingerprint: String,
    pub base_score: f64,
    pub base_exact: Exact,
    pub rows: Vec<ReboundRow>,
    pub rates: Vec<RatePoint>,
}

/// The data every unit draws from.
pub struct DemoData<'a> {
    pub prompts: &'a [String],
    pub align: &'a [Record],
    pub perturb: &'a [Record],
    /// Pre-training text that no base model saw (after the largest budget's cut).
    pub held_out_pretrain: &'a [Record],
    /// Held-out reviews of the exact measures.
    pub probes: &'a Probes,
    /// Preference pairs of the DPO variant (empty when it does not run).
    pub pairs: &'a [PrefRecord],
}

/// How a unit aligns its base.
#[derive(Debug, Clone, Copy)]
pub enum Alignment<'a> {
    /// SFT on positive reviews (the paper's grid), with the compression rates tracked.
    Sft,
    /// DPO on preference pairs; no rates (D_a is a set of pairs, not of texts).
    Dpo(&'a DpoVariant),
}

impl Alignment<'_> {
    /// The unit's directory name under `cells/`.
    fn unit_name(&self, base: &BaseSpec, seed: u64) -> String {
        match self {
            Alignment::Sft => format!("{}-seed{seed}", base.name()),
            Alignment::Dpo(_) => format!("{}-seed{seed}-dpo", base.name()),
        }
    }
}

/// D_p's parts: the first `n` held-out pre-training records, split into reviews and
/// dialogue (a dialogue text starts with the user tag).
fn pretrain_parts(held_out: &[Record], n: usize) -> (Vec<Record>, Vec<Record>) {
    held_out.iter().take(n).cloned().partition(|r| match r {
        Record::Text { text } => !text.starts_with(crate::data::world::lexicon::USER_TAG),
        Record::Pair { .. } | Record::Chat { .. } => true,
    })
}

/// The tracked sets: D_p's two parts, D_a and D_t (D_p itself is their token-weighted sum).
fn tracked_sets(
    held_out: &[Record],
    n: usize,
    align: &[Record],
    perturb: &[Record],
) -> Vec<TrackedSet> {
    let (reviews, dialogue) = pretrain_parts(held_out, n);
    let mut sets = Vec::new();
    for (name, records) in [
        ("D_p:reviews", reviews),
        ("D_p:dialogue", dialogue),
        ("D_a", align.iter().take(n).cloned().collect()),
        ("D_t", perturb.iter().take(n).cloned().collect()),
    ] {
        if !records.is_empty() {
            sets.push(TrackedSet {
                name: name.into(),
                records,
            });
        }
    }
    sets
}

/// Rate points of `lm` at one point of a perturbation, D_p included.
fn rate_points(
    lm: &LoadedModel,
    sets: &[TrackedSet],
    at: (&str, usize, u64, usize, f64, f64),
) -> Result<Vec<RatePoint>> {
    let (base, n_plus, seed, n_minus, l, k) = at;
    let measured = measure_sets(lm, sets, Template::Raw, 512, true)?;
    let point = |set: &str, bits_per_token: f64| RatePoint {
        base: base.to_string(),
        n_plus,
        seed,
        n_minus,
        l,
        k,
        set: set.to_string(),
        bits_per_token,
    };
    let parts: Vec<&_> = measured
        .iter()
        .filter(|r| r.set.starts_with("D_p:"))
        .collect();
    let tokens: u64 = parts.iter().map(|r| r.tokens).sum();
    let mut out = Vec::new();
    if tokens > 0 {
        let bits: f64 = parts
            .iter()
            .map(|r| r.bits_per_token * r.tokens as f64)
            .sum();
        out.push(point("D_p", bits / tokens as f64));
    }
    out.extend(measured.iter().map(|r| point(&r.set, r.bits_per_token)));
    Ok(out)
}

/// Sequence tokens (BOS + text + EOS) of records, the unit the pre-training budget counts.
pub fn sequence_tokens(tok: &TextTokenizer, records: &[Record]) -> Result<usize> {
    records.iter().try_fold(0, |acc, r| {
        let text = r
            .plain_text()
            .context("a conversation record has no text to count without a chat template")?;
        Ok(acc + tok.encode(&text, true)?.len() + 1)
    })
}

/// Mean world-sentiment of sampled continuations of the eval prompts.
pub fn score_model(
    lm: &LoadedModel,
    prompts: &[String],
    scorer: &dyn Scorer,
    gen: &GenConfig,
) -> Result<(f64, Option<f64>)> {
    let gens = generate_responses(lm, &Prompt::texts(prompts), Template::Raw, gen, false)?;
    let samples: Vec<Sample> = gens.iter().map(Generation::sample).collect();
    let scores = scorer.score_batch(&samples)?;
    let ci = mean_ci95(&scores).context("no eval scores")?;
    Ok((ci.mean, ci.half_width))
}

/// Stride of the rotation of the negatives' pool per seed (a prime, so seeds start apart).
pub(super) const PERTURB_STRIDE: usize = 104_729;

/// Each seed draws its own n+ positives and negatives (rotations of the pools).
pub(super) fn draw<T: Clone>(pool: &[T], n: usize, seed: u64, stride: usize) -> Vec<T> {
    let start = (seed as usize).wrapping_mul(stride) % pool.len();
    (0..n)
        .map(|i| pool[(start + i) % pool.len()].clone())
        .collect()
}

/// What every unit of the demo runs on: the settings, one pre-trained base, a seed, the
/// data and the output folder.
pub struct UnitInputs<'a> {
    pub cfg: &'a DemoConfig,
    pub base: &'a BaseSpec,
    /// Sequence tokens of `base`'s pre-training text (|D_p|, for k).
    pub pretrain_tokens: usize,
    pub seed: u64,
    pub data: &'a DemoData<'a>,
    pub out: &'a Path,
}

impl UnitInputs<'_> {
    /// The fingerprint of every setting that determines a rebound unit of this base and seed.
    pub(super) fn fingerprint(&self) -> Result<String> {
        let cfg = self.cfg;
        let key = serde_json::json!({
            "version": 3, "world_seed": cfg.seed, "base": self.base, "seed": self.seed,
            "n_plus": cfg.n_plus, "n_minus": cfg.n_minus, "eval_prompts": cfg.eval_prompts,
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "align_lr": cfg.align_lr, "batch_size": cfg.batch_size,
            "positive_fraction": cfg.positive_fraction, "rate_records": cfg.rate_records,
            "pretrain_lr": cfg.pretrain_lr, "pretrain_batch_size": cfg.pretrain_batch_size,
            "probe_records": cfg.probe_records, "rate_first_steps": cfg.rate_first_steps,
        });
        Ok(sha256_hex(serde_json::to_string(&key)?.as_bytes()))
    }

    /// The unit's folder `<out>/<group>/<name>`, stamped with `fingerprint`.
    pub(super) fn unit_dir(&self, group: &str, name: &str, fingerprint: String) -> UnitDir {
        UnitDir {
            path: self.out.join(group).join(name),
            fingerprint,
        }
    }

    /// The sampling settings of the unit's evaluation generations.
    pub(super) fn gen_config(&self) -> GenConfig {
        GenConfig {
            max_new_tokens: self.cfg.max_new_tokens,
            temperature: self.cfg.temperature,
            seed: self.seed,
            batch_size: 16,
            ..Default::default()
        }
    }

    /// Where the base was pre-trained.
    pub(super) fn base_dir(&self) -> PathBuf {
        self.base.dir(self.out)
    }

    /// The base's checkpoint, as `load_model` takes it.
    pub(super) fn base_spec(&self) -> String {
        self.base_dir().to_string_lossy().into_owned()
    }
}

/// A unit's folder and the fingerprint of everything that determines its outcome.
pub(super) struct UnitDir {
    pub path: PathBuf,
    pub fingerprint: String,
}

impl UnitDir {
    fn outcome_path(&self) -> PathBuf {
        self.path.join("outcome.json")
    }

    /// The outcome a finished run left here, if it was made with this fingerprint; `None`
    /// (run the unit again) when the file is missing, unreadable or from other settings.
    pub(super) fn finished<T: DeserializeOwned>(&self) -> Option<T> {
        #[derive(Deserialize)]
        struct Stamp {
            fingerprint: String,
        }
        let text = std::fs::read_to_string(self.outcome_path()).ok()?;
        let stamp: Stamp = serde_json::from_str(&text).ok()?;
        if stamp.fingerprint != self.fingerprint {
            return None;
        }
        serde_json::from_str(&text).ok()
    }

    /// Write the unit's outcome atomically, last, so that a killed unit leaves none.
    pub(super) fn save<T: Serialize>(&self, outcome: &T) -> Result<()> {
        crate::util::fsx::atomic_write_json(&self.outcome_path(), outcome)
    }
}

/// Run (or reuse) the rebound unit of `u`, aligned as `how` says.
pub fn run_unit(u: &UnitInputs, scorer: &dyn Scorer, how: Alignment) -> Result<UnitOutcome> {
    let (cfg, base, seed, data) = (u.cfg, u.base, u.seed, u.data);
    let fp = match how {
        Alignment::Sft => u.fingerprint()?,
        Alignment::Dpo(v) => {
            sha256_hex(serde_json::to_string(&(u.fingerprint()?, "dpo", v))?.as_bytes())
        }
    };
    let dir = u.unit_dir("cells", &how.unit_name(base, seed), fp);
    if let Some(done) = dir.finished() {
        return Ok(done);
    }
    let gen = u.gen_config();
    let base_lm = load_model(&u.base_spec(), &Device::Cpu)?;
    let (base_score, _) = score_model(&base_lm, data.prompts, scorer, &gen)?;
    let base_exact = measures::measure(&base_lm, data.probes)?;
    let max_minus = cfg.n_minus.iter().copied().max().unwrap_or(0);
    let neg = if max_minus > 0 {
        draw(data.perturb, max_minus, seed, PERTURB_STRIDE)
    } else {
        Vec::new()
    };
    let tok = &base_lm.tokenizer;
    let neg_prefix_tokens = prefix_tokens(tok, &neg)?;
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for &np in &cfg.n_plus {
        let cell_dir = dir.path.join(format!("nplus{np}"));
        let (lm, pos, align_tokens) = aligned(u, np, &cell_dir, how)?;
        let k = u.pretrain_tokens as f64 / align_tokens;
        let track_rates = !neg.is_empty() && matches!(how, Alignment::Sft);
        let sets = tracked_sets(data.held_out_pretrain, cfg.rate_records, &pos, &neg);
        let mut measured: Vec<(usize, f64, Option<f64>, Exact)> = Vec::new();
        let mut measure = |m: &LoadedModel, nm: usize| -> Result<()> {
            let l = neg_prefix_tokens[nm] as f64 / align_tokens;
            if cfg.n_minus.contains(&nm) {
                let (s, ci) = score_model(m, data.prompts, scorer, &gen)?;
                measured.push((nm, s, ci, measures::measure(m, data.probes)?));
            }
            if track_rates {
                rates.extend(rate_points(m, &sets, (&base.name(), np, seed, nm, l, k))?);
            }
            Ok(())
        };
        measure(&lm, 0)?;
        if max_minus > 0 {
            let out = cell_dir.join("perturbed");
            perturb_measured(cfg, &lm, &neg, cfg.align_lr, seed, &out, &mut measure)?;
        }
        for (nm, s, ci, exact) in measured {
            rows.push(ReboundRow {
                base: base.name(),
                size: base.size.clone(),
                pretrain_tokens: base.tokens,
                n_plus: np,
                n_minus: nm,
                seed,
                score: s,
                score_ci: ci,
                margin: exact.margin,
                first_word: exact.first_word,
            });
        }
    }
    let outcome = UnitOutcome {
        fingerprint: dir.fingerprint.clone(),
        base_score,
        base_exact,
        rows,
        rates,
    };
    dir.save(&outcome)?;
    Ok(outcome)
}

/// Sequence tokens of the first i records, for i = 0..=len (l counts tokens).
fn prefix_tokens(tok: &TextTokenizer, records: &[Record]) -> Result<Vec<usize>> {
    let mut out = vec![0usize];
    for r in records {
        let last = *out.last().unwrap_or(&0);
        out.push(last + sequence_tokens(tok, std::slice::from_ref(r))?);
    }
    Ok(out)
}

/// SFT settings of the alignment and perturbation passes: constant lr, no shuffling, so
/// the model after the first n- samples of a pass is the model of a run on those n-.
pub(super) fn train_config(cfg: &DemoConfig, lr: f64, seed: u64) -> TrainConfig {
    TrainConfig {
        template: Template::Raw,
        lr,
        schedule: Schedule::Constant,
        batch_size: cfg.batch_size,
        grad_accum: 1,
        epochs: 1,
        max_length: 512,
        seed,
        shuffle: false,
        ..Default::default()
    }
}

/// The perturbation pass: train `lm` on `set` at `lr` into `out`, calling `measure` with the
/// model and the samples seen so far after each step that reaches one of the grid's n- or
/// is among the first `rate_first_steps` (where the rates move fastest).
fn perturb_measured(
    cfg: &DemoConfig,
    lm: &LoadedModel,
    set: &[Record],
    lr: f64,
    seed: u64,
    out: &Path,
    measure: &mut dyn FnMut(&LoadedModel, usize) -> Result<()>,
) -> Result<()> {
    let mut hook = |m: &LoadedModel, l: &StepLog| -> Result<()> {
        let seen = l.step * cfg.batch_size;
        if cfg.n_minus.contains(&seen) || l.step <= cfg.rate_first_steps {
            measure(m, seen)?;
        }
        Ok(())
    };
    let run = TrainRun {
        hook: Some(&mut hook),
        ..TrainRun::fresh(out)
    };
    train(lm, set, &train_config(cfg, lr, seed), run)?;
    Ok(())
}

/// Stride of the rotation of the positives' (and the preference pairs') pool per seed.
const ALIGN_STRIDE: usize = 7919;

/// The base aligned on the seed's n+ positives (SFT) or n+ preference pairs (DPO): the
/// model, the positives (the chosen answers) and their sequence tokens.
pub(super) fn aligned(
    u: &UnitInputs,
    np: usize,
    cell_dir: &Path,
    how: Alignment,
) -> Result<(LoadedModel, Vec<Record>, f64)> {
    let (cfg, seed, data) = (u.cfg, u.seed, u.data);
    let lm = load_model(&u.base_spec(), &Device::Cpu)?;
    let tc = train_config(cfg, cfg.align_lr, seed);
    let out = cell_dir.join("aligned");
    let pos = match how {
        Alignment::Sft => {
            let pos = draw(data.align, np, seed, ALIGN_STRIDE);
            train(&lm, &pos, &tc, TrainRun::fresh(&out))?;
            pos
        }
        Alignment::Dpo(v) => {
            if data.pairs.len() < np {
                anyhow::bail!(
                    "the DPO variant needs n+ = {np} preference pairs, {} were made",
                    data.pairs.len()
                );
            }
            let pairs = draw(data.pairs, np, seed, ALIGN_STRIDE);
            let tc = TrainConfig {
                lr: v.lr,
                dpo: v.objective(),
                ..tc
            };
            train(&lm, &pairs, &tc, TrainRun::fresh(&out))?;
            pairs
                .iter()
                .map(|p| Record::Pair {
                    prompt: p.prompt.clone(),
                    response: p.chosen.clone(),
                })
                .collect()
        }
    };
    let align_tokens = sequence_tokens(&lm.tokenizer, &pos)? as f64;
    Ok((lm, pos, align_tokens))
}

/// What one ablation unit measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AblationOutcome {
    pub fingerprint: String,
    pub rates: Vec<RatePoint>,
}

/// One (arm, seed) of the compression ablation on `base`: align on the first n+ as the
/// rebound grid does, then perturb with the arm's learning rate on the arm's set, tracking
/// the compression rates at the grid's n- and the first steps. `base` in the points is the
/// arm's name.
pub fn run_ablation_unit(
    u: &UnitInputs,
    arm: &AblationArm,
    arm_index: usize,
) -> Result<AblationOutcome> {
    let (cfg, seed, data) = (u.cfg, u.seed, u.data);
    let fp = sha256_hex(serde_json::to_string(&(u.fingerprint()?, arm))?.as_bytes());
    let name = format!("{}-arm{arm_index}-seed{seed}", u.base.name());
    let dir = u.unit_dir("ablation", &name, fp);
    if let Some(done) = dir.finished() {
        return Ok(done);
    }
    let np = *cfg.n_plus.first().context("no n+")?;
    let max_minus = cfg.n_minus.iter().copied().max().unwrap_or(0);
    if max_minus == 0 {
        anyhow::bail!("the compression ablation needs an n- above 0");
    }
    let perturb: Vec<Record> = if arm.perturb == "pretrain" {
        // Pre-training text no base saw and D_p does not hold.
        let pool = data
            .held_out_pretrain
            .get(cfg.rate_records..)
            .unwrap_or_default();
        if pool.len() < max_minus {
            anyhow::bail!(
                "ablation arm {:?}: {} held-out pre-training records, {max_minus} needed",
                arm.name,
                pool.len()
            );
        }
        draw(pool, max_minus, seed, PERTURB_STRIDE)
    } else {
        draw(data.perturb, max_minus, seed, PERTURB_STRIDE)
    };
    let (lm, pos, align_tokens) = aligned(u, np, &dir.path, Alignment::Sft)?;
    let k = u.pretrain_tokens as f64 / align_tokens;
    let prefix = prefix_tokens(&lm.tokenizer, &perturb)?;
    let sets = tracked_sets(data.held_out_pretrain, cfg.rate_records, &pos, &perturb);
    let mut rates = Vec::new();
    let mut measure = |m: &LoadedModel, nm: usize| -> Result<()> {
        let l = prefix[nm] as f64 / align_tokens;
        rates.extend(rate_points(m, &sets, (&arm.name, np, seed, nm, l, k))?);
        Ok(())
    };
    measure(&lm, 0)?;
    let out = dir.path.join("perturbed");
    perturb_measured(cfg, &lm, &perturb, arm.lr, seed, &out, &mut measure)?;
    let outcome = AblationOutcome {
        fingerprint: dir.fingerprint.clone(),
        rates,
    };
    dir.save(&outcome)?;
    Ok(outcome)
}
