//! NetworkPolicy builders for one service.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::compile::Merged;
use super::{service_labels, service_pod_selector, HubTopology, ServicePorts, DEVICE_HUB_SERVICE};
use crate::crd::service_acl::{AclPeer, AclPort, Protocol};

/// DNS port (UDP and TCP).
const DNS_PORT: u16 = 53;

fn meta(topology: &HubTopology, service: &str, suffix: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(format!("{}-{service}-{suffix}", topology.hub)),
        namespace: Some(topology.namespace.clone()),
        labels: Some(service_labels(&topology.hub, service)),
        ..ObjectMeta::default()
    }
}

fn both_types() -> Option<Vec<String>> {
    Some(vec!["Ingress".to_string(), "Egress".to_string()])
}

/// `<hub>-<svc>-default-deny`: selects the service's pods for ingress and egress, with no rule.
pub(super) fn default_deny(topology: &HubTopology, service: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(topology, service, "default-deny"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(service_pod_selector(&topology.hub, service)),
            policy_types: both_types(),
            ingress: None,
            egress: None,
        }),
    }
}

fn port(port: u16, proto: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some(proto.to_string()),
        end_port: None,
    }
}

fn tcp_ports<'a>(ports: impl IntoIterator<Item = &'a u16>) -> Option<Vec<NetworkPolicyPort>> {
    Some(ports.into_iter().map(|&p| port(p, Protocol::Tcp)).collect())
}

fn acl_ports(ports: &[AclPort]) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        ports
            .iter()
            .map(|p| port(p.port, p.protocol.unwrap_or_default()))
            .collect(),
    )
}

fn peer(p: &AclPeer) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: p.namespace_selector.clone(),
        pod_selector: p.pod_selector.clone(),
        ip_block: p.ip_block.clone(),
    }
}

fn service_peer(topology: &HubTopology, service: &str) -> Option<Vec<NetworkPolicyPeer>> {
    Some(vec![NetworkPolicyPeer {
        pod_selector: Some(service_pod_selector(&topology.hub, service)),
        ..NetworkPolicyPeer::default()
    }])
}

/// `<hub>-<svc>-acl`: exactly the allowed traffic of one service, every port with its protocol.
///
/// Ingress: from each allowed caller's pods (same namespace) on the edge's ports; from the operator
/// to device-hub's https port and every service's health port; from the `metricsScrape` peers to the health port; the ACL's
/// `ingress` rules. Egress: to each allowed target's pods on the edge's ports; DNS (UDP and TCP 53)
/// to pods in any namespace; the ACL's `egress` rules. The API server needs no rule (services do not
/// call it), kubelet probes are not subject to NetworkPolicy.
pub(super) fn acl_policy(
    topology: &HubTopology,
    svc: &ServicePorts,
    merged: &Merged,
) -> NetworkPolicy {
    let mut ingress = Vec::new();
    for e in merged.edges.iter().filter(|e| e.to == svc.name) {
        ingress.push(NetworkPolicyIngressRule {
            from: service_peer(topology, &e.from),
            ports: tcp_ports(&e.ports),
        });
    }
    // The operator reads every service's `/status` on the health port (which trust bundle a pod
    // has loaded, during CA rotation) and calls device-hub's API on its https port.
    let operator_ports: Vec<&u16> = if svc.name == DEVICE_HUB_SERVICE {
        vec![&svc.https_port, &svc.health_port]
    } else {
        vec![&svc.health_port]
    };
    ingress.push(NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(topology.operator.namespace_selector.clone()),
            pod_selector: Some(topology.operator.pod_selector.clone()),
            ip_block: None,
        }]),
        ports: tcp_ports(operator_ports),
    });
    if !merged.metrics_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(merged.metrics_from.iter().map(peer).collect()),
            ports: tcp_ports([&svc.health_port]),
        });
    }
    for r in merged.ingress.iter().filter(|r| r.service == svc.name) {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(r.peers.iter().map(peer).collect()),
            ports: acl_ports(&r.ports),
        });
    }

    let mut egress = Vec::new();
    for e in merged.edges.iter().filter(|e| e.from == svc.name) {
        egress.push(NetworkPolicyEgressRule {
            to: service_peer(topology, &e.to),
            ports: tcp_ports(&e.ports),
        });
    }
    egress.push(NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::new()),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![
            port(DNS_PORT, Protocol::Udp),
            port(DNS_PORT, Protocol::Tcp),
        ]),
    });
    for r in merged.egress.iter().filter(|r| r.service == svc.name) {
        egress.push(NetworkPolicyEgressRule {
            to: Some(r.peers.iter().map(peer).collect()),
            ports: acl_ports(&r.ports),
        });
    }

    NetworkPolicy {
        metadata: meta(topology, &svc.name, "acl"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(service_pod_selector(&topology.hub, &svc.name)),
            policy_types: both_types(),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}
