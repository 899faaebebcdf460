//! `mpm-operator acl graph`: a ServiceACL drawn as Graphviz DOT or Mermaid.
//!
//! Allowed edges are solid arrows labelled with their ports (`https` when the rule uses the
//! target's default port) and L7 restrictions; deny invariants are dashed red (DOT) or `-.-x`
//! (Mermaid) edges labelled `deny`. `ingress`/`egress` rules appear as external nodes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use super::netpol::read_objects;
use crate::crd::service_acl::{AclPeer, AclPort, HttpRestriction, ServiceAclSpec};

/// Output format of `acl graph`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphFormat {
    /// Graphviz DOT.
    #[default]
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

/// Arguments of `acl graph`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AclGraphArgs {
    /// ServiceACL manifest (YAML, possibly several documents or a List; JSON also accepted).
    #[arg(short = 'f', long = "filename")]
    pub filename: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

/// One edge of the drawing.
struct GraphEdge {
    from: String,
    to: String,
    label: String,
    deny: bool,
}

/// Runs `acl graph` and returns the text to print.
pub fn run_graph(args: &AclGraphArgs) -> anyhow::Result<String> {
    let objects = read_objects(&args.filename)?;
    let mut specs = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        let kind = obj.get("kind").and_then(Value::as_str);
        if kind.is_some_and(|k| k != "ServiceACL") {
            continue;
        }
        let spec = obj.get("spec").cloned().unwrap_or_else(|| obj.clone());
        let spec: ServiceAclSpec = serde_json::from_value(spec)
            .with_context(|| format!("document {}: not a ServiceACL spec", i + 1))?;
        specs.push(spec);
    }
    Ok(render(&specs, args.format))
}

/// Draws the merged specs.
pub fn render(specs: &[ServiceAclSpec], format: GraphFormat) -> String {
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut external: Vec<(String, String)> = Vec::new();
    let mut edges = Vec::new();
    for spec in specs {
        for a in &spec.allow {
            nodes.insert(a.from.clone());
            nodes.insert(a.to.clone());
            let ports = match a.ports.as_deref() {
                None | Some([]) => "https".to_string(),
                Some(ps) => ps.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
            };
            let label = match l7_label(a.http.as_ref()) {
                Some(l7) => format!("{ports} {l7}"),
                None => ports,
            };
            edges.push(GraphEdge {
                from: a.from.clone(),
                to: a.to.clone(),
                label,
                deny: false,
            });
        }
        for d in &spec.deny {
            nodes.insert(d.from.clone());
            nodes.insert(d.to.clone());
            edges.push(GraphEdge {
                from: d.from.clone(),
                to: d.to.clone(),
                label: "deny".into(),
                deny: true,
            });
        }
        for r in &spec.ingress {
            nodes.insert(r.to.clone());
            let id = format!("ingress:{}", external.len());
            external.push((id.clone(), peers_label(&r.from)));
            edges.push(GraphEdge {
                from: id,
                to: r.to.clone(),
                label: ports_label(&r.ports),
                deny: false,
            });
        }
        for r in &spec.egress {
            nodes.insert(r.from.clone());
            let id = format!("egress:{}", external.len());
            external.push((id.clone(), peers_label(&r.to)));
            edges.push(GraphEdge {
                from: r.from.clone(),
                to: id,
                label: ports_label(&r.ports),
                deny: false,
            });
        }
        if let Some(m) = &spec.metrics_scrape {
            let id = format!("metrics:{}", external.len());
            external.push((
                id.clone(),
                format!("metrics scrape: {}", peers_label(&m.from)),
            ));
            for n in nodes.clone() {
                edges.push(GraphEdge {
                    from: id.clone(),
                    to: n,
                    label: "8080 (health)".into(),
                    deny: false,
                });
            }
        }
    }
    match format {
        GraphFormat::Dot => dot(&nodes, &external, &edges),
        GraphFormat::Mermaid => mermaid(&nodes, &external, &edges),
    }
}

