//! The few Docker Engine API calls the target makes, over the Engine's Unix socket.
//!
//! Paths carry no API version (`/containers/json`, not `/v1.41/containers/json`): the Engine
//! then speaks its own current version, and every field used here has been there since API 1.40
//! (Docker 19.03, `DeviceRequests`), while a pinned version would stop working once an Engine
//! drops it (Docker 29 refuses versions below 1.44).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::http::{self, Body, Response};
use crate::logs::demultiplex;
use sluice_http1::percent_encode;

/// Longest answer read from the Engine (a listing of many containers, a log tail).
const ANSWER_LIMIT: usize = 32 * 1024 * 1024;
/// How long an ordinary call may take before the Engine counts as not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Every way an Engine call fails.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the docker engine at {socket} is unreachable: {source}")]
    Unreachable {
        socket: String,
        #[source]
        source: sluice_http1::Error,
    },
    #[error("the docker engine did not answer {what} within {} s", .after.as_secs())]
    Timeout { what: String, after: Duration },
    /// The Engine answered with an error status; `message` is its own words.
    #[error("the docker engine refused {what} ({status}): {message}")]
    Refused { what: String, status: u16, message: String },
    #[error("unexpected answer from the docker engine to {what}: {detail}")]
    BadAnswer { what: String, detail: String },
}

