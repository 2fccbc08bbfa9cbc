//! `sluice service`, `sluice endpoint`, `sluice keys` and `sluice token`: the admin API from the
//! command line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use reqwest::Method;
use sluice_control::{
    CreateEndpoint, CreateService, EndpointStatus, KeyName, Keys, LogChunk, RegenerateKey, ServiceState, ServiceStatus,
    TokenRequest, TokenResponse, UpdateService, VersionChange,
};

use crate::Output;
use crate::client::{AdminClient, ClientArgs};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Deploy registered models as a service: NUM_REPLICAS `sluice serve` replicas behind the gateway.
    Create {
        name: String,
        /// A registered model, NAME or NAME:VERSION (NAME alone means its latest version). Repeatable.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// Azure ML deploymentconfig.json: num_replicas, autoscale_*, replica_max_concurrent_requests,
        /// max_request_wait_time, scoring_timeout_ms, auth_enabled, token_auth_enabled, primary_key,
        /// secondary_key, probe fields, plus Sluice's batching settings. Contradictions are refused.
        #[arg(long)]
        deploy_config: Option<PathBuf>,
        /// Per-model runtime settings, as for `sluice serve --model-config`, e.g.
        /// {"mlp-small": {"max_batch_size": 32}}.
        #[arg(long)]
        inference_config: Option<PathBuf>,
        /// Wait until every replica is ready (or the service failed), showing progress.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List services with their state.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Everything about one service: state, replicas, configs.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// The state (Transitioning, Healthy, Unhealthy, Failed) and its reason.
    State {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Output of the service's replicas.
    Logs {
        name: String,
        /// Only this replica.
        #[arg(long)]
        replica: Option<usize>,
        /// Keep printing new output until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// `json`: one JSON object per chunk of output ({"replica", "offset", "text"}).
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Change models or configs; new replicas replace the old ones once ready, with no request lost.
    Update {
        name: String,
        #[arg(long = "model")]
        models: Vec<String>,
        #[arg(long)]
        deploy_config: Option<PathBuf>,
        #[arg(long)]
        inference_config: Option<PathBuf>,
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Where the service's collected model data (collect_model_data) is and how much there is.
    Data {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Stop the replicas and remove the service (refused while an endpoint version uses it).
    Delete {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Auth of an endpoint.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AuthArg {
    Key,
    Token,
    None,
}

/// Role and share flags of a version.
#[derive(Debug, Clone, clap::Args)]
pub struct VersionFlags {
    /// Traffic percentile (0-100); the default version also takes what the others leave.
    #[arg(long)]
    traffic: Option<f64>,
    /// Make this the default version (the previous default loses the flag).
    #[arg(long)]
    default: bool,
    /// Make this the control version (the previous control becomes a treatment).
    #[arg(long)]
    control: bool,
    /// Make this version a treatment (no longer the control).
    #[arg(long)]
    treatment: bool,
    /// Make this the shadow: it gets a copy of this percentage of requests (at most 50), its
    /// answers are measured and dropped.
    #[arg(long, value_name = "PERCENT")]
    shadow: Option<f64>,
    /// Make a shadow version take live traffic again.
    #[arg(long)]
    no_shadow: bool,
}

impl VersionFlags {
    fn change(&self, name: String, service: Option<String>) -> VersionChange {
        VersionChange {
            name,
            service,
            traffic: self.traffic,
            default: self.default,
            control: self.control,
            treatment: self.treatment,
            shadow: self.shadow,
            no_shadow: self.no_shadow,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint with its first version (which is the default).
    #[command(disable_version_flag = true)]
    Create {
        name: String,
        /// The first version, as VERSION=SERVICE.
        #[arg(long, value_name = "VERSION=SERVICE")]
        version: String,
        /// How callers authenticate.
        #[arg(long, value_enum, default_value = "key")]
        auth: AuthArg,
        #[command(flatten)]
        flags: VersionFlags,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// List endpoints.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every version's service, role and effective traffic share.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete an endpoint (its services stay).
    Delete {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Add, change or delete versions (at most 6 per endpoint).
    #[command(subcommand)]
    Version(VersionCommand),
}

#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Add a version, as VERSION=SERVICE.
    Add {
        endpoint: String,
        #[arg(value_name = "VERSION=SERVICE")]
        spec: String,
        #[command(flatten)]
        flags: VersionFlags,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Change a version's share, role or service.
    Update {
        endpoint: String,
        #[arg(value_name = "VERSION")]
        name: String,
        /// Point the version at another service.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        flags: VersionFlags,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove a version (not the default one).
    Delete {
        endpoint: String,
        #[arg(value_name = "VERSION")]
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print the primary and secondary key of a service or endpoint.
    Get {
        name: String,
        /// Print only this key (for scripts).
        #[arg(long, value_enum)]
        key: Option<KeyArg>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Replace one key; the other stays valid, so callers can rotate without downtime.
    Regen {
        name: String,
        #[arg(long, value_enum)]
        key: KeyArg,
        /// Use this value instead of a random one (16-256 visible ASCII characters).
        #[arg(long)]
        value: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeyArg {
    Primary,
    Secondary,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a token for a token-auth service or endpoint, and when to refresh it.
    Get {
        name: String,
        /// Lifetime in seconds [default and maximum: the control plane's --token-ttl-seconds].
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

fn read_json(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn read_opt(path: &Option<PathBuf>) -> anyhow::Result<Option<serde_json::Value>> {
    path.as_deref().map(read_json).transpose()
}

fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn split_version(spec: &str) -> anyhow::Result<(String, String)> {
    match spec.split_once('=') {
        Some((v, s)) if !v.is_empty() && !s.is_empty() => Ok((v.to_owned(), s.to_owned())),
        _ => bail!("expected VERSION=SERVICE, got '{spec}'"),
    }
}

fn state_line(s: &ServiceStatus) -> String {
    match &s.reason {
        Some(r) => format!("{:?} ({r})", s.state),
        None => format!("{:?}", s.state),
    }
}

/// `service state`: the state, how many replicas are ready of those wanted, and for an autoscaled
/// service its last decision with the reason.
fn state_summary(s: &ServiceStatus) -> String {
    let ready = s.replicas.iter().filter(|r| r.ready).count();
    let mut line = format!("{}; {ready} of {} replicas ready", state_line(s), s.desired_replicas);
    if let Some(d) = s.autoscale.as_ref().and_then(|a| a.last_decision.as_ref()) {
        line.push_str(&format!("; last scaled from {} to {} at {}: {}", d.from, d.to, d.at, d.reason));
    }
    line
}

/// Polls until the service is Healthy (Ok) or Failed (Err), printing each new state.
async fn wait_ready(client: &AdminClient, name: &str) -> anyhow::Result<ServiceStatus> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let status: ServiceStatus = client.get(&format!("/v1/services/{name}")).await?;
        let line = state_line(&status);
        if line != last {
            eprintln!("service {name}: {line}");
            last = line;
        }
        match status.state {
            ServiceState::Healthy => return Ok(status),
            ServiceState::Failed => bail!("service {name} failed: {}", status.reason.unwrap_or_default()),
            _ if started.elapsed() > Duration::from_secs(600) => bail!("service {name} not ready after 10 minutes"),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Names, on stderr, the deployment-config settings the service's target does not act on.
fn warn_ignored(s: &ServiceStatus) {
    for i in &s.ignored_settings {
        eprintln!("warning: service {}: {} has no effect here: {}", s.name, i.field, i.reason);
    }
}

fn print_service(s: &ServiceStatus) {
    println!("name:        {}", s.name);
    println!("models:      {}", s.models.join(", "));
    println!("state:       {}", state_line(s));
    println!("auth:        {:?}", s.auth);
    println!("generation:  {}", s.generation);
    println!("scoring:     {} (on the gateway)", s.scoring_path);
    if let Some(uri) = &s.swagger_uri {
        println!("swagger:     {uri} (on the gateway, OpenAPI)");
    }
    println!("replicas:    {} desired", s.desired_replicas);
    if !s.ignored_settings.is_empty() {
        println!("ignored settings (no effect on this target):");
        for i in &s.ignored_settings {
            println!("  {}: {}", i.field, i.reason);
        }
    }
    if let Some(a) = &s.autoscale {
        println!(
            "autoscale:   {} of {}..{} replicas running, {} wanted; target {}% utilization, now {}",
            a.current_replicas,
            a.min_replicas,
            a.max_replicas,
            a.desired_replicas,
            a.target_utilization,
            a.utilization.map_or("-".into(), |u| format!("{u:.0}%"))
        );
        if let Some(d) = &a.last_decision {
            println!("last scaled: {} from {} to {}: {}", d.at, d.from, d.to, d.reason);
        }
    }
    for r in &s.replicas {
        // A local replica is a process; a remote one a pod or container, named.
        let who = match (&r.name, r.pid) {
            (Some(name), _) => name.clone(),
            (None, pid) => format!("pid={}", pid.map_or("-".into(), |p| p.to_string())),
        };
        println!(
            "  [{}] {} {who} addr={} restarts={}{}",
            r.index,
            if r.ready { "ready    " } else { "not ready" },
            r.address.as_deref().unwrap_or("-"),
            r.restarts,
            r.last_exit.as_deref().map(|e| format!(" last exit: {e}")).unwrap_or_default()
        );
    }
    println!("deploy config: {}", s.deploy_config);
    if let Some(c) = &s.inference_config {
        println!("inference config: {c}");
    }
}

fn print_endpoint(e: &EndpointStatus) {
    println!("endpoint {} (auth: {:?}, scoring: {} on the gateway)", e.name, e.auth, e.scoring_path);
    if let Some(uri) = &e.swagger_uri {
        println!("swagger: {uri} (on the gateway, OpenAPI)");
    }
    println!(
        "{:<16} {:<20} {:<10} {:>8} {:>10} {:>8} {:>10} {:>7} {:>9} {:>9}",
        "VERSION", "SERVICE", "ROLE", "TRAFFIC", "EFFECTIVE", "SHADOW", "REQUESTS", "ERRORS", "P50", "P99"
    );
    let ms = |v: Option<f64>| v.map_or("-".into(), |ms| format!("{ms:.2}ms"));
    for v in &e.versions {
        let (requests, errors, p50, p99) = match &v.stats {
            Some(s) => (s.requests.to_string(), format!("{:.1}%", s.error_rate * 100.0), ms(s.p50_ms), ms(s.p99_ms)),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<16} {:<20} {:<10} {:>8} {:>9.1}% {:>8} {:>10} {:>7} {:>9} {:>9}",
            format!("{}{}", v.name, if v.is_default { " (default)" } else { "" }),
            v.service,
            v.role,
            format!("{}", v.traffic_percentile),
            v.effective_percent,
            v.shadow_percent.map(|p| format!("{p}%")).unwrap_or_else(|| "-".into()),
            requests,
            errors,
            p50,
            p99
        );
    }
    let gateways = e.versions.iter().filter_map(|v| v.stats.as_ref().map(|s| s.gateways)).max().unwrap_or(0);
    println!(
        "traffic: as {gateways} gateway(s) counted it since they started (5xx answers are errors; latency to the replica's response headers)"
    );
}

pub fn service(home: &Path, client: &ClientArgs, cmd: ServiceCommand) -> anyhow::Result<()> {
    let api = AdminClient::new(home, client)?;
    block_on(async move {
        match cmd {
            ServiceCommand::Create { name, models, deploy_config, inference_config, wait, output } => {
                let request = CreateService {
                    name: name.clone(),
                    models,
                    deploy_config: read_opt(&deploy_config)?,
                    inference_config: read_opt(&inference_config)?,
                };
                let mut status: ServiceStatus = api.send(Method::POST, "/v1/services", Some(&request)).await?;
                warn_ignored(&status);
                if wait {
                    status = wait_ready(&api, &name).await?;
                }
                match output {
                    Output::Json => print_json(&status)?,
                    Output::Table => {
                        println!("service {name} created: {}", state_line(&status));
                        println!("score through the gateway at {}", status.scoring_path);
                    }
                }
            }
            ServiceCommand::List { output } => {
                let list: Vec<ServiceStatus> = api.get("/v1/services").await?;
                match output {
                    Output::Json => print_json(&list)?,
                    Output::Table => {
                        println!("{:<20} {:<14} {:>8} {:<30}", "NAME", "STATE", "REPLICAS", "MODELS");
                        for s in list {
                            let ready = s.replicas.iter().filter(|r| r.ready).count();
                            println!(
                                "{:<20} {:<14} {:>8} {:<30}",
                                s.name,
                                format!("{:?}", s.state),
                                format!("{ready}/{}", s.desired_replicas),
                                s.models.join(",")
                            );
                        }
                    }
                }
            }
            ServiceCommand::Show { name, output } => {
                let s: ServiceStatus = api.get(&format!("/v1/services/{name}")).await?;
                match output {
                    Output::Json => print_json(&s)?,
                    Output::Table => print_service(&s),
                }
            }
            ServiceCommand::State { name, output } => {
                let s: ServiceStatus = api.get(&format!("/v1/services/{name}")).await?;
                match output {
                    Output::Json => print_json(&serde_json::json!({
                        "name": s.name, "state": s.state, "reason": s.reason,
                        "desired_replicas": s.desired_replicas,
                        "ready_replicas": s.replicas.iter().filter(|r| r.ready).count(),
                        "autoscale": s.autoscale,
                    }))?,
                    Output::Table => println!("{}", state_summary(&s)),
                }
            }
            ServiceCommand::Logs { name, replica, follow, output } => {
                let print = |c: &LogChunk| -> anyhow::Result<()> {
                    match output {
                        Output::Json => println!("{}", serde_json::to_string(c)?),
                        Output::Table => {
                            for line in c.text.lines() {
                                println!("[replica {}] {line}", c.replica);
                            }
                        }
                    }
                    Ok(())
                };
                let query = |offsets: &[(usize, u64)], r: Option<usize>| {
                    let mut q = format!("/v1/services/{name}/logs?");
                    if let Some(r) = r {
                        q.push_str(&format!("replica={r}&"));
                        if let Some((_, o)) = offsets.iter().find(|(i, _)| *i == r) {
                            q.push_str(&format!("offset={o}"));
                        }
                    }
                    q
                };
                let chunks: Vec<LogChunk> = api.get(&query(&[], replica)).await?;
                let mut offsets: Vec<(usize, u64)> = Vec::new();
                for c in chunks {
                    print(&c)?;
                    offsets.push((c.replica, c.offset));
                }
                if !follow {
                    return Ok(());
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    for (index, offset) in offsets.iter_mut() {
                        let chunks: Vec<LogChunk> = api.get(&query(&[(*index, *offset)], Some(*index))).await?;
                        for c in chunks {
                            if !c.text.is_empty() {
                                print(&c)?;
                            }
                            *offset = c.offset;
                        }
                    }
                }
            }
            ServiceCommand::Update { name, models, deploy_config, inference_config, wait, output } => {
                let request = UpdateService {
                    models: (!models.is_empty()).then_some(models),
                    deploy_config: read_opt(&deploy_config)?,
                    inference_config: read_opt(&inference_config)?,
                };
                if request.models.is_none() && request.deploy_config.is_none() && request.inference_config.is_none() {
                    bail!("nothing to update: give --model, --deploy-config or --inference-config");
                }
                let status: ServiceStatus =
                    api.send(Method::PATCH, &format!("/v1/services/{name}"), Some(&request)).await?;
                warn_ignored(&status);
                let json = matches!(output, Output::Json);
                if !json {
                    println!("service {name}: generation {} rolling out", status.generation);
                }
                let status = if wait { wait_ready(&api, &name).await? } else { status };
                match output {
                    Output::Json => print_json(&status)?,
                    Output::Table if wait => println!("service {name}: {}", state_line(&status)),
                    Output::Table => {}
                }
            }
            ServiceCommand::Data { name, output } => {
                let d: sluice_control::ServiceData = api.get(&format!("/v1/services/{name}/data")).await?;
                match output {
                    Output::Json => print_json(&d)?,
                    Output::Table => {
                        let rate = d.sample_rate.map(|r| format!(", sampling {:.0}% of requests", r * 100.0));
                        println!(
                            "service {name}: {}",
                            if d.collecting {
                                format!("collecting model data{}", rate.unwrap_or_default())
                            } else {
                                "not collecting (set \"collect_model_data\": true in its deployment config)".into()
                            }
                        );
                        println!("data:   {}", d.usage.path.display());
                        println!("files:  {} ({} bytes)", d.usage.files, d.usage.bytes);
                        if let (Some(oldest), Some(newest)) = (&d.usage.oldest, &d.usage.newest) {
                            println!("from:   {oldest} to {newest}");
                        }
                        println!(
                            "layout: <model>/<version>/<inputs|predictions>/<yyyy>/<mm>/<dd>/*.jsonl, joined by request_id"
                        );
                        if let Some(note) = &d.note {
                            println!("note:   {note}");
                        }
                    }
                }
            }
            ServiceCommand::Delete { name, output } => {
                api.send::<()>(Method::DELETE, &format!("/v1/services/{name}"), None::<&()>).await?;
                match output {
                    Output::Json => print_json(&serde_json::json!({ "deleted": { "service": name } }))?,
                    Output::Table => println!("service {name} deleted"),
                }
            }
        }
        Ok(())
    })
}

pub fn endpoint(home: &Path, client: &ClientArgs, cmd: EndpointCommand) -> anyhow::Result<()> {
    let api = AdminClient::new(home, client)?;
    block_on(async move {
        let (shown, output): (EndpointStatus, Output) = match cmd {
            EndpointCommand::Create { name, version, auth, flags, output } => {
                let (version, service) = split_version(&version)?;
                let request = CreateEndpoint {
                    name,
                    auth: match auth {
                        AuthArg::Key => sluice_control::AuthMode::Key,
                        AuthArg::Token => sluice_control::AuthMode::Token,
                        AuthArg::None => sluice_control::AuthMode::None,
                    },
                    version: flags.change(version, Some(service)),
                };
                (api.send(Method::POST, "/v1/endpoints", Some(&request)).await?, output)
            }
            EndpointCommand::List { output } => {
                let list: Vec<EndpointStatus> = api.get("/v1/endpoints").await?;
                match output {
                    Output::Json => print_json(&list)?,
                    Output::Table => {
                        println!("{:<20} {:<8} {:>8}", "NAME", "AUTH", "VERSIONS");
                        for e in list {
                            println!("{:<20} {:<8} {:>8}", e.name, format!("{:?}", e.auth), e.versions.len());
                        }
                    }
                }
                return Ok(());
            }
            EndpointCommand::Show { name, output } => (api.get(&format!("/v1/endpoints/{name}")).await?, output),
            EndpointCommand::Delete { name, output } => {
                api.send::<()>(Method::DELETE, &format!("/v1/endpoints/{name}"), None::<&()>).await?;
                match output {
                    Output::Json => print_json(&serde_json::json!({ "deleted": { "endpoint": name } }))?,
                    Output::Table => println!("endpoint {name} deleted"),
                }
                return Ok(());
            }
            EndpointCommand::Version(VersionCommand::Add { endpoint, spec, flags, output }) => {
                let (version, service) = split_version(&spec)?;
                let change = flags.change(version, Some(service));
                (api.send(Method::POST, &format!("/v1/endpoints/{endpoint}/versions"), Some(&change)).await?, output)
            }
            EndpointCommand::Version(VersionCommand::Update { endpoint, name: version, service, flags, output }) => {
                let change = flags.change(version.clone(), service);
                let path = format!("/v1/endpoints/{endpoint}/versions/{version}");
                (api.send(Method::PATCH, &path, Some(&change)).await?, output)
            }
            EndpointCommand::Version(VersionCommand::Delete { endpoint, name: version, output }) => {
                let path = format!("/v1/endpoints/{endpoint}/versions/{version}");
                (api.send(Method::DELETE, &path, None::<&()>).await?, output)
            }
        };
        match output {
            Output::Json => print_json(&shown),
            Output::Table => {
                print_endpoint(&shown);
                Ok(())
            }
        }
    })
}

pub fn keys(home: &Path, client: &ClientArgs, cmd: KeysCommand) -> anyhow::Result<()> {
    let api = AdminClient::new(home, client)?;
    block_on(async move {
        match cmd {
            KeysCommand::Get { name, key, output } => {
                let keys: Keys = api.get(&format!("/v1/keys/{name}")).await?;
                match (key, output) {
                    (Some(KeyArg::Primary), _) => println!("{}", keys.primary_key),
                    (Some(KeyArg::Secondary), _) => println!("{}", keys.secondary_key),
                    (None, Output::Json) => print_json(&keys)?,
                    (None, Output::Table) => {
                        println!("primary:   {}\nsecondary: {}", keys.primary_key, keys.secondary_key)
                    }
                }
            }
            KeysCommand::Regen { name, key, value, output } => {
                let request = RegenerateKey {
                    key: match key {
                        KeyArg::Primary => KeyName::Primary,
                        KeyArg::Secondary => KeyName::Secondary,
                    },
                    value,
                };
                api.send::<()>(Method::POST, &format!("/v1/keys/{name}/regenerate"), Some(&request)).await?;
                match output {
                    Output::Json => {
                        print_json(&serde_json::json!({ "regenerated": { "name": name, "key": request.key } }))?
                    }
                    Output::Table => {
                        println!("{} key of {name} replaced; `sluice keys get {name}` shows it", request.key)
                    }
                }
            }
        }
        Ok(())
    })
}

pub fn token(home: &Path, client: &ClientArgs, cmd: TokenCommand) -> anyhow::Result<()> {
    let api = AdminClient::new(home, client)?;
    block_on(async move {
        let TokenCommand::Get { name, ttl, output } = cmd;
        let request = TokenRequest { ttl_seconds: ttl };
        let token: TokenResponse = api.send(Method::POST, &format!("/v1/tokens/{name}"), Some(&request)).await?;
        match output {
            Output::Json => print_json(&token)?,
            Output::Table => {
                let now = sluice_control::unix_now();
                println!("{}", token.access_token);
                eprintln!(
                    "expires in {} s; refresh by {} (unix time, in {} s)",
                    token.expires_on.saturating_sub(now),
                    token.refresh_by,
                    token.refresh_by.saturating_sub(now)
                );
            }
        }
        Ok(())
    })
}
