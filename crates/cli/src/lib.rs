//! The `sluice` command line: the model registry commands, `serve` and `up`.

mod model_cmd;
mod serving;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use serving::{ServeArgs, TuningArgs};

/// Sluice: serve ONNX models over the Open Inference Protocol, fast.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    /// Data directory: registry database, model artifacts and the provisioned ONNX Runtime.
    /// Defaults to $XDG_DATA_HOME/sluice or ~/.local/share/sluice.
    #[arg(long, env = "SLUICE_HOME", global = true)]
    pub home: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, list, show and delete model versions.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Serve registered models (NAME[:VERSION]) or model files over HTTP.
    Serve(ServeArgs),
    /// Register the bundled models (once) and serve them on 127.0.0.1:8000: the zero-setup demo.
    Up(serving::UpArgs),
}

/// Output format of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
}

/// The data directory to use.
pub fn home_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(home) = explicit {
        return Ok(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("sluice"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("cannot find a data directory: set SLUICE_HOME or --home"))?;
    Ok(PathBuf::from(home).join(".local/share/sluice"))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let home = home_dir(cli.home)?;
    match cli.command {
        Command::Model(cmd) => model_cmd::run(&home, cmd),
        Command::Serve(args) => serving::serve(&home, args),
        Command::Up(args) => serving::up(&home, args),
    }
}