impl EngineError {
    /// The Engine's status for a refusal; `None` when it did not answer at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::Refused { status, .. } => Some(*status),
            EngineError::Unreachable { .. } | EngineError::Timeout { .. } | EngineError::BadAnswer { .. } => None,
        }
    }

    /// The Engine's own message for a refusal, else the whole error.
    pub fn message(&self) -> String {
        match self {
            EngineError::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A container as the listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    /// Without the leading `/` the Engine puts there.
    pub name: String,
    pub labels: HashMap<String, String>,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited` or `dead`.
    pub state: String,
    /// The container's address on each network it is attached to (empty while not running).
    pub addresses: HashMap<String, String>,
}

/// How a stopped container's last run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: i64,
    pub oom_killed: bool,
    /// When it ended (RFC 3339): tells one exit from the next of the same container.
    pub finished_at: String,
    pub running: bool,
}

/// A Docker Engine reached over its Unix socket.
#[derive(Debug, Clone)]
pub struct Engine {
    addr: String,
}

impl Engine {
    /// The Engine listening on `socket` (nothing is sent until a call).
    pub fn new(socket: &Path) -> Engine {
        Engine { addr: format!("{}{}", sluice_http1::stream::UNIX_PREFIX, socket.display()) }
    }

    /// `GET /_ping`.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.call("GET", "/_ping", None, CALL_TIMEOUT).await.map(drop)
    }

    /// Whether a network named `name` exists.
    pub async fn network_exists(&self, name: &str) -> Result<bool, EngineError> {
        match self.call("GET", &format!("/networks/{}", percent_encode(name)), None, CALL_TIMEOUT).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge network (what tests and a single-host setup use).
    pub async fn create_network(&self, name: &str) -> Result<(), EngineError> {
        let body = serde_json::json!({ "Name": name, "Driver": "bridge", "CheckDuplicate": true });
        self.call_json("POST", "/networks/create", &body).await.map(drop)
    }

    /// Removes a network (no container may be attached).
    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        self.call("DELETE", &format!("/networks/{}", percent_encode(name)), None, CALL_TIMEOUT).await.map(drop)
    }

    /// Every container, running or not, matching `filters` (the Engine's filter map, e.g.
    /// `{"label": ["k=v"], "network": ["net"]}`).
    pub async fn list(&self, filters: &Value) -> Result<Vec<Container>, EngineError> {
        let target = format!("/containers/json?all=true&filters={}", percent_encode(&filters.to_string()));
        let answer = self.call("GET", &target, None, CALL_TIMEOUT).await?;
        parse_listing(&answer.body)
            .map_err(|detail| EngineError::BadAnswer { what: "the container listing".into(), detail })
    }

    /// Creates a container named `name` from the Engine's create body; returns its id.
    pub async fn create(&self, name: &str, body: &Value) -> Result<String, EngineError> {
        let target = format!("/containers/create?name={}", percent_encode(name));
        let answer = self.call_json("POST", &target, body).await?;
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "Id")]
            id: String,
        }
        serde_json::from_slice::<Created>(&answer.body)
            .map(|c| c.id)
            .map_err(|e| EngineError::BadAnswer { what: format!("creating {name}"), detail: e.to_string() })
    }

    /// Extracts the tar archive `tar` into the container's filesystem at `path` (a created
    /// container too, before it first starts). Owners and modes are the archive's.
    pub async fn put_archive(&self, id: &str, path: &str, tar: &[u8]) -> Result<(), EngineError> {
        let target = format!("/containers/{id}/archive?path={}", percent_encode(path));
        let body = Body { content_type: "application/x-tar", bytes: tar };
        self.call("PUT", &target, Some(body), CALL_TIMEOUT).await.map(drop)
    }

    /// Starts a created or stopped container; one already running is fine.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        match self.call("POST", &format!("/containers/{id}/start"), None, CALL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(304) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; a container already stopped is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let target = format!("/containers/{id}/stop?t={}", grace.as_secs());
        // The Engine answers once the container is gone: allow for the grace period.
        match self.call("POST", &target, None, grace + CALL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(304 | 404)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// SIGKILL; a container that is not running is fine.
    pub async fn kill(&self, id: &str) -> Result<(), EngineError> {
        match self.call("POST", &format!("/containers/{id}/kill"), None, CALL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a container (killing it first if it runs) with its anonymous volumes; one already
    /// gone is fine.
    ///
    /// The volumes matter: the image declares `VOLUME /data`, so each replica container gets one
    /// holding the models it fetched, which the Engine would otherwise keep forever.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        match self.call("DELETE", &format!("/containers/{id}?force=true&v=true"), None, CALL_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The Engine's whole description of a container (`GET /containers/{id}/json`).
    pub async fn inspect(&self, id: &str) -> Result<Value, EngineError> {
        let answer = self.call("GET", &format!("/containers/{id}/json"), None, CALL_TIMEOUT).await?;
        serde_json::from_slice(&answer.body)
            .map_err(|e| EngineError::BadAnswer { what: format!("inspecting {id}"), detail: e.to_string() })
    }

    /// Whether a volume named `name` exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool, EngineError> {
        match self.call("GET", &format!("/volumes/{}", percent_encode(name)), None, CALL_TIMEOUT).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// How the container's last run ended.
    pub async fn exit(&self, id: &str) -> Result<Exit, EngineError> {
        let answer = self.call("GET", &format!("/containers/{id}/json"), None, CALL_TIMEOUT).await?;
        parse_exit(&answer.body).map_err(|detail| EngineError::BadAnswer { what: format!("inspecting {id}"), detail })
    }

    /// The last `tail` lines of the container's stdout and stderr, interleaved.
    /// The last `tail` lines of a container's output, or everything since `since` (Unix seconds).
    pub async fn logs(&self, id: &str, tail: usize, since: Option<u64>) -> Result<String, EngineError> {
        let target = match since {
            Some(t) => format!("/containers/{id}/logs?stdout=1&stderr=1&since={t}"),
            None => format!("/containers/{id}/logs?stdout=1&stderr=1&tail={tail}"),
        };
        let answer = self.call("GET", &target, None, CALL_TIMEOUT).await?;
        Ok(demultiplex(&answer.body))
    }

    /// Makes an image named `reference` (`repo:tag`) from a root filesystem archive, as
    /// `docker import` does; `changes` are Dockerfile instructions for its configuration
    /// (`ENTRYPOINT ["sluice"]`, `USER 10001:10001`).
    pub async fn import_image(&self, reference: &str, changes: &[&str], rootfs_tar: &[u8]) -> Result<(), EngineError> {
        let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
        let mut target = format!("/images/create?fromSrc=-&repo={}&tag={}", percent_encode(repo), percent_encode(tag));
        for change in changes {
            target.push_str("&changes=");
            target.push_str(&percent_encode(change));
        }
        let body = Body { content_type: "application/x-tar", bytes: rootfs_tar };
        let answer = self.call("POST", &target, Some(body), Duration::from_secs(120)).await?;
        // The answer is a stream of JSON progress messages; a failure is one with "error".
        let text = String::from_utf8_lossy(&answer.body);
        match text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|v| v.get("error").cloned()) {
            Some(error) => Err(EngineError::Refused {
                what: format!("importing {reference}"),
                status: answer.status,
                message: error.as_str().unwrap_or_default().to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Removes an image, also when tagged more than once.
    pub async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        let target = format!("/images/{}?force=true", percent_encode(reference));
        self.call("DELETE", &target, None, CALL_TIMEOUT).await.map(drop)
    }

    async fn call_json(&self, method: &str, target: &str, body: &Value) -> Result<Response, EngineError> {
        let bytes = body.to_string().into_bytes();
        self.call(method, target, Some(Body { content_type: "application/json", bytes: &bytes }), CALL_TIMEOUT).await
    }

    async fn call(
        &self,
        method: &str,
        target: &str,
        body: Option<Body<'_>>,
        timeout: Duration,
    ) -> Result<Response, EngineError> {
        let what = || format!("{method} {}", target.split('?').next().unwrap_or(target));
        let answer =
            match tokio::time::timeout(timeout, http::request(&self.addr, method, target, body, ANSWER_LIMIT)).await {
                Err(_) => return Err(EngineError::Timeout { what: what(), after: timeout }),
                Ok(Err(source)) => return Err(EngineError::Unreachable { socket: self.socket().to_owned(), source }),
                Ok(Ok(answer)) => answer,
            };
        if (200..300).contains(&answer.status) {
            return Ok(answer);
        }
        Err(EngineError::Refused { what: what(), status: answer.status, message: error_message(&answer.body) })
    }

    fn socket(&self) -> &str {
        self.addr.strip_prefix(sluice_http1::stream::UNIX_PREFIX).unwrap_or(&self.addr)
    }
}

/// The Engine's `{"message": "..."}`, or the body as text.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    }
}

fn parse_listing(body: &[u8]) -> Result<Vec<Container>, String> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "Id")]
        id: String,
        #[serde(rename = "Names", default)]
        names: Vec<String>,
        #[serde(rename = "Labels", default)]
        labels: Option<HashMap<String, String>>,
        #[serde(rename = "State", default)]
        state: String,
        #[serde(rename = "NetworkSettings", default)]
        network_settings: Option<Networks>,
    }
    #[derive(Deserialize)]
    struct Networks {
        #[serde(rename = "Networks", default)]
        networks: Option<HashMap<String, Endpoint>>,
    }
    #[derive(Deserialize)]
    struct Endpoint {
        #[serde(rename = "IPAddress", default)]
        ip: String,
    }
    let raw: Vec<Raw> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(raw
        .into_iter()
        .map(|r| Container {
            name: r.names.first().map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_default(),
            id: r.id,
            labels: r.labels.unwrap_or_default(),
            state: r.state,
            addresses: r
                .network_settings
                .and_then(|n| n.networks)
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, e)| !e.ip.is_empty())
                .map(|(net, e)| (net, e.ip))
                .collect(),
        })
        .collect())
}

fn parse_exit(body: &[u8]) -> Result<Exit, String> {
    #[derive(Deserialize)]
    struct Inspect {
        #[serde(rename = "State")]
        state: State,
    }
    #[derive(Deserialize)]
    struct State {
        #[serde(rename = "Running", default)]
        running: bool,
        #[serde(rename = "ExitCode", default)]
        exit_code: i64,
        #[serde(rename = "OOMKilled", default)]
        oom_killed: bool,
        #[serde(rename = "FinishedAt", default)]
        finished_at: String,
    }
    let i: Inspect = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(Exit {
        code: i.state.exit_code,
        oom_killed: i.state.oom_killed,
        finished_at: i.state.finished_at,
        running: i.state.running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_reads_names_labels_states_and_addresses() {
        // Trimmed from a Docker 20.10 answer.
        let body = br#"[
          {"Id":"aaa","Names":["/sluice-a-g3-0"],"Image":"sluice","State":"running","Status":"Up 2 minutes",
           "Labels":{"sluice.dev/service":"a","sluice.dev/generation":"3"},
           "NetworkSettings":{"Networks":{"sluice-net":{"IPAddress":"172.18.0.5","Gateway":"172.18.0.1"}}}},
          {"Id":"bbb","Names":["/sluice-a-g3-1"],"State":"exited","Status":"Exited (1) 3 seconds ago",
           "Labels":null,"NetworkSettings":{"Networks":{"sluice-net":{"IPAddress":""}}}}
        ]"#;
        let list = parse_listing(body).expect("listing");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "sluice-a-g3-0");
        assert_eq!(list[0].state, "running");
        assert_eq!(list[0].labels["sluice.dev/generation"], "3");
        assert_eq!(list[0].addresses["sluice-net"], "172.18.0.5");
        assert_eq!(list[1].state, "exited");
        assert!(list[1].labels.is_empty());
        assert!(list[1].addresses.is_empty(), "a stopped container has no address");
    }

    #[test]
    fn an_inspection_reads_the_exit() {
        let body = br#"{"Id":"x","State":{"Status":"exited","Running":false,"OOMKilled":true,"ExitCode":137,
            "StartedAt":"2025-01-01T00:00:00Z","FinishedAt":"2025-01-01T00:01:00.123Z"}}"#;
        let exit = parse_exit(body).expect("exit");
        assert_eq!(
            exit,
            Exit { code: 137, oom_killed: true, finished_at: "2025-01-01T00:01:00.123Z".into(), running: false }
        );
    }

    #[test]
    fn refusals_carry_the_engines_message() {
        assert_eq!(error_message(br#"{"message":"No such image: sluice:nope"}"#), "No such image: sluice:nope");
        assert_eq!(error_message(b"page not found\n"), "page not found");
    }
}
