//! `sluice model ...`: the registry from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use sluice_registry::{ModelRef, ModelVersion, RegisterOptions, Registry, parse_tag};

use crate::Output;
use crate::client::{AdminClient, ClientArgs};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Register a model file as the next version of NAME (versions are 1, 2, 3...).
    Register {
        /// Model name: letters, digits, '.', '_' and '-'.
        name: String,
        /// The model file: an .onnx graph, a TorchScript archive, or a plugin's artifact.
        path: PathBuf,
        /// onnx, torchscript or plugin [default: detected from the file; plugin is never guessed].
        #[arg(long)]
        format: Option<String>,
        /// Model config (JSON): "signature" {inputs, outputs} for TorchScript, which does not record
        /// it; "plugin": {"library": "/path/libvendor.so", "options": {...}} for plugin models,
        /// whose library is opened to check it and to ask for the signature.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Free-text description.
        #[arg(long, default_value = "")]
        description: String,
        /// KEY=VALUE tag; repeat for several.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List every registered model version.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one version (the latest when VERSION is left out) with its inputs and outputs.
    Show {
        /// NAME or NAME:VERSION.
        reference: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete one version; its file is removed when no other version has the same bytes. Refused
    /// while a service of the control plane deploys the version.
    Delete {
        /// NAME:VERSION (the version is required, so a typo cannot delete the latest).
        reference: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

pub fn run(home: &Path, client: &ClientArgs, cmd: ModelCommand) -> anyhow::Result<()> {
    if client.control_url.is_some() {
        let admin = AdminClient::new(home, client)?;
        return tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(remote(&admin, cmd));
    }
    let mut registry = Registry::open(home).with_context(|| format!("opening the registry in {}", home.display()))?;
    match cmd {
        ModelCommand::Register { name, path, format, config, description, tags, output } => {
            let tags = tags.iter().map(|t| parse_tag(t)).collect::<Result<BTreeMap<_, _>, _>>()?;
            let format = format.map(|f| f.parse()).transpose()?;
            let mut config = read_config(config.as_deref())?;
            let signature = match format {
                Some(sluice_registry::ModelFormat::Plugin) => {
                    let Some(config) = config.as_mut() else {
                        anyhow::bail!(
                            "a plugin model needs --config with \"plugin\": {{\"library\": PATH, \"options\": {{...}}}}"
                        );
                    };
                    Some(sluice_backend_plugin::describe(&path, config).context("checking the plugin")?)
                }
                _ => None,
            };
            let options = RegisterOptions { description, tags, format, config, signature };
            let mv = registry.register(&name, &path, options)?;
            print_registered(&mv, output)?;
        }
        ModelCommand::List { output } => print_list(&registry.list()?, output)?,
        ModelCommand::Show { reference, output } => {
            print_one(&registry.resolve(&reference.parse::<ModelRef>()?)?, output)?;
        }
        ModelCommand::Delete { reference, output } => {
            let (r, version) = versioned(&reference)?;
            // The registry and the control plane's store share the data directory's database: the
            // control plane's check of which services run this version goes into the registry's
            // delete transaction, so no service can be stored with it in between. The registry
            // does not know of services; the control plane does not know how deletes work.
            let mv = registry.delete_unless_used(&r.name, version, |conn| {
                let services = sluice_control::services_using_model(conn, &r.name, version)?;
                Ok(services.into_iter().map(|s| format!("service '{s}'")).collect())
            })?;
            print_deleted(&mv, output)?;
        }
    }
    Ok(())
}

/// The same commands against a control plane's registry, through its admin API.
async fn remote(admin: &AdminClient, cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Register { name, path, format, config, description, tags, output } => {
            let tags = tags.iter().map(|t| parse_tag(t)).collect::<Result<BTreeMap<_, _>, _>>()?;
            let options =
                sluice_control::RegisterModel { format, description, tags, config: read_config(config.as_deref())? };
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let query = [("options", serde_json::to_string(&options)?)];
            let mv: ModelVersion = admin.upload(&format!("/v1/models/{name}"), &query, bytes).await?;
            print_registered(&mv, output)
        }
        ModelCommand::List { output } => print_list(&admin.get::<Vec<ModelVersion>>("/v1/models").await?, output),
        ModelCommand::Show { reference, output } => {
            print_one(&admin.get::<ModelVersion>(&format!("/v1/models/{reference}")).await?, output)
        }
        ModelCommand::Delete { reference, output } => {
            let (r, version) = versioned(&reference)?;
            let path = format!("/v1/models/{}/versions/{version}", r.name);
            let mv: ModelVersion = admin.send(reqwest::Method::DELETE, &path, None::<&()>).await?;
            print_deleted(&mv, output)
        }
    }
}

fn print_deleted(mv: &ModelVersion, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "deleted": mv }))?),
        Output::Table => println!("deleted {}:{}", mv.name, mv.version),
    }
    Ok(())
}

/// A reference that must name its version (so a typo cannot delete the latest).
fn versioned(reference: &str) -> anyhow::Result<(ModelRef, u32)> {
    let r: ModelRef = reference.parse()?;
    let version = r.version.ok_or_else(|| anyhow::anyhow!("give the version to delete: {}:VERSION", r.name))?;
    Ok((r, version))
}

fn read_config(path: Option<&Path>) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(p) = path else { return Ok(None) };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", p.display()))?))
}

fn print_registered(mv: &ModelVersion, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(mv)?),
        Output::Table => println!("registered {}:{} (sha256 {})", mv.name, mv.version, &mv.sha256[..12]),
    }
    Ok(())
}

fn print_list(all: &[ModelVersion], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(all)?),
        Output::Table => print_table(all),
    }
    Ok(())
}

fn print_one(mv: &ModelVersion, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(mv)?),
        Output::Table => print_details(mv),
    }
    Ok(())
}

fn print_table(all: &[ModelVersion]) {
    if all.is_empty() {
        println!("no models registered; add one with `sluice model register NAME PATH`");
        return;
    }
    println!(
        "{:<24} {:>7}  {:<6} {:>12}  {:<12}  {:<24}  DESCRIPTION",
        "NAME", "VERSION", "FORMAT", "SIZE", "SHA256", "CREATED"
    );
    for mv in all {
        println!(
            "{:<24} {:>7}  {:<6} {:>12}  {:<12}  {:<24}  {}",
            mv.name,
            mv.version,
            mv.format,
            mv.size_bytes,
            &mv.sha256[..12],
            mv.created_at,
            mv.description
        );
    }
}

fn print_details(mv: &ModelVersion) {
    println!("name:        {}", mv.name);
    println!("version:     {}", mv.version);
    println!("format:      {}", mv.format);
    println!("sha256:      {}", mv.sha256);
    println!("size:        {} bytes", mv.size_bytes);
    println!("created:     {}", mv.created_at);
    println!("description: {}", mv.description);
    if !mv.tags.is_empty() {
        let tags: Vec<String> = mv.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("tags:        {}", tags.join(", "));
    }
    for (title, specs) in [("inputs", &mv.signature.inputs), ("outputs", &mv.signature.outputs)] {
        println!("{title}:");
        for s in specs {
            println!("  {:<20} {:<6} {:?}", s.name, s.datatype.as_str(), s.shape);
        }
    }
}
