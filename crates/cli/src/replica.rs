//! `sluice replica`: one replica of a service on a remote target (a Kubernetes pod, a Docker
//! container). It reads what to run from `SLUICE_REPLICA_SPEC`, fetches each model's bytes from
//! the control plane by content hash (checked against that hash before use, kept in the data
//! directory so a restart does not fetch again), and serves them like `sluice serve`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use sluice_control::target::{ReplicaModel, ReplicaSpec};
use sluice_serving::ModelSource;

use crate::serving::{FrontDoorArgs, TuningArgs, listing, run_server};

#[derive(Debug, clap::Args)]
pub struct ReplicaArgs {
    /// What to run, as JSON (a service's models by content hash and its configs); the control
    /// plane's target sets it.
    #[arg(long, env = sluice_control::target::REPLICA_SPEC_ENV, hide_env_values = true)]
    pub spec: String,
    /// The control plane the artifacts come from.
    #[arg(long, env = "SLUICE_CONTROL_URL")]
    pub control_url: String,
    /// File holding the gateway credential, which may read artifacts.
    #[arg(long, env = "SLUICE_CONTROL_TOKEN_FILE")]
    pub control_token_file: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "SLUICE_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "SLUICE_PORT", default_value_t = sluice_control::target::REPLICA_PORT)]
    pub port: u16,
    /// Attempts at fetching one model (about 25 s of backoff at the default) before the replica
    /// gives up and exits, for its target to start it again.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub fetch_attempts: u32,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
}

pub fn run(home: &Path, mut args: ReplicaArgs) -> anyhow::Result<()> {
    let spec: ReplicaSpec =
        serde_json::from_str(&args.spec).context("the replica spec (SLUICE_REPLICA_SPEC) is not valid")?;
    let token = std::fs::read_to_string(&args.control_token_file)
        .with_context(|| format!("reading the control plane credential {}", args.control_token_file.display()))?
        .trim()
        .to_owned();
    let control = args.control_url.trim_end_matches('/').to_owned();
    let config_dir = home.join("replica");
    std::fs::create_dir_all(&config_dir).with_context(|| format!("creating {}", config_dir.display()))?;
    // The configs go through the same readers and checks as `serve --deploy-config`.
    let deploy_config = config_dir.join("deploymentconfig.json");
    std::fs::write(&deploy_config, spec.deploy_config.to_string())?;
    args.tuning.deploy_config = Some(deploy_config);
    if let Some(inference) = &spec.inference_config {
        let path = config_dir.join("inference-config.json");
        std::fs::write(&path, inference.to_string())?;
        args.tuning.model_config = Some(path);
    }
    let fetching = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
    let artifacts = home.join("artifacts").join("sha256");
    std::fs::create_dir_all(&artifacts)?;
    let mut sources = Vec::with_capacity(spec.models.len());
    for model in &spec.models {
        let path = fetching.block_on(fetch(&http, &control, &token, model, &artifacts, args.fetch_attempts))?;
        sources.push(ModelSource {
            name: model.name.clone(),
            version: model.version.to_string(),
            path,
            format: model.format,
            config: model.config.clone(),
            signature: model.signature.clone(),
        });
    }
    drop(fetching);
    let mut config = args.tuning.serve_config(home, Vec::new())?;
    config.sources = sources;
    let limits = args.front_door.limits()?;
    let (service, generation) = (spec.service, spec.generation);
    run_server(&args.host, args.port, None, None, &args.tuning, limits, config, &service, |addr, repo| {
        format!(
            "sluice: replica of service '{service}' (generation {generation}) serving {} on http://{addr}",
            listing(repo)
        )
    })
}

/// The artifact of `model` in `dir`, fetched from the control plane unless a copy with the right
/// hash is there. Written to a temporary file, checked, then renamed: a partial or corrupt
/// download is never served.
async fn fetch(
    http: &reqwest::Client,
    control: &str,
    token: &str,
    model: &ReplicaModel,
    dir: &Path,
    attempts: u32,
) -> anyhow::Result<PathBuf> {
    let well_formed = model.sha256.len() == 64 && model.sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        bail!("model {}:{}: '{}' is not a SHA-256", model.name, model.version, model.sha256);
    }
    let dest = dir.join(&model.sha256);
    if dest.is_file() && file_sha256(&dest)? == model.sha256 {
        return Ok(dest);
    }
    let url = format!("{control}/v1/artifacts/sha256/{}", model.sha256);
    let mut pause = Duration::from_millis(250);
    for attempt in 1..=attempts {
        match download(http, &url, token, &dest, &model.sha256).await {
            Ok(()) => {
                tracing::info!(model = %model.name, version = model.version, sha256 = %model.sha256, bytes = model.size_bytes, "model fetched from the control plane");
                return Ok(dest);
            }
            // A refusal (wrong credential, unknown hash) does not get better by asking again.
            Err(Fetch::Refused(message)) => bail!("model {}:{}: {message}", model.name, model.version),
            Err(Fetch::Retry(message)) if attempt < attempts => {
                tracing::warn!(model = %model.name, attempt, error = %message, "fetching the model failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(Fetch::Retry(message)) => {
                bail!("model {}:{}: {message} (gave up after {attempts} attempts)", model.name, model.version)
            }
        }
    }
    unreachable!("the last attempt returns or fails")
}

enum Fetch {
    /// Worth trying again: the control plane unreachable or failing, a transfer cut short.
    Retry(String),
    Refused(String),
}

async fn download(http: &reqwest::Client, url: &str, token: &str, dest: &Path, sha256: &str) -> Result<(), Fetch> {
    let retry = |e: &dyn std::fmt::Display| Fetch::Retry(format!("fetching {url}: {e}"));
    let mut response = http.get(url).bearer_auth(token).send().await.map_err(|e| retry(&e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let message = format!("the control plane answered {status} for {url}: {}", body.trim());
        return Err(if status.is_server_error() { Fetch::Retry(message) } else { Fetch::Refused(message) });
    }
    let tmp = dest.with_extension("part");
    let mut file = std::fs::File::create(&tmp).map_err(|e| retry(&e))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| retry(&e))? {
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(|e| retry(&e))?;
    }
    file.sync_all().map_err(|e| retry(&e))?;
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Fetch::Retry(format!("the bytes from {url} have SHA-256 {got}, not {sha256}")));
    }
    std::fs::rename(&tmp, dest).map_err(|e| retry(&e))?;
    Ok(())
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
