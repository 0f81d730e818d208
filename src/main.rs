use clap::Parser;
use std::io::Write;

/// A write to a closed pipe on stdout or stderr (`splicevi … | head`): `println!`'s panic.
fn is_closed_pipe(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
    (msg.starts_with("failed printing to stdout") || msg.starts_with("failed printing to stderr")) && msg.contains("Broken pipe")
}

/// A write to stderr that failed otherwise (its file's disk is full): the error cannot be reported
/// where errors go, so the panic's message (which would fail the same way) is left out too.
fn is_stderr_failure(payload: &(dyn std::any::Any + Send)) -> bool {
    let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
    msg.starts_with("failed printing to stderr")
}

/// The exit status of a command whose reader went away: 128 + SIGPIPE, what a shell reports for a
/// program the signal ended (Rust ignores SIGPIPE, so the write fails instead).
const CLOSED_PIPE_EXIT: i32 = 141;

fn main() {
    let cli = splicevi::cmd::Cli::parse();
    // Training reuses a step's buffers every step; the analyses keep their lower peak (see the docs of
    // keep_freed_memory). Set before any worker thread exists.
    if cli.command.trains() {
        splicevi::util::keep_freed_memory();
    }
    // (after keep_freed_memory: this starts the thread that waits for the signals)
    splicevi::util::remove_temp_files_on_signal();
    // A closed stdout (`check-fixture --verbose | head`) ends the command quietly, as it ends other
    // Unix tools: no panic message, the temporary files of unfinished outputs removed as the stack
    // unwinds, exit status 141. Every other panic is reported as before.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_closed_pipe(info.payload()) && !is_stderr_failure(info.payload()) {
            default_hook(info)
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| splicevi::cmd::run(cli))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::exit(1);
        }
        Err(p) if is_closed_pipe(p.as_ref()) => std::process::exit(CLOSED_PIPE_EXIT),
        // (an error like any other: exit 1; the temporary files went as the stack unwound)
        Err(p) if is_stderr_failure(p.as_ref()) => std::process::exit(1),
        Err(p) => std::panic::resume_unwind(p),
    }
}