fn l7_label(http: Option<&HttpRestriction>) -> Option<String> {
    let h = http?;
    let mut parts = Vec::new();
    if let Some(m) = h.methods.as_ref().filter(|m| !m.is_empty()) {
        parts.push(m.join(","));
    }
    if let Some(p) = h.path_prefixes.as_ref().filter(|p| !p.is_empty()) {
        parts.push(p.join(","));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn ports_label(ports: &[AclPort]) -> String {
    ports
        .iter()
        .map(|p| format!("{}/{}", p.port, p.protocol.unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn peers_label(peers: &[AclPeer]) -> String {
    peers
        .iter()
        .map(|p| {
            if let Some(b) = &p.ip_block {
                match b.except.as_deref() {
                    Some(ex) if !ex.is_empty() => format!("{} except {}", b.cidr, ex.join(",")),
                    _ => b.cidr.clone(),
                }
            } else {
                let sel =
                    |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
                        s.as_ref().map(|s| {
                            let labels: Vec<String> = s
                                .match_labels
                                .iter()
                                .flatten()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect();
                            if labels.is_empty()
                                && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
                            {
                                "*".to_string()
                            } else if labels.is_empty() {
                                "expr".to_string()
                            } else {
                                labels.join(",")
                            }
                        })
                    };
                let ns = sel(&p.namespace_selector).map(|s| format!("ns[{s}]"));
                let pod = sel(&p.pod_selector).map(|s| format!("pod[{s}]"));
                [ns, pod]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn dot(nodes: &BTreeSet<String>, external: &[(String, String)], edges: &[GraphEdge]) -> String {
    let mut out =
        String::from("digraph serviceacl {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for n in nodes {
        let _ = writeln!(out, "  \"{}\";", dot_escape(n));
    }
    for (id, label) in external {
        let _ = writeln!(
            out,
            "  \"{}\" [shape=ellipse, style=dashed, label=\"{}\"];",
            dot_escape(id),
            dot_escape(label)
        );
    }
    for e in edges {
        let attrs = if e.deny {
            format!(
                "label=\"{}\", style=dashed, color=red, fontcolor=red, arrowhead=tee",
                dot_escape(&e.label)
            )
        } else {
            format!("label=\"{}\"", dot_escape(&e.label))
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [{attrs}];",
            dot_escape(&e.from),
            dot_escape(&e.to)
        );
    }
    out.push_str("}\n");
    out
}

/// Mermaid node ids: letters, digits and `_` only.
fn mermaid_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;").replace('|', "#124;")
}

fn mermaid(nodes: &BTreeSet<String>, external: &[(String, String)], edges: &[GraphEdge]) -> String {
    let mut out = String::from("flowchart LR\n");
    for n in nodes {
        let _ = writeln!(out, "  {}[\"{}\"]", mermaid_id(n), mermaid_text(n));
    }
    for (id, label) in external {
        let _ = writeln!(out, "  {}([\"{}\"])", mermaid_id(id), mermaid_text(label));
    }
    for e in edges {
        let arrow = if e.deny { "-.-x" } else { "-->" };
        let _ = writeln!(
            out,
            "  {} {arrow}|\"{}\"| {}",
            mermaid_id(&e.from),
            mermaid_text(&e.label),
            mermaid_id(&e.to)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceAclSpec {
        serde_saphyr::from_str(
            r#"
hubRef: {name: demo}
allow:
  - {from: iec61968-connector, to: device-hub, http: {methods: [POST], pathPrefixes: [/v1/events]}}
  - {from: device-hub, to: smoc-service, ports: [8443]}
deny:
  - {from: iec61968-connector, to: smoc-service}
ingress:
  - {to: iec61968-connector, from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 8090}]}
"#,
        )
        .expect("valid spec")
    }

    #[test]
    fn dot_marks_denies_dashed_red() {
        let out = render(&[spec()], GraphFormat::Dot);
        assert!(out.starts_with("digraph serviceacl {"));
        assert!(out.contains(
            "\"iec61968-connector\" -> \"device-hub\" [label=\"https POST /v1/events\"];"
        ));
        assert!(out.contains("\"device-hub\" -> \"smoc-service\" [label=\"8443\"];"));
        assert!(out.contains(
            "\"iec61968-connector\" -> \"smoc-service\" [label=\"deny\", style=dashed, color=red"
        ));
        assert!(out.contains("label=\"10.0.0.0/8\""));
    }

    #[test]
    fn mermaid_uses_crossed_dotted_edges_for_denies() {
        let out = render(&[spec()], GraphFormat::Mermaid);
        assert!(out.starts_with("flowchart LR\n"));
        assert!(out.contains("  iec61968_connector -.-x|\"deny\"| smoc_service\n"));
        assert!(out.contains("  iec61968_connector -->|\"https POST /v1/events\"| device_hub\n"));
        assert!(out.contains("ingress_0 -->|\"8090/TCP\"| iec61968_connector"));
    }
}
