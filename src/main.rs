use clap::Parser;

fn main() {
    let cli = splicevi::cmd::Cli::parse();
    // Training reuses a step's buffers every step; the analyses keep their lower peak (see the docs of
    // keep_freed_memory). Set before any worker thread exists.
    if cli.command.trains() {
        splicevi::util::keep_freed_memory();
    }
    if let Err(e) = splicevi::cmd::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
