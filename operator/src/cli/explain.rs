//! `mpm-operator explain`: why one service may or may not call another, and
//! `mpm-operator docs crd-reference`: every CRD field, generated from the schemas.
//!
//! `explain FROM TO` reads the hub (DeviceHub), every ServiceACL of the hub and every NetworkPolicy of
//! the namespace, then answers on three levels, exactly as the operator decides them:
//! 1. the ACL ([`crate::acl::compile`]): the `allow` rule(s) that permit the edge and their ports, or
//!    the `deny` invariant / `defaultAction` that forbids it;
//! 2. the mTLS identity check: whether the called service's `allowed-peers.json` lists the caller's
//!    SPIFFE ID (with its methods and path prefixes);
//! 3. the network ([`crate::netpol::Evaluator::explain`]): which NetworkPolicies allow or isolate
//!    the caller's egress and the callee's ingress on the port.
//!
//! Services are modelled, as in the operator's verification ([`crate::netpol::verify`]), as one pod
//! per service with the contract labels and ports.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::acl::{self, AclError, HubTopology, OperatorAccess};
use crate::crd::device_hub::DeviceHub;
use crate::crd::service_acl::{ServiceACL, ServiceAclSpec};
use crate::netpol::{Decision, DirectionDecision, Endpoint, Evaluator, NamespaceInfo, Protocol};
use crate::resources::hub::resolve_services;
use crate::resources::names;

/// Arguments of `explain`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ExplainArgs {
    /// Caller: a service name of `--hub` (`iec61968-connector`) or `<namespace>/<hub>-<service>`
    /// (the Deployment/Service name, for example `meter-park/park-iec61968-connector`).
    pub from: String,
    /// Called service, same forms as FROM.
    pub to: String,
    /// The DeviceHub, when FROM and TO are plain service names.
    #[arg(long)]
    pub hub: Option<String>,
    /// Namespace of `--hub` (default: the kubeconfig's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Destination port (default: the called service's `https` port).
    #[arg(long)]
    pub port: Option<u16>,
}

/// Arguments of `docs crd-reference`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct CrdReferenceArgs {
    /// Read the CRDs from this YAML file (for example `crds/meterpark.io.yaml`) instead of the
    /// definitions compiled into the binary (identical: `e2e/test` checks that `crds/` is current).
    #[arg(short = 'f', long = "filename")]
    pub filename: Option<PathBuf>,
}

/// Runs `explain` against the cluster and returns the text to print.
pub async fn run_explain(args: &ExplainArgs) -> anyhow::Result<String> {
    let client = Client::try_default().await?;
    let default_ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let from = parse_endpoint(&args.from, args.hub.as_deref(), &default_ns)?;
    let to = parse_endpoint(&args.to, args.hub.as_deref(), &default_ns)?;
    if from.namespace != to.namespace {
        bail!(
            "{} and {} are in different namespaces: a ServiceACL governs the services of one hub; \
             calls from outside a hub are `ingress` rules",
            args.from,
            args.to
        );
    }
    let ns = from.namespace.clone();
    let hubs: Vec<DeviceHub> = Api::<DeviceHub>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing DeviceHubs in {ns}"))?
        .items;
    let (hub, from_svc) = resolve_endpoint(&hubs, &from)?;
    let (to_hub, to_svc) = resolve_endpoint(&hubs, &to)?;
    if hub.name_any() != to_hub.name_any() {
        bail!(
            "{} belongs to hub {} and {} to hub {}: a ServiceACL governs the services of one hub",
            args.from,
            hub.name_any(),
            args.to,
            to_hub.name_any()
        );
    }
    let topology = hub_topology(hub, &ns)?;
    let acls: Vec<ServiceACL> = Api::<ServiceACL>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing ServiceACLs in {ns}"))?
        .items
        .into_iter()
        .filter(|a| a.spec.hub_ref.name == hub.name_any())
        .collect();
    let acl_names: Vec<String> = acls.iter().map(|a| a.name_any()).collect();
    let specs: Vec<ServiceAclSpec> = acls.into_iter().map(|a| a.spec).collect();
    let policies = Api::<NetworkPolicy>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing NetworkPolicies in {ns}"))?
        .items;
    let e = explain_call(&topology, &specs, &policies, &from_svc, &to_svc, args.port)?;
    Ok(render_explanation(&e, &acl_names))
}

