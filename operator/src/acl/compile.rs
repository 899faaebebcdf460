//! Merging and validation of ServiceACL specs, and the compiled result.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::peers::{AllowedPeer, AllowedPeers};
use super::policies;
use super::{AclError, HubTopology};
use crate::crd::service_acl::{AclPeer, AclPort, HttpRestriction, ServiceAclSpec};
use crate::netpol::{Cidr, Selector};

/// Longest Kubernetes object name the operator generates (contract: Names).
const MAX_NAME: usize = 63;

/// One allowed service-to-service edge after merging every rule with the same `from`/`to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Labels of the rules that allow this edge.
    pub rules: Vec<String>,
    /// Calling service.
    pub from: String,
    /// Called service.
    pub to: String,
    /// TCP ports (union of the rules' ports).
    pub ports: BTreeSet<u16>,
    /// Merged L7 restriction; `None` in a dimension means unrestricted.
    pub methods: Option<BTreeSet<String>>,
    /// Merged path prefixes; `None` means any path.
    pub path_prefixes: Option<BTreeSet<String>>,
}

impl Edge {
    /// The edge's rule labels joined with `, `.
    pub fn rule_label(&self) -> String {
        self.rules.join(", ")
    }
}

/// A deny invariant after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyInvariant {
    /// Label of the deny rule.
    pub rule: String,
    /// Service that must not connect.
    pub from: String,
    /// Service that must not be reachable.
    pub to: String,
}

/// A rule from outside the hub (ingress or egress) after validation.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ExternalRule {
    pub service: String,
    pub peers: Vec<AclPeer>,
    pub ports: Vec<AclPort>,
}

/// Everything produced for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledService {
    /// `<hub>-<svc>-default-deny`: isolates the service's pods in both directions.
    pub default_deny: NetworkPolicy,
    /// `<hub>-<svc>-acl`: exactly the allowed traffic.
    pub acl: NetworkPolicy,
    /// Content of the service's `allowed-peers.json`.
    pub allowed_peers: AllowedPeers,
}

impl CompiledService {
    /// `allowed-peers.json` as text (deterministic).
    pub fn allowed_peers_json(&self) -> String {
        self.allowed_peers.to_json()
    }
}

/// The compiled ACL of one hub.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledAcl {
    /// Per service name (every service of the topology).
    pub services: BTreeMap<String, CompiledService>,
    /// Allowed service-to-service edges, sorted by `from`, `to`.
    pub edges: Vec<Edge>,
    /// Deny invariants.
    pub denies: Vec<DenyInvariant>,
}

impl CompiledAcl {
    /// Number of allowed edges (one per `from`/`to` pair).
    pub fn allowed_edges(&self) -> u32 {
        u32::try_from(self.edges.len()).unwrap_or(u32::MAX)
    }

    /// Every NetworkPolicy, in service order, default-deny first.
    pub fn network_policies(&self) -> Vec<NetworkPolicy> {
        self.services
            .values()
            .flat_map(|s| [s.default_deny.clone(), s.acl.clone()])
            .collect()
    }
}

/// The merged, validated rules of all ACLs of a hub.
#[derive(Debug, Clone, Default)]
pub(super) struct Merged {
    pub edges: Vec<Edge>,
    pub denies: Vec<DenyInvariant>,
    pub ingress: Vec<ExternalRule>,
    pub egress: Vec<ExternalRule>,
    pub metrics_from: Vec<AclPeer>,
}

/// Compiles every ServiceACL spec of one hub (several are merged) into NetworkPolicies and
/// allowed-peer lists. On error nothing is produced and the caller keeps the old policies.
pub fn compile(topology: &HubTopology, acls: &[ServiceAclSpec]) -> Result<CompiledAcl, AclError> {
    for svc in &topology.services {
        for suffix in ["default-deny", "acl"] {
            let name = format!("{}-{}-{suffix}", topology.hub, svc.name);
            if name.len() > MAX_NAME {
                return Err(AclError::NameTooLong {
                    name,
                    hub: topology.hub.clone(),
                    service: svc.name.clone(),
                });
            }
        }
    }
    let merged = merge(topology, acls)?;
    let mut services = BTreeMap::new();
    for svc in &topology.services {
        let compiled = CompiledService {
            default_deny: policies::default_deny(topology, &svc.name),
            acl: policies::acl_policy(topology, svc, &merged),
            allowed_peers: allowed_peers(topology, &svc.name, &merged.edges),
        };
        services.insert(svc.name.clone(), compiled);
    }
    Ok(CompiledAcl {
        services,
        edges: merged.edges,
        denies: merged.denies,
    })
}

