//! `mpm-operator netpol matrix`: the reachability matrix of manifests, computed offline.
//!
//! Reads YAML (multi-document) or JSON files with Namespaces, Pods, workloads (Deployment,
//! StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob) and NetworkPolicies,
//! also wrapped in `List` kinds (`kind: List` or any `*List` with `items`). Every workload is
//! represented by its pod template; a Pod's `status.podIP`/`status.podIPs` count for `ipBlock` peers.
//! Objects without namespace belong to `default`. Namespaces referenced but not declared exist with
//! only the label `kubernetes.io/metadata.name=<ns>` (declared ones get that label too). Other kinds
//! are ignored.
//!
//! `--peer-ip ADDR` adds an address outside the cluster, named by the address, as source and as
//! destination. As destination it declares no ports: it is probed on every numeric port that some
//! egress rule of some policy mentions (for a port range, its first port), and left out when no
//! egress rule mentions a port (then no policy can distinguish its ports).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::Value;

use crate::crd::service_acl::MatrixEntry;
use crate::netpol::{self, ContainerPort, Evaluator, NamespaceInfo, PodInfo, Protocol};

/// Output format of `netpol matrix`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatrixOutput {
    /// Aligned text table.
    #[default]
    Table,
    /// JSON array of `{"from","to","protocol","port","allowed"}`.
    Json,
}

/// Arguments of `netpol matrix`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct NetpolMatrixArgs {
    /// Manifest file (YAML, multi-document, or JSON); repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub filename: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = MatrixOutput::Table)]
    pub output: MatrixOutput,
    /// An address outside the cluster to include as source and destination; repeatable.
    #[arg(long = "peer-ip")]
    pub peer_ip: Vec<IpAddr>,
}

/// Runs `netpol matrix` and returns the text to print.
pub fn run_matrix(args: &NetpolMatrixArgs) -> anyhow::Result<String> {
    let mut objects = Vec::new();
    for path in &args.filename {
        objects.extend(read_objects(path)?);
    }
    let inv = Inventory::from_objects(&objects)?;
    let ev = Evaluator::new(inv.namespaces, inv.pods, &inv.policies)
        .context("evaluating NetworkPolicies")?;
    let entries = netpol::matrix(&ev, &args.peer_ip);
    match args.output {
        MatrixOutput::Json => {
            let mut s = serde_json::to_string_pretty(&entries)?;
            s.push('\n');
            Ok(s)
        }
        MatrixOutput::Table => Ok(table(&entries)),
    }
}

/// Renders matrix entries as an aligned table.
pub fn table(entries: &[MatrixEntry]) -> String {
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                e.from.clone(),
                e.to.clone(),
                format!("{}/{}", e.port, e.protocol),
                if e.allowed { "allowed" } else { "denied" }.to_string(),
            ]
        })
        .collect();
    let header = ["FROM", "TO", "PORT", "RESULT"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if rows.is_empty() {
        out.push_str("(no workloads with declared ports)\n");
    }
    out
}

/// Reads every object of a YAML or JSON file, with `List` kinds flattened.
pub fn read_objects(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_objects(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Parses YAML (multi-document) or JSON text into objects, with `List` kinds flattened.
pub fn parse_objects(text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text)? {
            Value::Array(items) => items,
            v => vec![v],
        }
    } else {
        // YAML 1.2 booleans only: `y`, `on`, `no` stay strings (namespace names, label values).
        let options = serde_saphyr::options! { strict_booleans: true };
        serde_saphyr::from_multiple_with_options::<Value>(text, options)
            .map_err(|e| anyhow!("invalid YAML: {e}"))?
    };
    let mut out = Vec::new();
    for d in docs {
        flatten(d, &mut out);
    }
    Ok(out)
}

fn flatten(v: Value, out: &mut Vec<Value>) {
    match v {
        Value::Null => {}
        Value::Object(ref m)
            if m.get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && m.get("items").is_some_and(Value::is_array) =>
        {
            if let Some(Value::Array(items)) = m.get("items") {
                for i in items.clone() {
                    flatten(i, out);
                }
            }
        }
        v => out.push(v),
    }
}

