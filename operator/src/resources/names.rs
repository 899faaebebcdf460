//! Object names, labels and identities (contract: docs/contracts.md, "Names", "Labels", "SPIFFE").

use std::collections::BTreeMap;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "mpm-operator";
/// Label keys the operator owns.
pub const LABEL_HUB: &str = "meterpark.io/hub";
pub const LABEL_SERVICE: &str = "meterpark.io/service";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Fixed ServiceAccount name in the operator's SPIFFE identity.
pub const OPERATOR_SA: &str = "mpm-operator";
/// Mount points inside service containers.
pub const TLS_DIR: &str = "/etc/mpm/tls";
pub const TRUST_DIR: &str = "/etc/mpm/trust";
pub const ACL_DIR: &str = "/etc/mpm/acl";
pub const CONFIG_DIR: &str = "/etc/mpm/config";
pub const JWKS_DIR: &str = "/etc/mpm/jwks";
pub const JWKS_CA_DIR: &str = "/etc/mpm/jwks-ca";
pub const DATA_DIR: &str = "/var/lib/mpm";
/// Keys inside the mounted objects.
pub const TRUST_BUNDLE_KEY: &str = "ca-bundle.pem";
pub const ALLOWED_PEERS_KEY: &str = "allowed-peers.json";
pub const CONFIG_KEY: &str = "config.json";
/// Fixed ports.
pub const HEALTH_PORT: u16 = 8080;
pub const INGEST_PORT: u16 = 8090;

/// `<hub>-<svc>`: ServiceAccount, Deployment, Service and PodDisruptionBudget.
pub fn object_name(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}")
}
pub fn tls_secret(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}-tls")
}
pub fn operator_client_secret(hub: &str) -> String {
    format!("{hub}-operator-client-tls")
}
pub fn ca_secret(hub: &str) -> String {
    format!("{hub}-ca")
}
pub fn next_ca_secret(hub: &str) -> String {
    format!("{hub}-ca-next")
}
pub fn trust_bundle(hub: &str) -> String {
    format!("{hub}-trust-bundle")
}
pub fn acl_config_map(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}-acl")
}
pub fn config_map(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}-config")
}
pub fn data_claim(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}-data")
}

/// `<hub>-<svc>-default-deny` and `<hub>-<svc>-acl`: the service's NetworkPolicies.
pub fn default_deny_policy(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}-default-deny")
}
pub fn acl_policy(hub: &str, svc: &str) -> String {
    format!("{hub}-{svc}-acl")
}

/// Kinds of the objects (and the identity) a hub owns, for collision checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnedKind {
    ServiceAccount,
    Deployment,
    Service,
    PodDisruptionBudget,
    Secret,
    ConfigMap,
    PersistentVolumeClaim,
    NetworkPolicy,
    /// A SPIFFE ID in a leaf certificate (not a Kubernetes object).
    SpiffeId,
}

impl std::fmt::Display for OwnedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ServiceAccount => "ServiceAccount",
            Self::Deployment => "Deployment",
            Self::Service => "Service",
            Self::PodDisruptionBudget => "PodDisruptionBudget",
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
            Self::PersistentVolumeClaim => "PersistentVolumeClaim",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::SpiffeId => "SPIFFE ID",
        })
    }
}

/// Every object (and the identity) one service of a hub owns, whether or not it exists yet
/// (a PodDisruptionBudget or data claim reserves its name even while the service does not need it).
/// contract: Names.
pub fn service_objects(
    hub: &str,
    svc: &str,
    trust_domain: &str,
    namespace: &str,
) -> Vec<(OwnedKind, String)> {
    let name = object_name(hub, svc);
    vec![
        (OwnedKind::ServiceAccount, name.clone()),
        (OwnedKind::Deployment, name.clone()),
        (OwnedKind::Service, name.clone()),
        (OwnedKind::PodDisruptionBudget, name.clone()),
        (OwnedKind::Secret, tls_secret(hub, svc)),
        (OwnedKind::ConfigMap, acl_config_map(hub, svc)),
        (OwnedKind::ConfigMap, config_map(hub, svc)),
        (OwnedKind::PersistentVolumeClaim, data_claim(hub, svc)),
        (OwnedKind::NetworkPolicy, default_deny_policy(hub, svc)),
        (OwnedKind::NetworkPolicy, acl_policy(hub, svc)),
        (
            OwnedKind::SpiffeId,
            spiffe_id(trust_domain, namespace, &name),
        ),
    ]
}

/// Objects that belong to the hub rather than one service. contract: Names.
pub fn hub_objects(hub: &str) -> Vec<(OwnedKind, String)> {
    vec![
        (OwnedKind::Secret, operator_client_secret(hub)),
        (OwnedKind::Secret, ca_secret(hub)),
        (OwnedKind::Secret, next_ca_secret(hub)),
        (OwnedKind::ConfigMap, trust_bundle(hub)),
    ]
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` (the format lives in `mpm_spiffe`, shared with the services).
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    mpm_spiffe::spiffe_id(trust_domain, namespace, service_account)
}

/// In-cluster HTTPS URL of a service.
pub fn service_url(hub: &str, svc: &str, namespace: &str, port: u16) -> String {
    format!("https://{}.{namespace}.svc:{port}", object_name(hub, svc))
}

/// DNS names a service's certificate covers (every way a peer can address its Service).
pub fn service_dns_names(hub: &str, svc: &str, namespace: &str) -> Vec<String> {
    let name = object_name(hub, svc);
    vec![
        name.clone(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
}

/// Pod selector of a service (immutable: never add keys here).
pub fn selector_labels(hub: &str, svc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_HUB.to_string(), hub.to_string()),
        (LABEL_SERVICE.to_string(), svc.to_string()),
    ])
}

/// Labels of every object belonging to one service.
pub fn service_labels(hub: &str, svc: &str) -> BTreeMap<String, String> {
    let mut labels = common_labels(hub, svc);
    labels.extend(selector_labels(hub, svc));
    labels
}

/// Labels of hub-level objects (trust bundle, CA, operator client certificate).
pub fn hub_labels(hub: &str) -> BTreeMap<String, String> {
    let mut labels = common_labels(hub, "device-hub-installation");
    labels.insert(LABEL_HUB.to_string(), hub.to_string());
    labels
}

fn common_labels(hub: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        ("app.kubernetes.io/instance".to_string(), hub.to_string()),
        ("app.kubernetes.io/component".to_string(), name.to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "meter-park".to_string(),
        ),
        (LABEL_MANAGED_BY.to_string(), FIELD_MANAGER.to_string()),
    ])
}

/// Label selector string that finds every object of a hub.
pub fn hub_selector(hub: &str) -> String {
    format!("{LABEL_HUB}={hub},{LABEL_MANAGED_BY}={FIELD_MANAGER}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(object_name("demo", "device-hub"), "demo-device-hub");
        assert_eq!(tls_secret("demo", "smoc-service"), "demo-smoc-service-tls");
        assert_eq!(
            spiffe_id("cluster.local", "park", "demo-device-hub"),
            "spiffe://cluster.local/ns/park/sa/demo-device-hub"
        );
        assert_eq!(
            service_url("demo", "device-hub", "park", 8443),
            "https://demo-device-hub.park.svc:8443"
        );
        let labels = service_labels("demo", "device-hub");
        assert_eq!(labels[LABEL_HUB], "demo");
        assert_eq!(labels[LABEL_SERVICE], "device-hub");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "mpm-operator");
    }
}