fn allowed_peers(topology: &HubTopology, service: &str, edges: &[Edge]) -> AllowedPeers {
    let mut peers: Vec<AllowedPeer> = edges
        .iter()
        .filter(|e| e.to == service)
        .map(|e| AllowedPeer {
            spiffe_id: topology.service_spiffe_id(&e.from),
            methods: e.methods.as_ref().map(|m| m.iter().cloned().collect()),
            path_prefixes: e
                .path_prefixes
                .as_ref()
                .map(|m| m.iter().cloned().collect()),
        })
        .collect();
    if service == super::DEVICE_HUB_SERVICE {
        peers.push(AllowedPeer {
            spiffe_id: topology.operator_spiffe_id(),
            methods: None,
            path_prefixes: None,
        });
    }
    peers.sort();
    peers.dedup_by(|a, b| a.spiffe_id == b.spiffe_id);
    AllowedPeers {
        version: 1,
        service: service.to_string(),
        peers,
    }
}

/// Builds rule labels: the rule's name, or `<kind>[i]`; prefixed `acl[k].` when several ACLs.
struct Labeler {
    multi: bool,
}

impl Labeler {
    fn label(&self, acl: usize, kind: &str, idx: usize, name: Option<&String>) -> String {
        let base = match name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("{kind}[{idx}]"),
        };
        if self.multi {
            format!("acl[{acl}].{base}")
        } else {
            base
        }
    }
}

