//! Runs the upstream Kubernetes NetworkPolicy e2e cases (transcribed as data in
//! `tests/netpol/upstream_cases.yaml`) against the evaluator.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use mpm_operator::netpol::{ContainerPort, Endpoint, Evaluator, NamespaceInfo, PodInfo, Protocol};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    name: String,
    pods: Vec<String>,
    #[serde(default)]
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    policies: Vec<PolicyDoc>,
    probes: Vec<Probe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    name: String,
    namespace: String,
    spec: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    port: u16,
    protocol: Protocol,
    reachability: BTreeMap<String, String>,
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 3] = ["a", "b", "c"];

fn index_of(list: &[&str], s: &str) -> usize {
    list.iter()
        .position(|x| *x == s)
        .unwrap_or_else(|| panic!("unknown name {s}"))
}

/// The upstream pod model: label pod=<name>, ports 80/81 for TCP/UDP/SCTP named serve-<port>-<proto>.
fn pod(key: &str, extra: Option<&BTreeMap<String, String>>) -> PodInfo {
    let (ns, name) = key
        .split_once('/')
        .unwrap_or_else(|| panic!("bad pod {key}"));
    let (n, p) = (index_of(&NAMESPACES, ns), index_of(&POD_NAMES, name) + 1);
    let mut labels = BTreeMap::from([("pod".to_string(), name.to_string())]);
    labels.extend(extra.cloned().unwrap_or_default());
    let mut ports = Vec::new();
    for port in [80u16, 81] {
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            let name = format!("serve-{port}-{}", proto.as_str().to_lowercase());
            ports.push(ContainerPort {
                name: Some(name),
                port,
                protocol: proto,
            });
        }
    }
    let ips: Vec<IpAddr> = vec![
        format!("10.0.{n}.{p}").parse().expect("ipv4"),
        format!("fd00:0:0:{n}::{p}").parse().expect("ipv6"),
    ];
    PodInfo {
        namespace: ns.into(),
        name: name.into(),
        labels,
        ips,
        ports,
    }
}

fn run_case(case: &Case) -> Vec<String> {
    let namespaces: Vec<NamespaceInfo> = NAMESPACES
        .iter()
        .map(|ns| {
            let mut info = NamespaceInfo::named(*ns);
            info.labels
                .extend(case.namespace_labels.get(*ns).cloned().unwrap_or_default());
            info
        })
        .collect();
    let pods: Vec<PodInfo> = case
        .pods
        .iter()
        .map(|k| pod(k, case.pod_labels.get(k)))
        .collect();
    let policies: Vec<NetworkPolicy> = case
        .policies
        .iter()
        .map(|p| {
            serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": p.name, "namespace": p.namespace},
                "spec": p.spec,
            }))
            .unwrap_or_else(|e| panic!("{}: policy {}: {e}", case.name, p.name))
        })
        .collect();
    let ev = Evaluator::new(namespaces, pods, &policies)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let mut failures = Vec::new();
    for probe in &case.probes {
        assert_eq!(
            probe.reachability.len(),
            case.pods.len(),
            "{}: one row per pod",
            case.name
        );
        for (from, row) in &probe.reachability {
            let cells: Vec<char> = row.chars().filter(|c| !c.is_whitespace()).collect();
            assert_eq!(
                cells.len(),
                case.pods.len(),
                "{}: row {from} needs one cell per pod",
                case.name
            );
            let src = ev
                .pod_id(
                    from.split('/').next().unwrap_or(""),
                    from.split('/').nth(1).unwrap_or(""),
                )
                .unwrap_or_else(|| panic!("{}: unknown source {from}", case.name));
            for (to, cell) in case.pods.iter().zip(cells) {
                if to == from {
                    assert_eq!(cell, '.', "{}: diagonal of {from} must be '.'", case.name);
                    continue;
                }
                let (ns, name) = to.split_once('/').unwrap_or_default();
                let dst = ev
                    .pod_id(ns, name)
                    .unwrap_or_else(|| panic!("{}: unknown pod {to}", case.name));
                let expected = match cell {
                    '1' => true,
                    '0' => false,
                    other => panic!("{}: bad cell {other:?}", case.name),
                };
                let got = ev.allowed(
                    &Endpoint::Pod(src),
                    &Endpoint::Pod(dst),
                    probe.port,
                    probe.protocol,
                );
                if got != expected {
                    failures.push(format!(
                        "{}: {from} -> {to} {}/{}: expected {expected}, got {got}",
                        case.name, probe.port, probe.protocol
                    ));
                }
            }
        }
    }
    failures
}

#[test]
fn upstream_cases_match_expected_reachability() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/netpol/upstream_cases.yaml"
    ))
    .expect("case file");
    let options = serde_saphyr::options! { strict_booleans: true };
    let file: File = serde_saphyr::from_str_with_options(&text, options).expect("valid case file");
    assert!(
        file.cases.len() >= 30,
        "at least 30 cases, got {}",
        file.cases.len()
    );
    let mut names: Vec<&str> = file.cases.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), file.cases.len(), "case names are unique");
    let failures: Vec<String> = file.cases.iter().flat_map(run_case).collect();
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn external_addresses_only_match_ip_blocks() {
    let policies: Vec<NetworkPolicy> = vec![serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}],
                 "egress": [{"to": [{"namespaceSelector": {}}]}, {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}], "ports": [{"port": 443}]}]}
    }))
    .expect("policy")];
    let ev = Evaluator::new(vec![], vec![pod("x/a", None)], &policies).expect("evaluator");
    let a = Endpoint::Pod(ev.pod_id("x", "a").expect("pod"));
    let ext = |s: &str| Endpoint::External(s.parse().expect("ip"));
    assert!(ev.allowed(&ext("192.168.2.1"), &a, 80, Protocol::Tcp));
    assert!(!ev.allowed(&ext("192.168.1.1"), &a, 80, Protocol::Tcp));
    assert!(!ev.allowed(&ext("10.0.0.1"), &a, 80, Protocol::Tcp));
    assert!(ev.allowed(&a, &ext("2001:db8::1"), 443, Protocol::Tcp));
    assert!(!ev.allowed(&a, &ext("2001:db8::1"), 80, Protocol::Tcp));
    assert!(
        !ev.allowed(&a, &ext("192.168.2.1"), 443, Protocol::Tcp),
        "namespaceSelector never matches external"
    );
}
