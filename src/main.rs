use clap::Parser;

fn main() {
    splicevi::util::keep_freed_memory();
    let cli = splicevi::cmd::Cli::parse();
    if let Err(e) = splicevi::cmd::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
