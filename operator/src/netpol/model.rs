//! Input model of the evaluator: namespaces, pods (or workloads) and connection endpoints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Protocol;

/// The label the API server puts on every namespace (`kubernetes.io/metadata.name: <name>`).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceInfo {
    /// Namespace name.
    pub name: String,
    /// Namespace labels. [`NAMESPACE_NAME_LABEL`] is added by the evaluator when missing.
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// A namespace with only the automatic name label.
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        let labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.clone())]);
        NamespaceInfo { name, labels }
    }
}

/// A container port declared by a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerPort {
    /// Port name (`containerPorts[].name`), target of named NetworkPolicy ports.
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
    /// Protocol (TCP when absent in the manifest).
    pub protocol: Protocol,
}

/// A pod, or a workload represented by its pod template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name (of the pod or the workload).
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod IPs (`status.podIPs`); matched by `ipBlock` peers. Empty for pod templates.
    pub ips: Vec<IpAddr>,
    /// Ports declared by the pod's containers.
    pub ports: Vec<ContainerPort>,
}

impl PodInfo {
    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Index of a pod in the evaluator (position in the `pods` passed to [`super::Evaluator::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(pub u32);

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A pod known to the evaluator.
    Pod(PodId),
    /// An address outside the cluster: no policies select it, only `ipBlock` peers match it.
    External(IpAddr),
}