/// A FROM/TO argument before the hub is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRef {
    /// Namespace of the hub.
    pub namespace: String,
    /// `Some(hub)` with a service name, or `None` with an object name `<hub>-<svc>`.
    pub hub: Option<String>,
    /// Service name (with a hub) or object name (without).
    pub name: String,
}

/// Parses `<svc>` (needs `--hub`) or `<namespace>/<hub>-<svc>`.
pub fn parse_endpoint(s: &str, hub: Option<&str>, namespace: &str) -> anyhow::Result<EndpointRef> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(EndpointRef {
                namespace: ns.to_string(),
                hub: hub
                    .map(str::to_string)
                    .filter(|h| name.starts_with(&format!("{h}-"))),
                name: match hub {
                    Some(h) => name
                        .strip_prefix(&format!("{h}-"))
                        .map(str::to_string)
                        .unwrap_or_else(|| name.to_string()),
                    None => name.to_string(),
                },
            })
        }
        Some(_) => bail!("{s:?}: expected <service> or <namespace>/<hub>-<service>"),
        None => match hub {
            Some(h) => Ok(EndpointRef {
                namespace: namespace.to_string(),
                hub: Some(h.to_string()),
                name: s.to_string(),
            }),
            None => bail!(
                "{s:?}: a plain service name needs --hub (or write <namespace>/<hub>-<service>)"
            ),
        },
    }
}

/// Finds the hub and the service name an endpoint denotes.
fn resolve_endpoint<'a>(
    hubs: &'a [DeviceHub],
    e: &EndpointRef,
) -> anyhow::Result<(&'a DeviceHub, String)> {
    for hub in hubs {
        let name = hub.name_any();
        if e.hub.as_ref().is_some_and(|h| h != &name) {
            continue;
        }
        let Ok(services) = resolve_services(&name, &hub.spec) else {
            continue;
        };
        for s in services {
            let matches = match &e.hub {
                Some(_) => s.name == e.name,
                None => names::object_name(&name, &s.name) == e.name,
            };
            if matches {
                return Ok((hub, s.name));
            }
        }
    }
    Err(match &e.hub {
        Some(h) if !hubs.iter().any(|x| &x.name_any() == h) => {
            anyhow!("DeviceHub {}/{h} not found", e.namespace)
        }
        Some(h) => anyhow!("DeviceHub {}/{h} has no service {}", e.namespace, e.name),
        None => anyhow!(
            "no DeviceHub in {} has a service named {} (<hub>-<service>)",
            e.namespace,
            e.name
        ),
    })
}

/// The hub as the ACL compiler sees it (ports as the operator configures them).
pub fn hub_topology(hub: &DeviceHub, namespace: &str) -> anyhow::Result<HubTopology> {
    let name = hub.name_any();
    let services = resolve_services(&name, &hub.spec).map_err(|e| {
        anyhow!(
            "DeviceHub {namespace}/{name} is invalid: {}",
            crate::resources::hub::describe(&e)
        )
    })?;
    // The operator access only shapes the policies the compiler generates; explain evaluates
    // the live ones.
    Ok(HubTopology::for_services(
        namespace,
        &name,
        &hub.spec.trust_domain,
        &services,
        OperatorAccess::default(),
    ))
}

/// The ACL's verdict on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclVerdict {
    /// Allowed by these rules on this port, with one L7 grant per rule (any of them applies).
    Allowed {
        rules: String,
        grants: Vec<acl::l7::Grant>,
    },
    /// The edge exists but not on this port.
    PortNotAllowed { rules: String, ports: Vec<u16> },
    /// A deny invariant forbids it.
    DeniedByInvariant { rule: String },
    /// No rule allows it: `defaultAction: Deny`.
    DeniedByDefault,
    /// The ACL does not compile (the previous policies stay in force).
    Invalid(String),
}

impl AclVerdict {
    /// Whether the ACL allows the call.
    pub fn allows(&self) -> bool {
        matches!(self, AclVerdict::Allowed { .. })
    }
}

/// Everything `explain` found about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub namespace: String,
    pub hub: String,
    pub from: String,
    pub to: String,
    pub port: u16,
    /// SPIFFE ID of the caller.
    pub from_id: String,
    pub acl: AclVerdict,
    /// Whether `<hub>-<to>-acl`'s allowed-peers.json lists the caller (`None`: ACL invalid).
    pub identity_allowed: Option<bool>,
    /// The NetworkPolicy decision (egress at the caller, ingress at the callee).
    pub network: Decision,
}

