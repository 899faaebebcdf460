//! Property: compiling a random ACL and evaluating the resulting NetworkPolicies reproduces the ACL
//! exactly between the hub's services.

use std::collections::{BTreeMap, BTreeSet};

use mpm_operator::acl::{compile, service_labels, HubTopology, NamedPort, ServicePorts};
use mpm_operator::crd::service_acl::{AllowRule, DenyRule, HubRef, ServiceAclSpec};
use mpm_operator::netpol::{
    self, ContainerPort, Endpoint, Evaluator, NamespaceInfo, PodInfo, Protocol,
};
use proptest::prelude::*;

const SERVICES: [&str; 4] = [
    "device-hub",
    "iec61968-connector",
    "smoc-service",
    "reporting",
];

fn topology() -> HubTopology {
    let services = SERVICES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut s = ServicePorts::new(*name);
            s.https_port = 8443 + u16::try_from(i).unwrap_or(0);
            if i % 2 == 1 {
                s.extra_ports.push(NamedPort {
                    name: "ingest".into(),
                    port: 8090,
                });
            }
            s
        })
        .collect();
    HubTopology {
        namespace: "park".into(),
        hub: "demo".into(),
        trust_domain: "example.org".into(),
        services,
        operator: Default::default(),
    }
}

/// A random edge set: (from, to) → chosen port indices into the target's exposed ports
/// (empty = default https port).
fn edges() -> impl Strategy<Value = BTreeMap<(usize, usize), Vec<usize>>> {
    proptest::collection::btree_map(
        (0..SERVICES.len(), 0..SERVICES.len()),
        proptest::collection::vec(0..3usize, 0..3),
        0..8,
    )
    .prop_map(|m| m.into_iter().filter(|((a, b), _)| a != b).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn compiled_policies_reproduce_the_acl(edges in edges(), split in 1..3usize, deny_seed in 0..16usize) {
        let topo = topology();
        // Expected: (from, to) -> ports.
        let mut expected: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
        let mut rules = Vec::new();
        for ((a, b), idx) in &edges {
            let target = &topo.services[*b];
            let exposed: Vec<u16> = target.exposed().into_iter().map(|(_, p)| p).collect();
            let ports: Vec<u16> = idx.iter().map(|i| exposed[i % exposed.len()]).collect();
            let set: BTreeSet<u16> = if ports.is_empty() { BTreeSet::from([target.https_port]) } else { ports.iter().copied().collect() };
            expected.entry((SERVICES[*a].to_string(), SERVICES[*b].to_string())).or_default().extend(set);
            rules.push(AllowRule {
                name: None,
                from: SERVICES[*a].into(),
                to: SERVICES[*b].into(),
                ports: if ports.is_empty() { None } else { Some(ports) },
                http: None,
            });
        }
        // A deny invariant on some pair without an allow edge, when one exists.
        let free: Vec<(usize, usize)> = (0..SERVICES.len())
            .flat_map(|a| (0..SERVICES.len()).map(move |b| (a, b)))
            .filter(|(a, b)| a != b && !edges.contains_key(&(*a, *b)))
            .collect();
        let deny: Vec<DenyRule> = free
            .get(deny_seed % free.len().max(1))
            .map(|(a, b)| DenyRule { name: None, from: SERVICES[*a].into(), to: SERVICES[*b].into() })
            .into_iter()
            .collect();
        // Spread the rules over `split` ACLs (they are merged).
        let mut acls: Vec<ServiceAclSpec> = (0..split)
            .map(|_| ServiceAclSpec { hub_ref: HubRef { name: "demo".into() }, ..Default::default() })
            .collect();
        for (i, r) in rules.into_iter().enumerate() {
            acls[i % split].allow.push(r);
        }
        acls[0].deny = deny;

        let compiled = compile(&topo, &acls).expect("random ACL is valid");
        prop_assert_eq!(compiled.allowed_edges() as usize, expected.len());

        let pods: Vec<PodInfo> = topo
            .services
            .iter()
            .map(|s| PodInfo {
                namespace: "park".into(),
                name: s.name.clone(),
                labels: service_labels("demo", &s.name),
                ips: vec![],
                ports: s.exposed().into_iter().map(|(n, p)| ContainerPort { name: Some(n), port: p, protocol: Protocol::Tcp }).collect(),
            })
            .collect();
        let policies = compiled.network_policies();
        let ev = Evaluator::new(vec![NamespaceInfo::named("park")], pods, &policies).expect("evaluator");
        for from in &topo.services {
            for to in &topo.services {
                if from.name == to.name {
                    continue;
                }
                let src = Endpoint::Pod(ev.pod_id("park", &from.name).expect("pod"));
                let dst = Endpoint::Pod(ev.pod_id("park", &to.name).expect("pod"));
                let allowed_ports = expected.get(&(from.name.clone(), to.name.clone())).cloned().unwrap_or_default();
                for port in [8080u16, 8090, 8443, 8444, 8445, 8446, 9999] {
                    let got = ev.allowed(&src, &dst, port, Protocol::Tcp);
                    prop_assert_eq!(got, allowed_ports.contains(&port), "{} -> {}:{}", from.name, to.name, port);
                    prop_assert!(!ev.allowed(&src, &dst, port, Protocol::Udp));
                }
            }
        }
        // The allowed-peers files list exactly the allowed callers.
        for s in &topo.services {
            let peers: BTreeSet<String> = compiled.services[&s.name].allowed_peers.peers.iter().map(|p| p.spiffe_id.clone()).collect();
            let mut want: BTreeSet<String> = expected
                .keys()
                .filter(|(_, to)| *to == s.name)
                .map(|(from, _)| format!("spiffe://example.org/ns/park/sa/demo-{from}"))
                .collect();
            if s.name == "device-hub" {
                want.insert("spiffe://example.org/ns/park/sa/mpm-operator".into());
            }
            prop_assert_eq!(peers, want);
        }
        let v = netpol::verify(&acls, &topo, &policies).expect("verify");
        prop_assert!(v.violations.is_empty(), "{:?}", v.violations);
    }
}