/// Namespaces, pods (one per workload) and policies found in manifests.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Declared namespaces.
    pub namespaces: Vec<NamespaceInfo>,
    /// Pods and workload pod templates, sorted by namespace and name.
    pub pods: Vec<PodInfo>,
    /// NetworkPolicies.
    pub policies: Vec<NetworkPolicy>,
}

impl Inventory {
    /// Sorts manifests into namespaces, pods and policies; unknown kinds are ignored.
    pub fn from_objects(objects: &[Value]) -> anyhow::Result<Self> {
        let mut inv = Inventory::default();
        for obj in objects {
            let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
            let name = str_at(obj, &["metadata", "name"]).unwrap_or("").to_string();
            let namespace = str_at(obj, &["metadata", "namespace"])
                .unwrap_or("default")
                .to_string();
            let what = || format!("{kind} {namespace}/{name}");
            match kind {
                "Namespace" => inv.namespaces.push(NamespaceInfo {
                    labels: labels_at(obj, &["metadata", "labels"]),
                    name,
                }),
                "NetworkPolicy" => {
                    let mut np: NetworkPolicy =
                        serde_json::from_value(obj.clone()).with_context(what)?;
                    np.metadata.namespace.get_or_insert(namespace);
                    inv.policies.push(np);
                }
                "Pod" => {
                    let mut pod = pod_from_template(obj, &namespace, &name).with_context(what)?;
                    pod.ips = pod_ips(obj).with_context(what)?;
                    inv.pods.push(pod);
                }
                "Deployment"
                | "StatefulSet"
                | "DaemonSet"
                | "ReplicaSet"
                | "ReplicationController"
                | "Job" => {
                    let template = obj
                        .pointer("/spec/template")
                        .ok_or_else(|| anyhow!("{} has no spec.template", what()))?;
                    inv.pods
                        .push(pod_from_template(template, &namespace, &name).with_context(what)?);
                }
                "CronJob" => {
                    let template =
                        obj.pointer("/spec/jobTemplate/spec/template")
                            .ok_or_else(|| {
                                anyhow!("{} has no spec.jobTemplate.spec.template", what())
                            })?;
                    inv.pods
                        .push(pod_from_template(template, &namespace, &name).with_context(what)?);
                }
                _ => {}
            }
        }
        inv.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(inv)
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
}

fn labels_at(v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A pod (or a workload's pod template: `metadata` + `spec`) as evaluator input.
fn pod_from_template(obj: &Value, namespace: &str, name: &str) -> anyhow::Result<PodInfo> {
    let template = PodTemplateSpec {
        metadata: obj
            .get("metadata")
            .cloned()
            .map(serde_json::from_value)
            .transpose()?,
        spec: obj
            .get("spec")
            .cloned()
            .map(serde_json::from_value)
            .transpose()?,
    };
    let labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let mut ports = Vec::new();
    for c in template.spec.iter().flat_map(|s| s.containers.iter()) {
        for p in c.ports.iter().flatten() {
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| {
                    anyhow!(
                        "container {}: invalid containerPort {}",
                        c.name,
                        p.container_port
                    )
                })?;
            let protocol = match p.protocol.as_deref() {
                None => Protocol::Tcp,
                Some(s) => Protocol::parse(s)
                    .ok_or_else(|| anyhow!("container {}: unknown protocol {s:?}", c.name))?,
            };
            ports.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
            });
        }
    }
    Ok(PodInfo {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels,
        ips: Vec::new(),
        ports,
    })
}

fn pod_ips(obj: &Value) -> anyhow::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add = |s: &str| -> anyhow::Result<()> {
        let ip: IpAddr = s.parse().map_err(|_| anyhow!("invalid pod IP {s:?}"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
        Ok(())
    };
    if let Some(ip) = str_at(obj, &["status", "podIP"]) {
        add(ip)?;
    }
    for entry in obj
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(ip) = entry.get("ip").and_then(Value::as_str) {
            add(ip)?;
        }
    }
    if ips.is_empty()
        && obj.get("status").is_some_and(|s| {
            s.get("podIP")
                .is_some_and(|v| !v.is_null() && !v.is_string())
        })
    {
        bail!("status.podIP is not a string");
    }
    Ok(ips)
}
