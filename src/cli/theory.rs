//! `elastica theory`: run the exact token-tree simulation of the elasticity theorem, print
//! the k-vs-ratio table, the slope fit and the spring check, and write results.json,
//! report.md and the plots.

use crate::report::default_run_dir;
use crate::theory::{run_experiment_with_progress, TheoryConfig};
use crate::util::progress::bar;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TheoryArgs {
    /// k = |D_p| / |D_a| values, comma-separated (pre-training set size over alignment set size)
    /// [default: 10,100,1000,10000].
    #[arg(long = "k", value_delimiter = ',', allow_negative_numbers = true, hide_default_value = true, default_values_t = vec![10.0, 100.0, 1000.0, 10000.0])]
    pub k: Vec<f64>,
    /// Depth d of the token tree (2^d responses; 1..=22; 20 runs in seconds).
    #[arg(long, default_value_t = 12)]
    pub depth: u32,
    /// Pareto (Zipf) exponent of the leaf masses (> 0).
    #[arg(long, default_value_t = 1.5, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Number of seeds (placements of D1, D2, D3) to average over.
    #[arg(long, default_value_t = 5)]
    pub seeds: usize,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest perturbation l = |D_t| / |D_a| in the sweep (the theorem is about l << 1).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    pub l_max: f64,
    /// Number of steps in the l sweep.
    #[arg(long, default_value_t = 10)]
    pub l_steps: usize,
    /// Output directory (default: runs/theory-<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: TheoryArgs) -> Result<()> {
    let cfg = TheoryConfig {
        ks: args.k,
        depth: args.depth,
        alpha: args.alpha,
        seeds: args.seeds,
        first_seed: args.seed,
        l_max: args.l_max,
        l_steps: args.l_steps,
    };
    cfg.validate()?;
    let out = args.out.unwrap_or_else(|| default_run_dir("theory"));
    let _lock = super::out_dir::claim(&out, "theory")?;
    let start = std::time::Instant::now();
    let pb = bar((cfg.ks.len() * cfg.seeds) as u64, "theory");
    let results = run_experiment_with_progress(&cfg, &|| pb.inc(1))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();

    println!(
        "Elasticity ratio dγ(D_a)/dl ÷ −dγ(D_p)/dl (mean ± 95% CI over {} seeds)\n",
        cfg.seeds
    );
    print!("{}", results.ratio_table().to_markdown());
    println!("\nSlope of log(ratio) against log(k) (theorem: about 1)\n");
    print!("{}", results.fit_table().to_markdown());
    println!("\nSprings in series\n");
    print!("{}", results.spring_table().to_markdown());
    println!();
    for f in results.findings() {
        println!("- {f}");
    }
    let paths = results.write(&out)?;
    println!("\nComputed in {secs:.2} s. Wrote:");
    for p in paths {
        println!("  {}", p.display());
    }
    Ok(())
}
