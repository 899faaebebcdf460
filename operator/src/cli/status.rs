//! Live views of the meter park, read with the kube client (`kubectl mpm status`, `kubectl mpm acl`):
//!
//! - `mpm-operator status`: every DeviceHub with its readiness, its CAs and, per service, the ready
//!   replicas and the leaf certificate (serial, expiry, renewal time);
//! - `mpm-operator acl matrix`: the effective reachability matrix and the violations each
//!   ServiceACL reports in its status, or (`--dot`/`--mermaid`) the hub's ACL drawn by
//!   [`super::acl_graph`].
//!
//! The rendering functions are pure (objects in, text out) and unit-tested; only `run_*` talk to the
//! API server (the kubeconfig `KUBECONFIG` or `~/.kube/config` names, or the in-cluster account).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::acl_graph::{self, GraphFormat};
use crate::crd::condition::{Condition, ConditionStatus};
use crate::crd::device_hub::DeviceHub;
use crate::crd::service_acl::{ServiceACL, ServiceAclSpec};

/// Arguments of `status`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    /// Only this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Arguments of `acl matrix`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct AclMatrixArgs {
    /// Only this namespace (default: every namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only the ServiceACLs of this DeviceHub.
    #[arg(long)]
    pub hub: Option<String>,
    /// Print each hub's ACL as a Graphviz DOT graph instead of the matrix.
    #[arg(long, conflicts_with = "mermaid")]
    pub dot: bool,
    /// Print each hub's ACL as a Mermaid flowchart instead of the matrix.
    #[arg(long)]
    pub mermaid: bool,
}

/// Runs `status` against the cluster and returns the text to print.
pub async fn run_status(args: &StatusArgs) -> anyhow::Result<String> {
    let client = Client::try_default().await?;
    let api: Api<DeviceHub> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let hubs = api.list(&ListParams::default()).await?.items;
    Ok(render_status(&hubs, Utc::now()))
}

/// Runs `acl matrix` against the cluster and returns the text to print.
pub async fn run_acl_matrix(args: &AclMatrixArgs) -> anyhow::Result<String> {
    let client = Client::try_default().await?;
    let api: Api<ServiceACL> = match &args.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let acls: Vec<ServiceACL> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|a| args.hub.as_ref().is_none_or(|h| &a.spec.hub_ref.name == h))
        .collect();
    let format = if args.dot {
        Some(GraphFormat::Dot)
    } else if args.mermaid {
        Some(GraphFormat::Mermaid)
    } else {
        None
    };
    Ok(match format {
        Some(f) => render_acl_graphs(&acls, f),
        None => render_acl_matrix(&acls),
    })
}

/// Aligned text table (two spaces between columns, no trailing blanks).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(line, "{c}");
            for _ in c.chars().count()..w + 2 {
                line.push(' ');
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `23h59m`, `364d`, `expired 2h ago`; `?` when `rfc3339` does not parse.
pub fn time_left(rfc3339: &str, now: DateTime<Utc>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(rfc3339) else {
        return "?".into();
    };
    let secs = t
        .with_timezone(&Utc)
        .signed_duration_since(now)
        .num_seconds();
    if secs < 0 {
        format!("expired {} ago", short_duration(secs.unsigned_abs()))
    } else {
        short_duration(secs.unsigned_abs())
    }
}

fn short_duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d >= 2 {
        format!("{d}d")
    } else if d == 1 || h > 0 {
        format!("{}h{m}m", d * 24 + h)
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{secs}s")
    }
}

/// `True`/`False`/`Unknown` and the reason of a condition, `-` when absent.
fn condition(conds: &[Condition], type_: &str) -> (String, String) {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| {
            let s = match c.status {
                ConditionStatus::True => "True",
                ConditionStatus::False => "False",
                ConditionStatus::Unknown => "Unknown",
            };
            (s.to_string(), c.reason.clone())
        })
        .unwrap_or_else(|| ("-".into(), "-".into()))
}

