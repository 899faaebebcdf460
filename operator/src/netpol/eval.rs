//! The pre-indexed NetworkPolicy evaluator.

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cidr::Cidr;
use super::model::{Endpoint, NamespaceInfo, PodId, PodInfo, NAMESPACE_NAME_LABEL};
use super::selector::Selector;
use super::{NetpolError, Protocol};

/// A fixed-size set of pod indices.
#[derive(Debug, Clone, Default)]
struct PodSet(Vec<u64>);

impl PodSet {
    fn new(n: usize) -> Self {
        PodSet(vec![0; n.div_ceil(64)])
    }

    fn insert(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone)]
enum PortMatch {
    /// Every port of the protocol (`port` absent).
    Any(Protocol),
    /// A numeric port or `port..=endPort`.
    Range(Protocol, u16, u16),
    /// A named port, resolved against the destination pod's container ports.
    Named(Protocol, String),
}

/// An `ipBlock` peer.
#[derive(Debug, Clone)]
struct IpBlockMatch {
    cidr: Cidr,
    except: Vec<Cidr>,
}

impl IpBlockMatch {
    fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One ingress or egress rule, with its peers pre-matched against every pod.
#[derive(Debug, Clone)]
struct Rule {
    /// Empty: every port and protocol.
    ports: Vec<PortMatch>,
    /// `from`/`to` absent or empty: every peer, in and outside the cluster.
    all_peers: bool,
    /// Pods matched by any peer (selectors, or an ipBlock containing a pod IP).
    pods: PodSet,
    /// ipBlock peers, for external endpoints.
    ip_blocks: Vec<IpBlockMatch>,
}

/// A compiled policy. `None` for a direction the policy does not apply to.
#[derive(Debug, Clone)]
struct Policy {
    key: String,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

/// Why one direction (egress at the source, ingress at the destination) allows or refuses a
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectionDecision {
    /// No policy selects the pod for this direction (or the endpoint is outside the cluster).
    NotIsolated,
    /// Allowed by these policies (`<namespace>/<name>`), each having a matching rule.
    Allowed(Vec<String>),
    /// The pod is isolated for this direction by these policies (all that select it) and none of
    /// their rules matches.
    Denied(Vec<String>),
}

impl DirectionDecision {
    /// Whether this direction lets the connection through.
    pub fn allows(&self) -> bool {
        !matches!(self, DirectionDecision::Denied(_))
    }
}

/// Full explanation of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Egress at the source.
    pub egress: DirectionDecision,
    /// Ingress at the destination.
    pub ingress: DirectionDecision,
}

impl Decision {
    /// Whether the connection is allowed (both directions allow it).
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// NetworkPolicy evaluator over a fixed set of namespaces, pods and policies.
#[derive(Debug, Clone)]
pub struct Evaluator {
    namespaces: Vec<NamespaceInfo>,
    pods: Vec<PodInfo>,
    policies: Vec<Policy>,
    /// Per pod: indices of policies isolating it for ingress.
    ingress_of: Vec<Vec<u32>>,
    /// Per pod: indices of policies isolating it for egress.
    egress_of: Vec<Vec<u32>>,
    by_key: HashMap<(String, String), PodId>,
}

impl Evaluator {
    /// Builds the evaluator. Namespaces referenced by pods or policies but not declared are created
    /// with only the `kubernetes.io/metadata.name` label; declared namespaces get that label too.
    /// Policies are evaluated in their `metadata.namespace` (`default` when absent).
    pub fn new(
        namespaces: Vec<NamespaceInfo>,
        pods: Vec<PodInfo>,
        policies: &[NetworkPolicy],
    ) -> Result<Self, NetpolError> {
        let mut namespaces = namespaces;
        let mut ns_index: HashMap<String, usize> = HashMap::new();
        for (i, ns) in namespaces.iter_mut().enumerate() {
            ns.labels
                .entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| ns.name.clone());
            ns_index.entry(ns.name.clone()).or_insert(i);
        }
        let policy_ns = policies.iter().map(policy_namespace);
        for name in pods.iter().map(|p| p.namespace.clone()).chain(policy_ns) {
            if !ns_index.contains_key(&name) {
                ns_index.insert(name.clone(), namespaces.len());
                namespaces.push(NamespaceInfo::named(name));
            }
        }
        // Namespace index of every pod, for selector matching.
        let pod_ns: Vec<usize> = pods
            .iter()
            .map(|p| ns_index.get(&p.namespace).copied().unwrap_or(0))
            .collect();

