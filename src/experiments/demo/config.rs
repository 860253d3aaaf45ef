//! What the demo runs: the pre-trained bases, the rebound grid, the seeds, and the scale of
//! the compression, resistance and theory sections. Two presets: the default and `--quick`.

use crate::data::world::{Task, World};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// True for a number greater than 0 (false for NaN).
fn is_positive(x: f64) -> bool {
    x.partial_cmp(&0.0) == Some(std::cmp::Ordering::Greater)
}

/// Largest n+, n- and resistance slice the demo builds a world for.
pub const MAX_PAIRS: usize = 5_000;
/// Largest pre-training budget of a demo base.
pub const MAX_PRETRAIN_TOKENS: usize = 20_000_000;

/// One pre-trained base model of the demo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseSpec {
    pub size: String,
    pub tokens: usize,
}

impl BaseSpec {
    pub fn name(&self) -> String {
        format!("{}-{}k", self.size, self.tokens / 1000)
    }
}

/// Every field can be set in a `--settings FILE.toml`; fields left out keep the default
/// preset's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    pub seed: u64,
    pub bases: Vec<BaseSpec>,
    pub n_plus: Vec<usize>,
    pub n_minus: Vec<usize>,
    pub seeds: Vec<u64>,
    pub eval_prompts: usize,
    pub max_new_tokens: usize,
    pub temperature: f64,
    pub align_lr: f64,
    /// Records per optimizer step during alignment and perturbation; must divide every n-.
    pub batch_size: usize,
    pub positive_fraction: f64,
    /// Pre-training learning rate and records per step (see `elastica pretrain --help`).
    pub pretrain_lr: f64,
    pub pretrain_batch_size: usize,
    /// Records of each set (D_p held out, D_a, D_t) whose compression rate is tracked.
    pub rate_records: usize,
    /// The elasticity slopes are fitted on the points with l = |D_t|/|D_a| at most this
    /// (the theorem is about l << 1).
    pub slope_l_max: f64,
    /// Records per slice of the resistance section (0 = skip the section).
    pub resist_slice_records: usize,
    pub resist_seeds: Vec<u64>,
    pub resist_prompts: usize,
    /// Run the exact token-tree simulation of the theorem.
    pub theory: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self::full(42)
    }
}

impl DemoConfig {
    /// Read a settings file over `base` (the preset): fields in the file replace the preset's.
    pub fn from_toml(path: &std::path::Path, base: &DemoConfig) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read demo settings {}: {e}", path.display()))?;
        let over: toml::Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not valid TOML: {e}", path.display()))?;
        let mut merged = toml::Table::try_from(base)
            .map_err(|e| anyhow::anyhow!("cannot serialise the preset: {e}"))?;
        for (k, v) in over {
            merged.insert(k, v);
        }
        merged
            .try_into()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The default demo: two pre-training budgets for the tiny model, and the small model at
    /// the larger budget (the model-size comparison); 3 seeds.
    pub fn full(seed: u64) -> Self {
        DemoConfig {
            seed,
            bases: vec![
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 40_000,
                },
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 160_000,
                },
                BaseSpec {
                    size: "small".into(),
                    tokens: 160_000,
                },
            ],
            n_plus: vec![100, 300],
            // Dense where the curves move fastest; up to n- = n+ of the smaller n+.
            n_minus: vec![0, 10, 20, 40, 70, 100],
            seeds: vec![1, 2, 3],
            eval_prompts: 32,
            max_new_tokens: 32,
            temperature: 1.0,
            align_lr: 2e-3,
            batch_size: 5,
            positive_fraction: 0.5,
            pretrain_lr: 3e-3,
            pretrain_batch_size: 1,
            rate_records: 32,
            slope_l_max: 0.25,
            resist_slice_records: 48,
            resist_seeds: vec![1, 2, 3],
            resist_prompts: 24,
            theory: true,
        }
    }

    /// `--quick`: one seed, two budgets of the tiny model, a short n- grid, a small
    /// resistance run (the test suite runs it).
    pub fn quick(seed: u64) -> Self {
        DemoConfig {
            bases: vec![
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 20_000,
                },
                BaseSpec {
                    size: "tiny".into(),
                    tokens: 60_000,
                },
            ],
            n_plus: vec![100],
            n_minus: vec![0, 20, 60],
            seeds: vec![1],
            eval_prompts: 16,
            max_new_tokens: 24,
            resist_slice_records: 16,
            resist_seeds: vec![1],
            resist_prompts: 8,
            ..Self::full(seed)
        }
    }

    /// Positive pairs the world must hold: the largest n+, and the resistance slices.
    pub fn positives_needed(&self) -> usize {
        let resist = if self.resist_slice_records > 0 {
            3 * self.resist_slice_records + self.resist_prompts
        } else {
            0
        };
        self.n_plus
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(resist)
            .max(1)
    }

    /// Checks that need no world; run before the world is generated.
    pub fn validate_settings(&self) -> Result<()> {
        // The demo builds its world to fit the grid; these bounds keep it a CPU-minutes demo.
        if let Some(&m) = self.n_plus.iter().max().filter(|&&m| m > MAX_PAIRS) {
            bail!("n+ = {m} is larger than the demo allows ({MAX_PAIRS} positive pairs); run `elastica rebound` with schema = \"world\" for larger grids");
        }
        if let Some(&m) = self.n_minus.iter().max().filter(|&&m| m > MAX_PAIRS) {
            bail!("n- = {m} is larger than the demo allows ({MAX_PAIRS} negative pairs); run `elastica rebound` with schema = \"world\" for larger grids");
        }
        for b in &self.bases {
            crate::model::presets::config_json_check(&b.size)?;
            if b.tokens == 0 || b.tokens > MAX_PRETRAIN_TOKENS {
                bail!(
                    "base {}: a pre-training budget of {} tokens is outside 1..={MAX_PRETRAIN_TOKENS}",
                    b.name(),
                    b.tokens
                );
            }
        }
        if self.resist_slice_records > MAX_PAIRS {
            bail!(
                "resist_slice_records = {} is larger than {MAX_PAIRS}",
                self.resist_slice_records
            );
        }
        Ok(())
    }

    pub fn validate(&self, world: &World) -> Result<()> {
        self.validate_settings()?;
        if self.bases.is_empty() || self.seeds.is_empty() || self.n_plus.is_empty() {
            bail!("the demo needs at least one base model, one seed and one n+");
        }
        if self.n_plus.contains(&0) {
            bail!("n+ = 0: alignment needs at least one positive pair");
        }
        let pos = world.align(Task::Reviews).len();
        let neg = world.perturb(Task::Reviews).len();
        if let Some(&m) = self.n_plus.iter().max() {
            if m > pos {
                bail!("n+ = {m} is larger than the {pos} positive pairs in the world");
            }
        }
        if let Some(&m) = self.n_minus.iter().max() {
            if m > neg {
                bail!("n- = {m} is larger than the {neg} negative pairs in the world");
            }
        }
        if self.batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if let Some(bad) = self.n_minus.iter().find(|&&n| n % self.batch_size != 0) {
            bail!(
                "every n- must be a multiple of the batch size {} (got {bad})",
                self.batch_size
            );
        }
        if self.pretrain_batch_size == 0 || !is_positive(self.pretrain_lr) {
            bail!("pretrain_batch_size must be at least 1 and pretrain_lr greater than 0");
        }
        if self.rate_records == 0 {
            bail!("rate_records must be at least 1");
        }
        if !is_positive(self.slope_l_max) {
            bail!("slope_l_max must be greater than 0");
        }
        Ok(())
    }
}
