//! `DeviceHub`: one meter park installation (its microservices, their PKI and configuration).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;

/// Image used for the built-in services when neither the service nor the hub names one.
pub const DEFAULT_IMAGE: &str = concat!("localhost/mpm-services:", env!("CARGO_PKG_VERSION"));

/// The services every hub runs unless `includeDefaultServices` is false, with their binaries.
pub const DEFAULT_SERVICES: [&str; 3] = ["iec61968-connector", "device-hub", "smoc-service"];

/// A meter park installation: the operator provisions its microservices (ServiceAccount, Deployment,
/// Service, PodDisruptionBudget, configuration), runs a CA for it, issues every service an mTLS
/// certificate with a SPIFFE identity and rotates them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meterpark.io",
    version = "v1alpha1",
    kind = "DeviceHub",
    namespaced,
    status = "DeviceHubStatus",
    shortname = "dh",
    shortname = "hub",
    category = "meterpark",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Services","type":"string","description":"ready/declared services","jsonPath":".status.readyServices"}"#,
    printcolumn = r#"{"name":"Cert-Expiry","type":"date","priority":1,"jsonPath":".status.earliestCertificateExpiry"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHubSpec {
    /// Whether the hub runs the three built-in services (`iec61968-connector`, `device-hub`,
    /// `smoc-service`). Entries in `services` with those names override their defaults.
    #[serde(default = "default_true")]
    pub include_default_services: bool,

    /// Services of the hub. Entries named like a built-in service customise it; other names add
    /// services (for example a BFF or an API gateway), which then need an `image`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceSpec>,

    /// Image for the built-in services when a service does not set its own.
    /// Defaults to the mpm-services image matching the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// SPIFFE trust domain of the hub's identities (`spiffe://<trustDomain>/ns/<ns>/sa/<sa>`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,

    /// Certificate settings: lifetimes, renewal and the CA.
    #[serde(default)]
    pub certificates: CertificateSpec,

    /// The head-end system (HES) the connector receives meter events from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hes: Option<HesSpec>,

    /// JWT validation for smoc-service's query API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// One microservice of the hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service name: a DNS label, unique in the hub. Objects are named `<hub>-<name>`. Refused:
    /// names that make `<hub>-<name>` the operator's ServiceAccount `mpm-operator` (hub `mpm`,
    /// service `operator`), `operator-client` (its certificate Secret would be the operator's), and
    /// any name whose objects another hub of the namespace already owns (hub `a` with service
    /// `b-device-hub` against hub `a-b`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Whether the service runs. `false` removes a built-in service from the hub.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Container image (fully qualified, for example `registry.example/mpm/device-hub:1.2.3`).
    /// The pod runs with this service's identity and certificate, whatever the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Container command. Defaults to the built-in service's binary; other services use the image's
    /// entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Number of pods. A PodDisruptionBudget (minAvailable 1) is created when greater than 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// CPU and memory requests and limits. Defaults: requests 50m/32Mi, limits 500m/128Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// mTLS (HTTPS) port of the service.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: u16,

    /// Extra environment variables for the container (at most 100, unique names). Names `MPM_*`
    /// are the operator's. `valueFrom.secretKeyRef` may not name a Secret the operator manages
    /// (`<hub>-...-tls`, `<hub>-ca`, `<hub>-ca-next` of any hub in the namespace, a hub's
    /// `certificates.ca.secretRef`, Secrets labelled as the operator's). An entry named like a
    /// default (`RUST_LOG`) replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub env: Vec<EnvVar>,

    /// Extra labels on the service's objects and pods. Keys under `meterpark.io/` and
    /// `app.kubernetes.io/` are the operator's and refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on the service's objects and pods. Keys under `meterpark.io/` and
    /// `app.kubernetes.io/` and AppArmor/seccomp annotations are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Persistent storage for the service's own data. Without it, data lives in an `emptyDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
}

/// A PersistentVolumeClaim owned by one service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, for example `1Gi`.
    pub size: Quantity,
    /// Storage class; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Certificate life-cycle settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// Lifetime of leaf certificates, Go duration syntax (`24h`, `90m`). At least 10m.
    #[serde(default = "default_duration")]
    pub duration: String,
    /// How long before expiry a leaf is renewed. Defaults to a third of `duration`
    /// (renewal at 2/3 of the lifetime). Must be shorter than `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// The hub's certificate authority.
    #[serde(default)]
    pub ca: CaSpec,
}

