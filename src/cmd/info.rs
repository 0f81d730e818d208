use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {}

pub fn run(_args: InfoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`info` is not built yet")
}
