//! The training objective of `train` and its settings: SFT (the NLL of the responses) or
//! DPO (`train::dpo`) with its beta and loss. One struct, [`DpoConfig`], serves as the
//! command-line flags (`--method`, `--dpo-beta`, `--dpo-loss`) and as the `dpo` field of
//! `TrainConfig` (and so of the settings a run is checked against on resume).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning: NLL of the responses ({"prompt","response"} records).
    #[default]
    Sft,
    /// Direct preference optimisation on {"prompt","chosen","rejected"} pairs.
    Dpo,
}

/// DPO's loss on the reward margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// -log sigmoid(beta h), the standard DPO loss.
    #[default]
    Sigmoid,
    /// (h - 1/(2 beta))^2, IPO.
    Ipo,
}

/// The objective and DPO's settings (`train --method dpo --dpo-beta 0.1 --dpo-loss sigmoid`).
#[derive(clap::Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// Training objective: sft ({"prompt","response"} records) or dpo (preference pairs
    /// {"prompt","chosen","rejected"}; see --schema and --prefer).
    #[arg(long, value_enum, default_value = "sft")]
    pub method: Method,
    /// DPO's beta: the strength of the pull towards the reference (starting) model.
    #[arg(long, default_value_t = DpoConfig::DEFAULT.dpo_beta)]
    pub dpo_beta: f64,
    /// DPO's loss: sigmoid (standard DPO) or ipo.
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub dpo_loss: DpoLoss,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig::DEFAULT
    }
}

impl DpoConfig {
    /// The defaults, as a constant so that `TrainConfig::DEFAULT` can hold them.
    pub const DEFAULT: DpoConfig = DpoConfig {
        method: Method::Sft,
        dpo_beta: 0.1,
        dpo_loss: DpoLoss::Sigmoid,
    };

    /// SFT with DPO's settings untouched: left out of saved settings, so SFT runs written
    /// before DPO existed compare equal.
    pub fn is_default(&self) -> bool {
        *self == DpoConfig::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.dpo_beta.is_finite() && self.dpo_beta > 0.0) {
            bail!(
                "dpo_beta (--dpo-beta) must be a finite number > 0, got {}",
                self.dpo_beta
            );
        }
        Ok(())
    }
}