/// Where the hub's CA comes from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSpec {
    /// Lifetime of a CA the operator generates (Go duration syntax). Default `8760h` (1 year).
    /// The CA is rotated automatically at 2/3 of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// A Secret in the hub's namespace holding a user-supplied CA (`tls.crt`, `tls.key`), as with
    /// cert-manager's CA issuer. Without it the operator generates the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Changing this value starts a CA rotation (any string, for example a date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_token: Option<String>,
}

/// A reference to a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
}

/// The head-end system.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HesSpec {
    /// Base URL of the HES (for example `https://hes.utility.example`).
    pub endpoint: String,

    /// How the HES authenticates on the connector's ingest port (8090). Without it the ingest port
    /// refuses every request (`401`, naming this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HesAuthSpec>,

    /// Requests per source (client IP address, or client certificate) the ingest port accepts.
    /// Default: 20 per second, bursts of 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<HesRateLimit>,
}

/// Exactly one way for the HES to authenticate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HesAuthSpec {
    /// A Secret in the hub's namespace whose key `token` (at least 16 characters) the HES sends as
    /// `Authorization: Bearer <token>` over plain HTTP. Exactly one of `tokenSecret` and
    /// `clientCaConfigMap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// A ConfigMap in the hub's namespace whose key `ca.crt` (PEM) holds the CAs the HES's client
    /// certificate must chain to. The ingest port then speaks TLS with the connector's own
    /// certificate (issued by the hub's CA) and requires a client certificate. Exactly one of
    /// `tokenSecret` and `clientCaConfigMap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_config_map: Option<String>,
}

/// A token bucket per ingest source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HesRateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 10000))]
    pub per_second: u32,
    /// Requests accepted at once after an idle period.
    #[schemars(range(min = 1, max = 100000))]
    pub burst: u32,
}

/// JWT bearer token validation for smoc-service's query API (Keycloak realm roles).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// A ConfigMap in the hub's namespace holding the JWKS (key `jwks.json`). Exactly one of
    /// `jwksConfigMap` and `jwksUrl` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_config_map: Option<String>,
    /// An `https://` URL serving the JWKS (the identity provider's certificate must chain to a
    /// public root CA, or to `jwksCaConfigMap`); refreshed every 5 minutes and on an unknown key
    /// id. smoc-service needs a ServiceACL egress rule to reach it. Exactly one of `jwksConfigMap`
    /// and `jwksUrl` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Only with `jwksUrl`, for an identity provider whose certificate comes from a private CA: a
    /// ConfigMap in the hub's namespace whose key `ca.crt` holds the PEM CA certificates it must
    /// chain to (instead of the public roots). A changed bundle is used from the next fetch on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_config_map: Option<String>,
}

/// Observed state of a DeviceHub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceHubStatus {
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `CertificatesReady`, `CARotationInProgress`,
    /// `IngestAuthenticated`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Ready services out of declared ones, for example `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_services: Option<String>,
    /// Per-service replicas and certificate.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// CAs in the trust bundle: fingerprints and expiry.
    #[serde(default)]
    pub certificate_authorities: Vec<CaStatus>,
    /// Earliest `notAfter` of the hub's leaf certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_certificate_expiry: Option<String>,
}

/// Observed state of one service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// Declared replicas.
    pub desired_replicas: i32,
    /// Ready pods.
    pub ready_replicas: i32,
    /// The service's leaf certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
}

/// A leaf certificate's identity and schedule (never key material).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// When the operator renews it, RFC 3339.
    pub renewal_time: String,
}

/// A CA of the hub's trust bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    /// SHA-256 fingerprint of the CA certificate (DER), hex.
    pub fingerprint: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// `Signing` (issues leaves now) or `Trusted` (only in the bundle).
    pub role: String,
}

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    1
}
fn default_port() -> u16 {
    8443
}
fn default_trust_domain() -> String {
    "cluster.local".to_string()
}
fn default_duration() -> String {
    "24h".to_string()
}

impl Default for CertificateSpec {
    fn default() -> Self {
        Self {
            duration: default_duration(),
            renew_before: None,
            ca: CaSpec::default(),
        }
    }
}
