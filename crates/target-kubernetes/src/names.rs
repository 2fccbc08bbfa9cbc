//! Kubernetes names and labels of a service's objects. Service names (1-63 of `[a-z0-9._-]`,
//! starting with a letter or digit) are not all valid object names (no `_` or `.` in a DNS-1123
//! label) or label values (which must end with a letter or digit), so each is made safe, and a
//! name that had to be altered or cut gets a hash of the original so that two services never
//! share one.

use sha2::{Digest, Sha256};
use sluice_control::target::GENERATION_LABEL;

pub use sluice_control::target::{MANAGED_BY, MANAGED_BY_LABEL};
/// Prefix of the per-model version labels (`models.sluice.dev/<model>: "<version>"`).
pub const MODEL_LABEL_PREFIX: &str = "models.sluice.dev/";
/// Annotation holding every model of the replica as `name:version,...`.
pub const MODELS_ANNOTATION: &str = "sluice.dev/models";
/// Annotation holding the exact service name (the label may be a made-safe form of it).
pub const SERVICE_ANNOTATION: &str = "sluice.dev/service";

/// Longest DNS-1123 label, label value and label-key name.
const MAX_LABEL: usize = 63;

/// The Deployment of `service`: `sluice-<service>`, a DNS-1123 label (so the pods' host names and
/// any Service made from it later fit too).
pub fn deployment_name(service: &str) -> String {
    let wanted = format!("sluice-{service}");
    let safe: String =
        wanted.chars().map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' }).collect();
    let safe_as_is = safe.len() <= MAX_LABEL && safe == wanted && !safe.ends_with('-');
    if safe_as_is { safe } else { with_hash(&safe, service) }
}

/// The value of [`SERVICE_LABEL`] for `service`: the name itself when it is a valid label value.
pub fn service_label_value(service: &str) -> String {
    if is_label_name(service) {
        return service.to_owned();
    }
    let safe: String = service
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    with_hash(&safe, service)
}

/// `models.sluice.dev/<model>` when `model` may be a label key's name part.
pub fn model_label_key(model: &str) -> Option<String> {
    is_label_name(model).then(|| format!("{MODEL_LABEL_PREFIX}{model}"))
}

/// The selector of every object the target manages.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// The generation a pod or Deployment carries in [`GENERATION_LABEL`] (0 when missing).
pub fn generation_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> u64 {
    labels.and_then(|l| l.get(GENERATION_LABEL)).and_then(|g| g.parse().ok()).unwrap_or(0)
}

/// A label value or label-key name: at most 63 of `[A-Za-z0-9_.-]`, starting and ending with a
/// letter or digit.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `safe` cut so that `-<8 hex of sha256(original)>` fits in 63 characters, with that suffix.
/// `safe` is ASCII and starts with a letter or digit.
fn with_hash(safe: &str, original: &str) -> String {
    let digest = Sha256::digest(original.as_bytes());
    let suffix = hex::encode(&digest[..4]);
    let head = &safe[..safe.len().min(MAX_LABEL - 1 - suffix.len())];
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() { suffix } else { format!("{head}-{suffix}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn plain_names_stay_as_they_are() {
        assert_eq!(deployment_name("iris"), "sluice-iris");
        assert_eq!(deployment_name("my-svc-2"), "sluice-my-svc-2");
        assert_eq!(service_label_value("iris"), "iris");
        assert_eq!(service_label_value("a.b_c"), "a.b_c");
        assert_eq!(model_label_key("Resnet_50.v2").as_deref(), Some("models.sluice.dev/Resnet_50.v2"));
    }

    #[test]
    fn altered_or_long_names_get_the_hash_of_the_original() {
        // `printf a_b | sha256sum` starts with 648fa9b3.
        assert_eq!(deployment_name("a_b"), "sluice-a-b-648fa9b3");
        // Two names that sanitize alike stay apart.
        assert_ne!(deployment_name("a_b"), deployment_name("a.b"));
        // A name ending with '.' or '_' is no label value.
        assert_eq!(service_label_value("svc_"), "svc-bdfed509");
        let long = "a".repeat(63);
        let name = deployment_name(&long);
        assert_eq!(name.len(), 63);
        assert!(name.starts_with("sluice-aaaa"));
        assert!(name.ends_with(&hex::encode(Sha256::digest(long.as_bytes()))[..8]));
        for service in ["a_b", "x.y.z", "svc_", &long, "0", "a-", "1_.-_2"] {
            assert!(is_dns_label(&deployment_name(service)), "{service} -> {}", deployment_name(service));
            assert!(is_label_name(&service_label_value(service)), "{service} -> {}", service_label_value(service));
        }
        assert_eq!(model_label_key("m-"), None);
        assert_eq!(model_label_key(&"m".repeat(64)), None);
    }
}
