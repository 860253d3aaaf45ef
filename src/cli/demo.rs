//! `elastica demo`: the whole pipeline on the embedded default, no downloads, no input files.

use crate::experiments::demo::{run as run_demo, DemoConfig};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Run directory (report.md, plots, results.csv/jsonl, world.json, models).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Seed of the world and of pre-training.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Smaller grid, three seeds (under a minute); what the test suite runs.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// The decisive run: 10 seeds, tiny bases pre-trained on 40k, 400k and 4M tokens (k
    /// spans 100x), the small model at 400k, the compression ablation, the rebound after DPO
    /// alignment (under 30 minutes on 2 cores).
    #[arg(long)]
    pub full: bool,
    /// A TOML file of demo settings (any field of the preset: bases, n_plus, n_minus, seeds,
    /// align_lr, ...); fields left out keep the preset's (default, --quick or --full) value.
    #[arg(long)]
    pub settings: Option<PathBuf>,
    /// Parallel jobs, each on one thread (0 = one per core). Results do not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: DemoArgs) -> Result<()> {
    crate::util::threads::set_threads(a.threads);
    let preset = if a.quick {
        DemoConfig::quick(a.seed)
    } else if a.full {
        DemoConfig::full(a.seed)
    } else {
        DemoConfig::standard(a.seed)
    };
    let cfg = match &a.settings {
        Some(p) => DemoConfig::from_toml(p, &preset)?,
        None => preset,
    };
    super::out_dir::refuse_foreign(&a.out, "demo")?;
    let summary = run_demo(&cfg, &a.out, crate::util::parallel::workers(a.threads))?;
    println!("{summary}");
    Ok(())
}
