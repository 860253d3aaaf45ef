//! `elastica eval-loss` (under construction).

#[derive(clap::Args, Debug)]
pub struct EvalLossArgs {}

pub fn run(_args: EvalLossArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
