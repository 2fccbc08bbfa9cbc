//! The `sluice` binary: parse the command line, set up logging, hand over to the library.

use clap::Parser;

/// mimalloc's per-thread free lists suit a server whose requests allocate and free small buffers
/// on one thread and hand tensors to another; measured against glibc's malloc in
/// benches/RESULTS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice_http1::server::set_memory_release(release_freed_memory);
    let cli = sluice_cli::Cli::parse();
    sluice_telemetry::init_logging();
    // A replica the control plane started writes into a log file that it keeps bounded itself.
    if let Err(e) = sluice_telemetry::logfile::bound_from_env() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    // Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT is set; spans name the command that made
    // them (`sluice-gateway`, `sluice-serve`, ...) unless OTEL_SERVICE_NAME does.
    let command = std::env::args().nth(1).unwrap_or_default();
    sluice_telemetry::trace::init_from_env(&format!("sluice-{command}"), None);
    match sluice_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Called after a request with a large body (see `sluice_http1::server::set_memory_release`):
/// mimalloc keeps freed memory for a while before returning it to the OS, and only returns it
/// when later allocations come by, so after one 50 MB body an idle process kept about 140 MB
/// more resident. A forced collection returns what is free now.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; it
    // only frees memory that no allocation uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
