//! Throughput of `Evaluator::allowed` on 1,000 pods and 200 policies (run with
//! `cargo test --release --test netpol_perf -- --ignored --nocapture`).

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use mpm_operator::netpol::{ContainerPort, Endpoint, Evaluator, NamespaceInfo, PodInfo, Protocol};
use serde_json::json;

fn world() -> Evaluator {
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
            ips: vec![format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
                .parse()
                .expect("ip")],
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
    let policies: Vec<NetworkPolicy> = (0..200)
        .map(|i| {
            serde_json::from_value(json!({
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
            .expect("policy")
        })
        .collect();
    Evaluator::new(namespaces, pods, &policies).expect("evaluator")
}

#[test]
#[ignore = "throughput measurement; run in release"]
fn over_a_million_checks_per_second() {
    let t = Instant::now();
    let ev = world();
    eprintln!("built evaluator in {:?}", t.elapsed());
    let eps: Vec<Endpoint> = ev.endpoints().collect();
    let n = 2_000_000usize;
    let t = Instant::now();
    let mut allowed = 0usize;
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
    let rate = n as f64 / t.elapsed().as_secs_f64();
    eprintln!("{n} checks, {allowed} allowed, {rate:.0} checks/s");
    assert!(rate > 1_000_000.0, "{rate:.0} checks/s");
}

#[test]
fn world_is_consistent() {
    let ev = world();
    assert_eq!(ev.pods().len(), 1000);
    let a = Endpoint::Pod(ev.pod_id("ns0", "pod0").expect("pod"));
    let b = Endpoint::Pod(ev.pod_id("ns1", "pod1").expect("pod"));
    // pod1 (app1, r1) in ns1 (t1) → pod0 (app0 in ns0): p0 allows tier t0 only; 10.0.0.1 is in the ipBlock.
    assert!(ev.allowed(&b, &a, 8080, Protocol::Tcp));
    assert!(!ev.allowed(&b, &a, 9090, Protocol::Tcp));
}
