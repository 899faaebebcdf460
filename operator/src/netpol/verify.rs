//! Verification of a ServiceACL against the NetworkPolicies actually present.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use thiserror::Error;

use super::{
    ContainerPort, Decision, DirectionDecision, Endpoint, Evaluator, NamespaceInfo, NetpolError,
    PodInfo, Protocol,
};
use crate::acl::{self, AclError, HubTopology};
use crate::crd::service_acl::{MatrixEntry, ServiceAclSpec, Violation, ViolationKind};

/// Rule label used for traffic only the default action forbids.
pub const DEFAULT_ACTION_RULE: &str = "defaultAction";

/// Why verification could not run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The ACL itself is invalid.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// A NetworkPolicy in the namespace cannot be interpreted.
    #[error(transparent)]
    Netpol(#[from] NetpolError),
}

/// Result of [`verify`]: the effective matrix between the hub's services and the differences with
/// the ACL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    /// `{from, to, protocol, port, allowed}` for every ordered pair of distinct services and every
    /// TCP port the destination exposes; services are named by their service name.
    pub matrix: Vec<MatrixEntry>,
    /// Differences, sorted.
    pub violations: Vec<Violation>,
    /// Number of allowed edges in the ACL.
    pub allowed_edges: u32,
}

impl Verification {
    /// Whether the effective reachability matches the ACL.
    pub fn verified(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Compares the ACL (all specs of the hub, merged) with the effective reachability under
/// `policies` (every NetworkPolicy of the hub's namespace; others are harmless).
///
/// Each service is modelled as one pod carrying the contract labels and declaring its ports. Pods
/// have no IPs in this model, so `ipBlock` peers never match hub services. Checked:
/// - every allowed edge on each of its ports: blocked → `AllowBlocked`, naming the isolating
///   direction and the policies selecting the pod;
/// - every deny invariant on every exposed port (health included): reachable → `DenyReachable`,
///   naming a policy that allows it;
/// - every other pair and port (health excluded, it is governed by `metricsScrape`) against the
///   default action: reachable → `DenyReachable` with rule `defaultAction`;
/// - every entry of every service's compiled allowed-peers list against the allow rules
///   ([`acl::verify_l7`]): an entry no single rule covers → `PeerGrantTooWide`.
pub fn verify(
    acls: &[ServiceAclSpec],
    topology: &HubTopology,
    policies: &[NetworkPolicy],
) -> Result<Verification, VerifyError> {
    let compiled = acl::compile(topology, acls)?;
    let pods = model_pods(topology);
    let ev = Evaluator::new(
        vec![NamespaceInfo::named(&topology.namespace)],
        pods,
        policies,
    )?;
    let endpoint = |name: &str| ev.pod_id(&topology.namespace, name).map(Endpoint::Pod);

    let mut matrix = Vec::new();
    for from in &topology.services {
        for to in &topology.services {
            if from.name == to.name {
                continue;
            }
            let (Some(src), Some(dst)) = (endpoint(&from.name), endpoint(&to.name)) else {
                continue;
            };
            for (_, port) in to.exposed() {
                matrix.push(MatrixEntry {
                    from: from.name.clone(),
                    to: to.name.clone(),
                    protocol: Protocol::Tcp,
                    port,
                    allowed: ev.allowed(&src, &dst, port, Protocol::Tcp),
                });
            }
        }
    }

    let mut violations = BTreeSet::new();
    let mut covered: BTreeSet<(String, String, u16)> = BTreeSet::new();
    for e in &compiled.edges {
        let (Some(src), Some(dst)) = (endpoint(&e.from), endpoint(&e.to)) else {
            continue;
        };
        for &port in &e.ports {
            covered.insert((e.from.clone(), e.to.clone(), port));
            let d = ev.explain(&src, &dst, port, Protocol::Tcp);
            if !d.allowed() {
                let (policy, message) = blocked_reason(&d, &e.from, &e.to, port);
                violations.insert(Violation {
                    rule: e.rule_label(),
                    network_policy: policy,
                    from: e.from.clone(),
                    to: e.to.clone(),
                    port: Some(port),
                    kind: ViolationKind::AllowBlocked,
                    message,
                });
            }
        }
    }
    for d in &compiled.denies {
        let (Some(src), Some(dst), Some(target)) =
            (endpoint(&d.from), endpoint(&d.to), topology.service(&d.to))
        else {
            continue;
        };
        for (_, port) in target.exposed() {
            covered.insert((d.from.clone(), d.to.clone(), port));
            let dec = ev.explain(&src, &dst, port, Protocol::Tcp);
            if dec.allowed() {
                violations.insert(reachable(&d.rule, &dec, &d.from, &d.to, port));
            }
        }
    }
    for from in &topology.services {
        for to in &topology.services {
            let (Some(src), Some(dst)) = (endpoint(&from.name), endpoint(&to.name)) else {
                continue;
            };
            if from.name == to.name {
                continue;
            }
            for (_, port) in to.exposed() {
                if port == to.health_port
                    || covered.contains(&(from.name.clone(), to.name.clone(), port))
                {
                    continue;
                }
                let dec = ev.explain(&src, &dst, port, Protocol::Tcp);
                if dec.allowed() {
                    violations.insert(reachable(
                        DEFAULT_ACTION_RULE,
                        &dec,
                        &from.name,
                        &to.name,
                        port,
                    ));
                }
            }
        }
    }
    // L7: every service's allowed-peers list grants nothing the rules don't.
    for (name, svc) in &compiled.services {
        violations.extend(acl::verify_l7(topology, acls, name, &svc.allowed_peers));
    }
    Ok(Verification {
        matrix,
        violations: violations.into_iter().collect(),
        allowed_edges: compiled.allowed_edges(),
    })
}

fn blocked_reason(d: &Decision, from: &str, to: &str, port: u16) -> (Option<String>, String) {
    let mut parts = Vec::new();
    let mut policy = None;
    if let DirectionDecision::Denied(ps) = &d.egress {
        policy = policy.or_else(|| ps.first().cloned());
        parts.push(format!(
            "egress of {from} is isolated by [{}] and no rule allows {to}:{port}/TCP",
            ps.join(", ")
        ));
    }
    if let DirectionDecision::Denied(ps) = &d.ingress {
        policy = policy.or_else(|| ps.first().cloned());
        parts.push(format!(
            "ingress of {to} is isolated by [{}] and no rule allows {from} on {port}/TCP",
            ps.join(", ")
        ));
    }
    (policy, parts.join("; "))
}

fn reachable(rule: &str, d: &Decision, from: &str, to: &str, port: u16) -> Violation {
    let describe = |dir: &str, who: &str, dd: &DirectionDecision| match dd {
        DirectionDecision::NotIsolated => format!("no policy isolates {dir} of {who}"),
        DirectionDecision::Allowed(ps) => format!("{dir} of {who} allowed by [{}]", ps.join(", ")),
        DirectionDecision::Denied(ps) => format!("{dir} of {who} denied by [{}]", ps.join(", ")),
    };
    let first = |dd: &DirectionDecision| match dd {
        DirectionDecision::Allowed(ps) => ps.first().cloned(),
        _ => None,
    };
    Violation {
        rule: rule.to_string(),
        network_policy: first(&d.ingress).or_else(|| first(&d.egress)),
        from: from.to_string(),
        to: to.to_string(),
        port: Some(port),
        kind: ViolationKind::DenyReachable,
        message: format!(
            "{from} reaches {to}:{port}/TCP: {}; {}",
            describe("ingress", to, &d.ingress),
            describe("egress", from, &d.egress)
        ),
    }
}

/// One model pod per hub service, with the operator's labels and every port the service exposes:
/// what the evaluator checks the ACL against.
pub fn model_pods(topology: &HubTopology) -> Vec<PodInfo> {
    topology
        .services
        .iter()
        .map(|s| PodInfo {
            namespace: topology.namespace.clone(),
            name: s.name.clone(),
            labels: acl::service_labels(&topology.hub, &s.name),
            ips: Vec::new(),
            ports: s
                .exposed()
                .into_iter()
                .map(|(name, port)| ContainerPort {
                    name: Some(name),
                    port,
                    protocol: Protocol::Tcp,
                })
                .collect(),
        })
        .collect()
}
