use clap::Args;

#[derive(Args, Debug)]
pub struct SimulateArgs {}

pub fn run(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`simulate` is not built yet")
}
