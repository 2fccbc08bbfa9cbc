//! The `sluice` binary: parse the command line, set up logging, hand over to the library.

use clap::Parser;

/// mimalloc's per-thread free lists suit a server whose requests allocate and free small buffers
/// on one thread and hand tensors to another; measured against glibc's malloc in
/// benches/RESULTS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = sluice_cli::Cli::parse();
    sluice_telemetry::init_logging();
    match sluice_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
