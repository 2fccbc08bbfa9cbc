//! The CLI's side of the admin API: finds the control plane and its credential in the data
//! directory, sends requests, and turns error bodies into messages.

use std::path::Path;

use anyhow::{Context, bail};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the control plane is, for every command that talks to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Control plane URL [default: the one a running `sluice control` / `sluice up` recorded in the
    /// data directory, else http://127.0.0.1:8001].
    #[arg(long, env = "SLUICE_CONTROL_URL", global = true)]
    pub control_url: Option<String>,
    /// File holding the admin credential [default: control/admin-token in the data directory].
    /// For a control plane elsewhere, e.g. on Kubernetes: the chart's `<release>-tokens` Secret.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<std::path::PathBuf>,
}

/// The control plane's URL: `explicit`, else the one a running control plane recorded in the data
/// directory, else the default address.
pub fn control_url(home: &Path, explicit: Option<&str>) -> String {
    match explicit {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => std::fs::read_to_string(sluice_control::control_url_path(home))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "http://127.0.0.1:8001".to_owned()),
    }
}

/// An authenticated admin API client.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(home: &Path, args: &ClientArgs) -> anyhow::Result<Self> {
        let base = control_url(home, args.control_url.as_deref());
        let token = match &args.admin_token_file {
            Some(path) => sluice_control::read_secret(path)?,
            None => sluice_control::read_admin_token(home)?,
        };
        Ok(AdminClient { base, token, http: reqwest::Client::new() })
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the server's message.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.finish(request, &url).await
    }

    /// Sends `bytes` as the body (a model file), with `query` parameters.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        bytes: Vec<u8>,
    ) -> anyhow::Result<T> {
        let query: Vec<String> =
            query.iter().map(|(k, v)| format!("{k}={}", sluice_http1::percent_encode(v))).collect();
        let url = format!("{}{path}?{}", self.base, query.join("&"));
        let request = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes);
        self.finish(request, &url).await
    }

    async fn finish<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<T> {
        let response = request.send().await.with_context(|| {
            format!("cannot reach the control plane at {} (is `sluice control` or `sluice up` running?)", self.base)
        })?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message}");
        }
        // 204s carry no body; `()` and `Option` deserialize from `null`.
        let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
        serde_json::from_slice(bytes).with_context(|| format!("unexpected answer from {url}"))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(Method::GET, path, None::<&()>).await
    }
}