impl Explanation {
    /// Whether the call succeeds end to end (network, mTLS identity and ACL).
    pub fn allowed(&self) -> bool {
        self.acl.allows() && self.network.allowed() && self.identity_allowed == Some(true)
    }
}

/// Explains one call (pure).
pub fn explain_call(
    topology: &HubTopology,
    acls: &[ServiceAclSpec],
    policies: &[NetworkPolicy],
    from: &str,
    to: &str,
    port: Option<u16>,
) -> anyhow::Result<Explanation> {
    let target = topology
        .service(to)
        .ok_or_else(|| anyhow!("hub {} has no service {to}", topology.hub))?;
    if topology.service(from).is_none() {
        bail!("hub {} has no service {from}", topology.hub);
    }
    let port = port.unwrap_or(target.https_port);
    let from_id = topology.service_spiffe_id(from);

    let (acl_verdict, identity_allowed) = match acl::compile(topology, acls) {
        Err(e) => (AclVerdict::Invalid(acl_error_text(&e)), None),
        Ok(c) => {
            let edge = c.edges.iter().find(|e| e.from == from && e.to == to);
            let deny = c.denies.iter().find(|d| d.from == from && d.to == to);
            let verdict = match (edge, deny) {
                (_, Some(d)) => AclVerdict::DeniedByInvariant {
                    rule: d.rule.clone(),
                },
                (Some(e), None) if e.ports.contains(&port) => AclVerdict::Allowed {
                    rules: e.rule_label(),
                    grants: e.http.iter().map(|g| g.grant.clone()).collect(),
                },
                (Some(e), None) => AclVerdict::PortNotAllowed {
                    rules: e.rule_label(),
                    ports: e.ports.iter().copied().collect(),
                },
                (None, None) => AclVerdict::DeniedByDefault,
            };
            let listed = c
                .services
                .get(to)
                .is_some_and(|s| s.allowed_peers.peers.iter().any(|p| p.spiffe_id == from_id));
            (verdict, Some(listed))
        }
    };

    let pods = crate::netpol::model_pods(topology);
    let ev = Evaluator::new(
        vec![NamespaceInfo::named(&topology.namespace)],
        pods,
        policies,
    )
    .context("evaluating the NetworkPolicies of the namespace")?;
    let (Some(src), Some(dst)) = (
        ev.pod_id(&topology.namespace, from),
        ev.pod_id(&topology.namespace, to),
    ) else {
        bail!("internal: service pods missing from the evaluator");
    };
    let network = ev.explain(
        &Endpoint::Pod(src),
        &Endpoint::Pod(dst),
        port,
        Protocol::Tcp,
    );
    Ok(Explanation {
        namespace: topology.namespace.clone(),
        hub: topology.hub.clone(),
        from: from.to_string(),
        to: to.to_string(),
        port,
        from_id,
        acl: acl_verdict,
        identity_allowed,
        network,
    })
}

fn acl_error_text(e: &AclError) -> String {
    e.to_string()
}

fn direction(d: &DirectionDecision, what: &str, pod: &str) -> String {
    match d {
        DirectionDecision::NotIsolated => {
            format!("{what} of {pod}: allowed (no NetworkPolicy isolates it for {what})")
        }
        DirectionDecision::Allowed(p) => {
            format!("{what} of {pod}: allowed by NetworkPolicy {}", p.join(", "))
        }
        DirectionDecision::Denied(p) => format!(
            "{what} of {pod}: DENIED: isolated by NetworkPolicy {} and no rule matches",
            p.join(", ")
        ),
    }
}

