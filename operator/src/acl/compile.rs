//! Merging and validation of ServiceACL specs, and the compiled result.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::l7::{self, Grant};
use super::peers::{AllowedPeer, AllowedPeers};
use super::policies;
use super::{AclError, HubTopology};
use crate::crd::service_acl::{AclPeer, AclPort, HttpRestriction, ServiceAclSpec};
use crate::netpol::{Cidr, Selector};

/// Longest Kubernetes object name the operator generates (contract: Names).
const MAX_NAME: usize = 63;

/// The L7 grant of one allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleGrant {
    /// Label of the rule.
    pub rule: String,
    /// What the rule allows at the HTTP level (unrestricted when the rule has no `http`).
    pub grant: Grant,
}

/// One allowed service-to-service edge after merging every rule with the same `from`/`to`: the
/// network level (ports) is the union of the rules, the HTTP level stays one grant per rule
/// (merging methods of one rule with prefixes of another would widen both).
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
    /// One HTTP grant per rule, in rule order; a request is allowed when one grant allows it.
    pub http: Vec<RuleGrant>,
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
    // One entry per rule: entries are OR-ed by the services, never combined.
    let mut peers: Vec<AllowedPeer> = edges
        .iter()
        .filter(|e| e.to == service)
        .flat_map(|e| {
            let spiffe_id = topology.service_spiffe_id(&e.from);
            e.http.iter().map(move |g| AllowedPeer {
                spiffe_id: spiffe_id.clone(),
                methods: g
                    .grant
                    .methods
                    .as_ref()
                    .map(|m| m.iter().cloned().collect()),
                path_prefixes: g
                    .grant
                    .path_prefixes
                    .as_ref()
                    .map(|p| p.iter().cloned().collect()),
            })
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
    peers.dedup();
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
            let grant = RuleGrant {
                grant: http_grant(&rule, a.http.as_ref())?,
                rule: rule.clone(),
            };
            let e = edges
                .entry((a.from.clone(), a.to.clone()))
                .or_insert_with(|| Edge {
                    rules: Vec::new(),
                    from: a.from.clone(),
                    to: a.to.clone(),
                    ports: BTreeSet::new(),
                    http: Vec::new(),
                });
            e.rules.push(rule);
            e.ports.extend(ports);
            e.http.push(grant);
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

/// Validates a rule's HTTP restriction into a grant. Absent lists mean any; present lists must be
/// non-empty and hold only valid methods and prefixes (contract: allowed-peers.json).
pub(super) fn http_grant(rule: &str, http: Option<&HttpRestriction>) -> Result<Grant, AclError> {
    let Some(h) = http else {
        return Ok(Grant::unrestricted());
    };
    let invalid = |field: &str, detail: String| AclError::InvalidHttp {
        rule: rule.to_string(),
        field: field.to_string(),
        detail,
    };
    let methods = match &h.methods {
        None => None,
        Some(ms) if ms.is_empty() => {
            return Err(invalid(
                "methods",
                "must not be empty (omit it to allow any method)".into(),
            ))
        }
        Some(ms) => {
            for (i, m) in ms.iter().enumerate() {
                l7::validate_method(m).map_err(|d| invalid(&format!("methods[{i}]"), d))?;
            }
            Some(ms.iter().cloned().collect::<BTreeSet<_>>())
        }
    };
    let path_prefixes = match &h.path_prefixes {
        None => None,
        Some(ps) if ps.is_empty() => {
            return Err(invalid(
                "pathPrefixes",
                "must not be empty (omit it to allow any path)".into(),
            ))
        }
        Some(ps) if ps.len() > l7::MAX_PREFIXES => {
            return Err(invalid(
                "pathPrefixes",
                format!("{} prefixes, more than {}", ps.len(), l7::MAX_PREFIXES),
            ))
        }
        Some(ps) => {
            for (i, p) in ps.iter().enumerate() {
                l7::validate_prefix(p).map_err(|d| invalid(&format!("pathPrefixes[{i}]"), d))?;
            }
            Some(ps.iter().cloned().collect::<BTreeSet<_>>())
        }
    };
    Ok(Grant {
        methods,
        path_prefixes,
    })
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