        let mut compiled = Vec::with_capacity(policies.len());
        let mut ingress_of = vec![Vec::new(); pods.len()];
        let mut egress_of = vec![Vec::new(); pods.len()];
        for np in policies {
            let ns = policy_namespace(np);
            let key = format!("{ns}/{}", np.metadata.name.as_deref().unwrap_or(""));
            let ctx = Ctx {
                key: &key,
                ns: &ns,
                namespaces: &namespaces,
                pods: &pods,
                pod_ns: &pod_ns,
            };
            let policy = ctx.compile(np)?;
            let idx = u32::try_from(compiled.len()).unwrap_or(u32::MAX);
            let spec = np.spec.clone().unwrap_or_default();
            let target = Selector::compile(&spec.pod_selector.clone().unwrap_or_default())
                .map_err(|detail| NetpolError::InvalidSelector {
                    policy: key.clone(),
                    detail,
                })?;
            for (i, pod) in pods.iter().enumerate() {
                if pod.namespace == ns && target.matches(&pod.labels) {
                    if policy.ingress.is_some() {
                        ingress_of[i].push(idx);
                    }
                    if policy.egress.is_some() {
                        egress_of[i].push(idx);
                    }
                }
            }
            compiled.push(policy);
        }
        let by_key = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    (p.namespace.clone(), p.name.clone()),
                    PodId(u32::try_from(i).unwrap_or(u32::MAX)),
                )
            })
            .collect();
        Ok(Evaluator {
            namespaces,
            pods,
            policies: compiled,
            ingress_of,
            egress_of,
            by_key,
        })
    }

    /// All namespaces (declared and implied).
    pub fn namespaces(&self) -> &[NamespaceInfo] {
        &self.namespaces
    }

    /// All pods, in the order given to [`Evaluator::new`].
    pub fn pods(&self) -> &[PodInfo] {
        &self.pods
    }

    /// The pod with this index.
    pub fn pod(&self, id: PodId) -> Option<&PodInfo> {
        self.pods.get(id.0 as usize)
    }

    /// Looks a pod up by namespace and name.
    pub fn pod_id(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.by_key
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// Every pod as an [`Endpoint`].
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        (0..self.pods.len()).map(|i| Endpoint::Pod(PodId(u32::try_from(i).unwrap_or(u32::MAX))))
    }

    /// `<namespace>/<name>` of every policy selecting the pod for ingress (`egress = false`) or egress.
    pub fn policies_selecting(&self, pod: PodId, egress: bool) -> Vec<String> {
        let table = if egress {
            &self.egress_of
        } else {
            &self.ingress_of
        };
        table
            .get(pod.0 as usize)
            .map(|ids| {
                ids.iter()
                    .filter_map(|&i| self.policies.get(i as usize))
                    .map(|p| p.key.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every numeric `(protocol, port)` that some egress rule names (the start of a range), sorted.
    pub fn egress_rule_ports(&self) -> Vec<(Protocol, u16)> {
        let mut out: Vec<(Protocol, u16)> = self
            .policies
            .iter()
            .flat_map(|p| p.egress.iter().flatten())
            .flat_map(|r| r.ports.iter())
            .filter_map(|m| match m {
                PortMatch::Range(proto, lo, _) => Some((*proto, *lo)),
                _ => None,
            })
            .collect();
        out.sort_by_key(|&(proto, port)| (port, proto));
        out.dedup();
        out
    }

    /// Whether a connection from `src` to `dst` on `port`/`proto` is allowed. A pod connecting to
    /// itself is always allowed (loopback is not subject to NetworkPolicy). Connections between two
    /// external addresses do not cross the cluster and are reported as allowed.
    pub fn allowed(&self, src: &Endpoint, dst: &Endpoint, port: u16, proto: Protocol) -> bool {
        if let (Endpoint::Pod(a), Endpoint::Pod(b)) = (src, dst) {
            if a == b {
                return true;
            }
        }
        let egress_ok = match src {
            Endpoint::Pod(id) => self
                .direction(&self.egress_of, *id, true, dst, dst, port, proto)
                .is_none_or(|v| v),
            Endpoint::External(_) => true,
        };
        egress_ok
            && match dst {
                Endpoint::Pod(id) => self
                    .direction(&self.ingress_of, *id, false, src, dst, port, proto)
                    .is_none_or(|v| v),
                Endpoint::External(_) => true,
            }
    }

    /// `None`: not isolated; `Some(allowed)` otherwise. `peer` is the other end, `dst` the
    /// destination (for named ports).
    #[allow(clippy::too_many_arguments)]
    fn direction(
        &self,
        table: &[Vec<u32>],
        pod: PodId,
        egress: bool,
        peer: &Endpoint,
        dst: &Endpoint,
        port: u16,
        proto: Protocol,
    ) -> Option<bool> {
        let ids = table.get(pod.0 as usize)?;
        if ids.is_empty() {
            return None;
        }
        Some(
            ids.iter()
                .any(|&i| self.policy_allows(i, egress, peer, dst, port, proto)),
        )
    }

    fn policy_allows(
        &self,
        i: u32,
        egress: bool,
        peer: &Endpoint,
        dst: &Endpoint,
        port: u16,
        proto: Protocol,
    ) -> bool {
        let Some(p) = self.policies.get(i as usize) else {
            return false;
        };
        let rules = if egress { &p.egress } else { &p.ingress };
        rules
            .iter()
            .flatten()
            .any(|r| self.port_matches(r, dst, port, proto) && peer_matches(r, peer))
    }

    fn port_matches(&self, rule: &Rule, dst: &Endpoint, port: u16, proto: Protocol) -> bool {
        rule.ports.is_empty()
            || rule.ports.iter().any(|m| match m {
                PortMatch::Any(p) => *p == proto,
                PortMatch::Range(p, lo, hi) => *p == proto && (*lo..=*hi).contains(&port),
                PortMatch::Named(p, name) => {
                    *p == proto
                        && match dst {
                            Endpoint::Pod(id) => self.pods.get(id.0 as usize).is_some_and(|pod| {
                                pod.ports.iter().any(|cp| {
                                    cp.port == port
                                        && cp.protocol == proto
                                        && cp.name.as_deref() == Some(name)
                                })
                            }),
                            Endpoint::External(_) => false,
                        }
                }
            })
    }

    /// Explains a connection: which direction allows or refuses it and which policies are involved.
    pub fn explain(&self, src: &Endpoint, dst: &Endpoint, port: u16, proto: Protocol) -> Decision {
        let side = |table: &[Vec<u32>], pod: &Endpoint, egress: bool, peer: &Endpoint| match pod {
            Endpoint::External(_) => DirectionDecision::NotIsolated,
            Endpoint::Pod(id) => {
                let ids = table.get(id.0 as usize).map(Vec::as_slice).unwrap_or(&[]);
                if ids.is_empty()
                    || matches!((src, dst), (Endpoint::Pod(a), Endpoint::Pod(b)) if a == b)
                {
                    return DirectionDecision::NotIsolated;
                }
                let allowing: Vec<String> = ids
                    .iter()
                    .filter(|&&i| self.policy_allows(i, egress, peer, dst, port, proto))
                    .filter_map(|&i| self.policies.get(i as usize).map(|p| p.key.clone()))
                    .collect();
                if allowing.is_empty() {
                    DirectionDecision::Denied(
                        ids.iter()
                            .filter_map(|&i| self.policies.get(i as usize).map(|p| p.key.clone()))
                            .collect(),
                    )
                } else {
                    DirectionDecision::Allowed(allowing)
                }
            }
        };
        Decision {
            egress: side(&self.egress_of, src, true, dst),
            ingress: side(&self.ingress_of, dst, false, src),
        }
    }
}

fn peer_matches(rule: &Rule, peer: &Endpoint) -> bool {
    rule.all_peers
        || match peer {
            Endpoint::Pod(id) => rule.pods.contains(id.0 as usize),
            Endpoint::External(ip) => rule.ip_blocks.iter().any(|b| b.contains(*ip)),
        }
}

fn policy_namespace(np: &NetworkPolicy) -> String {
    np.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

/// Compilation context of one policy.
struct Ctx<'a> {
    key: &'a str,
    ns: &'a str,
    namespaces: &'a [NamespaceInfo],
    pods: &'a [PodInfo],
    pod_ns: &'a [usize],
}

impl Ctx<'_> {
    fn compile(&self, np: &NetworkPolicy) -> Result<Policy, NetpolError> {
        let spec = np.spec.clone().unwrap_or_default();
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let (mut ingress_type, mut egress_type) = (false, false);
        match spec.policy_types.as_deref() {
            Some(types) if !types.is_empty() => {
                for t in types {
                    match t.as_str() {
                        "Ingress" => ingress_type = true,
                        "Egress" => egress_type = true,
                        other => {
                            return Err(NetpolError::InvalidPolicyType {
                                policy: self.key.to_string(),
                                value: other.to_string(),
                            })
                        }
                    }
                }
            }
            _ => {
                ingress_type = true;
                egress_type = has_egress_rules;
            }
        }
        let ingress = if ingress_type {
            let rules = spec.ingress.iter().flatten();
            Some(
                rules
                    .map(|r| self.rule(r.from.as_deref(), r.ports.as_deref()))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            None
        };
        let egress = if egress_type {
            let rules = spec.egress.iter().flatten();
            Some(
                rules
                    .map(|r| self.rule(r.to.as_deref(), r.ports.as_deref()))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            None
        };
        Ok(Policy {
            key: self.key.to_string(),
            ingress,
            egress,
        })
    }

    fn rule(
        &self,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
    ) -> Result<Rule, NetpolError> {
        let ports = ports
            .unwrap_or(&[])
            .iter()
            .map(|p| self.port(p))
            .collect::<Result<Vec<_>, _>>()?;
        let peers = peers.unwrap_or(&[]);
        let mut rule = Rule {
            ports,
            all_peers: peers.is_empty(),
            pods: PodSet::new(self.pods.len()),
            ip_blocks: Vec::new(),
        };
        for peer in peers {
            self.peer(peer, &mut rule)?;
        }
        Ok(rule)
    }

    fn peer(&self, peer: &NetworkPolicyPeer, rule: &mut Rule) -> Result<(), NetpolError> {
        let invalid = |detail: &str| NetpolError::InvalidPeer {
            policy: self.key.to_string(),
            detail: detail.to_string(),
        };
        let has_selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
        match (&peer.ip_block, has_selectors) {
            (Some(_), true) => Err(invalid(
                "ipBlock cannot be combined with podSelector/namespaceSelector",
            )),
            (None, false) => Err(invalid(
                "a peer needs podSelector, namespaceSelector or ipBlock",
            )),
            (Some(block), false) => {
                let parse = |s: &str| {
                    s.parse::<Cidr>().map_err(|_| NetpolError::InvalidCidr {
                        policy: self.key.to_string(),
                        cidr: s.to_string(),
                    })
                };
                let m = IpBlockMatch {
                    cidr: parse(&block.cidr)?,
                    except: block
                        .except
                        .iter()
                        .flatten()
                        .map(|s| parse(s))
                        .collect::<Result<_, _>>()?,
                };
                for (i, pod) in self.pods.iter().enumerate() {
                    if pod.ips.iter().any(|ip| m.contains(*ip)) {
                        rule.pods.insert(i);
                    }
                }
                rule.ip_blocks.push(m);
                Ok(())
            }
            (None, true) => {
                let sel = |s| {
                    Selector::compile(s).map_err(|detail| NetpolError::InvalidSelector {
                        policy: self.key.to_string(),
                        detail,
                    })
                };
                let ns_sel = peer.namespace_selector.as_ref().map(sel).transpose()?;
                let pod_sel = peer.pod_selector.as_ref().map(sel).transpose()?;
                let ns_ok: Vec<bool> = self
                    .namespaces
                    .iter()
                    .map(|ns| match &ns_sel {
                        None => ns.name == self.ns,
                        Some(s) => s.matches(&ns.labels),
                    })
                    .collect();
                for (i, pod) in self.pods.iter().enumerate() {
                    let in_ns = self
                        .pod_ns
                        .get(i)
                        .and_then(|&n| ns_ok.get(n))
                        .copied()
                        .unwrap_or(false);
                    if in_ns && pod_sel.as_ref().is_none_or(|s| s.matches(&pod.labels)) {
                        rule.pods.insert(i);
                    }
                }
                Ok(())
            }
        }
    }

    fn port(&self, p: &NetworkPolicyPort) -> Result<PortMatch, NetpolError> {
        let invalid = |detail: String| NetpolError::InvalidPort {
            policy: self.key.to_string(),
            detail,
        };
        let proto = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => {
                Protocol::parse(s).ok_or_else(|| invalid(format!("unknown protocol {s:?}")))?
            }
        };
        let to_port = |n: i32| {
            u16::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| invalid(format!("port {n} out of range")))
        };
        match (&p.port, p.end_port) {
            (None, None) => Ok(PortMatch::Any(proto)),
            (None, Some(_)) => Err(invalid("endPort without port".into())),
            (Some(IntOrString::Int(n)), end) => {
                let lo = to_port(*n)?;
                let hi = match end {
                    Some(e) => to_port(e)?,
                    None => lo,
                };
                if hi < lo {
                    return Err(invalid(format!("endPort {hi} below port {lo}")));
                }
                Ok(PortMatch::Range(proto, lo, hi))
            }
            (Some(IntOrString::String(name)), None) => Ok(PortMatch::Named(proto, name.clone())),
            (Some(IntOrString::String(name)), Some(_)) => {
                Err(invalid(format!("endPort with named port {name:?}")))
            }
        }
    }
}