/// Renders an explanation; `acl_names` are the hub's ServiceACL objects (for context).
pub fn render_explanation(e: &Explanation, acl_names: &[String]) -> String {
    let mut out = String::new();
    let verdict = if e.allowed() { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(
        out,
        "{verdict}: {} -> {} on port {}/TCP (hub {}/{})",
        e.from, e.to, e.port, e.namespace, e.hub
    );
    let acls = if acl_names.is_empty() {
        "no ServiceACL references this hub".to_string()
    } else {
        format!("ServiceACL {}", acl_names.join(", "))
    };
    let acl_line = match &e.acl {
        AclVerdict::Allowed { rules, grants } => {
            let join = |v: &Option<std::collections::BTreeSet<String>>| {
                v.as_ref().map_or_else(
                    || "any".to_string(),
                    |v| v.iter().cloned().collect::<Vec<_>>().join(","),
                )
            };
            let l7 = grants
                .iter()
                .map(|g| match (&g.methods, &g.path_prefixes) {
                    (None, None) => "any method, any path".to_string(),
                    (m, p) => format!("methods {}, paths {}", join(m), join(p)),
                })
                .collect::<Vec<_>>()
                .join(" | ");
            format!("allowed by rule {rules} ({l7})")
        }
        AclVerdict::PortNotAllowed { rules, ports } => format!(
            "DENIED: rule {rules} allows only port(s) {}",
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        AclVerdict::DeniedByInvariant { rule } => format!("DENIED by deny invariant {rule}"),
        AclVerdict::DeniedByDefault => {
            "DENIED by defaultAction: Deny (no allow rule for this pair)".to_string()
        }
        AclVerdict::Invalid(m) => format!("INVALID, the previous policies stay in force: {m}"),
    };
    let _ = writeln!(out, "  ACL ({acls}): {acl_line}");
    let id_line = match e.identity_allowed {
        Some(true) => format!(
            "{} lists {} in {}",
            names::acl_config_map(&e.hub, &e.to),
            e.from_id,
            names::ALLOWED_PEERS_KEY
        ),
        Some(false) => format!(
            "DENIED: {} does not list {} (the request gets 403 after the TLS handshake)",
            names::acl_config_map(&e.hub, &e.to),
            e.from_id
        ),
        None => "unknown (the ACL does not compile)".to_string(),
    };
    let _ = writeln!(out, "  mTLS identity: {id_line}");
    let _ = writeln!(
        out,
        "  network: {}",
        direction(&e.network.egress, "egress", &e.from)
    );
    let _ = writeln!(
        out,
        "  network: {}",
        direction(&e.network.ingress, "ingress", &e.to)
    );
    if e.acl.allows() != e.network.allowed() {
        let _ = writeln!(
            out,
            "  note: the ACL and the NetworkPolicies disagree; the ServiceACL status reports this as a violation"
        );
    }
    out
}

/// Runs `docs crd-reference` and returns the Markdown.
pub fn run_crd_reference(args: &CrdReferenceArgs) -> anyhow::Result<String> {
    let crds: Vec<Value> = match &args.filename {
        Some(path) => super::netpol::read_objects(path)?
            .into_iter()
            .filter(|o| o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
            .collect(),
        None => crate::crd::all()
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?,
    };
    if crds.is_empty() {
        bail!("no CustomResourceDefinition found");
    }
    Ok(crd_reference(&crds))
}

/// Markdown reference of every field of the CRDs (JSON values of `CustomResourceDefinition`s).
pub fn crd_reference(crds: &[Value]) -> String {
    let mut out = String::from(
        "# CRD reference\n\n\
         <!-- Generated by `mpm-operator docs crd-reference` from the CRD schemas \
         (crds/meterpark.io.yaml). Do not edit by hand. -->\n\n",
    );
    for crd in crds {
        let spec = &crd["spec"];
        let kind = spec["names"]["kind"].as_str().unwrap_or("?");
        let _ = writeln!(out, "- [{kind}](#{})", kind.to_lowercase());
    }
    for crd in crds {
        let spec = &crd["spec"];
        let kind = spec["names"]["kind"].as_str().unwrap_or("?");
        let group = spec["group"].as_str().unwrap_or("?");
        let short = spec["names"]["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        for version in spec["versions"].as_array().into_iter().flatten() {
            let v = version["name"].as_str().unwrap_or("?");
            let schema = &version["schema"]["openAPIV3Schema"];
            let _ = writeln!(out, "\n## {kind}\n");
            let _ = writeln!(
                out,
                "`apiVersion: {group}/{v}`, `kind: {kind}`, {} scope, plural `{}`{}.\n",
                spec["scope"].as_str().unwrap_or("?"),
                spec["names"]["plural"].as_str().unwrap_or("?"),
                if short.is_empty() {
                    String::new()
                } else {
                    format!(", short name `{short}`")
                }
            );
            // kube's placeholder for kinds without a doc comment says nothing: leave it out.
            if let Some(d) = schema["description"]
                .as_str()
                .filter(|d| !d.starts_with("Auto-generated derived type"))
            {
                let _ = writeln!(out, "{}\n", d.trim());
            }
            for part in ["spec", "status"] {
                let Some(s) = schema["properties"].get(part) else {
                    continue;
                };
                let _ = writeln!(out, "### {kind} `.{part}`\n");
                out.push_str("| Field | Type | Required | Description |\n|---|---|---|---|\n");
                let mut rows = Vec::new();
                walk(s, part, &mut rows);
                for r in rows {
                    out.push_str(&r);
                }
                out.push('\n');
            }
        }
    }
    out
}

fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn type_of(s: &Value) -> String {
    let mut t = match s["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&s["items"])),
        Some("object") if s.get("properties").is_none() => {
            if s.get("additionalProperties").is_some() {
                format!("map[string]{}", type_of(&s["additionalProperties"]))
            } else {
                "object".into()
            }
        }
        Some(t) => t.to_string(),
        None if s.get("x-kubernetes-int-or-string").is_some() => "int-or-string".into(),
        None if s.get("anyOf").is_some() => "int-or-string".into(),
        None => "any".into(),
    };
    if let Some(f) = s["format"].as_str() {
        let _ = write!(t, " ({f})");
    }
    t
}

fn walk(schema: &Value, path: &str, rows: &mut Vec<String>) {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let Some(props) = schema["properties"].as_object() else {
        if schema["type"].as_str() == Some("array") {
            walk(&schema["items"], &format!("{path}[]"), rows);
        }
        return;
    };
    let mut keys: Vec<&String> = props.keys().collect();
    keys.sort();
    for k in keys {
        let p = &props[k];
        let here = format!("{path}.{k}");
        let mut desc = cell(p["description"].as_str().unwrap_or(""));
        if let Some(values) = p["enum"].as_array() {
            let values: Vec<String> = values
                .iter()
                .map(|v| format!("`{}`", v.as_str().unwrap_or("?")))
                .collect();
            let _ = write!(desc, " One of: {}.", values.join(", "));
        }
        if let Some(d) = p.get("default") {
            let _ = write!(desc, " Default: `{d}`.");
        }
        for (key, label) in [("minimum", "Minimum"), ("maximum", "Maximum")] {
            if let Some(n) = p.get(key) {
                let _ = write!(desc, " {label}: {n}.");
            }
        }
        rows.push(format!(
            "| `{here}` | {} | {} | {} |\n",
            cell(&type_of(p)),
            if required.contains(&k.as_str()) {
                "yes"
            } else {
                ""
            },
            desc.trim()
        ));
        match p["type"].as_str() {
            Some("array") => walk(&p["items"], &format!("{here}[]"), rows),
            Some("object") if p.get("properties").is_some() => walk(p, &here, rows),
            Some("object") => {
                if let Some(ap) = p.get("additionalProperties") {
                    if ap.get("properties").is_some() {
                        walk(ap, &format!("{here}.*"), rows);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::device_hub::DeviceHubSpec;

    fn hub() -> DeviceHub {
        let spec: DeviceHubSpec =
            serde_saphyr::from_str("includeDefaultServices: true\ntrustDomain: cluster.local\n")
                .unwrap_or_default();
        let mut h = DeviceHub::new("park", spec);
        h.metadata.namespace = Some("meter-park".into());
        h
    }

    fn acl() -> ServiceAclSpec {
        serde_saphyr::from_str(
            r#"
hubRef: {name: park}
allow:
  - {name: connector-to-hub, from: iec61968-connector, to: device-hub, http: {methods: [POST], pathPrefixes: [/v1/events]}}
  - {name: hub-to-smoc, from: device-hub, to: smoc-service}
deny:
  - {name: connector-never-smoc, from: iec61968-connector, to: smoc-service}
"#,
        )
        .unwrap_or_default()
    }

    fn compiled_policies(topo: &HubTopology) -> Vec<NetworkPolicy> {
        let mut ps = acl::compile(topo, &[acl()])
            .map(|c| c.network_policies())
            .unwrap_or_default();
        for p in &mut ps {
            p.metadata.namespace = Some("meter-park".into());
        }
        ps
    }

    #[test]
    fn parses_both_endpoint_forms() {
        let e = parse_endpoint("device-hub", Some("park"), "ns1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e,
            EndpointRef {
                namespace: "ns1".into(),
                hub: Some("park".into()),
                name: "device-hub".into()
            }
        );
        let e = parse_endpoint("meter-park/park-smoc-service", None, "x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.namespace, "meter-park");
        assert_eq!(e.hub, None);
        assert_eq!(e.name, "park-smoc-service");
        let e = parse_endpoint("meter-park/park-smoc-service", Some("park"), "x")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.hub.as_deref(), e.name.as_str()),
            (Some("park"), "smoc-service")
        );
        assert!(parse_endpoint("device-hub", None, "x").is_err());
        assert!(parse_endpoint("a/b/c", None, "x").is_err());
    }

    #[test]
    fn resolves_object_names_to_services() {
        let hubs = [hub()];
        let e = parse_endpoint("meter-park/park-iec61968-connector", None, "x")
            .unwrap_or_else(|e| panic!("{e}"));
        let (h, s) = resolve_endpoint(&hubs, &e).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (h.name_any().as_str(), s.as_str()),
            ("park", "iec61968-connector")
        );
        let e =
            parse_endpoint("nope", Some("other"), "meter-park").unwrap_or_else(|e| panic!("{e}"));
        let err = resolve_endpoint(&hubs, &e).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("DeviceHub meter-park/other not found"));
    }

    #[test]
    fn allowed_call_names_rule_identity_and_policies() {
        let topo = hub_topology(&hub(), "meter-park").unwrap_or_else(|e| panic!("{e}"));
        let ps = compiled_policies(&topo);
        let e = explain_call(
            &topo,
            &[acl()],
            &ps,
            "iec61968-connector",
            "device-hub",
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(e.allowed(), "{e:?}");
        assert_eq!(e.port, 8443);
        let out = render_explanation(&e, &["park".into()]);
        assert!(out.starts_with(
            "ALLOWED: iec61968-connector -> device-hub on port 8443/TCP (hub meter-park/park)\n"
        ));
        assert!(out.contains(
            "ACL (ServiceACL park): allowed by rule connector-to-hub (methods POST, paths /v1/events)"
        ));
        assert!(out.contains(
            "mTLS identity: park-device-hub-acl lists spiffe://cluster.local/ns/meter-park/sa/park-iec61968-connector"
        ));
        assert!(out.contains("egress of iec61968-connector: allowed by NetworkPolicy meter-park/park-iec61968-connector-acl"));
        assert!(out.contains(
            "ingress of device-hub: allowed by NetworkPolicy meter-park/park-device-hub-acl"
        ));
        assert!(!out.contains("disagree"));
    }

    #[test]
    fn denied_call_names_invariant_and_isolating_policies() {
        let topo = hub_topology(&hub(), "meter-park").unwrap_or_else(|e| panic!("{e}"));
        let ps = compiled_policies(&topo);
        let e = explain_call(
            &topo,
            &[acl()],
            &ps,
            "iec61968-connector",
            "smoc-service",
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!e.allowed());
        assert_eq!(e.identity_allowed, Some(false));
        let out = render_explanation(&e, &["park".into()]);
        assert!(out.starts_with("DENIED: iec61968-connector -> smoc-service"));
        assert!(out.contains("DENIED by deny invariant connector-never-smoc"));
        assert!(out.contains("ingress of smoc-service: DENIED: isolated by NetworkPolicy"));
        assert!(out.contains("meter-park/park-smoc-service-default-deny"));

        // No policies at all: the network lets it through, the ACL still refuses it.
        let e = explain_call(&topo, &[acl()], &[], "smoc-service", "device-hub", None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.acl, AclVerdict::DeniedByDefault);
        let out = render_explanation(&e, &[]);
        assert!(out.contains("no ServiceACL references this hub"));
        assert!(out.contains("no NetworkPolicy isolates it for egress"));
        assert!(out.contains("disagree"));

        // Wrong port on an allowed edge.
        let e = explain_call(
            &topo,
            &[acl()],
            &ps,
            "device-hub",
            "smoc-service",
            Some(8080),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(e.acl, AclVerdict::PortNotAllowed { .. }));
        assert!(explain_call(&topo, &[acl()], &ps, "nope", "device-hub", None).is_err());
    }

    #[test]
    fn crd_reference_lists_every_field() {
        let crds: Vec<Value> = crate::crd::all()
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let md = crd_reference(&crds);
        for kind in ["DeviceHub", "ServiceACL", "Meter"] {
            assert!(md.contains(&format!("\n## {kind}\n")), "{kind}");
        }
        assert!(md.contains("| `spec.hubRef.name` | string | yes |"));
        assert!(md.contains("| `spec.allow[].from` | string | yes |"));
        assert!(md.contains("| `spec.services[].port` | integer"));
        assert!(md.contains("| `status.conditions[].reason` | string | yes |"));
        assert!(md.contains("One of: `Deny`."));
        // Every line of a table has four cells (no unescaped pipes from descriptions).
        for line in md.lines().filter(|l| l.starts_with("| `")) {
            assert_eq!(line.matches(" | ").count(), 3, "{line}");
        }
    }
}