/// The `status` report: hubs, then services and certificates, then CAs.
pub fn render_status(hubs: &[DeviceHub], now: DateTime<Utc>) -> String {
    if hubs.is_empty() {
        return "No DeviceHubs found.\n".into();
    }
    let mut hubs: Vec<&DeviceHub> = hubs.iter().collect();
    hubs.sort_by_key(|h| (h.namespace().unwrap_or_default(), h.name_any()));
    let mut hub_rows = Vec::new();
    let mut svc_rows = Vec::new();
    let mut ca_rows = Vec::new();
    let mut problems = Vec::new();
    for h in &hubs {
        let ns = h.namespace().unwrap_or_default();
        let name = h.name_any();
        let st = h.status.clone().unwrap_or_default();
        let (ready, reason) = condition(&st.conditions, "Ready");
        let (rotating, _) = condition(&st.conditions, "CARotationInProgress");
        let earliest = st
            .earliest_certificate_expiry
            .as_deref()
            .map(|t| time_left(t, now))
            .unwrap_or_else(|| "-".into());
        hub_rows.push(vec![
            ns.clone(),
            name.clone(),
            ready.clone(),
            reason,
            st.ready_services.clone().unwrap_or_else(|| "-".into()),
            if rotating == "True" { "yes" } else { "no" }.into(),
            earliest,
        ]);
        for c in &st.conditions {
            // Degraded is the only condition whose `True` is bad; Progressing and
            // CARotationInProgress are informative either way.
            let bad = match c.type_.as_str() {
                "Degraded" => c.status == ConditionStatus::True,
                "Progressing" | "CARotationInProgress" => false,
                _ => c.status != ConditionStatus::True,
            };
            if bad {
                problems.push(format!(
                    "{ns}/{name}: {}={:?} {}: {}",
                    c.type_, c.status, c.reason, c.message
                ));
            }
        }
        for s in &st.services {
            let (serial, not_after, left, renews) = match &s.certificate {
                Some(c) => (
                    c.serial.clone(),
                    c.not_after.clone(),
                    time_left(&c.not_after, now),
                    time_left(&c.renewal_time, now),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            svc_rows.push(vec![
                ns.clone(),
                name.clone(),
                s.name.clone(),
                format!("{}/{}", s.ready_replicas, s.desired_replicas),
                serial,
                not_after,
                left,
                renews,
            ]);
        }
        for ca in &st.certificate_authorities {
            ca_rows.push(vec![
                ns.clone(),
                name.clone(),
                ca.role.clone(),
                ca.fingerprint.chars().take(16).collect(),
                ca.not_after.clone(),
                time_left(&ca.not_after, now),
            ]);
        }
    }
    let mut out = table(
        &[
            "NAMESPACE",
            "HUB",
            "READY",
            "REASON",
            "SERVICES",
            "CA-ROTATION",
            "NEXT-CERT-EXPIRY",
        ],
        &hub_rows,
    );
    out.push('\n');
    out.push_str(&table(
        &[
            "NAMESPACE",
            "HUB",
            "SERVICE",
            "READY",
            "CERT-SERIAL",
            "NOT-AFTER",
            "EXPIRES-IN",
            "RENEWS-IN",
        ],
        &svc_rows,
    ));
    if !ca_rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "NAMESPACE",
                "HUB",
                "CA",
                "FINGERPRINT",
                "NOT-AFTER",
                "EXPIRES-IN",
            ],
            &ca_rows,
        ));
    }
    if !problems.is_empty() {
        out.push_str("\nConditions needing attention:\n");
        for p in problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

/// The `acl matrix` report: per ServiceACL, its Verified condition, the effective matrix and the
/// violations, as the operator last computed them.
pub fn render_acl_matrix(acls: &[ServiceACL]) -> String {
    if acls.is_empty() {
        return "No ServiceACLs found.\n".into();
    }
    let mut acls: Vec<&ServiceACL> = acls.iter().collect();
    acls.sort_by_key(|a| (a.namespace().unwrap_or_default(), a.name_any()));
    let mut out = String::new();
    for (i, a) in acls.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let st = a.status.clone().unwrap_or_default();
        let (verified, reason) = condition(&st.conditions, "Verified");
        let _ = writeln!(
            out,
            "ServiceACL {}/{} (hub {}): Verified={verified} ({reason}), {} allowed edge(s)",
            a.namespace().unwrap_or_default(),
            a.name_any(),
            a.spec.hub_ref.name,
            st.allowed_edges
        );
        if st.matrix.is_empty() {
            out.push_str("  (no matrix in status yet)\n");
        } else {
            for line in super::netpol::table(&st.matrix).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        for v in &st.violations {
            let _ = writeln!(
                out,
                "  VIOLATION {:?} rule={} {} -> {}{}{}: {}",
                v.kind,
                v.rule,
                v.from,
                v.to,
                v.port.map(|p| format!(":{p}")).unwrap_or_default(),
                v.network_policy
                    .as_deref()
                    .map(|n| format!(" networkPolicy={n}"))
                    .unwrap_or_default(),
                v.message
            );
        }
    }
    out
}

/// One graph per hub (`<namespace>/<hub>`), merging every ServiceACL of the hub.
pub fn render_acl_graphs(acls: &[ServiceACL], format: GraphFormat) -> String {
    let mut by_hub: BTreeMap<(String, String), Vec<ServiceAclSpec>> = BTreeMap::new();
    for a in acls {
        by_hub
            .entry((
                a.namespace().unwrap_or_default(),
                a.spec.hub_ref.name.clone(),
            ))
            .or_default()
            .push(a.spec.clone());
    }
    let comment = match format {
        GraphFormat::Dot => "//",
        GraphFormat::Mermaid => "%%",
    };
    let mut out = String::new();
    for ((ns, hub), specs) in by_hub {
        let _ = writeln!(out, "{comment} hub {ns}/{hub}");
        out.push_str(&acl_graph::render(&specs, format));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::device_hub::{
        CaStatus, CertificateStatus, DeviceHubSpec, DeviceHubStatus, ServiceStatus,
    };
    use crate::crd::service_acl::{
        MatrixEntry, Protocol, ServiceAclStatus, Violation, ViolationKind,
    };

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    fn cond(t: &str, s: ConditionStatus, reason: &str) -> Condition {
        Condition::new(t, s, reason, "msg", Some(1))
    }

    #[test]
    fn time_left_formats() {
        assert_eq!(time_left("2026-11-23T12:00:00Z", now()), "24h0m");
        assert_eq!(time_left("2026-11-22T12:30:00+00:00", now()), "30m");
        assert_eq!(time_left("2027-11-22T12:00:00Z", now()), "365d");
        assert_eq!(time_left("2026-11-22T10:00:00Z", now()), "expired 2h0m ago");
        assert_eq!(time_left("2026-11-22T12:00:09Z", now()), "9s");
        assert_eq!(time_left("garbage", now()), "?");
    }

    #[test]
    fn table_aligns_and_trims() {
        let t = table(
            &["A", "BB"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq\n");
    }

    fn hub() -> DeviceHub {
        let mut h = DeviceHub::new("park", DeviceHubSpec::default());
        h.metadata.namespace = Some("meter-park".into());
        h.status = Some(DeviceHubStatus {
            conditions: vec![
                cond("Ready", ConditionStatus::False, "CertificatesNotReady"),
                cond("Degraded", ConditionStatus::True, "CAExpired"),
                cond("CARotationInProgress", ConditionStatus::False, "Idle"),
            ],
            ready_services: Some("1/2".into()),
            earliest_certificate_expiry: Some("2026-11-23T00:00:00Z".into()),
            services: vec![
                ServiceStatus {
                    name: "device-hub".into(),
                    desired_replicas: 2,
                    ready_replicas: 2,
                    certificate: Some(CertificateStatus {
                        serial: "ab12".into(),
                        not_after: "2026-11-23T00:00:00Z".into(),
                        renewal_time: "2026-11-22T16:00:00Z".into(),
                    }),
                },
                ServiceStatus {
                    name: "smoc-service".into(),
                    desired_replicas: 1,
                    ready_replicas: 0,
                    certificate: None,
                },
            ],
            certificate_authorities: vec![CaStatus {
                fingerprint: "0ba54be1d546fb978cb9966dac9f2d15".into(),
                not_after: "2027-11-22T12:00:00Z".into(),
                role: "Signing".into(),
            }],
            ..DeviceHubStatus::default()
        });
        h
    }

    #[test]
    fn status_lists_hubs_services_cas_and_problems() {
        let out = render_status(&[hub()], now());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   HUB   READY  REASON"));
        assert!(lines[1].starts_with("meter-park  park  False  CertificatesNotReady  1/2"));
        assert!(lines[1].ends_with("no           12h0m"), "{}", lines[1]);
        assert!(out.contains("device-hub    2/2    ab12"));
        assert!(out.contains("2026-11-23T00:00:00Z  12h0m       4h0m"));
        assert!(out.contains("smoc-service  0/1    -"));
        assert!(out.contains("Signing  0ba54be1d546fb97  2027-11-22T12:00:00Z  365d"));
        assert!(out.contains("meter-park/park: Ready=False CertificatesNotReady: msg"));
        assert!(out.contains("meter-park/park: Degraded=True CAExpired: msg"));
        assert!(!out.contains("CARotationInProgress=False"));
        assert_eq!(render_status(&[], now()), "No DeviceHubs found.\n");
    }

    fn acl() -> ServiceACL {
        let spec: ServiceAclSpec = serde_saphyr::from_str(
            "hubRef: {name: park}\nallow: [{from: device-hub, to: smoc-service}]\ndeny: [{from: iec61968-connector, to: smoc-service}]\n",
        )
        .unwrap_or_default();
        let mut a = ServiceACL::new("park", spec);
        a.metadata.namespace = Some("meter-park".into());
        a.status = Some(ServiceAclStatus {
            conditions: vec![cond("Verified", ConditionStatus::False, "PolicyViolation")],
            matrix: vec![MatrixEntry {
                from: "device-hub".into(),
                to: "smoc-service".into(),
                protocol: Protocol::Tcp,
                port: 8443,
                allowed: true,
            }],
            violations: vec![Violation {
                rule: "deny[0]".into(),
                network_policy: Some("meter-park/extra".into()),
                from: "iec61968-connector".into(),
                to: "smoc-service".into(),
                port: Some(8443),
                kind: ViolationKind::DenyReachable,
                message: "reachable".into(),
            }],
            allowed_edges: 1,
            ..ServiceAclStatus::default()
        });
        a
    }

    #[test]
    fn acl_matrix_shows_condition_matrix_and_violations() {
        let out = render_acl_matrix(&[acl()]);
        assert!(out.starts_with(
            "ServiceACL meter-park/park (hub park): Verified=False (PolicyViolation), 1 allowed edge(s)\n"
        ));
        assert!(out.contains("  device-hub  smoc-service  8443/TCP  allowed\n"));
        assert!(out.contains(
            "  VIOLATION DenyReachable rule=deny[0] iec61968-connector -> smoc-service:8443 networkPolicy=meter-park/extra: reachable\n"
        ));
        assert_eq!(render_acl_matrix(&[]), "No ServiceACLs found.\n");
    }

    #[test]
    fn acl_graphs_reuse_acl_graph_per_hub() {
        let out = render_acl_graphs(&[acl()], GraphFormat::Dot);
        assert!(out.starts_with("// hub meter-park/park\ndigraph serviceacl {"));
        assert!(out.contains("\"iec61968-connector\" -> \"smoc-service\" [label=\"deny\""));
        let out = render_acl_graphs(&[acl()], GraphFormat::Mermaid);
        assert!(out.starts_with("%% hub meter-park/park\nflowchart LR\n"));
    }
}
