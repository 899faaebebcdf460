//! `ServiceACL`: who may call whom inside a DeviceHub.
//!
//! A `ServiceACL` names a DeviceHub (`hubRef`) and lists the service-to-service edges that are
//! allowed (`allow`), edges that must never exist (`deny` invariants), traffic from outside the hub
//! into a service (`ingress`), traffic from a service to the outside (`egress`) and who may scrape the
//! health/metrics port (`metricsScrape`). Everything not allowed is denied (`defaultAction: Deny`).
//!
//! The operator compiles all ServiceACLs of a hub (see [`crate::acl::compile`]) into NetworkPolicies
//! and `allowed-peers.json` files, then verifies the effective reachability (see
//! [`crate::netpol::verify`]) and reports it in the status.
//!
//! The schema deliberately contains no CEL rules: the CRD must be accepted by Kubernetes 1.20.

use k8s_openapi::api::networking::v1::IPBlock;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;

/// Condition type set by the operator once the effective reachability was verified.
pub const CONDITION_VERIFIED: &str = "Verified";

/// Specification of a `ServiceACL`.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[kube(
    group = "meterpark.io",
    version = "v1alpha1",
    kind = "ServiceACL",
    plural = "serviceacls",
    singular = "serviceacl",
    namespaced,
    status = "ServiceAclStatus",
    shortname = "sacl",
    doc = "Service-to-service access control list of a DeviceHub, compiled into NetworkPolicies and mTLS allowed-peer lists.",
    printcolumn = r#"{"name":"Verified","type":"string","description":"Whether the effective reachability matches the ACL","jsonPath":".status.conditions[?(@.type==\"Verified\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","description":"Reason of the Verified condition","jsonPath":".status.conditions[?(@.type==\"Verified\")].reason"}"#,
    printcolumn = r#"{"name":"Edges","type":"integer","description":"Number of allowed service-to-service edges","jsonPath":".status.allowedEdges"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAclSpec {
    /// The DeviceHub (in the same namespace) whose services this ACL governs. Several ServiceACLs
    /// may reference the same hub; their rules are merged.
    pub hub_ref: HubRef,
    /// What happens to traffic no rule allows. Only `Deny` is supported: everything not listed in
    /// `allow`, `ingress`, `egress` or `metricsScrape` is refused.
    #[serde(default)]
    pub default_action: DefaultAction,
    /// Allowed service-to-service calls inside the hub (mTLS identity and network level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AllowRule>,
    /// Invariants: service pairs that must never be able to reach each other on any port. An
    /// `allow` rule contradicting a deny invariant is rejected, and the operator reports a violation
    /// if the effective NetworkPolicies let the traffic through anyway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
    /// Traffic from outside the hub (other pods, namespaces or IP ranges) into a hub service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Traffic from a hub service to destinations outside the hub (for example the HES endpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    /// Who may scrape the health/metrics port (8080) of every hub service. Absent: nobody outside
    /// the pod (kubelet probes need no policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_scrape: Option<MetricsScrape>,
}

/// Reference to a DeviceHub in the namespace of the ServiceACL.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HubRef {
    /// Name of the DeviceHub.
    pub name: String,
}

/// Action for traffic that no rule allows.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum DefaultAction {
    /// Refuse the traffic (the only supported action).
    #[default]
    Deny,
}

/// One allowed service-to-service edge.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AllowRule {
    /// Optional rule name, used in error messages and status violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Calling service (service name inside the hub, for example `iec61968-connector`).
    pub from: String,
    /// Called service (service name inside the hub, for example `device-hub`).
    pub to: String,
    /// TCP ports of the called service the caller may connect to. Absent or empty: the called
    /// service's `https` port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// Optional HTTP-level restrictions enforced by the called service on mTLS requests. A batch
    /// endpoint is checked as the single call it stands for: device-hub's `POST
    /// /v1/meters:batchDelete` needs `DELETE` on `/v1/meters/`, `POST /v1/meters:batch` needs `PUT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRestriction>,
}

