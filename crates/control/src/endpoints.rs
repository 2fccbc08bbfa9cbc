//! Endpoints (versions with traffic shares in front of services), keys and tokens.
//!
//! Every endpoint change reads the endpoint, computes the change on a copy, checks it whole with the
//! splitter the gateway routes by (`sluice-routing`, so the control plane and the data plane agree
//! on what is valid) and stores it, all in one transaction that holds the write lock: concurrent
//! changes are applied one after another, none is lost, and a refused change leaves nothing
//! changed.

use sluice_auth::Claims;
use sluice_routing::{EndpointVersion, Split, TargetKind, token_audience};

use crate::model::{
    AuthMode, CreateEndpoint, EndpointSpec, EndpointStatus, KeyName, Keys, RegenerateKey, TokenRequest, TokenResponse,
    VersionChange, VersionStatus,
};
use crate::services::check_name_free;
use crate::store::Reads;
use crate::{ControlError, ControlPlane, REPORT_MAX_AGE, check_name, lock, timestamp, unix_now};

/// Applies `change` to `versions`: adds the version when `new`, else changes it.
fn apply(versions: &mut Vec<EndpointVersion>, change: &VersionChange, new: bool) -> Result<(), ControlError> {
    if change.control && change.treatment {
        return Err(ControlError::Invalid("--control and --treatment contradict each other".into()));
    }
    if change.shadow.is_some() && change.no_shadow {
        return Err(ControlError::Invalid("--shadow and --no-shadow contradict each other".into()));
    }
    if let Some(t) = change.traffic.filter(|t| !t.is_finite()) {
        return Err(ControlError::Invalid(format!("traffic must be a number within 0-100, got {t}")));
    }
    let index = if new {
        check_name("version", &change.name)?;
        if versions.iter().any(|v| v.name == change.name) {
            return Err(ControlError::Conflict(format!("version '{}' already exists", change.name)));
        }
        let service = change
            .service
            .clone()
            .ok_or_else(|| ControlError::Invalid(format!("version '{}' needs a service", change.name)))?;
        versions.push(EndpointVersion {
            name: change.name.clone(),
            service,
            traffic_percentile: 0.0,
            // The first version created is the default.
            is_default: versions.is_empty(),
            is_control: false,
            shadow_percent: None,
        });
        versions.len() - 1
    } else {
        versions
            .iter()
            .position(|v| v.name == change.name)
            .ok_or_else(|| ControlError::NotFound(format!("no version named '{}'", change.name)))?
    };
    let v = &mut versions[index];
    if let Some(service) = &change.service {
        v.service = service.clone();
    }
    if let Some(t) = change.traffic {
        v.traffic_percentile = t;
    }
    if let Some(p) = change.shadow {
        v.shadow_percent = Some(p);
    }
    if change.no_shadow {
        v.shadow_percent = None;
    }
    if change.treatment {
        v.is_control = false;
    }
    // Flags flip on the other versions: one default, one control.
    if change.default {
        for (i, other) in versions.iter_mut().enumerate() {
            other.is_default = i == index;
        }
    }
    if change.control {
        for (i, other) in versions.iter_mut().enumerate() {
            other.is_control = i == index;
        }
    }
    Ok(())
}

fn check_versions(versions: &[EndpointVersion]) -> Result<Split, ControlError> {
    let specs: Vec<_> = versions.iter().map(EndpointVersion::split_spec).collect();
    Split::new(&specs).map_err(|e| ControlError::Invalid(e.to_string()))
}

/// Fails unless every version's service exists (in `store`: inside the transaction that stores
/// the versions, so the service cannot be deleted in between).
fn check_services_exist(store: &impl Reads, versions: &[EndpointVersion]) -> Result<(), ControlError> {
    for v in versions {
        if store.service(&v.service)?.is_none() {
            return Err(ControlError::Invalid(format!(
                "version '{}' names service '{}', which does not exist",
                v.name, v.service
            )));
        }
    }
    Ok(())
}

