//! The hub facts the compiler needs: namespace, services and their ports, the operator's access.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// contract: Ports — default `https` port (configurable per service).
pub const HTTPS_PORT: u16 = 8443;
/// contract: Ports — `health` port (fixed).
pub const HEALTH_PORT: u16 = 8080;
/// contract: Ports — `ingest` port of the connector (fixed).
pub const INGEST_PORT: u16 = 8090;
/// The service the operator calls (Meters API).
pub const DEVICE_HUB_SERVICE: &str = "device-hub";
/// contract: SPIFFE identities — the operator's fixed ServiceAccount name.
pub const OPERATOR_SERVICE_ACCOUNT: &str = "mpm-operator";

/// A named extra port of a service (for example `ingest` 8090 of the connector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// Port name (container/Service port name).
    pub name: String,
    /// Port number (TCP).
    pub port: u16,
}

/// One service of the hub and the TCP ports it exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePorts {
    /// Service name (`device-hub`, `iec61968-connector`, `smoc-service`, ...).
    pub name: String,
    /// The mTLS API port (`https`).
    pub https_port: u16,
    /// The plain-HTTP health/metrics port (`health`).
    pub health_port: u16,
    /// Further ports (`ingest` of the connector).
    pub extra_ports: Vec<NamedPort>,
}

impl ServicePorts {
    /// A service with the contract's default ports (https 8443, health 8080) and no extra port.
    pub fn new(name: impl Into<String>) -> Self {
        ServicePorts {
            name: name.into(),
            https_port: HTTPS_PORT,
            health_port: HEALTH_PORT,
            extra_ports: Vec::new(),
        }
    }

    /// Every exposed port with its name, sorted by number.
    pub fn exposed(&self) -> Vec<(String, u16)> {
        let mut v = vec![
            ("https".to_string(), self.https_port),
            ("health".to_string(), self.health_port),
        ];
        v.extend(self.extra_ports.iter().map(|p| (p.name.clone(), p.port)));
        v.sort_by_key(|(_, p)| *p);
        v.dedup_by_key(|(_, p)| *p);
        v
    }

    /// Whether the service exposes `port`.
    pub fn exposes(&self, port: u16) -> bool {
        self.exposed().iter().any(|(_, p)| *p == port)
    }
}

/// How the operator's pods are selected, for its access to device-hub's https port.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OperatorAccess {
    /// Selects the operator's namespace.
    pub namespace_selector: LabelSelector,
    /// Selects the operator's pods inside that namespace.
    pub pod_selector: LabelSelector,
}

/// Everything the compiler needs to know about one DeviceHub.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HubTopology {
    /// Namespace of the hub and its services.
    pub namespace: String,
    /// DeviceHub name.
    pub hub: String,
    /// SPIFFE trust domain (`cluster.local` by default).
    pub trust_domain: String,
    /// The hub's services.
    pub services: Vec<ServicePorts>,
    /// The operator's pods, allowed to call device-hub.
    pub operator: OperatorAccess,
}

impl HubTopology {
    /// The topology of a hub's resolved services: each service's https port, the health port, and
    /// the connector's ingest port.
    pub fn for_services(
        namespace: &str,
        hub: &str,
        trust_domain: &str,
        services: &[crate::resources::hub::ResolvedService],
        operator: OperatorAccess,
    ) -> Self {
        use crate::resources::hub::ServiceKind;
        HubTopology {
            namespace: namespace.to_string(),
            hub: hub.to_string(),
            trust_domain: trust_domain.to_string(),
            services: services
                .iter()
                .map(|s| ServicePorts {
                    https_port: s.port,
                    extra_ports: if s.kind == ServiceKind::Connector {
                        vec![NamedPort {
                            name: "ingest".into(),
                            port: INGEST_PORT,
                        }]
                    } else {
                        vec![]
                    },
                    ..ServicePorts::new(s.name.clone())
                })
                .collect(),
            operator,
        }
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServicePorts> {
        self.services.iter().find(|s| s.name == name)
    }

    /// SPIFFE ID of a service of this hub.
    pub fn service_spiffe_id(&self, service: &str) -> String {
        spiffe_id(
            &self.trust_domain,
            &self.namespace,
            &format!("{}-{service}", self.hub),
        )
    }

    /// SPIFFE ID of the operator (issued in the hub's namespace and trust domain).
    pub fn operator_spiffe_id(&self) -> String {
        spiffe_id(
            &self.trust_domain,
            &self.namespace,
            OPERATOR_SERVICE_ACCOUNT,
        )
    }
}

/// contract: SPIFFE identities — `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    crate::resources::names::spiffe_id(trust_domain, namespace, service_account)
}

/// contract: Labels — the labels of every object the operator creates for a service.
pub fn service_labels(hub: &str, service: &str) -> BTreeMap<String, String> {
    crate::resources::names::service_labels(hub, service)
}

/// contract: Labels — the pod selector of a service (`meterpark.io/hub` + `meterpark.io/service`).
pub fn service_pod_selector(hub: &str, service: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(crate::resources::names::selector_labels(hub, service)),
        match_expressions: None,
    }
}