fn known_service<'a>(
    topology: &'a HubTopology,
    rule: &str,
    name: &str,
) -> Result<&'a super::ServicePorts, AclError> {
    topology
        .service(name)
        .ok_or_else(|| AclError::UnknownService {
            rule: rule.to_string(),
            service: name.to_string(),
            known: topology
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn exposed_list(svc: &super::ServicePorts) -> String {
    svc.exposed()
        .iter()
        .map(|(n, p)| format!("{p} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn merge(topology: &HubTopology, acls: &[ServiceAclSpec]) -> Result<Merged, AclError> {
    let lab = Labeler {
        multi: acls.len() > 1,
    };
    let mut merged = Merged::default();
    for acl in acls {
        if acl.hub_ref.name != topology.hub {
            return Err(AclError::WrongHub {
                expected: topology.hub.clone(),
                found: acl.hub_ref.name.clone(),
            });
        }
    }
    // Deny invariants first: allow rules are checked against all of them.
    for (k, acl) in acls.iter().enumerate() {
        for (i, d) in acl.deny.iter().enumerate() {
            let rule = lab.label(k, "deny", i, d.name.as_ref());
            known_service(topology, &rule, &d.from)?;
            known_service(topology, &rule, &d.to)?;
            if d.from == d.to {
                return Err(AclError::SelfEdge {
                    rule,
                    service: d.from.clone(),
                });
            }
            merged.denies.push(DenyInvariant {
                rule,
                from: d.from.clone(),
                to: d.to.clone(),
            });
        }
    }
    let mut edges: BTreeMap<(String, String), Edge> = BTreeMap::new();
    for (k, acl) in acls.iter().enumerate() {
        for (i, a) in acl.allow.iter().enumerate() {
            let rule = lab.label(k, "allow", i, a.name.as_ref());
            known_service(topology, &rule, &a.from)?;
            let target = known_service(topology, &rule, &a.to)?;
            if a.from == a.to {
                return Err(AclError::SelfEdge {
                    rule,
                    service: a.from.clone(),
                });
            }
            if let Some(d) = merged
                .denies
                .iter()
                .find(|d| d.from == a.from && d.to == a.to)
            {
                return Err(AclError::ContradictsDeny {
                    rule,
                    deny_rule: d.rule.clone(),
                    from: a.from.clone(),
                    to: a.to.clone(),
                });
            }
            let ports: BTreeSet<u16> = match a.ports.as_deref() {
                None | Some([]) => BTreeSet::from([target.https_port]),
                Some(ps) => ps.iter().copied().collect(),
            };
            if let Some(&port) = ports.iter().find(|&&p| !target.exposes(p)) {
                return Err(AclError::PortNotExposed {
                    rule,
                    service: target.name.clone(),
                    port,
                    exposed: exposed_list(target),
                });
            }
            let (methods, prefixes) = l7(a.http.as_ref());
            match edges.entry((a.from.clone(), a.to.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(Edge {
                        rules: vec![rule],
                        from: a.from.clone(),
                        to: a.to.clone(),
                        ports,
                        methods,
                        path_prefixes: prefixes,
                    });
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let e = o.get_mut();
                    e.rules.push(rule);
                    e.ports.extend(ports);
                    e.methods = union(e.methods.take(), methods);
                    e.path_prefixes = union(e.path_prefixes.take(), prefixes);
                }
            }
        }
        for (i, r) in acl.ingress.iter().enumerate() {
            let rule = lab.label(k, "ingress", i, r.name.as_ref());
            let target = known_service(topology, &rule, &r.to)?;
            check_peers(&rule, &r.from)?;
            check_ports(&rule, &r.ports)?;
            if let Some(p) = r.ports.iter().find(|p| !target.exposes(p.port)) {
                return Err(AclError::PortNotExposed {
                    rule,
                    service: target.name.clone(),
                    port: p.port,
                    exposed: exposed_list(target),
                });
            }
            merged.ingress.push(ExternalRule {
                service: r.to.clone(),
                peers: r.from.clone(),
                ports: r.ports.clone(),
            });
        }
        for (i, r) in acl.egress.iter().enumerate() {
            let rule = lab.label(k, "egress", i, r.name.as_ref());
            known_service(topology, &rule, &r.from)?;
            check_peers(&rule, &r.to)?;
            check_ports(&rule, &r.ports)?;
            merged.egress.push(ExternalRule {
                service: r.from.clone(),
                peers: r.to.clone(),
                ports: r.ports.clone(),
            });
        }
        if let Some(m) = &acl.metrics_scrape {
            let rule = lab.label(k, "metricsScrape", 0, Some(&"metricsScrape".to_string()));
            check_peers(&rule, &m.from)?;
            for p in &m.from {
                if !merged.metrics_from.contains(p) {
                    merged.metrics_from.push(p.clone());
                }
            }
        }
    }
    merged.edges = edges.into_values().collect();
    Ok(merged)
}

/// Splits an HTTP restriction into method and prefix sets; empty lists mean unrestricted.
fn l7(http: Option<&HttpRestriction>) -> (Option<BTreeSet<String>>, Option<BTreeSet<String>>) {
    let set = |v: Option<&Vec<String>>| {
        v.filter(|v| !v.is_empty())
            .map(|v| v.iter().cloned().collect())
    };
    match http {
        None => (None, None),
        Some(h) => (set(h.methods.as_ref()), set(h.path_prefixes.as_ref())),
    }
}

/// Union of two restrictions: unrestricted wins. Merging two rules for the same pair may widen
/// what each allowed alone (methods of one rule with prefixes of the other): the allowed-peers
/// format has one entry per caller.
fn union(a: Option<BTreeSet<String>>, b: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
    match (a, b) {
        (Some(mut a), Some(b)) => {
            a.extend(b);
            Some(a)
        }
        _ => None,
    }
}

fn check_ports(rule: &str, ports: &[AclPort]) -> Result<(), AclError> {
    if ports.is_empty() {
        return Err(AclError::InvalidRule {
            rule: rule.to_string(),
            detail: "ports must not be empty".into(),
        });
    }
    if ports.iter().any(|p| p.port == 0) {
        return Err(AclError::InvalidRule {
            rule: rule.to_string(),
            detail: "port 0 is not a valid port".into(),
        });
    }
    Ok(())
}

fn check_peers(rule: &str, peers: &[AclPeer]) -> Result<(), AclError> {
    let invalid = |detail: &str| AclError::InvalidRule {
        rule: rule.to_string(),
        detail: detail.to_string(),
    };
    if peers.is_empty() {
        return Err(invalid(
            "the peer list must not be empty (an empty list would match every peer)",
        ));
    }
    for p in peers {
        let selectors = p.namespace_selector.is_some() || p.pod_selector.is_some();
        match (&p.ip_block, selectors) {
            (Some(_), true) => return Err(invalid("a peer cannot combine ipBlock with selectors")),
            (None, false) => {
                return Err(invalid(
                    "a peer needs namespaceSelector, podSelector or ipBlock",
                ))
            }
            (Some(b), false) => {
                for c in std::iter::once(&b.cidr).chain(b.except.iter().flatten()) {
                    c.parse::<Cidr>().map_err(|_| AclError::InvalidCidr {
                        rule: rule.to_string(),
                        cidr: c.clone(),
                    })?;
                }
            }
            (None, true) => {
                for s in p.namespace_selector.iter().chain(p.pod_selector.iter()) {
                    Selector::compile(s).map_err(|detail| AclError::InvalidSelector {
                        rule: rule.to_string(),
                        detail,
                    })?;
                }
            }
        }
    }
    Ok(())
}
