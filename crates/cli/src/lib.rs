//! The `sluice` command line: the model registry, `serve`, the control plane and its admin
//! commands, the gateway, and `up`.

mod admin_cmd;
mod admin_front;
mod client;
mod model_cmd;
mod platform;
mod replica;
mod serving;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use serving::{FrontDoorArgs, ServeArgs, TuningArgs};

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
    /// Register, list, show and delete model versions: in the data directory's registry, or in
    /// the control plane's when SLUICE_CONTROL_URL (--control-url) names one (a control plane on
    /// Kubernetes or in a container).
    Model {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Serve registered models (NAME[:VERSION]) or model files over HTTP.
    Serve(ServeArgs),
    /// Run one replica of a service on a remote target (what the control plane's Kubernetes
    /// and Docker targets start): fetch its models from the control plane by content hash,
    /// check them, and serve them.
    Replica(replica::ReplicaArgs),
    /// The zero-setup demo: control plane and gateway in one process, the bundled models
    /// registered and deployed as services, the gateway on 127.0.0.1:8000.
    Up(platform::UpArgs),
    /// Run the control plane: admin API, services (replicas as local processes, Kubernetes pods
    /// or Docker containers), endpoints, keys, tokens.
    Control(platform::ControlCmdArgs),
    /// Run a gateway that follows the control plane: auth, version splits, shadows, replica pools.
    Gateway(platform::GatewayCmdArgs),
    /// Deploy models as services and manage them.
    Service {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: admin_cmd::ServiceCommand,
    },
    /// Endpoints: up to 6 versions (services) behind one URL with traffic shares.
    Endpoint {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: admin_cmd::EndpointCommand,
    },
    /// Keys of a service or endpoint.
    Keys {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: admin_cmd::KeysCommand,
    },
    /// Tokens for token-auth services and endpoints.
    Token {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: admin_cmd::TokenCommand,
    },
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
        Command::Model { client, command } => model_cmd::run(&home, &client, command),
        Command::Serve(args) => serving::serve(&home, args),
        Command::Replica(args) => replica::run(&home, args),
        Command::Up(args) => platform::up(&home, args),
        Command::Control(args) => platform::control(&home, args),
        Command::Gateway(args) => platform::gateway(&home, args),
        Command::Service { client, command } => admin_cmd::service(&home, &client, command),
        Command::Endpoint { client, command } => admin_cmd::endpoint(&home, &client, command),
        Command::Keys { client, command } => admin_cmd::keys(&home, &client, command),
        Command::Token { client, command } => admin_cmd::token(&home, &client, command),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
