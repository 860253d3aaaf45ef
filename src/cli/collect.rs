//! `elastica collect DIR`: write the report of a run whose cells ran elsewhere (a Slurm
//! run submitted with `--no-wait`, or cells run with `elastica cell run`).

use crate::experiments::registry::registry;
use crate::grid::collect::{collect, preview};
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// The run directory (holding manifest.json and config.toml).
    pub dir: PathBuf,
}

pub fn run(a: CollectArgs) -> Result<()> {
    let c = collect(&a.dir, &registry())?;
    eprintln!("report: {}", c.report.display());
    if !c.missing.is_empty() {
        bail!(
            "the report covers the finished cells only: {} cell(s) have no result ({}); see \
             `elastica status {2}` and `elastica resubmit {2}`",
            c.missing.len(),
            preview(&c.missing),
            a.dir.display()
        );
    }
    Ok(())
}