fn no_endpoint(name: &str) -> ControlError {
    ControlError::NotFound(format!("no endpoint named '{name}'"))
}

impl ControlPlane {
    /// Creates an endpoint; of concurrent creates of one name, one succeeds and the others are
    /// refused (409).
    pub fn create_endpoint(&self, request: CreateEndpoint) -> Result<EndpointStatus, ControlError> {
        check_name("endpoint", &request.name)?;
        let mut versions = Vec::new();
        apply(&mut versions, &request.version, true)?;
        check_versions(&versions)?;
        let now = timestamp();
        let spec =
            EndpointSpec { name: request.name, auth: request.auth, versions, created_at: now.clone(), updated_at: now };
        let keys = Keys { primary_key: sluice_auth::generate_key(), secondary_key: sluice_auth::generate_key() };
        lock(&self.store).write(|tx| {
            check_name_free(tx, &spec.name)?;
            check_services_exist(tx, &spec.versions)?;
            tx.insert_endpoint(&spec, &keys)?;
            Ok::<_, ControlError>(())
        })?;
        tracing::info!(endpoint = %spec.name, "endpoint created");
        self.publish();
        Ok(status(spec))
    }

    /// Adds (`new`) or changes one version; the whole endpoint is checked before anything is stored.
    pub fn change_version(
        &self,
        endpoint: &str,
        change: VersionChange,
        new: bool,
    ) -> Result<EndpointStatus, ControlError> {
        let refused = |e: ControlError| match e {
            ControlError::Invalid(m) => {
                ControlError::Invalid(format!("endpoint '{endpoint}': change refused, nothing changed: {m}"))
            }
            other => other,
        };
        let spec = lock(&self.store).write(|tx| {
            let mut spec = tx.endpoint(endpoint)?.ok_or_else(|| no_endpoint(endpoint))?;
            apply(&mut spec.versions, &change, new).map_err(refused)?;
            check_services_exist(tx, &spec.versions).map_err(refused)?;
            check_versions(&spec.versions).map_err(refused)?;
            spec.updated_at = timestamp();
            tx.update_endpoint(&spec)?;
            Ok::<_, ControlError>(spec)
        })?;
        self.publish();
        Ok(status(spec))
    }

    /// Removes one version, which must not be the only one or the default.
    pub fn delete_version(&self, endpoint: &str, version: &str) -> Result<EndpointStatus, ControlError> {
        let spec = lock(&self.store).write(|tx| {
            let mut spec = tx.endpoint(endpoint)?.ok_or_else(|| no_endpoint(endpoint))?;
            let index = spec
                .versions
                .iter()
                .position(|v| v.name == version)
                .ok_or_else(|| ControlError::NotFound(format!("endpoint '{endpoint}' has no version '{version}'")))?;
            if spec.versions.len() == 1 {
                return Err(ControlError::Invalid(format!(
                    "version '{version}' is the only version of endpoint '{endpoint}'; delete the endpoint instead"
                )));
            }
            if spec.versions[index].is_default {
                return Err(ControlError::Invalid(format!(
                    "version '{version}' is the default of endpoint '{endpoint}'; make another version the default first"
                )));
            }
            spec.versions.remove(index);
            check_versions(&spec.versions)?;
            spec.updated_at = timestamp();
            tx.update_endpoint(&spec)?;
            Ok::<_, ControlError>(spec)
        })?;
        self.publish();
        Ok(status(spec))
    }

    pub fn delete_endpoint(&self, name: &str) -> Result<(), ControlError> {
        lock(&self.store).write(|tx| if tx.delete("endpoint", name)? { Ok(()) } else { Err(no_endpoint(name)) })?;
        self.publish();
        Ok(())
    }

    fn stored_endpoint(&self, name: &str) -> Result<EndpointStatus, ControlError> {
        lock(&self.store).endpoint(name)?.map(status).ok_or_else(|| no_endpoint(name))
    }

