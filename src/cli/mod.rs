//! The `elastica` command line. Each subcommand lives in its own file with its argument
//! struct and a `run` function; this file only dispatches.
//!
//! Every flag can also come from a TOML file given as `--config FILE`: its keys are the long
//! flag names (`lr = 1e-5`, `no_shuffle = true`, `betas = [0.9, 0.95]`). Flags typed on the
//! command line override the file.

mod bench;
mod cancel;
mod cell;
mod collect;
pub mod compress;
mod config;
mod demo;
mod device_args;
mod eval_loss;
mod generate;
mod grid_args;
mod merge;
mod out_dir;
mod pretrain;
mod rebound;
mod resist;
mod resubmit;
mod scaling;
mod score;
mod status;
mod theory;
mod train;
mod train_hooks;
mod world;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "elastica",
    version,
    about = "Measure how strongly a language model resists alignment (arXiv 2406.06144)",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process, so the size of the largest variant (train's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Supervised fine-tuning (or from-scratch training) of a Llama-family model.
    ///
    /// The loss is on the responses of {"prompt","response"} records (prompts masked) and on
    /// the whole of {"text"} records.
    Train(train::TrainArgs),
    /// The paper's pipeline end to end on a synthetic world, from scratch (no downloads).
    Demo(demo::DemoArgs),
    /// Pre-train a size preset from scratch on a world's text.
    Pretrain(pretrain::PretrainArgs),
    /// Mean NLL of a model on a data file, as JSON.
    ///
    /// The NLL is of the responses of {"prompt","response"} records and of the whole of
    /// {"text"} records.
    EvalLoss(eval_loss::EvalLossArgs),
    /// Generate responses from a model.
    Generate(generate::GenerateArgs),
    /// Fold a LoRA adapter into its base model and save the result as an HF checkpoint.
    Merge(merge::MergeArgs),
    /// Score a JSONL of responses with any scorer: one score per record, mean and 95% CI.
    Score(score::ScoreArgs),
    /// Run or inspect single cells of a planned experiment grid (used by cluster executors).
    Cell(cell::CellArgs),
    /// Measure training, forward and generation throughput (compare: scripts/bench_compare.sh).
    Bench(bench::BenchArgs),
    /// Exact token-tree simulation of the elasticity theorem (no neural network).
    Theory(theory::TheoryArgs),
    /// Compress any file with a language model as the probability source (arithmetic coding).
    Compress(compress::CompressArgs),
    /// Restore a file written by `compress` (needs the same model).
    Decompress(compress::DecompressArgs),
    /// Compression rates (bits/token, bits/byte) of data sets under one or more checkpoints.
    Rates(compress::RatesArgs),
    /// Generate the synthetic world: pre-training text, alignment/perturbation pairs,
    /// evaluation prompts, a BPE tokenizer and world.json.
    World(world::WorldArgs),
    /// Resistance experiment: forward vs inverse alignment between sequential checkpoints.
    Resist(resist::ResistArgs),
    /// The rebound experiment: align on n+ positives, perturb with n- negatives, score,
    /// KL to the base model, report (`--config rebound.toml`).
    Rebound(rebound::ReboundArgs),
    /// The rebound grid over several base models; rebound strength vs size or tokens.
    Scaling(rebound::ReboundArgs),
    /// Where every cell of a run directory stands (asks Slurm for submitted runs).
    Status(status::StatusArgs),
    /// Write the report of a run whose cells ran elsewhere (e.g. `--executor slurm --no-wait`).
    Collect(collect::CollectArgs),
    /// Submit the failed and missing cells of a Slurm run again.
    Resubmit(resubmit::ResubmitArgs),
    /// Cancel a Slurm run's queued and running cells (scancel of the jobs it recorded).
    Cancel(cancel::CancelArgs),
}

/// Entry point used by `main`: parses arguments (with `--config` merging), runs the command,
/// prints errors with their cause chain and returns the process exit code.
pub fn main() -> i32 {
    crate::util::threads::init_candle_pool();
    crate::util::threads::init_blas_threads();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv = if reads_own_config(&argv) {
        Ok(argv)
    } else {
        let sub = argv
            .get(1)
            .and_then(|a| a.to_str())
            .unwrap_or("")
            .to_string();
        config::expand_config_args(argv, &|long| long_flag(&sub, long))
    };
    let argv = match argv {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let cli = Cli::parse_from(argv);
    match run(cli.command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            // `status` tells "a cell failed" (1) from "Slurm could not be asked" (3).
            match e.downcast_ref::<status::StateUnknown>() {
                Some(_) => status::UNKNOWN_EXIT,
                None => 1,
            }
        }
    }
}

/// Whether subcommand `sub` has the long flag `--long`, and if so whether it takes a value.
pub(crate) fn long_flag(sub: &str, long: &str) -> Option<bool> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let arg = cmd
        .find_subcommand(sub)?
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    Some(arg.get_action().takes_values())
}

/// Whether the subcommand in `argv` declares its own `--config` (an experiment whose TOML
/// has nested tables); those files are not expanded into flags.
fn reads_own_config(argv: &[std::ffi::OsString]) -> bool {
    use clap::CommandFactory;
    let Some(name) = argv.get(1).and_then(|a| a.to_str()) else {
        return false;
    };
    Cli::command()
        .find_subcommand(name)
        .is_some_and(|sub| sub.get_arguments().any(|a| a.get_long() == Some("config")))
}

fn run(cmd: Command) -> anyhow::Result<()> {
    crate::model::fused::blas::check_env()?;
    match cmd {
        Command::Train(a) => train::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::EvalLoss(a) => eval_loss::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Score(a) => score::run(a),
        Command::Cell(a) => cell::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Theory(a) => theory::run(a),
        Command::Compress(a) => compress::run_compress(a),
        Command::Decompress(a) => compress::run_decompress(a),
        Command::Rates(a) => compress::run_rates(a),
        Command::World(a) => world::run(a),
        Command::Resist(a) => resist::run(a),
        Command::Rebound(a) => rebound::run(a),
        Command::Scaling(a) => scaling::run(a),
        Command::Status(a) => status::run(a),
        Command::Cancel(a) => cancel::run(a),
        Command::Collect(a) => collect::run(a),
        Command::Resubmit(a) => resubmit::run(a),
    }
}