/// HTTP-level (L7) restrictions of an allowed edge: any of `methods` on any path under any of
/// `pathPrefixes`. Several rules for the same caller and callee stay separate: each rule is one
/// grant, a request needs one rule allowing both its method and its path.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRestriction {
    /// Allowed HTTP methods (`GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE`, `OPTIONS`).
    /// Absent: any method; an empty list is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Option<Vec<String>>,
    /// Allowed request path prefixes, matched by whole path segments: `/v1/meters/SN-1` allows
    /// `/v1/meters/SN-1` and `/v1/meters/SN-1/...`, not `/v1/meters/SN-10`; a prefix ending in `/`
    /// allows everything below it. Each starts with `/`, has at most 256 printable ASCII
    /// characters without space, `%`, `?`, `#`, and no empty, `.` or `..` segment. Absent: any
    /// path; an empty list is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "path_prefixes_schema")]
    pub path_prefixes: Option<Vec<String>>,
}

fn methods_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "nullable": true,
        "minItems": 1,
        "maxItems": crate::acl::l7::METHODS.len(),
        "items": {"type": "string", "enum": crate::acl::l7::METHODS},
    })
}

fn path_prefixes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "nullable": true,
        "minItems": 1,
        "maxItems": crate::acl::l7::MAX_PREFIXES,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": crate::acl::l7::MAX_PREFIX_LEN,
            "pattern": crate::acl::l7::PREFIX_PATTERN,
        },
    })
}

/// A deny invariant: `from` must never reach `to`, on any port.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct DenyRule {
    /// Optional rule name, used in error messages and status violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Service that must not be able to connect.
    pub from: String,
    /// Service that must not be reachable from `from`.
    pub to: String,
}

/// Traffic from outside the hub into one hub service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Optional rule name, used in error messages and status violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hub service receiving the traffic.
    pub to: String,
    /// Sources allowed to connect (any of them).
    pub from: Vec<AclPeer>,
    /// Ports of the service the sources may connect to.
    pub ports: Vec<AclPort>,
}

/// Traffic from one hub service to destinations outside the hub.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Optional rule name, used in error messages and status violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Hub service opening the connections.
    pub from: String,
    /// Destinations the service may connect to (any of them).
    pub to: Vec<AclPeer>,
    /// Destination ports the service may connect to.
    pub ports: Vec<AclPort>,
}

/// A traffic peer outside the hub, with NetworkPolicy peer semantics: `podSelector` alone selects
/// pods in the hub's namespace, `namespaceSelector` alone all pods of the selected namespaces, both
/// together the selected pods of the selected namespaces; `ipBlock` an IP range. Exactly one of
/// `ipBlock` or the selectors must be set.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AclPeer {
    /// Selects namespaces by label (`{}` selects every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Selects pods by label (`{}` selects every pod of the selected namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Selects an IP range (CIDR) with optional excluded sub-ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IPBlock>,
}

/// A port with its protocol.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AclPort {
    /// Port number.
    pub port: u16,
    /// Transport protocol; `TCP` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// Source of metrics scraping of the health port (8080).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsScrape {
    /// Peers allowed to connect to the health port of every hub service (for example the
    /// Prometheus pods in the `monitoring` namespace).
    pub from: Vec<AclPeer>,
}

/// Transport protocol of a port (NetworkPolicy / Service protocol names).
#[derive(
    Serialize,
    Deserialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
    Default,
)]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a `ServiceACL`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAclStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; `Verified` is `True` when the effective reachability matches the ACL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Effective reachability between the hub's services, as computed from the NetworkPolicies in
    /// the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matrix: Vec<MatrixEntry>,
    /// Differences between the ACL and the effective reachability.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// Number of allowed service-to-service edges (one per from/to pair).
    #[serde(default)]
    pub allowed_edges: u32,
}

/// One cell of a reachability matrix.
#[derive(
    Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct MatrixEntry {
    /// Source (`<namespace>/<name>`, a service name, or an IP address).
    pub from: String,
    /// Destination (`<namespace>/<name>`, a service name, or an IP address).
    pub to: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// Whether the NetworkPolicies allow the connection.
    pub allowed: bool,
}

