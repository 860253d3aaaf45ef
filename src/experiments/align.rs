//! How an experiment's align stage aligns: the `[align]` table of rebound and resist configs.
//! `method = "sft"` (default) fine-tunes on the positive records; `method = "dpo"` reads the
//! positive data spec as preference pairs (`data::prefs`: generic `{"prompt","chosen",
//! "rejected"}`, `pku-saferlhf` with `prefer`, `hh-rlhf`) and trains with `train::dpo`.
//!
//! ```toml
//! [align]
//! method = "dpo"
//! dpo_beta = 0.1        # default
//! dpo_loss = "sigmoid"  # or "ipo", "simpo" (reference-free; with simpo_gamma), "kto"
//! prefer = "safer"      # pku-saferlhf only
//! lora = { rank = 8, alpha = 16 }  # align with a LoRA adapter (default: full fine-tune)
//! ```

use crate::data::prefs::Prefer;
use crate::model::lora::LoraConfig;
use crate::train::objective::{DpoConfig, DpoLoss, Method};
use crate::train::TrainConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The `[align]` table.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlignSpec {
    pub method: Method,
    pub dpo_beta: f64,
    pub dpo_loss: DpoLoss,
    /// SimPO's target margin (dpo_loss = "simpo" only; default 0.5, left out when default).
    #[serde(skip_serializing_if = "DpoConfig::gamma_is_default")]
    pub simpo_gamma: f64,
    /// PKU-SafeRLHF: which label names the chosen answer.
    pub prefer: Option<Prefer>,
    /// Align with a LoRA adapter (`model::lora`) instead of a full fine-tune: the `[train.lora]`
    /// keys (`rank`, `alpha`, `targets`, `rslora`). Off (rank 0) by default.
    #[serde(skip_serializing_if = "LoraConfig::is_off")]
    pub lora: LoraConfig,
}

impl Default for AlignSpec {
    fn default() -> Self {
        let d = DpoConfig::default();
        AlignSpec {
            method: d.method,
            dpo_beta: d.dpo_beta,
            dpo_loss: d.dpo_loss,
            simpo_gamma: d.simpo_gamma,
            prefer: None,
            lora: LoraConfig::default(),
        }
    }
}

impl AlignSpec {
    /// The objective of the align stage (the perturbation stays SFT).
    pub fn dpo_config(&self) -> DpoConfig {
        DpoConfig {
            method: self.method,
            dpo_beta: self.dpo_beta,
            dpo_loss: self.dpo_loss,
            simpo_gamma: self.simpo_gamma,
            ..DpoConfig::DEFAULT
        }
    }

    pub fn is_dpo(&self) -> bool {
        self.method == Method::Dpo
    }

    /// KTO, whose reference point needs at least 2 pairs a run (mismatched pairs).
    pub fn is_kto(&self) -> bool {
        self.is_dpo() && self.dpo_loss == DpoLoss::Kto
    }

    /// Refuse settings that would not do what they say: DPO set under `[train]` (it would
    /// apply to the perturbation too), a bad beta, `prefer` without DPO.
    pub fn check(&self, train: &TrainConfig) -> Result<()> {
        if !train.dpo.is_default() {
            bail!(
                "[train] sets the DPO objective, which would also apply to the perturbation; \
                 set `method`, `dpo_beta`, `dpo_loss` and `simpo_gamma` under [align] instead"
            );
        }
        self.dpo_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("[align]: {e}"))?;
        if self.prefer.is_some() && !self.is_dpo() {
            bail!("[align] prefer applies to method = \"dpo\" only");
        }
        if train.lora.enabled() {
            bail!(
                "[train.lora] would apply to both stages; choose LoRA per stage with \
                 `[align] lora = {{ rank = .., alpha = .. }}` and/or `[perturb] lora = ..`"
            );
        }
        self.lora
            .validate_stage()
            .map_err(|e| anyhow::anyhow!("[align] lora: {e}"))?;
        Ok(())
    }

    /// One line for reports: which method aligned.
    pub fn describe(&self) -> String {
        match self.method {
            Method::Sft => "SFT on the positive records".into(),
            Method::Dpo => self.describe_preference("preference pairs", "the base model"),
        }
    }

    /// How the preference objective trains on `data`, with `reference` naming the model its
    /// rewards are measured against (SimPO has none).
    pub fn describe_preference(&self, data: &str, reference: &str) -> String {
        match self.dpo_loss {
            DpoLoss::Simpo => format!(
                "{} on {data} (beta {}, gamma {}; no reference model)",
                self.dpo_loss.method_name(),
                self.dpo_beta,
                self.simpo_gamma
            ),
            DpoLoss::Kto => format!(
                "{} on the answers of {data} taken one by one (beta {}; chosen desirable, \
                 rejected undesirable; the reference is {reference})",
                self.dpo_loss.method_name(),
                self.dpo_beta
            ),
            DpoLoss::Sigmoid | DpoLoss::Ipo => format!(
                "{} on {data} (beta {}, {} loss; the reference is {reference})",
                self.dpo_loss.method_name(),
                self.dpo_beta,
                self.dpo_loss.name()
            ),
        }
    }

    /// One line for reports: full fine-tune or LoRA, with its settings.
    pub fn describe_lora(lora: &LoraConfig) -> String {
        if lora.enabled() {
            format!(
                "LoRA adapter (rank {}, alpha {}{}, targets {})",
                lora.rank,
                lora.alpha,
                if lora.rslora { ", rsLoRA" } else { "" },
                lora.targets.join(",")
            )
        } else {
            "full fine-tune".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[align] dpo_loss = "simpo"` reaches the objective with its gamma; a gamma given to
    /// another loss is refused; a default gamma stays out of the serialised spec, so the cell
    /// ids of runs planned before SimPO existed are unchanged.
    #[test]
    fn simpo_in_the_align_table() {
        let a: AlignSpec = toml::from_str(
            "method = \"dpo\"\ndpo_beta = 2.0\ndpo_loss = \"simpo\"\nsimpo_gamma = 0.3",
        )
        .unwrap();
        assert_eq!(a.dpo_config().simpo_gamma, 0.3);
        a.check(&TrainConfig::default()).unwrap();
        assert!(a.describe().contains("SimPO") && a.describe().contains("gamma 0.3"));
        let stray: AlignSpec = toml::from_str("method = \"dpo\"\nsimpo_gamma = 0.3").unwrap();
        let e = format!("{:#}", stray.check(&TrainConfig::default()).unwrap_err());
        assert!(e.contains("[align]") && e.contains("simpo_gamma"), "{e}");
        let dpo: AlignSpec = toml::from_str("method = \"dpo\"").unwrap();
        let json = serde_json::to_string(&dpo).unwrap();
        assert_eq!(
            json,
            r#"{"method":"dpo","dpo_beta":0.1,"dpo_loss":"sigmoid"}"#
        );
    }

    #[test]
    fn kto_in_the_align_table() {
        let a: AlignSpec = toml::from_str("method = \"dpo\"\ndpo_loss = \"kto\"").unwrap();
        assert_eq!(a.dpo_config().dpo_loss, DpoLoss::Kto);
        a.check(&TrainConfig::default()).unwrap();
        assert!(
            a.describe().starts_with("KTO") && a.describe().contains("beta 0.1"),
            "{}",
            a.describe()
        );
        let stray: AlignSpec =
            toml::from_str("method = \"dpo\"\ndpo_loss = \"kto\"\nsimpo_gamma = 1.0").unwrap();
        assert!(stray.check(&TrainConfig::default()).is_err());
    }
}
