use clap::Args;

#[derive(Args, Debug)]
pub struct ValidateArgs {}

pub fn run(_args: ValidateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`validate` is not built yet")
}
