//! Issue 5: compile + verify for a hub of 50 services and 500 rules (median of 20 runs), and the
//! evaluator's throughput on 1,000 pods and 200 policies (the world of operator/tests/netpol_perf.rs).
//! Pure CPU; run with --release.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use mpm_operator::acl::{self, HubTopology, OperatorAccess, ServicePorts};
use mpm_operator::crd::service_acl::ServiceAclSpec;
use mpm_operator::netpol::{
    self, ContainerPort, Endpoint, Evaluator, NamespaceInfo, PodInfo, Protocol,
};
use serde_json::json;

use crate::common::{ms, percentile, Row};

const SERVICES: usize = 50;
const ALLOW_RULES: usize = 480;
const DENY_RULES: usize = 20;
const ACLS: usize = 5;

fn topology() -> HubTopology {
    HubTopology {
        namespace: "bench".into(),
        hub: "bench".into(),
        trust_domain: "cluster.local".into(),
        services: (0..SERVICES)
            .map(|i| ServicePorts::new(format!("svc{i:02}")))
            .collect(),
        operator: OperatorAccess::default(),
    }
}

/// 480 distinct allow edges (offsets 1..=10 around the ring, some with L7 restrictions) and 20 deny
/// invariants (offset 20, never allowed), spread over 5 ServiceACLs of one hub (merged).
fn acls() -> anyhow::Result<Vec<ServiceAclSpec>> {
    let svc = |i: usize| format!("svc{:02}", i % SERVICES);
    let mut allow: Vec<Vec<serde_json::Value>> = vec![Vec::new(); ACLS];
    for k in 0..ALLOW_RULES {
        let from = k % SERVICES;
        let to = from + 1 + k / SERVICES;
        let mut rule = json!({"name": format!("allow-{k}"), "from": svc(from), "to": svc(to), "ports": [8443]});
        if k % 3 == 0 {
            rule["http"] = json!({"methods": ["GET", "PUT"], "pathPrefixes": ["/v1/"]});
        }
        allow[k % ACLS].push(rule);
    }
    let mut deny: Vec<Vec<serde_json::Value>> = vec![Vec::new(); ACLS];
    for k in 0..DENY_RULES {
        let from = k % SERVICES;
        deny[k % ACLS].push(json!({"name": format!("deny-{k}"), "from": svc(from), "to": svc(from + 20 + k / SERVICES)}));
    }
    allow
        .into_iter()
        .zip(deny)
        .map(|(a, d)| {
            Ok(serde_json::from_value(json!({
                "hubRef": {"name": "bench"}, "defaultAction": "Deny", "allow": a, "deny": d
            }))?)
        })
        .collect()
}

fn world() -> anyhow::Result<Evaluator> {
    let namespaces: Vec<NamespaceInfo> = (0..20)
        .map(|i| {
            let mut ns = NamespaceInfo::named(format!("ns{i}"));
            ns.labels.insert("tier".into(), format!("t{}", i % 4));
            ns
        })
        .collect();
    let pods: Vec<PodInfo> = (0..1000)
        .map(|i| PodInfo {
            namespace: format!("ns{}", i % 20),
            name: format!("pod{i}"),
            labels: BTreeMap::from([
                ("app".to_string(), format!("app{}", i % 50)),
                ("role".to_string(), format!("r{}", i % 7)),
            ]),
            ips: vec![std::net::IpAddr::from([
                10,
                (i / 65536) as u8,
                ((i / 256) % 256) as u8,
                (i % 256) as u8,
            ])],
            ports: vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                },
            ],
        })
        .collect();
    let policies = (0..200)
        .map(|i| {
            serde_json::from_value::<NetworkPolicy>(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % 20)},
                "spec": {
                    "podSelector": {"matchLabels": {"app": format!("app{}", i % 50)}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [
                        {"from": [{"namespaceSelector": {"matchLabels": {"tier": format!("t{}", i % 4)}},
                                   "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["r1", "r2"]}]}}],
                         "ports": [{"port": "http"}]},
                        {"from": [{"ipBlock": {"cidr": "10.0.0.0/22", "except": ["10.0.1.0/24"]}}], "ports": [{"port": 8080, "protocol": "TCP"}]}
                    ],
                    "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 8080}]}]
                }
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Evaluator::new(namespaces, pods, &policies)?)
}

pub fn run() -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    if cfg!(debug_assertions) {
        rows.push(Row::info(
            "netpol: WARNING",
            "debug build: figures are meaningless, run with --release",
        ));
    }
    let topo = topology();
    let specs = acls()?;
    let rules: usize = specs.iter().map(|s| s.allow.len() + s.deny.len()).sum();

    // compile + verify, 20 runs (plus one warm-up).
    let mut total = Vec::new();
    let mut compile_only = Vec::new();
    let mut verify_only = Vec::new();
    let mut summary = String::new();
    for run in 0..21 {
        let t = Instant::now();
        let compiled = acl::compile(&topo, &specs)?;
        let c = t.elapsed();
        let policies = compiled.network_policies();
        let t2 = Instant::now();
        let verification = netpol::verify(&specs, &topo, &policies)?;
        let v = t2.elapsed();
        if !verification.verified() {
            bail!(
                "the compiled policies do not verify: {:?}",
                verification.violations.first()
            );
        }
        if run == 0 {
            summary = format!(
                "{} NetworkPolicies, {} edges, {} matrix entries",
                policies.len(),
                verification.allowed_edges,
                verification.matrix.len()
            );
            continue;
        }
        compile_only.push(c);
        verify_only.push(v);
        total.push(c + v);
    }
    for v in [&mut total, &mut compile_only, &mut verify_only] {
        v.sort();
    }
    let median = percentile(&total, 50.0);
    rows.push(Row::info(
        "netpol: hub",
        format!("{SERVICES} services, {rules} rules in {ACLS} ServiceACLs → {summary}"),
    ));
    rows.push(Row::new(
        "netpol: compile + verify, median of 20",
        ms(median),
        "< 100 ms",
        Some(median < Duration::from_millis(100)),
    ));
    rows.push(Row::info(
        "netpol: compile / verify medians",
        format!(
            "{} / {}",
            ms(percentile(&compile_only, 50.0)),
            ms(percentile(&verify_only, 50.0))
        ),
    ));

    // Evaluator throughput: 2,000,000 pair-port checks, 3 rounds, median.
    let t = Instant::now();
    let ev = world()?;
    let built = t.elapsed();
    let eps: Vec<Endpoint> = ev.endpoints().collect();
    let n = 2_000_000usize;
    let mut rates = Vec::new();
    let mut allowed = 0usize;
    for _ in 0..3 {
        allowed = 0;
        let t = Instant::now();
        for i in 0..n {
            let src = &eps[(i * 7919) % eps.len()];
            let dst = &eps[(i * 104_729 + 13) % eps.len()];
            let (port, proto) = if i % 3 == 0 {
                (53, Protocol::Udp)
            } else {
                (8080, Protocol::Tcp)
            };
            allowed += usize::from(ev.allowed(src, dst, port, proto));
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let rate = rates[1];
    rows.push(Row::info(
        "netpol: evaluator world",
        format!(
            "1000 pods, 200 policies, {} endpoints, built in {}; {allowed}/{n} allowed",
            eps.len(),
            ms(built)
        ),
    ));
    rows.push(Row::new(
        "netpol: evaluator throughput (median of 3)",
        format!("{rate:.0} checks/s"),
        "> 1,000,000 checks/s",
        Some(rate > 1_000_000.0),
    ));
    Ok(rows)
}
