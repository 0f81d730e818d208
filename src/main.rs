use clap::Parser;

fn main() {
    let cli = splicevi::cmd::Cli::parse();
    // Training reuses a step's buffers every step; the analyses keep their lower peak (see the docs of
    // keep_freed_memory). Set before any worker thread exists.
    if cli.command.trains() {
        splicevi::util::keep_freed_memory();
    }
    // (after keep_freed_memory: this starts the thread that waits for the signals)
    splicevi::util::remove_temp_files_on_signal();
    if let Err(e) = splicevi::cmd::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