/// Kind of a difference between ACL and effective reachability.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum ViolationKind {
    /// Traffic that a deny invariant (or the default action) forbids is reachable.
    DenyReachable,
    /// Traffic that an allow rule permits is blocked by a NetworkPolicy.
    AllowBlocked,
    /// An allowed-peers.json entry grants a caller a (method, path) that no single allow rule
    /// grants.
    PeerGrantTooWide,
}

/// A difference between the ACL and the effective reachability.
#[derive(
    Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// The ACL rule concerned (its name, or `allow[i]`/`deny[i]`/`defaultAction`).
    pub rule: String,
    /// The NetworkPolicy responsible, when one can be named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<String>,
    /// Source service.
    pub from: String,
    /// Destination service.
    pub to: String,
    /// Destination port, when the violation concerns one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// What is wrong.
    pub kind: ViolationKind,
    /// Human-readable explanation (isolating direction, policies selecting the pods).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_expected_names_and_no_cel() {
        let crd = ServiceACL::crd();
        assert_eq!(crd.spec.group, "meterpark.io");
        assert_eq!(crd.spec.names.kind, "ServiceACL");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["sacl".to_string()][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let json = serde_json::to_string(&crd).unwrap_or_default();
        assert!(
            !json.contains("x-kubernetes-validations"),
            "no CEL rules allowed"
        );
        let cols: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(cols, ["Verified", "Reason", "Edges", "Age"]);
    }

    #[test]
    fn every_spec_property_has_a_description() {
        let crd = ServiceACL::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default();
        let mut missing = Vec::new();
        check_descriptions(
            &schema["openAPIV3Schema"]["properties"]["spec"],
            "spec",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "properties without description: {missing:?}"
        );
    }

    fn check_descriptions(v: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                if p.get("description").is_none() {
                    missing.push(here.clone());
                }
                // k8s-openapi types document themselves; only check our own structs deeply.
                if !matches!(k.as_str(), "namespaceSelector" | "podSelector" | "ipBlock") {
                    check_descriptions(p, &here, missing);
                }
            }
        }
        if let Some(items) = v.get("items") {
            check_descriptions(items, path, missing);
        }
    }

    /// Empty lists, empty or malformed prefixes and unknown methods are refused by the API server
    /// already (the operator refuses them too: `AclError::InvalidHttp`).
    #[test]
    fn http_restriction_schema_refuses_empty_and_malformed_entries() {
        let crd = ServiceACL::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default();
        let http = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["allow"]["items"]
            ["properties"]["http"]["properties"];
        assert_eq!(http["methods"]["minItems"], 1);
        assert_eq!(
            http["methods"]["items"]["enum"],
            serde_json::json!(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        );
        assert!(http["methods"]["description"].is_string());
        let prefix = &http["pathPrefixes"];
        assert_eq!(prefix["minItems"], 1);
        assert_eq!(prefix["items"]["minLength"], 1);
        assert_eq!(prefix["items"]["maxLength"], 256);
        assert_eq!(prefix["items"]["pattern"], crate::acl::l7::PREFIX_PATTERN);
        assert!(prefix["description"].is_string());
    }

    #[test]
    fn spec_parses_from_yaml() {
        let yaml = r#"
hubRef: {name: demo}
allow:
  - name: connector-to-hub
    from: iec61968-connector
    to: device-hub
    http: {methods: [POST], pathPrefixes: [/v1/events]}
deny:
  - {from: iec61968-connector, to: smoc-service}
ingress:
  - to: iec61968-connector
    from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 8090}]
metricsScrape:
  from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
"#;
        let spec: ServiceAclSpec = serde_saphyr::from_str(yaml).expect("valid yaml");
        assert_eq!(spec.default_action, DefaultAction::Deny);
        assert_eq!(spec.allow.len(), 1);
        assert_eq!(spec.ingress[0].ports[0].protocol, None);
    }
}
