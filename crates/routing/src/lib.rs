//! What the control plane and the gateway agree on: the routing configuration the control plane
//! publishes (services with their replica addresses, endpoints with their versions, auth policies
//! and public keys), the traffic split of an endpoint and the rules a split must obey. Both sides
//! depend on this crate and on nothing of each other; it does no I/O, so the control plane can
//! check a change with the very code the gateway will route it with.
#![forbid(unsafe_code)]

pub mod config;
pub mod report;
pub mod split;

pub use config::{AuthPolicy, EndpointRoute, EndpointVersion, GatewayConfig, ServiceRoute, TargetKind, token_audience};
pub use report::{GatewayReport, ServiceLoad, VersionReport, VersionStats};
pub use split::{Role, Split, SplitError, VersionSpec};

/// Pins a request to one version by name; also names the version that answered, on every response.
pub const VERSION_HEADER: &str = "x-sluice-version";
/// Routes a request by a stable hash of its value, so one user stays on one version.
pub const ROUTE_KEY_HEADER: &str = "x-sluice-route-key";

/// How a replica's Unix socket is written among its published addresses (`unix:/path/r0.sock`);
/// any other address is `host:port`. The gateway's connector (`sluice_http1::stream`) reads the
/// same prefix; a test in the gateway checks the two agree.
pub const UNIX_PREFIX: &str = "unix:";

/// The published address of a replica's Unix socket at `path`.
pub fn unix_address(path: &std::path::Path) -> String {
    format!("{UNIX_PREFIX}{}", path.display())
}

/// A seed from std's randomly keyed hasher: no RNG dependency for one number.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}