    pub fn endpoint_status(&self, name: &str) -> Result<EndpointStatus, ControlError> {
        self.stored_endpoint(name).map(|s| self.with_traffic(s))
    }

    pub fn list_endpoints(&self) -> Result<Vec<EndpointStatus>, ControlError> {
        Ok(lock(&self.store).endpoints()?.into_iter().map(status).map(|s| self.with_traffic(s)).collect())
    }

    /// Keeps a gateway's latest traffic report (replacing its previous one).
    pub fn record_gateway_report(&self, report: sluice_routing::GatewayReport) {
        self.record_load(&report.gateway, &report.services);
        let mut reports = lock(&self.gateway_reports);
        reports.retain(|_, (at, _)| at.elapsed() < REPORT_MAX_AGE);
        reports.insert(report.gateway.clone(), (std::time::Instant::now(), report));
    }

    /// `status` with each version's traffic, added up over the gateways that reported lately.
    fn with_traffic(&self, mut status: EndpointStatus) -> EndpointStatus {
        let reports = lock(&self.gateway_reports);
        let fresh: Vec<&sluice_routing::GatewayReport> =
            reports.values().filter(|(at, _)| at.elapsed() < REPORT_MAX_AGE).map(|(_, r)| r).collect();
        for v in &mut status.versions {
            v.stats = sluice_routing::report::version_stats(&fresh, &status.name, &v.name);
        }
        status
    }

    pub fn keys(&self, name: &str) -> Result<Keys, ControlError> {
        keys_of(&*lock(&self.store), name)
    }

    /// Replaces one key; the other stays valid, so callers can rotate without downtime.
    pub fn regenerate_key(&self, name: &str, request: RegenerateKey) -> Result<(), ControlError> {
        let value = match request.value {
            Some(v) => {
                sluice_auth::check_key_value(&v).map_err(|e| ControlError::Invalid(format!("key value: {e}")))?;
                v
            }
            None => sluice_auth::generate_key(),
        };
        lock(&self.store).write(|tx| {
            let (kind, _) = target(tx, name)?;
            let mut keys = keys_of(tx, name)?;
            match request.key {
                KeyName::Primary => keys.primary_key = value,
                KeyName::Secondary => keys.secondary_key = value,
            }
            tx.set_keys(kind.as_str(), name, &keys)?;
            Ok::<_, ControlError>(())
        })?;
        tracing::info!(target = name, key = %request.key, "key regenerated");
        self.publish();
        Ok(())
    }

    /// A signed token for a token-auth service or endpoint.
    pub fn issue_token(&self, name: &str, request: TokenRequest) -> Result<TokenResponse, ControlError> {
        let (kind, mode) = target(&*lock(&self.store), name)?;
        if mode != AuthMode::Token {
            return Err(ControlError::Invalid(format!(
                "{} '{name}' does not use token auth (set token_auth_enabled in its deployment config, or create the endpoint with --auth token)",
                kind.as_str()
            )));
        }
        let max = self.settings.token_ttl.as_secs().max(1);
        let ttl = request.ttl_seconds.unwrap_or(max);
        if ttl == 0 || ttl > max {
            return Err(ControlError::Invalid(format!("ttl_seconds must be within 1-{max}, got {ttl}")));
        }
        let iat = unix_now();
        let claims = Claims {
            iss: "sluice-control".into(),
            sub: "sluice-cli".into(),
            aud: token_audience(kind, name),
            iat,
            exp: iat + ttl,
        };
        Ok(TokenResponse {
            access_token: self.signer.sign(&claims),
            token_type: "Bearer".into(),
            expires_on: claims.exp,
            // Half the lifetime leaves the caller plenty of time to refresh.
            refresh_by: iat + ttl / 2,
        })
    }
}

