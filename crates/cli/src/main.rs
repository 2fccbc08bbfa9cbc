//! The `sluice` binary: parse the command line, set up logging, hand over to the library.

use clap::Parser;

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
