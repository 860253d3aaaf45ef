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
    let out = a.grid.out("scaling");
    if a.plan_only {
        let p = crate::experiments::rebound::plan_only(&cfg, &out, "scaling")?;
        println!("{}", p.grid.manifest_path().display());
        return Ok(());
    }
    let Some(o) = scaling::run(&cfg, &out, a.grid.run_options())? else {
        return Ok(());
    };
    eprintln!("report: {}", out.join("report.md").display());
    o.grid.ensure_complete(&o.planned.grid)
}