/// Whether `name` is a service or an endpoint, and how it authenticates.
fn target(store: &impl Reads, name: &str) -> Result<(TargetKind, AuthMode), ControlError> {
    if let Some(s) = store.service(name)? {
        return Ok((TargetKind::Service, crate::services::auth_mode(&s.deploy_config)));
    }
    if let Some(e) = store.endpoint(name)? {
        return Ok((TargetKind::Endpoint, e.auth));
    }
    Err(ControlError::NotFound(format!("no service or endpoint named '{name}'")))
}

fn keys_of(store: &impl Reads, name: &str) -> Result<Keys, ControlError> {
    let (kind, _) = target(store, name)?;
    store
        .keys(kind.as_str(), name)?
        .ok_or_else(|| ControlError::Internal(format!("{} '{name}' has no keys", kind.as_str())))
}

fn status(spec: EndpointSpec) -> EndpointStatus {
    let shares: Vec<(String, f64)> = check_versions(&spec.versions)
        .map(|s| s.shares().map(|(n, _, share)| (n.to_owned(), share * 100.0)).collect())
        .unwrap_or_default();
    let versions = spec
        .versions
        .iter()
        .map(|v| VersionStatus {
            name: v.name.clone(),
            service: v.service.clone(),
            role: if v.shadow_percent.is_some() {
                "shadow"
            } else if v.is_control {
                "control"
            } else {
                "treatment"
            }
            .into(),
            is_default: v.is_default,
            traffic_percentile: v.traffic_percentile,
            effective_percent: shares.iter().find(|(n, _)| *n == v.name).map_or(0.0, |(_, s)| *s),
            shadow_percent: v.shadow_percent,
            stats: None,
        })
        .collect();
    EndpointStatus {
        scoring_path: format!("/endpoints/{}/score", spec.name),
        swagger_uri: Some(format!("/endpoints/{}/swagger.json", spec.name)),
        name: spec.name,
        auth: spec.auth,
        versions,
        created_at: spec.created_at,
        updated_at: spec.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(versions: &mut Vec<EndpointVersion>, name: &str, traffic: f64) -> Result<(), ControlError> {
        let change = VersionChange {
            name: name.into(),
            service: Some("s".into()),
            traffic: Some(traffic),
            ..Default::default()
        };
        apply(versions, &change, true)?;
        check_versions(versions).map(|_| ())
    }

    #[test]
    fn first_version_is_default_and_flags_flip() {
        let mut vs = Vec::new();
        add(&mut vs, "a", 0.0).expect("a");
        add(&mut vs, "b", 30.0).expect("b");
        assert!(vs[0].is_default && !vs[1].is_default);
        apply(&mut vs, &VersionChange { name: "b".into(), default: true, control: true, ..Default::default() }, false)
            .expect("flip");
        assert!(!vs[0].is_default && vs[1].is_default && vs[1].is_control);
        apply(&mut vs, &VersionChange { name: "a".into(), control: true, ..Default::default() }, false).expect("flip");
        assert!(vs[0].is_control && !vs[1].is_control, "the old control became a treatment");
    }

    #[test]
    fn refusals_name_the_problem() {
        let mut vs = Vec::new();
        add(&mut vs, "a", 60.0).expect("a");
        let err = add(&mut vs.clone(), "b", 50.0).expect_err("sum over 100");
        assert!(err.to_string().contains("more than 100"), "{err}");
        for i in 1..6 {
            add(&mut vs, &format!("v{i}"), 0.0).expect("up to six");
        }
        let err = add(&mut vs, "v7", 0.0).expect_err("seventh");
        assert!(err.to_string().contains("1 to 6 versions"), "{err}");
        let mut vs = Vec::new();
        add(&mut vs, "a", 0.0).expect("a");
        let err = apply(
            &mut vs,
            &VersionChange { name: "a".into(), control: true, treatment: true, ..Default::default() },
            false,
        )
        .expect_err("contradiction");
        assert!(err.to_string().contains("contradict"), "{err}");
    }
}
