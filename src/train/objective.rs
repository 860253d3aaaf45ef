//! The training objective of `train` and its settings: SFT (the NLL of the responses) or
//! DPO (`train::dpo`) with its beta and loss (sigmoid, IPO, the reference-free SimPO, or KTO
//! on the pairs' answers taken one by one).
//! One struct, [`DpoConfig`], serves as the command-line flags (`--method`, `--dpo-beta`,
//! `--dpo-loss`, `--simpo-gamma`, KTO's `--kto-desirable-weight` / `--kto-undesirable-weight`)
//! and as the `dpo` field of `TrainConfig` (and so of the settings a run is checked against on
//! resume). KTO on unpaired feedback (`train::kto`) takes the same settings.

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
    /// -log sigmoid(beta (a+ - a-) - gamma) on the answers' mean log-prob per token a, with
    /// no reference model: SimPO (Meng et al. 2024), one of the alignment methods under which
    /// the paper's appendix reports the rebound.
    Simpo,
    /// KTO (Ethayarajh et al. 2024), another of the appendix's alignment methods: each pair
    /// gives a desirable (chosen) and an undesirable (rejected) example, each scored alone
    /// against a reference point z0 (the policy's KL from the reference, estimated on
    /// mismatched prompt-answer pairs); loss 1 - sigmoid(beta (r - z0)) for a desirable
    /// answer and 1 - sigmoid(beta (z0 - r)) for an undesirable one. On unpaired feedback
    /// (`train::kto`) each example is one such answer, weighted.
    Kto,
}

impl DpoLoss {
    /// The name in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Simpo => "simpo",
            DpoLoss::Kto => "kto",
        }
    }

    /// The alignment method the loss makes, as reports name it: DPO (sigmoid or IPO loss),
    /// SimPO or KTO.
    pub fn method_name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid | DpoLoss::Ipo => "DPO",
            DpoLoss::Simpo => "SimPO",
            DpoLoss::Kto => "KTO",
        }
    }
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
    /// DPO's loss: sigmoid (standard DPO), ipo, simpo (reference-free, length-normalised;
    /// SimPO's authors use a larger beta, about 2), or kto (each answer scored alone).
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub dpo_loss: DpoLoss,
    /// SimPO's target margin gamma (--dpo-loss simpo only; TRL's default 0.5).
    #[arg(long, default_value_t = DpoConfig::DEFAULT.simpo_gamma)]
    #[serde(skip_serializing_if = "DpoConfig::gamma_is_default")]
    pub simpo_gamma: f64,
    /// KTO on unpaired feedback: the weight of a desirable example's loss (TRL's
    /// desirable_weight). TRL advises weights with w_D n_D / (w_U n_U) in [1, 4/3] for n_D
    /// desirable and n_U undesirable examples.
    #[arg(long, default_value_t = 1.0)]
    #[serde(skip_serializing_if = "DpoConfig::weight_is_default")]
    pub kto_desirable_weight: f64,
    /// KTO on unpaired feedback: the weight of an undesirable example's loss (TRL's
    /// undesirable_weight).
    #[arg(long, default_value_t = 1.0)]
    #[serde(skip_serializing_if = "DpoConfig::weight_is_default")]
    pub kto_undesirable_weight: f64,
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
        simpo_gamma: 0.5,
        kto_desirable_weight: 1.0,
        kto_undesirable_weight: 1.0,
    };

    /// KTO's weights at 1 are left out of saved settings, so runs from before they existed
    /// compare equal.
    pub(crate) fn weight_is_default(w: &f64) -> bool {
        *w == 1.0
    }

    /// The default gamma is left out of saved settings, so the settings and cell ids of runs
    /// from before SimPO existed are unchanged.
    pub(crate) fn gamma_is_default(g: &f64) -> bool {
        *g == DpoConfig::DEFAULT.simpo_gamma
    }

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
        if !self.simpo_gamma.is_finite() {
            bail!(
                "simpo_gamma (--simpo-gamma) must be a finite number, got {}",
                self.simpo_gamma
            );
        }
        for (name, w) in [
            ("kto_desirable_weight", self.kto_desirable_weight),
            ("kto_undesirable_weight", self.kto_undesirable_weight),
        ] {
            if !(w.is_finite() && w > 0.0) {
                bail!("{name} must be a finite number > 0, got {w}");
            }
            if self.dpo_loss != DpoLoss::Kto && !Self::weight_is_default(&w) {
                bail!(
                    "{name} applies to the kto loss only; the loss is {}",
                    self.dpo_loss.name()
                );
            }
        }
        if self.dpo_loss != DpoLoss::Simpo && !Self::gamma_is_default(&self.simpo_gamma) {
            bail!(
                "simpo_gamma (--simpo-gamma) applies to the simpo loss only; the loss is {}",
                self.dpo_loss.name()
            );
        }
        Ok(())
    }
}
