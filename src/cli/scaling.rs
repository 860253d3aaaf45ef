//! `elastica scaling --config scaling.toml [--out DIR]`: the rebound grid over several base
//! models, with the rebound strength plotted against their size or pre-training tokens.
//! The config is a rebound config with `[[models]]` tables (name, path, x) and `x_label`;
//! the arguments are `rebound`'s.

use super::rebound::ReboundArgs;
use crate::experiments::scaling;
use anyhow::Result;

pub fn run(a: ReboundArgs) -> Result<()> {
    let cfg = super::rebound::load_config(&a.config, &a.grid)?;
    cfg.validate_scaling()?;
    super::rebound::run_grid(&a, &cfg, "scaling", scaling::run)
}
