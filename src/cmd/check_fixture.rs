use clap::Args;

#[derive(Args, Debug)]
pub struct CheckFixtureArgs {}

pub fn run(_args: CheckFixtureArgs) -> anyhow::Result<()> {
    anyhow::bail!("`check_fixture` is not built yet")
}
