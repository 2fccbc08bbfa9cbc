//! The routing configuration a gateway serves: what the control plane publishes and the gateway
//! swaps in atomically. It holds key digests and public keys only, never a key or a signing key,
//! so a gateway's memory or a leaked configuration gives nobody a credential.

use serde::{Deserialize, Serialize};
use sluice_auth::{Jwks, KeyDigest};

/// Everything a gateway needs to route and authenticate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Increases with every change, so a poller can tell whether anything changed.
    pub generation: u64,
    pub services: Vec<ServiceRoute>,
    pub endpoints: Vec<EndpointRoute>,
    /// Public keys that verify tokens issued by the control plane.
    pub jwks: Jwks,
}

/// A deployed service: its models and the addresses of its ready replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    pub name: String,
    /// Model names the replicas serve; with exactly one, OIP routes under an endpoint are
    /// rewritten to it so every version answers the same client URL.
    pub models: Vec<String>,
    /// `host:port` of each ready replica.
    pub replicas: Vec<String>,
    pub auth: AuthPolicy,
    /// Requests one replica holds at once, admitted or waiting for admission (summed over its
    /// models); a gateway refuses more with 503 itself rather than send them to be refused.
    /// `None`: no limit at the gateway.
    #[serde(default)]
    pub replica_capacity: Option<u32>,
}

/// How callers prove who they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum AuthPolicy {
    /// `auth_enabled: false`.
    None,
    /// Either key works; only their SHA-256 digests travel.
    Keys { primary: KeyDigest, secondary: KeyDigest },
    /// A JWT issued by the control plane for this service or endpoint.
    Token,
}

/// An endpoint: versions with traffic shares in front of services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRoute {
    pub name: String,
    pub auth: AuthPolicy,
    pub versions: Vec<EndpointVersion>,
}

/// One version of an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointVersion {
    pub name: String,
    /// The service that answers for this version.
    pub service: String,
    pub traffic_percentile: f64,
    pub is_default: bool,
    pub is_control: bool,
    /// Share of requests mirrored to this version when it is the shadow.
    pub shadow_percent: Option<f64>,
}

impl EndpointVersion {
    /// The splitter's view of this version.
    pub fn split_spec(&self) -> crate::split::VersionSpec {
        crate::split::VersionSpec {
            name: self.name.clone(),
            traffic_percentile: self.traffic_percentile,
            is_default: self.is_default,
            is_control: self.is_control,
            shadow_percent: self.shadow_percent,
        }
    }
}

/// The audience claim of a token for a service or an endpoint.
pub fn token_audience(kind: TargetKind, name: &str) -> String {
    format!("{}:{name}", kind.as_str())
}

/// What a route names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Service,
    Endpoint,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Service => "service",
            TargetKind::Endpoint => "endpoint",
        }
    }
}
